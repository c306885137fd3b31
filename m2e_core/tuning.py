"""Tuning estimation: how far a recording's pitch sits from A4 = 440 Hz equal temperament.

Recordings are often not at concert pitch: tape running at another speed, an instrument tuned
to itself. Every recogniser here reads a constant-Q spectrum whose bins are laid on the 440 Hz
grid, so a recording 20 cents flat puts its notes between bins and a network trained on tuned
audio can read every chord a semitone off. :func:`estimate_tuning` measures the deviation once
per track; the chord backends and the chroma shift their constant-Q bins by it
(:meth:`Tuning.bins` gives librosa's ``tuning`` argument).

Conventions
-----------
- The deviation is in cents (1/100 semitone), in ``[-50, 50)``: ``-20`` means 20 cents flat
  (A4 at about 435 Hz). Deviations wrap: a recording 60 cents flat is 40 cents sharp of the
  semitone below, and names its notes that way.
- Method: spectral peaks of a long-window STFT (local maxima over five bins, at least 3 % of
  the frame's strongest, 80 Hz to 5 kHz), refined by parabolic interpolation of the log
  magnitude; each peak's deviation from the nearest equal-tempered pitch, weighted by its
  magnitude, goes into a circular 1-cent histogram smoothed with a Gaussian (6 cents); the
  estimate is the weighted circular mean of the deviations within 25 cents of the histogram's
  mode, so a few out-of-tune partials (the 5th and 7th harmonics, inharmonic percussion) do
  not pull it. ``strength`` is the resultant length of all deviations (0 = no agreement,
  1 = every partial on one grid).

librosa's own ``tuning=None`` in a 36-bin constant-Q transform estimates the deviation in
fractions of a 36th of an octave and wraps it into ``[-1/6, 1/6)`` semitone: a recording 20
cents flat is then read as 13 cents sharp, one bin away from the grid the networks were trained
on. This estimate wraps at a whole semitone instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2e_core.errors import InvalidAudioError

__all__ = ["NO_TUNING", "Tuning", "estimate_tuning"]

#: Window of the spectrum the peaks are read from, in seconds (rounded up to a power of two).
_WINDOW_SECONDS = 0.37
#: Frequencies the peaks are taken from, Hz.
_MIN_HZ, _MAX_HZ = 80.0, 5000.0
#: Peaks weaker than this fraction of the frame's strongest peak are ignored.
_PEAK_FLOOR = 0.03
#: Width (standard deviation, cents) of the histogram smoothing, and the window around its mode.
_SMOOTHING_CENTS = 6.0
_MODE_WINDOW_CENTS = 25.0
#: Longest stretch of audio read, seconds: the tuning of a track does not change, and this caps the cost.
_MAX_SECONDS = 600.0


@dataclass(frozen=True)
class Tuning:
    """Deviation of a recording from A4 = 440 Hz equal temperament.

    Attributes
    ----------
    cents : float
        Deviation in cents, in ``[-50, 50)``; negative is flat.
    strength : float
        Agreement of the spectral peaks on that grid, in [0, 1] (0: no pitched content).
    """

    cents: float
    strength: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.cents) or not -50.0 <= self.cents < 50.0:
            raise ValueError(f"tuning cents must be in [-50, 50), got {self.cents!r}")
        if not np.isfinite(self.strength) or not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"tuning strength must be in [0, 1], got {self.strength!r}")

    @property
    def reference_hz(self) -> float:
        """Frequency of A4 in the recording's tuning."""
        return 440.0 * 2.0 ** (self.cents / 1200.0)

    def bins(self, bins_per_octave: int) -> float:
        """librosa's ``tuning`` argument for a constant-Q transform of ``bins_per_octave`` bins.

        librosa moves the lowest bin to ``fmin * 2 ** (tuning / bins_per_octave)``, so the
        deviation is expressed in fractions of one bin (it may exceed half a bin).

        Examples
        --------
        >>> Tuning(-20.0, 0.5).bins(36)
        -0.6
        """
        if isinstance(bins_per_octave, bool) or not isinstance(bins_per_octave, (int, np.integer)) \
                or bins_per_octave <= 0:
            raise ValueError(f"bins_per_octave must be a positive integer, got {bins_per_octave!r}")
        return round(self.cents / 1200.0 * int(bins_per_octave), 12)

    def to_dict(self) -> dict[str, float]:
        return {"cents": float(self.cents), "strength": float(self.strength)}


#: Concert pitch, no correction (what a recogniser assumes when it is not told).
NO_TUNING = Tuning(0.0, 0.0)


def _validate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InvalidAudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    array = np.asarray(samples)
    if array.ndim != 1:
        raise InvalidAudioError(f"samples must be a 1-D mono waveform, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidAudioError(f"samples must be floating point in [-1, 1], got dtype {array.dtype}")
    if array.size == 0:
        raise InvalidAudioError("samples are empty")
    if not np.all(np.isfinite(array)):
        raise InvalidAudioError("samples contain NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _peak_deviations(waveform: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Deviation (cents, in [-50, 50)) and magnitude of every spectral peak."""
    import librosa

    n_fft = 1 << int(np.ceil(np.log2(_WINDOW_SECONDS * sample_rate)))
    if waveform.size < n_fft:
        waveform = np.pad(waveform, (0, n_fft - waveform.size))
    spectrum = np.abs(librosa.stft(waveform, n_fft=n_fft, hop_length=n_fft // 2, window="hann", center=False))
    low = max(int(_MIN_HZ * n_fft / sample_rate), 2)
    high = min(int(_MAX_HZ * n_fft / sample_rate), spectrum.shape[0] - 2)
    if high <= low:
        return np.zeros(0), np.zeros(0)
    band = spectrum[low - 2 : high + 2]
    centre = band[2:-2]
    peaks = ((centre > band[1:-3]) & (centre >= band[3:-1]) & (centre > band[:-4]) & (centre >= band[4:])
             & (centre > _PEAK_FLOOR * centre.max(axis=0, keepdims=True)))
    below, here, above = (np.log(np.maximum(values, 1e-12)) for values in (band[1:-3], centre, band[3:-1]))
    curvature = below - 2.0 * here + above
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (below - above) / curvature, 0.0)
    offset = np.clip(offset, -0.5, 0.5)
    rows, columns = np.nonzero(peaks)
    frequencies = (low + rows + offset[rows, columns]) * sample_rate / n_fft
    cents = 1200.0 * np.log2(frequencies / 440.0)
    return (cents + 50.0) % 100.0 - 50.0, centre[rows, columns].astype(np.float64)


def estimate_tuning(samples: np.ndarray, sample_rate: int) -> Tuning:
    """Estimate how far a recording is from A4 = 440 Hz equal temperament.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform in [-1, 1], any rate (the first 10 minutes are read).
    sample_rate : int
        Its rate in Hz.

    Returns
    -------
    Tuning
        Deviation in cents (``[-50, 50)``) and the strength of the agreement. Audio without
        any spectral peak (silence) gives :data:`NO_TUNING`.

    Raises
    ------
    InvalidAudioError
        If ``samples`` is not a finite, non-empty, 1-D float array or the rate is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(22_050 * 3) / 22_050
    >>> flat_a = np.sin(2 * np.pi * 440.0 * 2 ** (-30 / 1200) * t).astype(np.float32)  # 30 cents flat
    >>> round(estimate_tuning(flat_a, 22_050).cents)
    -30
    """
    waveform = _validate(samples, sample_rate)[: int(_MAX_SECONDS * sample_rate)]
    deviations, weights = _peak_deviations(waveform, int(sample_rate))
    total = float(weights.sum()) if weights.size else 0.0
    if total <= 0.0:
        return NO_TUNING
    histogram = np.bincount(np.floor(deviations + 50.0).astype(np.int64) % 100, weights=weights, minlength=100)
    offsets = np.arange(-50, 50)
    kernel = np.exp(-0.5 * (offsets / _SMOOTHING_CENTS) ** 2)
    # Circular convolution of the 100-cent histogram with the kernel, by FFT.
    smoothed = np.real(np.fft.ifft(np.fft.fft(histogram) * np.fft.fft(np.fft.ifftshift(kernel))))
    mode = float(np.argmax(smoothed)) - 50.0 + 0.5
    near = np.abs((deviations - mode + 50.0) % 100.0 - 50.0) <= _MODE_WINDOW_CENTS
    phase = np.exp(2j * np.pi * deviations / 100.0)
    centre = np.sum(weights[near] * phase[near])
    cents = float(np.angle(centre) / (2.0 * np.pi) * 100.0) if abs(centre) > 0 else mode
    cents = (cents + 50.0) % 100.0 - 50.0
    strength = float(np.clip(abs(np.sum(weights * phase)) / total, 0.0, 1.0))
    return Tuning(round(cents, 2) if round(cents, 2) < 50.0 else -50.0, strength)
