"""Key estimation from a chord timeline, chord normalisation, and the model's chord tokens.

Conventions
-----------
- The key is estimated from harmony only: every chord contributes its pitch classes
  (:func:`m2e_core.chords.chord_pitch_classes`) for its duration, and music21's default key
  analysis (``Stream.analyze('key')``: Aarden-Essen key profiles correlated with the
  duration-weighted pitch-class histogram) picks the best key. ``N``/``X`` spans add nothing.
- Tonics are named with sharps (``C#``, never ``Db``); modes are ``"major"`` / ``"minor"``.
- Normalised chords are transposed so the key's tonic becomes C (major keys) or A (minor keys);
  that is the form the emotion model was trained on.
- Chord tokens: one ``(root, quality)`` token per chord change (see
  :func:`m2e_core.chords.parse_chord_label`), at most ``max_tokens``, zero-padded.
- Display spelling (:func:`spell_key`, :func:`spell_chord_label`): labels stay sharp-only
  inside m2e; for display, roots are spelled with flats in the flat keys (F, Bb, Eb, Ab, Db, Gb
  major; D, G, C, F, Bb, Eb minor) and with sharps in every other key. Only the five black keys
  change name (``A#`` -> ``Bb``); naturals keep theirs (no ``Cb`` or ``E#``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m2e_core.chords import chord_pitch_classes, is_no_chord, parse_chord_label, transpose_chord_label
from m2e_core.constants import MAX_CHORD_TOKENS
from m2e_core.types import ChordSpan, KeyEstimate
from m2e_core.vocab import PITCH_CLASSES, pitch_class

__all__ = [
    "NEUTRAL_KEY",
    "encode_chord_tokens",
    "estimate_key",
    "normalize_chords",
    "spell_chord_label",
    "spell_key",
    "uses_flats",
]

#: Returned when there is no chord at all: C major with confidence 0 (see :func:`estimate_key`).
NEUTRAL_KEY = KeyEstimate("C", "major", 0.0)

#: Octave the chord tones are placed in (MIDI note of C); only pitch classes matter.
_BASE_MIDI = 48
#: Tonic pitch class every normalised key lands on.
_TARGET_TONIC = {"major": 0, "minor": 9}
#: Tonic pitch classes of the keys spelled with flats: F Bb Eb Ab Db Gb major, D G C F Bb Eb minor.
_FLAT_TONICS = {"major": frozenset({5, 10, 3, 8, 1, 6}), "minor": frozenset({2, 7, 0, 5, 10, 3})}
#: Flat names of the black keys, by pitch class.
_FLAT_NAMES = {1: "Db", 3: "Eb", 6: "Gb", 8: "Ab", 10: "Bb"}


def _check_spans(chords: Sequence[ChordSpan]) -> None:
    for index, span in enumerate(chords):
        if not isinstance(span, ChordSpan):
            raise TypeError(f"chords[{index}] must be a ChordSpan, got {type(span).__name__}")


def estimate_key(chords: Sequence[ChordSpan]) -> KeyEstimate:
    """Estimate the key of a chord timeline with music21.

    Parameters
    ----------
    chords : sequence of ChordSpan
        The chord timeline (any order; overlaps count twice).

    Returns
    -------
    KeyEstimate
        Tonic (sharps), mode, and music21's correlation coefficient clipped to [0, 1] as
        confidence. When no span carries a chord (empty input, or only ``N``/``X`` or
        zero-length spans) there is no harmonic evidence and the result is
        :data:`NEUTRAL_KEY`, ``KeyEstimate("C", "major", 0.0)``: the model's neutral key
        input (mode major = 0, as in training when the key is unknown). Confidence 0.0 means
        exactly this "no harmonic content" case.

    Examples
    --------
    >>> from m2e_core.types import ChordSpan
    >>> estimate_key([ChordSpan(0, 2, "A:min"), ChordSpan(2, 4, "D:min"), ChordSpan(4, 6, "E:7"),
    ...               ChordSpan(6, 8, "A:min")]).mode
    'minor'
    """
    _check_spans(chords)
    voiced = []
    for span in chords:
        pitch_classes = chord_pitch_classes(span.label)
        if pitch_classes and span.duration > 0:
            voiced.append((span.duration, sorted(pitch_classes)))
    if not voiced:
        return NEUTRAL_KEY

    from music21 import chord as m21_chord
    from music21 import stream as m21_stream

    timeline = m21_stream.Stream()
    for duration, pitch_classes in voiced:
        element = m21_chord.Chord([_BASE_MIDI + pc for pc in pitch_classes])
        element.quarterLength = float(duration)
        timeline.append(element)
    estimate = timeline.analyze("key")
    tonic = PITCH_CLASSES[pitch_class(estimate.tonic.name)]
    mode = "minor" if estimate.mode == "minor" else "major"
    confidence = float(np.clip(estimate.correlationCoefficient, 0.0, 1.0))
    return KeyEstimate(tonic, mode, confidence)


def _shift_to_reference(key: KeyEstimate) -> int:
    if key.mode not in _TARGET_TONIC:
        raise ValueError(f"key mode must be 'major' or 'minor', got {key.mode!r}")
    try:
        tonic = pitch_class(key.tonic)
    except ValueError as error:
        raise ValueError(f"key tonic is not a note name: {key.tonic!r}") from error
    return (_TARGET_TONIC[key.mode] - tonic) % 12


def normalize_chords(chords: Sequence[ChordSpan], key: KeyEstimate) -> tuple[ChordSpan, ...]:
    """Transpose chords so the key's tonic is C (major) or A (minor).

    Roots move (spelled with sharps); qualities, added degrees and bass intervals stay, and
    ``N``/``X`` spans are kept as they are. Times are unchanged.

    Parameters
    ----------
    chords : sequence of ChordSpan
    key : KeyEstimate

    Returns
    -------
    tuple of ChordSpan

    Examples
    --------
    >>> from m2e_core.types import ChordSpan, KeyEstimate
    >>> [c.label for c in normalize_chords([ChordSpan(0, 1, "E:maj"), ChordSpan(1, 2, "B:7")],
    ...                                    KeyEstimate("E", "major", 0.9))]
    ['C:maj', 'G:7']
    """
    _check_spans(chords)
    shift = _shift_to_reference(key)
    return tuple(ChordSpan(span.start, span.end, transpose_chord_label(span.label, shift)) for span in chords)


def encode_chord_tokens(chords: Sequence[ChordSpan], *,
                        max_tokens: int = MAX_CHORD_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Encode a chord timeline as the model's root and quality token sequences.

    One token per chord change: consecutive spans whose labels map to the same
    ``(root, quality)`` token (equal labels, or labels differing only in bass or added
    degrees, ``N`` next to ``X``) give one token. ``N``/``X`` spans are ``(0, 0)`` tokens. The
    first ``max_tokens`` tokens are kept and the rest of the arrays is zero (padding).

    Parameters
    ----------
    chords : sequence of ChordSpan
        Chords in time order (normally after :func:`normalize_chords`).
    max_tokens : int
        Length of the returned arrays.

    Returns
    -------
    roots, qualities : np.ndarray
        Two int64 arrays of length ``max_tokens``.

    Examples
    --------
    >>> from m2e_core.types import ChordSpan
    >>> roots, qualities = encode_chord_tokens([ChordSpan(0, 1, "C:maj"), ChordSpan(1, 2, "C:maj"),
    ...                                         ChordSpan(2, 3, "A:min")], max_tokens=4)
    >>> roots.tolist(), qualities.tolist()
    ([1, 10, 0, 0], [1, 5, 0, 0])
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    _check_spans(chords)
    tokens: list[tuple[int, int]] = []
    for span in chords:
        token = parse_chord_label(span.label)
        if not tokens or tokens[-1] != token:
            tokens.append(token)
    roots = np.zeros(max_tokens, dtype=np.int64)
    qualities = np.zeros(max_tokens, dtype=np.int64)
    kept = tokens[:max_tokens]
    if kept:
        roots[: len(kept)] = [root for root, _ in kept]
        qualities[: len(kept)] = [quality for _, quality in kept]
    return roots, qualities


def uses_flats(key: KeyEstimate) -> bool:
    """True when ``key`` is written with flats (F, Bb, Eb, Ab, Db, Gb major; D, G, C, F, Bb, Eb minor).

    Raises
    ------
    ValueError
        If the key's mode is not major/minor or its tonic is not a note name.
    """
    shift = _shift_to_reference(key)  # validates mode and tonic
    return (_TARGET_TONIC[key.mode] - shift) % 12 in _FLAT_TONICS[key.mode]


def _spell_pitch_class(pitch: int, flats: bool) -> str:
    return _FLAT_NAMES[pitch] if flats and pitch in _FLAT_NAMES else PITCH_CLASSES[pitch]


def spell_key(key: KeyEstimate) -> str:
    """A key's display name, its tonic spelled as the key is written.

    Parameters
    ----------
    key : KeyEstimate

    Returns
    -------
    str
        ``"<tonic> <mode>"``, e.g. ``"Eb major"``, ``"C# minor"``.

    Raises
    ------
    ValueError
        If the key's mode is not major/minor or its tonic is not a note name.

    Examples
    --------
    >>> spell_key(KeyEstimate("A#", "major", 0.9)), spell_key(KeyEstimate("C#", "minor", 0.9))
    ('Bb major', 'C# minor')
    """
    flats = uses_flats(key)
    tonic = (_TARGET_TONIC[key.mode] - _shift_to_reference(key)) % 12
    return f"{_spell_pitch_class(tonic, flats)} {key.mode}"


def spell_chord_label(label: str, key: KeyEstimate) -> str:
    """A chord label for display, its root spelled in the key's context.

    The rest of the label (quality, added degrees, the bass as an interval) is unchanged;
    ``N``, ``X`` and labels without a readable root are returned as they are. Internal labels
    stay sharp-only: use this for display only.

    Parameters
    ----------
    label : str
        A chord label (Harte syntax, any root spelling).
    key : KeyEstimate
        The key the chord sounds in.

    Returns
    -------
    str

    Raises
    ------
    TypeError
        If ``label`` is not a string.
    ValueError
        If the key's mode is not major/minor or its tonic is not a note name.

    Examples
    --------
    >>> spell_chord_label("A#:maj7/3", KeyEstimate("F", "major", 0.9))
    'Bb:maj7/3'
    >>> spell_chord_label("Bb:min", KeyEstimate("E", "major", 0.9))
    'A#:min'
    """
    if not isinstance(label, str):
        raise TypeError(f"a chord label must be a string, got {type(label).__name__}: {label!r}")
    flats = uses_flats(key)
    if is_no_chord(label):
        return label
    sharp = transpose_chord_label(label, 0)  # root respelled with sharps, the rest kept
    root = PITCH_CLASSES.index(sharp[:2] if len(sharp) > 1 and sharp[1] == "#" else sharp[:1])
    name = PITCH_CLASSES[root]
    return _spell_pitch_class(root, flats) + sharp[len(name):]
