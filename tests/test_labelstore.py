"""The label store on SQLite and on a real PostgreSQL server: owners, privacy, quotas, migration.

The PostgreSQL cases need a server: ``M2E_TEST_POSTGRES_URL`` names one with the right to
create databases (tests/run.sh starts a private one); each test gets a fresh database.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import soundfile as sf

from m2e_core.errors import ConfigError, LabelError
from m2e_core.files import file_sha256
from m2e_core.labeldb import SCHEMA_VERSION, Database, parse_database_url
from m2e_core.labels import Identity, ManifestRow, make_label, read_manifest
from m2e_core.labelstore import LabelPolicy, LabelStore, StoreUsage
from training.datasets import load_manifest_dataset

PG_ENV = "M2E_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parent.parent
ANN = Identity.local("ann")
BOB = Identity.local("bob")
TEAM = LabelPolicy(team=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("M2E_LABELS_DB", "M2E_LABEL_ADMINS", "M2E_LABELS_TEAM", "SPACE_ID", "M2E_LABELS_USER_AUDIO_MB",
                 "M2E_LABELS_STORE_AUDIO_MB", "M2E_LABELS_USER_LABELS"):
        monkeypatch.delenv(name, raising=False)


def _pg_connect(url: str):
    import pg8000.dbapi

    parsed = parse_database_url(url)
    connection = pg8000.dbapi.connect(user=parsed.user, password=parsed.password or None, host=parsed.host,
                                      port=parsed.port, database=parsed.database)
    connection.autocommit = True
    return connection


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh, empty label database URL on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'labels.sqlite3'}"
        return
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql://user:password@host:port/db "
                    "(tests/run.sh starts one when run as root or where PostgreSQL is installed)")
    name = f"m2e_test_{uuid.uuid4().hex[:16]}"
    connection = _pg_connect(admin)
    connection.cursor().execute(f"CREATE DATABASE {name}")
    parts = urlsplit(admin)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    connection.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
    connection.close()


def _store(tmp_path: Path, database: str, policy: LabelPolicy | None = None) -> LabelStore:
    return LabelStore(tmp_path / "store", database=database, policy=policy or LabelPolicy())


def _tone(path: Path, hz: float, seconds: float = 0.5, rate: int = 8000) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return path


def _random_wav(path: Path, samples: int, seed: int) -> Path:
    """The attack's file: an 8-bit WAV whose samples are random bytes (valid audio, arbitrary data)."""
    noise = np.random.default_rng(seed).integers(-128, 128, samples).astype(np.int16) * 256
    sf.write(path, noise, 8000, subtype="PCM_U8")
    return path


def _label(audio: Path, who: Identity, **fields):
    fields.setdefault("tags", ["calm"])
    return make_label(track_id=file_sha256(audio), source=audio.name, annotator=who.name, **fields)


def _unzip(bundle: Path, where: Path) -> Path:
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(where)
    return where


# -- saving, reading, exporting --------------------------------------------------------------


def test_store_opens_lazily_and_owns_its_schema(tmp_path, database):
    store = _store(tmp_path, database)
    if store.engine == "sqlite":
        assert not (tmp_path / "db").exists()  # nothing is written before the first call
    assert store.labels(ANN) == []
    assert Database(parse_database_url(database)).schema_version() == SCHEMA_VERSION
    password = parse_database_url(database).password
    assert not password or password not in store.location


def test_save_correct_read_and_export_round_trip(tmp_path, database):
    store = _store(tmp_path, database)
    song = _tone(tmp_path / "take one, final.wav", 220)
    common = {"audio": song}
    first = store.append(_label(song, ANN, valence=3.0, arousal=4.0, tags=["sad"]), requester=ANN, **common)
    seg = store.append(_label(song, ANN, segment=1, start=30.0, end=60.0, valence=6.25, arousal=0.1 + 0.2 + 4,
                              tags=["energetic", "fun"]), requester=ANN, **common)
    fixed = store.append(_label(song, ANN, valence=3.5, arousal=4.0, tags=["sad", "dark"]), requester=ANN)
    sha = file_sha256(song)
    assert first.audio_path == seg.audio_path == fixed.audio_path == f"audio/{sha}.wav"  # own copy reused
    assert store.labels(ANN, latest_only=False) == [first, seg, fixed]
    assert store.labels(ANN) == [seg, fixed]  # the correction replaces the first label
    assert store.usage(ANN) == StoreUsage(3, 10_000, song.stat().st_size, 200_000_000)

    for fmt in ("csv", "jsonl"):
        rows = read_manifest(store.export(tmp_path / f"out/labels.{fmt}", requester=ANN))
        assert rows == [ManifestRow("take one, final.wav", 6.25, 0.1 + 0.2 + 4, ("energetic", "fun"), 30.0, 60.0, 1,
                                    annotator="ann"),
                        ManifestRow("take one, final.wav", 3.5, 4.0, ("sad", "dark"), annotator="ann")]
    assert len(read_manifest(store.export(tmp_path / "all.csv", requester=ANN, latest_only=False))) == 3

    bundle = store.export(tmp_path / "labels.zip", requester=ANN)
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == sorted(["manifest.csv", f"audio/{sha}.wav"])
        assert archive.getinfo(f"audio/{sha}.wav").compress_type == zipfile.ZIP_STORED
    unpacked = _unzip(bundle, tmp_path / "unpacked")
    rows = read_manifest(unpacked / "manifest.csv")
    assert [row.path for row in rows] == [f"audio/{sha}.wav"] * 2
    assert rows[0].resolve(unpacked).read_bytes() == song.read_bytes()


def test_manifests_never_name_server_paths_and_training_reads_them(tmp_path, database):
    store = _store(tmp_path, database)
    evil = _tone(tmp_path / "=2+5+cmd|' -c calc'!A0.wav", 330)
    store.append(_label(evil, ANN, valence=2.0, arousal=8.0, tags=["dark"]), requester=ANN, audio=evil)
    store.append(make_label(track_id="c" * 64, source="/srv/uploads/tmp123/../secret/x.mp3", valence=5.0,
                            arousal=5.0, annotator="ann"), requester=ANN)
    manifest = store.export(tmp_path / "plain" / "labels.csv", requester=ANN)
    text = manifest.read_text(encoding="utf-8")
    assert str(tmp_path) not in text and "/srv" not in text and "secret" not in text
    with manifest.open(newline="", encoding="utf-8") as handle:
        cells = [row[0] for row in csv.reader(handle)]
    assert cells == ["path", "'" + evil.name, "x.mp3"]  # escaped for spreadsheets, base names only
    rows = read_manifest(manifest)
    assert [row.path for row in rows] == [evil.name, "x.mp3"]
    (manifest.parent / evil.name).write_bytes(evil.read_bytes())  # the user puts the file beside it
    dataset = load_manifest_dataset(manifest, "va")
    assert dataset.tracks[0].audio_path.read_bytes() == evil.read_bytes()
    assert (dataset.tracks[0].valence, dataset.tracks[0].arousal) == (2.0, 8.0)

    bundle = store.export(tmp_path / "b.zip", requester=ANN)
    assert str(tmp_path).encode() not in bundle.read_bytes()
    unpacked = _unzip(bundle, tmp_path / "unzipped")
    tracks = load_manifest_dataset(unpacked / "manifest.csv", "va").tracks
    assert tracks[0].audio_path.read_bytes() == evil.read_bytes()
    assert tracks[1].audio_path == unpacked / "x.mp3" and not tracks[1].audio_path.exists()  # no audio stored


def test_exports_are_streamed_without_temporary_copies(tmp_path, database, monkeypatch):
    store = _store(tmp_path, database)
    big = _tone(tmp_path / "long.wav", 440, seconds=80.0)  # 2.6 MB: three 1 MiB chunks
    store.append(_label(big, ANN, valence=5.0, arousal=5.0), requester=ANN, audio=big)

    def refuse(*args, **kwargs):
        raise AssertionError("an export made a temporary folder")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    out = tmp_path / "out"
    bundle = store.export(out / "labels.zip", requester=ANN)
    assert [p.name for p in out.iterdir()] == ["labels.zip"]
    with zipfile.ZipFile(bundle) as archive:
        data = archive.read(f"audio/{file_sha256(big)}.wav")
    assert hashlib.sha256(data).hexdigest() == file_sha256(big)


# -- privacy ----------------------------------------------------------------------------------


def test_two_clients_never_see_each_others_labels_or_audio(tmp_path, database):
    store = _store(tmp_path, database)
    ann_song, bob_song = _tone(tmp_path / "ann.wav", 220), _tone(tmp_path / "bob.wav", 247)
    store.append(_label(ann_song, ANN, tags=["sad"]), requester=ANN, audio=ann_song)
    store.append(_label(bob_song, BOB, tags=["happy"]), requester=BOB, audio=bob_song)
    assert [r.source for r in store.labels(ANN)] == ["ann.wav"]
    assert [r.source for r in store.labels(BOB)] == ["bob.wav"]
    with zipfile.ZipFile(store.export(tmp_path / "bob.zip", requester=BOB)) as archive:
        assert sorted(archive.namelist()) == sorted(["manifest.csv", f"audio/{file_sha256(bob_song)}.wav"])
        manifest = archive.read("manifest.csv").decode()
        assert manifest.splitlines()[0].split(",")[-1] == "annotator"
        assert [line.split(",")[-1] for line in manifest.splitlines()[1:]] == ["bob"]
        assert "ann.wav" not in manifest
    with pytest.raises(LabelError, match="only the label admins"):
        store.export(tmp_path / "x.zip", requester=BOB, scope="all")
    with pytest.raises(LabelError, match="only the label admins"):
        store.labels(BOB, scope="all")
    assert not (tmp_path / "x.zip").exists()
    # Knowing the hash of ann's audio does not lend it: bob cannot refer to it without the file.
    stolen = make_label(track_id=file_sha256(ann_song), source="ann.wav", tags=["dark"], annotator="bob",
                        audio_path=f"audio/{file_sha256(ann_song)}.wav")
    with pytest.raises(LabelError, match="bob has no stored copy"):
        store.append(stolen, requester=BOB)
    # A typed name never reaches the Hugging Face account of the same name, nor the reverse.
    hf_ann = Identity.huggingface("ann")
    with pytest.raises(LabelError, match="no labels by 'ann' to export"):
        store.export(tmp_path / "hf.csv", requester=hf_ann)
    assert store.labels(hf_ann) == []
    with pytest.raises(LabelError, match="is by 'ann' but 'bob' is saving it"):
        store.append(_label(bob_song, ANN), requester=BOB)
    # Deleting ann's labels leaves bob's alone.
    assert store.delete(ANN) == 1
    assert [r.source for r in store.records()] == ["bob.wav"]


def test_admins_and_team_tools_may_read_everyone(tmp_path, database):
    policy = LabelPolicy.from_env({"M2E_LABEL_ADMINS": " alice, local:carol ,hf:dave"})
    assert policy.admins == {"hf:alice", "local:carol", "hf:dave"} and not policy.team and policy.allow_local
    store = _store(tmp_path, database, policy)
    song = _tone(tmp_path / "s.wav", 220)
    for who in (ANN, BOB):
        store.append(_label(song, who), requester=who, audio=song)
    for admin in (Identity.huggingface("alice"), Identity.local("carol"), Identity.huggingface("dave")):
        assert [r.annotator for r in store.labels(admin, scope="all")] == ["ann", "bob"]
        assert len(read_manifest(store.export(tmp_path / "all.csv", requester=admin, scope="all"))) == 2
    for outsider in (Identity.local("alice"), Identity.huggingface("carol"), ANN):
        with pytest.raises(LabelError, match="only the label admins"):
            store.export(tmp_path / "all.csv", requester=outsider, scope="all")
    team = _store(tmp_path, database, LabelPolicy.from_env({"M2E_LABELS_TEAM": "1"}))
    assert len(team.labels(BOB, scope="all")) == 2
    with pytest.raises(LabelError, match="unknown label scope 'everyone'"):
        team.labels(BOB, scope="everyone")
    with pytest.raises(TypeError, match="requester must be an m2e_core.labels.Identity"):
        team.export(tmp_path / "x.csv", requester="bob", scope="mine")


def test_on_a_space_only_signed_in_accounts_own_labels(tmp_path, database):
    space = LabelPolicy.from_env({"SPACE_ID": "someone/m2e"})
    assert not space.allow_local
    store = _store(tmp_path, database, space)
    song = _tone(tmp_path / "s.wav", 220)
    with pytest.raises(LabelError, match="sign in with Hugging Face"):
        store.identify(typed_name="ann")
    with pytest.raises(LabelError, match="sign in with Hugging Face"):
        store.append(_label(song, ANN), requester=ANN, audio=song)
    alice = store.identify(hf_username="alice", typed_name="ann")
    assert alice == Identity.huggingface("alice")
    store.append(_label(song, alice), requester=alice, audio=song)
    assert len(store.labels(alice)) == 1
    team_space = LabelPolicy.from_env({"SPACE_ID": "someone/m2e", "M2E_LABELS_TEAM": "yes"})
    assert team_space.allow_local and team_space.team
    with pytest.raises(LabelError, match="type your name"):
        LabelStore(tmp_path / "x", policy=LabelPolicy()).identify(typed_name="  ")


@pytest.mark.parametrize("env,message", [
    ({"M2E_LABELS_TEAM": "maybe"}, "M2E_LABELS_TEAM='maybe': use 1 or 0"),
    ({"M2E_LABELS_USER_AUDIO_MB": "lots"}, "M2E_LABELS_USER_AUDIO_MB='lots': must be a number"),
    ({"M2E_LABELS_STORE_AUDIO_MB": "-5"}, "must be a positive number"),
    ({"M2E_LABELS_USER_LABELS": "0"}, "must be a positive number"),
    ({"M2E_LABEL_ADMINS": "alice,local:"}, "M2E_LABEL_ADMINS: bad entry 'local:'"),
])
def test_bad_policy_settings_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        LabelPolicy.from_env(env)
    with pytest.raises(ConfigError, match="identity keys such as 'hf:alice', got 'alice'"):
        LabelPolicy(admins={"alice"})
    with pytest.raises(ConfigError, match="user_labels must be a positive integer"):
        LabelPolicy(user_labels=0)


# -- quotas and pruning ---------------------------------------------------------------------


def test_random_bytes_audio_cannot_fill_the_store(tmp_path, database):
    policy = LabelPolicy(user_audio_bytes=30_000, store_audio_bytes=40_000, user_labels=6)
    store = _store(tmp_path, database, policy)
    junk = [_random_wav(tmp_path / f"junk{n}.wav", 12_000, seed=n) for n in range(5)]
    size = junk[0].stat().st_size
    assert 12_000 < size < 12_100
    for n in (0, 1):
        store.append(_label(junk[n], ANN), requester=ANN, audio=junk[n])
    with pytest.raises(LabelError, match=r"junk2.wav \(12.0 kB\) would take ann's stored audio to 36.1 kB, "
                                         r"over the 30.0 kB allowed: delete labels"):
        store.append(_label(junk[2], ANN), requester=ANN, audio=junk[2])
    assert store.usage(ANN).audio_bytes == 2 * size
    store.append(_label(junk[3], BOB), requester=BOB, audio=junk[3])  # the store holds 3 files now
    with pytest.raises(LabelError, match="the label store is full"):
        store.append(_label(junk[4], BOB), requester=BOB, audio=junk[4])
    # The same bytes as ann's count as new for bob: no answer tells bob what others stored.
    with pytest.raises(LabelError, match="the label store is full"):
        store.append(_label(junk[0], BOB), requester=BOB, audio=junk[0])
    # More labels of audio one already has cost nothing, up to the label cap.
    for n in range(4):
        store.append(_label(junk[0], ANN, valence=1.0 + n, arousal=5.0), requester=ANN, audio=junk[0])
    with pytest.raises(LabelError, match="ann has saved 6 labels, the most allowed"):
        store.append(_label(junk[0], ANN), requester=ANN)
    # Deleting labels removes the audio nobody refers to, and makes room.
    assert store.delete(ANN, track_id=file_sha256(junk[1])) == 1
    assert store.usage(ANN).audio_bytes == size
    store.append(_label(junk[4], BOB), requester=BOB, audio=junk[4])
    assert _blob_count(database) == 3
    assert store.delete(ANN) == 5 and store.usage(ANN) == StoreUsage(0, 6, 0, 30_000)
    assert _blob_count(database) == 2  # bob's two files
    big = _random_wav(tmp_path / "big.wav", 40_000, seed=9)
    with pytest.raises(LabelError, match="big.wav is 40.0 kB, more than the 30.0 kB of audio an annotator may"):
        store.append(_label(big, ANN), requester=ANN, audio=big)


def _blob_count(database: str) -> int:
    with Database(parse_database_url(database)).transaction(write=False) as tx:
        blobs = tx.scalar("SELECT COUNT(*) FROM blobs")
        orphans = tx.scalar("SELECT COUNT(*) FROM blob_chunks c WHERE NOT EXISTS "
                            "(SELECT 1 FROM records r WHERE r.audio_sha256 = c.sha256)")
    assert orphans == 0
    return int(blobs)


def test_audio_shared_by_two_annotators_stays_while_one_refers_to_it(tmp_path, database):
    store = _store(tmp_path, database)
    song = _tone(tmp_path / "same.wav", 262)
    for who in (ANN, BOB):
        store.append(_label(song, who), requester=who, audio=song)
    assert _blob_count(database) == 1
    store.delete(ANN)
    unpacked = _unzip(store.export(tmp_path / "bob.zip", requester=BOB), tmp_path / "bob")
    assert read_manifest(unpacked / "manifest.csv")[0].resolve(unpacked).read_bytes() == song.read_bytes()
    store.delete(BOB, track_id=file_sha256(song))
    assert _blob_count(database) == 0


def test_audio_that_is_not_the_track_is_refused(tmp_path, database):
    store = _store(tmp_path, database)
    song, other = _tone(tmp_path / "a.wav", 220), _tone(tmp_path / "b.wav", 330)
    with pytest.raises(LabelError, match="b.wav is not the labelled recording"):
        store.append(_label(song, ANN), requester=ANN, audio=other)
    with pytest.raises(LabelError, match="gone.wav does not exist"):
        store.append(_label(song, ANN), requester=ANN, audio=tmp_path / "gone.wav")
    assert store.records() == []


# -- concurrency ------------------------------------------------------------------------------

_WRITER = """
import sys
from m2e_core.files import file_sha256
from m2e_core.labels import Identity, make_label
from m2e_core.labelstore import LabelPolicy, LabelStore
directory, database, writer, count, audio = sys.argv[1:6]
store = LabelStore(directory, database=database, policy=LabelPolicy(team=True))
me = Identity.local(writer)
track = file_sha256(audio)
for i in range(int(count)):
    store.append(make_label(track_id=track, source=writer + ".wav", segment=i, start=float(i), end=i + 1.5,
                            valence=1 + (i % 9) * 0.875, arousal=9.0 - (i % 8), tags=["happy", "epic"],
                            annotator=writer), requester=me, audio=audio)
    print(i, flush=True)
"""


def test_four_writer_processes_one_killed_lose_nothing_acknowledged(tmp_path, database):
    per_writer = 50
    audio = [_tone(tmp_path / f"w{n}.wav", 200 + 20 * n, seconds=0.2) for n in range(4)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "store"), database, f"w{n}",
                                   str(per_writer), str(audio[n])], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in range(4)]
    victim = processes[1]
    acked = {n: [] for n in range(4)}
    assert victim.stdout is not None
    while len(acked[1]) < 10:
        line = victim.stdout.readline()
        assert line, victim.stderr.read() if victim.stderr else "writer died"
        acked[1].append(int(line))
    victim.send_signal(signal.SIGKILL)  # mid-way, possibly inside a transaction
    for n, process in enumerate(processes):
        out, err = process.communicate(timeout=300)
        acked[n] += [int(line) for line in out.split()]
        if n != 1:
            assert process.returncode == 0, err
    assert victim.returncode == -signal.SIGKILL and len(acked[1]) < per_writer

    store = _store(tmp_path, database, TEAM)
    records = store.records()
    for n in range(4):
        saved = [r.segment for r in records if r.annotator == f"w{n}"]
        assert len(saved) == len(set(saved))  # no duplicates
        assert saved[:len(acked[n])] == acked[n] == list(range(len(acked[n])))  # every acknowledged label, in order
        assert len(saved) - len(acked[n]) in ((0, 1) if n == 1 else (0,))  # at most the one in flight
        assert all(r.audio_path == f"audio/{file_sha256(audio[n])}.wav" for r in records if r.annotator == f"w{n}")
    assert _blob_count(database) == 4
    rows = read_manifest(store.export(tmp_path / "all.jsonl", requester=ANN, scope="all"))
    assert len(rows) == len(records)
    survivor = Identity.local("w1")  # the killed writer's store is usable and complete
    store.append(make_label(track_id=file_sha256(audio[1]), source="w1.wav", tags=["sad"], annotator="w1"),
                 requester=survivor)
    assert len(store.labels(survivor, latest_only=False)) == len([r for r in records if r.annotator == "w1"]) + 1


# -- migration from the labels.jsonl store of earlier versions -------------------------------


def _old_line(**fields) -> bytes:
    record = {"track_id": None, "source": None, "segment": None, "start": None, "end": None, "valence": None,
              "arousal": None, "tags": [], "annotator": "anonymous", "timestamp": "2025-03-01T10:00:00.000001+00:00",
              "audio_path": None, **fields}
    return (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()


def test_a_labels_jsonl_store_is_migrated_once_with_nothing_lost(tmp_path, database):
    directory = tmp_path / "store"
    (directory / "audio").mkdir(parents=True)
    kept = _tone(tmp_path / "kept.flac", 220)
    sha = file_sha256(kept)
    (directory / "audio" / f"{sha}.flac").write_bytes(kept.read_bytes())
    orphan = directory / "audio" / f"{'d' * 64}.wav"
    orphan.write_bytes(b"never labelled")
    lines = [
        _old_line(track_id=sha, source="kept.flac", valence=6.5, arousal=3.0, tags=["calm"], annotator="ann",
                  audio_path=f"audio/{sha}.flac"),
        _old_line(track_id=sha, source="kept.flac", segment=2, start=60.0, end=90.0, tags=["epic", "fun"],
                  annotator="ann", audio_path=f"audio/{sha}.flac", timestamp="2025-03-01T10:00:05+00:00"),
        _old_line(track_id="e" * 64, source="lost.wav", valence=2.0, arousal=8.0, annotator="bob",
                  audio_path=f"audio/{'e' * 64}.wav"),
        _old_line(track_id="f" * 64, source="twice.wav", tags=["sad"], annotator="bob"),
        _old_line(track_id="f" * 64, source="twice.wav", tags=["sad"], annotator="bob"),  # written twice
    ]
    (directory / "labels.jsonl").write_bytes(b"".join(lines) + b'{"track_id": "' + sha.encode() + b'", "sou')
    (directory / "labels.jsonl.lock").write_bytes(b"")
    original = (directory / "labels.jsonl").read_bytes()

    store = LabelStore(directory, database=database, policy=TEAM)
    with pytest.warns(RuntimeWarning) as caught:
        records = store.records()
    messages = " ".join(str(w.message) for w in caught)
    assert "skipped 1 incomplete line(s) [6]" in messages and "1 label(s) migrated without audio" in messages
    assert [(r.annotator, r.source, r.segment, r.valence, r.tags, r.timestamp) for r in records] == [
        ("ann", "kept.flac", None, 6.5, ("calm",), "2025-03-01T10:00:00.000001+00:00"),
        ("ann", "kept.flac", 2, None, ("epic", "fun"), "2025-03-01T10:00:05+00:00"),
        ("bob", "lost.wav", None, 2.0, (), "2025-03-01T10:00:00.000001+00:00"),
        ("bob", "twice.wav", None, None, ("sad",), "2025-03-01T10:00:00.000001+00:00"),
        ("bob", "twice.wav", None, None, ("sad",), "2025-03-01T10:00:00.000001+00:00"),
    ]
    assert records[0].audio_path == f"audio/{sha}.flac" and records[2].audio_path is None
    assert not (directory / "labels.jsonl").exists() and not (directory / "labels.jsonl.lock").exists()
    assert (directory / "labels.jsonl.migrated").read_bytes() == original  # nothing deleted
    assert (directory / "audio.migrated" / orphan.name).read_bytes() == b"never labelled"
    unpacked = _unzip(store.export(tmp_path / "ann.zip", requester=ANN), tmp_path / "ann")
    rows = read_manifest(unpacked / "manifest.csv")
    assert [row.resolve(unpacked).read_bytes() == kept.read_bytes() for row in rows] == [True, True]
    assert store.usage(ANN).audio_bytes == kept.stat().st_size

    # Opened again, or with the old file put back (say, by an old version still running): nothing doubles.
    # (the old writer ended a torn line before appending its own)
    (directory / "labels.jsonl").write_bytes(original + b"\n" + _old_line(track_id="a" * 64, source="new.wav",
                                                                         tags=["happy"], annotator="bob"))
    again = LabelStore(directory, database=database, policy=TEAM)
    with pytest.warns(RuntimeWarning, match="incomplete line"):
        after = again.records()
    assert after[:5] == records and [r.source for r in after[5:]] == ["new.wav"]
    assert (directory / "labels.jsonl.migrated-2").is_file()
    assert len(LabelStore(directory, database=database, policy=TEAM).records()) == 6


def test_a_broken_old_record_stops_migration_and_names_the_line(tmp_path, database):
    directory = tmp_path / "store"
    directory.mkdir()
    (directory / "labels.jsonl").write_bytes(_old_line(track_id="a" * 64, source="a.wav", tags=["happy"])
                                             + json.dumps({"track_id": "a" * 64}).encode() + b"\n")
    store = LabelStore(directory, database=database, policy=TEAM)
    with pytest.raises(LabelError, match=r"labels.jsonl:2: label record lacks the field 'source'; fix or remove"):
        store.records()
    assert (directory / "labels.jsonl").is_file()  # left for the operator to fix


# -- the database itself ---------------------------------------------------------------------


def test_a_newer_schema_is_refused(tmp_path, database):
    store = _store(tmp_path, database)
    assert store.records() == []
    with Database(parse_database_url(database)).transaction(write=True) as tx:
        tx.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LabelError, match=f"has schema version {SCHEMA_VERSION + 1}, newer than this m2e's"):
        _store(tmp_path, database).records()


@pytest.mark.parametrize("url,message", [
    ("mysql://u:p@h/db", "unknown label database mysql://"),
    ("postgresql://host/db", "needs a user and a database"),
    ("postgresql://u:p@host", "needs a user and a database"),
    ("postgresql://u:p@host/db?sslmode=prefer", "sslmode=prefer is not supported"),
    ("sqlite://", "a sqlite URL names a file"),
])
def test_bad_database_urls_are_named(url, message):
    with pytest.raises(LabelError, match=message):
        parse_database_url(url)


def test_database_urls():
    url = parse_database_url("postgresql://ann:p%40ss@db.example:6543/labels?sslmode=require")
    assert (url.user, url.password, url.host, url.port, url.database, url.sslmode) == (
        "ann", "p@ss", "db.example", 6543, "labels", "require")
    assert url.redacted() == "postgresql://ann@db.example:6543/labels"
    socket = parse_database_url("postgres://ann@/labels?host=/run/postgresql")
    assert socket.socket and socket.host == "/run/postgresql" and socket.port == 5432
    assert parse_database_url("/tmp/x.sqlite3").path == Path("/tmp/x.sqlite3")
    assert parse_database_url("sqlite:////tmp/y.sqlite3").path == Path("/tmp/y.sqlite3")


def test_unreachable_postgresql_is_one_line_without_the_server(tmp_path, caplog):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = LabelStore(tmp_path, database=f"postgresql://ann:s3cret-pw@127.0.0.1:{port}/labels", policy=TEAM)
    with pytest.raises(LabelError) as caught:
        store.labels(ANN)
    message = str(caught.value)
    assert message == "cannot connect to the label database (the server log has the details)"
    logged = caplog.text
    assert f"postgresql://ann@127.0.0.1:{port}/labels" in logged and "s3cret" not in logged


def test_default_store_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("M2E_LABELS_DIR", str(tmp_path / "labels"))
    assert LabelStore(policy=TEAM).location == f"sqlite:///{tmp_path / 'labels' / 'labels.sqlite3'}"
    monkeypatch.setenv("M2E_LABELS_DB", "postgresql://ann:pw@db:5433/team")
    assert LabelStore(policy=TEAM).location == "postgresql://ann@db:5433/team"
    monkeypatch.setenv("M2E_LABELS_USER_AUDIO_MB", "0.5")
    assert LabelStore().policy.user_audio_bytes == 500_000


def test_bad_export_requests(tmp_path):
    store = LabelStore(tmp_path / "s", policy=TEAM)
    with pytest.raises(LabelError, match="unknown export format 'xml'"):
        store.export(tmp_path / "x.csv", "xml", requester=ANN)
    with pytest.raises(LabelError, match="a jsonl export needs a file name ending in .jsonl"):
        store.export(tmp_path / "x.csv", "jsonl", requester=ANN)
    with pytest.raises(LabelError, match="unknown export format 'x.txt'"):
        store.export(tmp_path / "x.txt", requester=ANN)
    with pytest.raises(LabelError, match="plain .csv or .jsonl name"):
        store.export_bundle(tmp_path / "x.zip", requester=ANN, manifest_name="../m.csv")
    with pytest.raises(LabelError, match="no labels to export yet"):
        store.export(tmp_path / "x.csv", requester=ANN, scope="all")
    assert not (tmp_path / "x.csv").exists()
