"""The displayed key of a recording and its key over time, from one tuned constant-Q chroma.

:func:`estimate_tonality` is the entry point: it estimates the recording's tuning, computes one
constant-Q transform on that tuning, and derives from it both the global key (what the app
shows as "the key") and a key timeline (the local key, smoothed over time).

Conventions
-----------
- Keys are 24 states: index ``0..11`` the major keys with tonic C..B, ``12..23`` the minor
  keys. Tonics are named with sharps; for display see :func:`m2e_core.key.spell_key`.
- Pitch-class evidence: the constant-Q magnitude (36 bins per octave, C1 to B7, bins moved by
  the tuning) is folded into a bass chroma (C1-B2) and a treble chroma (C3-B7). Each frame of
  each is log-compressed (``log(1 + 100 x / peak)``) and normalised to unit sum, so loud and
  quiet passages weigh alike; the evidence is ``treble + BASS_WEIGHT * bass`` averaged over the
  frames. A bass frame counts in proportion to how much bass there is: fully once its
  constant-Q magnitude reaches :data:`BASS_PRESENCE` times the treble's, less below (so the
  codec noise of a recording without bass is not normalised up to a bass line). The bass says which note the harmony stands on (the tonic, in a cadence), which tells
  a minor key from its relative major where both share their notes.
- Key scores: Pearson correlation of the evidence with the Albrecht-Shanahan profiles
  (:data:`m2e_core.chroma.KEY_PROFILES`) rotated to each tonic.
- Relative-key check: when the best key's relative (C major / A minor) scores within
  :data:`RELATIVE_MARGIN` of it and the bass dwells more on the relative's tonic, the relative
  is chosen (both keys share their notes; the bass tells which one the music stands on).
- Confidence: the probability of the chosen key under a softmax of the 24 scores at
  :data:`KEY_TEMPERATURE` (fitted by maximum likelihood on rendered chorales, see
  ``benchmarks/chords_keys.py``): the share of estimates with confidence ``p`` that are right
  is about ``p`` on that material.
- A track whose global key appears nowhere in its timeline (it modulates through keys that sum
  to another one) shows the key it spends longest in instead.
- Timeline: the same evidence over windows of :data:`WINDOW_SECONDS`, one every
  :data:`STEP_SECONDS`; the window scores at :data:`LOCAL_TEMPERATURE` are the emissions of a
  24-state hidden Markov model that changes key with probability :data:`SWITCH_PROBABILITY`
  per step, the global key's emission raised by :data:`GLOBAL_KEY_BONUS`. Viterbi gives the path; each span's confidence is the mean posterior
  (forward-backward) of its key over its steps. Spans are contiguous from 0 to the duration,
  equal neighbours merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from m2e_core.chroma import CHROMA_HOP_LENGTH, CHROMA_SAMPLE_RATE, key_scores
from m2e_core.errors import InvalidAudioError
from m2e_core.tuning import Tuning, estimate_tuning
from m2e_core.types import KeyEstimate, KeySpan
from m2e_core.vocab import PITCH_CLASSES

__all__ = [
    "BASS_PRESENCE",
    "BASS_WEIGHT",
    "GLOBAL_KEY_BONUS",
    "KEY_PROFILE",
    "KEY_TEMPERATURE",
    "LOCAL_TEMPERATURE",
    "RELATIVE_MARGIN",
    "STEP_SECONDS",
    "SWITCH_PROBABILITY",
    "WINDOW_SECONDS",
    "TonalChroma",
    "Tonality",
    "estimate_tonality",
    "key_probabilities",
    "local_key",
    "tonal_chroma",
    "tonality_from_chroma",
]

#: Key profile the evidence is correlated with (a name in :data:`m2e_core.chroma.KEY_PROFILES`).
KEY_PROFILE = "albrecht-shanahan"
#: Weight of the bass chroma relative to the treble chroma.
BASS_WEIGHT = 0.5
#: Bass-to-treble magnitude ratio at which a frame's bass chroma counts fully (weighted by
#: ratio / BASS_PRESENCE below it). Real recordings with a bass line sit at 0.2-5 (median about
#: 1.5 on the real-recording set); synthesised chords above the bass octaves, and their lossy
#: encodings, at 0.000-0.02.
BASS_PRESENCE = 0.1
#: Softmax temperature of the global key scores (correlations): fitted on rendered chorales.
KEY_TEMPERATURE = 0.04
#: Largest score gap (correlation) at which the bass may choose the relative key instead.
RELATIVE_MARGIN = 0.05
#: Softmax temperature of one window's key scores in the timeline. Overlapping windows share
#: their evidence, so each counts for less than a whole-track estimate (a higher temperature).
LOCAL_TEMPERATURE = 0.2
#: Length of the windows of the timeline and the step between them, seconds (chosen on
#: rendered chorales and pairs of them, see ``benchmarks/chords_keys.py``: 8-30 s windows tried).
WINDOW_SECONDS = 12.0
STEP_SECONDS = 1.0
#: Probability of changing key from one step to the next (to any of the 23 other keys alike).
SWITCH_PROBABILITY = 1e-4
#: Log-likelihood added to the global key in every window: the local key leaves the key of the
#: whole track only where a window's evidence is clearly elsewhere.
GLOBAL_KEY_BONUS = 0.5

_MODES = ("major", "minor")
_BINS_PER_OCTAVE = 36
_OCTAVES = 7
_BASS_OCTAVES = 2
_LOG_COMPRESSION = 100.0
_MIN_SAMPLES = 2 * CHROMA_HOP_LENGTH


@dataclass(frozen=True)
class TonalChroma:
    """Per-frame pitch-class evidence of a recording (see the module conventions).

    Attributes
    ----------
    treble, bass : np.ndarray
        ``(12, frames)`` float64, each frame log-compressed and summing to 1 (0 when silent); bass
        frames are then weighted by the bass presence (see the module conventions).
    frame_seconds : float
        Hop between frames, seconds.
    duration : float
        Length of the audio, seconds.
    tuning : Tuning
        The tuning the bins were moved by.
    """

    treble: np.ndarray = field(repr=False)
    bass: np.ndarray = field(repr=False)
    frame_seconds: float
    duration: float
    tuning: Tuning

    @property
    def frames(self) -> int:
        """Number of frames."""
        return int(self.treble.shape[1])

    def evidence(self, start_frame: int = 0, end_frame: int | None = None) -> np.ndarray:
        """Pitch-class evidence (12 weights) of frames ``[start_frame, end_frame)``."""
        treble = self.treble[:, start_frame:end_frame]
        if treble.shape[1] == 0:
            return np.zeros(12)
        bass = self.bass[:, start_frame:end_frame]
        return treble.mean(axis=1) + BASS_WEIGHT * bass.mean(axis=1)


@dataclass(frozen=True)
class Tonality:
    """The key of a recording and its key over time.

    Attributes
    ----------
    key : KeyEstimate
        The global (displayed) key; confidence is a calibrated probability.
    timeline : tuple of KeySpan
        The local key, contiguous from 0 to the duration, equal neighbours merged.
    tuning : Tuning
        The recording's tuning, as used for the chroma (pass it on to the chord recognisers:
        ``backend.recognize(samples, rate, tuning=tonality.tuning)``).
    """

    key: KeyEstimate
    timeline: tuple[KeySpan, ...]
    tuning: Tuning


def _validate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InvalidAudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    array = np.asarray(samples)
    if array.ndim != 1:
        raise InvalidAudioError(f"samples must be a 1-D mono waveform, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidAudioError(f"samples must be floating point in [-1, 1], got dtype {array.dtype}")
    if array.size == 0:
        raise InvalidAudioError("samples are empty")
    if not np.all(np.isfinite(array)):
        raise InvalidAudioError("samples contain NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _compress(chroma: np.ndarray, peak: float) -> np.ndarray:
    """Per-frame log compression and unit-sum normalisation; silent frames become zero."""
    if peak <= 0:
        return np.zeros_like(chroma)
    compressed = np.log1p(_LOG_COMPRESSION * chroma / peak)
    totals = compressed.sum(axis=0)
    voiced = totals > totals.max() * 1e-3 if totals.size else totals.astype(bool)
    out = np.zeros_like(compressed)
    out[:, voiced] = compressed[:, voiced] / totals[voiced]
    return out


def tonal_chroma(samples: np.ndarray, sample_rate: int, *, tuning: Tuning | None = None) -> TonalChroma:
    """Bass and treble chroma of a mono waveform on its own tuning.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform in [-1, 1].
    sample_rate : int
        Its rate in Hz; resampled to :data:`m2e_core.chroma.CHROMA_SAMPLE_RATE` when different.
    tuning : Tuning, optional
        The recording's tuning; estimated when not given.

    Returns
    -------
    TonalChroma

    Raises
    ------
    InvalidAudioError
        If the waveform is unusable.
    """
    import librosa

    from m2e_core.audio import resample
    from m2e_core.btc import quiet_short_signal_fft_warning

    quiet_short_signal_fft_warning()
    waveform = _validate(samples, sample_rate)
    duration = waveform.size / float(sample_rate)
    waveform = resample(waveform, int(sample_rate), CHROMA_SAMPLE_RATE)
    if tuning is None:
        tuning = estimate_tuning(waveform, CHROMA_SAMPLE_RATE)
    if waveform.size < _MIN_SAMPLES:
        waveform = np.pad(waveform, (0, _MIN_SAMPLES - waveform.size))
    fmin = librosa.note_to_hz("C1")
    n_bins = _BINS_PER_OCTAVE * _OCTAVES
    spectrum = np.abs(librosa.cqt(waveform, sr=CHROMA_SAMPLE_RATE, hop_length=CHROMA_HOP_LENGTH, fmin=fmin,
                                  n_bins=n_bins, bins_per_octave=_BINS_PER_OCTAVE,
                                  tuning=tuning.bins(_BINS_PER_OCTAVE))).astype(np.float64)
    fold = librosa.filters.cq_to_chroma(n_input=n_bins, bins_per_octave=_BINS_PER_OCTAVE, n_chroma=12, fmin=fmin)
    split = _BASS_OCTAVES * _BINS_PER_OCTAVE
    bass = fold[:, :split] @ spectrum[:split]
    treble = fold[:, split:] @ spectrum[split:]
    # One peak for both, so a quiet bass line is not blown up to the treble's level.
    peak = float(max(bass.max(initial=0.0), treble.max(initial=0.0)))
    presence = _bass_presence(spectrum[:split].sum(axis=0), spectrum[split:].sum(axis=0))
    return TonalChroma(_compress(treble, peak), _compress(bass, peak) * presence,
                       CHROMA_HOP_LENGTH / CHROMA_SAMPLE_RATE, duration, tuning)


def _bass_presence(bass_total: np.ndarray, treble_total: np.ndarray) -> np.ndarray:
    """Per-frame weight in [0, 1] of the bass chroma: ``bass / (BASS_PRESENCE * treble)``, clipped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = bass_total / (BASS_PRESENCE * treble_total)
    ratio = np.where(treble_total > 0, ratio, (bass_total > 0).astype(np.float64))
    return np.clip(np.nan_to_num(ratio, nan=0.0, posinf=1.0), 0.0, 1.0)


def key_probabilities(evidence: np.ndarray, *, temperature: float = KEY_TEMPERATURE) -> np.ndarray:
    """Probability of each of the 24 keys given pitch-class evidence (softmax of the key scores).

    Parameters
    ----------
    evidence : np.ndarray
        12 non-negative pitch-class weights.
    temperature : float
        Softmax temperature (> 0) applied to the correlations.

    Returns
    -------
    np.ndarray
        24 probabilities summing to 1 (uniform when there is no evidence).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    logits = key_scores(np.asarray(evidence, dtype=np.float64), profile=KEY_PROFILE) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()


def _key(index: int, confidence: float) -> KeyEstimate:
    return KeyEstimate(PITCH_CLASSES[index % 12], _MODES[index // 12], float(np.clip(confidence, 0.0, 1.0)))


def _window_log_emissions(chroma: TonalChroma) -> tuple[np.ndarray, np.ndarray]:
    """Log emission (steps, 24) of each window and the step centres (seconds)."""
    steps = max(1, int(np.ceil(chroma.duration / STEP_SECONDS)))
    centres = (np.arange(steps) + 0.5) * STEP_SECONDS
    evidence = chroma.treble + BASS_WEIGHT * chroma.bass
    cumulative = np.concatenate([np.zeros((12, 1)), np.cumsum(evidence, axis=1)], axis=1)
    half = WINDOW_SECONDS / 2.0
    emissions = np.zeros((steps, 24))
    for step, centre in enumerate(centres):
        first = int(np.clip(round((centre - half) / chroma.frame_seconds), 0, chroma.frames))
        last = int(np.clip(round((centre + half) / chroma.frame_seconds), first, chroma.frames))
        window = (cumulative[:, last] - cumulative[:, first]) / max(last - first, 1)
        emissions[step] = np.log(key_probabilities(window, temperature=LOCAL_TEMPERATURE))
    return emissions, centres


def _smooth(log_emission: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi path and forward-backward posteriors of the 24-key HMM."""
    from m2e_core.chroma import _viterbi

    states = log_emission.shape[1]
    stay, change = np.log1p(-SWITCH_PROBABILITY), np.log(SWITCH_PROBABILITY / (states - 1))
    transition = np.full((states, states), change)
    np.fill_diagonal(transition, stay)
    initial = np.full(states, -np.log(states))
    path = _viterbi(log_emission, transition, initial)
    from scipy.special import logsumexp

    steps = log_emission.shape[0]
    forward = np.zeros_like(log_emission)
    backward = np.zeros_like(log_emission)
    forward[0] = initial + log_emission[0]
    for step in range(1, steps):
        forward[step] = logsumexp(forward[step - 1][:, None] + transition, axis=0) + log_emission[step]
    for step in range(steps - 2, -1, -1):
        backward[step] = logsumexp(transition + (log_emission[step + 1] + backward[step + 1])[None, :], axis=1)
    posterior = forward + backward
    posterior = np.exp(posterior - logsumexp(posterior, axis=1, keepdims=True))
    return path, posterior


def _key_index(key: KeyEstimate) -> int:
    return PITCH_CLASSES.index(key.tonic) + 12 * _MODES.index(key.mode)


def _timeline(chroma: TonalChroma, global_key: KeyEstimate) -> tuple[KeySpan, ...]:
    emissions, _ = _window_log_emissions(chroma)
    if global_key.confidence > 0:
        emissions[:, _key_index(global_key)] += GLOBAL_KEY_BONUS
    path, posterior = _smooth(emissions)
    spans: list[KeySpan] = []
    first = 0
    for step in range(1, len(path) + 1):
        if step == len(path) or path[step] != path[first]:
            start = 0.0 if first == 0 else first * STEP_SECONDS
            end = chroma.duration if step == len(path) else min(step * STEP_SECONDS, chroma.duration)
            if end > start:
                state = int(path[first])
                spans.append(KeySpan(float(start), float(end), _key(state, float(posterior[first:step, state].mean()))))
            first = step
    return tuple(spans)


def _relative(index: int) -> int:
    """The relative key: C major (0) <-> A minor (21)."""
    return (index % 12 + 9) % 12 + 12 if index < 12 else (index % 12 + 3) % 12


def _global_key(chroma: TonalChroma) -> KeyEstimate:
    evidence = chroma.evidence()
    if not np.any(evidence > 0):
        return KeyEstimate("C", "major", 0.0)
    scores = key_scores(evidence, profile=KEY_PROFILE)
    probabilities = key_probabilities(evidence)
    best = int(np.argmax(scores))
    relative = _relative(best)
    bass = chroma.bass.mean(axis=1)
    if scores[best] - scores[relative] <= RELATIVE_MARGIN and bass[relative % 12] > bass[best % 12]:
        # The pair's probability, shared in proportion to the bass on each tonic.
        share = bass[relative % 12] / (bass[relative % 12] + bass[best % 12])
        return _key(relative, float((probabilities[best] + probabilities[relative]) * share))
    return _key(best, float(probabilities[best]))


def tonality_from_chroma(chroma: TonalChroma) -> Tonality:
    """Global key and key timeline of a precomputed :class:`TonalChroma`."""
    global_key = _global_key(chroma)
    timeline = _timeline(chroma, global_key)
    return Tonality(_key_heard(global_key, timeline, chroma), timeline, chroma.tuning)


def _key_heard(global_key: KeyEstimate, timeline: Sequence[KeySpan], chroma: TonalChroma) -> KeyEstimate:
    """The global key, or the timeline's longest key when no stretch of the track is in the global one.

    A track that modulates through several keys can sum to pitch-class evidence that fits a
    key none of its parts is in: C, D, F and A major in turn read as A minor, with a confidence of
    0.99); the key shown then is the one the track spends longest in. Its confidence is the
    chance that a moment of the track is in that key by the timeline: the duration-weighted
    confidence of its spans times their share of the track (0.25 or less for four keys).
    """
    keys = [(span.key.tonic, span.key.mode) for span in timeline]
    if not keys or (global_key.tonic, global_key.mode) in keys:
        return global_key
    seconds: dict[tuple[str, str], float] = {}
    weighted: dict[tuple[str, str], float] = {}
    for span, key in zip(timeline, keys):
        seconds[key] = seconds.get(key, 0.0) + span.end - span.start
        weighted[key] = weighted.get(key, 0.0) + (span.end - span.start) * span.key.confidence
    tonic, mode = max(seconds, key=lambda key: (seconds[key], -keys.index(key)))
    total = sum(seconds.values())
    index = PITCH_CLASSES.index(tonic) + 12 * _MODES.index(mode)
    return _key(index, weighted[(tonic, mode)] / total if total > 0 else 0.0)


def estimate_tonality(samples: np.ndarray, sample_rate: int, *, tuning: Tuning | None = None) -> Tonality:
    """The key of a mono waveform and its key over time.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform in [-1, 1].
    sample_rate : int
        Its rate in Hz (any; resampled inside to 22.05 kHz when different).
    tuning : Tuning, optional
        The recording's tuning when already estimated; estimated here otherwise (and returned
        in :attr:`Tonality.tuning`, to be passed on to the chord recognisers).

    Returns
    -------
    Tonality
        ``key`` (global, calibrated confidence), ``timeline`` (contiguous spans of
        :class:`~m2e_core.types.KeySpan`), ``tuning``. Silence gives C major with
        confidence 0.

    Raises
    ------
    InvalidAudioError
        If the waveform is unusable.

    Examples
    --------
    >>> tonality = estimate_tonality(samples, 22_050)  # doctest: +SKIP
    >>> tonality.key.tonic, tonality.key.mode  # doctest: +SKIP
    ('A', 'minor')
    >>> [(span.start, span.key.tonic) for span in tonality.timeline]  # doctest: +SKIP
    [(0.0, 'A'), (64.0, 'C')]
    """
    return tonality_from_chroma(tonal_chroma(samples, sample_rate, tuning=tuning))


def local_key(timeline: Sequence[KeySpan], start: float, end: float) -> KeyEstimate | None:
    """The key that sounds longest in ``[start, end)`` according to a key timeline.

    Parameters
    ----------
    timeline : sequence of KeySpan
    start, end : float
        The window, seconds (``end > start``).

    Returns
    -------
    KeyEstimate or None
        The key covering most of the window (its confidence the duration-weighted mean of the
        confidences of its spans there); ``None`` when no span overlaps the window.

    Raises
    ------
    ValueError
        If ``end <= start`` or the times are not finite.
    TypeError
        If an item of ``timeline`` is not a :class:`KeySpan`.

    Examples
    --------
    >>> from m2e_core.types import KeyEstimate, KeySpan
    >>> timeline = (KeySpan(0, 10, KeyEstimate("C", "major", 0.9)), KeySpan(10, 30, KeyEstimate("G", "major", 0.8)))
    >>> local_key(timeline, 5, 20).tonic
    'G'
    """
    if not (np.isfinite(start) and np.isfinite(end)) or end <= start:
        raise ValueError(f"the window must have finite times with end > start, got [{start}, {end})")
    covered: dict[tuple[str, str], list[float]] = {}
    for index, span in enumerate(timeline):
        if not isinstance(span, KeySpan):
            raise TypeError(f"timeline[{index}] must be a KeySpan, got {type(span).__name__}")
        overlap = min(span.end, end) - max(span.start, start)
        if overlap > 0:
            entry = covered.setdefault((span.key.tonic, span.key.mode), [0.0, 0.0])
            entry[0] += overlap
            entry[1] += overlap * span.key.confidence
    if not covered:
        return None
    (tonic, mode), (seconds, weighted) = max(covered.items(), key=lambda item: item[1][0])
    return KeyEstimate(tonic, mode, weighted / seconds)
