"""User labels: an append-only label store and the training manifest format.

Label store
-----------
A directory holding ``labels.jsonl`` (one :class:`LabelRecord` per line, never rewritten),
``labels.jsonl.lock`` (the lock file) and ``audio/`` (content-addressed copies of labelled
audio, ``audio/<sha256><suffix>``). Appends are atomic and durable: each record is one
``write`` to a file opened with ``O_APPEND``, under an exclusive ``flock`` on the lock file,
followed by ``fsync``; so writers in several threads or processes never interleave and an
acknowledged label survives a crash. A line torn by a crash mid-write is terminated by the
next writer and skipped (with a warning) by readers.

Manifest
--------
The one format ``training/`` reads. CSV with the header ``path,valence,arousal,tags`` plus
the optional columns ``start,end,segment``; or JSON Lines with the same keys. In CSV, tags
are joined with ``;`` and a missing value is an empty cell; in JSON Lines, tags are a list
and a missing value is ``null`` or an absent key. Valence and arousal are on the 1-9 scale
and come as a pair or not at all; tags are bare MTG-Jamendo mood/theme names
(``mood/theme---`` prefixes are accepted and removed). ``start``/``end`` (seconds) name an
excerpt of the file; ``segment`` is the analysis segment index they came from. A relative
``path`` is relative to the manifest's directory (:meth:`ManifestRow.resolve`).
:func:`write_manifest` then :func:`read_manifest` gives back exactly the rows written.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .constants import M2E_HOME_ENV, VA_MAX, VA_MIN
from .errors import LabelError
from .files import file_sha256
from .vocab import JAMENDO_TAG_PREFIX, tag_names

#: Environment variable naming the label store directory.
LABELS_DIR_ENV = "M2E_LABELS_DIR"
#: Columns every manifest has, in order.
MANIFEST_COLUMNS = ("path", "valence", "arousal", "tags")
#: Columns a manifest may add, in order.
MANIFEST_OPTIONAL_COLUMNS = ("start", "end", "segment")
#: Separator of tags in a CSV manifest cell.
TAG_SEPARATOR = ";"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_ANNOTATOR_CHARS = 100


def default_labels_dir() -> Path:
    """``$M2E_LABELS_DIR``, else ``$M2E_HOME/labels``, else ``~/.cache/m2e/labels``."""
    override = os.environ.get(LABELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    home = os.environ.get(M2E_HOME_ENV)
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "m2e"
    return base / "labels"



# -- validation shared by records and manifest rows ----------------------------------------


def _check_va(valence: object, arousal: object, where: str) -> tuple[float | None, float | None]:
    if valence is None and arousal is None:
        return None, None
    if valence is None or arousal is None:
        raise LabelError(f"{where}: valence and arousal come as a pair; got valence={valence!r}, "
                         f"arousal={arousal!r}")
    values = []
    for name, value in (("valence", valence), ("arousal", arousal)):
        if isinstance(value, bool):
            raise LabelError(f"{where}: {name} must be a number, got {value!r}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            raise LabelError(f"{where}: {name} must be a number, got {value!r}") from error
        if not math.isfinite(number) or not VA_MIN <= number <= VA_MAX:
            raise LabelError(f"{where}: {name} must be in {VA_MIN:g}..{VA_MAX:g}, got {value!r}")
        values.append(number)
    return values[0], values[1]


def _check_tags(tags: Iterable[object], where: str) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise LabelError(f"{where}: tags must be a list of names, got the string {tags!r}")
    known = set(tag_names())
    names: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise LabelError(f"{where}: tag names must be strings, got {tag!r}")
        name = tag.strip()
        if name.startswith(JAMENDO_TAG_PREFIX):
            name = name[len(JAMENDO_TAG_PREFIX):]
        if name not in known:
            raise LabelError(f"{where}: unknown tag {tag!r}; tags are the 56 MTG-Jamendo mood/theme names "
                             "(see m2e_core/data/mood_tags.csv)")
        if name in names:
            raise LabelError(f"{where}: tag {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _check_span(start: object, end: object, where: str) -> tuple[float | None, float | None]:
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        raise LabelError(f"{where}: start and end come as a pair; got start={start!r}, end={end!r}")
    try:
        low, high = float(start), float(end)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise LabelError(f"{where}: start and end must be numbers (seconds), got {start!r}, {end!r}") from error
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high <= low:
        raise LabelError(f"{where}: need 0 <= start < end (seconds), got start={start!r}, end={end!r}")
    return low, high


def _check_segment(segment: object, where: str) -> int | None:
    if segment is None:
        return None
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 0:
        raise LabelError(f"{where}: segment must be an index >= 0 or empty, got {segment!r}")
    return int(segment)


# -- label records -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRecord:
    """One label a person gave to a track or to one segment of it.

    Attributes
    ----------
    track_id : str
        sha256 (hex) of the audio file's content.
    source : str
        The file's name as the user gave it.
    segment : int or None
        Analysis segment index, or ``None`` for the whole track.
    start, end : float or None
        The labelled span in seconds (required for a segment).
    valence, arousal : float or None
        1-9, both or neither.
    tags : tuple of str
        Mood/theme tags that apply (may be empty when valence/arousal are given).
    annotator : str
        Who labelled it.
    timestamp : str
        When, ISO 8601 in UTC.
    audio_path : str or None
        The stored copy of the audio, relative to the label store directory.
    """

    track_id: str
    source: str
    segment: int | None
    start: float | None
    end: float | None
    valence: float | None
    arousal: float | None
    tags: tuple[str, ...]
    annotator: str
    timestamp: str
    audio_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "source": self.source,
            "segment": self.segment,
            "start": self.start,
            "end": self.end,
            "valence": self.valence,
            "arousal": self.arousal,
            "tags": list(self.tags),
            "annotator": self.annotator,
            "timestamp": self.timestamp,
            "audio_path": self.audio_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelRecord:
        try:
            record = cls(
                track_id=data["track_id"],
                source=data["source"],
                segment=data.get("segment"),
                start=data.get("start"),
                end=data.get("end"),
                valence=data.get("valence"),
                arousal=data.get("arousal"),
                tags=tuple(data.get("tags") or ()),
                annotator=data["annotator"],
                timestamp=data["timestamp"],
                audio_path=data.get("audio_path"),
            )
        except KeyError as error:
            raise LabelError(f"label record lacks the field {error.args[0]!r}") from error
        return validate_label(record)


def validate_label(record: LabelRecord) -> LabelRecord:
    """Check a label and return it with normalised values.

    Raises
    ------
    LabelError
        Naming the bad field: valence/arousal outside 1-9 or not a pair, an unknown tag,
        a segment without its span, a bad track id, an empty annotator, ...
    """
    where = f"label for {record.source!r}" if isinstance(record.source, str) else "label"
    if not isinstance(record.track_id, str) or not _SHA256.match(record.track_id):
        raise LabelError(f"{where}: track_id must be the audio's sha256 (64 hex digits), got {record.track_id!r}")
    if not isinstance(record.source, str) or not record.source.strip():
        raise LabelError("label: source (the file name) must not be empty")
    segment = _check_segment(record.segment, where)
    start, end = _check_span(record.start, record.end, where)
    if segment is not None and start is None:
        raise LabelError(f"{where}: a segment label needs its start and end times")
    valence, arousal = _check_va(record.valence, record.arousal, where)
    tags = _check_tags(record.tags, where)
    if valence is None and not tags:
        raise LabelError(f"{where}: give valence and arousal, or at least one tag")
    annotator = record.annotator.strip() if isinstance(record.annotator, str) else ""
    if not annotator or len(annotator) > _MAX_ANNOTATOR_CHARS or any(c in annotator for c in "\r\n\t"):
        raise LabelError(f"{where}: annotator must be a name of 1-{_MAX_ANNOTATOR_CHARS} characters on one line")
    try:
        when = datetime.fromisoformat(str(record.timestamp))
    except ValueError as error:
        raise LabelError(f"{where}: timestamp must be ISO 8601, got {record.timestamp!r}") from error
    if when.tzinfo is None:
        raise LabelError(f"{where}: timestamp must carry its time zone, got {record.timestamp!r}")
    audio_path = record.audio_path
    if audio_path is not None and (not isinstance(audio_path, str) or Path(audio_path).is_absolute()
                                   or ".." in Path(audio_path).parts):
        raise LabelError(f"{where}: audio_path must be relative to the label store, got {audio_path!r}")
    return LabelRecord(record.track_id, record.source, segment, start, end, valence, arousal, tags,
                       annotator, record.timestamp, audio_path)


def make_label(
    *,
    track_id: str,
    source: str,
    segment: int | None = None,
    start: float | None = None,
    end: float | None = None,
    valence: float | None = None,
    arousal: float | None = None,
    tags: Sequence[str] = (),
    annotator: str = "anonymous",
    audio_path: str | None = None,
    timestamp: str | None = None,
) -> LabelRecord:
    """Build and validate a label, time-stamped now (UTC) unless ``timestamp`` is given.

    Raises
    ------
    LabelError
        See :func:`validate_label`.
    """
    stamp = timestamp or datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return validate_label(LabelRecord(track_id, source, segment, start, end, valence, arousal,
                                      tuple(tags), annotator, stamp, audio_path))


# -- the store -----------------------------------------------------------------------------


class LabelStore:
    """An append-only label store in one directory (see the module docstring).

    Safe for many writers at once, in threads and in processes; nothing is ever rewritten.

    Parameters
    ----------
    directory : str or Path, optional
        Where the store lives (created on first write); default :func:`default_labels_dir`.

    Examples
    --------
    >>> store = LabelStore("/tmp/m2e-labels")  # doctest: +SKIP
    >>> track_id, stored = store.add_audio("song.flac")  # doctest: +SKIP
    >>> store.append(make_label(track_id=track_id, source="song.flac", valence=6.5, arousal=3.0,
    ...                         tags=["calm"], audio_path=stored))  # doctest: +SKIP
    >>> store.export("labels.csv")  # doctest: +SKIP
    """

    FILE_NAME = "labels.jsonl"

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_labels_dir()

    @property
    def path(self) -> Path:
        """The JSON Lines file of records."""
        return self.directory / self.FILE_NAME

    @property
    def lock_path(self) -> Path:
        """The lock file every reader and writer takes (``flock``) around file access."""
        return self.directory / (self.FILE_NAME + ".lock")

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def add_audio(self, audio_file: str | os.PathLike[str]) -> tuple[str, str]:
        """Keep a content-addressed copy of ``audio_file``; return ``(sha256, relative path)``.

        The copy is written atomically (temporary file, then rename); an existing copy of the
        same content is reused.

        Raises
        ------
        LabelError
            The file does not exist.
        """
        source = Path(audio_file)
        if not source.is_file():
            raise LabelError(f"cannot keep the audio for labelling: {source.name} does not exist")
        digest = file_sha256(source)
        suffix = source.suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", source.suffix.lower()) else ""
        relative = f"audio/{digest}{suffix}"
        target = self.directory / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".incoming-", delete=False) as tmp:
                with source.open("rb") as handle:
                    shutil.copyfileobj(handle, tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp.name, target)
        return digest, relative

    def append(self, record: LabelRecord) -> LabelRecord:
        """Validate ``record`` and append it durably; return the stored (normalised) record.

        Raises
        ------
        LabelError
            The record is invalid (nothing is written).
        """
        record = validate_label(record)
        data = (json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._locked(exclusive=True):
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A writer crashed mid-line: end that line so ours starts clean.
                    data = b"\n" + data
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_directory(self.directory)
        return record

    def records(self) -> list[LabelRecord]:
        """Every record, in the order written (lines torn by a crash are skipped with a warning).

        Raises
        ------
        LabelError
            A complete line holds an invalid record.
        """
        if not self.path.exists():
            return []
        with self._locked(exclusive=False):
            raw = self.path.read_bytes()
        records: list[LabelRecord] = []
        torn: list[int] = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                torn.append(number)
                continue
            if not isinstance(data, dict):
                raise LabelError(f"{self.path}:{number}: not a label record")
            try:
                records.append(LabelRecord.from_dict(data))
            except LabelError as error:
                raise LabelError(f"{self.path}:{number}: {error}") from error
        if torn:
            warnings.warn(f"{self.path}: skipped {len(torn)} incomplete line(s) {torn[:10]} "
                          "(writes interrupted by a crash)", RuntimeWarning, stacklevel=2)
        return records

    def latest(self, *, annotator: str | None = None) -> list[LabelRecord]:
        """The newest record per (track, segment, annotator), in the order those were written."""
        newest: dict[tuple[str, int | None, str], LabelRecord] = {}
        for record in self.records():
            if annotator is not None and record.annotator != annotator:
                continue
            key = (record.track_id, record.segment, record.annotator)
            newest.pop(key, None)
            newest[key] = record
        return list(newest.values())

    def manifest_rows(
        self,
        records: Iterable[LabelRecord],
        *,
        relative_to: str | os.PathLike[str] | None = None,
    ) -> list[ManifestRow]:
        """Manifest rows for ``records``.

        ``path`` is the stored audio copy: relative to ``relative_to`` when given (a bundle),
        else absolute; a record without a stored copy keeps its source name.
        """
        rows = []
        for record in records:
            if record.audio_path is None:
                path = record.source
            elif relative_to is not None:
                path = Path(os.path.relpath(self.directory / record.audio_path, relative_to)).as_posix()
            else:
                path = str((self.directory / record.audio_path).resolve())
            rows.append(ManifestRow(path, record.valence, record.arousal, record.tags,
                                    record.start, record.end, record.segment))
        return rows

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        annotator: str | None = None,
        latest_only: bool = True,
    ) -> Path:
        """Write the labels as a manifest (``.csv`` or ``.jsonl``) with absolute audio paths.

        Parameters
        ----------
        path : str or Path
            The manifest file; its suffix picks the format.
        annotator : str, optional
            Only this annotator's labels.
        latest_only : bool
            Keep only the newest label per (track, segment, annotator) (corrections replace
            earlier labels); ``False`` exports every record.

        Raises
        ------
        LabelError
            Nothing to export, or an unknown manifest suffix.
        """
        records = self._selected(annotator, latest_only)
        return write_manifest(self.manifest_rows(records), path)

    def export_bundle(
        self,
        zip_path: str | os.PathLike[str],
        *,
        annotator: str | None = None,
        latest_only: bool = True,
        manifest_name: str = "manifest.csv",
    ) -> Path:
        """A zip archive holding a manifest and the labelled audio it points to (relative paths).

        Unpacked anywhere, ``read_manifest(<dir>/manifest.csv)`` rows resolve to the audio.
        """
        records = self._selected(annotator, latest_only)
        rows = self.manifest_rows(records, relative_to=self.directory)
        target = Path(zip_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="m2e-bundle-") as scratch:
            manifest = write_manifest(rows, Path(scratch) / manifest_name)
            tmp = target.with_name(f".{target.name}.tmp")
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(manifest, manifest_name)
                for audio in sorted({r.audio_path for r in records if r.audio_path is not None}):
                    archive.write(self.directory / audio, audio, compress_type=zipfile.ZIP_STORED)
            os.replace(tmp, target)
        return target

    def _selected(self, annotator: str | None, latest_only: bool) -> list[LabelRecord]:
        if latest_only:
            records = self.latest(annotator=annotator)
        else:
            records = [r for r in self.records() if annotator is None or r.annotator == annotator]
        if not records:
            who = f" by {annotator!r}" if annotator else ""
            raise LabelError(f"no labels{who} to export yet: save a label first")
        return records


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    """One row of a training manifest (see the module docstring for the format)."""

    path: str
    valence: float | None
    arousal: float | None
    tags: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    segment: int | None = None

    def resolve(self, base_dir: str | os.PathLike[str]) -> Path:
        """The audio file: ``path`` itself when absolute, else relative to ``base_dir``."""
        path = Path(self.path).expanduser()
        return path if path.is_absolute() else Path(base_dir) / path


def validate_row(row: ManifestRow, where: str = "manifest row") -> ManifestRow:
    """Check one manifest row and return it normalised (floats, bare tag names, tuple).

    Raises
    ------
    LabelError
        Naming the bad field.
    """
    if not isinstance(row.path, str) or not row.path.strip():
        raise LabelError(f"{where}: path must not be empty")
    if row.path != row.path.strip() or any(c in row.path for c in "\r\n"):
        raise LabelError(f"{where}: path has leading/trailing spaces or a line break: {row.path!r}")
    valence, arousal = _check_va(row.valence, row.arousal, where)
    tags = _check_tags(row.tags, where)
    if valence is None and not tags:
        raise LabelError(f"{where}: the row has neither valence/arousal nor tags")
    start, end = _check_span(row.start, row.end, where)
    segment = _check_segment(row.segment, where)
    return ManifestRow(row.path, valence, arousal, tags, start, end, segment)


def _manifest_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise LabelError(f"{path.name}: a manifest must end in .csv or .jsonl")


def _used_optional_columns(rows: Sequence[ManifestRow]) -> list[str]:
    return [name for name in MANIFEST_OPTIONAL_COLUMNS if any(getattr(row, name) is not None for row in rows)]


def _cell(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically; the suffix (``.csv`` or ``.jsonl``) picks the format.

    Optional columns (``start``, ``end``, ``segment``) are written when any row has them.
    Floats are written in their shortest exact form, so :func:`read_manifest` returns
    rows equal to those written.

    Raises
    ------
    LabelError
        An invalid row (named by its position), or an unknown suffix.
    """
    target = Path(path)
    kind = _manifest_format(target)
    checked = [validate_row(row, f"row {number}") for number, row in enumerate(rows, start=1)]
    optional = _used_optional_columns(checked)
    if kind == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*MANIFEST_COLUMNS, *optional])
        for row in checked:
            if any(TAG_SEPARATOR in tag for tag in row.tags):
                raise LabelError(f"tag names must not contain {TAG_SEPARATOR!r}")
            writer.writerow([row.path, _cell(row.valence), _cell(row.arousal), TAG_SEPARATOR.join(row.tags),
                             *(_cell(getattr(row, name)) for name in optional)])
        text = buffer.getvalue()
    else:
        lines = []
        for row in checked:
            item: dict[str, Any] = {"path": row.path, "valence": row.valence, "arousal": row.arousal,
                                    "tags": list(row.tags)}
            for name in optional:
                item[name] = getattr(row, name)
            lines.append(json.dumps(item, ensure_ascii=False))
        text = "".join(line + "\n" for line in lines)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8", newline="") as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, target)
    return target


def _parse_number(text: str, column: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError as error:
        raise LabelError(f"{where}: {column} must be a number, got {text!r}") from error


def _parse_segment(value: object, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        if not re.fullmatch(r"\d+", value.strip()):
            raise LabelError(f"{where}: segment must be an index >= 0, got {value!r}")
        return int(value)
    return value  # type: ignore[return-value]  # checked by validate_row


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read a CSV or JSON Lines manifest (the suffix picks the format).

    Returns
    -------
    list of ManifestRow
        In file order, validated; relative paths are kept as written
        (see :meth:`ManifestRow.resolve`).

    Raises
    ------
    LabelError
        Missing file or columns, or an invalid row (named by file and line).

    Examples
    --------
    >>> rows = read_manifest("labels.csv")  # doctest: +SKIP
    >>> rows[0].path, rows[0].valence, rows[0].tags  # doctest: +SKIP
    ('audio/9f2c...flac', 6.5, ('calm',))
    """
    source = Path(path)
    kind = _manifest_format(source)
    if not source.is_file():
        raise LabelError(f"{source}: no such manifest")
    text = source.read_text(encoding="utf-8-sig")
    rows: list[ManifestRow] = []
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [name for name in MANIFEST_COLUMNS if name not in header]
        if missing:
            raise LabelError(f"{source}: missing column(s) {', '.join(missing)}; a manifest has "
                             f"{', '.join(MANIFEST_COLUMNS)} (and optionally {', '.join(MANIFEST_OPTIONAL_COLUMNS)})")
        for item in reader:
            where = f"{source}:{reader.line_num}"
            if None in item:
                raise LabelError(f"{where}: more cells than columns")
            cells = {name: (item.get(name) or "") for name in (*MANIFEST_COLUMNS, *MANIFEST_OPTIONAL_COLUMNS)}
            tag_cell = cells["tags"].strip()
            row = ManifestRow(
                path=cells["path"],
                valence=_parse_number(cells["valence"], "valence", where),
                arousal=_parse_number(cells["arousal"], "arousal", where),
                tags=tuple(tag_cell.split(TAG_SEPARATOR)) if tag_cell else (),
                start=_parse_number(cells["start"], "start", where),
                end=_parse_number(cells["end"], "end", where),
                segment=_parse_segment(cells["segment"], where),
            )
            rows.append(validate_row(row, where))
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise LabelError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(item, dict) or "path" not in item:
            raise LabelError(f"{where}: each line must be an object with at least a 'path'")
        unknown = set(item) - set(MANIFEST_COLUMNS) - set(MANIFEST_OPTIONAL_COLUMNS)
        if unknown:
            raise LabelError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        tags = item.get("tags") or []
        if not isinstance(tags, list):
            raise LabelError(f"{where}: tags must be a list, got {tags!r}")
        row = ManifestRow(
            path=item["path"],
            valence=item.get("valence"),
            arousal=item.get("arousal"),
            tags=tuple(tags),
            start=item.get("start"),
            end=item.get("end"),
            segment=_parse_segment(item.get("segment"), where),
        )
        rows.append(validate_row(row, where))
    return rows
