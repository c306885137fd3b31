"""Dataset adapters: the official distributions and the generic manifest, as labelled track lists.

Every adapter returns a :class:`LabeledDataset`: one task (``"tags"`` or ``"va"``), tracks with
a split (``train`` / ``validation`` / ``test``), an audio path and labels. Valence and arousal
are always on the 1-9 scale; tags are bare MTG-Jamendo mood/theme names in the vocabulary of
:func:`m2e_core.vocab.tag_names`.

File layouts relied on (the official distributions)
----------------------------------------------------
MTG-Jamendo (``mtg-jamendo-dataset``, ``data/autotagging_moodtheme.tsv`` and
``data/splits/split-N/autotagging_moodtheme-{train,validation,test}.tsv``)
    Tab-separated, header ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS``; the tags fill the
    sixth column and every column after it, one ``mood/theme---<name>`` per column; lines may end
    in CRLF. ``PATH`` (``48/948.mp3``) is relative to the audio root; the low-quality audio
    release names the same files ``48/948.low.mp3`` (``audio_suffix: .low.mp3``). The split files
    decide membership and labels (split-0: 9,949 / 3,802 / 4,231 tracks over 56 tags). The full
    table (18,486 tracks, 59 tags: the dataset drops a few tags from the splits so every split
    has the same tag list) is a cross-check when given: every split track must be in it with the
    same path and, within the 56-tag vocabulary, the same tags; the three tags only the table
    has (``ambiental``, ``horror``, ``mellow``) are ignored.
DEAM (``DEAM_Annotations/annotations/annotations averaged per song/song_level/``)
    ``static_annotations_averaged_songs_1_2000.csv`` and ``..._2000_2058.csv``; comma-separated,
    header ``song_id, valence_mean, valence_std, arousal_mean, arousal_std`` with a space before
    every name after the first (the second file adds ``*_max_*`` / ``*_min_*`` columns, unused).
    Values are on the 1-9 SAM scale. Audio: ``MEMD_audio/<song_id>.mp3``. 1,802 songs.
PMEmo (``PMEmo2019/annotations/static_annotations.csv``)
    Header ``musicId,Arousal(mean),Valence(mean)``; values on 0-1. They are mapped linearly to
    the 1-9 scale, ``v -> 1 + 8 v``, so all datasets share the model's output scale. Audio:
    ``PMEmo2019/chorus/<musicId>.mp3``. 767 songs carry static labels.
EmoMusic ("1000 songs", ``annotations/static_annotations.csv``)
    Header ``song_id,mean_arousal,std_arousal,mean_valence,std_valence`` on the 1-9 scale
    (744 songs after the published de-duplication). Audio: ``clips_45seconds/<song_id>.mp3``.
Manifest (:mod:`m2e_core.labels`)
    CSV or JSON Lines with ``path, valence, arousal, tags`` (+ ``start, end, segment``); the
    format the app's label export writes. Read with :func:`m2e_core.labels.read_manifest`.

Header names are compared after stripping surrounding spaces; extra columns are ignored.
DEAM, PMEmo, EmoMusic and manifests have no official split: a seeded random 70/15/15 split
(:func:`seeded_split`) is drawn over the track ids (over audio files for manifests, so
excerpts of one file never straddle two splits).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2e_core.constants import VA_MAX, VA_MIN
from m2e_core.errors import ConfigError, LabelError
from m2e_core.vocab import JAMENDO_TAG_PREFIX, tag_names

#: Split names, in order.
SPLITS = ("train", "validation", "test")
#: The two tasks a dataset can label.
TASKS = ("tags", "va")
#: Default fractions of the seeded split.
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
#: Dataset kinds this module reads.
KINDS = ("jamendo", "deam", "pmemo", "emomusic", "manifest")

_JAMENDO_COLUMNS = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")


@dataclass(frozen=True)
class TrackRecord:
    """One labelled track (or excerpt of a file).

    Attributes
    ----------
    track_id : str
        Unique within its dataset.
    audio_path : Path
        The audio file.
    split : str
        ``"train"``, ``"validation"`` or ``"test"``.
    tags : tuple of str or None
        Tags that apply (every other tag is a negative); ``None`` when not labelled for tags.
    valence, arousal : float or None
        1-9 scale; ``None`` when not labelled for valence/arousal.
    start, end : float or None
        An excerpt of the file in seconds; ``None`` for the whole file.
    """

    track_id: str
    audio_path: Path
    split: str
    tags: tuple[str, ...] | None
    valence: float | None
    arousal: float | None
    start: float | None = None
    end: float | None = None

    def has_task(self, task: str) -> bool:
        """Whether the track is labelled for ``task``."""
        return self.tags is not None if task == "tags" else self.valence is not None


@dataclass(frozen=True)
class LabeledDataset:
    """The tracks of one dataset for one task."""

    name: str
    kind: str
    task: str
    tracks: tuple[TrackRecord, ...]

    def split(self, name: str) -> tuple[TrackRecord, ...]:
        """Tracks of one split, in dataset order."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {SPLITS}")
        return tuple(track for track in self.tracks if track.split == name)

    def counts(self) -> dict[str, int]:
        """Number of tracks per split."""
        return {name: sum(track.split == name for track in self.tracks) for name in SPLITS}


# -- helpers --------------------------------------------------------------------------------


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return path


def _read_text(path: Path, what: str) -> str:
    _require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelError(f"{path}: not UTF-8 text ({error})") from error


def _read_csv_table(path: Path, required: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a comma-separated table as ``(line, {stripped header: stripped cell})``."""
    reader = csv.reader(io.StringIO(_read_text(path, what), newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise LabelError(f"{path}: the file is empty") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise LabelError(f"{path}: missing column(s) {missing}; found {header} ({what})")
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) < len(header):
            raise LabelError(f"{path}:{reader.line_num}: {len(cells)} cells for {len(header)} columns")
        rows.append((reader.line_num, {name: cell.strip() for name, cell in zip(header, cells)}))
    if not rows:
        raise LabelError(f"{path}: no data rows")
    return rows


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelError(f"{where}: {column} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise LabelError(f"{where}: {column} must be finite, got {text!r}")
    return value


def _scale_value(value: float, column: str, where: str, source_range: tuple[float, float]) -> float:
    """Check ``value`` lies in ``source_range`` and map it linearly onto 1-9."""
    low, high = source_range
    if not low <= value <= high:
        raise LabelError(f"{where}: {column} = {value:g} is outside the dataset's scale {low:g}..{high:g}")
    return VA_MIN + (value - low) * (VA_MAX - VA_MIN) / (high - low)


def _song_id(text: str, column: str, where: str) -> str:
    """A numeric song id as written without decoration (``"12"``, also from ``"12.0"``)."""
    value = _number(text, column, where)
    if value != int(value) or value < 0:
        raise LabelError(f"{where}: {column} must be a non-negative integer id, got {text!r}")
    return str(int(value))


def seeded_split(
    ids: Iterable[str],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, str]:
    """Assign ids to train/validation/test: a seeded permutation cut at the given fractions.

    The ids are sorted first, so the result depends on the set of ids and the seed only.
    Train gets ``round(f_train * n)`` ids, validation ``round(f_val * n)``, test the rest.

    Raises
    ------
    ConfigError
        Fractions that are not three non-negative numbers summing to 1.
    LabelError
        Duplicate ids.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        duplicates = sorted({i for i in ordered if ordered.count(i) > 1})[:5]
        raise LabelError(f"duplicate ids in a split: {duplicates}")
    count = len(ordered)
    order = np.random.default_rng(seed).permutation(count)
    n_train = int(round(fractions[0] * count))
    n_validation = min(count - n_train, int(round(fractions[1] * count)))
    assignment = {}
    for rank, position in enumerate(order):
        split = "train" if rank < n_train else "validation" if rank < n_train + n_validation else "test"
        assignment[ordered[int(position)]] = split
    return assignment


def _check_unique(ids: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    duplicates = []
    for track_id in ids:
        if track_id in seen:
            duplicates.append(track_id)
        seen.add(track_id)
    if duplicates:
        raise LabelError(f"{where}: duplicate id(s) {sorted(set(duplicates))[:10]}")


# -- MTG-Jamendo ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JamendoRow:
    """One line of an MTG-Jamendo TSV; ``tags`` without the ``mood/theme---`` prefix."""

    track_id: str
    artist_id: str
    album_id: str
    path: str
    duration: float
    tags: tuple[str, ...]


def read_jamendo_tsv(path: str | Path) -> list[JamendoRow]:
    """Parse an MTG-Jamendo TSV (full table or split file).

    Raises
    ------
    ConfigError
        The file does not exist.
    LabelError
        Wrong header, a short line, a tag without the mood/theme prefix, a tag listed twice,
        a bad duration, or a duplicate track id.
    """
    source = Path(path)
    lines = _read_text(source, "MTG-Jamendo TSV").splitlines()
    if not lines:
        raise LabelError(f"{source}: the file is empty")
    header = tuple(cell.strip() for cell in lines[0].split("\t"))
    if header != _JAMENDO_COLUMNS:
        expected = " <tab> ".join(_JAMENDO_COLUMNS)
        raise LabelError(f"{source}: header must be {expected}, got {' <tab> '.join(header)}")
    rows: list[JamendoRow] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        where = f"{source}:{number}"
        if len(cells) < 6 or not all(cells[:4]):
            raise LabelError(f"{where}: need TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION and at least one tag")
        tags: list[str] = []
        for cell in cells[5:]:
            if not cell:
                continue
            if not cell.startswith(JAMENDO_TAG_PREFIX):
                raise LabelError(f"{where}: tag {cell!r} is not a mood/theme tag ({JAMENDO_TAG_PREFIX}<name>)")
            name = cell[len(JAMENDO_TAG_PREFIX):]
            if name in tags:
                raise LabelError(f"{where}: tag {name!r} is listed twice")
            tags.append(name)
        if not tags:
            raise LabelError(f"{where}: the track has no tags")
        rows.append(JamendoRow(cells[0], cells[1], cells[2], cells[3], _number(cells[4], "DURATION", where),
                               tuple(tags)))
    _check_unique([row.track_id for row in rows], str(source))
    return rows


def _jamendo_audio(audio_dir: Path, relative: str, audio_suffix: str | None) -> Path:
    if audio_suffix:
        stem, dot, _ = relative.rpartition(".")
        relative = (stem if dot else relative) + audio_suffix
    return audio_dir / relative


def load_jamendo(
    split_files: Mapping[str, str | Path],
    audio_dir: str | Path,
    *,
    table: str | Path | None = None,
    audio_suffix: str | None = None,
    name: str = "jamendo",
) -> LabeledDataset:
    """MTG-Jamendo mood/theme with an official split.

    Parameters
    ----------
    split_files : mapping
        ``{"train": tsv, "validation": tsv, "test": tsv}``.
    audio_dir : str or Path
        Root the ``PATH`` column is relative to.
    table : str or Path, optional
        ``autotagging_moodtheme.tsv``, cross-checked against the split files.
    audio_suffix : str, optional
        Replaces the file extension of ``PATH`` (``".low.mp3"`` for the low-quality release).
    name : str
        The dataset's name in reports.

    Raises
    ------
    ConfigError
        A split is missing or a file does not exist.
    LabelError
        A tag outside the 56-tag vocabulary in a split file, a track in two splits, or a split
        track that disagrees with the full table.
    """
    missing = [split for split in SPLITS if split not in split_files]
    extra = sorted(set(split_files) - set(SPLITS))
    if missing or extra:
        raise ConfigError(f"MTG-Jamendo needs split files for exactly {SPLITS}; missing {missing}, unknown {extra}")
    vocabulary = set(tag_names())
    root = Path(audio_dir)
    tracks: list[TrackRecord] = []
    rows_by_id: dict[str, tuple[str, JamendoRow]] = {}
    for split in SPLITS:
        path = Path(split_files[split])
        for row in read_jamendo_tsv(path):
            unknown = [tag for tag in row.tags if tag not in vocabulary]
            if unknown:
                raise LabelError(f"{path}: {row.track_id} has unknown tag(s) {unknown}; the model's vocabulary is "
                                 "the 56 tags of m2e_core/data/mood_tags.csv")
            if row.track_id in rows_by_id:
                raise LabelError(f"{row.track_id} is in both the {rows_by_id[row.track_id][0]} and {split} split files")
            rows_by_id[row.track_id] = (split, row)
            tracks.append(TrackRecord(row.track_id, _jamendo_audio(root, row.path, audio_suffix), split,
                                      row.tags, None, None))
    if table is not None:
        full = {row.track_id: row for row in read_jamendo_tsv(table)}
        for track_id, (split, row) in rows_by_id.items():
            reference = full.get(track_id)
            if reference is None:
                raise LabelError(f"{track_id} ({split} split) is not in the full table {table}")
            if reference.path != row.path:
                raise LabelError(f"{track_id}: path {row.path!r} in the {split} split but {reference.path!r} in {table}")
            in_vocabulary = {tag for tag in reference.tags if tag in vocabulary}
            if in_vocabulary != set(row.tags):
                raise LabelError(f"{track_id}: tags {sorted(row.tags)} in the {split} split but "
                                 f"{sorted(in_vocabulary)} in {table}")
    return LabeledDataset(name, "jamendo", "tags", tuple(tracks))


# -- static valence/arousal datasets ---------------------------------------------------------


@dataclass(frozen=True)
class StaticLabel:
    """One song's static valence/arousal on the 1-9 scale."""

    song_id: str
    valence: float
    arousal: float


def _read_static(
    paths: Sequence[Path],
    *,
    id_column: str,
    valence_column: str,
    arousal_column: str,
    source_range: tuple[float, float],
    what: str,
) -> list[StaticLabel]:
    labels: list[StaticLabel] = []
    for path in paths:
        for line, row in _read_csv_table(path, (id_column, valence_column, arousal_column), what):
            where = f"{path}:{line}"
            song_id = _song_id(row[id_column], id_column, where)
            valence = _scale_value(_number(row[valence_column], valence_column, where), valence_column, where,
                                   source_range)
            arousal = _scale_value(_number(row[arousal_column], arousal_column, where), arousal_column, where,
                                   source_range)
            labels.append(StaticLabel(song_id, valence, arousal))
    _check_unique([label.song_id for label in labels], " + ".join(str(p) for p in paths))
    return labels


def read_deam(annotation_files: Sequence[str | Path]) -> list[StaticLabel]:
    """DEAM static song-level averages (``song_id``, ``valence_mean``, ``arousal_mean``; 1-9)."""
    return _read_static([Path(p) for p in annotation_files], id_column="song_id", valence_column="valence_mean",
                        arousal_column="arousal_mean", source_range=(VA_MIN, VA_MAX), what="DEAM static annotations")


def read_pmemo(annotation_file: str | Path) -> list[StaticLabel]:
    """PMEmo static annotations (``musicId``, ``Valence(mean)``, ``Arousal(mean)`` on 0-1, mapped to 1-9)."""
    return _read_static([Path(annotation_file)], id_column="musicId", valence_column="Valence(mean)",
                        arousal_column="Arousal(mean)", source_range=(0.0, 1.0), what="PMEmo static annotations")


def read_emomusic(annotation_file: str | Path) -> list[StaticLabel]:
    """EmoMusic static annotations (``song_id``, ``mean_valence``, ``mean_arousal``; 1-9)."""
    return _read_static([Path(annotation_file)], id_column="song_id", valence_column="mean_valence",
                        arousal_column="mean_arousal", source_range=(VA_MIN, VA_MAX),
                        what="EmoMusic static annotations")


_STATIC_READERS = {"deam": read_deam, "pmemo": lambda files: read_pmemo(_single(files, "pmemo")),
                   "emomusic": lambda files: read_emomusic(_single(files, "emomusic"))}


def _single(files: Sequence[str | Path], kind: str) -> Path:
    if len(files) != 1:
        raise ConfigError(f"{kind} takes one annotations file, got {len(files)}")
    return Path(files[0])


def load_static_va(
    kind: str,
    annotation_files: Sequence[str | Path],
    audio_dir: str | Path,
    *,
    audio_pattern: str = "{id}.mp3",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    name: str | None = None,
) -> LabeledDataset:
    """DEAM, PMEmo or EmoMusic with a seeded 70/15/15 split.

    Parameters
    ----------
    kind : str
        ``"deam"``, ``"pmemo"`` or ``"emomusic"``.
    annotation_files : sequence of path
        DEAM: both static CSVs; PMEmo and EmoMusic: ``static_annotations.csv``.
    audio_dir : str or Path
        Where the clips are; ``audio_pattern`` names one (``{id}`` is the song id).
    seed, fractions
        The split (see :func:`seeded_split`).
    name : str, optional
        The dataset's name in reports (default: ``kind``).
    """
    if kind not in _STATIC_READERS:
        raise ConfigError(f"unknown static valence/arousal dataset {kind!r}; choose deam, pmemo or emomusic")
    if "{id}" not in audio_pattern:
        raise ConfigError(f"audio_pattern must contain {{id}}, got {audio_pattern!r}")
    labels = _STATIC_READERS[kind](list(annotation_files))
    splits = seeded_split([label.song_id for label in labels], seed=seed, fractions=fractions)
    root = Path(audio_dir)
    tracks = tuple(
        TrackRecord(label.song_id, root / audio_pattern.format(id=label.song_id), splits[label.song_id], None,
                    label.valence, label.arousal)
        for label in labels
    )
    return LabeledDataset(name or kind, kind, "va", tracks)


# -- manifests ------------------------------------------------------------------------------


def load_manifest_dataset(
    path: str | Path,
    task: str,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    name: str | None = None,
) -> LabeledDataset:
    """The rows of a manifest labelled for ``task``, with a seeded split over audio files.

    Rows without a label for ``task`` are left out (a manifest may mix tag-only and VA-only
    rows; list it twice, once per task, to use both). The split is drawn over the whole
    manifest's files, so a file labelled for both tasks lands in the same split for both.
    ``track_id`` is the row's path as written, plus ``@start-end`` for an excerpt.

    Raises
    ------
    LabelError
        Invalid rows (from :func:`m2e_core.labels.read_manifest`), the same excerpt twice,
        or no row labelled for ``task``.
    """
    from m2e_core.labels import read_manifest

    if task not in TASKS:
        raise ConfigError(f"a manifest dataset needs task 'tags' or 'va', got {task!r}")
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"manifest not found: {source}")
    rows = read_manifest(source)
    base = source.parent
    files = [str(row.resolve(base)) for row in rows]
    ids = [row.path if row.start is None else f"{row.path}@{row.start:g}-{row.end:g}" for row in rows]
    _check_unique(ids, str(source))
    splits = seeded_split(sorted(set(files)), seed=seed, fractions=fractions)
    tracks = []
    for row, file, track_id in zip(rows, files, ids):
        record = TrackRecord(track_id, Path(file), splits[file], row.tags if row.tags else None,
                             row.valence, row.arousal, row.start, row.end)
        if record.has_task(task):
            tracks.append(record)
    if not tracks:
        raise LabelError(f"{source}: no row is labelled for {task!r}")
    return LabeledDataset(name or source.stem, "manifest", task, tuple(tracks))
