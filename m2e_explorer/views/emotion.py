"""Emotion over time: valence and arousal of each segment against track time.

Each segment's prediction is a step over its ``[start, end)`` with a marker at its middle
(hover: the segment, its values and top tags); the whole-track prediction is a dotted line
per dimension. While an analysis is still running, the time not yet analysed is shaded.
Four to six traces whatever the number of segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from m2e_core.constants import VA_MAX, VA_MIN
from m2e_core.types import Analysis, SegmentEmotion

from .common import (
    AROUSAL_COLOR,
    HIGHLIGHT_FILL,
    VALENCE_COLOR,
    SegmentSpan,
    base_layout,
    empty_figure,
    format_span,
)

_MIDPOINT = (VA_MIN + VA_MAX) / 2


def _top_tags(segment: SegmentEmotion, k: int = 3) -> str:
    return ", ".join(f"{name} {prob:.2f}" for name, prob in segment.top_tags(k)) or "no tags"


def _y_range(values: Sequence[float]) -> list[float]:
    low = min([VA_MIN, *values])
    high = max([VA_MAX, *values])
    return [low - 0.3 if low < VA_MIN else low - 0.1, high + 0.3 if high > VA_MAX else high + 0.1]


def emotion_over_time(
    analysis: Analysis,
    *,
    segments: Sequence[SegmentSpan] = (),
    selected: int | None = None,
    height: int = 280,
) -> go.Figure:
    """Valence and arousal against time for one track.

    Parameters
    ----------
    analysis : Analysis
        Its segments' predictions are drawn (an analysis without emotion gets a figure that
        says so).
    segments : sequence of SegmentSpan
        All segments of the track, analysed or not: the time of those without a prediction
        yet is shaded as pending.
    selected : int, optional
        Index of a segment to highlight.
    height : int
        Pixels.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``valence`` and ``arousal`` (steps), ``valence points`` and ``arousal points``
        (segment middles), ``track valence`` and ``track arousal`` (dotted), x in seconds.
    """
    if analysis.segments is None:
        return empty_figure("No valence/arousal over time: the emotion model is not loaded", height=height)
    done = sorted((s for s in analysis.segments if s.valence is not None and s.arousal is not None),
                  key=lambda s: s.start)
    duration = max(float(analysis.duration), 1e-3)
    if not done and analysis.track is not None:
        return empty_figure("This checkpoint predicts no valence/arousal", height=height)
    figure = go.Figure()
    values: list[float] = []
    for name, color, attribute in (("valence", VALENCE_COLOR, "valence"), ("arousal", AROUSAL_COLOR, "arousal")):
        xs: list[float] = []
        ys: list[float] = []
        for segment in done:
            value = float(getattr(segment, attribute))
            xs += [segment.start, segment.end]
            ys += [value, value]
            values.append(value)
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"color": color, "width": 2.5},
                                    hoverinfo="skip", legendgroup=name))
        figure.add_trace(go.Scatter(
            x=[(s.start + s.end) / 2 for s in done], y=[getattr(s, attribute) for s in done], mode="markers",
            name=f"{name} points", legendgroup=name, showlegend=False,
            marker={"color": color, "size": 8, "line": {"color": "white", "width": 1}},
            customdata=[[s.start, s.end, f"segment {s.index + 1} · {format_span(s.start, s.end)}", _top_tags(s)]
                        for s in done],
            hovertemplate=f"<b>%{{customdata[2]}}</b><br>{name} %{{y:.2f}}<br>top tags: %{{customdata[3]}}"
                          "<extra></extra>",
        ))
    track = analysis.track.emotion if analysis.track is not None else None
    if track is not None and track.valence is not None and track.arousal is not None:
        for name, color, value in (("valence", VALENCE_COLOR, track.valence), ("arousal", AROUSAL_COLOR,
                                                                                 track.arousal)):
            values.append(float(value))
            figure.add_trace(go.Scatter(
                x=[0.0, duration], y=[value, value], mode="lines", name=f"track {name}", legendgroup=name,
                showlegend=False, line={"color": color, "width": 1, "dash": "dot"},
                hovertemplate=f"whole track {name} {value:.2f}<extra></extra>",
            ))
    shapes = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": _MIDPOINT, "y1": _MIDPOINT,
               "line": {"color": "#aaa", "width": 1, "dash": "dot"}, "layer": "below"}]
    analysed = {s.index for s in done}
    pending = [s for s in segments if s.index not in analysed]
    if analysis.track is None and pending:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": min(s.start for s in pending),
                       "x1": duration, "y0": 0, "y1": 1, "fillcolor": "rgba(0, 0, 0, 0.05)",
                       "line": {"width": 0}, "layer": "below"})
        figure.add_annotation(x=(min(s.start for s in pending) + duration) / 2, y=0.5, xref="x", yref="paper",
                              text="being analysed", showarrow=False, font={"size": 11, "color": "#888"})
    chosen = [s for s in segments if s.index == selected]
    if chosen:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": chosen[0].start, "x1": chosen[0].end,
                       "y0": 0, "y1": 1, "fillcolor": HIGHLIGHT_FILL, "line": {"width": 0}, "layer": "below"})
    for trace in figure.data:
        trace.meta = {"role": "timeline"}
    base_layout(figure, title="Emotion over time", height=height, margin={"l": 40, "r": 12, "t": 34, "b": 56})
    figure.update_layout(
        shapes=shapes,
        showlegend=True,
        # Below the axis: a legend beside the title collides with it on a phone.
        legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.14, "yanchor": "top",
                "font": {"size": 11}, "bgcolor": "rgba(255,255,255,0)"},
        hovermode="closest",
        dragmode=False,
        xaxis={"range": [0, duration], "autorange": False, "fixedrange": True, "gridcolor": "#eee",
               "zeroline": False, "ticksuffix": " s", "tickfont": {"size": 10}},
        yaxis={"range": _y_range(values), "autorange": False, "fixedrange": True, "dtick": 2, "gridcolor": "#eee",
               "zeroline": False, "tickfont": {"size": 10}},
        meta={"view": "emotion", "duration": duration},
    )
    return figure
