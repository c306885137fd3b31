"""Plotly figures of an analysis: the valence-arousal plane, tag bars and the chord timeline.

Every function is pure: it reads typed results (:class:`~m2e_core.types.Analysis`,
:class:`~m2e_core.types.SegmentEmotion`) and returns a new ``plotly.graph_objects.Figure``,
so the figures can be tested without a browser and reused outside the app.

Conventions
-----------
- Valence is on x, arousal on y, both on the 1-9 scale; the plane is split into quadrants
  at 5 (the scale's midpoint). Points outside 1-9 (an untrained model can produce them)
  are drawn where they are and the axes widen to show them; nothing is clipped.
- Times on the chord timeline are seconds from the start of the track.
- The 56 mood/theme tags are drawn at their valence/arousal anchors from
  :func:`m2e_core.vocab.mood_tags`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from .constants import DEFAULT_TOP_K, VA_MAX, VA_MIN
from .errors import ConfigError
from .types import Analysis, ChordSpan, SegmentEmotion
from .vocab import mood_tags

#: Decision rules for selecting tags: the ``k`` most probable, one global probability
#: threshold, or the per-tag thresholds a checkpoint carries.
DECISION_RULES = ("top-k", "threshold", "thresholds")

#: Quadrant captions, as (valence side, arousal side, text).
QUADRANTS = (
    ("high", "high", "excited / happy"),
    ("low", "high", "tense / angry"),
    ("low", "low", "sad / depressed"),
    ("high", "low", "calm / content"),
)

_MIDPOINT = (VA_MIN + VA_MAX) / 2
_TRACK_COLOR = "#d62728"
_SELECTED_TAG_COLOR = "#ff7f0e"
_ANCHOR_COLOR = "rgba(110, 110, 110, 0.55)"
_HIGHLIGHT_COLOR = "rgba(255, 127, 14, 0.18)"
_FONT = {"family": "Inter, Helvetica, Arial, sans-serif", "size": 12}

#: Colours of chord families on the timeline.
CHORD_FAMILY_COLORS: dict[str, str] = {
    "major": "#4c78a8",
    "minor": "#b279a2",
    "dominant": "#54a24b",
    "diminished": "#e45756",
    "augmented": "#f58518",
    "suspended": "#72b7b2",
    "no chord": "#c7c7c7",
}


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


def format_time(seconds: float) -> str:
    """``75.3`` -> ``"1:15"`` (minutes:seconds, rounded down)."""
    total = max(0, int(math.floor(seconds + 1e-6)))
    return f"{total // 60}:{total % 60:02d}"


def segment_label(segment: SegmentEmotion) -> str:
    """``"segment 2 (0:30-1:00)"`` with the segment number counted from 1."""
    return f"segment {segment.index + 1} ({format_time(segment.start)}-{format_time(segment.end)})"


def empty_figure(message: str, *, height: int = 320) -> go.Figure:
    """A blank figure that shows ``message`` in its middle."""
    figure = go.Figure()
    figure.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                          font={"size": 14, "color": "#666"})
    figure.update_layout(height=height, xaxis={"visible": False}, yaxis={"visible": False},
                         margin={"l": 20, "r": 20, "t": 30, "b": 20}, font=_FONT,
                         plot_bgcolor="white", paper_bgcolor="white")
    return figure


def _axis_range(values: Sequence[float]) -> list[float]:
    low = min([VA_MIN, *values])
    high = max([VA_MAX, *values])
    return [low - 0.3 if low < VA_MIN else low, high + 0.3 if high > VA_MAX else high]


def _plane_layout(figure: go.Figure, valences: Sequence[float], arousals: Sequence[float],
                  *, title: str, height: int) -> None:
    x_range = _axis_range(valences)
    y_range = _axis_range(arousals)
    figure.add_hline(y=_MIDPOINT, line={"color": "#999", "width": 1, "dash": "dot"})
    figure.add_vline(x=_MIDPOINT, line={"color": "#999", "width": 1, "dash": "dot"})
    corners = {"low": 0.02, "high": 0.98}
    for valence_side, arousal_side, text in QUADRANTS:
        figure.add_annotation(
            text=f"<i>{text}</i>", xref="x domain", yref="y domain",
            x=corners[valence_side], y=corners[arousal_side],
            xanchor="left" if valence_side == "low" else "right",
            yanchor="bottom" if arousal_side == "low" else "top",
            showarrow=False, font={"size": 12, "color": "#888"},
        )
    figure.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        height=height,
        margin={"l": 55, "r": 20, "t": 45, "b": 50},
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.13, "x": 0.0},
        xaxis={"title": {"text": "valence (negative → positive)"}, "range": x_range, "dtick": 1,
               "gridcolor": "#eee", "zeroline": False},
        yaxis={"title": {"text": "arousal (calm → energetic)"}, "range": y_range, "dtick": 1,
               "gridcolor": "#eee", "zeroline": False},
    )


def _tag_anchor_trace(highlight: Sequence[str] = ()) -> list[go.Scatter]:
    tags = mood_tags()
    chosen = set(highlight)
    rest = [tag for tag in tags if tag.name not in chosen]
    traces = [
        go.Scatter(
            x=[tag.valence for tag in rest],
            y=[tag.arousal for tag in rest],
            mode="markers+text",
            text=[tag.name for tag in rest],
            textposition="top center",
            textfont={"size": 9, "color": "rgba(90, 90, 90, 0.75)"},
            marker={"size": 5, "color": _ANCHOR_COLOR},
            name="tag anchors",
            hovertemplate="<b>%{text}</b><br>anchor V %{x:.2f}, A %{y:.2f}<extra>tag</extra>",
        )
    ]
    if chosen:
        picked = [tag for tag in tags if tag.name in chosen]
        traces.append(
            go.Scatter(
                x=[tag.valence for tag in picked],
                y=[tag.arousal for tag in picked],
                mode="markers+text",
                text=[tag.name for tag in picked],
                textposition="top center",
                textfont={"size": 12, "color": _SELECTED_TAG_COLOR},
                marker={"size": 9, "color": _SELECTED_TAG_COLOR, "symbol": "diamond"},
                name="selected tags (anchors)",
                hovertemplate="<b>%{text}</b> (selected)<br>anchor V %{x:.2f}, A %{y:.2f}<extra>tag</extra>",
            )
        )
    return traces


def _top_tags_text(emotion: SegmentEmotion, k: int) -> str:
    if not emotion.tags:
        return "no tags"
    return ", ".join(f"{name} {prob:.2f}" for name, prob in emotion.top_tags(k))


def va_plane(
    analysis: Analysis | None = None,
    *,
    selected_segment: int | None = None,
    highlight_tags: Sequence[str] | None = None,
    show_tags: bool = True,
    hover_top_k: int = 3,
    height: int = 560,
) -> go.Figure:
    """The valence-arousal plane of one track.

    Parameters
    ----------
    analysis : Analysis, optional
        The track. ``None`` (or an analysis without emotion) draws the plane with the
        tag anchors only and says that no emotion prediction is available.
    selected_segment : int, optional
        Index of a segment to ring.
    highlight_tags : sequence of str, optional
        Tags whose anchors are drawn prominently (default: the track's selected tags).
    show_tags : bool
        Draw the 56 tag anchors.
    hover_top_k : int
        Number of top tags listed in the hover text of each point.
    height : int
        Figure height in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces in order: tag anchors (when shown), the segment trajectory in time order,
        the track point, and the ring around ``selected_segment`` (when given).
    """
    figure = go.Figure()
    segments = analysis.segments if analysis is not None else None
    track = analysis.track if analysis is not None else None
    has_va = (
        segments is not None
        and track is not None
        and track.emotion.valence is not None
        and track.emotion.arousal is not None
    )
    if highlight_tags is None:
        highlight_tags = track.selected_tags if track is not None else ()
    if show_tags:
        for trace in _tag_anchor_trace(highlight_tags):
            figure.add_trace(trace)
    valences: list[float] = []
    arousals: list[float] = []
    title = "Valence-arousal plane" if analysis is None else f"Valence-arousal plane: {analysis.source}"
    if has_va:
        ordered = sorted((s for s in segments if s.valence is not None and s.arousal is not None),
                         key=lambda s: s.start)
        valences = [float(s.valence) for s in ordered] + [float(track.emotion.valence)]
        arousals = [float(s.arousal) for s in ordered] + [float(track.emotion.arousal)]
        if ordered:
            figure.add_trace(
                go.Scatter(
                    x=valences[:-1],
                    y=arousals[:-1],
                    mode="lines+markers+text",
                    text=[str(s.index + 1) for s in ordered],
                    textposition="middle right",
                    textfont={"size": 10, "color": "#1f4e79"},
                    line={"color": "rgba(31, 78, 121, 0.45)", "width": 2},
                    marker={
                        "size": 11,
                        "color": [s.start for s in ordered],
                        "colorscale": "Viridis",
                        "showscale": len(ordered) > 1,
                        "colorbar": {"title": {"text": "time (s)"}, "thickness": 12, "len": 0.6},
                        "line": {"color": "white", "width": 1},
                    },
                    name="segments (time order)",
                    customdata=[
                        [segment_label(s), _top_tags_text(s, hover_top_k)] for s in ordered
                    ],
                    hovertemplate=(
                        "<b>%{customdata[0]}</b><br>valence %{x:.2f}, arousal %{y:.2f}"
                        "<br>top tags: %{customdata[1]}<extra></extra>"
                    ),
                )
            )
        selected_text = ", ".join(track.selected_tags) or "none"
        figure.add_trace(
            go.Scatter(
                x=[valences[-1]],
                y=[arousals[-1]],
                mode="markers",
                marker={"size": 20, "color": _TRACK_COLOR, "symbol": "star",
                        "line": {"color": "white", "width": 1}},
                name="whole track",
                customdata=[[format_time(analysis.duration), selected_text,
                             _top_tags_text(track.emotion, hover_top_k)]],
                hovertemplate=(
                    "<b>whole track</b> (0:00-%{customdata[0]})<br>valence %{x:.2f}, arousal %{y:.2f}"
                    "<br>selected tags: %{customdata[1]}<br>top tags: %{customdata[2]}<extra></extra>"
                ),
            )
        )
        if selected_segment is not None:
            chosen = [s for s in ordered if s.index == selected_segment]
            if chosen:
                figure.add_trace(
                    go.Scatter(
                        x=[chosen[0].valence],
                        y=[chosen[0].arousal],
                        mode="markers",
                        marker={"size": 24, "color": "rgba(0,0,0,0)",
                                "line": {"color": _SELECTED_TAG_COLOR, "width": 3}},
                        name=f"selected: {segment_label(chosen[0])}",
                        hoverinfo="skip",
                    )
                )
    elif analysis is not None:
        title += "<br><sup style='color:#a33'>No emotion prediction for this track (emotion model not loaded)</sup>"
    _plane_layout(figure, valences, arousals, title=title, height=height)
    return figure


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
            marker={"color": [_SELECTED_TAG_COLOR if name in selected else "#9ab" for name in names]},
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
    heading = title or f"Top mood/theme tags: {segment_name(emotion)}"
    figure.update_layout(
        title={"text": f"{heading}<br><sup>selected by {decision.describe()}</sup>", "x": 0.01,
               "font": {"size": 15}},
        height=height,
        margin={"l": 110, "r": 40, "t": 70, "b": 40},
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        showlegend=False,
        xaxis={"title": {"text": "probability"}, "range": [0, 1.08], "gridcolor": "#eee"},
        yaxis={"automargin": True},
    )
    return figure


def segment_name(emotion: SegmentEmotion) -> str:
    """``"whole track"`` for index -1, else :func:`segment_label`."""
    return "whole track" if emotion.index < 0 else segment_label(emotion)


def chord_family(label: str) -> str:
    """The family of a Harte chord label, for colouring: major, minor, dominant, ...

    Examples
    --------
    >>> chord_family("A:min7"), chord_family("G:7"), chord_family("N"), chord_family("C")
    ('minor', 'dominant', 'no chord', 'major')
    """
    if label in ("N", "X", ""):
        return "no chord"
    quality = label.split(":", 1)[1] if ":" in label else "maj"
    quality = quality.split("/", 1)[0].split("(", 1)[0]
    if quality.startswith(("hdim", "dim")):
        return "diminished"
    if quality.startswith("aug"):
        return "augmented"
    if quality.startswith("sus"):
        return "suspended"
    if quality.startswith("min"):
        return "minor"
    if quality and quality[0].isdigit():
        return "dominant"
    return "major"


def chord_timeline(
    analysis: Analysis,
    *,
    show_normalized: bool = True,
    selected_segment: int | None = None,
    segments: Sequence[tuple[int, float, float]] | None = None,
    height: int | None = None,
) -> go.Figure:
    """Chords as bars on a time axis, with the analysis segments' boundaries.

    Parameters
    ----------
    analysis : Analysis
        The track; its chords (and normalised chords, C major / A minor) are drawn.
    show_normalized : bool
        Add a second row with the normalised chords the model reads.
    selected_segment : int, optional
        Index of a segment to shade.
    segments : sequence of (index, start, end), optional
        Segment boundaries to mark; default the analysis' emotion segments (none when
        emotion was off).
    height : int, optional
        Figure height in pixels (default depends on the number of rows).

    Returns
    -------
    plotly.graph_objects.Figure
        One bar trace per chord family present; bars have ``base`` = start and
        ``x`` = duration, so bar ``i`` spans ``[start_i, end_i)`` seconds.
    """
    rows: list[tuple[str, Sequence[ChordSpan]]] = [
        (f"chords ({analysis.key.tonic} {analysis.key.mode})", analysis.chords)
    ]
    if show_normalized and analysis.normalized_chords:
        target = "C major" if analysis.chord_key.mode == "major" else "A minor"
        rows.append((f"normalised ({target})", analysis.normalized_chords))
    figure = go.Figure()
    for family, color in CHORD_FAMILY_COLORS.items():
        starts: list[float] = []
        durations: list[float] = []
        row_names: list[str] = []
        labels: list[str] = []
        for row_name, chords in rows:
            for chord in chords:
                if chord_family(chord.label) != family:
                    continue
                starts.append(float(chord.start))
                durations.append(float(chord.end - chord.start))
                row_names.append(row_name)
                labels.append(chord.label)
        if not starts:
            continue
        figure.add_trace(
            go.Bar(
                x=durations,
                base=starts,
                y=row_names,
                orientation="h",
                name=family,
                marker={"color": color, "line": {"color": "white", "width": 1}},
                text=labels,
                textposition="inside",
                insidetextanchor="middle",
                textfont={"size": 10, "color": "white"},
                customdata=[[s, s + d] for s, d in zip(starts, durations)],
                hovertemplate="<b>%{text}</b><br>%{customdata[0]:.2f}-%{customdata[1]:.2f} s<extra>%{y}</extra>",
            )
        )
    if not figure.data:
        figure.add_annotation(text="No chords detected", xref="paper", yref="paper", x=0.5, y=0.5,
                              showarrow=False)
    if segments is None:
        segments = [(s.index, s.start, s.end) for s in analysis.segments or ()]
    # Shapes and labels are built as lists and set once: add_vline/add_annotation copy every
    # shape already there, which makes a long track's figure quadratic in its segments.
    boundary = {"type": "line", "xref": "x", "yref": "paper", "y0": 0, "y1": 1,
                "line": {"color": "#555", "width": 1, "dash": "dash"}}
    shapes: list[dict[str, object]] = []
    annotations = list(figure.layout.annotations)
    for index, start, end in segments:
        if index == selected_segment:
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": start, "x1": end, "y0": 0, "y1": 1,
                           "fillcolor": _HIGHLIGHT_COLOR, "line": {"width": 0}, "layer": "below"})
        shapes.append({**boundary, "x0": start, "x1": start})
        annotations.append(go.layout.Annotation(x=start, y=1.0, yref="paper", yanchor="bottom", xanchor="left",
                                                text=f"seg {index + 1}", showarrow=False,
                                                font={"size": 10, "color": "#555"}))
    if segments:
        last = max(end for _, _, end in segments)
        shapes.append({**boundary, "x0": last, "x1": last})
    figure.update_layout(shapes=shapes, annotations=annotations)
    figure.update_layout(
        barmode="overlay",
        title={"text": (f"Key {analysis.key.tonic} {analysis.key.mode} "
                        f"(confidence {analysis.key.confidence:.2f}) and chord timeline"),
               "x": 0.01, "font": {"size": 15}},
        height=height or (150 + 70 * len(rows)),
        margin={"l": 150, "r": 20, "t": 60, "b": 45},
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.35, "x": 0.0},
        xaxis={"title": {"text": "time (s)"}, "range": [0, max(analysis.duration, 1e-3)], "gridcolor": "#eee"},
        yaxis={"autorange": "reversed", "categoryorder": "array",
               "categoryarray": [name for name, _ in rows]},
        bargap=0.25,
    )
    return figure


def batch_va_plane(analyses: Sequence[Analysis], *, show_tags: bool = True, height: int = 560) -> go.Figure:
    """Many tracks on one valence-arousal plane, one labelled point per track.

    Tracks without an emotion prediction are left out and counted in the title.
    """
    figure = go.Figure()
    if show_tags:
        for trace in _tag_anchor_trace():
            figure.add_trace(trace)
    with_va = [
        a for a in analyses
        if a.track is not None and a.track.emotion.valence is not None and a.track.emotion.arousal is not None
    ]
    valences = [float(a.track.emotion.valence) for a in with_va]
    arousals = [float(a.track.emotion.arousal) for a in with_va]
    if with_va:
        figure.add_trace(
            go.Scatter(
                x=valences,
                y=arousals,
                mode="markers+text",
                text=[a.source for a in with_va],
                textposition="bottom center",
                textfont={"size": 10},
                marker={"size": 13, "color": _TRACK_COLOR, "symbol": "star",
                        "line": {"color": "white", "width": 1}},
                name="tracks",
                customdata=[
                    [f"{a.key.tonic} {a.key.mode}", ", ".join(a.track.selected_tags) or "none"]
                    for a in with_va
                ],
                hovertemplate=(
                    "<b>%{text}</b><br>valence %{x:.2f}, arousal %{y:.2f}<br>key %{customdata[0]}"
                    "<br>tags: %{customdata[1]}<extra></extra>"
                ),
            )
        )
    missing = len(analyses) - len(with_va)
    title = f"{len(with_va)} tracks on the valence-arousal plane"
    if missing:
        title += f" ({missing} without emotion prediction)"
    _plane_layout(figure, valences, arousals, title=title, height=height)
    return figure
