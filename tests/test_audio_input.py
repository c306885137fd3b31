"""The analyzer's audio input: files and waveforms decoded alike, bad tuples refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from m2e_core.audio import MAX_DECODE_SAMPLE_RATE
from m2e_core.errors import InvalidAudioError
from m2e_core.pipeline import Analyzer


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(emotion=False, chords="chroma-hmm", device="cpu")


def test_a_waveform_and_its_file_load_alike(analyzer, tmp_path):
    rate = 96_000
    t = np.arange(3 * rate) / rate
    samples = (0.4 * np.sin(2 * np.pi * 1_000 * t) + 0.1 * np.sin(2 * np.pi * 15_000 * t)).astype(np.float32)
    path = tmp_path / "fast.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    from_file = analyzer.load(path)
    from_array = analyzer.load((samples, rate))
    assert from_file.sample_rate == from_array.sample_rate == MAX_DECODE_SAMPLE_RATE
    assert len(from_file.samples) == len(from_array.samples) == 3 * MAX_DECODE_SAMPLE_RATE
    np.testing.assert_allclose(from_file.samples, from_array.samples, atol=1e-5)
    slow = analyzer.load((samples[::4].copy(), rate // 4))
    assert slow.sample_rate == rate // 4  # at or below 48 kHz a waveform keeps its rate


def test_bad_tuples_are_one_line_audio_errors(analyzer):
    with pytest.raises(InvalidAudioError, match="expected \\(samples, sample_rate\\)"):
        analyzer.load((np.zeros(10), 16_000, "extra"))
    with pytest.raises(InvalidAudioError, match="sample rate must be an integer"):
        analyzer.load((np.zeros(48_000), float("nan")))
