"""Mood/theme tags: the decision rules and the ranked bars of one segment or the whole track.

A :class:`TagDecision` is the outcome of one rule over tag probabilities: the ``k`` most
probable, one global threshold, or the per-tag thresholds a checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from m2e_core.constants import DEFAULT_TOP_K
from m2e_core.errors import ConfigError
from m2e_core.types import SegmentEmotion

from .common import SELECTED_COLOR, base_layout, empty_figure, format_span

#: Decision rules for selecting tags: the ``k`` most probable, one global probability
#: threshold, or the per-tag thresholds a checkpoint carries.
DECISION_RULES = ("top-k", "threshold", "thresholds")


@dataclass(frozen=True)
class TagDecision:
    """Tags chosen from probabilities by one decision rule.

    ``rule`` is one of :data:`DECISION_RULES`; ``top_k`` is set for ``"top-k"``,
    ``threshold`` for ``"threshold"``, ``thresholds`` (tag -> threshold) for ``"thresholds"``.
    ``selected`` lists the chosen tags, most probable first.
    """

    rule: str
    selected: tuple[str, ...]
    top_k: int | None = None
    threshold: float | None = None
    thresholds: Mapping[str, float] | None = None

    def describe(self) -> str:
        """A one-line, human-readable statement of the rule."""
        if self.rule == "top-k":
            return f"top-{self.top_k}: the {self.top_k} most probable tags"
        if self.rule == "threshold":
            return f"threshold: every tag with probability >= {self.threshold:.2f}"
        return "per-tag thresholds from the checkpoint (tuned on validation data)"

    def short(self) -> str:
        """The rule in a few words: ``"top-5"``, ``"p >= 0.50"``, ``"per-tag thresholds"``."""
        if self.rule == "top-k":
            return f"top-{self.top_k}"
        if self.rule == "threshold":
            return f"p >= {self.threshold:.2f}"
        return "per-tag thresholds"

    def limit_for(self, tag: str) -> float | None:
        """The probability a tag must reach to be selected, where the rule has one."""
        if self.rule == "threshold":
            return self.threshold
        if self.rule == "thresholds" and self.thresholds is not None:
            return self.thresholds.get(tag)
        return None


def decide_tags(
    tags: Mapping[str, float],
    *,
    rule: str = "top-k",
    top_k: int = DEFAULT_TOP_K,
    threshold: float = 0.5,
    thresholds: Mapping[str, float] | Sequence[float] | None = None,
) -> TagDecision:
    """Select tags from their probabilities.

    Parameters
    ----------
    tags : mapping of str to float
        Tag probabilities in [0, 1].
    rule : {"top-k", "threshold", "thresholds"}
        ``"top-k"`` keeps the ``top_k`` most probable tags; ``"threshold"`` keeps every tag
        at or above ``threshold``; ``"thresholds"`` uses one threshold per tag.
    top_k : int
        Number of tags for ``"top-k"`` (>= 1).
    threshold : float
        Global threshold in [0, 1] for ``"threshold"``.
    thresholds : mapping or sequence of float, optional
        Per-tag thresholds for ``"thresholds"``: a mapping tag -> threshold, or a sequence
        in the order of ``tags``.

    Returns
    -------
    TagDecision

    Raises
    ------
    ConfigError
        Unknown rule, ``top_k < 1``, a threshold outside [0, 1], or ``"thresholds"``
        without per-tag thresholds covering every tag.

    Examples
    --------
    >>> decide_tags({"happy": 0.7, "sad": 0.1, "calm": 0.4}, top_k=2).selected
    ('happy', 'calm')
    >>> decide_tags({"happy": 0.7, "sad": 0.1}, rule="threshold", threshold=0.5).selected
    ('happy',)
    """
    if rule not in DECISION_RULES:
        raise ConfigError(f"unknown tag decision rule {rule!r}; use one of {', '.join(DECISION_RULES)}")
    ranked = sorted(tags.items(), key=lambda item: item[1], reverse=True)
    if rule == "top-k":
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
            raise ConfigError(f"top_k must be a whole number >= 1, got {top_k!r}")
        k = int(top_k)
        return TagDecision("top-k", tuple(name for name, _ in ranked[:k]), top_k=k)
    if rule == "threshold":
        if not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold!r}")
        limit = float(threshold)
        return TagDecision("threshold", tuple(name for name, p in ranked if p >= limit), threshold=limit)
    if thresholds is None:
        raise ConfigError("the per-tag thresholds rule needs a checkpoint that carries thresholds")
    if isinstance(thresholds, Mapping):
        per_tag = {str(name): float(value) for name, value in thresholds.items()}
    else:
        values = [float(value) for value in thresholds]
        if len(values) != len(tags):
            raise ConfigError(f"got {len(values)} per-tag thresholds for {len(tags)} tags")
        per_tag = dict(zip(tags, values))
    missing = [name for name in tags if name not in per_tag]
    if missing:
        raise ConfigError(f"no threshold for tags: {', '.join(missing[:5])}")
    bad = {name: value for name, value in per_tag.items() if not 0.0 <= value <= 1.0}
    if bad:
        raise ConfigError(f"per-tag thresholds must be in [0, 1]; got {bad}")
    selected = tuple(name for name, p in ranked if p >= per_tag[name])
    return TagDecision("thresholds", selected, thresholds=per_tag)


def tag_bars(
    emotion: SegmentEmotion,
    decision: TagDecision,
    *,
    max_bars: int = 15,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Ranked horizontal bars of tag probabilities, selected tags highlighted.

    Parameters
    ----------
    emotion : SegmentEmotion
        The segment or track whose tags are drawn.
    decision : TagDecision
        The rule and its selection (see :func:`decide_tags`); its description is the
        subtitle, and the threshold of each tag (when the rule has one) is marked.
    max_bars : int
        Most probable tags shown; selected tags beyond this are added so none is hidden.
    title : str, optional
        Figure title.
    height : int
        Figure height in pixels.
    """
    if not emotion.tags:
        return empty_figure("No tag prediction (emotion model not loaded)", height=height)
    ranked = emotion.top_tags(len(emotion.tags))
    shown = ranked[:max_bars]
    shown_names = {name for name, _ in shown}
    shown += [(name, prob) for name, prob in ranked[max_bars:] if name in decision.selected
              and name not in shown_names]
    shown = shown[::-1]  # most probable at the top of a horizontal bar chart
    selected = set(decision.selected)
    names = [name for name, _ in shown]
    figure = go.Figure(
        go.Bar(
            x=[prob for _, prob in shown],
            y=names,
            orientation="h",
            marker={"color": [SELECTED_COLOR if name in selected else "#9ab" for name in names]},
            text=[f"{prob:.2f}" for _, prob in shown],
            textposition="outside",
            cliponaxis=False,
            customdata=["selected" if name in selected else "not selected" for name in names],
            hovertemplate="<b>%{y}</b>: %{x:.3f} (%{customdata})<extra></extra>",
            name="probability",
        )
    )
    limits = [decision.limit_for(name) for name in names]
    if any(limit is not None for limit in limits):
        figure.add_trace(
            go.Scatter(
                x=limits,
                y=names,
                mode="markers",
                marker={"symbol": "line-ns", "size": 14, "line": {"width": 2, "color": "#333"}},
                name="threshold",
                hovertemplate="threshold for %{y}: %{x:.2f}<extra></extra>",
            )
        )
    heading = title or f"Tags: {segment_name(emotion)}"
    subtitle = f"<span style='font-size:11px;color:#666'>· selected: {decision.short()}</span>"
    base_layout(figure, title=f"{heading} {subtitle}", height=height, margin={"l": 10, "r": 36, "t": 40, "b": 36})
    figure.update_layout(
        xaxis={"title": {"text": "probability", "font": {"size": 11}}, "range": [0, 1.08], "gridcolor": "#eee",
               "fixedrange": True, "tickfont": {"size": 10}},
        yaxis={"automargin": True, "fixedrange": True, "tickfont": {"size": 11}},
        meta={"view": "tags", "rule": decision.rule, "selected": list(decision.selected)},
    )
    return figure


def segment_name(emotion: SegmentEmotion) -> str:
    """``"whole track"`` for index -1, else ``"segment 2 (0:30-1:00)"`` (numbered from 1)."""
    if emotion.index < 0:
        return "whole track"
    return f"segment {emotion.index + 1} ({format_span(emotion.start, emotion.end)})"
