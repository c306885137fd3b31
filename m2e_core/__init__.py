"""m2e: music emotion recognition across dimensional and categorical models.

MERT embeddings, chords and key feed one multitask model that predicts valence/arousal
and 56 MTG-Jamendo mood/theme tags, per 30 s segment and per track.

Examples
--------
>>> from m2e_core import Analyzer  # doctest: +SKIP
>>> analysis = Analyzer().analyze("song.mp3")  # doctest: +SKIP
>>> analysis.track.emotion.valence, analysis.key.mode  # doctest: +SKIP
(6.1, 'major')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import M2EError
from .types import Analysis, ChordSpan, KeyEstimate, KeySpan, ModelProvenance, SegmentEmotion, TrackEmotion

if TYPE_CHECKING:
    from .pipeline import Analyzer

__all__ = [
    "Analysis",
    "Analyzer",
    "ChordSpan",
    "KeyEstimate",
    "KeySpan",
    "M2EError",
    "ModelProvenance",
    "SegmentEmotion",
    "TrackEmotion",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Keep `import m2e_core` light: torch and transformers load only when the Analyzer is used.
    if name == "Analyzer":
        from .pipeline import Analyzer

        return Analyzer
    raise AttributeError(f"module 'm2e_core' has no attribute {name!r}")
