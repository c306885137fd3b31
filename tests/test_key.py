"""Key estimation from chords (music21), chord normalisation and chord tokens."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.key import NEUTRAL_KEY, encode_chord_tokens, estimate_key, normalize_chords
from m2e_core.types import ChordSpan, KeyEstimate


def timeline(labels: list[str], seconds: float = 2.0) -> list[ChordSpan]:
    return [ChordSpan(i * seconds, (i + 1) * seconds, label) for i, label in enumerate(labels)]


# I-IV-V-I in major keys; i-iv-V-i with the harmonic-minor (major) dominant in minor keys.
PROGRESSIONS = [
    (["C:maj", "F:maj", "G:maj", "C:maj"], "C", "major"),
    (["G:maj", "C:maj", "D:7", "G:maj"], "G", "major"),
    (["Eb:maj", "Ab:maj", "Bb:7", "Eb:maj"], "D#", "major"),
    (["A:maj", "D:maj", "E:maj", "A:maj"], "A", "major"),
    (["Db", "Gb", "Ab", "Db"], "C#", "major"),
    (["A:min", "D:min", "E:maj", "A:min"], "A", "minor"),
    (["F#:min", "B:min", "C#:7", "F#:min"], "F#", "minor"),
    (["C:min", "F:min", "G:7", "C:min"], "C", "minor"),
    (["Bb:min", "Eb:min", "F:maj", "Bb:min"], "A#", "minor"),
    (["E:min", "A:min/b3", "B:7/3", "E:min"], "E", "minor"),
    # A longer pop progression (I-vi-IV-V) in D major.
    (["D:maj", "B:min", "G:maj", "A:maj"] * 3 + ["D:maj"], "D", "major"),
]


@pytest.mark.parametrize(("labels", "tonic", "mode"), PROGRESSIONS, ids=lambda v: v if isinstance(v, str) else None)
def test_estimate_key_of_progressions(labels, tonic, mode):
    key = estimate_key(timeline(labels))
    assert (key.tonic, key.mode) == (tonic, mode)
    assert 0.5 < key.confidence <= 1.0


def test_no_chord_spans_are_ignored():
    with_gaps = estimate_key(timeline(["N", "A:min", "X", "D:min", "E:7", "A:min", "N"]))
    assert with_gaps == estimate_key(timeline(["A:min", "D:min", "E:7", "A:min"]))
    assert (with_gaps.tonic, with_gaps.mode) == ("A", "minor")


def test_durations_weight_the_estimate():
    # The same two chords; whichever lasts longer decides between C major and A minor.
    assert estimate_key([ChordSpan(0, 10, "C:maj"), ChordSpan(10, 11, "A:min")]).tonic == "C"
    assert estimate_key([ChordSpan(0, 1, "C:maj"), ChordSpan(1, 11, "A:min"), ChordSpan(11, 14, "E:7")]) \
        .mode == "minor"


@pytest.mark.parametrize(
    "chords",
    [[], [ChordSpan(0, 5, "N")], timeline(["N", "X", "N"]), [ChordSpan(1, 1, "C:maj")]],
    ids=["empty", "N", "N-X-N", "zero-length"],
)
def test_no_harmonic_content_gives_the_neutral_key(chords):
    key = estimate_key(chords)
    assert key == NEUTRAL_KEY == KeyEstimate("C", "major", 0.0)
    assert key.mode_index == 0


def test_estimate_key_checks_its_input():
    with pytest.raises(TypeError):
        estimate_key([("0", "1", "C:maj")])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("notes", "transpose", "tonic", "mode"),
    [
        (C_MAJOR_LOOP, 0, "C", "major"),
        (A_MINOR_LOOP, 0, "A", "minor"),
        (C_MAJOR_LOOP, 3, "D#", "major"),
    ],
    ids=["C-major", "A-minor", "Eb-major"],
)
def test_key_from_synthesized_audio(chord_backend, notes, transpose, tonic, mode):
    chords = [[note + transpose for note in chord] for chord in notes]
    samples = synth_chord_loop(chords, seconds_per_chord=1.5, repeats=2)
    spans = chord_backend.recognize(samples, 22_050)
    key = estimate_key(spans)
    assert (key.tonic, key.mode) == (tonic, mode)
    assert key.confidence > 0.5


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def test_normalize_major_key_to_c():
    chords = [ChordSpan(0.0, 1.5, "E:maj"), ChordSpan(1.5, 3.0, "B:7"), ChordSpan(3.0, 4.0, "N"),
              ChordSpan(4.0, 5.0, "A:maj/3"), ChordSpan(5.0, 6.0, "C#:min7")]
    normalized = normalize_chords(chords, KeyEstimate("E", "major", 0.9))
    assert [c.label for c in normalized] == ["C:maj", "G:7", "N", "F:maj/3", "A:min7"]
    assert [(c.start, c.end) for c in normalized] == [(c.start, c.end) for c in chords]


def test_normalize_minor_key_to_a():
    chords = [ChordSpan(0, 1, "F#:min"), ChordSpan(1, 2, "C#:7"), ChordSpan(2, 3, "X"), ChordSpan(3, 4, "D"),
              ChordSpan(4, 5, "B:min(9)")]
    normalized = normalize_chords(chords, KeyEstimate("F#", "minor", 0.8))
    assert [c.label for c in normalized] == ["A:min", "E:7", "X", "F", "D:min(9)"]


def test_normalize_flat_spellings_and_identity():
    chords = [ChordSpan(0, 1, "Bb:maj"), ChordSpan(1, 2, "Eb:maj7"), ChordSpan(2, 3, "F:7")]
    assert [c.label for c in normalize_chords(chords, KeyEstimate("Bb", "major", 0.7))] == ["C:maj", "F:maj7", "G:7"]
    assert [c.label for c in normalize_chords(chords, KeyEstimate("A#", "major", 0.7))] == ["C:maj", "F:maj7", "G:7"]
    a_minor = [ChordSpan(0, 1, "A:min"), ChordSpan(1, 2, "E:7")]
    assert normalize_chords(a_minor, KeyEstimate("A", "minor", 0.5)) == tuple(a_minor)
    with pytest.raises(ValueError, match="tonic"):
        normalize_chords(a_minor, KeyEstimate("H", "minor", 0.5))
    with pytest.raises(ValueError, match="mode"):
        normalize_chords(a_minor, KeyEstimate("A", "dorian", 0.5))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def test_encode_chord_tokens_by_hand():
    chords = timeline(["N", "C:maj", "C:maj", "G:7/3", "G:7", "A:min", "X", "N", "F:maj", "C"], 1.0)
    roots, qualities = encode_chord_tokens(chords, max_tokens=8)
    # N | C:maj (x2) | G:7/3 + G:7 (same token) | A:min | X + N (both no-chord) | F:maj | C (= C:maj) | pad
    assert roots.tolist() == [0, 1, 8, 10, 0, 6, 1, 0]
    assert qualities.tolist() == [0, 1, 11, 5, 0, 1, 1, 0]
    assert roots.dtype == np.int64 and qualities.dtype == np.int64


def test_encode_chord_tokens_truncates_and_pads():
    alternating = timeline(["C:maj", "G:maj"] * 75, 0.5)  # 150 changes
    roots, qualities = encode_chord_tokens(alternating)
    assert roots.shape == qualities.shape == (100,)
    assert roots.tolist() == [1, 8] * 50
    assert qualities.tolist() == [1] * 100

    roots, qualities = encode_chord_tokens(timeline(["A:min7", "D:min7", "G:7"]))
    assert roots[:3].tolist() == [10, 3, 8] and qualities[:3].tolist() == [4, 4, 11]
    assert not roots[3:].any() and not qualities[3:].any()

    roots, qualities = encode_chord_tokens([], max_tokens=5)
    assert roots.tolist() == qualities.tolist() == [0] * 5
    with pytest.raises(ValueError):
        encode_chord_tokens(alternating, max_tokens=0)


# -- display spelling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tonic, mode, spelled",
    [
        ("A#", "major", "Bb major"), ("D#", "major", "Eb major"), ("G#", "major", "Ab major"),
        ("C#", "major", "Db major"), ("F#", "major", "Gb major"), ("F", "major", "F major"),
        ("E", "major", "E major"), ("B", "major", "B major"), ("Bb", "major", "Bb major"),
        ("C", "minor", "C minor"), ("A#", "minor", "Bb minor"), ("D#", "minor", "Eb minor"),
        ("C#", "minor", "C# minor"), ("G#", "minor", "G# minor"), ("F#", "minor", "F# minor"),
    ],
)
def test_spell_key(tonic, mode, spelled):
    from m2e_core.key import spell_key

    assert spell_key(KeyEstimate(tonic, mode, 0.5)) == spelled


@pytest.mark.parametrize(
    "label, key, spelled",
    [
        ("A#:maj7/3", KeyEstimate("F", "major", 0.9), "Bb:maj7/3"),
        ("D#:maj", KeyEstimate("C", "minor", 0.9), "Eb:maj"),
        ("G#:7", KeyEstimate("D#", "major", 0.9), "Ab:7"),
        ("C#:min", KeyEstimate("A#", "minor", 0.9), "Db:min"),
        ("Bb:min", KeyEstimate("E", "major", 0.9), "A#:min"),  # sharps in sharp keys, whatever came in
        ("G#:dim", KeyEstimate("A", "minor", 0.9), "G#:dim"),
        ("F#:hdim7", KeyEstimate("G", "major", 0.9), "F#:hdim7"),
        ("C:maj", KeyEstimate("A#", "major", 0.9), "C:maj"),  # naturals keep their names
        ("N", KeyEstimate("F", "major", 0.9), "N"),
        ("X", KeyEstimate("F", "major", 0.9), "X"),
    ],
)
def test_spell_chord_label(label, key, spelled):
    from m2e_core.key import spell_chord_label

    assert spell_chord_label(label, key) == spelled


def test_spelling_checks_its_input():
    from m2e_core.key import spell_chord_label, spell_key

    with pytest.raises(TypeError):
        spell_chord_label(None, KeyEstimate("C", "major", 0.5))
    with pytest.raises(ValueError):
        spell_key(KeyEstimate("H", "major", 0.5))
    with pytest.raises(ValueError):
        spell_key(KeyEstimate("C", "dorian", 0.5))
