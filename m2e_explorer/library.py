"""A library's results file in the explorer: a table, filters, a playlist and the whole library's plane.

The input is what ``m2e analyze DIR --out results.jsonl`` writes (one JSON object per line, the
format of :mod:`m2e_core.library`), or its shard files ``results.jsonl.shard-I-of-N``, several at
once. A track analysed twice (a resumed run that retried a failure, or the same file in two shards)
is shown once, by the rule :func:`m2e_core.library.merge_results` uses: a result beats a failure,
then the smaller path. A last line cut short (a run that is still writing, or was killed) is left
out and said so; any other line that is not a result record refuses the file, naming the line.

Bounded work (a public Space reads whatever is uploaded): at most :data:`MAX_LIBRARY_BYTES` in
all the files together, checked before anything is read; at most :data:`MAX_LIBRARY_LINES` lines;
one line at most :data:`MAX_LINE_BYTES`. Reading, filtering, the playlist and the plane are linear in
the number of tracks: the plane draws one trace per quadrant, not one per track.

Columns of the table (:data:`COLUMNS`)
--------------------------------------
``track`` the path in the results (relative to the analysed folder); ``duration`` seconds;
``valence``, ``arousal`` (1-9, ``NaN`` without an emotion prediction); ``quadrant`` one of
:data:`QUADRANT_NAMES` (empty without valence/arousal); ``top tags`` the tags the analysis
selected, comma-separated; ``key`` e.g. ``A minor``; ``failure`` the one-line reason of a track
that could not be analysed (empty otherwise). :data:`DETAIL_COLUMNS` carry what filters and a
track's summary need besides: ``tags`` (the selected tags as a tuple), ``tag probabilities`` (the
most probable tags as ``(name, probability)`` pairs), ``chords`` (how many chord spans),
``warnings``, ``models``.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from m2e_core.constants import VA_MAX, VA_MIN
from m2e_core.errors import ConfigError
from m2e_core.library import STATUS_OK, TrackResult

from .views.plane import QUADRANTS

__all__ = [
    "COLUMNS",
    "DETAIL_COLUMNS",
    "MAX_LIBRARY_BYTES",
    "MAX_LIBRARY_LINES",
    "MAX_LINE_BYTES",
    "QUADRANT_NAMES",
    "Library",
    "filter_table",
    "library_plane",
    "quadrant_of",
    "read_library",
    "tag_choices",
    "to_m3u",
    "track_summary",
]

#: All the files of one upload together (a 3-minute track's line is about 25 kB, so 64 MB holds
#: well over 20,000 of them).
MAX_LIBRARY_BYTES = 64 * 1024 * 1024
#: Lines read from one upload (tracks, failures and repeats together).
MAX_LIBRARY_LINES = 20_000
#: One line (a 30-minute analysis is about 1 MB).
MAX_LINE_BYTES = 8_000_000
#: Tag probabilities kept per track for its summary.
SUMMARY_TAGS = 8

COLUMNS = ("track", "duration", "valence", "arousal", "quadrant", "top tags", "key", "failure")
DETAIL_COLUMNS = ("sha256", "tags", "tag probabilities", "chords", "warnings", "models")
#: Quadrant names, as the plane's captions say them.
QUADRANT_NAMES = tuple(text for _, _, text in QUADRANTS)
_MIDPOINT = (VA_MIN + VA_MAX) / 2
_QUADRANT_COLORS = {
    "excited / happy": "#f58518",
    "tense / angry": "#e45756",
    "sad / depressed": "#4c78a8",
    "calm / content": "#54a24b",
}


def quadrant_of(valence: float, arousal: float) -> str:
    """The quadrant a point lies in, split at the scale's midpoint 5 (5 itself counts as high).

    Examples
    --------
    >>> quadrant_of(7.0, 6.5), quadrant_of(3.0, 2.0)
    ('excited / happy', 'sad / depressed')
    """
    valence_side = "high" if valence >= _MIDPOINT else "low"
    arousal_side = "high" if arousal >= _MIDPOINT else "low"
    for v_side, a_side, text in QUADRANTS:
        if (v_side, a_side) == (valence_side, arousal_side):
            return text
    raise ConfigError(f"no quadrant for valence {valence}, arousal {arousal}")  # unreachable for numbers


@dataclass(frozen=True)
class Library:
    """A library read from one or more results files.

    ``table`` has :data:`COLUMNS` then :data:`DETAIL_COLUMNS`, one row per track, sorted by
    ``track``. ``lines`` counts the complete lines read, ``repeats`` those dropped as a second
    result of a track already shown, ``torn`` names the files whose last line was cut short.
    """

    table: pd.DataFrame
    files: tuple[str, ...]
    lines: int
    repeats: int
    torn: tuple[str, ...]

    @property
    def analysed(self) -> int:
        """Tracks with an analysis."""
        return int((self.table["failure"] == "").sum())

    @property
    def failed(self) -> int:
        """Tracks that could not be analysed."""
        return len(self.table) - self.analysed

    def describe(self) -> str:
        """One paragraph for the page: what was read, and what was left out."""
        text = (f"{len(self.table)} tracks ({self.analysed} analysed, {self.failed} failed) from "
                f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}, {self.lines} lines.")
        if self.repeats:
            text += f" {self.repeats} repeated result{'s' if self.repeats != 1 else ''} of the same track left out."
        if self.torn:
            text += (" Last line cut short (a run still writing, or interrupted), left out: "
                     + ", ".join(self.torn) + ".")
        return text


def _finite(value: Any, what: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {what} must be a number, got {value!r}")
    return float(value)


def _text(value: Any, what: str, where: str, limit: int = 4096) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ConfigError(f"{where}: {what} is longer than {limit} characters")
    return value


def _row(result: TrackResult, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One table row from a parsed line (``data``) and its record."""
    path = _text(result.path, "path", where)
    row: dict[str, Any] = {"track": path, "duration": math.nan, "valence": math.nan, "arousal": math.nan,
                           "quadrant": "", "top tags": "", "key": "", "failure": "",
                           "sha256": result.sha256 or "", "tag probabilities": (), "chords": 0,
                           "warnings": "", "models": "", "tags": ()}
    if result.status != STATUS_OK:
        row["failure"] = _text(result.error or "failed (no reason recorded)", "error", where).replace("\n", " ")
        return row
    duration = _finite(data.get("duration"), "duration", where)
    if duration is None or duration < 0:
        raise ConfigError(f"{where}: an analysed track needs a duration >= 0, got {data.get('duration')!r}")
    row["duration"] = duration
    key = data.get("key")
    if not isinstance(key, Mapping):
        raise ConfigError(f"{where}: an analysed track needs its key")
    row["key"] = f"{_text(key.get('tonic'), 'key tonic', where, 8)} {_text(key.get('mode'), 'key mode', where, 8)}"
    chords = data.get("chords")
    row["chords"] = len(chords) if isinstance(chords, list) else 0
    warnings = data.get("warnings") or []
    if not isinstance(warnings, list):
        raise ConfigError(f"{where}: warnings must be a list")
    row["warnings"] = " ".join(_text(item, "a warning", where) for item in warnings[:20])
    provenance = data.get("provenance") or []
    if isinstance(provenance, list):
        row["models"] = "; ".join(f"{item.get('role')}: {item.get('name')}" for item in provenance[:10]
                                  if isinstance(item, Mapping))
    track = data.get("track")
    if track is None:
        return row
    if not isinstance(track, Mapping):
        raise ConfigError(f"{where}: track must be an object")
    valence = _finite(track.get("valence"), "valence", where)
    arousal = _finite(track.get("arousal"), "arousal", where)
    if valence is not None and arousal is not None:
        row["valence"], row["arousal"] = valence, arousal
        row["quadrant"] = quadrant_of(valence, arousal)
    selected = track.get("selected_tags") or []
    if not isinstance(selected, list):
        raise ConfigError(f"{where}: selected_tags must be a list")
    tags = tuple(_text(tag, "a tag", where, 64) for tag in selected[:100])
    row["tags"] = tags
    row["top tags"] = ", ".join(tags)
    probabilities = track.get("tags") or {}
    if not isinstance(probabilities, Mapping):
        raise ConfigError(f"{where}: tags must be an object of probabilities")
    ranked = sorted(((str(name), _finite(prob, f"tag {name!r}", where) or 0.0)
                     for name, prob in list(probabilities.items())[:100]), key=lambda item: -item[1])
    row["tag probabilities"] = tuple(ranked[:SUMMARY_TAGS])
    return row


def _better(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether ``candidate`` replaces ``current`` for the same track (as merging decides, later wins ties)."""
    if (candidate["failure"] == "") != (current["failure"] == ""):
        return candidate["failure"] == ""
    return candidate["track"] <= current["track"]


def _file_name(path: str | os.PathLike[str]) -> str:
    return Path(path).name


def read_library(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_bytes: int = MAX_LIBRARY_BYTES,
    max_lines: int = MAX_LIBRARY_LINES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Library:
    """Read results files (and shard files) into one table, one row per track.

    Parameters
    ----------
    paths : iterable of str or Path
        ``results.jsonl`` files written by ``m2e analyze DIR --out`` or ``m2e merge``, or their
        ``.shard-I-of-N`` files.
    max_bytes, max_lines, max_line_bytes : int
        Caps on the files together, their lines together, and one line.

    Returns
    -------
    Library

    Raises
    ------
    ConfigError
        No file, a file over a cap, or a complete line that is not a result record (the message
        names the file and the line).

    Examples
    --------
    >>> library = read_library(["results.jsonl"])  # doctest: +SKIP
    >>> library.table[["track", "quadrant", "top tags"]].head()  # doctest: +SKIP
    """
    files = [Path(path) for path in paths]
    if not files:
        raise ConfigError("no results file: upload the results.jsonl written by m2e analyze DIR --out results.jsonl")
    total = 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError as error:
            raise ConfigError(f"cannot read {path.name}: {error.strerror or error}") from error
    if total > max_bytes:
        raise ConfigError(f"the results files hold {total / 1e6:.1f} MB; at most {max_bytes / 1e6:.0f} MB are read "
                          "here: open a part of the library (e.g. one shard file) or run the explorer locally")
    rows: dict[str, dict[str, Any]] = {}
    lines = repeats = 0
    torn: list[str] = []
    for path in files:
        name = _file_name(path)
        with path.open("rb") as handle:
            number = 0
            while True:
                raw = handle.readline(max_line_bytes + 1)
                if not raw:
                    break
                number += 1
                where = f"{name} line {number}"
                if len(raw) > max_line_bytes:
                    raise ConfigError(f"{where} is longer than {max_line_bytes / 1e6:.0f} MB, which no result is")
                if not raw.endswith(b"\n"):
                    if raw.strip():
                        torn.append(name)
                    break
                if not raw.strip():
                    continue
                lines += 1
                if lines > max_lines:
                    raise ConfigError(f"more than {max_lines:,} lines; at most {max_lines:,} are read here: open a "
                                      "part of the library (e.g. one shard file) or run the explorer locally")
                try:
                    data = json.loads(raw)
                    result = TrackResult.from_dict(data, analysis=False)
                except (ValueError, UnicodeDecodeError) as error:
                    raise ConfigError(f"{where} is not a result record of m2e analyze --out ({error}); "
                                      "fix or delete that line") from error
                row = _row(result, data, where)
                identity = result.key
                if identity in rows:
                    repeats += 1
                    if not _better(row, rows[identity]):
                        continue
                rows[identity] = row
    table = pd.DataFrame(list(rows.values()), columns=[*COLUMNS, *DETAIL_COLUMNS])
    table = table.sort_values("track", kind="stable").reset_index(drop=True)
    return Library(table, tuple(_file_name(path) for path in files), lines, repeats, tuple(torn))


def tag_choices(table: pd.DataFrame) -> list[str]:
    """Tags selected for at least one track, most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for tags in table["tags"]:
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts, key=lambda tag: (-counts[tag], tag))


def filter_table(table: pd.DataFrame, *, tag: str | None = None, quadrant: str | None = None) -> pd.DataFrame:
    """The tracks that have ``tag`` among their selected tags and lie in ``quadrant`` (``None``: any).

    Raises
    ------
    ConfigError
        ``quadrant`` is not one of :data:`QUADRANT_NAMES`.
    """
    keep = pd.Series(True, index=table.index)
    if quadrant:
        if quadrant not in QUADRANT_NAMES:
            raise ConfigError(f"unknown quadrant {quadrant!r}; one of: {', '.join(QUADRANT_NAMES)}")
        keep &= table["quadrant"] == quadrant
    if tag:
        keep &= table["tags"].map(lambda tags: tag in tags)
    return table[keep]


def _playlist_path(track: str, base: str) -> str:
    """Where the playlist points for ``track``: relative to ``base``; an absolute path keeps only its name."""
    if PurePosixPath(track).is_absolute() or PureWindowsPath(track).is_absolute():
        track = PureWindowsPath(track).name if "\\" in track else PurePosixPath(track).name
    return posixpath.join(base, track) if base else track


def to_m3u(rows: pd.DataFrame, base: str = "") -> str:
    """An extended M3U playlist of ``rows`` (in their order).

    Parameters
    ----------
    rows : DataFrame
        Rows of :attr:`Library.table` (e.g. :func:`filter_table`'s selection).
    base : str
        Put before every path, e.g. ``"Music"`` when the playlist is saved beside the analysed
        folder ``Music/``; empty: paths relative to the analysed folder itself.

    Returns
    -------
    str
        ``#EXTM3U``, then ``#EXTINF:<seconds>,<name>`` and the path for each track; seconds are
        rounded, ``-1`` when unknown (a failed track). Paths are those of the results (relative to
        the analysed folder); a track named by an absolute path keeps only its file name. A path with
        a line break cannot be written in M3U and is left out.

    Raises
    ------
    ConfigError
        ``base`` has a line break.

    Examples
    --------
    >>> rows = pd.DataFrame({"track": ["a/one.mp3"], "duration": [181.6]})
    >>> print(to_m3u(rows, "Music"), end="")
    #EXTM3U
    #EXTINF:182,one
    Music/a/one.mp3
    """
    if "\n" in base or "\r" in base:
        raise ConfigError("the playlist base must be one line")
    base = base.strip().replace("\\", "/")
    lines = ["#EXTM3U"]
    for track, duration in zip(rows["track"], rows["duration"], strict=True):
        if "\n" in track or "\r" in track:
            continue
        seconds = int(round(duration)) if isinstance(duration, float) and math.isfinite(duration) else -1
        name = PurePosixPath(track.replace("\\", "/")).stem or track
        lines.append(f"#EXTINF:{seconds},{name}")
        lines.append(_playlist_path(track, base))
    return "\n".join(lines) + "\n"


def _axis_range(values: Sequence[float]) -> list[float]:
    """1-9, widened (by 0.3) to show points outside it: nothing is clipped."""
    low = min([VA_MIN, *values])
    high = max([VA_MAX, *values])
    return [low - 0.3 if low < VA_MIN else low, high + 0.3 if high > VA_MAX else high]


def library_plane(table: pd.DataFrame, *, height: int = 560) -> go.Figure:
    """Every track with valence/arousal as one point on the plane, coloured by quadrant.

    One ``Scattergl`` trace per quadrant (the cost is linear in the tracks and the browser draws
    thousands of points smoothly); hovering a point names the track, its key and tags. The axes
    are square, 1-9 (wider when a point lies outside), split at 5. Tracks without valence/arousal
    are counted in the title.
    """
    with_va = table[table["quadrant"] != ""]
    valences = with_va["valence"].tolist()
    arousals = with_va["arousal"].tolist()
    x_range, y_range = _axis_range(valences), _axis_range(arousals)
    figure = go.Figure()
    for name in QUADRANT_NAMES:
        group = with_va[with_va["quadrant"] == name]
        if group.empty:
            continue
        figure.add_trace(go.Scattergl(
            x=group["valence"].tolist(),
            y=group["arousal"].tolist(),
            mode="markers",
            name=f"{name} ({len(group)})",
            text=group["track"].tolist(),
            customdata=list(zip(group["key"], group["top tags"].replace("", "none"), strict=True)),
            marker={"size": 7, "color": _QUADRANT_COLORS[name], "opacity": 0.75,
                    "line": {"color": "white", "width": 0.5}},
            hovertemplate=("<b>%{text}</b><br>valence %{x:.2f}, arousal %{y:.2f}<br>key %{customdata[0]}"
                           "<br>tags: %{customdata[1]}<extra></extra>"),
        ))
    missing = len(table) - len(with_va)
    title = f"{len(with_va)} tracks on the valence-arousal plane"
    if missing:
        title += f" ({missing} without valence/arousal)"
    midline = {"color": "#aaa", "width": 1, "dash": "dot"}
    figure.update_layout(
        title={"text": title, "x": 0.0},
        height=height,
        plot_bgcolor="white",
        paper_bgcolor="white",
        font={"family": "Inter, Helvetica, Arial, sans-serif", "size": 12},
        xaxis={"title": {"text": "valence (negative → positive)"}, "range": x_range, "gridcolor": "#eee",
               "constrain": "domain"},
        yaxis={"title": {"text": "arousal (calm → energetic)"}, "range": y_range, "gridcolor": "#eee",
               "scaleanchor": "x", "scaleratio": 1, "constrain": "domain"},
        shapes=[
            {"type": "line", "xref": "x", "yref": "y", "x0": x_range[0], "x1": x_range[1], "y0": _MIDPOINT,
             "y1": _MIDPOINT, "line": midline, "layer": "below"},
            {"type": "line", "xref": "x", "yref": "y", "x0": _MIDPOINT, "x1": _MIDPOINT, "y0": y_range[0],
             "y1": y_range[1], "line": midline, "layer": "below"},
        ],
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0.0},
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
    )
    return figure


def _fmt_time(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def track_summary(row: Mapping[str, Any]) -> str:
    """Markdown about one track of the table: its result, or why it has none."""
    lines = [f"### {row['track']}"]
    if row["failure"]:
        lines.append(f"**Not analysed:** {row['failure']}")
        return "\n\n".join(lines)
    lines.append(f"**Duration:** {_fmt_time(row['duration'])}  \n**Key:** {row['key']}")
    if row["quadrant"]:
        lines.append(f"**Valence** {row['valence']:.2f}, **arousal** {row['arousal']:.2f} (1-9): "
                     f"{row['quadrant']}")
    else:
        lines.append("**Emotion:** not predicted for this track (analysed without the emotion model)")
    if row["top tags"]:
        lines.append(f"**Tags:** {row['top tags']}")
    if row["tag probabilities"]:
        lines.append("**Most probable tags:** " + ", ".join(f"{name} {prob:.2f}" for name, prob in
                                                            row["tag probabilities"]))
    lines.append(f"**Chords:** {row['chords']} spans")
    if row["warnings"]:
        lines.append(f"**Warnings:** {row['warnings']}")
    if row["models"]:
        lines.append(f"<sub>Models: {row['models']}</sub>")
    return "\n\n".join(lines)
