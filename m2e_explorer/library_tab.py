"""The Library tab: open a library's ``results.jsonl``, see it on the plane, filter it, export a playlist.

Self-contained: :func:`build` lays out the tab inside the app's ``gr.Tabs()`` and wires its own
handlers (:class:`LibraryHandlers`, callable without a browser). The library a session opened is
kept in that session's ``gr.State``; the playlist is written to a private request directory of
the app (``ctx.request_dir()``). Its events are UI-only (``api_visibility="private"``): they are
neither API endpoints nor MCP tools.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
import pandas as pd

from m2e_core.errors import ConfigError, M2EError

from .library import (
    COLUMNS,
    QUADRANT_NAMES,
    Library,
    filter_table,
    library_plane,
    read_library,
    tag_choices,
    to_m3u,
    track_summary,
)

__all__ = ["MAX_SHOWN_ROWS", "LibraryHandlers", "LibraryTab", "LibraryView", "build"]

#: Rows sent to the page at once (the plane shows the whole selection; filters narrow the table).
MAX_SHOWN_ROWS = 2_000
#: Dropdown value meaning "no filter".
ANY = ""
_INTRO = ("Open the `results.jsonl` that `m2e analyze DIR --out results.jsonl` writes (or its shard files "
          "`results.jsonl.shard-I-of-N`, several at once): every track on the valence-arousal plane, "
          "filters by tag and quadrant, and the selection as an M3U playlist.")


class RequestDirs(Protocol):
    """What the tab needs from the app: a new private directory per request."""

    def request_dir(self) -> Path: ...


@dataclass(frozen=True)
class LibraryView:
    """What the tab shows of a selection: the plane, the table's rows, and a line about them."""

    plane: Any
    rows: pd.DataFrame
    caption: str


def _shown(rows: pd.DataFrame) -> pd.DataFrame:
    """The table as the page shows it: its columns, numbers rounded, at most :data:`MAX_SHOWN_ROWS` rows."""
    shown = rows.loc[:, list(COLUMNS)].head(MAX_SHOWN_ROWS).copy()
    for column, digits in (("duration", 1), ("valence", 2), ("arousal", 2)):
        shown[column] = shown[column].round(digits)
    return shown.reset_index(drop=True)


class LibraryHandlers:
    """The tab's actions on a session's :attr:`Library.table` (``None`` before one is opened)."""

    def __init__(self, ctx: RequestDirs) -> None:
        self.ctx = ctx

    @staticmethod
    def _require(table: pd.DataFrame | None) -> pd.DataFrame:
        if table is None:
            raise ConfigError("open a results.jsonl first")
        return table

    @staticmethod
    def selection(table: pd.DataFrame | None, tag: str | None, quadrant: str | None) -> pd.DataFrame:
        """The rows of the library that pass the filters (``""``/``None``: any)."""
        return filter_table(LibraryHandlers._require(table), tag=tag or None, quadrant=quadrant or None)

    def view(self, table: pd.DataFrame | None, tag: str | None, quadrant: str | None) -> LibraryView:
        """The plane and the table of the selection."""
        library = self._require(table)
        rows = self.selection(library, tag, quadrant)
        caption = f"{len(rows)} of {len(library)} tracks"
        filters = [f"tag **{tag}**" if tag else "", f"quadrant **{quadrant}**" if quadrant else ""]
        if any(filters):
            caption += " with " + " in ".join(item for item in filters if item)
        if len(rows) > MAX_SHOWN_ROWS:
            caption += f"; the table lists the first {MAX_SHOWN_ROWS:,} (filter to see others)"
        return LibraryView(library_plane(rows), _shown(rows), caption + ".")

    def open(self, files: Sequence[str] | str | None) -> tuple[Library, LibraryView]:
        """Read the uploaded results files."""
        paths = [files] if isinstance(files, str) else list(files or [])
        library = read_library(paths)
        return library, self.view(library.table, None, None)

    def summary(self, table: pd.DataFrame | None, track: str) -> str:
        """Markdown about one track of the library, named by its ``track`` path."""
        library = self._require(table)
        rows = library[library["track"] == track]
        if rows.empty:
            raise ConfigError(f"{track!r} is not in this library")
        return track_summary(rows.iloc[0])

    def export(self, table: pd.DataFrame | None, tag: str | None, quadrant: str | None, base: str) -> str:
        """Write the selection as ``m2e-library.m3u`` in a private directory and return its path."""
        rows = self.selection(table, tag, quadrant)
        if rows.empty:
            raise ConfigError("the selection is empty: nothing to put in a playlist")
        path = self.ctx.request_dir() / "m2e-library.m3u"
        path.write_text(to_m3u(rows, base or ""), encoding="utf-8")
        return str(path)


@dataclass(frozen=True)
class LibraryTab:
    """The tab's components, for tests and for an app that wires more to them."""

    handlers: LibraryHandlers
    files: Any
    status: Any
    tag: Any
    quadrant: Any
    plane: Any
    table: Any
    summary: Any
    base: Any
    export_button: Any
    playlist: Any
    state: Any


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """m2e errors shown to the user as one readable line, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M2EError as error:
            raise gr.Error(" ".join(str(error).split()), title="Cannot open that", print_exception=False) from error

    return wrapper


def build(ctx: RequestDirs) -> LibraryTab:
    """Lay out the Library tab and wire its handlers; call inside the app's ``gr.Tabs()``.

    ``ctx`` gives a private directory per request (``ctx.request_dir()``), where the playlist goes.
    """
    handlers = LibraryHandlers(ctx)
    quadrant_choices = [("any quadrant", ANY), *((name, name) for name in QUADRANT_NAMES)]
    with gr.Tab("Library", id="library"):
        gr.Markdown(_INTRO)
        files = gr.File(file_count="multiple", label="results.jsonl (or its shard files)", elem_id="m2e-library-files")
        status = gr.Markdown(elem_id="m2e-library-status")
        with gr.Row():
            tag = gr.Dropdown(choices=[("any tag", ANY)], value=ANY, label="Tag", elem_id="m2e-library-tag")
            quadrant = gr.Dropdown(choices=quadrant_choices, value=ANY, label="Quadrant",
                                   elem_id="m2e-library-quadrant")
        plane = gr.Plot(label="The library on the valence-arousal plane", elem_id="m2e-library-plane")
        table = gr.Dataframe(label="Tracks (select a row for its summary)", interactive=False, wrap=True,
                             elem_id="m2e-library-table")
        summary = gr.Markdown(elem_id="m2e-library-summary")
        with gr.Row():
            base = gr.Textbox(label="Playlist paths start with (e.g. Music, where the analysed folder sits "
                                    "beside the playlist; empty: the playlist goes inside that folder)",
                              max_lines=1, scale=3)
            export_button = gr.Button("Export M3U", scale=1)
        playlist = gr.File(label="Playlist of the selection", interactive=False, height=90)
        state = gr.State(None)

    @_user_errors
    def on_open(paths):
        library, view = handlers.open(paths)
        choices = [("any tag", ANY), *((name, name) for name in tag_choices(library.table))]
        return (library.table, library.describe() + " " + view.caption, gr.update(choices=choices, value=ANY),
                gr.update(value=ANY), view.plane, view.rows, "")

    @_user_errors
    def on_filter(library_table, tag_value, quadrant_value):
        view = handlers.view(library_table, tag_value, quadrant_value)
        return view.caption, view.plane, view.rows, ""

    @_user_errors
    def on_select(library_table, shown_rows, event: gr.SelectData):
        # The selected row's own values name the track, wherever sorting in the page has moved it.
        if event.row_value:
            return handlers.summary(library_table, str(event.row_value[0]))
        return handlers.summary(library_table, str(shown_rows.iloc[int(event.index[0])]["track"]))

    @_user_errors
    def on_export(library_table, tag_value, quadrant_value, base_value):
        return handlers.export(library_table, tag_value, quadrant_value, base_value)

    files.upload(on_open, [files], [state, status, tag, quadrant, plane, table, summary],
                 api_visibility="private")
    gr.on([tag.input, quadrant.input], on_filter, [state, tag, quadrant], [status, plane, table, summary],
          api_visibility="private")
    table.select(on_select, [state, table], summary, api_visibility="private")
    export_button.click(on_export, [state, tag, quadrant, base], playlist, api_visibility="private")
    return LibraryTab(handlers, files, status, tag, quadrant, plane, table, summary, base, export_button,
                      playlist, state)
