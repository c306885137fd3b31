"""Audio chroma, the key-profile key estimator and the chroma-template HMM chord recogniser."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.chroma import (
    CHROMA_HOP_LENGTH,
    CHROMA_SAMPLE_RATE,
    DEFAULT_KEY_PROFILE,
    KEY_PROFILES,
    Chromagram,
    ChromaHmmChordRecognizer,
    chroma_pitch_class_weights,
    chromagram,
    estimate_key_from_audio,
    estimate_key_from_chroma,
    key_from_scores,
    key_scores,
)
from m2e_core.errors import ConfigError, InvalidAudioError
from m2e_core.types import ChordSpan, KeyEstimate
from m2e_core.vocab import PITCH_CLASSES


def transposed(loop: list[list[int]], semitones: int) -> list[list[int]]:
    return [[note + semitones for note in chord] for chord in loop]


def majority_label(spans: tuple[ChordSpan, ...], start: float, end: float) -> str:
    """The label covering most of ``[start, end)``."""
    cover: dict[str, float] = {}
    for span in spans:
        overlap = min(span.end, end) - max(span.start, start)
        if overlap > 0:
            cover[span.label] = cover.get(span.label, 0.0) + overlap
    return max(cover, key=cover.get)


# -- chroma -------------------------------------------------------------------------------------


def test_chromagram_of_a_c_major_triad_peaks_on_its_notes():
    samples = synth_chord_loop([[60, 64, 67]], seconds_per_chord=2.0)
    chroma = chromagram(samples, 22_050)
    assert isinstance(chroma, Chromagram)
    assert chroma.values.shape[0] == 12 and chroma.values.dtype == np.float32
    assert chroma.frame_seconds == pytest.approx(CHROMA_HOP_LENGTH / CHROMA_SAMPLE_RATE)
    assert chroma.duration == pytest.approx(2.0)
    assert chroma.frames == pytest.approx(2.0 / chroma.frame_seconds, abs=2)
    profile = chroma.values.sum(axis=1)
    assert set(np.argsort(profile)[-3:]) == {0, 4, 7}


def test_chromagram_resamples_other_rates():
    at_16k = chromagram(synth_chord_loop([[57, 61, 64]], sample_rate=16_000), 16_000)
    at_22k = chromagram(synth_chord_loop([[57, 61, 64]], sample_rate=22_050), 22_050)
    assert at_16k.duration == pytest.approx(at_22k.duration)
    assert set(np.argsort(at_16k.values.sum(axis=1))[-3:]) == {9, 1, 4}  # A C# E


def test_pitch_class_weights_sum_to_one_and_ignore_loudness():
    values = np.zeros((12, 20))
    values[[0, 4, 7], :10] = 1.0
    values[[0, 4, 7], 10:] = 0.01  # the same chord, 40 dB quieter
    weights = chroma_pitch_class_weights(values)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[[0, 4, 7]] == pytest.approx([1 / 3] * 3, abs=1e-9)
    assert np.all(chroma_pitch_class_weights(np.zeros((12, 5))) == 0)


# -- key ----------------------------------------------------------------------------------------

# (loop, transposition in semitones, expected tonic, expected mode)
KEY_CASES = [
    (C_MAJOR_LOOP, 0, "C", "major"),
    (C_MAJOR_LOOP, 7, "G", "major"),
    (C_MAJOR_LOOP, 3, "D#", "major"),
    (C_MAJOR_LOOP, -3, "A", "major"),
    (C_MAJOR_LOOP, 6, "F#", "major"),
    (A_MINOR_LOOP, 0, "A", "minor"),
    (A_MINOR_LOOP, -7, "D", "minor"),
    (A_MINOR_LOOP, 4, "C#", "minor"),
    (A_MINOR_LOOP, -2, "G", "minor"),
]


@pytest.mark.parametrize(("loop", "shift", "tonic", "mode"), KEY_CASES,
                         ids=[f"{tonic}-{mode}" for _, _, tonic, mode in KEY_CASES])
def test_key_of_synthesized_progressions(loop, shift, tonic, mode):
    samples = synth_chord_loop(transposed(loop, shift), seconds_per_chord=1.0, repeats=2)
    key = estimate_key_from_audio(samples, 22_050)
    assert (key.tonic, key.mode) == (tonic, mode)
    assert 0.5 < key.confidence <= 1.0


def test_key_scores_are_correlations_with_rotated_profiles():
    major, minor = KEY_PROFILES[DEFAULT_KEY_PROFILE]
    scores = key_scores(np.roll(np.asarray(major), 2))  # the major profile itself, on D
    assert scores.shape == (24,)
    assert scores[2] == pytest.approx(1.0)
    assert np.all(scores <= 1.0 + 1e-12) and np.all(scores >= -1.0 - 1e-12)
    assert int(np.argmax(key_scores(np.roll(np.asarray(minor), 11)))) == 12 + 11  # B minor


def test_every_profile_finds_c_major_from_its_scale():
    scale = np.zeros(12)
    scale[[0, 2, 4, 5, 7, 9, 11]] = 1.0
    scale[[0, 4, 7]] += 1.0  # tonic triad emphasised
    for profile in KEY_PROFILES:
        key = key_from_scores(key_scores(scale, profile=profile))
        assert (key.tonic, key.mode) == ("C", "major"), profile


def test_no_signal_gives_zero_confidence():
    key = estimate_key_from_chroma(np.zeros((12, 30)))
    assert key == KeyEstimate("C", "major", 0.0)


def test_key_from_scores_names_sharps_and_clips_confidence():
    scores = np.full(24, -0.5)
    scores[12 + 10] = 1.2
    assert key_from_scores(scores) == KeyEstimate(PITCH_CLASSES[10], "minor", 1.0)


@pytest.mark.parametrize(
    ("weights", "error"),
    [(np.ones(11), ValueError), (np.full(12, np.nan), ValueError), (-np.ones(12), ValueError)],
    ids=["shape", "nan", "negative"],
)
def test_key_scores_reject_bad_weights(weights, error):
    with pytest.raises(error):
        key_scores(weights)


def test_unknown_profile_is_refused():
    with pytest.raises(ConfigError, match="unknown key profile"):
        key_scores(np.ones(12), profile="nope")
    with pytest.raises(ConfigError):
        estimate_key_from_audio(synth_chord_loop([[60, 64, 67]]), 22_050, profile="nope")


def test_key_from_scores_rejects_bad_input():
    with pytest.raises(ValueError):
        key_from_scores(np.zeros(12))


# -- chords -------------------------------------------------------------------------------------


def test_chroma_hmm_transcribes_c_g_am_f():
    seconds = 2.0
    samples = synth_chord_loop(C_MAJOR_LOOP, seconds_per_chord=seconds, repeats=2)
    spans = ChromaHmmChordRecognizer().recognize(samples, 22_050)
    assert spans[0].start == 0.0
    assert spans[-1].end == pytest.approx(len(samples) / 22_050)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(spans, spans[1:]))
    expected = ["C:maj", "G:maj", "A:min", "F:maj"] * 2
    assert [majority_label(spans, i * seconds, (i + 1) * seconds) for i in range(8)] == expected
    assert [span.label for span in spans] == expected  # one span per chord: the HMM smooths
    for index, span in enumerate(spans[1:], start=1):
        assert span.start == pytest.approx(index * seconds, abs=0.2)


def test_chroma_hmm_finds_minor_chords_and_transposes():
    samples = synth_chord_loop(transposed(A_MINOR_LOOP, 2), seconds_per_chord=1.5)  # Bm Em F#maj Bm
    spans = ChromaHmmChordRecognizer().recognize(samples, 22_050)
    labels = [majority_label(spans, i * 1.5, (i + 1) * 1.5) for i in range(4)]
    assert labels == ["B:min", "E:min", "F#:maj", "B:min"]


def test_chroma_hmm_labels_silence_as_no_chord():
    chord = synth_chord_loop([[60, 64, 67]], seconds_per_chord=2.0)
    samples = np.concatenate([np.zeros(2 * 22_050, np.float32), chord])
    spans = ChromaHmmChordRecognizer().recognize(samples, 22_050)
    assert majority_label(spans, 0.0, 1.8) == "N"
    assert majority_label(spans, 2.2, 4.0) == "C:maj"


def test_chroma_hmm_satisfies_the_backend_protocol():
    from m2e_core.chords import ChordBackend

    recognizer = ChromaHmmChordRecognizer()
    assert isinstance(recognizer, ChordBackend)
    assert recognizer.provenance.role == "chords"
    assert recognizer.sample_rate == CHROMA_SAMPLE_RATE


@pytest.mark.parametrize(
    "options",
    [{"self_transition": 1.0}, {"self_transition": 0.0}, {"sharpness": 0.0}, {"no_chord_level": 1.5},
     {"silence_ratio": 1.0}, {"harmonic_decay": -0.1}],
    ids=lambda options: next(iter(options)),
)
def test_chroma_hmm_refuses_bad_options(options):
    with pytest.raises(ConfigError):
        ChromaHmmChordRecognizer(**options)


# -- bad audio ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (np.zeros((2, 22_050), np.float32), 22_050),
        (np.array([], np.float32), 22_050),
        (np.full(22_050, np.nan, np.float32), 22_050),
        (np.zeros(22_050, np.int16), 22_050),
        (np.zeros(22_050, np.float32), 0),
        (np.zeros(22_050, np.float32), 22_050.0),
    ],
    ids=["2-d", "empty", "nan", "int", "rate-0", "rate-float"],
)
def test_bad_audio_is_refused(samples, rate):
    with pytest.raises(InvalidAudioError):
        chromagram(samples, rate)
    with pytest.raises(InvalidAudioError):
        ChromaHmmChordRecognizer().recognize(samples, rate)


def test_very_short_audio_still_gives_a_timeline():
    samples = synth_chord_loop([[60, 64, 67]], seconds_per_chord=0.05)
    spans = ChromaHmmChordRecognizer().recognize(samples, 22_050)
    assert spans and spans[0].start == 0.0 and spans[-1].end == pytest.approx(0.05, abs=1e-3)
