"""The valence-arousal plane: one track's trajectory, or many tracks (the batch plane).

Conventions
-----------
- Valence on x, arousal on y, both 1-9 and drawn square (one unit is as long on both axes),
  split into quadrants at 5. Points outside 1-9 (an untrained model can produce them) are
  drawn where they are and the axes widen to show them; nothing is clipped.
- The 56 mood/theme tags sit at their valence/arousal anchors (word norms,
  :func:`m2e_core.vocab.mood_tags`) as small grey points named on hover. Only the selected
  tags and the anchors nearest the track are labelled, each label placed where it overlaps
  no other label and no caption (:func:`place_labels`); ``label_all`` names every anchor.
- The track's segments form a trajectory in time order, coloured by time; the whole-track
  prediction is a star drawn beneath it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from m2e_core.constants import VA_MAX, VA_MIN
from m2e_core.types import Analysis, SegmentEmotion
from m2e_core.vocab import MoodTag, mood_tags

from .chordnames import key_name
from .common import SELECTED_COLOR, base_layout, format_span, format_time

#: Quadrant captions, as (valence side, arousal side, text).
QUADRANTS = (
    ("high", "high", "excited / happy"),
    ("low", "high", "tense / angry"),
    ("low", "low", "sad / depressed"),
    ("high", "low", "calm / content"),
)
#: Most selected tags labelled on the plane (the rest are highlighted, named on hover).
MAX_SELECTED_LABELS = 8
#: Anchors nearest the track (or the selected segment) labelled besides the selected tags.
NEAREST_LABELS = 3
#: Plot sides (pixels) at which labels are checked not to overlap: a phone, a laptop, a wide screen.
LABEL_CHECK_SIDES = (250.0, 400.0, 560.0)
#: Colours of tracks on the batch plane (then repeated with other marker symbols).
TRACK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")
TRACK_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "cross")

_MIDPOINT = (VA_MIN + VA_MAX) / 2
_TRACK_COLOR = "rgba(214, 39, 40, 0.55)"
_ANCHOR_COLOR = "rgba(120, 120, 120, 0.55)"
_LABEL_FONT_PX = 11
_CHAR_PX = 6.4  # average width of a character at 11 px
_LABEL_PAD_PX = 6
_LABEL_HEIGHT_PX = 17
_MARKER_RADIUS_PX = 6


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels, ``(left, top, right, bottom)`` with y growing downwards."""

    left: float
    top: float
    right: float
    bottom: float

    def overlaps(self, other: Box) -> bool:
        return self.left < other.right and other.left < self.right and self.top < other.bottom and other.top < self.bottom

    def contains(self, x: float, y: float, margin: float = 0.0) -> bool:
        return (self.left - margin <= x <= self.right + margin) and (self.top - margin <= y <= self.bottom + margin)


def _axis_range(values: Sequence[float]) -> list[float]:
    low = min([VA_MIN, *values])
    high = max([VA_MAX, *values])
    return [low - 0.3 if low < VA_MIN else low, high + 0.3 if high > VA_MAX else high]


def _label_size(text: str) -> tuple[float, float]:
    return _CHAR_PX * len(text) + _LABEL_PAD_PX, float(_LABEL_HEIGHT_PX)


def _caption_boxes(side: float) -> list[Box]:
    boxes = []
    for valence_side, arousal_side, text in QUADRANTS:
        width, height = _label_size(text)
        left = 2.0 if valence_side == "low" else side - 2.0 - width
        top = 2.0 if arousal_side == "high" else side - 2.0 - height
        boxes.append(Box(left, top, left + width, top + height))
    return boxes


def _candidates(width: float, height: float) -> list[tuple[float, float]]:
    """Offsets (pixels) of a label's centre from its point, nearest first."""
    offsets = []
    for gap in (10.0, 24.0, 40.0, 60.0):
        for dx, dy in ((0, -1), (1, 0), (-1, 0), (0, 1), (1, -1), (-1, -1), (1, 1), (-1, 1)):
            offsets.append((dx * (gap + width / 2), dy * (gap + height / 2)))
    return offsets


def place_labels(
    points: Sequence[tuple[float, float, str]],
    *,
    x_range: Sequence[float],
    y_range: Sequence[float],
    obstacles: Sequence[tuple[float, float]] = (),
    sides: Sequence[float] = LABEL_CHECK_SIDES,
) -> list[tuple[float, float]]:
    """Pixel offsets for labels of points so that no two labels overlap, at any of ``sides``.

    Parameters
    ----------
    points : sequence of (x, y, text)
        Labelled points in data units, most important first (they get the nearest places).
    x_range, y_range : (low, high)
        The axes' ranges.
    obstacles : sequence of (x, y)
        Other points a label must not cover (data units).
    sides : sequence of float
        Plot sides in pixels (the plane is square) at which the placement is checked: label
        boxes have a fixed pixel size while the points spread with the plot.

    Returns
    -------
    list of (ax, ay)
        The offset of each label's centre from its point, in pixels (y down), as plotly's
        annotation ``ax``/``ay``. A label that fits nowhere gets the offset with the fewest
        overlaps.
    """
    (x0, x1), (y0, y1) = x_range, y_range
    placed: dict[float, list[Box]] = {side: _caption_boxes(side) for side in sides}
    marks = [(x, y) for x, y, _ in points] + list(obstacles)

    def pixel(x: float, y: float, side: float) -> tuple[float, float]:
        return (x - x0) / (x1 - x0) * side, (y1 - y) / (y1 - y0) * side

    offsets: list[tuple[float, float]] = []
    for x, y, text in points:
        width, height = _label_size(text)
        best: tuple[int, tuple[float, float], dict[float, Box]] | None = None
        for ax, ay in _candidates(width, height):
            conflicts = 0
            boxes: dict[float, Box] = {}
            for side in sides:
                px, py = pixel(x, y, side)
                box = Box(px + ax - width / 2, py + ay - height / 2, px + ax + width / 2, py + ay + height / 2)
                boxes[side] = box
                if box.left < 0 or box.top < 0 or box.right > side or box.bottom > side:
                    conflicts += 1
                conflicts += sum(box.overlaps(other) for other in placed[side])
                conflicts += sum(box.contains(*pixel(mx, my, side), _MARKER_RADIUS_PX) for mx, my in marks)
            if best is None or conflicts < best[0]:
                best = (conflicts, (ax, ay), boxes)
            if conflicts == 0:
                break
        assert best is not None  # _candidates is never empty
        for side, box in best[2].items():
            placed[side].append(box)
        offsets.append(best[1])
    return offsets


def _nearest_tags(valence: float, arousal: float, count: int, exclude: set[str]) -> list[MoodTag]:
    ranked = sorted((tag for tag in mood_tags() if tag.name not in exclude),
                    key=lambda tag: math.hypot(tag.valence - valence, tag.arousal - arousal))
    return ranked[:count]


def _plane_layout(figure: go.Figure, x_range: list[float], y_range: list[float], *, title: str,
                  height: int) -> None:
    shapes = [
        {"type": "line", "xref": "x", "yref": "y", "x0": x_range[0], "x1": x_range[1], "y0": _MIDPOINT,
         "y1": _MIDPOINT, "line": {"color": "#aaa", "width": 1, "dash": "dot"}, "layer": "below"},
        {"type": "line", "xref": "x", "yref": "y", "x0": _MIDPOINT, "x1": _MIDPOINT, "y0": y_range[0],
         "y1": y_range[1], "line": {"color": "#aaa", "width": 1, "dash": "dot"}, "layer": "below"},
    ]
    annotations = list(figure.layout.annotations)
    corners = {"low": 0.0, "high": 1.0}
    for valence_side, arousal_side, text in QUADRANTS:
        annotations.append(go.layout.Annotation(
            text=f"<i>{text}</i>", xref="x domain", yref="y domain", x=corners[valence_side],
            y=corners[arousal_side], xanchor="left" if valence_side == "low" else "right",
            yanchor="bottom" if arousal_side == "low" else "top", xshift=2 if valence_side == "low" else -2,
            yshift=2 if arousal_side == "low" else -2, showarrow=False, font={"size": 11, "color": "#999"},
            name="quadrant",
        ))
    base_layout(figure, title=title, height=height, margin={"l": 44, "r": 12, "t": 34, "b": 40})
    figure.update_layout(
        shapes=shapes,
        annotations=annotations,
        xaxis={"title": {"text": "valence (negative → positive)", "font": {"size": 11}, "standoff": 4},
               "range": x_range, "autorange": False, "dtick": 1, "gridcolor": "#f0f0f0", "zeroline": False,
               "constrain": "domain", "tickfont": {"size": 10}},
        yaxis={"title": {"text": "arousal (calm → energetic)", "font": {"size": 11}, "standoff": 2},
               "range": y_range, "autorange": False, "dtick": 1, "gridcolor": "#f0f0f0", "zeroline": False,
               "scaleanchor": "x", "scaleratio": 1, "constrain": "domain", "tickfont": {"size": 10}},
    )


def _anchor_traces(highlight: Sequence[str], label_all: bool) -> list[go.Scatter]:
    chosen = set(highlight)
    rest = [tag for tag in mood_tags() if tag.name not in chosen]
    picked = [tag for tag in mood_tags() if tag.name in chosen]
    traces = [go.Scatter(
        x=[tag.valence for tag in rest], y=[tag.arousal for tag in rest], text=[tag.name for tag in rest],
        mode="markers+text" if label_all else "markers", textposition="top center",
        textfont={"size": 9, "color": "rgba(90, 90, 90, 0.8)"}, marker={"size": 5, "color": _ANCHOR_COLOR},
        name="tag anchors", hovertemplate="<b>%{text}</b><br>anchor V %{x:.2f}, A %{y:.2f}<extra>tag</extra>",
    )]
    if picked:
        traces.append(go.Scatter(
            x=[tag.valence for tag in picked], y=[tag.arousal for tag in picked], text=[tag.name for tag in picked],
            mode="markers", marker={"size": 9, "color": SELECTED_COLOR, "symbol": "diamond",
                                    "line": {"color": "white", "width": 1}},
            name="selected tags (anchors)",
            hovertemplate="<b>%{text}</b> (selected)<br>anchor V %{x:.2f}, A %{y:.2f}<extra>tag</extra>",
        ))
    return traces


def _top_tags_text(emotion: SegmentEmotion, k: int) -> str:
    return ", ".join(f"{name} {prob:.2f}" for name, prob in emotion.top_tags(k)) or "no tags"


def va_plane(
    analysis: Analysis | None = None,
    *,
    selected_segment: int | None = None,
    highlight_tags: Sequence[str] | None = None,
    label_all: bool = False,
    hover_top_k: int = 3,
    height: int = 470,
) -> go.Figure:
    """The valence-arousal plane of one track.

    Parameters
    ----------
    analysis : Analysis, optional
        The track. ``None`` (or an analysis without emotion) draws the plane with the tag
        anchors only; an analysis still running draws the segments analysed so far.
    selected_segment : int, optional
        Index of a segment to ring; the labelled nearest anchors are then its nearest.
    highlight_tags : sequence of str, optional
        Tags drawn and labelled prominently (default: the track's selected tags).
    label_all : bool
        Name every tag anchor (cluttered, on request).
    hover_top_k : int
        Number of top tags in the hover text of each point.
    height : int
        Pixels; the plane itself is square within them.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces in order: ``tag anchors``, ``selected tags (anchors)`` (when any), ``whole track``,
        ``segments (time order)``, ``selected segment``; labels are annotations named ``tag label``.
    """
    figure = go.Figure()
    segments = analysis.segments if analysis is not None else None
    track = analysis.track if analysis is not None else None
    if highlight_tags is None:
        highlight_tags = track.selected_tags if track is not None else ()
    for trace in _anchor_traces(highlight_tags, label_all):
        figure.add_trace(trace)
    ordered = sorted((s for s in segments or () if s.valence is not None and s.arousal is not None),
                     key=lambda s: s.start)
    track_va = None
    if track is not None and track.emotion.valence is not None and track.emotion.arousal is not None:
        track_va = (float(track.emotion.valence), float(track.emotion.arousal))
    valences = [float(s.valence) for s in ordered] + ([track_va[0]] if track_va else [])
    arousals = [float(s.arousal) for s in ordered] + ([track_va[1]] if track_va else [])
    x_range, y_range = _axis_range(valences), _axis_range(arousals)
    if track_va is not None:
        figure.add_trace(go.Scatter(
            x=[track_va[0]], y=[track_va[1]], mode="markers", name="whole track",
            marker={"size": 22, "color": _TRACK_COLOR, "symbol": "star", "line": {"color": "white", "width": 1}},
            customdata=[[format_time(analysis.duration), ", ".join(track.selected_tags) or "none",
                         _top_tags_text(track.emotion, hover_top_k)]],
            hovertemplate=("<b>whole track</b> (0:00-%{customdata[0]})<br>valence %{x:.2f}, arousal %{y:.2f}"
                           "<br>selected tags: %{customdata[1]}<br>top tags: %{customdata[2]}<extra></extra>"),
        ))
    if ordered:
        duration = max(float(analysis.duration), 1e-3)
        figure.add_trace(go.Scatter(
            x=[s.valence for s in ordered], y=[s.arousal for s in ordered], mode="lines+markers",
            name="segments (time order)", line={"color": "rgba(31, 78, 121, 0.45)", "width": 2},
            marker={"size": 10, "color": [s.start for s in ordered], "colorscale": "Viridis", "cmin": 0,
                    "cmax": duration, "showscale": False, "line": {"color": "white", "width": 1}},
            customdata=[[s.start, s.end, f"segment {s.index + 1} ({format_span(s.start, s.end)})",
                         _top_tags_text(s, hover_top_k), key_name(s.key) if s.key is not None else ""]
                        for s in ordered],
            hovertemplate=("<b>%{customdata[2]}</b><br>valence %{x:.2f}, arousal %{y:.2f}"
                           "<br>top tags: %{customdata[3]}<br>%{customdata[4]}<extra></extra>"),
            meta={"role": "trajectory"},
        ))
    focus = track_va
    chosen = [s for s in ordered if s.index == selected_segment]
    if chosen:
        focus = (float(chosen[0].valence), float(chosen[0].arousal))
        figure.add_trace(go.Scatter(
            x=[focus[0]], y=[focus[1]], mode="markers", name="selected segment", hoverinfo="skip",
            marker={"size": 22, "color": "rgba(0,0,0,0)", "line": {"color": SELECTED_COLOR, "width": 3}},
        ))
    if not label_all:
        tags = {tag.name: tag for tag in mood_tags()}
        labelled = [tags[name] for name in highlight_tags if name in tags][:MAX_SELECTED_LABELS]
        if focus is not None:
            labelled += _nearest_tags(*focus, NEAREST_LABELS, {tag.name for tag in labelled})
        obstacles = list(zip(valences, arousals))
        offsets = place_labels([(tag.valence, tag.arousal, tag.name) for tag in labelled], x_range=x_range,
                               y_range=y_range, obstacles=obstacles)
        selected_names = set(highlight_tags)
        for tag, (ax, ay) in zip(labelled, offsets):
            color = SELECTED_COLOR if tag.name in selected_names else "#555"
            figure.add_annotation(
                x=tag.valence, y=tag.arousal, ax=ax, ay=ay, text=tag.name, showarrow=True, arrowhead=0,
                arrowwidth=1, arrowcolor="rgba(120,120,120,0.7)", standoff=3,
                font={"size": _LABEL_FONT_PX, "color": color}, bgcolor="rgba(255,255,255,0.8)",
                borderpad=1, name="tag label",
            )
    title = "Valence and arousal"
    note = ""
    if analysis is not None and not ordered and track_va is None:
        note = "no emotion model" if analysis.segments is None else "being computed"
    if note:
        title += f" <span style='font-size:11px;color:#666'>· {note}</span>"
    _plane_layout(figure, x_range, y_range, title=title, height=height)
    figure.update_layout(meta={"view": "plane"})
    return figure


def batch_va_plane(analyses: Sequence[Analysis], *, height: int = 470) -> go.Figure:
    """Many tracks on one plane: one colour (and, past ten tracks, symbol) per track, with a legend.

    Tracks without an emotion prediction are left out and counted in the title.
    """
    figure = go.Figure()
    for trace in _anchor_traces((), False):
        figure.add_trace(trace)
    with_va = [a for a in analyses
               if a.track is not None and a.track.emotion.valence is not None and a.track.emotion.arousal is not None]
    for number, analysis in enumerate(with_va):
        emotion = analysis.track.emotion
        figure.add_trace(go.Scatter(
            x=[emotion.valence], y=[emotion.arousal], mode="markers", name=analysis.source,
            marker={"size": 13, "color": TRACK_COLORS[number % len(TRACK_COLORS)],
                    "symbol": TRACK_SYMBOLS[(number // len(TRACK_COLORS)) % len(TRACK_SYMBOLS)],
                    "line": {"color": "white", "width": 1}},
            customdata=[[key_name(analysis.key), ", ".join(analysis.track.selected_tags) or "none",
                         format_time(analysis.duration)]],
            hovertemplate=("<b>%{fullData.name}</b> (%{customdata[2]})<br>valence %{x:.2f}, arousal %{y:.2f}"
                           "<br>key %{customdata[0]}<br>tags: %{customdata[1]}<extra></extra>"),
            meta={"role": "track"},
        ))
    x_range = _axis_range([float(a.track.emotion.valence) for a in with_va])
    y_range = _axis_range([float(a.track.emotion.arousal) for a in with_va])
    missing = len(analyses) - len(with_va)
    title = f"{len(with_va)} track{'s' if len(with_va) != 1 else ''}"
    if missing:
        title += f" ({missing} without emotion prediction)"
    _plane_layout(figure, x_range, y_range, title=title, height=height + 20 * ((len(with_va) + 2) // 3))
    figure.update_layout(
        showlegend=bool(with_va),
        legend={"orientation": "h", "x": 0.0, "y": -0.12, "yanchor": "top", "font": {"size": 11},
                "traceorder": "normal"},
        margin={"b": 60 + 20 * ((len(with_va) + 2) // 3)},
        meta={"view": "batch-plane"},
    )
    for trace in figure.data:
        if trace.meta is None or trace.meta.get("role") != "track":
            trace.showlegend = False
    return figure
