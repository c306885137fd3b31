"""m2e explorer: the Gradio app over :class:`m2e_core.pipeline.Analyzer` (the Space runs this file).

Upload a track and follow its key and chords over time, its valence and arousal segment by
segment, and its mood/theme tags, with a playhead synced to playback; label segments and
export the labels as a training manifest; analyse many files at once; re-open an analysis
JSON written by ``m2e analyze``.

This file is the entry point only: the explorer lives in :mod:`m2e_explorer` (views in
``m2e_explorer/views``, handlers in ``m2e_explorer/handlers``, the page in
``m2e_explorer/page.py``).

Environment
-----------
M2E_ENCODER, M2E_CHECKPOINT   MERT directory / Hub id and emotion heads (default: the cache)
M2E_DEVICE, M2E_FAST          ``cpu``/``cuda``; ``1`` for the bf16 encoder
M2E_OFFLINE                   ``1``: never download weights
M2E_LABELS_DB, M2E_LABELS_DIR, M2E_LABEL_ADMINS, M2E_LABELS_TEAM   the label store and who reads it
M2E_MAX_MINUTES, M2E_MAX_UPLOAD, M2E_CONCURRENCY   track length, upload size, parallel jobs
PORT / GRADIO_SERVER_PORT     port; SPACE_ID or M2E_HOST binds 0.0.0.0 (else 127.0.0.1)
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from m2e_core.labelstore import LabelStore
from m2e_core.runtime import use_huge_pages
from m2e_core.weights import DOWNLOAD_COMMAND
from m2e_explorer import hosting, library_tab, page
from m2e_explorer.explorer import ExplorerApp
from m2e_explorer.files import remove_on_signals
from m2e_explorer.models import AnalyzerFactory, default_analyzer_factory
from m2e_explorer.page import example_files, style
from m2e_explorer.session import TRACK, ViewOptions
from m2e_explorer.settings import Settings, server_settings

__all__ = ["DOWNLOAD_COMMAND", "TRACK", "ExplorerApp", "Settings", "ViewOptions", "build_demo",
           "default_analyzer_factory", "example_files", "main", "server_settings", "style"]


def _extra_tabs(explorer: ExplorerApp) -> None:
    """Tabs after Analyze and Batch."""
    library_tab.build(explorer)


def build_demo(
    analyzer_factory: AnalyzerFactory = default_analyzer_factory,
    *,
    label_store: LabelStore | None = None,
    temp_root: str | Path | None = None,
    settings: Settings | None = None,
) -> gr.Blocks:
    """Build the Gradio app.

    Parameters
    ----------
    analyzer_factory : callable
        ``factory(emotion=bool) -> Analyzer``, called once on first use and shared by all
        sessions. Tests pass one that builds tiny models.
    label_store, temp_root, settings
        See :class:`~m2e_explorer.explorer.ExplorerApp`.

    Returns
    -------
    gradio.Blocks
        Queued; events have stable ``api_name`` values (see :mod:`m2e_explorer.page`).
    """
    explorer = ExplorerApp(analyzer_factory, label_store=label_store, temp_root=temp_root, settings=settings)
    demo = page.build(explorer, extra_tabs=_extra_tabs)
    with demo:  # the typed /analyze_track API, also the MCP tool
        hosting.register(demo, explorer.shared.get, emotion_missing=lambda: explorer.shared.missing)
    return demo


def main() -> None:
    """Build and launch the app with settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_huge_pages()  # before the first analysis imports torch
    launch = server_settings()  # refuses a bad setting before anything loads
    remove_on_signals()  # the temporary files go with the process, on SIGTERM and Ctrl-C too
    demo = build_demo()
    hosting.fetch_weights_in_background()
    demo.launch(**launch, **hosting.launch_kwargs(), **style())


if __name__ == "__main__":
    main()
