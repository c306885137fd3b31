"""User labels: label records, annotator identities and the training manifest format.

Labels
------
A :class:`LabelRecord` is one person's label of a track or of one segment of it; an
:class:`Identity` is who that person is (a Hugging Face account or a typed name). The store
that keeps labels, their owners and the labelled audio in a database is
:class:`m2e_core.labelstore.LabelStore` (also importable from here).

Manifest
--------
The one format ``training/`` reads. CSV with the header ``path,valence,arousal,tags`` plus
the optional columns ``start,end,segment,annotator``; or JSON Lines with the same keys. In CSV, tags
are joined with ``;`` and a missing value is an empty cell; in JSON Lines, tags are a list
and a missing value is ``null`` or an absent key. Valence and arousal are on the 1-9 scale
and come as a pair or not at all; tags are bare MTG-Jamendo mood/theme names
(``mood/theme---`` prefixes are accepted and removed). ``start``/``end`` (seconds) name an
excerpt of the file; ``segment`` is the analysis segment index they came from; ``annotator``
is who gave the label (every export of the label store has it; training ignores it). A relative
``path`` is relative to the manifest's directory (:meth:`ManifestRow.resolve`).
:func:`write_manifest` then :func:`read_manifest` gives back exactly the rows written.

CSV cells are safe to open in a spreadsheet (OWASP CSV injection advice): a cell that starts
with ``= + - @``, a tab or a carriage return is written with a leading ``'`` (so is a cell
that starts with ``'``, which keeps the escape reversible), and :func:`read_manifest` removes
that ``'`` again (:func:`csv_cell`, :func:`csv_text`). A file named ``=1+2.wav`` is written
``'=1+2.wav`` and read back as ``=1+2.wav``. JSON Lines manifests are not escaped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .constants import M2E_HOME_ENV, VA_MAX, VA_MIN
from .errors import LabelError
from .files import atomic_path, spreadsheet_safe
from .vocab import JAMENDO_TAG_PREFIX, tag_names

#: Environment variable naming the label store directory.
LABELS_DIR_ENV = "M2E_LABELS_DIR"
#: Columns every manifest has, in order.
MANIFEST_COLUMNS = ("path", "valence", "arousal", "tags")
#: Columns a manifest may add, in order.
MANIFEST_OPTIONAL_COLUMNS = ("start", "end", "segment", "annotator")
#: Separator of tags in a CSV manifest cell.
TAG_SEPARATOR = ";"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CSV_ESCAPE = "'"
_CSV_ESCAPED_FIRST = "'=+-@\t\r"
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


# -- identities ----------------------------------------------------------------------------

#: Who vouches for an identity: a Hugging Face account (OAuth sign-in) or a typed name.
IDENTITY_PROVIDERS = ("hf", "local")


@dataclass(frozen=True)
class Identity:
    """Who is asking: the owner of the labels they save and the only one who may read them.

    Attributes
    ----------
    name : str
        The annotator name stored with every label (1-100 characters on one line).
    provider : str
        ``"hf"`` for a Hugging Face account (the app's OAuth sign-in on a Space), ``"local"``
        for a name typed into the annotator field. ``hf:ann`` and ``local:ann`` are two
        different annotators: typing a name never reaches a signed-in account's labels.

    Examples
    --------
    >>> Identity.huggingface("alice").key
    'hf:alice'
    >>> Identity.local("  bob ").name
    'bob'
    """

    name: str
    provider: str = "local"

    def __post_init__(self) -> None:
        if self.provider not in IDENTITY_PROVIDERS:
            raise LabelError(f"unknown identity provider {self.provider!r}; use one of {', '.join(IDENTITY_PROVIDERS)}")
        name = self.name
        if (not isinstance(name, str) or not name or name != name.strip() or len(name) > _MAX_ANNOTATOR_CHARS
                or any(c in name for c in "\r\n\t")):
            raise LabelError(f"annotator must be a name of 1-{_MAX_ANNOTATOR_CHARS} characters on one line, "
                             f"got {name!r}")

    @classmethod
    def local(cls, name: str) -> Identity:
        """A typed annotator name (surrounding spaces removed)."""
        return cls(name.strip() if isinstance(name, str) else name, "local")

    @classmethod
    def huggingface(cls, username: str) -> Identity:
        """A signed-in Hugging Face account (its user name, as OAuth reports it)."""
        return cls(username.strip() if isinstance(username, str) else username, "hf")

    @property
    def key(self) -> str:
        """``provider:name``, the form the admin list (``M2E_LABEL_ADMINS``) compares with."""
        return f"{self.provider}:{self.name}"

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
    annotator: str | None = None

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
    annotator = row.annotator
    if annotator is not None and (not isinstance(annotator, str) or not annotator.strip()
                                  or len(annotator) > _MAX_ANNOTATOR_CHARS or any(c in annotator for c in "\r\n\t")):
        raise LabelError(f"{where}: annotator must be a name of 1-{_MAX_ANNOTATOR_CHARS} characters on one line "
                         f"or empty, got {annotator!r}")
    return ManifestRow(row.path, valence, arousal, tags, start, end, segment, annotator)


def _manifest_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise LabelError(f"{path.name}: a manifest must end in .csv or .jsonl")


def _used_optional_columns(rows: Sequence[ManifestRow]) -> list[str]:
    return [name for name in MANIFEST_OPTIONAL_COLUMNS if any(getattr(row, name) is not None for row in rows)]


def _cell(value: float | int | str | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def csv_cell(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text (see :func:`m2e_core.files.spreadsheet_safe`).

    A cell starting with ``= + - @``, a tab or a carriage return gets a leading ``'``, and so
    does one that already starts with ``'``, which makes the escape reversible:
    :func:`csv_text` gives back exactly ``text``.
    """
    if text.startswith(_CSV_ESCAPE):
        return _CSV_ESCAPE + text
    return str(spreadsheet_safe(text))


def csv_text(cell: str) -> str:
    """The text of a cell written by :func:`csv_cell`: one leading ``'`` removed when it escapes.

    A ``'`` is removed only before ``= + - @ ' \t \r``; a cell such as ``'quoted'.wav`` written
    by another program is kept as it is.
    """
    if len(cell) >= 2 and cell[0] == _CSV_ESCAPE and cell[1] in _CSV_ESCAPED_FIRST:
        return cell[1:]
    return cell


class ManifestWriter:
    """Writes manifest rows to an open text file one at a time, for exports streamed from a store.

    Parameters
    ----------
    handle : text file
        Opened with ``newline=""``; the CSV header is written at once.
    kind : str
        ``"csv"`` or ``"jsonl"``.
    optional : sequence of str
        The optional columns (of ``start``, ``end``, ``segment``, ``annotator``) the manifest has: a row with
        a value for a column not listed is refused.
    """

    def __init__(self, handle: TextIO, kind: str, optional: Sequence[str]) -> None:
        self._handle = handle
        self._kind = kind
        self._optional = tuple(optional)
        self._csv = csv.writer(handle, lineterminator="\n") if kind == "csv" else None
        self.count = 0
        if self._csv is not None:
            self._csv.writerow([*MANIFEST_COLUMNS, *self._optional])

    def write(self, row: ManifestRow, where: str) -> None:
        """Validate ``row`` and write it; ``where`` names it in errors."""
        row = validate_row(row, where)
        unused = [name for name in MANIFEST_OPTIONAL_COLUMNS
                  if name not in self._optional and getattr(row, name) is not None]
        if unused:
            raise LabelError(f"{where}: has {', '.join(unused)} but the manifest has no such column")
        if self._csv is not None:
            if any(TAG_SEPARATOR in tag for tag in row.tags):
                raise LabelError(f"tag names must not contain {TAG_SEPARATOR!r}")
            cells = [row.path, _cell(row.valence), _cell(row.arousal), TAG_SEPARATOR.join(row.tags),
                     *(_cell(getattr(row, name)) for name in self._optional)]
            self._csv.writerow([csv_cell(cell) for cell in cells])
        else:
            item: dict[str, Any] = {"path": row.path, "valence": row.valence, "arousal": row.arousal,
                                    "tags": list(row.tags)}
            for name in self._optional:
                item[name] = getattr(row, name)
            self._handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        self.count += 1


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically; the suffix (``.csv`` or ``.jsonl``) picks the format.

    Optional columns (``start``, ``end``, ``segment``) are written when any row has them.
    Floats are written in their shortest exact form, so :func:`read_manifest` returns
    rows equal to those written. CSV cells are escaped for spreadsheets (:func:`csv_cell`)
    and read back unescaped.

    Raises
    ------
    LabelError
        An invalid row (named by its position), or an unknown suffix.
    """
    target = Path(path)
    kind = _manifest_format(target)
    checked = [validate_row(row, f"row {number}") for number, row in enumerate(rows, start=1)]
    if kind == "csv" and any(TAG_SEPARATOR in tag for row in checked for tag in row.tags):
        raise LabelError(f"tag names must not contain {TAG_SEPARATOR!r}")
    optional = _used_optional_columns(checked)
    with atomic_path(target) as temporary, temporary.open("w", encoding="utf-8", newline="") as handle:
        writer = ManifestWriter(handle, kind, optional)
        for number, row in enumerate(checked, start=1):
            writer.write(row, f"row {number}")
        handle.flush()
        os.fsync(handle.fileno())
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
            cells = {name: csv_text(item.get(name) or "") for name in (*MANIFEST_COLUMNS, *MANIFEST_OPTIONAL_COLUMNS)}
            tag_cell = cells["tags"].strip()
            row = ManifestRow(
                path=cells["path"],
                valence=_parse_number(cells["valence"], "valence", where),
                arousal=_parse_number(cells["arousal"], "arousal", where),
                tags=tuple(tag_cell.split(TAG_SEPARATOR)) if tag_cell else (),
                start=_parse_number(cells["start"], "start", where),
                end=_parse_number(cells["end"], "end", where),
                segment=_parse_segment(cells["segment"], where),
                annotator=cells["annotator"] or None,
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
            annotator=item.get("annotator"),
        )
        rows.append(validate_row(row, where))
    return rows


def __getattr__(name: str) -> Any:
    # The store lives in m2e_core.labelstore, which imports this module; it is re-exported
    # lazily so that ``from m2e_core.labels import LabelStore`` keeps working without a cycle.
    if name in ("LabelStore", "LabelPolicy", "StoreUsage"):
        from . import labelstore

        return getattr(labelstore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
