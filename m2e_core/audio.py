"""Audio in: decode, validate, mix to mono, resample, and cut into segments.

Conventions
-----------
- Samples are ``float32`` mono in [-1, 1]; times are seconds from the start of the file.
- Decoding uses soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3 and more) block by
  block, each block mixed to mono at once, so memory follows the decoded mono signal and never
  the file's channel count. A file above :data:`MAX_DECODE_SAMPLE_RATE` (48 kHz) is resampled to
  48 kHz block by block while it is decoded (soxr VHQ, streaming): 48 kHz keeps everything up to
  about 22 kHz, more than any model here reads (MERT 24 kHz, chords and key 22.05 kHz), and a
  384 kHz file costs what a 48 kHz one does. Nothing is written to disk.
- Two resamplers (:func:`resample`): ``"soxr"`` (VHQ) for the chord and key front ends, and
  ``"sinc"`` (:func:`sinc_resample`), torchaudio's default resampler, for the MERT input: the
  Music2Emo features were extracted with torchaudio's default.
- Segments (:func:`segment_audio`): ``tail="merge"`` joins a short tail to the segment before it
  (what the explorer shows); ``tail="drop"`` keeps whole segments only, and audio shorter than
  one segment as one segment, which is how the upstream Music2Emo feature extraction cut its
  training audio. :func:`model_segments` is what the emotion model reads: the merged bounds,
  each segment's samples cut to one window.
- Every check raises a subclass of :class:`m2e_core.errors.AudioError` with a one-line message
  that names the file (its name only, never a directory) and says what was wrong.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from numpy.lib.stride_tricks import as_strided

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
    ConfigError,
    InvalidAudioError,
    SilentAudioError,
)

#: File extensions the CLI picks up when it walks a directory.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".m4a"})
#: Highest rate :func:`load_audio` keeps; a file above it is resampled to it while it is decoded.
MAX_DECODE_SAMPLE_RATE = 48_000
#: Samples (frames x channels) the decoder reads per block: 4 MB of float32, whatever the file.
DECODE_BLOCK_SAMPLES = 1 << 20
#: Methods of :func:`resample`.
RESAMPLE_METHODS = ("soxr", "sinc")
#: Tail rules of :func:`segment_audio`.
TAIL_RULES = ("merge", "drop")

_MIN_SAMPLE_RATE = 4_000
_MAX_SAMPLE_RATE = 384_000
_MIN_BLOCK_FRAMES = 1_024
#: No codec stores more frames than this per byte of file (a FLAC frame of 65535 samples takes
#: several bytes): a header that declares more is wrong, and the decoded frames are counted instead.
_MAX_FRAMES_PER_BYTE = 1 << 16
#: Output samples per strided pass of :func:`sinc_resample` (bounds its temporary arrays).
_SINC_CHUNK_BLOCKS = 1 << 14
_NAME_LIMIT = 80
_FORMATS = "WAV, FLAC, OGG/Vorbis, Opus and MP3"
#: Leading bytes of the containers libsndfile reads (MP3 frames also start with an 11-bit sync).
_AUDIO_SIGNATURES = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"riff", b"FORM", b"fLaC", b"OggS", b"ID3",
                     b".snd", b"caff")


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


def display_name(path: str | os.PathLike[str] | bytes) -> str:
    """The name of ``path`` as messages show it: no directory, unprintable characters escaped, at most 80 characters.

    Examples
    --------
    >>> display_name("/srv/uploads/req-1/song.mp3")
    'song.mp3'
    >>> display_name("bad\\x00name.wav")
    'bad\\\\x00name.wav'
    """
    text = os.fsdecode(os.fspath(path))
    name = os.path.basename(text.rstrip("/")) or text
    name = "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)
    if len(name) > _NAME_LIMIT:
        name = name[: _NAME_LIMIT - 21] + "..." + name[-18:]
    return name


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_duration: float = MAX_DURATION_SECONDS,
    max_sample_rate: int = MAX_DECODE_SAMPLE_RATE,
) -> Audio:
    """Decode an audio file to validated mono float32, block by block.

    Parameters
    ----------
    path : str or PathLike
        The file to decode.
    sample_rate : int, optional
        Resample to this rate while decoding (soxr VHQ). ``None`` keeps the file's own rate up
        to ``max_sample_rate`` and resamples a faster file to ``max_sample_rate``.
    max_bytes : int, keyword-only
        Refuse files larger than this.
    max_duration : float, keyword-only
        Refuse audio longer than this many seconds: from the header when it is plausible for
        the file's size, else as soon as the decoded frames pass it.
    max_sample_rate : int, keyword-only
        Highest rate kept when ``sample_rate`` is ``None`` (default 48 kHz).

    Returns
    -------
    Audio
        ``source`` is the file's name, without its directory.

    Raises
    ------
    AudioDecodeError
        Missing, empty, truncated, corrupt or non-audio file, or an unusable path.
    AudioTooLargeError
        Larger than ``max_bytes`` or longer than ``max_duration``.
    AudioTooShortError, SilentAudioError, InvalidAudioError
        Under a second, silent, NaN or infinite samples, or a sample rate outside 4-384 kHz.

    Examples
    --------
    >>> audio = load_audio("song.flac", sample_rate=24_000)  # doctest: +SKIP
    >>> audio.duration  # doctest: +SKIP
    183.2
    """
    for label, rate in (("sample_rate", sample_rate), ("max_sample_rate", max_sample_rate)):
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0):
            raise ConfigError(f"{label} must be a positive integer, got {rate!r}")
    file_path, name, size = _regular_file(path, max_bytes)
    try:
        handle = _ForwardReader(file_path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as error:
        raise AudioDecodeError(_unreadable(file_path, name)) from error
    with handle:
        native_rate = int(handle.samplerate)
        channels = int(handle.channels)
        declared = int(handle.frames)
        if channels < 1:
            raise AudioDecodeError(f"{name}: the file declares no audio channels")
        _check_rate(native_rate, name)
        known = 0 < declared <= size * _MAX_FRAMES_PER_BYTE
        if known and declared / native_rate > max_duration:
            raise AudioTooLargeError(
                f"{name}: {declared / native_rate / 60:.1f} min long; the limit is {max_duration / 60:.0f} min"
            )
        out_rate = int(sample_rate) if sample_rate is not None else min(native_rate, int(max_sample_rate))
        return _decode(handle, name, native_rate, out_rate, declared if known else None, max_duration)


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
    _check_rate(sample_rate, source)
    array = np.asarray(samples)
    if array.ndim not in (1, 2):
        raise InvalidAudioError(f"{source}: expected 1-D or 2-D samples, got shape {array.shape}")
    # Accept (channels, frames) from libraries that use that layout, when unambiguous.
    if array.ndim == 2 and array.shape[0] <= 8 < array.shape[1]:
        array = array.T
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise InvalidAudioError(f"{source}: unsupported sample type {array.dtype}")
    if array.ndim == 2:
        array = _mix_to_mono(array)
    if len(array) == 0:
        raise AudioTooShortError(f"{source}: the audio is empty")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.size(finite) - np.count_nonzero(finite))
        raise InvalidAudioError(f"{source}: {bad} samples are NaN or infinite; the file is damaged")
    peak = float(max(array.max(), -array.min()))
    audio = _checked(array, sample_rate, source, len(array) / sample_rate, peak, max_duration, owned=False)
    if target_sample_rate is not None and target_sample_rate != sample_rate:
        return Audio(resample(audio.samples, sample_rate, target_sample_rate), int(target_sample_rate), source)
    return audio


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, *, method: str = "soxr") -> np.ndarray:
    """Resample mono ``samples`` from ``orig_sr`` to ``target_sr``.

    Parameters
    ----------
    samples : numpy.ndarray
        1-D float samples.
    orig_sr, target_sr : int
        Rates in Hz.
    method : {"soxr", "sinc"}
        ``"soxr"``: soxr VHQ, clipped to [-1, 1] (chords, key). ``"sinc"``: :func:`sinc_resample`,
        torchaudio's default resampler, not clipped, as torchaudio does not clip (the MERT input).

    Returns
    -------
    numpy.ndarray
        float32; the input itself (as float32) when the rates are equal.
    """
    if method not in RESAMPLE_METHODS:
        raise ConfigError(f"unknown resampling method {method!r}; use one of {', '.join(RESAMPLE_METHODS)}")
    if orig_sr <= 0 or target_sr <= 0:
        raise InvalidAudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    array = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return array
    if method == "sinc":
        return sinc_resample(array, int(orig_sr), int(target_sr))
    out = soxr.resample(array, orig_sr, target_sr, quality="VHQ")
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def sinc_resample(
    samples: np.ndarray,
    orig_sr: int,
    target_sr: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> np.ndarray:
    r"""Band-limited interpolation with a Hann-windowed sinc: torchaudio's default resampler.

    With ``o`` and ``t`` the two rates divided by their greatest common divisor, ``f = min(o, t)
    * rolloff`` the cutoff and ``w = lowpass_filter_width`` zero crossings each side, output
    sample ``n`` sits at input position ``p = n * o / t`` and is

    .. math:: y[n] = \sum_i x[i] \, \frac{f}{o} \, \mathrm{sinc}(u_i) \cos^2\!\Big(\frac{\pi u_i}{2w}\Big),
              \qquad u_i = \frac{f\,(i - p)}{o}, \quad |u_i| < w,

    with ``sinc(u) = sin(pi u) / (pi u)`` and samples outside the input counting as zero; the
    output has ``ceil(len(samples) * t / o)`` samples. That is the formula of
    ``torchaudio.functional.resample`` with its defaults (``sinc_interp_hann``, width 6,
    rolloff 0.99). It is evaluated polyphase: one filter of ``ceil(2 w o / f) + 2`` taps per
    output phase, applied to strided views of the input in float32.

    Parameters
    ----------
    samples : numpy.ndarray
        1-D float samples.
    orig_sr, target_sr : int
        Rates in Hz.
    lowpass_filter_width : int, keyword-only
        Zero crossings of the sinc each side (torchaudio's default 6).
    rolloff : float, keyword-only
        Cutoff as a fraction of the lower Nyquist frequency (torchaudio's default 0.99).

    Returns
    -------
    numpy.ndarray
        float32 samples at ``target_sr``.

    Examples
    --------
    >>> import numpy as np
    >>> sinc_resample(np.ones(44_100, dtype=np.float32), 44_100, 24_000).shape
    (24000,)
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise InvalidAudioError(f"sinc_resample takes 1-D samples, got shape {array.shape}")
    for label, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InvalidAudioError(f"{label} must be a positive integer, got {rate!r}")
    if isinstance(lowpass_filter_width, bool) or not isinstance(lowpass_filter_width, int) or lowpass_filter_width < 1:
        raise ConfigError(f"lowpass_filter_width must be a positive integer, got {lowpass_filter_width!r}")
    if not 0.0 < rolloff <= 1.0:
        raise ConfigError(f"rolloff must be in (0, 1], got {rolloff!r}")
    if orig_sr == target_sr:
        return array
    step, phases, first, weights = _sinc_filters(int(orig_sr), int(target_sr), lowpass_filter_width, rolloff)
    taps = weights.shape[1]
    total_in = len(array)
    total_out = -(-phases * total_in // step)
    out = np.empty(total_out, dtype=np.float32)
    blocks = -(-total_out // phases)
    lowest, highest = int(first.min()), int(first.max())
    for block0 in range(0, blocks, _SINC_CHUNK_BLOCKS):
        block1 = min(blocks, block0 + _SINC_CHUNK_BLOCKS)
        # The input this chunk of outputs reads, zero outside the signal.
        lo = block0 * step + lowest
        hi = (block1 - 1) * step + highest + taps
        local = np.zeros(hi - lo, dtype=np.float32)
        start, stop = max(lo, 0), min(hi, total_in)
        if stop > start:
            local[start - lo:stop - lo] = array[start:stop]
        stride = local.strides[0]
        for phase in range(phases):
            count = min(block1, -(-(total_out - phase) // phases)) - block0
            if count <= 0:
                continue
            offset = int(first[phase]) - lowest
            view = as_strided(local[offset:], shape=(count, taps), strides=(step * stride, stride), writeable=False)
            first_out = block0 * phases + phase
            out[first_out:first_out + (count - 1) * phases + 1:phases] = view @ weights[phase]
    return out


def _sinc_filters(orig_sr: int, target_sr: int, width: int, rolloff: float
                  ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(o, t, first tap per phase, filters (t, taps) float32)`` of :func:`sinc_resample`."""
    divisor = math.gcd(orig_sr, target_sr)
    step, phases = orig_sr // divisor, target_sr // divisor
    cutoff = min(step, phases) * rolloff
    reach = width * step / cutoff  # input samples each side with a nonzero weight
    taps = int(math.ceil(2 * reach)) + 2
    position = np.arange(phases, dtype=np.float64) * step / phases
    first = np.floor(position - reach).astype(np.int64)
    distance = first[:, None] + np.arange(taps)[None, :] - position[:, None]
    # Clipped to the window's edge, where cos^2 is zero: the taps beyond it weigh nothing.
    u = np.clip(distance * cutoff / step, -width, width)
    weights = np.sinc(u) * np.cos(u * np.pi / (2 * width)) ** 2 * (cutoff / step)
    return step, phases, first, weights.astype(np.float32)


def segment_audio(
    audio: Audio,
    *,
    segment_seconds: float = SEGMENT_SECONDS,
    min_tail_seconds: float = MIN_TAIL_SECONDS,
    tail: str = "merge",
) -> tuple[Segment, ...]:
    """Cut audio into consecutive segments of ``segment_seconds``.

    Parameters
    ----------
    audio : Audio
    segment_seconds : float
        Segment length.
    min_tail_seconds : float
        With ``tail="merge"``: a tail shorter than this is merged into the previous segment.
    tail : {"merge", "drop"}
        ``"merge"`` (the default, what the explorer shows): every sample belongs to exactly one
        segment, and the last segment may be up to ``segment_seconds + min_tail_seconds`` long.
        ``"drop"``: whole segments only, the tail after the last one dropped, as the upstream
        Music2Emo feature extraction cut its training audio. With either rule, audio shorter
        than one segment is one segment.

    Examples
    --------
    >>> import numpy as np
    >>> audio = Audio(np.zeros(24_000 * 62, dtype=np.float32), 24_000, "x")
    >>> [(s.start, s.end) for s in segment_audio(audio)]
    [(0.0, 30.0), (30.0, 62.0)]
    >>> [(s.start, s.end) for s in segment_audio(audio, tail="drop")]
    [(0.0, 30.0), (30.0, 60.0)]
    """
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    if min_tail_seconds < 0:
        raise ValueError(f"min_tail_seconds must be >= 0, got {min_tail_seconds}")
    if tail not in TAIL_RULES:
        raise ValueError(f"tail must be one of {', '.join(TAIL_RULES)}, got {tail!r}")
    rate = audio.sample_rate
    total = len(audio.samples)
    step = int(round(segment_seconds * rate))
    if tail == "drop":
        whole = total // step
        bounds = [index * step for index in range(whole + 1)] if whole else [0, total]
    else:
        min_tail = int(round(min_tail_seconds * rate))
        bounds = list(range(0, total, step)) + [total]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_tail:
            del bounds[-2]
    return tuple(
        Segment(index, start / rate, end / rate, audio.samples[start:end])
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))
    )


def model_segments(
    audio: Audio,
    *,
    segment_seconds: float = SEGMENT_SECONDS,
    min_tail_seconds: float = MIN_TAIL_SECONDS,
) -> tuple[Segment, ...]:
    """The segments an emotion model reads: the explorer's segments, each cut to one window.

    The bounds are :func:`segment_audio`'s with ``tail="merge"`` (what the explorer shows), but
    every segment's samples stop after ``segment_seconds``: a merged last segment (30 + up to
    5 s) is read over its first 30 s, as the upstream feature extraction read whole 30 s
    windows. A tail of ``min_tail_seconds`` or more stays its own, shorter segment, as upstream
    inference reads it. :func:`is_whole` tells the whole windows, the only ones the training
    features averaged into a track.

    Examples
    --------
    >>> import numpy as np
    >>> audio = Audio(np.zeros(24_000 * 62, dtype=np.float32), 24_000, "x")
    >>> [(s.start, s.end, len(s.samples) / 24_000) for s in model_segments(audio)]
    [(0.0, 30.0, 30.0), (30.0, 62.0, 30.0)]
    """
    step = int(round(segment_seconds * audio.sample_rate))
    return tuple(
        replace(segment, samples=segment.samples[:step]) if len(segment.samples) > step else segment
        for segment in segment_audio(audio, segment_seconds=segment_seconds, min_tail_seconds=min_tail_seconds)
    )


def is_whole(segment: Segment, sample_rate: int, segment_seconds: float = SEGMENT_SECONDS) -> bool:
    """Whether ``segment`` (of :func:`model_segments`) holds a whole ``segment_seconds`` window."""
    return len(segment.samples) >= int(round(segment_seconds * sample_rate))


# -- decoding ---------------------------------------------------------------------------------


class _ForwardReader(sf.SoundFile):
    """A SoundFile read front to back, as a stream.

    soundfile seeks to its own count after every read; at the end of a FLAC stream whose header
    declares no length (or a wrong one) libsndfile refuses that seek, and the last block read
    would be lost in the error. Read as a stream, no seek is made.
    """

    def seekable(self) -> bool:
        return False


class _SampleBuffer:
    """A float32 array filled block by block: exact when the length is known, else grown by half."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(int(capacity), 1), dtype=np.float32)
        self._size = 0

    def append(self, block: np.ndarray) -> None:
        end = self._size + len(block)
        if end > len(self._data):
            grown = np.empty(max(end, len(self._data) * 3 // 2), dtype=np.float32)
            grown[:self._size] = self._data[:self._size]
            self._data = grown
        self._data[self._size:end] = block
        self._size = end

    @property
    def array(self) -> np.ndarray:
        return self._data[:self._size]

    @property
    def capacity(self) -> int:
        return len(self._data)


def _regular_file(path: str | os.PathLike[str], max_bytes: int) -> tuple[Path, str, int]:
    """``(path, display name, size)`` of an existing, non-empty regular file within ``max_bytes``."""
    try:
        name = display_name(path)
        file_path = Path(path)
        info = file_path.stat()
    except TypeError as error:
        raise AudioDecodeError(f"expected a file path, got {type(path).__name__}") from error
    except ValueError as error:  # an embedded null byte
        raise AudioDecodeError(f"{name}: not a usable file name (it holds a null byte)") from error
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise AudioDecodeError(f"{name}: no such file") from error
        if error.errno == errno.ENAMETOOLONG:
            raise AudioDecodeError(f"{name}: the file name is too long for this system") from error
        reason = os.strerror(error.errno) if error.errno else "system error"
        raise AudioDecodeError(f"{name}: cannot read the file ({reason})") from error
    if not stat.S_ISREG(info.st_mode):
        raise AudioDecodeError(f"{name}: not a regular file")
    size = int(info.st_size)
    if size == 0:
        raise AudioDecodeError(f"{name}: the file is empty")
    if size > max_bytes:
        raise AudioTooLargeError(
            f"{name}: the file is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB"
        )
    return file_path, name, size


def _unreadable(path: Path, name: str) -> str:
    """Why libsndfile could not open ``path``, judged from its first bytes (libsndfile's own text misleads)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as error:
        return f"{name}: cannot read the file ({os.strerror(error.errno) if error.errno else 'system error'})"
    if head[4:8] == b"ftyp":
        return f"{name}: cannot decode MP4/M4A audio in this version; convert it to {_FORMATS}"
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    if head.startswith(_AUDIO_SIGNATURES) or mpeg_sync:
        return f"{name}: cannot decode the audio (corrupt, truncated, or an unsupported encoding)"
    return f"{name}: cannot decode: not an audio file (supported formats: {_FORMATS})"


def _check_rate(rate: int, source: str) -> None:
    if not _MIN_SAMPLE_RATE <= rate <= _MAX_SAMPLE_RATE:
        raise InvalidAudioError(
            f"{source}: sample rate {rate} Hz is outside {_MIN_SAMPLE_RATE}-{_MAX_SAMPLE_RATE} Hz"
        )


def _decode(handle: sf.SoundFile, name: str, native_rate: int, out_rate: int, declared: int | None,
            max_duration: float) -> Audio:
    """Read ``handle`` block by block, mix each block to mono, resample it to ``out_rate``, validate."""
    channels = int(handle.channels)
    block_frames = max(_MIN_BLOCK_FRAMES, DECODE_BLOCK_SAMPLES // channels)
    limit = int(max_duration * native_rate)
    ratio = out_rate / native_rate
    stream = None
    if out_rate != native_rate:
        stream = soxr.ResampleStream(native_rate, out_rate, 1, dtype="float32", quality="VHQ")
    expected = declared if declared is not None else min(limit, 60 * native_rate)
    buffer = _SampleBuffer(math.ceil(expected * ratio) + math.ceil(block_frames * ratio) + 64)
    block = np.empty((block_frames, channels), dtype=np.float32)
    decoded = 0
    bad = 0
    peak = 0.0
    while True:
        try:
            frames = handle.read(block_frames, dtype="float32", always_2d=True, out=block)
        except sf.LibsndfileError as error:
            reason = error.error_string.strip().removeprefix("Error : ").rstrip(".") or "unknown error"
            raise AudioDecodeError(
                f"{name}: the file is corrupt or truncated at {decoded / native_rate:.1f} s ({reason})"
            ) from error
        except (RuntimeError, TypeError, ValueError) as error:
            raise AudioDecodeError(f"{name}: the file is corrupt or truncated at {decoded / native_rate:.1f} s") \
                from error
        if len(frames) == 0:
            break
        decoded += len(frames)
        if decoded > limit:
            raise AudioTooLargeError(f"{name}: longer than the limit of {max_duration / 60:.0f} min")
        mono = _mix_to_mono(frames)
        finite = np.isfinite(mono)
        if bad or not finite.all():
            bad += len(mono) - int(np.count_nonzero(finite))
            continue  # counted to the end, nothing more kept
        peak = max(peak, float(max(mono.max(), -mono.min())))
        buffer.append(stream.resample_chunk(mono) if stream is not None else mono)
    if decoded == 0:
        raise AudioDecodeError(f"{name}: the file holds no audio frames")
    if bad:
        raise InvalidAudioError(f"{name}: {bad} samples are NaN or infinite; the file is damaged")
    if stream is not None:
        buffer.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return _checked(buffer.array, out_rate, name, decoded / native_rate, peak, max_duration, owned=True,
                    clip=stream is not None)


def _checked(samples: np.ndarray, rate: int, source: str, duration: float, peak: float, max_duration: float,
             *, owned: bool, clip: bool = False) -> Audio:
    """Duration, silence and level checks on finite mono float32 samples; peak-normalise above 1."""
    if duration < MIN_DURATION_SECONDS:
        raise AudioTooShortError(
            f"{source}: {duration:.2f} s long; at least {MIN_DURATION_SECONDS:.0f} s of audio is needed"
        )
    if duration > max_duration:
        raise AudioTooLargeError(f"{source}: {duration / 60:.1f} min long; the limit is {max_duration / 60:.0f} min")
    if peak < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: the audio is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS)")
    if peak > 1.0:
        samples = np.divide(samples, np.float32(peak), out=samples if owned else None)
        owned = True
    if clip:
        samples = np.clip(samples, -1.0, 1.0, out=samples if owned else None)
    return Audio(np.ascontiguousarray(samples, dtype=np.float32), rate, source)


def _mix_to_mono(block: np.ndarray) -> np.ndarray:
    if block.ndim == 1:
        return block
    if block.shape[1] == 1:
        return block[:, 0]
    return block.mean(axis=1, dtype=np.float32)
