"""The label store: labels that belong to someone, kept in a real database.

Every label is owned by an :class:`~m2e_core.labels.Identity` (a Hugging Face account signed
in through the app, or a typed annotator name) and only its owner reads it back; the operator
names the few identities that may read everyone's (:class:`LabelPolicy`). The labelled audio is
kept with the labels, by content hash, only while a label refers to it, within quotas.

Where the labels live
---------------------
``M2E_LABELS_DB``
    A database URL (:func:`m2e_core.labeldb.parse_database_url`):
    ``postgresql://user:password@host:port/database`` for a team, or ``sqlite:///path``.
    Unset: SQLite in the store directory, ``<directory>/labels.sqlite3``.
``M2E_LABELS_DIR``
    The store directory (default ``$M2E_HOME/labels``, else ``~/.cache/m2e/labels``).

A directory written by earlier versions (``labels.jsonl`` and ``audio/``) is migrated on first
open, whichever database is used: every complete record, with its audio when the copy is
there and matches its hash, under the typed (``local``) identity of its annotator. Migration is
idempotent (each record remembers the line it came from), and afterwards the old files are
renamed ``labels.jsonl.migrated`` and ``audio.migrated/`` (nothing is deleted).

Who may read what (:class:`LabelPolicy`, from the environment)
--------------------------------------------------------------
``M2E_LABEL_ADMINS``
    Comma-separated identities that may read and export every annotator's labels (scope
    ``"all"``): ``alice`` is the Hugging Face account alice (``hf:alice`` too); ``local:carol``
    a typed name, for a tool without sign-in.
``M2E_LABELS_TEAM``
    ``1``: the operator declares a private team tool: everyone may use scope ``"all"``, and
    typed names are accepted even on a Space.
``SPACE_ID``
    Set by Hugging Face on a Space: typed (``local``) identities are refused there unless
    ``M2E_LABELS_TEAM=1``, so labels on a public Space always belong to a signed-in account.

Quotas
------
``M2E_LABELS_USER_AUDIO_MB`` (default 200)
    Stored audio per annotator: the distinct recordings their labels refer to.
``M2E_LABELS_STORE_AUDIO_MB`` (default 5000)
    Stored audio in the whole store. A recording new to the annotator counts as new here
    even when someone else stored the same bytes, so no answer tells whether another user
    has a file.
``M2E_LABELS_USER_LABELS`` (default 10000)
    Labels (corrections included) per annotator.

Deleting labels (:meth:`LabelStore.delete`) removes the audio no remaining label refers to.

Exports
-------
Streamed from one consistent snapshot straight into the output file (written beside it, then
renamed into place): a manifest (:mod:`m2e_core.labels` format) or a zip bundle. Paths never
name the server's files. In a bundle, the audio is ``audio/<sha256><suffix>`` beside the
manifest, and the manifest's paths are those names (unzip anywhere and train). In a manifest
without audio, ``path`` is the recording's original file name (its last path component, as the
user gave it), or the track id (its sha256) when that name is unusable; place the files beside
the manifest to train on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PureWindowsPath
from typing import Any

from .errors import ConfigError, LabelError
from .files import atomic_path, file_sha256
from .labeldb import CHUNK_BYTES, Database, DatabaseURL, Transaction, parse_database_url
from .labels import (
    Identity,
    LabelRecord,
    ManifestRow,
    ManifestWriter,
    default_labels_dir,
    validate_label,
)

__all__ = ["EXPORT_FORMATS", "SCOPES", "LabelPolicy", "LabelStore", "StoreUsage"]

#: Environment variable with the label database URL.
LABELS_DB_ENV = "M2E_LABELS_DB"
#: Environment variable listing the identities that may use scope "all".
LABEL_ADMINS_ENV = "M2E_LABEL_ADMINS"
#: Environment variable declaring a private team tool (everyone may use scope "all").
LABELS_TEAM_ENV = "M2E_LABELS_TEAM"
#: Environment variables of the quotas.
USER_AUDIO_MB_ENV = "M2E_LABELS_USER_AUDIO_MB"
STORE_AUDIO_MB_ENV = "M2E_LABELS_STORE_AUDIO_MB"
USER_LABELS_ENV = "M2E_LABELS_USER_LABELS"
#: Set by Hugging Face on a Space.
SPACE_ENV = "SPACE_ID"
#: The SQLite file in a store directory.
DB_FILE_NAME = "labels.sqlite3"
#: The record file of stores written by earlier versions.
LEGACY_FILE_NAME = "labels.jsonl"

#: Who a read or an export covers: the requester's own labels, or every annotator's.
SCOPES = ("mine", "all")
#: What :meth:`LabelStore.export` writes.
EXPORT_FORMATS = ("csv", "jsonl", "zip")

MB = 1_000_000
_PAGE = 500
_MIGRATION_BATCH = 200
_ZIP64_BYTES = (1 << 31) - 1
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={environ[name]!r}: use 1 or 0")


def _env_amount(environ: Mapping[str, str], name: str, default: float, scale: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return int(default * scale)
    try:
        value = float(text)
    except ValueError as error:
        raise ConfigError(f"{name}={text!r}: must be a number") from error
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={text!r}: must be a positive number")
    return int(value * scale)


def _parse_admins(text: str) -> frozenset[str]:
    keys = set()
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        provider, _, name = entry.partition(":") if entry.startswith(("hf:", "local:")) else ("hf", "", entry)
        try:
            keys.add(Identity(name.strip(), provider).key)
        except LabelError as error:
            raise ConfigError(f"{LABEL_ADMINS_ENV}: bad entry {entry!r} ({error})") from error
    return frozenset(keys)


@dataclass(frozen=True)
class LabelPolicy:
    """What the operator allows (see the module docstring; :meth:`from_env` reads it).

    Attributes
    ----------
    admins : frozenset of str
        :attr:`Identity.key` values (``hf:alice``, ``local:carol``) that may use scope ``"all"``.
    team : bool
        A private team tool: everyone may use scope ``"all"``.
    allow_local : bool
        Typed (``local``) identities are accepted.
    user_audio_bytes, store_audio_bytes : int
        Stored audio allowed per annotator and in the whole store.
    user_labels : int
        Labels allowed per annotator.
    """

    admins: frozenset[str] = field(default_factory=frozenset)
    team: bool = False
    allow_local: bool = True
    user_audio_bytes: int = 200 * MB
    store_audio_bytes: int = 5000 * MB
    user_labels: int = 10_000

    def __post_init__(self) -> None:
        for name in ("user_audio_bytes", "store_audio_bytes", "user_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"label policy: {name} must be a positive integer, got {value!r}")
        admins = frozenset(self.admins)
        for key in admins:
            provider, _, name = str(key).partition(":")
            try:
                Identity(name, provider)
            except LabelError as error:
                raise ConfigError(f"label policy: admins are identity keys such as 'hf:alice', got {key!r}") from error
        object.__setattr__(self, "admins", admins)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LabelPolicy:
        """The policy the environment describes (``os.environ`` by default).

        Raises
        ------
        ConfigError
            A variable that does not parse, named with its value.
        """
        env = os.environ if environ is None else environ
        team = _env_flag(env, LABELS_TEAM_ENV)
        return cls(
            admins=_parse_admins(env.get(LABEL_ADMINS_ENV, "")),
            team=team,
            allow_local=team or not env.get(SPACE_ENV),
            user_audio_bytes=_env_amount(env, USER_AUDIO_MB_ENV, 200, MB),
            store_audio_bytes=_env_amount(env, STORE_AUDIO_MB_ENV, 5000, MB),
            user_labels=_env_amount(env, USER_LABELS_ENV, 10_000, 1),
        )

    def may_read_all(self, identity: Identity) -> bool:
        """Whether ``identity`` may read and export every annotator's labels."""
        return self.team or identity.key in self.admins


@dataclass(frozen=True)
class StoreUsage:
    """What one annotator has stored, and what they may store.

    Attributes
    ----------
    labels, labels_limit : int
        Labels saved (corrections included) and the most allowed.
    audio_bytes, audio_limit : int
        Bytes of distinct recordings their labels refer to, and the most allowed.
    """

    labels: int
    labels_limit: int
    audio_bytes: int
    audio_limit: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _audio_suffix(*names: str) -> str:
    for name in names:
        suffix = PureWindowsPath(name).suffix.lower()
        if _SUFFIX.fullmatch(suffix):
            return suffix
    return ""


def _plain_name(record: LabelRecord) -> str:
    """The recording's file name as the user gave it (never a directory), else its track id."""
    name = PureWindowsPath(record.source).name.strip()  # splits on both / and \
    if not name or name in (".", "..") or any(c in name for c in "\r\n"):
        return record.track_id
    return name


def _megabytes(count: int) -> str:
    """A byte count for messages: ``1.5 GB``, ``200.0 MB``, ``36.1 kB``, ``512 bytes``."""
    for unit, scale in (("GB", 1000 * MB), ("MB", MB), ("kB", 1000)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


class LabelStore:
    """Labels owned by identities, in SQLite (default) or PostgreSQL (see the module docstring).

    Safe for many writers at once, in threads and in processes: each call is one transaction.
    Nothing is read from or written to the database until the first call.

    Parameters
    ----------
    directory : str or Path, optional
        The store directory: the SQLite file when no database URL is given, and where a
        ``labels.jsonl`` store of earlier versions is migrated from. Default
        :func:`~m2e_core.labels.default_labels_dir`.
    database : str, optional
        A database URL; default ``$M2E_LABELS_DB``, else SQLite in ``directory``.
    policy : LabelPolicy, optional
        Default :meth:`LabelPolicy.from_env`.

    Examples
    --------
    >>> store = LabelStore("/tmp/m2e-labels")  # doctest: +SKIP
    >>> me = store.identify(typed_name="ann")  # doctest: +SKIP
    >>> store.append(make_label(track_id=file_sha256("song.flac"), source="song.flac", valence=6.5,
    ...                         arousal=3.0, tags=["calm"], annotator=me.name),
    ...              requester=me, audio="song.flac")  # doctest: +SKIP
    >>> store.export("labels.zip", requester=me, scope="mine")  # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        database: str | None = None,
        policy: LabelPolicy | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_labels_dir()
        text = database if database is not None else (os.environ.get(LABELS_DB_ENV) or "").strip()
        url = parse_database_url(text) if text else DatabaseURL("sqlite", path=self.directory / DB_FILE_NAME)
        self.policy = policy if policy is not None else LabelPolicy.from_env()
        self._db = Database(url)
        self._opened = False
        self._open_lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the labels are, for logs (a PostgreSQL URL without its password)."""
        return self._db.url.redacted()

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.engine

    def __repr__(self) -> str:
        return f"LabelStore({self.location!r})"

    def close(self) -> None:
        """Close the idle database connections (the store reopens them when used again)."""
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- identities ------------------------------------------------------------------------

    def identify(self, *, hf_username: str | None = None, typed_name: str | None = None) -> Identity:
        """The identity a request speaks for: the signed-in Hugging Face account, else the typed name.

        Raises
        ------
        LabelError
            No name, or only a typed one where the policy needs a signed-in account (a Space).
        """
        if hf_username is not None and hf_username.strip():
            return Identity.huggingface(hf_username)
        if not self.policy.allow_local:
            raise LabelError("sign in with Hugging Face to save or export labels here")
        if typed_name is None or not typed_name.strip():
            raise LabelError("type your name in the annotator field to save or export labels")
        return Identity.local(typed_name)

    def _check_requester(self, requester: object) -> Identity:
        if not isinstance(requester, Identity):
            raise TypeError(f"requester must be an m2e_core.labels.Identity, got {type(requester).__name__}")
        if requester.provider == "local" and not self.policy.allow_local:
            raise LabelError("sign in with Hugging Face to save or export labels here")
        return requester

    def _check_scope(self, requester: object, scope: str) -> Identity:
        identity = self._check_requester(requester)
        if scope not in SCOPES:
            raise LabelError(f"unknown label scope {scope!r}: use 'mine' or 'all'")
        if scope == "all" and not self.policy.may_read_all(identity):
            raise LabelError("only the label admins may see every annotator's labels: choose your own labels")
        return identity

    # -- opening and migration -------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            return
        with self._open_lock:
            if not self._opened:
                self._migrate_legacy()
                self._opened = True

    def _migrate_legacy(self) -> None:
        legacy = self.directory / LEGACY_FILE_NAME
        try:
            raw = legacy.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            raise LabelError(f"cannot read the old label file {legacy.name}: {error}") from error
        items: list[tuple[LabelRecord, str]] = []
        seen: dict[bytes, int] = {}
        torn: list[int] = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                torn.append(number)  # a writer of the old format crashed mid-line
                continue
            if not isinstance(data, dict):
                raise LabelError(f"{legacy.name}:{number}: not a label record; fix or remove the line")
            try:
                record = LabelRecord.from_dict(data)
            except LabelError as error:
                raise LabelError(f"{legacy.name}:{number}: {error}; fix or remove the line") from error
            digest = hashlib.sha256(line.strip()).digest()
            seen[digest] = seen.get(digest, 0) + 1
            items.append((record, f"jsonl:{digest.hex()}:{seen[digest]}"))
        if torn:
            warnings.warn(f"{legacy.name}: skipped {len(torn)} incomplete line(s) {torn[:10]} "
                          "(writes interrupted by a crash)", RuntimeWarning, stacklevel=4)
        missing: list[str] = []
        for first in range(0, len(items), _MIGRATION_BATCH):
            batch = items[first:first + _MIGRATION_BATCH]
            with self._db.transaction(write=True) as tx:
                marks = ", ".join("?" for _ in batch)
                done = {row[0] for row in tx.execute(f"SELECT origin FROM records WHERE origin IN ({marks})",
                                                     [origin for _, origin in batch])}
                for record, origin in batch:
                    if origin in done:
                        continue  # migrated before (by this or another process)
                    audio_sha = self._migrate_audio(tx, record, missing)
                    annotator_id = self._annotator_id(tx, Identity.local(record.annotator), create=True)
                    _insert_record(tx, annotator_id, record, audio_sha, origin)
        with self._db.transaction(write=True) as tx:
            _prune(tx)
        if missing:
            warnings.warn(f"{legacy.name}: {len(missing)} label(s) migrated without audio (copy missing or "
                          f"changed: {', '.join(sorted(set(missing))[:5])})", RuntimeWarning, stacklevel=4)
        for name in (LEGACY_FILE_NAME, "audio"):
            old = self.directory / name
            if old.exists():
                target = self.directory / f"{name}.migrated"
                number = 1
                while target.exists():
                    number += 1
                    target = self.directory / f"{name}.migrated-{number}"
                try:
                    old.rename(target)
                except FileNotFoundError:
                    pass  # another process migrated the same directory at the same time
        (self.directory / f"{LEGACY_FILE_NAME}.lock").unlink(missing_ok=True)

    def _migrate_audio(self, tx: Transaction, record: LabelRecord, missing: list[str]) -> str | None:
        if record.audio_path is None:
            return None
        if tx.one("SELECT 1 FROM blobs WHERE sha256 = ?", (record.track_id,)) is not None:
            return record.track_id
        copy = self.directory / record.audio_path
        try:
            if copy.is_file() and file_sha256(copy) == record.track_id:
                _store_blob(tx, copy, record.track_id, copy.stat().st_size, _audio_suffix(copy.name, record.source))
                return record.track_id
        except OSError:
            pass  # listed as missing below
        missing.append(record.audio_path)
        return None

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def _annotator_id(tx: Transaction, identity: Identity, *, create: bool) -> int | None:
        if create:
            tx.execute("INSERT INTO annotators (provider, name, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (provider, name) DO NOTHING", (identity.provider, identity.name, _now()))
        value = tx.scalar("SELECT id FROM annotators WHERE provider = ? AND name = ?",
                          (identity.provider, identity.name))
        return None if value is None else int(value)

    def append(
        self,
        record: LabelRecord,
        *,
        requester: Identity,
        audio: str | os.PathLike[str] | None = None,
    ) -> LabelRecord:
        """Save a label owned by ``requester``, with the recording it describes; return it as stored.

        Parameters
        ----------
        record : LabelRecord
            From :func:`~m2e_core.labels.make_label`; its annotator must be ``requester.name``.
        requester : Identity
            Who saves it (from :meth:`identify`).
        audio : str or Path, optional
            The recording (its sha256 must be ``record.track_id``), stored once per content and
            counted against the quotas. Without it, the label refers to ``requester``'s stored
            copy of the track when there is one, else keeps no audio (and a ``record.audio_path``
            is then refused: another annotator's copy is never lent).

        Returns
        -------
        LabelRecord
            Normalised, with ``audio_path`` the recording's name in bundles
            (``audio/<sha256><suffix>``) or ``None``.

        Raises
        ------
        LabelError
            An invalid label, a refused identity, audio that is not the track, a quota that
            would be exceeded, or a database failure. Nothing is stored then.
        """
        identity = self._check_requester(requester)
        record = validate_label(record)
        if record.annotator != identity.name:
            raise LabelError(f"the label is by {record.annotator!r} but {identity.name!r} is saving it")
        size = 0
        suffix = ""
        source_path: Path | None = None
        if audio is not None:
            source_path = Path(audio)
            if not source_path.is_file():
                raise LabelError(f"cannot keep the audio for labelling: {source_path.name} does not exist")
            size = source_path.stat().st_size
            if size == 0:
                raise LabelError(f"cannot keep the audio for labelling: {source_path.name} is empty")
            if size > self.policy.user_audio_bytes:
                raise LabelError(f"{source_path.name} is {_megabytes(size)}, more than the "
                                 f"{_megabytes(self.policy.user_audio_bytes)} of audio an annotator may store")
            if file_sha256(source_path) != record.track_id:
                raise LabelError(f"{source_path.name} is not the labelled recording (its sha256 is not the track id)")
            suffix = _audio_suffix(source_path.name, record.source)
        self._open()
        with self._db.transaction(write=True) as tx:
            annotator_id = self._annotator_id(tx, identity, create=True)
            count = int(tx.scalar("SELECT COUNT(*) FROM records WHERE annotator_id = ?", (annotator_id,)))
            if count >= self.policy.user_labels:
                raise LabelError(f"{identity.name} has saved {count} labels, the most allowed: delete some first")
            mine = tx.one("SELECT 1 FROM records WHERE annotator_id = ? AND audio_sha256 = ? LIMIT 1",
                          (annotator_id, record.track_id)) is not None
            audio_sha: str | None = record.track_id if mine else None
            if source_path is not None and not mine:
                self._check_quota(tx, annotator_id, identity, size, source_path.name)
                if tx.one("SELECT 1 FROM blobs WHERE sha256 = ?", (record.track_id,)) is None:
                    _store_blob(tx, source_path, record.track_id, size, suffix)
                audio_sha = record.track_id
            elif audio_sha is None and record.audio_path is not None:
                raise LabelError(f"attach the audio of {record.source!r}: {identity.name} has no stored copy")
            _insert_record(tx, annotator_id, record, audio_sha, None)
            if audio_sha is not None:
                suffix = str(tx.scalar("SELECT suffix FROM blobs WHERE sha256 = ?", (audio_sha,)))
        return replace(record, audio_path=None if audio_sha is None else f"audio/{audio_sha}{suffix}")

    def _check_quota(self, tx: Transaction, annotator_id: int, identity: Identity, size: int, name: str) -> None:
        used = int(tx.scalar(
            "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE sha256 IN "
            "(SELECT audio_sha256 FROM records WHERE annotator_id = ?)", (annotator_id,)))
        if used + size > self.policy.user_audio_bytes:
            raise LabelError(
                f"storing {name} ({_megabytes(size)}) would take {identity.name}'s stored audio to "
                f"{_megabytes(used + size)}, over the {_megabytes(self.policy.user_audio_bytes)} allowed: "
                "delete labels of recordings you no longer need")
        total = int(tx.scalar("SELECT COALESCE(SUM(size), 0) FROM blobs"))
        if total + size > self.policy.store_audio_bytes:
            raise LabelError(f"the label store is full ({_megabytes(self.policy.store_audio_bytes)} of audio): "
                             "ask the operator to make room")

    def delete(self, requester: Identity, *, track_id: str | None = None) -> int:
        """Delete ``requester``'s labels of one track (every track when ``None``); return how many.

        Audio no remaining label refers to is removed with them. Deleting every label also
        forgets the annotator.

        Raises
        ------
        LabelError
            A refused identity, or a database failure (then nothing is deleted).
        """
        identity = self._check_requester(requester)
        self._open()
        with self._db.transaction(write=True) as tx:
            annotator_id = self._annotator_id(tx, identity, create=False)
            if annotator_id is None:
                return 0
            where, params = "annotator_id = ?", [annotator_id]
            if track_id is not None:
                where, params = where + " AND track_id = ?", [*params, track_id]
            count = int(tx.scalar(f"SELECT COUNT(*) FROM records WHERE {where}", params))
            tx.execute(f"DELETE FROM records WHERE {where}", params)
            _prune(tx)
            if track_id is None:
                tx.execute("DELETE FROM annotators WHERE id = ?", (annotator_id,))
        self._db.vacuum()
        return count

    # -- reading ---------------------------------------------------------------------------

    def usage(self, requester: Identity) -> StoreUsage:
        """How many labels and how much audio ``requester`` has stored, and the limits."""
        identity = self._check_requester(requester)
        self._open()
        with self._db.transaction(write=False) as tx:
            annotator_id = self._annotator_id(tx, identity, create=False)
            labels = audio = 0
            if annotator_id is not None:
                labels = int(tx.scalar("SELECT COUNT(*) FROM records WHERE annotator_id = ?", (annotator_id,)))
                audio = int(tx.scalar(
                    "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE sha256 IN "
                    "(SELECT audio_sha256 FROM records WHERE annotator_id = ?)", (annotator_id,)))
        return StoreUsage(labels, self.policy.user_labels, audio, self.policy.user_audio_bytes)

    def labels(self, requester: Identity, *, scope: str = "mine", latest_only: bool = True) -> list[LabelRecord]:
        """The labels ``requester`` may see, in the order saved.

        Parameters
        ----------
        requester : Identity
            Who asks.
        scope : {"mine", "all"}
            Their own labels, or every annotator's (admins and team tools only).
        latest_only : bool
            Only the newest label per (track, segment, annotator): corrections replace
            earlier labels. ``False``: every label saved.

        Raises
        ------
        LabelError
            A refused scope or identity.
        """
        identity = self._check_scope(requester, scope)
        self._open()
        with self._db.transaction(write=False) as tx:
            where, params = _where(identity, scope)
            return list(_iter_records(tx, where, params, latest_only))

    def records(self) -> list[LabelRecord]:
        """Every label of every annotator, in the order saved: the operator's view, never a client's."""
        self._open()
        with self._db.transaction(write=False) as tx:
            return list(_iter_records(tx, "1 = 1", [], latest_only=False))

    # -- exports ---------------------------------------------------------------------------

    def export(
        self,
        path: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        requester: Identity,
        scope: str = "mine",
        latest_only: bool = True,
    ) -> Path:
        """Export the labels ``requester`` may see as a manifest or a zip bundle; return the file.

        Parameters
        ----------
        path : str or Path
            The file to write (replaced atomically).
        fmt : {"csv", "jsonl", "zip"}, optional
            Default: from the suffix of ``path``. ``"zip"`` is :meth:`export_bundle`.
        requester, scope, latest_only
            As in :meth:`labels`.

        Raises
        ------
        LabelError
            A refused scope or identity, an unknown format, or no labels to export.
        """
        target = Path(path)
        suffix = target.suffix.lower().lstrip(".")
        named = {"ndjson": "jsonl"}.get(suffix, suffix)
        kind = fmt or named
        if kind not in EXPORT_FORMATS:
            raise LabelError(f"unknown export format {fmt or target.name!r}: use csv, jsonl or zip")
        if named != kind:
            raise LabelError(f"a {kind} export needs a file name ending in .{kind}, got {target.name!r}")
        if kind == "zip":
            return self.export_bundle(target, requester=requester, scope=scope, latest_only=latest_only)
        identity = self._check_scope(requester, scope)
        self._open()
        with self._db.transaction(write=False) as tx:
            where, params = _where(identity, scope)
            optional = _optional_columns(tx, where, params, latest_only, identity, scope)
            with atomic_path(target) as temporary, temporary.open("w", encoding="utf-8", newline="") as handle:
                writer = ManifestWriter(handle, kind, optional)
                for number, record in enumerate(_iter_records(tx, where, params, latest_only), start=1):
                    writer.write(ManifestRow(_plain_name(record), record.valence, record.arousal, record.tags,
                                             record.start, record.end, record.segment, record.annotator),
                                 f"label {number}")
                handle.flush()
                os.fsync(handle.fileno())
        return target

    def export_bundle(
        self,
        zip_path: str | os.PathLike[str],
        *,
        requester: Identity,
        scope: str = "mine",
        latest_only: bool = True,
        manifest_name: str = "manifest.csv",
    ) -> Path:
        """A zip of a manifest and the audio it names (``audio/<sha256><suffix>``), streamed.

        Unpacked anywhere, ``read_manifest(<dir>/manifest.csv)`` rows resolve to the audio.
        A label whose audio is not stored keeps its file name (see the module docstring).

        Raises
        ------
        LabelError
            As :meth:`export`; ``manifest_name`` must be a plain ``.csv`` or ``.jsonl`` name.
        """
        if (Path(manifest_name).name != manifest_name
                or Path(manifest_name).suffix.lower() not in (".csv", ".jsonl")):
            raise LabelError(f"the bundle's manifest needs a plain .csv or .jsonl name, got {manifest_name!r}")
        kind = "csv" if manifest_name.lower().endswith(".csv") else "jsonl"
        identity = self._check_scope(requester, scope)
        self._open()
        target = Path(zip_path)
        stamp = datetime.now(timezone.utc).timetuple()[:6]
        with self._db.transaction(write=False) as tx:
            where, params = _where(identity, scope)
            optional = _optional_columns(tx, where, params, latest_only, identity, scope)
            with atomic_path(target) as temporary, zipfile.ZipFile(temporary, "w") as archive:
                info = zipfile.ZipInfo(manifest_name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
                    writer = ManifestWriter(handle, kind, optional)
                    for number, record in enumerate(_iter_records(tx, where, params, latest_only), start=1):
                        path = record.audio_path or _plain_name(record)
                        writer.write(ManifestRow(path, record.valence, record.arousal, record.tags, record.start,
                                                 record.end, record.segment, record.annotator), f"label {number}")
                for sha256, suffix, size in _iter_audio(tx, where, params, latest_only):
                    info = zipfile.ZipInfo(f"audio/{sha256}{suffix}", date_time=stamp)
                    info.compress_type = zipfile.ZIP_STORED  # audio is compressed already
                    info.file_size = size
                    with archive.open(info, "w", force_zip64=size > _ZIP64_BYTES) as out:
                        for block in _read_blob(tx, sha256, size):
                            out.write(block)
        return target


# -- SQL shared by the methods --------------------------------------------------------------

_RECORD_COLUMNS = ("r.id, a.name, r.track_id, r.source, r.segment, r.start_s, r.end_s, r.valence, r.arousal, "
                   "r.tags, r.created_at, r.audio_sha256, b.suffix")
_LATEST = (" AND NOT EXISTS (SELECT 1 FROM records n WHERE n.annotator_id = r.annotator_id"
           " AND n.track_id = r.track_id AND n.segment_key = r.segment_key AND n.id > r.id)")


def _where(identity: Identity, scope: str) -> tuple[str, list[Any]]:
    """The records a scope covers, as a condition on ``records r`` (checked by the caller)."""
    if scope == "all":
        return "1 = 1", []
    return ("r.annotator_id = (SELECT id FROM annotators WHERE provider = ? AND name = ?)",
            [identity.provider, identity.name])


def _insert_record(tx: Transaction, annotator_id: int, record: LabelRecord, audio_sha: str | None,
                   origin: str | None) -> None:
    tx.execute(
        "INSERT INTO records (annotator_id, track_id, source, segment, segment_key, start_s, end_s, valence, "
        "arousal, tags, created_at, audio_sha256, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (origin) DO NOTHING",
        (annotator_id, record.track_id, record.source, record.segment,
         -1 if record.segment is None else record.segment, record.start, record.end, record.valence,
         record.arousal, json.dumps(list(record.tags)), record.timestamp, audio_sha, origin),
    )


def _iter_records(tx: Transaction, where: str, params: list[Any], latest_only: bool) -> Iterator[LabelRecord]:
    """The selected records in the order saved, a page at a time (bounded memory)."""
    last = 0
    latest = _LATEST if latest_only else ""
    while True:
        rows = tx.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records r JOIN annotators a ON a.id = r.annotator_id "
            f"LEFT JOIN blobs b ON b.sha256 = r.audio_sha256 WHERE r.id > ? AND {where}{latest} "
            f"ORDER BY r.id LIMIT {_PAGE}", [last, *params])
        for row in rows:
            (_, name, track_id, source, segment, start, end, valence, arousal, tags, created_at,
             audio_sha, suffix) = row
            yield LabelRecord(track_id, source, segment, start, end, valence, arousal, tuple(json.loads(tags)),
                              name, created_at, None if audio_sha is None else f"audio/{audio_sha}{suffix}")
        if len(rows) < _PAGE:
            return
        last = rows[-1][0]


def _optional_columns(tx: Transaction, where: str, params: list[Any], latest_only: bool, identity: Identity,
                      scope: str) -> list[str]:
    """The manifest's optional columns, known before its first row is streamed."""
    latest = _LATEST if latest_only else ""
    row = tx.one(f"SELECT COUNT(*), COUNT(r.start_s), COUNT(r.segment) FROM records r WHERE {where}{latest}", params)
    count, spans, segments = (int(value) for value in (row or (0, 0, 0)))
    if count == 0:
        who = f" by {identity.name!r}" if scope == "mine" else ""
        raise LabelError(f"no labels{who} to export yet: save a label first")
    return [*(["start", "end"] if spans else []), *(["segment"] if segments else []), "annotator"]


def _iter_audio(tx: Transaction, where: str, params: list[Any], latest_only: bool) -> Iterator[tuple[str, str, int]]:
    """``(sha256, suffix, size)`` of the audio the selected records refer to, by hash, a page at a time."""
    last = ""
    latest = _LATEST if latest_only else ""
    while True:
        rows = tx.execute(
            "SELECT DISTINCT b.sha256, b.suffix, b.size FROM records r JOIN blobs b ON b.sha256 = r.audio_sha256 "
            f"WHERE b.sha256 > ? AND {where}{latest} ORDER BY b.sha256 LIMIT {_PAGE}", [last, *params])
        for sha256, suffix, size in rows:
            yield str(sha256), str(suffix), int(size)
        if len(rows) < _PAGE:
            return
        last = rows[-1][0]


def _store_blob(tx: Transaction, source: Path, sha256: str, size: int, suffix: str) -> None:
    """Copy a file into the database in chunks, checking that it still has the content hashed."""
    tx.execute("INSERT INTO blobs (sha256, size, suffix, created_at) VALUES (?, ?, ?, ?)",
               (sha256, size, suffix, _now()))
    digest = hashlib.sha256()
    stored = 0
    with source.open("rb") as handle:
        for number, block in enumerate(iter(lambda: handle.read(CHUNK_BYTES), b"")):
            digest.update(block)
            stored += len(block)
            tx.execute("INSERT INTO blob_chunks (sha256, chunk, data) VALUES (?, ?, ?)", (sha256, number, block))
    if digest.hexdigest() != sha256 or stored != size:
        raise LabelError(f"{source.name} changed while it was being stored: save the label again")


def _read_blob(tx: Transaction, sha256: str, size: int) -> Iterator[bytes]:
    """A stored recording's bytes, a chunk at a time, checked against its hash."""
    digest = hashlib.sha256()
    for number in range(math.ceil(size / CHUNK_BYTES)):
        block = tx.scalar("SELECT data FROM blob_chunks WHERE sha256 = ? AND chunk = ?", (sha256, number))
        if block is None:
            raise LabelError(f"the stored audio {sha256[:12]}... is incomplete: the label database is damaged")
        block = bytes(block)
        digest.update(block)
        yield block
    if digest.hexdigest() != sha256:
        raise LabelError(f"the stored audio {sha256[:12]}... does not match its hash: the label database is damaged")


def _prune(tx: Transaction) -> int:
    """Delete the audio no label refers to (its chunks go with it); return how many recordings."""
    count = int(tx.scalar("SELECT COUNT(*) FROM blobs WHERE NOT EXISTS "
                          "(SELECT 1 FROM records r WHERE r.audio_sha256 = blobs.sha256)"))
    if count:
        tx.execute("DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.audio_sha256 = blobs.sha256)")
    return count
