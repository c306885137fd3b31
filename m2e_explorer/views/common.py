"""What every view shares: time formatting, colours, fonts, the empty figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from m2e_core.constants import MIN_TAIL_SECONDS, SEGMENT_SECONDS
from m2e_core.errors import ConfigError
from m2e_core.types import Analysis

#: Font of every figure.
FONT = {"family": "Inter, Helvetica, Arial, sans-serif", "size": 12}
#: Smallest text drawn on a figure (pixels); a label that would be smaller is left to hover.
MIN_TEXT_PX = 9
#: Valence and arousal colours, the same in every view.
VALENCE_COLOR = "#1f77b4"
AROUSAL_COLOR = "#d62728"
SELECTED_COLOR = "#ff7f0e"
HIGHLIGHT_FILL = "rgba(255, 127, 14, 0.16)"
GRID_COLOR = "#eee"
MUTED_TEXT = "#777"


def format_time(seconds: float) -> str:
    """``75.3`` -> ``"1:15"`` (minutes:seconds, rounded down)."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, int(math.floor(seconds + 1e-6)))
    return f"{total // 60}:{total % 60:02d}"


def format_span(start: float, end: float) -> str:
    """``(30, 60)`` -> ``"0:30-1:00"``."""
    return f"{format_time(start)}-{format_time(end)}"


def empty_figure(message: str, *, height: int = 260) -> go.Figure:
    """A blank figure that says ``message`` in its middle."""
    figure = go.Figure()
    figure.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                          font={"size": 13, "color": "#666"})
    figure.update_layout(height=height, xaxis={"visible": False}, yaxis={"visible": False},
                         margin={"l": 10, "r": 10, "t": 20, "b": 10}, font=FONT,
                         plot_bgcolor="white", paper_bgcolor="white")
    return figure


def base_layout(figure: go.Figure, *, title: str, height: int, margin: dict[str, int]) -> None:
    """The layout every figure shares: white, titled top left, no legend unless asked."""
    figure.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "xref": "paper", "font": {"size": 14},
               "y": 0.98, "yanchor": "top", "yref": "container"},
        height=height,
        margin=margin,
        font=FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        showlegend=False,
        hoverlabel={"namelength": -1},
    )


@dataclass(frozen=True)
class SegmentSpan:
    """A segment of the track: its index (from 0) and ``[start, end)`` seconds."""

    index: int
    start: float
    end: float


#: Most segments an analysis may have (a 30-minute track in 5-second segments is 360).
MAX_SEGMENTS = 400


def planned_spans(duration: float, *, segment_seconds: float = SEGMENT_SECONDS,
                  min_tail_seconds: float = MIN_TAIL_SECONDS) -> tuple[SegmentSpan, ...]:
    """The segments the pipeline cuts a track of ``duration`` seconds into (a short tail merged).

    Computed from the numbers alone, in as many steps as there are segments.

    Raises
    ------
    ConfigError
        More than :data:`MAX_SEGMENTS` segments, or a duration that is not a positive number.

    Examples
    --------
    >>> [(s.start, s.end) for s in planned_spans(62.0)]
    [(0.0, 30.0), (30.0, 62.0)]
    """
    if not math.isfinite(duration) or duration <= 0:
        raise ConfigError(f"a track's duration must be a positive number of seconds, got {duration!r}")
    count = max(1, math.ceil(duration / segment_seconds - 1e-9))
    if count > 1 and duration - (count - 1) * segment_seconds < min_tail_seconds:
        count -= 1
    if count > MAX_SEGMENTS:
        raise ConfigError(f"{format_time(duration)} in {segment_seconds:g}-second segments is {count} segments, "
                          f"more than the {MAX_SEGMENTS} this explorer shows")
    bounds = [index * segment_seconds for index in range(count)] + [float(duration)]
    return tuple(SegmentSpan(index, float(start), float(end))
                 for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])))


def segment_spans(analysis: Analysis, *, segment_seconds: float = SEGMENT_SECONDS,
                  min_tail_seconds: float = MIN_TAIL_SECONDS) -> tuple[SegmentSpan, ...]:
    """The segments of an analysis: its own when complete, else those planned (see :func:`planned_spans`).

    While emotion is still being computed (``analysis.track is None``), the segments computed
    so far replace the planned ones with the same index.
    """
    done = sorted(analysis.segments or (), key=lambda s: s.start)
    if done and analysis.track is not None:
        return tuple(SegmentSpan(s.index, float(s.start), float(s.end)) for s in done)
    planned = {span.index: span for span in planned_spans(analysis.duration, segment_seconds=segment_seconds,
                                                          min_tail_seconds=min_tail_seconds)}
    for segment in done:
        planned[segment.index] = SegmentSpan(segment.index, float(segment.start), float(segment.end))
    return tuple(sorted(planned.values(), key=lambda span: span.start))
