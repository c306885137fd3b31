"""Displayed key, calibrated confidence and key timeline (m2e_core.tonality)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.chroma import estimate_key_from_audio
from m2e_core.errors import InvalidAudioError
from m2e_core.tonality import Tonality, estimate_tonality, local_key
from m2e_core.tuning import Tuning
from m2e_core.types import KeyEstimate, KeySpan
from m2e_core.vocab import PITCH_CLASSES

RATE = 22_050
CADENCE = [[48, 60, 64, 67], [53, 60, 65, 69], [55, 59, 62, 67], [48, 60, 64, 67]]  # C F G C, with a bass
AB_CADENCE = [[note - 4 for note in chord] for chord in CADENCE]  # Ab Db Eb Ab
#: Natural-minor (Aeolian) progressions, no leading tone: the pop minor that reads as its relative major.
AEOLIAN_LOOPS = {
    "i-iv-v-i": [[45, 57, 60, 64], [50, 57, 62, 65], [52, 59, 64, 67], [45, 57, 60, 64]],  # Am Dm Em Am
    "i-bVI-bVII-i": [[45, 57, 60, 64], [41, 57, 60, 65], [43, 55, 59, 62], [45, 57, 60, 64]],  # Am F G Am
    "i-bIII-bVII-i": [[45, 57, 60, 64], [48, 55, 60, 64], [43, 55, 59, 62], [45, 57, 60, 64]],  # Am C G Am
}


def assert_contiguous(timeline: tuple[KeySpan, ...], duration: float) -> None:
    assert timeline and timeline[0].start == 0.0
    assert timeline[-1].end == pytest.approx(duration)
    for before, after in zip(timeline, timeline[1:]):
        assert before.end == after.start and before.end > before.start
        assert (before.key.tonic, before.key.mode) != (after.key.tonic, after.key.mode)
    assert all(0.0 <= span.key.confidence <= 1.0 for span in timeline)


def test_modulation_from_c_major_to_a_flat_major():
    first = synth_chord_loop(CADENCE, seconds_per_chord=2.0, repeats=4)
    second = synth_chord_loop(AB_CADENCE, seconds_per_chord=2.0, repeats=4)
    samples = np.concatenate([first, second])
    tonality = estimate_tonality(samples, RATE)
    assert_contiguous(tonality.timeline, samples.size / RATE)
    assert [(span.key.tonic, span.key.mode) for span in tonality.timeline] == [("C", "major"), ("G#", "major")]
    boundary = tonality.timeline[0].end
    assert abs(boundary - first.size / RATE) <= 3.0, f"boundary at {boundary:.1f} s, the key changes at 32 s"
    assert local_key(tonality.timeline, 0.0, 20.0).tonic == "C"
    assert local_key(tonality.timeline, 40.0, 60.0).tonic == "G#"


@pytest.mark.parametrize("shift", [0, 3, 7])
def test_one_key_gives_one_span(shift):
    samples = synth_chord_loop([[note + shift for note in chord] for chord in CADENCE], repeats=5)
    tonality = estimate_tonality(samples, RATE)
    assert [(span.key.tonic, span.key.mode) for span in tonality.timeline] == [(PITCH_CLASSES[shift], "major")]
    assert (tonality.key.tonic, tonality.key.mode) == (PITCH_CLASSES[shift], "major")


@pytest.mark.parametrize("shift", [0, 5, 10])
def test_harmonic_minor_loop_is_minor(shift):
    samples = synth_chord_loop([[note + shift for note in chord] for chord in A_MINOR_LOOP], repeats=3)
    key = estimate_tonality(samples, RATE).key
    assert (key.tonic, key.mode) == (PITCH_CLASSES[(9 + shift) % 12], "minor")


@pytest.mark.parametrize("name", sorted(AEOLIAN_LOOPS))
@pytest.mark.parametrize("shift", [0, -5])
def test_natural_minor_loops_with_a_bass_are_minor(name, shift):
    # The bass is what tells A minor from C major here, so it stays below C3 (the bass chroma's range).
    loop = [[note + shift for note in chord] for chord in AEOLIAN_LOOPS[name]]
    key = estimate_tonality(synth_chord_loop(loop, repeats=3), RATE).key
    assert (key.tonic, key.mode) == (PITCH_CLASSES[(9 + shift) % 12], "minor")


def test_confidence_is_higher_on_a_cadence_than_on_an_ambiguous_pair():
    cadence = estimate_tonality(synth_chord_loop(CADENCE, repeats=3), RATE).key
    # C and G alternating: I-V in C major or IV-I in G major.
    pair = estimate_tonality(synth_chord_loop([[48, 60, 64, 67], [43, 55, 59, 62]], repeats=6), RATE).key
    assert (cadence.tonic, cadence.mode) == ("C", "major") and cadence.confidence > 0.95
    assert pair.confidence < cadence.confidence - 0.05


def test_detuned_recording_keeps_its_key_and_reports_the_tuning():
    flat = synth_chord_loop([[note - 0.4 for note in chord] for chord in CADENCE], repeats=3)
    tonality = estimate_tonality(flat, RATE)
    assert tonality.tuning.cents == pytest.approx(-40.0, abs=3.0)
    assert (tonality.key.tonic, tonality.key.mode) == ("C", "major")
    again = estimate_tonality(flat, RATE, tuning=tonality.tuning)
    assert again == tonality


def test_estimate_key_from_audio_is_the_displayed_key():
    samples = synth_chord_loop(A_MINOR_LOOP, repeats=3)
    assert estimate_key_from_audio(samples, RATE) == estimate_tonality(samples, RATE).key
    by_profile = estimate_key_from_audio(samples, RATE, profile="krumhansl")
    assert (by_profile.tonic, by_profile.mode) == ("A", "minor")


def test_silence_gives_the_neutral_key_and_one_span():
    tonality = estimate_tonality(np.zeros(5 * RATE, dtype=np.float32), RATE)
    assert isinstance(tonality, Tonality)
    assert tonality.key == KeyEstimate("C", "major", 0.0)
    assert len(tonality.timeline) == 1 and tonality.timeline[0].end == pytest.approx(5.0)


def test_very_short_audio_still_gives_a_timeline():
    tonality = estimate_tonality(synth_chord_loop([[60, 64, 67]], seconds_per_chord=0.1), RATE)
    assert_contiguous(tonality.timeline, 0.1)


@pytest.mark.parametrize(
    "samples, rate",
    [
        (np.zeros((2, 100), dtype=np.float32), RATE),
        (np.zeros(100, dtype=np.int16), RATE),
        (np.array([], dtype=np.float32), RATE),
        (np.array([0.0, np.inf], dtype=np.float32), RATE),
        (np.zeros(100, dtype=np.float32), -1),
    ],
)
def test_bad_audio_is_refused(samples, rate):
    with pytest.raises(InvalidAudioError):
        estimate_tonality(samples, rate)


def test_local_key_takes_the_longest_key_in_the_window():
    c, g = KeyEstimate("C", "major", 0.9), KeyEstimate("G", "major", 0.6)
    timeline = (KeySpan(0, 10, c), KeySpan(10, 14, g), KeySpan(14, 30, KeyEstimate("C", "major", 0.5)))
    assert local_key(timeline, 9, 15) == KeyEstimate("G", "major", 0.6)
    both = local_key(timeline, 5, 20)  # C for 5 + 6 s, G for 4 s
    assert (both.tonic, both.confidence) == ("C", pytest.approx((5 * 0.9 + 6 * 0.5) / 11))
    assert local_key(timeline, 40, 50) is None
    assert local_key((), 0, 1) is None
    with pytest.raises(ValueError):
        local_key(timeline, 5, 5)
    with pytest.raises(TypeError):
        local_key([("C", "major")], 0, 1)
    assert Tuning(0.0, 0.0).cents == 0.0


@pytest.mark.parametrize("fmt, subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
@pytest.mark.parametrize("loop, key", [(C_MAJOR_LOOP, ("C", "major")), (A_MINOR_LOOP, ("A", "minor"))])
def test_lossy_file_without_a_bass_line_keeps_its_key(tmp_path, fmt, subtype, loop, key):
    # Nothing sounds below C3 here: the bass octaves hold only the codec's noise, which must not
    # be normalised up to a bass line (a Vorbis C G Am F loop once read as E minor).
    import soundfile as sf

    path = tmp_path / f"loop.{fmt.lower()}"
    sf.write(path, synth_chord_loop(loop, repeats=2, seconds_per_chord=1.5), RATE, format=fmt, subtype=subtype)
    samples, rate = sf.read(path, dtype="float32")
    estimate = estimate_tonality(samples, rate).key
    assert (estimate.tonic, estimate.mode) == key
    assert estimate.confidence > 0.8


def test_a_track_through_four_keys_shows_a_key_it_is_in():
    # C, D, F and A major in turn sum to evidence that fits A minor best (confidence 0.99 once),
    # a key no part of the track is in: the key shown is one the timeline holds, with a
    # confidence that says the track is split between keys.
    parts = [synth_chord_loop([[note + shift for note in chord] for chord in CADENCE], repeats=3)
             for shift in (0, 2, 5, 9)]
    tonality = estimate_tonality(np.concatenate(parts), RATE)
    spans = [(span.key.tonic, span.key.mode) for span in tonality.timeline]
    assert spans == [("C", "major"), ("D", "major"), ("F", "major"), ("A", "major")]
    assert (tonality.key.tonic, tonality.key.mode) in spans
    assert tonality.key.confidence <= 0.3
