"""Label records, identities and the training manifest format (the store: test_labelstore.py)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from m2e_core.errors import LabelError
from m2e_core.labels import (
    Identity,
    LabelRecord,
    ManifestRow,
    csv_cell,
    csv_text,
    default_labels_dir,
    make_label,
    read_manifest,
    validate_label,
    write_manifest,
)

SHA = "a" * 64
OTHER_SHA = "b" * 64


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


# -- manifests -------------------------------------------------------------------------

TRICKY_ROWS = [
    ManifestRow("audio/a.flac", 0.1 + 0.2 + 4, 1.0, ("happy", "epic")),
    ManifestRow('dir with, comma/"quoted" é.mp3', None, None, ("dark",), 12.345678901234567, 42.0, 3),
    ManifestRow("/abs/path.wav", 9.0, 1.0000000000000002, ()),
    ManifestRow("x.ogg", 5.0, 5.0, ("calm",), 0.0, 30.0, None),
    ManifestRow("=2+5+cmd|' -c calc'!A0.wav", 5.0, 5.0, ()),
    ManifestRow("'=already escaped.wav", None, None, ("calm",)),
    ManifestRow("'quoted'.wav", None, None, ("calm",)),
    ManifestRow("@SUM(1).flac", 2.0, 3.0, ()),
    ManifestRow("-minus.mp3", 2.0, 3.0, ()),
    ManifestRow("+plus.mp3", 2.0, 3.0, ()),
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


# -- spreadsheet safety ------------------------------------------------------------------

FORMULA_STARTS = ["=", "+", "-", "@", "\t", "\r"]


@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'x", "''=y", "plain", "a=b", ""])
def test_csv_cell_escape_is_reversible_and_never_starts_a_formula(text):
    cell = csv_cell(text)
    assert not cell.startswith(tuple(FORMULA_STARTS))
    assert csv_text(cell) == text
    if text[:1] in FORMULA_STARTS:
        assert cell == "'" + text


def test_csv_manifest_cells_are_escaped_on_disk_and_read_back(tmp_path):
    evil = "=2+5+cmd|' -c calc'!A0.wav"
    path = write_manifest([ManifestRow(evil, 5.0, 5.0, ("happy",)), ManifestRow("@x.wav", None, None, ("sad",))],
                          tmp_path / "m.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert "'" + evil in cells and "'@x.wav" in cells
    assert not [cell for cell in cells if cell.startswith(tuple(FORMULA_STARTS))]
    assert [row.path for row in read_manifest(path)] == [evil, "@x.wav"]
    lines = write_manifest([ManifestRow(evil, 5.0, 5.0, ())], tmp_path / "m.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["path"] == evil  # JSON is not a spreadsheet format: written as is


def test_hand_written_apostrophes_are_kept_unless_they_escape(tmp_path):
    hand = tmp_path / "hand.csv"
    hand.write_text("path,valence,arousal,tags\n'quoted'.wav,5,5,\n'=1.wav,5,5,\n", encoding="utf-8")
    assert [row.path for row in read_manifest(hand)] == ["'quoted'.wav", "=1.wav"]


# -- identities ------------------------------------------------------------------------


def test_identities_are_validated_and_keyed_by_provider():
    assert Identity.local("  ann ") == Identity("ann", "local")
    assert Identity.huggingface("ann").key == "hf:ann" != Identity.local("ann").key
    for bad in ("", "   ", "a\nb", "x" * 101):
        with pytest.raises(LabelError, match="annotator must be a name"):
            Identity.local(bad)
    with pytest.raises(LabelError, match="unknown identity provider"):
        Identity("ann", "github")


def test_manifest_annotator_column_round_trips_and_is_checked(tmp_path):
    rows = [ManifestRow("a.wav", 5.0, 5.0, ("calm",), annotator="=ann"), ManifestRow("b.wav", None, None, ("sad",))]
    for suffix in ("csv", "jsonl"):
        path = write_manifest(rows, tmp_path / f"m.{suffix}")
        assert read_manifest(path) == rows
    assert "'=ann" in (tmp_path / "m.csv").read_text()  # a spreadsheet shows it as text
    with pytest.raises(LabelError, match="annotator"):
        write_manifest([ManifestRow("a.wav", 5.0, 5.0, (), annotator="two\nlines")], tmp_path / "bad.csv")
