"""What one browser session holds, and what a handler sends back to the page.

:class:`Loaded` is the session's state (kept by Gradio per browser tab); :class:`Page` is a
handler's answer, one field per thing on the Analyze tab, ``None`` meaning "leave it as it
is"; :class:`ViewOptions` are the user's view settings. No Gradio here: the layout turns a
:class:`Page` into component updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from m2e_core.constants import DEFAULT_TOP_K
from m2e_core.types import Analysis

from .views.common import SegmentSpan

#: Selector value of the whole track.
TRACK = -1
#: Label form values when nothing is pre-filled (blind labelling).
NEUTRAL_VA = 5.0


@dataclass(frozen=True)
class ViewOptions:
    """How the user wants the analysis shown.

    ``rule`` is ``"analysed"`` (the checkpoint's thresholds, else top-k), ``"top-k"`` or
    ``"threshold"``; ``label_all`` names every tag anchor on the plane; ``blind`` (labelling
    without seeing the model's answer) leaves the label form empty instead of pre-filling it
    with the predictions.
    """

    rule: str = "analysed"
    top_k: float = DEFAULT_TOP_K
    threshold: float = 0.5
    label_all: bool = False
    blind: bool = True


@dataclass(frozen=True)
class Loaded:
    """What one session is looking at: an analysis (perhaps still growing) and its audio file."""

    analysis: Analysis
    audio_path: str | None
    spans: tuple[SegmentSpan, ...]

    @property
    def complete(self) -> bool:
        """Whether the analysis is final (emotion done, or none coming)."""
        analysis = self.analysis
        return not analysis.pending and (analysis.track is not None or analysis.segments is None)

    def span(self, index: int) -> SegmentSpan | None:
        """The segment with this index, ``None`` for the whole track."""
        if index == TRACK:
            return None
        for span in self.spans:
            if span.index == index:
                return span
        from m2e_core.errors import ConfigError

        raise ConfigError(f"segment {index + 1} does not exist in this analysis")


@dataclass(frozen=True)
class Page:
    """A handler's answer for the Analyze tab; ``None`` leaves a component as it is.

    ``selector`` is ``(choices, value)`` with choices as ``(label, index)`` pairs.
    """

    state: Loaded | None = None
    stage: str | None = None
    models: str | None = None
    summary: str | None = None
    player: str | None = None
    timeline: Any = None
    emotion: Any = None
    plane: Any = None
    tags: Any = None
    selector: tuple[list[tuple[str, int]], int] | None = None
    segment: str | None = None
    label_valence: float | None = None
    label_arousal: float | None = None
    label_tags: list[str] | None = None
    json_file: str | None = None
    raw: dict[str, Any] | None = None

    #: The fields in the order the layout wires them.
    FIELDS = ("state", "stage", "models", "summary", "player", "timeline", "emotion", "plane", "tags", "selector",
              "segment", "label_valence", "label_arousal", "label_tags", "json_file", "raw")
