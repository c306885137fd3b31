"""Audio chroma, a key-profile key estimator and a chroma-template HMM chord recogniser.

These are signal-processing peers of the learned chord backends and of the chord-based key
route in :mod:`m2e_core.key`: no weights, a few milliseconds per second of audio.

Conventions
-----------
- Chroma rows are pitch classes ``C, C#, D, ..., B`` (index = pitch class, C = 0); columns are
  frames of :data:`CHROMA_HOP_LENGTH` samples at :data:`CHROMA_SAMPLE_RATE` (about 93 ms).
  Audio at any other rate is resampled first.
- Key scores are Pearson correlations between a pitch-class distribution and a key profile
  rotated to each tonic: 24 values, major keys ``C..B`` first, then minor keys ``C..B``.
- Tonics are named with sharps (``C#``, never ``Db``); modes are ``"major"`` / ``"minor"``.
- Chord labels are Harte syntax: ``C:maj``, ``A:min``, and ``N`` for no chord.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2e_core.errors import ConfigError, InvalidAudioError
from m2e_core.tuning import NO_TUNING, Tuning, estimate_tuning
from m2e_core.types import ChordSpan, KeyEstimate, ModelProvenance
from m2e_core.vocab import PITCH_CLASSES

__all__ = [
    "CHROMA_HOP_LENGTH",
    "CHROMA_SAMPLE_RATE",
    "DEFAULT_KEY_PROFILE",
    "KEY_PROFILES",
    "ChromaHmmChordRecognizer",
    "Chromagram",
    "chroma_pitch_class_weights",
    "chromagram",
    "estimate_key_from_audio",
    "estimate_key_from_chroma",
    "key_from_scores",
    "key_scores",
]

#: Rate the chroma is computed at.
CHROMA_SAMPLE_RATE = 22_050
#: Hop between chroma frames, in samples at :data:`CHROMA_SAMPLE_RATE`.
CHROMA_HOP_LENGTH = 2_048

#: Key profiles (major, minor), tonic first: weight of each pitch class above the tonic.
KEY_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Krumhansl & Kessler (1982), probe-tone ratings (the Krumhansl-Schmuckler algorithm).
    "krumhansl": (
        (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
        (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
    ),
    # Temperley (2007), pitch-class frequencies in the Kostka-Payne textbook corpus.
    "temperley": (
        (0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
        (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330),
    ),
    # Albrecht & Shanahan (2013), pitch-class durations in a 490-piece common-practice corpus.
    "albrecht-shanahan": (
        (0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081),
        (0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052),
    ),
    # Aarden (2003), Essen folksong collection (music21's default for symbolic key analysis).
    "aarden-essen": (
        (17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587, 0.291248, 22.062, 0.145624, 8.15494,
         0.232998, 4.95122),
        (18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362, 0.702494, 18.6161, 4.56621, 1.93186,
         7.37619, 1.75623),
    ),
}

#: Profile used when none is named; chosen by measurement (see ``benchmarks/chords_keys.py``).
DEFAULT_KEY_PROFILE = "albrecht-shanahan"

_MODES = ("major", "minor")
#: Gain inside the log compression of chroma values (relative to the chromagram's peak).
_LOG_COMPRESSION = 100.0
_MIN_SAMPLES = 2 * CHROMA_HOP_LENGTH


@dataclass(frozen=True)
class Chromagram:
    """Pitch-class energy over time.

    Attributes
    ----------
    values : np.ndarray
        ``(12, frames)`` float32, non-negative, rows ``C..B``.
    frame_seconds : float
        Hop between frames in seconds.
    duration : float
        Length of the audio the chroma was computed from, in seconds.
    tuning : Tuning
        The tuning the constant-Q bins were moved by.
    """

    values: np.ndarray = field(repr=False)
    frame_seconds: float
    duration: float
    tuning: Tuning = NO_TUNING

    @property
    def frames(self) -> int:
        """Number of frames."""
        return int(self.values.shape[1])


def _validate_samples(samples: np.ndarray, sample_rate: int) -> np.ndarray:
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


def chromagram(samples: np.ndarray, sample_rate: int, *, tuning: Tuning | None = None) -> Chromagram:
    """Constant-Q chroma of a mono waveform.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform in [-1, 1].
    sample_rate : int
        Its rate in Hz; resampled to :data:`CHROMA_SAMPLE_RATE` when different.
    tuning : Tuning, optional
        The recording's tuning; estimated with :func:`m2e_core.tuning.estimate_tuning` when
        not given.

    Returns
    -------
    Chromagram
        Magnitude chroma (36 bins per octave, C1 to B7, bins moved by the tuning, folded to 12
        pitch classes); unnormalised so that loudness stays comparable across frames.

    Raises
    ------
    InvalidAudioError
        If ``samples`` is not a finite, non-empty, 1-D float array or the rate is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(22_050 * 2) / 22_050
    >>> a440 = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    >>> int(np.argmax(chromagram(a440, 22_050).values.sum(axis=1)))  # A
    9
    """
    import librosa

    from m2e_core.audio import resample
    from m2e_core.btc import quiet_short_signal_fft_warning

    # The downsampled low octaves of a short clip warn about their FFT length; the frames are fine.
    quiet_short_signal_fft_warning()
    waveform = _validate_samples(samples, sample_rate)
    duration = waveform.size / float(sample_rate)
    waveform = resample(waveform, int(sample_rate), CHROMA_SAMPLE_RATE)
    if tuning is None:
        tuning = estimate_tuning(waveform, CHROMA_SAMPLE_RATE)
    if waveform.size < _MIN_SAMPLES:
        waveform = np.pad(waveform, (0, _MIN_SAMPLES - waveform.size))
    values = librosa.feature.chroma_cqt(
        y=waveform,
        sr=CHROMA_SAMPLE_RATE,
        hop_length=CHROMA_HOP_LENGTH,
        fmin=librosa.note_to_hz("C1"),
        n_octaves=7,
        bins_per_octave=36,
        norm=None,
        tuning=tuning.bins(36),
    )
    return Chromagram(np.maximum(values, 0.0).astype(np.float32), CHROMA_HOP_LENGTH / CHROMA_SAMPLE_RATE, duration,
                      tuning)


# -- key ----------------------------------------------------------------------------------------


def _profile(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in KEY_PROFILES:
        raise ConfigError(f"unknown key profile {name!r}; choose one of {sorted(KEY_PROFILES)}")
    major, minor = KEY_PROFILES[name]
    return np.asarray(major, dtype=np.float64), np.asarray(minor, dtype=np.float64)


def key_scores(pitch_class_weights: np.ndarray, *, profile: str = DEFAULT_KEY_PROFILE) -> np.ndarray:
    """Correlation of a pitch-class distribution with each of the 24 keys.

    Parameters
    ----------
    pitch_class_weights : np.ndarray
        12 non-negative weights, index = pitch class (C = 0).
    profile : str
        A name in :data:`KEY_PROFILES`.

    Returns
    -------
    np.ndarray
        24 Pearson correlations in [-1, 1]: ``[0:12]`` major keys with tonic C..B,
        ``[12:24]`` minor keys. All zero when the weights are constant (no evidence).

    Raises
    ------
    ValueError
        If the weights are not 12 finite non-negative numbers.
    ConfigError
        If ``profile`` is unknown.
    """
    templates = _profile(profile)
    weights = np.asarray(pitch_class_weights, dtype=np.float64)
    if weights.shape != (12,):
        raise ValueError(f"pitch_class_weights must have shape (12,), got {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("pitch_class_weights must be finite and non-negative")
    scores = np.zeros(24)
    centred = weights - weights.mean()
    spread = np.linalg.norm(centred)
    if spread <= 1e-12:
        return scores
    for mode_index, template in enumerate(templates):
        template = template - template.mean()
        template = template / np.linalg.norm(template)
        for tonic in range(12):
            # Key with tonic t expects weight template[(pc - t) % 12] on pitch class pc.
            scores[mode_index * 12 + tonic] = float(np.dot(centred, np.roll(template, tonic)) / spread)
    return scores


def key_from_scores(scores: np.ndarray) -> KeyEstimate:
    """The best of 24 key scores as a :class:`KeyEstimate` (confidence = its score clipped to [0, 1]).

    Raises
    ------
    ValueError
        If ``scores`` is not 24 finite numbers.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (24,) or not np.all(np.isfinite(values)):
        raise ValueError(f"scores must be 24 finite numbers, got shape {values.shape}")
    best = int(np.argmax(values))
    return KeyEstimate(PITCH_CLASSES[best % 12], _MODES[best // 12], float(np.clip(values[best], 0.0, 1.0)))


def chroma_pitch_class_weights(chroma: Chromagram | np.ndarray) -> np.ndarray:
    """Pitch-class distribution of a chromagram.

    Each frame is log-compressed (``log(1 + 100 x / peak)``, ``peak`` being the largest value
    in the chromagram) and normalised to unit sum, then the frames are averaged: every voiced
    moment counts alike, whatever its loudness, and a decaying note keeps its weight as long as
    it sounds. Frames with no energy are skipped. This weighting and the default profile were
    chosen by measurement on rendered chorales and synthetic progressions
    (``benchmarks/chords_keys.py``).

    Parameters
    ----------
    chroma : Chromagram or np.ndarray
        A :class:`Chromagram` or a non-negative ``(12, frames)`` array.

    Returns
    -------
    np.ndarray
        12 non-negative weights summing to 1, or all zero when there is no signal.
    """
    values = chroma.values if isinstance(chroma, Chromagram) else np.asarray(chroma)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != 12:
        raise ValueError(f"chroma must have shape (12, frames), got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("chroma must be finite and non-negative")
    peak = float(values.max()) if values.size else 0.0
    if peak <= 0:
        return np.zeros(12)
    compressed = np.log1p(_LOG_COMPRESSION * values / peak)
    totals = compressed.sum(axis=0)
    voiced = totals > totals.max() * 1e-3
    return (compressed[:, voiced] / totals[voiced]).mean(axis=1)


def estimate_key_from_chroma(chroma: Chromagram | np.ndarray, *, profile: str = DEFAULT_KEY_PROFILE) -> KeyEstimate:
    """Key of a chromagram by key-profile correlation (Krumhansl-Schmuckler method).

    Parameters
    ----------
    chroma : Chromagram or np.ndarray
        A :class:`Chromagram` or a ``(12, frames)`` array.
    profile : str
        A name in :data:`KEY_PROFILES`.

    Returns
    -------
    KeyEstimate
        Best key; confidence is its correlation clipped to [0, 1] (0 when there is no signal,
        and then the key is C major).
    """
    return key_from_scores(key_scores(chroma_pitch_class_weights(chroma), profile=profile))


def estimate_key_from_audio(samples: np.ndarray, sample_rate: int, *,
                            profile: str | None = None) -> KeyEstimate:
    """Key of a mono waveform from its chroma.

    Parameters
    ----------
    samples : np.ndarray
        1-D float waveform in [-1, 1].
    sample_rate : int
        Its rate in Hz.
    profile : str, optional
        ``None`` (default): the displayed key of :func:`m2e_core.tonality.estimate_tonality`
        (tuned bass and treble chroma, calibrated confidence). A name in
        :data:`KEY_PROFILES`: that profile over the tuned chroma of :func:`chromagram`, with
        the correlation as confidence.

    Returns
    -------
    KeyEstimate

    Raises
    ------
    InvalidAudioError
        If the waveform is unusable.
    ConfigError
        If ``profile`` is unknown.

    Examples
    --------
    >>> key = estimate_key_from_audio(samples, 22_050)  # doctest: +SKIP
    >>> key.tonic, key.mode  # doctest: +SKIP
    ('A', 'minor')
    """
    if profile is None:
        from m2e_core.tonality import estimate_tonality

        return estimate_tonality(samples, sample_rate).key
    _profile(profile)
    return estimate_key_from_chroma(chromagram(samples, sample_rate), profile=profile)


# -- chords -------------------------------------------------------------------------------------


def _chord_templates(harmonic_decay: float) -> tuple[tuple[str, ...], np.ndarray]:
    """24 major/minor triad templates (unit norm) with the first harmonics of each chord tone."""
    labels: list[str] = []
    templates = []
    harmonics = ((0, 1.0), (0, harmonic_decay), (7, harmonic_decay**2), (0, harmonic_decay**3), (4, harmonic_decay**4))
    for quality, intervals in (("maj", (0, 4, 7)), ("min", (0, 3, 7))):
        for root in range(12):
            template = np.zeros(12)
            for interval in intervals:
                for offset, weight in harmonics:
                    template[(root + interval + offset) % 12] += weight
            templates.append(template / np.linalg.norm(template))
            labels.append(f"{PITCH_CLASSES[root]}:{quality}")
    return tuple(labels), np.stack(templates)


def _viterbi(log_emission: np.ndarray, log_transition: np.ndarray, log_initial: np.ndarray) -> np.ndarray:
    """Most likely state path; ``log_emission`` is ``(frames, states)``."""
    frames, states = log_emission.shape
    backpointers = np.zeros((frames, states), dtype=np.int32)
    score = log_initial + log_emission[0]
    for frame in range(1, frames):
        candidates = score[:, None] + log_transition
        backpointers[frame] = np.argmax(candidates, axis=0)
        score = candidates[backpointers[frame], np.arange(states)] + log_emission[frame]
    path = np.zeros(frames, dtype=np.int32)
    path[-1] = int(np.argmax(score))
    for frame in range(frames - 1, 0, -1):
        path[frame - 1] = backpointers[frame, path[frame]]
    return path


class ChromaHmmChordRecognizer:
    """Major/minor chord recognition by chroma templates and HMM (Viterbi) smoothing.

    Each chroma frame is log-compressed and normalised; its cosine similarity with 24 triad
    templates (with decaying harmonics) and a no-chord state gives the emission scores, and a
    transition matrix that favours staying on the same chord smooths the path. Satisfies the
    :class:`m2e_core.chords.ChordBackend` protocol.

    Parameters
    ----------
    self_transition : float
        Probability of staying on the same chord from one frame to the next, in (0, 1).
    sharpness : float
        Scale of the cosine similarities in the emission log-likelihoods (> 0).
    no_chord_level : float
        Cosine similarity the no-chord state scores on every voiced frame, in [0, 1].
    silence_ratio : float
        Frames quieter than this fraction of the loudest frame are no-chord.
    harmonic_decay : float
        Weight ratio between successive harmonics in the templates, in [0, 1).

    Examples
    --------
    >>> recognizer = ChromaHmmChordRecognizer()
    >>> spans = recognizer.recognize(samples, 22_050)  # doctest: +SKIP
    >>> [span.label for span in spans]  # doctest: +SKIP
    ['C:maj', 'G:maj', 'A:min', 'F:maj']
    """

    name = "chroma-hmm"
    sample_rate = CHROMA_SAMPLE_RATE

    def __init__(self, *, self_transition: float = 0.9, sharpness: float = 80.0, no_chord_level: float = 0.3,
                 silence_ratio: float = 0.01, harmonic_decay: float = 0.6) -> None:
        if not 0.0 < self_transition < 1.0:
            raise ConfigError(f"self_transition must be in (0, 1), got {self_transition}")
        if sharpness <= 0:
            raise ConfigError(f"sharpness must be positive, got {sharpness}")
        if not 0.0 <= no_chord_level <= 1.0:
            raise ConfigError(f"no_chord_level must be in [0, 1], got {no_chord_level}")
        if not 0.0 <= silence_ratio < 1.0:
            raise ConfigError(f"silence_ratio must be in [0, 1), got {silence_ratio}")
        if not 0.0 <= harmonic_decay < 1.0:
            raise ConfigError(f"harmonic_decay must be in [0, 1), got {harmonic_decay}")
        self.self_transition = float(self_transition)
        self.sharpness = float(sharpness)
        self.no_chord_level = float(no_chord_level)
        self.silence_ratio = float(silence_ratio)
        self.harmonic_decay = float(harmonic_decay)
        self.labels, self._templates = _chord_templates(self.harmonic_decay)
        settings = (f"self_transition={self.self_transition}, sharpness={self.sharpness}, "
                    f"no_chord_level={self.no_chord_level}, silence_ratio={self.silence_ratio}, "
                    f"harmonic_decay={self.harmonic_decay}")
        self.provenance = ModelProvenance(role="chords", name="chroma-hmm", revision="1", sha256=None,
                                          source=f"m2e_core.chroma ({settings})")

    def recognize(self, samples: np.ndarray, sample_rate: int, *,
                  tuning: Tuning | None = None) -> tuple[ChordSpan, ...]:
        """Chord timeline of a mono waveform.

        Parameters
        ----------
        samples : np.ndarray
            1-D float waveform in [-1, 1].
        sample_rate : int
            Its rate in Hz.
        tuning : Tuning, optional
            The recording's tuning; estimated from ``samples`` when not given.

        Returns
        -------
        tuple of ChordSpan
            Contiguous spans from 0 to the duration, equal neighbours merged; labels
            ``root:maj``, ``root:min`` or ``N``.

        Raises
        ------
        InvalidAudioError
            If the waveform is unusable.
        """
        return self.recognize_chroma(chromagram(samples, sample_rate, tuning=tuning))

    def recognize_chroma(self, chroma: Chromagram) -> tuple[ChordSpan, ...]:
        """Chord timeline of a precomputed :class:`Chromagram`."""
        values = chroma.values.astype(np.float64)
        energy = values.max(axis=0)
        loudest = float(energy.max()) if energy.size else 0.0
        silent = energy <= loudest * self.silence_ratio if loudest > 0 else np.ones(values.shape[1], bool)
        compressed = np.log1p(_LOG_COMPRESSION * values / loudest) if loudest > 0 else values
        norms = np.linalg.norm(compressed, axis=0)
        unit = compressed / np.maximum(norms, 1e-12)
        similarity = self._templates @ unit  # (24, frames)
        no_chord = np.where(silent, 1.0, self.no_chord_level)
        chord_scores = np.where(silent[None, :], 0.0, similarity)
        log_emission = self.sharpness * np.vstack([chord_scores, no_chord[None, :]]).T
        states = len(self.labels) + 1
        change = (1.0 - self.self_transition) / (states - 1)
        transition = np.full((states, states), np.log(change))
        np.fill_diagonal(transition, np.log(self.self_transition))
        path = _viterbi(log_emission, transition, np.full(states, -np.log(states)))
        labels = [*self.labels, "N"]
        return _spans_from_path([labels[state] for state in path], chroma.frame_seconds, chroma.duration)


def _spans_from_path(frame_labels: list[str], frame_seconds: float, duration: float) -> tuple[ChordSpan, ...]:
    # Frames are centred: frame i covers [(i - 1/2) hop, (i + 1/2) hop).
    spans: list[ChordSpan] = []
    start_frame = 0
    for frame in range(1, len(frame_labels) + 1):
        if frame == len(frame_labels) or frame_labels[frame] != frame_labels[start_frame]:
            start = 0.0 if start_frame == 0 else min((start_frame - 0.5) * frame_seconds, duration)
            end = duration if frame == len(frame_labels) else min((frame - 0.5) * frame_seconds, duration)
            if end > start:
                spans.append(ChordSpan(float(start), float(end), frame_labels[start_frame]))
            start_frame = frame
    if not spans:
        spans.append(ChordSpan(0.0, float(duration), "N"))
    return tuple(spans)
