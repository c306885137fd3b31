"""Audio in: decode, validate, mix to mono, resample, and cut into segments.

Conventions
-----------
- Samples are ``float32`` mono in [-1, 1]; times are seconds from the start of the file.
- Decoding uses soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3 and more);
  resampling uses soxr (VHQ). Nothing is written to disk.
- Every check raises a subclass of :class:`m2e_core.errors.AudioError` whose message
  names the file and says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .constants import (
    MAX_DURATION_SECONDS,
    MAX_FILE_BYTES,
    MIN_DURATION_SECONDS,
    MIN_TAIL_SECONDS,
    SEGMENT_SECONDS,
    SILENCE_PEAK,
)
from .errors import (
    AudioDecodeError,
    AudioTooLargeError,
    AudioTooShortError,
    InvalidAudioError,
    SilentAudioError,
)

#: File extensions the CLI picks up when it walks a directory.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".m4a"})

_BLOCK_FRAMES = 1 << 20
_MIN_SAMPLE_RATE = 4_000
_MAX_SAMPLE_RATE = 384_000


@dataclass(frozen=True)
class Audio:
    """Decoded mono audio."""

    samples: np.ndarray = field(repr=False)
    sample_rate: int
    source: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Segment:
    """A slice ``[start, end)`` of a track, in seconds, with its samples."""

    index: int
    start: float
    end: float
    samples: np.ndarray = field(repr=False)


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_duration: float = MAX_DURATION_SECONDS,
) -> Audio:
    """Decode an audio file to validated mono float32.

    Parameters
    ----------
    path : str or PathLike
        The file to decode.
    sample_rate : int, optional
        Resample to this rate; keep the file's own rate when ``None``.
    max_bytes : int, keyword-only
        Refuse files larger than this.
    max_duration : float, keyword-only
        Refuse audio longer than this many seconds (checked before decoding).

    Returns
    -------
    Audio

    Raises
    ------
    AudioDecodeError
        Missing, empty, truncated or non-audio file.
    AudioTooLargeError, AudioTooShortError, SilentAudioError, InvalidAudioError
        See :func:`prepare_waveform`.

    Examples
    --------
    >>> audio = load_audio("song.flac", sample_rate=24_000)  # doctest: +SKIP
    >>> audio.duration  # doctest: +SKIP
    183.2
    """
    file_path = Path(path)
    name = file_path.name
    if not file_path.is_file():
        raise AudioDecodeError(f"{name}: no such file")
    size = file_path.stat().st_size
    if size == 0:
        raise AudioDecodeError(f"{name}: the file is empty")
    if size > max_bytes:
        raise AudioTooLargeError(
            f"{name}: the file is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB"
        )
    try:
        with sf.SoundFile(file_path) as handle:
            native_rate = int(handle.samplerate)
            declared_frames = int(handle.frames)
            if native_rate <= 0:
                raise AudioDecodeError(f"{name}: the file declares an invalid sample rate")
            if declared_frames > 0 and declared_frames / native_rate > max_duration:
                raise AudioTooLargeError(
                    f"{name}: {declared_frames / native_rate / 60:.1f} min long; "
                    f"the limit is {max_duration / 60:.0f} min"
                )
            blocks = []
            decoded = 0
            while True:
                block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(_mix_to_mono(block))
                decoded += len(block)
                if decoded / native_rate > max_duration:
                    raise AudioTooLargeError(f"{name}: longer than the limit of {max_duration / 60:.0f} min")
    except sf.LibsndfileError as error:
        raise AudioDecodeError(
            f"{name}: cannot decode ({error.error_string.strip() or 'unknown format'}); "
            "supported formats are WAV, FLAC, OGG/Vorbis, Opus and MP3"
        ) from error
    except (RuntimeError, TypeError, ValueError) as error:
        raise AudioDecodeError(f"{name}: the file is corrupt or truncated ({error})") from error
    if not blocks:
        raise AudioDecodeError(f"{name}: the file holds no audio frames")
    samples = np.concatenate(blocks)
    return prepare_waveform(samples, native_rate, source=name, target_sample_rate=sample_rate,
                            max_duration=max_duration)


def prepare_waveform(
    samples: np.ndarray,
    sample_rate: int,
    *,
    source: str = "<array>",
    target_sample_rate: int | None = None,
    max_duration: float = MAX_DURATION_SECONDS,
) -> Audio:
    """Validate an in-memory waveform, mix it to mono and optionally resample it.

    ``samples`` may be 1-D (mono) or 2-D ``(frames, channels)``; integer PCM is scaled to
    [-1, 1]. Float input outside [-1, 1] is peak-normalised (with no other change).

    Raises
    ------
    InvalidAudioError
        Wrong shape or dtype, NaN or infinite samples, unusable sample rate.
    AudioTooShortError
        Shorter than ``MIN_DURATION_SECONDS``.
    AudioTooLargeError
        Longer than ``max_duration``.
    SilentAudioError
        Peak below about -80 dBFS.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise InvalidAudioError(f"{source}: sample rate must be an integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if not _MIN_SAMPLE_RATE <= sample_rate <= _MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            f"{source}: sample rate {sample_rate} Hz is outside {_MIN_SAMPLE_RATE}-{_MAX_SAMPLE_RATE} Hz"
        )
    array = np.asarray(samples)
    if array.ndim == 2:
        # Accept (channels, frames) from libraries that use that layout, when unambiguous.
        if array.shape[0] <= 8 < array.shape[1]:
            array = array.T
        array = _mix_to_mono(array)
    elif array.ndim != 1:
        raise InvalidAudioError(f"{source}: expected 1-D or 2-D samples, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise InvalidAudioError(f"{source}: unsupported sample type {array.dtype}")
    if len(array) == 0:
        raise AudioTooShortError(f"{source}: the audio is empty")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        raise InvalidAudioError(f"{source}: {bad} samples are NaN or infinite; the file is damaged")
    duration = len(array) / sample_rate
    if duration < MIN_DURATION_SECONDS:
        raise AudioTooShortError(
            f"{source}: {duration:.2f} s long; at least {MIN_DURATION_SECONDS:.0f} s of audio is needed"
        )
    if duration > max_duration:
        raise AudioTooLargeError(f"{source}: {duration / 60:.1f} min long; the limit is {max_duration / 60:.0f} min")
    peak = float(np.max(np.abs(array)))
    if peak < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: the audio is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")
    if peak > 1.0:
        array = array / peak
    if target_sample_rate is not None and target_sample_rate != sample_rate:
        array = resample(array, sample_rate, target_sample_rate)
        sample_rate = target_sample_rate
    return Audio(np.ascontiguousarray(array, dtype=np.float32), sample_rate, source)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono ``samples`` from ``orig_sr`` to ``target_sr`` with soxr (VHQ)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise InvalidAudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return np.asarray(samples, dtype=np.float32)
    out = soxr.resample(np.asarray(samples, dtype=np.float32), orig_sr, target_sr, quality="VHQ")
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def segment_audio(
    audio: Audio,
    *,
    segment_seconds: float = SEGMENT_SECONDS,
    min_tail_seconds: float = MIN_TAIL_SECONDS,
) -> tuple[Segment, ...]:
    """Cut audio into consecutive segments of ``segment_seconds``.

    A tail shorter than ``min_tail_seconds`` is merged into the previous segment (so the
    last segment may be up to ``segment_seconds + min_tail_seconds`` long); audio shorter
    than one segment is one segment. Every sample belongs to exactly one segment.

    Examples
    --------
    >>> import numpy as np
    >>> audio = Audio(np.zeros(24_000 * 62, dtype=np.float32), 24_000, "x")
    >>> [(s.start, s.end) for s in segment_audio(audio)]
    [(0.0, 30.0), (30.0, 62.0)]
    """
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    if min_tail_seconds < 0:
        raise ValueError(f"min_tail_seconds must be >= 0, got {min_tail_seconds}")
    rate = audio.sample_rate
    total = len(audio.samples)
    step = int(round(segment_seconds * rate))
    min_tail = int(round(min_tail_seconds * rate))
    bounds = list(range(0, total, step)) + [total]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_tail:
        del bounds[-2]
    return tuple(
        Segment(index, start / rate, end / rate, audio.samples[start:end])
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))
    )


def _mix_to_mono(block: np.ndarray) -> np.ndarray:
    if block.ndim == 1:
        return block
    if block.shape[1] == 1:
        return block[:, 0]
    return block.mean(axis=1, dtype=np.float32)
