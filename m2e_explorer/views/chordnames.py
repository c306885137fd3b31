"""Chord labels for people: spelled in their key's context, short enough for a bar.

Chord labels arrive in Harte syntax with sharp roots (``A#:min7/b3``). For display the root
(and the bass) is spelled as the local key writes it (:func:`m2e_core.key.spell_chord_label`:
``Bb:min7`` in F major, ``A#:min7`` in F# major), and a bar shows the lead-sheet form
(``Bbm7/Db``); hover shows the Harte label.
"""

from __future__ import annotations

from m2e_core.key import spell_chord_label, uses_flats
from m2e_core.types import KeyEstimate
from m2e_core.vocab import PITCH_CLASSES

#: Lead-sheet suffix of each Harte quality (unknown qualities keep their Harte text).
QUALITY_SUFFIX = {
    "maj": "", "min": "m", "7": "7", "maj7": "maj7", "min7": "m7", "dim": "dim", "dim7": "dim7",
    "hdim7": "m7b5", "aug": "+", "sus2": "sus2", "sus4": "sus4", "maj6": "6", "min6": "m6",
    "9": "9", "maj9": "maj9", "min9": "m9", "11": "11", "13": "13", "minmaj7": "mM7", "1": "(1)", "5": "5",
}
#: Semitones above the root of a Harte bass degree.
_DEGREE_SEMITONES = {
    "1": 0, "b2": 1, "2": 2, "#2": 3, "b3": 3, "3": 4, "4": 5, "#4": 6, "b5": 6, "5": 7, "#5": 8,
    "b6": 8, "6": 9, "bb7": 9, "b7": 10, "7": 11, "b9": 1, "9": 2, "#9": 3, "11": 5, "#11": 6, "b13": 8, "13": 9,
}
_FLAT_NAMES = {1: "Db", 3: "Eb", 6: "Gb", 8: "Ab", 10: "Bb"}
_NO_CHORD = ("N", "X", "")


def is_no_chord(label: str) -> bool:
    """``N`` (no chord), ``X`` (unknown) or empty."""
    return label in _NO_CHORD


def spelled(label: str, key: KeyEstimate | None) -> str:
    """The Harte label with its root spelled in ``key``'s context (unchanged without a key)."""
    if key is None or is_no_chord(label):
        return label
    try:
        return spell_chord_label(label, key)
    except ValueError:
        return label


def _pitch_of(root: str) -> int | None:
    name = root[:1].upper()
    if name not in PITCH_CLASSES:
        return None
    pitch = PITCH_CLASSES.index(name)
    for accidental in root[1:]:
        if accidental == "#":
            pitch += 1
        elif accidental == "b":
            pitch -= 1
        else:
            return None
    return pitch % 12


def short_name(label: str, key: KeyEstimate | None) -> str:
    """The lead-sheet name of a chord for a bar: ``A#:min7/b3`` in F major -> ``Bbm7/Db``.

    Examples
    --------
    >>> short_name("A#:maj7", KeyEstimate("F", "major", 0.9)), short_name("A:min", None)
    ('Bbmaj7', 'Am')
    >>> short_name("N", None)
    'N.C.'
    """
    if is_no_chord(label):
        return "N.C." if label == "N" else label
    text = spelled(label, key)
    root, _, rest = text.partition(":")
    quality, _, bass = (rest or "maj").partition("/")
    suffix = QUALITY_SUFFIX.get(quality, quality)
    name = root + suffix
    if not bass:
        return name
    semitones = _DEGREE_SEMITONES.get(bass)
    pitch = _pitch_of(root)
    if semitones is None or pitch is None:
        return f"{name}/{bass}"
    bass_pitch = (pitch + semitones) % 12
    flats = "b" in root[1:] or (key is not None and _uses_flats(key))
    bass_name = _FLAT_NAMES[bass_pitch] if flats and bass_pitch in _FLAT_NAMES else PITCH_CLASSES[bass_pitch]
    return f"{name}/{bass_name}"


def _uses_flats(key: KeyEstimate) -> bool:
    try:
        return uses_flats(key)
    except ValueError:
        return False


def key_name(key: KeyEstimate) -> str:
    """``"Bb major"``: the key's tonic spelled as the key is written."""
    from m2e_core.key import spell_key

    try:
        return spell_key(key)
    except ValueError:
        return f"{key.tonic} {key.mode}"


def short_key_name(key: KeyEstimate) -> str:
    """``"Bb"`` for B-flat major, ``"Dm"`` for D minor (the lead-sheet convention)."""
    tonic = key_name(key).split(" ")[0]
    return tonic + ("m" if key.mode == "minor" else "")
