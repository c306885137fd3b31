"""Handlers of the Batch tab: analyse several files, one table row per file, open a row.

The batch yields its table after every file (progress: ``file 2 of 3 (name): embedding segment
1 of 4``); the CSV cells are spreadsheet-safe; the JSON is the CLI's batch format, which the
Analyze tab opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from m2e_core.errors import AudioDecodeError, ConfigError, M2EError
from m2e_core.files import spreadsheet_safe
from m2e_core.types import Analysis

from ..caps import MAX_BATCH_FILES
from ..errors import one_line
from ..session import Loaded, Page, ViewOptions
from ..views.chordnames import key_name
from ..views.common import empty_figure, format_time, segment_spans
from ..views.plane import batch_va_plane
from .analysis import StageReport, open_loaded

if TYPE_CHECKING:
    from ..explorer import ExplorerApp

COLUMNS = ["file", "duration", "key", "key confidence", "valence", "arousal", "top tags", "error"]


@dataclass(frozen=True)
class BatchResult:
    """The Batch tab after some (or all) files: the table, its files, the plane, a status line."""

    table: pd.DataFrame
    csv_path: str | None
    json_path: str | None
    plane: Any
    status: str
    done: bool
    analyses: tuple[tuple[Analysis, str], ...] = field(default=())  # (analysis, audio path) per analysed file

    def choices(self) -> list[tuple[str, int]]:
        """The analysed files, as ``(label, number)`` for a selector."""
        return [(f"{number + 1}. {analysis.source}", number) for number, (analysis, _) in enumerate(self.analyses)]


def _row(analysis: Analysis) -> dict[str, Any]:
    emotion = analysis.track.emotion if analysis.track is not None else None
    return {
        "file": analysis.source,
        "duration": format_time(analysis.duration),
        "key": key_name(analysis.key),
        "key confidence": round(analysis.key.confidence, 3),
        "valence": None if emotion is None or emotion.valence is None else round(emotion.valence, 3),
        "arousal": None if emotion is None or emotion.arousal is None else round(emotion.arousal, 3),
        "top tags": ", ".join(analysis.track.selected_tags) if analysis.track is not None else "",
        "error": "",
    }


def batch(ctx: ExplorerApp, files: Sequence[str] | None, progress: Any = None) -> Iterator[BatchResult]:
    """Analyse ``files`` one after another, yielding the result after each file."""
    paths = [str(f) for f in (files or [])]
    if not paths:
        raise AudioDecodeError("no files: add one or more audio files")
    if len(paths) > MAX_BATCH_FILES:
        raise ConfigError(f"{len(paths)} files, more than the {MAX_BATCH_FILES} one batch analyses: split them")
    report = StageReport(progress)
    if ctx.shared.loaded is None:
        report(0.0, "loading the models (the first analysis only)")
    analyzer = ctx.shared.get()
    analysed: list[tuple[Analysis, str]] = []
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    total = len(paths)
    for number, path in enumerate(paths):
        name = Path(path).name
        step = StageReport(progress, prefix=f"file {number + 1} of {total} ({name}): ", low=number / total,
                           high=(number + 1) / total)
        step(0.0, "starting")
        try:
            analysis = analyzer.analyze(path, progress=step.pipeline)
        except M2EError as error:
            # The message names the file already when it comes from the decoder; say it once.
            message = one_line(str(error))
            if message.startswith(name + ":"):
                message = message[len(name) + 1:].strip()
            failed.append({"source": name, "error": message})
            rows.append({**dict.fromkeys(COLUMNS, ""), "file": name, "key confidence": None, "valence": None,
                         "arousal": None, "error": message})
        else:
            analysed.append((analysis, path))
            rows.append(_row(analysis))
        done = number + 1 == total
        yield _result(ctx, rows, analysed, failed, total, done=done, emotion=analyzer.emotion_enabled)
    report(1.0, "done")


def _result(ctx: ExplorerApp, rows: list[dict[str, Any]], analysed: list[tuple[Analysis, str]],
            failed: list[dict[str, str]], total: int, *, done: bool, emotion: bool) -> BatchResult:
    table = pd.DataFrame(rows, columns=COLUMNS)
    status = f"{len(analysed)} of {total} files analysed" + ("." if done else f"; {total - len(rows)} to go …")
    if failed:
        status += " Failed: " + "; ".join(f"{f['source']} ({f['error']})" for f in failed)
    csv_path = json_path = None
    if done:
        out_dir = ctx.files.request_dir()
        csv_file = out_dir / "m2e-batch.csv"
        table.map(spreadsheet_safe).to_csv(csv_file, index=False)
        json_file = out_dir / "m2e-batch.json"
        payload = {"tracks": [a.to_dict() for a, _ in analysed], "failed": failed}
        json_file.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        csv_path, json_path = str(csv_file), str(json_file)
    if emotion:
        plane = batch_va_plane([a for a, _ in analysed])
    else:
        plane = empty_figure("No valence/arousal: the emotion model is not loaded")
        status += "\n\n" + ctx.models_md()
    return BatchResult(table, csv_path, json_path, plane, status, done, tuple(analysed))


def open_row(ctx: ExplorerApp, result: BatchResult | None, row: Any, options: ViewOptions) -> Page:
    """The Analyze tab's page for the ``row``-th analysed file of a batch."""
    if result is None or not result.analyses:
        raise ConfigError("run a batch first, then choose one of its files")
    try:
        number = int(row)
    except (TypeError, ValueError) as error:
        raise ConfigError("choose one of the analysed files") from error
    if not 0 <= number < len(result.analyses):
        raise ConfigError("choose one of the analysed files")
    analysis, path = result.analyses[number]
    audio = path if Path(path).is_file() else None
    loaded = Loaded(analysis, audio, segment_spans(analysis))
    return open_loaded(ctx, loaded, options, f"Opened {analysis.source} from the batch.")
