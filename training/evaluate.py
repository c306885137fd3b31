"""Metrics, per-tag thresholds and the report table.

- Tags: macro PR-AUC (average precision) and macro ROC-AUC over the tags that have both
  positives and negatives in the evaluated split (a tag without positives has no defined AUC;
  how many tags were scored is reported as ``tags_scored``). Macro F1 at the tuned thresholds.
- Valence/arousal: R2 (coefficient of determination) and RMSE per dimension, per dataset.
- Thresholds: per tag, the probability cut that maximises F1 on the validation split; a tag
  without validation positives keeps 0.5 and is listed in ``untuned_tags``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2e_core.errors import ConfigError
from m2e_core.files import atomic_path

from .cache import write_json_atomic

#: Threshold kept for tags without validation positives.
DEFAULT_THRESHOLD = 0.5

#: Published figures (test split): the student on all four datasets and single-dataset training.
PAPER_STUDENT = {
    "jamendo": {"pr_auc": 0.1543, "roc_auc": 0.7810},
    "deam": {"r2_valence": 0.518, "r2_arousal": 0.623},
    "emomusic": {"r2_valence": 0.651, "r2_arousal": 0.762},
    "pmemo": {"r2_valence": 0.547, "r2_arousal": 0.794},
}
PAPER_SINGLE_DATASET = {
    "jamendo": {"pr_auc": 0.1521, "roc_auc": 0.7806},
    "deam": {"r2_valence": 0.5131, "r2_arousal": 0.6025},
    "emomusic": {"r2_valence": 0.5957, "r2_arousal": 0.7489},
    "pmemo": {"r2_valence": 0.5360, "r2_arousal": 0.7772},
}


def tag_metrics(probabilities: np.ndarray, targets: np.ndarray,
                thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Macro PR-AUC / ROC-AUC (and macro F1 at ``thresholds``) of ``(N, tags)`` arrays."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probabilities.shape != targets.shape or probabilities.ndim != 2:
        raise ConfigError(f"probabilities {probabilities.shape} and targets {targets.shape} must be equal (N, tags)")
    positives = targets.sum(axis=0)
    scored = np.flatnonzero((positives > 0) & (positives < len(targets)))
    result: dict[str, Any] = {"n": int(len(targets)), "tags_scored": int(len(scored))}
    if len(scored) == 0:
        result.update(pr_auc=None, roc_auc=None)
    else:
        result["pr_auc"] = float(average_precision_score(targets[:, scored], probabilities[:, scored], average="macro"))
        result["roc_auc"] = float(roc_auc_score(targets[:, scored], probabilities[:, scored], average="macro"))
    if thresholds is not None and len(scored):
        decisions = probabilities >= np.asarray(thresholds)[None, :]
        result["f1_macro"] = float(f1_score(targets[:, scored], decisions[:, scored], average="macro",
                                            zero_division=0))
    return result


def va_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """R2 and RMSE for valence and arousal of ``(N, 2)`` arrays."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if predictions.shape != targets.shape or predictions.ndim != 2 or predictions.shape[1] != 2:
        raise ConfigError(f"predictions {predictions.shape} and targets {targets.shape} must both be (N, 2)")
    result: dict[str, Any] = {"n": int(len(targets))}
    for column, name in enumerate(("valence", "arousal")):
        error = predictions[:, column] - targets[:, column]
        total = float(np.sum((targets[:, column] - targets[:, column].mean()) ** 2))
        result[f"r2_{name}"] = None if total == 0 or len(targets) < 2 else 1.0 - float(np.sum(error**2)) / total
        result[f"rmse_{name}"] = float(np.sqrt(np.mean(error**2))) if len(targets) else None
    return result


@dataclass(frozen=True)
class Thresholds:
    """Per-tag thresholds and the tags that had no validation positives."""

    values: tuple[float, ...]
    untuned: tuple[int, ...]


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> Thresholds:
    """Per tag, the threshold maximising F1 on ``(N, tags)`` validation arrays."""
    from sklearn.metrics import precision_recall_curve

    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probabilities.shape != targets.shape or probabilities.ndim != 2:
        raise ConfigError(f"probabilities {probabilities.shape} and targets {targets.shape} must be equal (N, tags)")
    values: list[float] = []
    untuned: list[int] = []
    for tag in range(targets.shape[1]):
        if targets[:, tag].sum() == 0:
            values.append(DEFAULT_THRESHOLD)
            untuned.append(tag)
            continue
        precision, recall, cuts = precision_recall_curve(targets[:, tag], probabilities[:, tag])
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        best = int(np.argmax(f1[:-1])) if len(cuts) else 0
        values.append(float(np.clip(cuts[best], 0.0, 1.0)) if len(cuts) else DEFAULT_THRESHOLD)
    return Thresholds(tuple(values), tuple(untuned))


# -- report ---------------------------------------------------------------------------------

REPORT_COLUMNS = ("model", "dataset", "kind", "task", "split", "n", "pr_auc", "roc_auc", "f1_macro", "tags_scored",
                  "r2_valence", "r2_arousal", "rmse_valence", "rmse_arousal", "paper_pr_auc", "paper_roc_auc",
                  "paper_r2_valence", "paper_r2_arousal")


def paper_figures(kind: str, *, student: bool) -> dict[str, float]:
    """The published figures for a dataset kind (empty for other kinds)."""
    table = PAPER_STUDENT if student else PAPER_SINGLE_DATASET
    return {f"paper_{key}": value for key, value in table.get(kind, {}).items()}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of report rows (only the columns some row has)."""
    columns = [name for name in REPORT_COLUMNS if any(row.get(name) is not None for row in rows)]
    cells = [[_cell(row.get(name)) for name in columns] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(columns, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells)
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], directory: str | Path, *, stem: str = "report") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.json`` (atomically) and return their paths."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(REPORT_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if row.get(name) is None else row.get(name) for name in REPORT_COLUMNS})
    csv_path = target / f"{stem}.csv"
    json_path = target / f"{stem}.json"
    with atomic_path(csv_path, ".tmp") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    write_json_atomic(json_path, {"rows": [dict(row) for row in rows]})
    return csv_path, json_path


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into plain Python (for checkpoint JSON)."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["DEFAULT_THRESHOLD", "PAPER_SINGLE_DATASET", "PAPER_STUDENT", "Thresholds", "format_table",
           "json_ready", "paper_figures", "tag_metrics", "tune_thresholds", "va_metrics",
           "write_report"]
