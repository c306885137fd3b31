"""Decoding, validation, resampling and segmentation, including the bad-input matrix."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

import m2e_core.audio as audio_module
from m2e_core.audio import (
    DECODE_BLOCK_SAMPLES,
    MAX_DECODE_SAMPLE_RATE,
    Audio,
    display_name,
    load_audio,
    prepare_waveform,
    resample,
    segment_audio,
    sinc_resample,
)
from m2e_core.errors import (
    AudioDecodeError,
    AudioTooLargeError,
    AudioTooShortError,
    ConfigError,
    InvalidAudioError,
    SilentAudioError,
)


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(np.float32)


def write_blocks(path, seconds: int, rate: int, *, channels: int = 1, freq: float = 1000.0,
                 subtype: str = "PCM_16") -> None:
    """A tone written one second at a time (long or fast files without holding them in memory)."""
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype=subtype) as handle:
        for second in range(seconds):
            t = (np.arange(rate) + second * rate) / rate
            mono = 0.5 * np.sin(2 * np.pi * freq * t)
            handle.write(np.repeat(mono[:, None], channels, axis=1).astype(np.float32))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    window = samples[:rate]
    return float(np.argmax(np.abs(np.fft.rfft(window))) * rate / len(window))


def set_flac_length(path, frames: int) -> None:
    """Overwrite the 36-bit total-samples field of a FLAC's STREAMINFO (0 = "unknown")."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | frames
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def assert_one_line_without_directory(error: BaseException, directory) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(directory) not in message


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


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000, 384_000])
def test_sample_rates_and_channel_counts(tmp_path, rate, channels):
    path = tmp_path / "x.flac"
    write_blocks(path, 2, rate, channels=channels)
    audio = load_audio(path)
    # Kept at its own rate up to 48 kHz; faster files are resampled to 48 kHz while decoded.
    assert audio.sample_rate == min(rate, MAX_DECODE_SAMPLE_RATE)
    assert len(audio.samples) == pytest.approx(2 * audio.sample_rate, abs=2)
    assert dominant_frequency(audio.samples, audio.sample_rate) == pytest.approx(1000, abs=2)
    at_target = load_audio(path, sample_rate=24_000)
    assert at_target.sample_rate == 24_000 and len(at_target.samples) == pytest.approx(48_000, abs=2)
    assert dominant_frequency(at_target.samples, 24_000) == pytest.approx(1000, abs=2)
    assert np.max(np.abs(at_target.samples)) == pytest.approx(0.5, abs=0.01)


def test_native_rate_kept_without_target(tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, tone(1.5, 32_000), 32_000)
    assert load_audio(path).sample_rate == 32_000


def test_max_sample_rate_is_an_option(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, tone(2.0, 96_000, freq=1000.0), 96_000)
    assert load_audio(path, max_sample_rate=96_000).sample_rate == 96_000
    assert load_audio(path, max_sample_rate=32_000).sample_rate == 32_000
    with pytest.raises(ConfigError, match="sample_rate"):
        load_audio(path, sample_rate=0)


def test_streamed_resampling_equals_resampling_the_whole_file(tmp_path):
    path = tmp_path / "x.wav"
    samples = tone(5.0, 44_100, freq=3_000.0)
    sf.write(path, samples, 44_100, subtype="FLOAT")
    streamed = load_audio(path, sample_rate=24_000).samples
    whole = soxr.resample(samples, 44_100, 24_000, quality="VHQ")
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


# -- memory: bounded by the decoded mono signal at <= 48 kHz, not by the file -----------------

def test_decoding_memory_does_not_follow_the_files_rate(tmp_path):
    rate, seconds, channels = 384_000, 20, 2
    path = tmp_path / "fast.flac"
    write_blocks(path, seconds, rate, channels=channels)
    native_mono_bytes = rate * seconds * 4
    tracemalloc.start()
    try:
        audio = load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert audio.sample_rate == 48_000 and audio.duration == pytest.approx(seconds, abs=1e-3)
    output_bytes = audio.samples.nbytes
    # The decoder holds the output, one block of the file and the block's mono mix and resampled copy.
    assert peak < output_bytes + 3 * DECODE_BLOCK_SAMPLES * 4
    assert peak < native_mono_bytes / 2


def test_decoder_blocks_are_bounded_in_samples(tmp_path, monkeypatch):
    path = tmp_path / "surround.wav"
    write_blocks(path, 12, 96_000, channels=6)
    requested = []
    original = audio_module._ForwardReader.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames * self.channels)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(audio_module._ForwardReader, "read", spy)
    audio = load_audio(path)
    assert audio.duration == pytest.approx(12.0, abs=1e-3)
    assert len(requested) > 1 and max(requested) <= DECODE_BLOCK_SAMPLES


def test_many_channels_mix_to_mono(tmp_path):
    path = tmp_path / "surround.wav"
    sf.write(path, tone(2.0, 48_000, channels=6), 48_000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.samples.ndim == 1
    assert audio.sample_rate == 48_000
    expected = tone(2.0, 48_000, channels=6).mean(axis=1)
    np.testing.assert_allclose(audio.samples, expected, atol=1e-6)


# -- the bad-input matrix: each case has its own error type, one line, no directories -----------

def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file") as caught:
        load_audio(tmp_path / "nope.wav")
    assert_one_line_without_directory(caught.value, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(path)


@pytest.mark.parametrize("name", ["notes.wav", "notes.mp3", "notes.flac", "notes.ogg"])
def test_text_file_is_not_an_audio_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not audio at all\n" * 100)
    with pytest.raises(AudioDecodeError, match=f"{name}: cannot decode: not an audio file") as caught:
        load_audio(path)
    assert "pipe" not in str(caught.value) and "System error" not in str(caught.value)
    assert_one_line_without_directory(caught.value, tmp_path)


def test_random_bytes_named_mp3_is_not_an_audio_file(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8)
    data[0] = 0x42  # not an MPEG frame sync
    path = tmp_path / "upload.mp3"
    path.write_bytes(data.tobytes())
    with pytest.raises(AudioDecodeError, match="not an audio file") as caught:
        load_audio(path)
    assert "possibly a pipe" not in str(caught.value)


def test_corrupt_audio_container_says_cannot_decode(tmp_path):
    path = tmp_path / "broken.mp3"
    path.write_bytes(b"ID3" + b"\0" * 64)
    with pytest.raises(AudioDecodeError, match="broken.mp3: cannot decode the audio"):
        load_audio(path)
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\0\0\0\x20ftypM4A " + b"\0" * 200)
    with pytest.raises(AudioDecodeError, match="MP4/M4A"):
        load_audio(m4a)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(5.0, 44_100), 44_100)
    data = path.read_bytes()
    path.write_bytes(data[:200])  # header only, the stream is cut off
    with pytest.raises(AudioDecodeError, match="corrupt or truncated at 0.0 s") as caught:
        load_audio(path)
    assert_one_line_without_directory(caught.value, tmp_path)


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


def test_silence_at_a_fast_rate(tmp_path):
    path = tmp_path / "silence.flac"
    with sf.SoundFile(path, "w", samplerate=192_000, channels=2, subtype="PCM_24") as handle:
        handle.write(np.zeros((192_000 * 3, 2), dtype=np.float32))
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(path)


def test_sub_second_clip(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, tone(0.4, 24_000), 24_000)
    with pytest.raises(AudioTooShortError, match="0.40 s"):
        load_audio(path)


def test_sub_second_clip_at_384k(tmp_path):
    path = tmp_path / "blip.flac"
    sf.write(path, tone(0.5, 384_000), 384_000)
    with pytest.raises(AudioTooShortError, match="0.50 s"):
        load_audio(path)


def test_nan_samples(tmp_path):
    samples = tone(2.0, 24_000)
    samples[1000:1010] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 24_000, subtype="FLOAT")
    with pytest.raises(InvalidAudioError, match="nan.wav: 10 samples are NaN or infinite") as caught:
        load_audio(path)
    assert_one_line_without_directory(caught.value, tmp_path)


def test_nan_and_inf_in_a_stereo_file_at_a_fast_rate(tmp_path):
    samples = tone(3.0, 96_000, channels=2)
    samples[5, 0] = np.nan
    samples[200_000, 1] = np.inf
    path = tmp_path / "bad.wav"
    sf.write(path, samples, 96_000, subtype="FLOAT")
    with pytest.raises(InvalidAudioError, match="2 samples are NaN or infinite"):
        load_audio(path)


def test_huge_upload_refused_before_decoding(tmp_path):
    path = tmp_path / "big.wav"
    sf.write(path, tone(3.0, 24_000), 24_000)
    with pytest.raises(AudioTooLargeError, match="limit"):
        load_audio(path, max_bytes=10_000)


def test_very_long_file_refused_from_header_without_decoding(tmp_path, monkeypatch):
    # 31 minutes at 4 kHz, 8-bit: small on disk, too long to analyse by default.
    rate = 4_000
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_U8") as handle:
        block = tone(60.0, rate)
        for _ in range(31):
            handle.write(block)
    reads = []
    monkeypatch.setattr(audio_module._ForwardReader, "read", lambda self, *a, **k: reads.append(a))
    with pytest.raises(AudioTooLargeError, match="31.0 min"):
        load_audio(path)
    assert reads == []


def test_flac_with_a_zeroed_length_field_decodes_by_counting(tmp_path):
    path = tmp_path / "zeroed.flac"
    sf.write(path, tone(3.0, 8_000), 8_000)
    set_flac_length(path, 0)
    with sf.SoundFile(path) as handle:
        assert handle.frames > 10**15  # what libsndfile makes of an unknown length
    audio = load_audio(path)
    assert len(audio.samples) == 24_000  # every frame, the last block too


def test_flac_with_a_garbage_length_field(tmp_path):
    path = tmp_path / "garbage.flac"
    sf.write(path, tone(3.0, 44_100), 44_100)
    set_flac_length(path, (1 << 36) - 1)  # 26 000 min declared in a small file
    assert len(load_audio(path).samples) == 3 * 44_100


def test_flac_with_a_zeroed_length_field_longer_than_the_limit(tmp_path):
    path = tmp_path / "zeroed.flac"
    write_blocks(path, 12, 8_000)
    set_flac_length(path, 0)
    with pytest.raises(AudioTooLargeError, match="longer than the limit") as caught:
        load_audio(path, max_duration=10.0)
    assert "min long" not in str(caught.value)


def test_very_long_actual_audio_is_refused_while_decoding(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    write_blocks(path, 40, 8_000)
    set_flac_length(path, 0)
    reads = []
    original = audio_module._ForwardReader.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(audio_module._ForwardReader, "read", spy)
    monkeypatch.setattr(audio_module, "DECODE_BLOCK_SAMPLES", 8_000)
    with pytest.raises(AudioTooLargeError, match="longer than the limit"):
        load_audio(path, max_duration=10.0)
    assert len(reads) == 11  # stopped one block past the limit, not at the end of the file


def test_unusable_paths_are_one_line_errors(tmp_path):
    with pytest.raises(AudioDecodeError, match="null byte") as caught:
        load_audio(str(tmp_path / "bad\0name.wav"))
    assert_one_line_without_directory(caught.value, tmp_path)
    with pytest.raises(AudioDecodeError, match="too long") as caught:
        load_audio(tmp_path / ("x" * 300 + ".wav"))
    assert_one_line_without_directory(caught.value, tmp_path)
    assert len(str(caught.value)) < 160 and str(caught.value).endswith("too long for this system")
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        load_audio(tmp_path)
    with pytest.raises(AudioDecodeError, match="expected a file path"):
        load_audio(12)


def test_display_name():
    assert display_name("/srv/uploads/req-1/song.mp3") == "song.mp3"
    assert display_name("bad\0name.wav") == "bad\\x00name.wav"
    long = display_name("/tmp/" + "y" * 300 + ".flac")
    assert len(long) == 80 and long.endswith("yyy.flac") and "..." in long


def test_prepare_waveform_checks():
    with pytest.raises(InvalidAudioError, match="sample rate"):
        prepare_waveform(tone(2.0, 24_000), 0)
    with pytest.raises(InvalidAudioError, match="sample rate"):
        prepare_waveform(tone(2.0, 24_000), float("nan"))
    with pytest.raises(InvalidAudioError, match="shape"):
        prepare_waveform(np.zeros((2, 2, 2)), 24_000)
    with pytest.raises(InvalidAudioError, match="sample type"):
        prepare_waveform(np.array(["a"] * 48_000), 24_000)
    with pytest.raises(InvalidAudioError, match="sample type"):
        prepare_waveform(np.array([["a", "b"]] * 48_000), 24_000)
    with pytest.raises(AudioTooShortError):
        prepare_waveform(np.zeros(0, dtype=np.float32), 24_000)
    with pytest.raises(InvalidAudioError, match="infinite"):
        prepare_waveform(np.full(48_000, np.inf, dtype=np.float32), 24_000)
    with pytest.raises(InvalidAudioError, match="3 samples are NaN"):
        prepare_waveform(np.where(np.arange(48_000) < 3, np.nan, 0.1), 24_000)


def test_prepare_waveform_accepts_int_pcm_and_channels_first():
    pcm = (tone(2.0, 16_000) * 32767).astype(np.int16)
    audio = prepare_waveform(pcm, 16_000)
    assert audio.samples.dtype == np.float32
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.01)
    stereo_first = np.stack([tone(2.0, 16_000), tone(2.0, 16_000)])  # (channels, frames)
    assert prepare_waveform(stereo_first, 16_000).samples.shape == (32_000,)
    # Stereo integer PCM is scaled like mono, not normalised.
    stereo_pcm = np.stack([pcm, pcm // 2], axis=1)
    assert np.max(np.abs(prepare_waveform(stereo_pcm, 16_000).samples)) == pytest.approx(0.375, abs=0.01)


def test_loud_float_input_is_peak_normalised_without_touching_the_input():
    loud = tone(2.0, 16_000) * 8
    audio = prepare_waveform(loud, 16_000)
    assert np.max(np.abs(audio.samples)) == pytest.approx(1.0, abs=1e-6)
    assert np.max(np.abs(loud)) == pytest.approx(4.0, abs=1e-6)


def test_loud_float_file_is_peak_normalised(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, tone(2.0, 96_000, freq=1000.0) * 6, 96_000, subtype="FLOAT")
    audio = load_audio(path)
    assert np.max(np.abs(audio.samples)) <= 1.0
    assert np.max(np.abs(audio.samples)) == pytest.approx(1.0, abs=1e-3)


def test_resample_identity_and_length():
    samples = tone(1.0, 22_050)
    assert resample(samples, 22_050, 22_050) is not None
    assert len(resample(samples, 22_050, 24_000)) == 24_000
    assert len(resample(samples, 22_050, 24_000, method="sinc")) == 24_000
    with pytest.raises(ConfigError, match="resampling method"):
        resample(samples, 22_050, 24_000, method="linear")


# -- the sinc resampler: torchaudio's default, checked against its formula -------------------

def formula_resample(samples: np.ndarray, orig_sr: int, target_sr: int, outputs=None,
                     width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Direct evaluation of the windowed-sinc sum, output by output, in float64 (slow, independent)."""
    divisor = math.gcd(orig_sr, target_sr)
    step, phases = orig_sr // divisor, target_sr // divisor
    cutoff = min(step, phases) * rolloff
    count = math.ceil(len(samples) * phases / step)
    indices = np.arange(count) if outputs is None else np.asarray(outputs)
    x = np.asarray(samples, dtype=np.float64)
    reach = width * step / cutoff
    result = np.empty(len(indices))
    for row, n in enumerate(indices):
        position = n * step / phases
        lo, hi = max(0, math.ceil(position - reach)), min(len(x) - 1, math.floor(position + reach))
        i = np.arange(lo, hi + 1)
        u = (i - position) * cutoff / step
        weights = np.sinc(u) * np.cos(np.pi * u / (2 * width)) ** 2 * cutoff / step
        result[row] = np.dot(x[lo:hi + 1], weights)
    return result


@pytest.mark.parametrize("orig_sr", [8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 44_101, 48_000, 96_000,
                                     384_000])
def test_sinc_resample_equals_the_formula(orig_sr):
    rng = np.random.default_rng(orig_sr)
    noise = (0.3 * rng.standard_normal(orig_sr * 2 + 17)).astype(np.float32)
    out = sinc_resample(noise, orig_sr, 24_000)
    assert len(out) == math.ceil(len(noise) * 24_000 / orig_sr)
    picks = [0, 1, 2, 7, 1_000, len(out) // 2, len(out) - 2, len(out) - 1]
    np.testing.assert_allclose(out[picks], formula_resample(noise, orig_sr, 24_000, picks), atol=2e-6)


def test_sinc_resample_whole_output_equals_the_formula():
    rng = np.random.default_rng(0)
    noise = (0.3 * rng.standard_normal(4_410)).astype(np.float32)
    np.testing.assert_allclose(sinc_resample(noise, 44_100, 24_000), formula_resample(noise, 44_100, 24_000),
                               atol=2e-6)
    up = sinc_resample(noise, 8_000, 24_000)
    np.testing.assert_allclose(up, formula_resample(noise, 8_000, 24_000), atol=2e-6)


def test_sinc_resample_known_properties():
    # Equal rates: the input unchanged.
    samples = tone(1.0, 24_000)
    assert np.array_equal(sinc_resample(samples, 24_000, 24_000), samples)
    # DC passes with the filter's gain (within 0.1 % of 1), away from the edges.
    for rate in (8_000, 44_100, 48_000):
        ones = sinc_resample(np.ones(rate, dtype=np.float32), rate, 24_000)[200:-200]
        assert np.all(np.abs(ones - 1.0) < 1e-3)
    # Passband kept, far stopband removed (the cutoff is 0.99 x 12 kHz).
    t = np.arange(96_000) / 48_000
    for freq, low, high in ((1_000, 0.999, 1.001), (15_000, 0.0, 0.01)):
        out = sinc_resample(np.sin(2 * np.pi * freq * t).astype(np.float32), 48_000, 24_000)[500:-500]
        assert low <= np.sqrt(2 * np.mean(out**2)) <= high
    # Time invariance: two input samples later at 48 -> 24 kHz is one output sample later.
    noise = np.random.default_rng(1).standard_normal(20_000).astype(np.float32)
    shifted = np.concatenate([np.zeros(2, dtype=np.float32), noise])
    np.testing.assert_allclose(sinc_resample(shifted, 48_000, 24_000)[101:-100],
                               sinc_resample(noise, 48_000, 24_000)[100:-100], atol=1e-6)
    # Linear.
    a, b = noise[:9_000], noise[9_000:18_000]
    np.testing.assert_allclose(sinc_resample(2 * a - b, 44_100, 24_000),
                               2 * sinc_resample(a, 44_100, 24_000) - sinc_resample(b, 44_100, 24_000), atol=1e-5)


def test_sinc_resample_checks_its_arguments():
    with pytest.raises(InvalidAudioError, match="1-D"):
        sinc_resample(np.zeros((4, 2)), 48_000, 24_000)
    with pytest.raises(InvalidAudioError, match="orig_sr"):
        sinc_resample(np.zeros(10), 0, 24_000)
    with pytest.raises(ConfigError, match="rolloff"):
        sinc_resample(np.zeros(10), 48_000, 24_000, rolloff=1.5)
    assert sinc_resample(np.zeros(0, dtype=np.float32), 48_000, 24_000).shape == (0,)


def test_sinc_input_embeds_like_the_formula_with_the_encoder(tiny_models):
    from m2e_core.encoder import MertEncoder

    encoder = MertEncoder.from_pretrained(tiny_models[0])
    rng = np.random.default_rng(5)
    t = np.arange(3 * 44_100) / 44_100
    signals = {
        "tones": (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 9_000 * t)).astype(np.float32),
        "white noise": (0.3 * rng.standard_normal(len(t))).astype(np.float32),
    }
    for name, signal in signals.items():
        ours, reference = encoder.embed([resample(signal, 44_100, 24_000, method="sinc"),
                                         formula_resample(signal, 44_100, 24_000).astype(np.float32)])
        cosine = float(ours @ reference / np.linalg.norm(ours) / np.linalg.norm(reference))
        assert cosine >= 0.99999, name


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


@pytest.mark.parametrize(("seconds", "expected"), [
    (3.0, [(0.0, 3.0)]),                 # shorter than a segment: the whole audio
    (29.999, [(0.0, 29.999)]),
    (30.0, [(0.0, 30.0)]),
    (32.0, [(0.0, 30.0)]),               # the tail is dropped
    (62.0, [(0.0, 30.0), (30.0, 60.0)]),
    (89.9, [(0.0, 30.0), (30.0, 60.0)]),
    (90.0, [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]),
])
def test_segment_bounds_dropping_tails_as_upstream_training(seconds, expected):
    audio = make_audio(seconds)
    segments = segment_audio(audio, tail="drop")
    assert [(s.start, s.end) for s in segments] == expected
    for segment in segments:
        start = round(segment.start * 1_000)
        np.testing.assert_array_equal(segment.samples, audio.samples[start:start + len(segment.samples)])
    with pytest.raises(ValueError, match="tail"):
        segment_audio(audio, tail="pad")


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
    dropped = segment_audio(audio, tail="drop")
    assert len(dropped) == 1 and len(dropped[0].samples) == 30 * 24_000
