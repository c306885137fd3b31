"""Vocabularies of the model: the 56 MTG-Jamendo mood/theme tags and the chord tokens.

They live once, in the package's ``data/`` directory (shipped as package data), and are read from there.

Conventions
-----------
- Tags are bare names in model order (``"happy"``, not ``"mood/theme---happy"``).
- Chord roots use sharps: ``C, C#, D, ... B``. Token 0 is "no chord" and padding.
- Pitch classes are integers 0..11 with C = 0.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: Pitch-class names with sharps, index = pitch class (C = 0).
PITCH_CLASSES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

#: Prefix of tag names in the MTG-Jamendo distribution files.
JAMENDO_TAG_PREFIX = "mood/theme---"


def data_dir() -> Path:
    """Directory of the vocabulary tables (``m2e_core/data``; ``M2E_DATA`` overrides it)."""
    override = os.environ.get("M2E_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class MoodTag:
    """One mood/theme tag with its valence/arousal anchor (word norms, 1-9 scale)."""

    index: int
    name: str
    valence: float
    arousal: float


@lru_cache(maxsize=1)
def mood_tags() -> tuple[MoodTag, ...]:
    """The 56 tags in model order, with their VA anchors."""
    path = data_dir() / "mood_tags.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    tags = tuple(
        MoodTag(int(row["index"]), row["tag"], float(row["valence"]), float(row["arousal"]))
        for row in rows
    )
    if [tag.index for tag in tags] != list(range(len(tags))):
        raise ValueError(f"{path}: tag indices must be 0..{len(tags) - 1} in order")
    return tags


@lru_cache(maxsize=1)
def tag_names() -> tuple[str, ...]:
    """The 56 tag names in model order."""
    return tuple(tag.name for tag in mood_tags())


@lru_cache(maxsize=1)
def _chord_vocab() -> dict[str, list[str]]:
    with (data_dir() / "chord_vocab.json").open(encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def chord_roots() -> tuple[str, ...]:
    """Root tokens: ``N, C, C#, ..., B, X`` (index = token id)."""
    return tuple(_chord_vocab()["roots"])


@lru_cache(maxsize=1)
def chord_qualities() -> tuple[str, ...]:
    """Quality tokens: ``N, maj, dim, sus4, min7, min, ...`` (index = token id)."""
    return tuple(_chord_vocab()["qualities"])


def pitch_class(name: str) -> int:
    """Pitch class of a note name: ``"C"`` -> 0, ``"Bb"`` / ``"B-"`` -> 10, ``"E#"`` -> 5.

    Raises
    ------
    ValueError
        If ``name`` is not a note name.
    """
    if not name or name[0].upper() not in "CDEFGAB":
        raise ValueError(f"not a note name: {name!r}")
    value = PITCH_CLASSES.index(name[0].upper())
    for accidental in name[1:]:
        if accidental == "#":
            value += 1
        elif accidental in ("b", "-"):
            value -= 1
        else:
            raise ValueError(f"not a note name: {name!r}")
    return value % 12
