"""Decoding, validation, resampling and segmentation, including the bad-input matrix."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from m2e_core.audio import Audio, load_audio, prepare_waveform, resample, segment_audio
from m2e_core.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLargeError,
    AudioTooShortError,
    InvalidAudioError,
    SilentAudioError,
)


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize(("fmt", "subtype", "ext"), [
    ("WAV", "PCM_16", ".wav"),
    ("FLAC", "PCM_16", ".flac"),
    ("OGG", "VORBIS", ".ogg"),
    ("MP3", "MPEG_LAYER_III", ".mp3"),
])
def test_decodes_common_formats(tmp_path, fmt, subtype, ext):
    path = tmp_path / f"clip{ext}"
    sf.write(path, tone(3.0, 44_100, channels=2), 44_100, format=fmt, subtype=subtype)
    audio = load_audio(path, sample_rate=24_000)
    assert audio.sample_rate == 24_000
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert audio.duration == pytest.approx(3.0, abs=0.1)
    # The 440 Hz tone survives decoding and resampling.
    spectrum = np.abs(np.fft.rfft(audio.samples[:24_000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)
    assert audio.source == path.name


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000])
def test_odd_sample_rates_resample_to_target(tmp_path, rate):
    path = tmp_path / "x.wav"
    sf.write(path, tone(2.0, rate, freq=1000.0), rate)
    audio = load_audio(path, sample_rate=24_000)
    assert len(audio.samples) == pytest.approx(48_000, abs=2)
    spectrum = np.abs(np.fft.rfft(audio.samples[:24_000]))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)


def test_many_channels_mix_to_mono(tmp_path):
    path = tmp_path / "surround.wav"
    sf.write(path, tone(2.0, 48_000, channels=6), 48_000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.samples.ndim == 1
    assert audio.sample_rate == 48_000


def test_native_rate_kept_without_target(tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, tone(1.5, 32_000), 32_000)
    assert load_audio(path).sample_rate == 32_000


# -- the bad-input matrix: each case has its own error type -------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(path)


def test_non_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio at all\n" * 100)
    with pytest.raises(AudioDecodeError, match="cannot decode"):
        load_audio(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(5.0, 44_100), 44_100)
    data = path.read_bytes()
    path.write_bytes(data[:200])  # header only, the stream is cut off
    with pytest.raises(AudioError):
        load_audio(path)


def test_truncated_wav_keeps_what_is_there(tmp_path):
    # A WAV cut mid-stream decodes up to the cut: nothing readable is lost.
    path = tmp_path / "cut.wav"
    sf.write(path, tone(4.0, 16_000), 16_000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    audio = load_audio(path)
    assert audio.duration == pytest.approx(2.0, abs=0.05)


def test_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(48_000, dtype=np.float32), 24_000)
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(path)


def test_sub_second_clip(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, tone(0.4, 24_000), 24_000)
    with pytest.raises(AudioTooShortError, match="0.40 s"):
        load_audio(path)


def test_nan_samples(tmp_path):
    samples = tone(2.0, 24_000)
    samples[1000:1010] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 24_000, subtype="FLOAT")
    with pytest.raises(InvalidAudioError, match="10 samples are NaN"):
        load_audio(path)


def test_huge_upload_refused_before_decoding(tmp_path):
    path = tmp_path / "big.wav"
    sf.write(path, tone(3.0, 24_000), 24_000)
    with pytest.raises(AudioTooLargeError, match="limit"):
        load_audio(path, max_bytes=10_000)


def test_very_long_file_refused_from_header(tmp_path):
    # 31 minutes at 4 kHz, 8-bit: small on disk, too long to analyse by default.
    rate = 4_000
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_U8") as handle:
        block = tone(60.0, rate)
        for _ in range(31):
            handle.write(block)
    with pytest.raises(AudioTooLargeError, match="31.0 min"):
        load_audio(path)


def test_prepare_waveform_checks():
    with pytest.raises(InvalidAudioError, match="sample rate"):
        prepare_waveform(tone(2.0, 24_000), 0)
    with pytest.raises(InvalidAudioError, match="shape"):
        prepare_waveform(np.zeros((2, 2, 2)), 24_000)
    with pytest.raises(InvalidAudioError, match="sample type"):
        prepare_waveform(np.array(["a"] * 48_000), 24_000)
    with pytest.raises(AudioTooShortError):
        prepare_waveform(np.zeros(0, dtype=np.float32), 24_000)
    with pytest.raises(InvalidAudioError, match="infinite"):
        prepare_waveform(np.full(48_000, np.inf, dtype=np.float32), 24_000)


def test_prepare_waveform_accepts_int_pcm_and_channels_first():
    pcm = (tone(2.0, 16_000) * 32767).astype(np.int16)
    audio = prepare_waveform(pcm, 16_000)
    assert audio.samples.dtype == np.float32
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.01)
    stereo_first = np.stack([tone(2.0, 16_000), tone(2.0, 16_000)])  # (channels, frames)
    assert prepare_waveform(stereo_first, 16_000).samples.shape == (32_000,)


def test_loud_float_input_is_peak_normalised():
    audio = prepare_waveform(tone(2.0, 16_000) * 8, 16_000)
    assert np.max(np.abs(audio.samples)) == pytest.approx(1.0, abs=1e-6)


def test_resample_identity_and_length():
    samples = tone(1.0, 22_050)
    assert resample(samples, 22_050, 22_050) is not None
    assert len(resample(samples, 22_050, 24_000)) == 24_000


# -- segmentation ---------------------------------------------------------------------------

def make_audio(seconds: float, rate: int = 1_000) -> Audio:
    return Audio(np.arange(int(seconds * rate), dtype=np.float32), rate, "x")


@pytest.mark.parametrize(("seconds", "expected"), [
    (3.0, [(0.0, 3.0)]),
    (30.0, [(0.0, 30.0)]),
    (32.0, [(0.0, 32.0)]),              # 2 s tail merged
    (62.0, [(0.0, 30.0), (30.0, 62.0)]),
    (66.0, [(0.0, 30.0), (30.0, 60.0), (60.0, 66.0)]),  # 6 s tail kept
    (90.0, [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]),
])
def test_segment_bounds(seconds, expected):
    segments = segment_audio(make_audio(seconds))
    assert [(s.start, s.end) for s in segments] == expected
    assert [s.index for s in segments] == list(range(len(expected)))


def test_segments_cover_every_sample_once_in_order():
    audio = make_audio(95.5)
    segments = segment_audio(audio)
    joined = np.concatenate([s.samples for s in segments])
    np.testing.assert_array_equal(joined, audio.samples)
    assert all(len(s.samples) == round((s.end - s.start) * 1_000) for s in segments)


def test_no_tail_shorter_than_encoder_minimum():
    # 30 s + 10 samples: the reference would hand MERT a 10-sample tail and crash.
    audio = Audio(np.ones(30 * 24_000 + 10, dtype=np.float32), 24_000, "x")
    segments = segment_audio(audio)
    assert len(segments) == 1 and len(segments[0].samples) == 30 * 24_000 + 10
