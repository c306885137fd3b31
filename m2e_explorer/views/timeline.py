"""The key and chord timeline: segments, local key, chords and the chords the model reads.

One figure with up to four rows on a time axis (seconds from the start of the track):

``segment``  the analysis segments, numbered from 1, the selected one highlighted;
``key``      the local key (``Analysis.key_timeline``; per segment when an analysis has no
             timeline; the global key otherwise), spelled as the key is written;
``chords``   the displayed chords, repeated labels merged, roots spelled in the local key;
``model``    the chords the emotion model reads, transposed to C major / A minor.

It opens on a window (:data:`DEFAULT_WINDOW_SECONDS`) with a range slider under it. Labels
are never rotated: plotly shrinks a label to fit its bar, and the page's script hides every
label that would be drawn smaller than :data:`~m2e_explorer.views.common.MIN_TEXT_PX` (the
figure's ``meta["min_text_px"]``), so a label is on every bar wide enough for one and the rest
are in the hover text. (Plotly's ``uniformtext`` would size labels by the range slider's tiny
bars too, and hide them all.) Cost is linear in the input: one bar trace per row
and one line trace for every segment boundary, whatever the number of chords or segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from m2e_core.types import Analysis, ChordSpan, KeyEstimate, KeySpan

from .chordnames import is_no_chord, key_name, short_key_name, short_name, spelled
from .common import FONT, HIGHLIGHT_FILL, MIN_TEXT_PX, SELECTED_COLOR, SegmentSpan, base_layout, format_span

#: Seconds shown when the timeline opens (the whole track when it is not much longer).
DEFAULT_WINDOW_SECONDS = 30.0
#: Tracks up to this long open whole.
WHOLE_TRACK_SECONDS = 45.0

#: Colours of chord families (lead-sheet colours, readable with white text).
CHORD_FAMILY_COLORS: dict[str, str] = {
    "major": "#4c78a8",
    "minor": "#8e5c96",
    "dominant": "#3f8a3a",
    "diminished": "#c8453f",
    "augmented": "#c86a12",
    "suspended": "#3b8f8a",
    "no chord": "#d4d4d4",
}
KEY_COLORS = {"major": "#dbe8f5", "minor": "#eadcf0"}
SEGMENT_COLORS = ("#f1f1f1", "#e4e4e4")
ROW_NAMES = {"segment": "segment", "key": "key", "chords": "chords", "model": "model"}


def chord_family(label: str) -> str:
    """The family of a Harte chord label, for colouring: major, minor, dominant, ...

    Examples
    --------
    >>> chord_family("A:min7"), chord_family("G:7"), chord_family("N"), chord_family("C")
    ('minor', 'dominant', 'no chord', 'major')
    """
    if is_no_chord(label):
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


def merge_chords(chords: Sequence[ChordSpan], *, gap: float = 1e-3) -> tuple[ChordSpan, ...]:
    """Consecutive spans of the same chord joined into one (a chord change is a new span)."""
    merged: list[ChordSpan] = []
    for chord in chords:
        if merged and merged[-1].label == chord.label and chord.start - merged[-1].end <= gap:
            merged[-1] = ChordSpan(merged[-1].start, chord.end, chord.label)
        else:
            merged.append(chord)
    return tuple(merged)


def _merge_keys(spans: Sequence[KeySpan]) -> tuple[KeySpan, ...]:
    merged: list[KeySpan] = []
    for span in sorted(spans, key=lambda s: s.start):
        last = merged[-1] if merged else None
        if last is not None and (last.key.tonic, last.key.mode) == (span.key.tonic, span.key.mode):
            total = last.duration + span.duration
            confidence = ((last.key.confidence * last.duration + span.key.confidence * span.duration) / total
                          if total > 0 else span.key.confidence)
            merged[-1] = KeySpan(last.start, span.end, KeyEstimate(span.key.tonic, span.key.mode, confidence))
        else:
            merged.append(span)
    return tuple(merged)


def key_spans(analysis: Analysis) -> tuple[tuple[KeySpan, ...], str]:
    """The local keys to draw and where they come from.

    Returns
    -------
    spans : tuple of KeySpan
        In time order, neighbours with the same key merged.
    source : str
        ``"key timeline"`` (``Analysis.key_timeline``), ``"per segment"`` (each segment's key,
        for analyses without a timeline) or ``"whole track"`` (the global key).
    """
    if analysis.key_timeline:
        return _merge_keys(analysis.key_timeline), "key timeline"
    with_keys = [s for s in analysis.segments or () if s.key is not None]
    if with_keys:
        return _merge_keys([KeySpan(s.start, s.end, s.key) for s in with_keys]), "per segment"
    return (KeySpan(0.0, analysis.duration, analysis.key),), "whole track"


def keys_at(chords: Sequence[ChordSpan], spans: Sequence[KeySpan], fallback: KeyEstimate) -> list[KeyEstimate]:
    """The local key at the middle of each chord (one pass over both, in time order)."""
    keys: list[KeyEstimate] = []
    position = 0
    for chord in chords:
        middle = (chord.start + chord.end) / 2
        while position < len(spans) and spans[position].end <= middle:
            position += 1
        span = spans[position] if position < len(spans) else None
        keys.append(span.key if span is not None and span.start <= middle else fallback)
    return keys


def _reference_key(analysis: Analysis) -> KeyEstimate:
    mode = analysis.chord_key.mode
    return KeyEstimate("C" if mode == "major" else "A", mode, 1.0)


def _chord_row(chords: Sequence[ChordSpan], keys: Sequence[KeyEstimate], row: int, name: str,
               context: str) -> go.Bar:
    starts, widths, texts, colors, text_colors, data = [], [], [], [], [], []
    for chord, key in zip(chords, keys):
        family = chord_family(chord.label)
        starts.append(float(chord.start))
        widths.append(float(chord.end - chord.start))
        texts.append(short_name(chord.label, key))
        colors.append(CHORD_FAMILY_COLORS[family])
        text_colors.append("#333" if family == "no chord" else "white")
        where = f" · in {key_name(key)}" if context == "local" else " · transposed"
        data.append([chord.start, chord.end,
                     f"<b>{texts[-1]}</b> ({spelled(chord.label, key)}) · {family}<br>"
                     f"{format_span(chord.start, chord.end)} ({chord.end - chord.start:.1f} s){where}"])
    return go.Bar(
        x=widths, base=starts, y=[row] * len(starts), orientation="h", width=0.82, name=name,
        marker={"color": colors, "line": {"color": "white", "width": 1}},
        text=texts, textposition="inside", insidetextanchor="middle", textangle=0,
        textfont={"size": 11, "color": text_colors}, constraintext="inside", cliponaxis=True,
        customdata=data, hovertemplate="%{customdata[2]}<extra></extra>",
    )


def chord_timeline(
    analysis: Analysis,
    *,
    segments: Sequence[SegmentSpan] = (),
    selected: int | None = None,
    show_model: bool = True,
    window: tuple[float, float] | None = None,
    height: int | None = None,
) -> go.Figure:
    """The key and chord timeline of one track.

    Parameters
    ----------
    analysis : Analysis
        Its chords, key timeline (or per-segment keys) and normalised chords are drawn.
    segments : sequence of SegmentSpan
        The segments to draw in the ``segment`` row (none: no row).
    selected : int, optional
        Index of the segment to highlight.
    show_model : bool
        Add the ``model`` row (the normalised chords the emotion model reads).
    window : (float, float), optional
        The time window shown first; default the first :data:`DEFAULT_WINDOW_SECONDS`, or the
        whole track up to :data:`WHOLE_TRACK_SECONDS`.
    height : int, optional
        Pixels (default from the number of rows).

    Returns
    -------
    plotly.graph_objects.Figure
        Bar traces named after their rows (``segment``, ``key``, ``chords``, ``model``; bar
        ``i`` spans ``[base_i, base_i + x_i)`` seconds), a ``boundaries`` line trace, and at
        most one shape (the selected segment). Trace ``meta`` holds ``{"role": "timeline"}``
        for the page's playhead.
    """
    duration = max(float(analysis.duration), 1e-3)
    rows: list[str] = []
    traces: list[go.BaseTraceType] = []
    if segments:
        rows.append("segment")
        emotions = {s.index: s for s in analysis.segments or ()}
        colors, data = [], []
        for number, span in enumerate(segments):
            colors.append(SELECTED_COLOR if span.index == selected else SEGMENT_COLORS[number % 2])
            emotion = emotions.get(span.index)
            detail = ""
            if emotion is not None and emotion.valence is not None and emotion.arousal is not None:
                detail = f"<br>valence {emotion.valence:.2f}, arousal {emotion.arousal:.2f}"
            elif emotion is None and analysis.segments is not None:
                detail = "<br>emotion still being computed"
            data.append([span.start, span.end,
                         f"<b>segment {span.index + 1}</b> · {format_span(span.start, span.end)}{detail}"])
        traces.append(go.Bar(
            x=[s.end - s.start for s in segments], base=[s.start for s in segments],
            y=[len(rows) - 1] * len(segments), orientation="h", width=0.82, name="segment",
            marker={"color": colors, "line": {"color": "white", "width": 1}},
            text=[str(s.index + 1) for s in segments], textposition="inside", insidetextanchor="middle",
            textangle=0, textfont={"size": 11, "color": "#333"}, constraintext="inside",
            customdata=data, hovertemplate="%{customdata[2]}<extra></extra>",
        ))
    spans, source = key_spans(analysis)
    rows.append("key")
    traces.append(go.Bar(
        x=[s.end - s.start for s in spans], base=[s.start for s in spans], y=[len(rows) - 1] * len(spans),
        orientation="h", width=0.82, name="key",
        marker={"color": [KEY_COLORS.get(s.key.mode, "#eee") for s in spans], "line": {"color": "white", "width": 1}},
        text=[key_name(s.key) if s.duration >= 8 else short_key_name(s.key) for s in spans],
        textposition="inside", insidetextanchor="middle", textangle=0, textfont={"size": 11, "color": "#223"},
        constraintext="inside",
        customdata=[[s.start, s.end, f"<b>{key_name(s.key)}</b> · {format_span(s.start, s.end)}<br>"
                     f"confidence {s.key.confidence:.2f} ({source})"] for s in spans],
        hovertemplate="%{customdata[2]}<extra></extra>",
    ))
    chords = merge_chords(analysis.chords)
    rows.append("chords")
    traces.append(_chord_row(chords, keys_at(chords, spans, analysis.key), len(rows) - 1, "chords", "local"))
    if show_model and analysis.normalized_chords:
        model = merge_chords(analysis.normalized_chords)
        reference = _reference_key(analysis)
        rows.append("model")
        traces.append(_chord_row(model, [reference] * len(model), len(rows) - 1, "model", "model"))
    boundaries = sorted({s.start for s in segments} | {s.end for s in segments})
    if boundaries:
        xs: list[float | None] = []
        ys: list[float | None] = []
        for boundary in boundaries:
            xs += [boundary, boundary, None]
            ys += [-0.5, len(rows) - 0.5, None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", name="boundaries", hoverinfo="skip",
                                 line={"color": "#666", "width": 1, "dash": "dot"}))
    figure = go.Figure(data=traces)
    for trace in figure.data:
        trace.meta = {"role": "timeline"}
    if window is None:
        window = (0.0, duration) if duration <= WHOLE_TRACK_SECONDS else (0.0, DEFAULT_WINDOW_SECONDS)
    shapes = []
    chosen = [s for s in segments if s.index == selected]
    if chosen:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": chosen[0].start, "x1": chosen[0].end,
                       "y0": 0, "y1": 1, "fillcolor": HIGHLIGHT_FILL, "line": {"width": 0}, "layer": "below"})
    base_layout(figure, title="Key and chords", height=height or 120 + 34 * len(rows) + 40,
                margin={"l": 58, "r": 12, "t": 34, "b": 20})
    figure.update_layout(
        shapes=shapes,
        barmode="overlay",
        bargap=0.1,
        dragmode="zoom",
        hovermode="closest",
        xaxis={"range": list(window), "autorange": False, "gridcolor": "#eee", "zeroline": False,
               "ticksuffix": " s", "tickfont": {"size": 10}, "showspikes": False,
               "rangeslider": {"visible": True, "range": [0, duration], "autorange": False, "thickness": 0.22,
                               "bgcolor": "#fafafa", "bordercolor": "#ccc", "borderwidth": 1}},
        yaxis={"tickvals": list(range(len(rows))), "ticktext": [ROW_NAMES[r] for r in rows],
               "range": [len(rows) - 0.5, -0.5], "autorange": False, "fixedrange": True,
               "showgrid": False, "zeroline": False, "tickfont": {**FONT, "size": 11}},
        meta={"view": "timeline", "duration": duration, "rows": rows, "key_source": source,
              "min_text_px": MIN_TEXT_PX},
    )
    return figure


def legend_html() -> str:
    """The colour key of the chord families, as HTML that wraps on a narrow screen."""
    items = "".join(
        f"<span class='m2e-swatch' style='background:{color}'></span>{family}&nbsp;&nbsp; "
        for family, color in CHORD_FAMILY_COLORS.items()
    )
    return f"<span class='m2e-legend'>{items}</span>"
