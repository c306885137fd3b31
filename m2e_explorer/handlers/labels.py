"""Handlers of the labelling panel: save a label for the selection, export one's labels.

Every call names its requester (:class:`~m2e_core.labels.Identity`: the signed-in Hugging Face
account on a Space, else the typed annotator name); the label store decides what they may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2e_core.errors import ConfigError, LabelError
from m2e_core.files import file_sha256
from m2e_core.labels import Identity, make_label
from m2e_core.labelstore import EXPORT_FORMATS

from ..session import Loaded
from .analysis import selection_index

if TYPE_CHECKING:
    from ..explorer import ExplorerApp


def save_label(ctx: ExplorerApp, loaded: Loaded | None, selection: Any, include_va: bool, valence: float,
               arousal: float, tags: Sequence[str] | None, requester: Identity) -> str:
    """Save a label for the selected segment (or the whole track); a line saying what was saved."""
    if loaded is None:
        raise LabelError("analyse a track or open an analysis before labelling")
    if loaded.audio_path is None:
        raise LabelError("this analysis was opened without its audio: attach the audio file to label it")
    if not Path(loaded.audio_path).is_file():
        raise LabelError("the uploaded audio has expired from the server: analyse the track again")
    span = loaded.span(selection_index(selection))
    record = ctx.labels.append(make_label(
        track_id=file_sha256(loaded.audio_path),
        source=loaded.analysis.source,
        segment=None if span is None else span.index,
        start=None if span is None else span.start,
        end=None if span is None else span.end,
        valence=float(valence) if include_va else None,
        arousal=float(arousal) if include_va else None,
        tags=list(tags or ()),
        annotator=requester.name,
    ), requester=requester, audio=loaded.audio_path)
    what = "whole track" if record.segment is None else f"segment {record.segment + 1}"
    va = f"V {record.valence:.1f} / A {record.arousal:.1f}" if record.valence is not None else "no V/A"
    return (f"Saved label for {what} of {record.source} by {record.annotator}: {va}; "
            f"tags: {', '.join(record.tags) or 'none'} ({record.timestamp[:19]} UTC).")


def export_labels(ctx: ExplorerApp, fmt: str, scope: str, requester: Identity) -> str:
    """Write ``requester``'s labels (scope ``"all"``: everyone's, for admins) into a private temp dir."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use csv, jsonl or zip")
    target = ctx.files.request_dir() / f"m2e-labels.{fmt}"
    return str(ctx.labels.export(target, fmt, requester=requester, scope=scope))


def label_summary(ctx: ExplorerApp, requester: Identity | None) -> str:
    """``"ann has 3 labels (2.1 MB of audio stored, of 200 MB)"``, or how to sign in."""
    if requester is None:
        return ""
    usage = ctx.labels.usage(requester)
    count = f"{usage.labels} label{'s' if usage.labels != 1 else ''}"
    return (f"{requester.name} has {count} here ({usage.audio_bytes / 1e6:.1f} MB of audio stored, "
            f"of {usage.audio_limit / 1e6:.0f} MB).")


def may_export_all(ctx: ExplorerApp, requester: Identity | None) -> bool:
    """Whether ``requester`` may export every annotator's labels (an admin, or a team tool)."""
    return requester is not None and ctx.labels.policy.may_read_all(requester)
