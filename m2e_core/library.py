"""Library analysis: a folder of thousands of tracks into one JSON line per track.

:func:`analyze_library` appends each track's result to a JSONL file as soon as it is done
(flushed and fsynced line by line), so a crash, a ``SIGKILL`` or Ctrl-C loses at most the tracks
in flight; run the same command again and it resumes. Tracks are recognised by the sha256 of
their content, so a file that was moved or renamed since is not analysed again. A track that
cannot be analysed gets a line with its one-line reason, and the run goes on. Decoding, chords
and key run in worker threads while the encoder runs in the calling thread, so the stages of
different tracks overlap (on a GPU the encoder batches each track's segments).

Sharding: every process gets a disjoint share of the tracks (by a stable hash of their relative
path, :class:`m2e_core.sharding.DistributedContext`) and writes its own file
``results.jsonl.shard-I-of-N``; :func:`merge_results` joins shard files into one.

Results file format (one JSON object per line, UTF-8, ``\\n``-terminated)
-------------------------------------------------------------------------
Every line has:

- ``path``: the track's path relative to the folder it was found in (POSIX separators; for a
  file named on the command line, the path as given);
- ``sha256``: hex sha256 of the file's bytes (``null`` only when the file could not be read);
- ``bytes`` and ``mtime_ns``: the file's size and modification time when it was analysed (a
  file at the same path with the same size and time is not hashed again on resume);
- ``status``: ``"ok"`` or ``"failed"``.

An ``"ok"`` line also carries every field of the analysis JSON the command line prints for one
file (``source``, ``duration``, ``key``, ``chords``, ``segments``, ``track``, ``provenance``,
``warnings``, ...), so ``Analysis.from_dict(line)`` reads it back. A ``"failed"`` line carries
``error``, the one-line reason. A last line cut short by a crash is detected when the file is
opened again for writing and removed (or completed, when it was whole but for its newline).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audio import AUDIO_EXTENSIONS
from .errors import ConfigError, M2EError
from .files import atomic_path, file_sha256
from .sharding import DistributedContext, shard_files

__all__ = [
    "STATUS_FAILED",
    "STATUS_OK",
    "LibrarySummary",
    "LibraryTrack",
    "MergeSummary",
    "ResultEntry",
    "ResultsFile",
    "TrackResult",
    "analyze_library",
    "merge_results",
    "read_results",
    "scan_library",
]

STATUS_OK = "ok"
STATUS_FAILED = "failed"
Status = Literal["ok", "failed"]
#: Fields every line has, in the order they are written (the analysis follows on "ok" lines).
_RECORD_FIELDS = ("path", "sha256", "bytes", "mtime_ns", "status")
#: Provenance fields that must agree for results of one file to come from the same models.
_MODEL_IDENTITY = ("role", "name", "sha256")


# -- tracks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryTrack:
    """An audio file of the library and the name it has in the results.

    ``relative`` is the path relative to the folder it was found in (POSIX separators), or the
    path as given for a file named directly. It picks the track's shard, so the same library
    mounted elsewhere is split the same way.
    """

    path: Path
    relative: str


def scan_library(inputs: Sequence[str | os.PathLike[str]]) -> list[LibraryTrack]:
    """Audio files of folders (recursively, sorted) and files named directly, in the order given.

    Raises
    ------
    ConfigError
        An input is neither a file nor a folder.
    """
    tracks: list[LibraryTrack] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            tracks.extend(LibraryTrack(p, p.relative_to(path).as_posix()) for p in found)
        elif path.exists():
            tracks.append(LibraryTrack(path, path.as_posix()))
        else:
            raise ConfigError(f"{item}: no such file or folder")
    return tracks


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackResult:
    """One line of a results file: a track's analysis, or why it has none.

    ``analysis`` is the analysis JSON object (:meth:`m2e_core.types.Analysis.to_dict`) of an
    ``"ok"`` result, kept as read so that merging never changes a result.
    """

    path: str
    sha256: str | None
    status: Status
    size: int | None = None
    mtime_ns: int | None = None
    analysis: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "bytes": self.size,
                                "mtime_ns": self.mtime_ns, "status": self.status}
        if self.status == STATUS_OK:
            data.update((key, value) for key, value in (self.analysis or {}).items() if key not in data)
        else:
            data["error"] = self.error
        return data

    def to_line(self) -> bytes:
        """The JSON line, newline included. Raises ``ValueError`` for values JSON cannot hold (NaN)."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, analysis: bool = True) -> TrackResult:
        """Read a line's object back (without its analysis when ``analysis`` is false).

        Raises ``ValueError`` when ``data`` is not a result record.
        """
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        missing = [name for name in ("path", "sha256", "status") if name not in data]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        status = data["status"]
        if status not in (STATUS_OK, STATUS_FAILED):
            raise ValueError(f"unknown status {status!r}")
        if not isinstance(data["path"], str) or not (data["sha256"] is None or isinstance(data["sha256"], str)):
            raise ValueError("path and sha256 must be strings")
        kept = {key: value for key, value in data.items() if key not in _RECORD_FIELDS} \
            if status == STATUS_OK and analysis else None
        return cls(data["path"], data["sha256"], status, _optional_int(data.get("bytes")),
                   _optional_int(data.get("mtime_ns")), kept,
                   None if status == STATUS_OK else str(data.get("error", "")))

    @property
    def key(self) -> str:
        """What identifies the track across runs: its content hash (its path when it had none)."""
        return self.sha256 if self.sha256 else f"path:{self.path}"

    def to_analysis(self):
        """The :class:`~m2e_core.types.Analysis` of an ``"ok"`` result."""
        from .types import Analysis

        if self.status != STATUS_OK or self.analysis is None:
            raise ConfigError(f"{self.path} has no analysis: {self.error}")
        return Analysis.from_dict(dict(self.analysis))


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ResultEntry:
    """Where a result sits in its file (its bytes are read again only when merging)."""

    result: TrackResult
    file: Path
    offset: int
    length: int
    #: The ``provenance`` list of an ``"ok"`` line (``None`` for failures).
    provenance: tuple[tuple[Any, ...], ...] | None = field(default=None, compare=False)


def _scan(path: Path, handle: Any, *, analyses: bool) -> tuple[list[ResultEntry], int, bytes]:
    """Entries of the complete lines of a binary stream, the length they span, and the torn rest."""
    entries: list[ResultEntry] = []
    offset = 0
    for number, raw in enumerate(handle, start=1):
        if not raw.endswith(b"\n"):
            return entries, offset, raw
        if raw.strip():
            try:
                parsed = json.loads(raw)
                result = TrackResult.from_dict(parsed, analysis=analyses)
            except (ValueError, UnicodeDecodeError) as error:
                raise ConfigError(
                    f"{path}: line {number} is not a result record ({error}); the file was edited or "
                    "damaged: fix or delete that line, or use another output file"
                ) from error
            entries.append(ResultEntry(result, path, offset, len(raw) - 1, _model_identity(parsed)))
        offset += len(raw)
    return entries, offset, b""


def _model_identity(data: Mapping[str, Any]) -> tuple[tuple[Any, ...], ...] | None:
    if data.get("status") != STATUS_OK:
        return None
    return tuple(tuple(item.get(name) for name in _MODEL_IDENTITY)
                 for item in data.get("provenance") or () if isinstance(item, Mapping))


def read_results(path: str | os.PathLike[str], *, analyses: bool = True) -> list[ResultEntry]:
    """Every complete line of a results file, without changing it (a torn last line is left out).

    Parameters
    ----------
    path : str or Path
        A results file (or a shard file) written by :func:`analyze_library` or :func:`merge_results`.
    analyses : bool
        Keep each ``"ok"`` line's analysis (``False`` reads only what resuming and merging need,
        in memory that does not grow with the analyses' size).

    Raises
    ------
    ConfigError
        A complete line is not a result record (the file was edited or damaged).

    Examples
    --------
    >>> ok = [e.result.to_analysis() for e in read_results("results.jsonl") if e.result.status == "ok"]  # doctest: +SKIP
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return _scan(path, handle, analyses=analyses)[0]
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from error


class ResultsFile:
    """A results file open for appending, locked so that one process writes it at a time.

    Use as a context manager; :attr:`entries` are the lines it held when opened. A torn last
    line (a crash while it was written) is repaired on opening: removed, or completed with its
    newline when it was whole; :attr:`repaired` says which.

    Raises
    ------
    ConfigError
        Another process is writing the file, it cannot be opened, or a line is damaged.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: list[ResultEntry] = []
        self.repaired: str | None = None
        self._fd: int | None = None
        self._size = 0

    def __enter__(self) -> ResultsFile:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> ResultsFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as error:
            raise ConfigError(f"cannot open {self.path} for writing: {error.strerror or error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            raise ConfigError(
                f"{self.path} is being written by another m2e process; wait for it, or choose another --out"
            ) from error
        self._fd = fd
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                self.entries, complete, tail = _scan(self.path, handle, analyses=False)
            if tail:
                complete = self._repair(complete, tail)
            self._size = complete
        except BaseException:
            self.close()
            raise
        return self

    def _repair(self, complete: int, tail: bytes) -> int:
        """Make the file end with a whole line again; returns its new length."""
        try:
            parsed = json.loads(tail)
            result = TrackResult.from_dict(parsed, analysis=False)
        except (ValueError, UnicodeDecodeError):
            os.ftruncate(self._fd, complete)
            os.fsync(self._fd)
            self.repaired = f"removed a torn last line ({len(tail)} bytes)"
            return complete
        _write_all(self._fd, b"\n")
        os.fsync(self._fd)
        self.entries.append(ResultEntry(result, self.path, complete, len(tail), _model_identity(parsed)))
        self.repaired = "completed a last line that lacked its newline"
        return complete + len(tail) + 1

    def append(self, result: TrackResult) -> ResultEntry:
        """Write one line and make it durable (``fsync``) before returning."""
        if self._fd is None:
            raise ConfigError(f"{self.path} is not open")
        line = result.to_line()
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as error:  # a disk full: the line may be torn, the next run repairs it
            raise ConfigError(f"cannot write to {self.path}: {error.strerror or error}") from error
        entry = ResultEntry(result, self.path, self._size, len(line) - 1)
        self._size += len(line)
        return entry

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- resuming -----------------------------------------------------------------------------------


class _ResumeIndex:
    """What earlier runs did: results by content hash, and hashes by (path, size, mtime)."""

    def __init__(self, retry_failed: bool) -> None:
        self.retry_failed = retry_failed
        self.status: dict[str, str] = {}
        self.by_stat: dict[tuple[str, int, int], str] = {}
        self.models: tuple[tuple[Any, ...], ...] | None = None
        self.models_file: Path | None = None
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def add(self, entry: ResultEntry) -> None:
        result = entry.result
        if result.sha256 is None:
            return
        if self.status.get(result.sha256) != STATUS_OK:
            self.status[result.sha256] = result.status
        if result.size is not None and result.mtime_ns is not None:
            self.by_stat[(result.path, result.size, result.mtime_ns)] = result.sha256
        if entry.provenance is not None and self.models is None:
            self.models, self.models_file = entry.provenance, entry.file

    def done(self, digest: str) -> bool:
        status = self.status.get(digest)
        return status == STATUS_OK or (status == STATUS_FAILED and not self.retry_failed)

    def claim(self, digest: str) -> bool:
        """Whether this run should analyse ``digest`` now (not done, not taken by another worker)."""
        with self._lock:
            if self.done(digest) or digest in self._in_flight:
                return False
            self._in_flight.add(digest)
            return True


def _check_same_models(index: _ResumeIndex, models: tuple[tuple[Any, ...], ...]) -> None:
    if index.models is None or index.models == models:
        return

    def by_role(items: tuple[tuple[Any, ...], ...]) -> dict[str, str]:
        return {str(role): str(name) + (f" ({str(sha)[:12]})" if sha else "") for role, name, sha in items}

    before, now = by_role(index.models), by_role(models)
    changes = "; ".join(f"{role}: {before.get(role, 'none')} there, {now.get(role, 'none')} now"
                        for role in sorted(set(before) | set(now)) if before.get(role) != now.get(role))
    raise ConfigError(
        f"{index.models_file} holds results of other models ({changes}); resume with the options of the "
        "first run, or write to another --out"
    )


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibrarySummary:
    """What one process's library run did."""

    output: Path
    total: int
    analysed: int
    failed: int
    already_done: int
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()
    repaired: str | None = None

    @property
    def tracks_per_hour(self) -> float:
        return 3600.0 * self.analysed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Work:
    track: LibraryTrack
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    prepared: object | None = None
    error: str | None = None
    skipped: bool = False


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(error, M2EError):
        return text or type(error).__name__
    return f"unexpected {type(error).__name__}" + (f": {text}" if text else "")


def _reason(track: LibraryTrack, error: BaseException) -> str:
    """``relative/path.mp3: what went wrong``, in one line (audio errors start with the file's name)."""
    text = _one_line(error)
    name = f"{track.path.name}: "
    return f"{track.relative}: {text.removeprefix(name)}"


def _default_workers(analyzer: object) -> int:
    device = getattr(getattr(analyzer, "device", None), "type", "cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores - 1)) if device == "cuda" else 1


def analyze_library(
    analyzer: object,
    tracks: Sequence[LibraryTrack],
    output: str | os.PathLike[str],
    *,
    context: DistributedContext | None = None,
    workers: int | None = None,
    worker_threads: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> LibrarySummary:
    """Analyse this process's share of ``tracks`` into ``output`` (or its shard file), resuming.

    Parameters
    ----------
    analyzer : Analyzer
        Loaded models (:class:`m2e_core.pipeline.Analyzer`); its ``prepare`` (decode, chords,
        key) runs in ``workers`` threads, its ``complete`` (encoder, heads) in this thread.
    tracks : sequence of LibraryTrack
        The whole library (:func:`scan_library`); this process takes its shard of it.
    output : str or Path
        The results file. When the context has several ranks, this rank writes
        ``output.shard-I-of-N`` (:func:`m2e_core.sharding.shard_file`) instead.
    context : DistributedContext, optional
        Rank and world size; default from the ``torchrun`` environment.
    workers : int, optional
        Threads preparing tracks ahead of the encoder; default 1 on a CPU (its cores are busy
        with the encoder), up to 4 on a GPU.
    worker_threads : int
        Torch intra-op threads of each worker (the encoder keeps the process's setting).
    retry_failed : bool
        Analyse again the tracks an earlier run recorded as failed.
    progress : bool
        Show one progress bar (tracks done, failures, ETA) on stderr.
    warn : callable, optional
        Called once with each distinct analysis warning (default: printed on stderr).

    Returns
    -------
    LibrarySummary

    Raises
    ------
    ConfigError
        The output is being written by another process, is damaged, or holds results of
        other models.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    context = context or DistributedContext.from_environment()
    mine = context.shard(list(tracks), key=lambda track: track.relative)
    own_file = context.shard_file(output)
    index = _ResumeIndex(retry_failed)
    with ResultsFile(own_file) as results:
        for entry in results.entries:
            index.add(entry)
        # Results of other shards and earlier merges: a file moved into this shard is not redone.
        for other in [Path(output), *shard_files(output)]:
            if other != own_file and other.is_file():
                for entry in read_results(other, analyses=False):
                    index.add(entry)
        provenance = tuple(tuple(getattr(item, name) for name in _MODEL_IDENTITY)
                           for item in analyzer.provenance())
        _check_same_models(index, provenance)

        todo: list[_Work] = []
        failures: list[tuple[str, str]] = []
        already = 0
        for track in mine:
            work = _Work(track)
            try:
                stat = track.path.stat()
            except OSError as error:
                work.error = f"{track.relative}: cannot read the file ({error.strerror or error})"
                todo.append(work)
                continue
            work.size, work.mtime_ns = stat.st_size, stat.st_mtime_ns
            known = index.by_stat.get((track.relative, stat.st_size, stat.st_mtime_ns))
            if known is not None and index.done(known):
                already += 1
                continue
            todo.append(work)

        analysed = failed = 0
        said: set[str] = set()
        say = warn or (lambda text: tqdm.write(f"warning: {text}", file=_stderr()))
        bar = tqdm(total=len(todo), desc=_bar_name(context), unit="track", file=_stderr(),
                   disable=not progress or not todo, dynamic_ncols=True)

        def record(work: _Work, analysis: object | None, error: str | None) -> None:
            nonlocal analysed, failed
            if analysis is not None:
                result = TrackResult(work.track.relative, work.sha256, STATUS_OK, work.size, work.mtime_ns,
                                     analysis.to_dict())
                for text in analysis.warnings:
                    if text not in said:
                        said.add(text)
                        say(text)
                try:
                    results.append(result)
                except ValueError as bad:  # a value JSON cannot hold: a failure of this track
                    error = f"the analysis holds values JSON cannot store ({bad})"
                else:
                    analysed += 1
            if error is not None:
                results.append(TrackResult(work.track.relative, work.sha256, STATUS_FAILED, work.size,
                                           work.mtime_ns, error=error))
                failures.append((work.track.relative, error))
                failed += 1
            bar.update(1)
            bar.set_postfix_str(f"failed {failed}" + (f", done before {already}" if already else ""), refresh=False)

        try:
            for work in _prepared(analyzer, todo, index, workers or _default_workers(analyzer), worker_threads):
                if work.skipped:  # same content as a track done before, or in flight: nothing to do
                    already += 1
                    bar.total -= 1
                    bar.refresh()
                    continue
                if work.error is not None:
                    record(work, None, work.error)
                    continue
                try:
                    analysis = analyzer.complete(work.prepared)
                except Exception as error:  # noqa: BLE001 - recorded with its reason; the run goes on
                    record(work, None, _reason(work.track, error))
                else:
                    record(work, analysis, None)
                work.prepared = None
        finally:
            bar.close()
    return LibrarySummary(own_file, len(mine), analysed, failed, already, time.perf_counter() - started,
                          tuple(failures), results.repaired)


def _stderr():
    import sys

    return sys.stderr


def _bar_name(context: DistributedContext) -> str:
    return f"analysing (shard {context.rank}/{context.world_size})" if context.distributed else "analysing"


_END = object()


def _prepared(analyzer: object, todo: list[_Work], index: _ResumeIndex, workers: int,
              worker_threads: int) -> Iterator[_Work]:
    """``todo`` hashed and prepared by worker threads, in the order they finish.

    At most ``workers + 1`` tracks are held at once (prepared or in preparation), so memory
    stays bounded whatever the library's size. The threads are daemons: an interrupted run
    exits at once, with every finished track already on disk.
    """
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    ready: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(workers + 1)
    stop = threading.Event()
    for work in todo:
        tasks.put(work)
    for _ in range(workers):
        tasks.put(_END)

    def prepare(work: _Work) -> None:
        if work.error is not None:
            return
        try:
            work.sha256 = file_sha256(work.track.path)
        except OSError as error:
            work.error = f"{work.track.relative}: cannot read the file ({error.strerror or error})"
            return
        if not index.claim(work.sha256):
            work.skipped = True
            return
        try:
            work.prepared = analyzer.prepare(work.track.path)
        except Exception as error:  # noqa: BLE001 - recorded with its reason; the run goes on
            work.error = _reason(work.track, error)

    def run() -> None:
        try:
            import torch

            torch.set_num_threads(max(1, worker_threads))  # this thread's own setting
            while not stop.is_set():
                slots.acquire()
                work = tasks.get()
                if work is _END or stop.is_set():
                    return
                prepare(work)
                ready.put(work)
        finally:
            ready.put(_END)  # whatever happened, the consumer stops waiting for this thread

    threads = [threading.Thread(target=run, name=f"m2e-prepare-{number}", daemon=True) for number in range(workers)]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            try:
                item = ready.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is _END:
                running -= 1
                continue
            try:
                yield item
            finally:
                slots.release()
    finally:
        stop.set()
        for _ in threads:
            slots.release()


# -- merging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge_results` wrote."""

    output: Path
    inputs: int
    lines_read: int
    ok: int
    failed: int
    duplicates: int


def _better(candidate: ResultEntry, current: ResultEntry) -> bool:
    a, b = candidate.result, current.result
    if a.status != b.status:
        return a.status == STATUS_OK
    return a.path < b.path


def merge_results(inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str]) -> MergeSummary:
    """Join results files into one, one line per track, in a deterministic order.

    Tracks are deduplicated by content hash: an ``"ok"`` result wins over a failure, and among
    equals the smallest path. A failure without a hash (an unreadable file) is dropped when the
    same path has an ``"ok"`` result. Lines are copied byte for byte, sorted by path, then hash.
    ``output`` is replaced atomically and may be one of the inputs.

    Raises
    ------
    ConfigError
        No inputs, an input is missing, or a line is damaged.
    """
    paths = [Path(item) for item in inputs]
    if not paths:
        raise ConfigError("nothing to merge: name the shard files (e.g. results.jsonl.shard-*)")
    chosen: dict[str, ResultEntry] = {}
    ok_paths: set[str] = set()
    lines = 0
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: no such results file")
        for entry in read_results(path, analyses=False):
            lines += 1
            key = entry.result.key
            if key not in chosen or _better(entry, chosen[key]):
                chosen[key] = entry
            if entry.result.status == STATUS_OK:
                ok_paths.add(entry.result.path)
    kept = [entry for entry in chosen.values()
            if not (entry.result.sha256 is None and entry.result.path in ok_paths)]
    kept.sort(key=lambda entry: (entry.result.path, entry.result.sha256 or ""))
    handles: dict[Path, Any] = {}
    with contextlib.ExitStack() as stack, atomic_path(output) as temporary:
        with temporary.open("wb") as out:
            for entry in kept:
                if entry.file not in handles:
                    handles[entry.file] = stack.enter_context(entry.file.open("rb"))
                handle = handles[entry.file]
                handle.seek(entry.offset)
                out.write(handle.read(entry.length) + b"\n")
            out.flush()
            os.fsync(out.fileno())
    ok = sum(1 for entry in kept if entry.result.status == STATUS_OK)
    return MergeSummary(Path(output), len(paths), lines, ok, len(kept) - ok, lines - len(kept))
