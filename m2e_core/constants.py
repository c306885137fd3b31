"""Constants shared across m2e: sample rates, segment lengths, limits, model sizes."""

from __future__ import annotations

#: Sample rate MERT-v1 expects.
MERT_SAMPLE_RATE = 24_000
#: Segment length used by the paper for embeddings (seconds).
SEGMENT_SECONDS = 30.0
#: A tail shorter than this is merged into the previous segment (seconds).
MIN_TAIL_SECONDS = 5.0
#: Shortest audio we analyse (seconds). MERT's conv stack needs >= 400 samples; one second
#: is the least that gives a meaningful embedding and chord estimate.
MIN_DURATION_SECONDS = 1.0
#: Longest audio we analyse by default (seconds); override with ``max_duration``.
MAX_DURATION_SECONDS = 30 * 60.0
#: Largest input file we accept by default (bytes).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Peak amplitude below which the whole signal counts as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4

#: MERT hidden-state indices used for the embedding (hidden_states[0] is the CNN output).
MERT_HIDDEN_STATE_INDICES = (6, 7)
#: Transformer layers the encoder must run to produce those hidden states.
MERT_LAYERS_NEEDED = max(MERT_HIDDEN_STATE_INDICES)

#: Longest chord token sequence the model takes.
MAX_CHORD_TOKENS = 100

#: Valence/arousal scale of all datasets and of the model's regression head.
VA_MIN = 1.0
VA_MAX = 9.0

#: Default number of tags reported when a checkpoint carries no per-tag thresholds.
DEFAULT_TOP_K = 5

#: Environment variable naming the weights cache directory.
M2E_HOME_ENV = "M2E_HOME"
