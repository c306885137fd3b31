"""Label store (append-only, concurrent writers) and the training manifest format."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from m2e_core.errors import LabelError
from m2e_core.labels import (
    LabelRecord,
    LabelStore,
    ManifestRow,
    default_labels_dir,
    make_label,
    read_manifest,
    validate_label,
    write_manifest,
)

SHA = "a" * 64
OTHER_SHA = "b" * 64


@pytest.fixture
def audio_file(tmp_path):
    path = tmp_path / "take one, final.wav"
    rate = 8000
    t = np.arange(rate) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path


# -- records ---------------------------------------------------------------------------


def test_make_label_normalises_and_stamps():
    record = make_label(track_id=SHA, source="a.wav", segment=1, start=30, end=60, valence=7, arousal=2,
                        tags=["mood/theme---calm", "relaxing"], annotator=" ann ")
    assert record.tags == ("calm", "relaxing")
    assert record.valence == 7.0 and isinstance(record.valence, float)
    assert record.annotator == "ann"
    assert record.timestamp.endswith("+00:00")
    assert LabelRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize("change,message", [
    ({"valence": 0.5}, "valence must be in 1..9"),
    ({"arousal": 9.5}, "arousal must be in 1..9"),
    ({"valence": float("nan")}, "valence must be in 1..9"),
    ({"valence": "high"}, "valence must be a number"),
    ({"valence": True}, "valence must be a number"),
    ({"arousal": None}, "come as a pair"),
    ({"tags": ("happy", "joyful")}, "unknown tag 'joyful'"),
    ({"tags": ("happy", "happy")}, "listed twice"),
    ({"tags": "happy"}, "must be a list"),
    ({"valence": None, "arousal": None, "tags": ()}, "or at least one tag"),
    ({"segment": 0, "start": None, "end": None}, "needs its start and end"),
    ({"segment": -1}, "segment must be an index"),
    ({"start": 10.0, "end": 5.0}, "0 <= start < end"),
    ({"track_id": "abc"}, "sha256"),
    ({"annotator": "  "}, "annotator"),
    ({"annotator": "a\nb"}, "annotator"),
    ({"timestamp": "yesterday"}, "ISO 8601"),
    ({"timestamp": "2025-01-01T00:00:00"}, "time zone"),
    ({"audio_path": "/etc/passwd"}, "relative"),
    ({"audio_path": "../x.wav"}, "relative"),
    ({"source": ""}, "source"),
])
def test_invalid_labels_are_refused(change, message):
    good = make_label(track_id=SHA, source="a.wav", segment=0, start=0.0, end=30.0, valence=5.0,
                      arousal=5.0, tags=["happy"])
    with pytest.raises(LabelError, match=message):
        validate_label(replace(good, **change))


def test_tags_only_and_va_only_labels_are_valid():
    assert make_label(track_id=SHA, source="a.wav", tags=["dark"]).valence is None
    assert make_label(track_id=SHA, source="a.wav", valence=1.0, arousal=9.0).tags == ()


# -- store -----------------------------------------------------------------------------


def test_store_append_read_latest_and_export_round_trip(tmp_path, audio_file):
    store = LabelStore(tmp_path / "store")
    assert store.records() == []
    track_id, stored = store.add_audio(audio_file)
    assert track_id == hashlib.sha256(audio_file.read_bytes()).hexdigest()
    assert (store.directory / stored).read_bytes() == audio_file.read_bytes()
    assert store.add_audio(audio_file) == (track_id, stored)  # same content, same copy
    common = {"track_id": track_id, "source": audio_file.name, "audio_path": stored}
    first = store.append(make_label(**common, valence=3.0, arousal=4.0, tags=["sad"], annotator="ann"))
    seg = store.append(make_label(**common, segment=1, start=30.0, end=60.0, valence=6.25, arousal=7.5,
                                  tags=["energetic", "fun"], annotator="ann"))
    fixed = store.append(make_label(**common, valence=3.5, arousal=4.0, tags=["sad", "dark"], annotator="ann"))
    other = store.append(make_label(**common, tags=["calm"], annotator="bob"))
    assert store.records() == [first, seg, fixed, other]
    assert store.latest() == [seg, fixed, other]
    assert store.latest(annotator="bob") == [other]

    for suffix in ("csv", "jsonl"):
        manifest = store.export(tmp_path / f"out/labels.{suffix}")
        rows = read_manifest(manifest)
        assert rows == store.manifest_rows([seg, fixed, other])
        assert rows[0] == ManifestRow(str((store.directory / stored).resolve()), 6.25, 7.5, ("energetic", "fun"),
                                      30.0, 60.0, 1)
        assert rows[1].segment is None and rows[1].start is None and rows[1].tags == ("sad", "dark")
        assert rows[2].valence is None and rows[2].tags == ("calm",)
        assert all(Path(row.path).is_file() for row in rows)
    everything = read_manifest(store.export(tmp_path / "all.csv", latest_only=False))
    assert len(everything) == 4
    with pytest.raises(LabelError, match="no labels by 'nobody'"):
        store.export(tmp_path / "none.csv", annotator="nobody")
    with pytest.raises(LabelError, match="must be relative"):
        store.append(replace(first, audio_path="/abs.wav"))
    assert len(store.records()) == 4  # a refused record writes nothing


def test_bundle_unpacks_to_a_training_ready_manifest(tmp_path, audio_file):
    store = LabelStore(tmp_path / "store")
    track_id, stored = store.add_audio(audio_file)
    store.append(make_label(track_id=track_id, source=audio_file.name, audio_path=stored, valence=2.0,
                            arousal=8.0, tags=["dark"]))
    bundle = store.export_bundle(tmp_path / "labels.zip")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(unpacked)
    rows = read_manifest(unpacked / "manifest.csv")
    assert rows == [ManifestRow(stored, 2.0, 8.0, ("dark",))]
    audio = rows[0].resolve(unpacked)
    assert hashlib.sha256(audio.read_bytes()).hexdigest() == track_id


def test_torn_line_from_a_crash_is_skipped_and_the_next_write_is_clean(tmp_path):
    store = LabelStore(tmp_path)
    kept = store.append(make_label(track_id=SHA, source="a.wav", tags=["happy"]))
    with store.path.open("ab") as handle:
        handle.write(b'{"track_id": "' + SHA.encode() + b'", "sou')  # a writer died here
    after = store.append(make_label(track_id=OTHER_SHA, source="b.wav", tags=["sad"]))
    with pytest.warns(RuntimeWarning, match="skipped 1 incomplete line"):
        assert store.records() == [kept, after]
    store.path.write_text(store.path.read_text() + json.dumps({"track_id": SHA}) + "\n")
    with pytest.raises(LabelError, match=r"labels.jsonl:4: .*lacks the field"):
        store.records()


_WRITER = """
import sys
from m2e_core.labels import LabelStore, make_label
store = LabelStore(sys.argv[1])
writer = sys.argv[2]
for i in range(int(sys.argv[3])):
    store.append(make_label(track_id=format(i, "064x"), source=f"{writer}.wav", segment=i, start=float(i),
                            end=i + 1.5, valence=1 + (i % 9) * 0.875, arousal=9.0 - (i % 8),
                            tags=["happy", "epic"], annotator=writer))
"""


def test_concurrent_writers_in_threads_and_processes_lose_nothing(tmp_path):
    store = LabelStore(tmp_path / "shared")
    per_writer = 40
    root = Path(__file__).resolve().parent.parent
    processes = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(store.directory), f"proc{n}", str(per_writer)],
                         cwd=root, stderr=subprocess.PIPE)
        for n in range(3)
    ]
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(per_writer):
                store.append(make_label(track_id=format(i, "064x"), source=f"{name}.wav", segment=i,
                                        start=float(i), end=i + 1.5, valence=1 + (i % 9) * 0.875,
                                        arousal=9.0 - (i % 8), tags=["happy", "epic"], annotator=name))
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(f"thread{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
    assert not errors
    lines = store.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    records = store.records()
    assert len(records) == 7 * per_writer
    writers = {f"proc{n}" for n in range(3)} | {f"thread{n}" for n in range(4)}
    for writer in writers:
        mine = [r for r in records if r.annotator == writer]
        assert [r.segment for r in mine] == list(range(per_writer))  # each writer's order kept
    rows = read_manifest(store.export(tmp_path / "all.jsonl"))
    assert len(rows) == 7 * per_writer
    assert rows == store.manifest_rows(store.latest())


# -- manifests -------------------------------------------------------------------------

TRICKY_ROWS = [
    ManifestRow("audio/a.flac", 0.1 + 0.2 + 4, 1.0, ("happy", "epic")),
    ManifestRow('dir with, comma/"quoted" é.mp3', None, None, ("dark",), 12.345678901234567, 42.0, 3),
    ManifestRow("/abs/path.wav", 9.0, 1.0000000000000002, ()),
    ManifestRow("x.ogg", 5.0, 5.0, ("calm",), 0.0, 30.0, None),
]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_manifest_round_trip_is_exact(tmp_path, suffix):
    path = write_manifest(TRICKY_ROWS, tmp_path / f"m.{suffix}")
    assert read_manifest(path) == TRICKY_ROWS
    assert write_manifest(read_manifest(path), tmp_path / f"again.{suffix}").read_bytes() == path.read_bytes()


def test_manifest_layouts(tmp_path):
    plain = [ManifestRow("a.wav", 5.5, 6.5, ("happy", "fun")), ManifestRow("b.wav", None, None, ("sad",))]
    text = write_manifest(plain, tmp_path / "plain.csv").read_text()
    assert text == "path,valence,arousal,tags\na.wav,5.5,6.5,happy;fun\nb.wav,,,sad\n"
    lines = write_manifest(plain, tmp_path / "plain.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"path": "b.wav", "valence": None, "arousal": None, "tags": ["sad"]}
    with_span = write_manifest([ManifestRow("a.wav", 5.0, 5.0, (), 0.0, 30.0)], tmp_path / "s.csv")
    assert with_span.read_text().splitlines()[0] == "path,valence,arousal,tags,start,end"


def test_read_manifest_accepts_other_writers_files(tmp_path):
    csv_file = tmp_path / "hand.csv"
    csv_file.write_text("tags,path,arousal,valence,segment\n"
                        "mood/theme---happy;mood/theme---fun,song.mp3,3,4,\n"
                        ",deam/2.mp3, 6.5 ,7,2\n", encoding="utf-8")
    assert read_manifest(csv_file) == [
        ManifestRow("song.mp3", 4.0, 3.0, ("happy", "fun")),
        ManifestRow("deam/2.mp3", 7.0, 6.5, (), segment=2),
    ]
    jsonl = tmp_path / "hand.jsonl"
    jsonl.write_text('{"path": "a.wav", "tags": ["calm"]}\n\n{"path": "b.wav", "valence": 2, "arousal": 3}\n')
    assert read_manifest(jsonl) == [ManifestRow("a.wav", None, None, ("calm",)),
                                    ManifestRow("b.wav", 2.0, 3.0, ())]


@pytest.mark.parametrize("name,content,message", [
    ("m.csv", "path,valence,tags\na.wav,5,happy\n", "missing column"),
    ("m.csv", "path,valence,arousal,tags\na.wav,5,,happy\n", "m.csv:2: valence and arousal come as a pair"),
    ("m.csv", "path,valence,arousal,tags\na.wav,5,10,\n", "arousal must be in 1..9"),
    ("m.csv", "path,valence,arousal,tags\na.wav,x,5,\n", "valence must be a number"),
    ("m.csv", "path,valence,arousal,tags\na.wav,,,\n", "neither valence/arousal nor tags"),
    ("m.csv", "path,valence,arousal,tags\na.wav,,,happy;sleepy\n", "unknown tag 'sleepy'"),
    ("m.csv", "path,valence,arousal,tags\n,5,5,\n", "path must not be empty"),
    ("m.csv", "path,valence,arousal,tags\na.wav,5,5,,extra\n", "more cells than columns"),
    ("m.csv", "path,valence,arousal,tags,segment\na.wav,5,5,,x\n", "segment must be an index"),
    ("m.csv", "path,valence,arousal,tags,start,end\na.wav,5,5,,3,1\n", "0 <= start < end"),
    ("m.jsonl", '{"path": "a.wav", "tags": "happy"}\n', "m.jsonl:1: tags must be a list"),
    ("m.jsonl", '{"path": "a.wav", "tags": ["happy"]}\n{"path":\n', "m.jsonl:2: not valid JSON"),
    ("m.jsonl", '{"path": "a.wav", "tags": ["happy"], "mood": 1}\n', "unknown key"),
    ("m.jsonl", '["a.wav"]\n', "must be an object"),
    ("m.txt", "", "must end in .csv or .jsonl"),
])
def test_bad_manifests_name_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LabelError, match=message):
        read_manifest(path)


def test_write_manifest_refuses_bad_rows_and_writes_nothing(tmp_path):
    target = tmp_path / "m.csv"
    with pytest.raises(LabelError, match="row 2: valence must be in 1..9"):
        write_manifest([ManifestRow("a.wav", 5.0, 5.0, ()), ManifestRow("b.wav", 0.0, 5.0, ())], target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(LabelError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")


def test_default_labels_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("M2E_LABELS_DIR", str(tmp_path / "x"))
    assert default_labels_dir() == tmp_path / "x"
    monkeypatch.delenv("M2E_LABELS_DIR")
    monkeypatch.setenv("M2E_HOME", str(tmp_path / "home"))
    assert default_labels_dir() == tmp_path / "home" / "labels"
