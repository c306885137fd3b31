"""The command line contract: output shapes, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import C_MAJOR_LOOP, synth_chord_loop

from m2e_core.cli import analyses_to_csv, collect_inputs

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, M2E_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "m2e_core", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    music = root / "music"
    music.mkdir()
    sf.write(music / "loop.wav", synth_chord_loop(C_MAJOR_LOOP, repeats=2), 22_050)
    (music / "broken.mp3").write_bytes(b"ID3" + b"\0" * 64)
    (music / "readme.txt").write_text("not picked up: not an audio extension")
    cwd = root / "cwd"
    cwd.mkdir()
    return root, music, cwd


@pytest.mark.slow
def test_no_emotion_single_file(workspace):
    root, music, cwd = workspace
    result = run_cli("analyze", str(music / "loop.wav"), "--no-emotion", cwd=cwd, home=root / "home")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["key"]["tonic"] == "C" and data["key"]["mode"] == "major"
    assert {"start", "end", "label"} <= set(data["chords"][0])
    assert "segments" not in data and "track" not in data
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_bad_single_input_is_one_line(workspace):
    root, music, cwd = workspace
    result = run_cli("analyze", str(music / "broken.mp3"), "--no-emotion", cwd=cwd, home=root / "home")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "broken.mp3" in lines[0]


@pytest.mark.slow
def test_missing_weights_is_one_line(workspace):
    root, music, cwd = workspace
    result = run_cli("analyze", str(music / "loop.wav"), "--offline", cwd=cwd, home=root / "home")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    # Says how to fetch the weights, and how to go on without them.
    assert "m2e download" in lines[0] and "--no-emotion" in lines[0]
    assert lines[0].count("--no-emotion") == 1


@pytest.mark.slow
def test_directory_with_tiny_models_skips_bad_file(workspace):
    root, music, cwd = workspace
    tiny = root / "tiny"
    made = run_cli("make-tiny-models", str(tiny), cwd=cwd, home=root / "home")
    assert made.returncode == 0, made.stderr
    out_json, out_csv = root / "out" / "a.json", root / "out" / "a.csv"
    result = run_cli("analyze", str(music), "--encoder", str(tiny / "encoder"),
                     "--checkpoint", str(tiny / "heads.safetensors"), "--json", str(out_json),
                     "--csv", str(out_csv), cwd=cwd, home=root / "home")
    assert result.returncode == 2, result.stderr  # partial success
    data = json.loads(out_json.read_text())
    assert [t["source"] for t in data["tracks"]] == ["loop.wav"]
    assert [Path(f["source"]).name for f in data["failed"]] == ["broken.mp3"]
    track = data["tracks"][0]
    assert len(track["segments"]) == 1 and len(track["segments"][0]["tags"]) == 56
    assert 1 <= len(track["track"]["selected_tags"]) <= 5
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["segment"] for r in rows] == ["track", "0"]
    assert rows[0]["key_tonic"] == "C"
    assert os.listdir(cwd) == []


def test_collect_inputs(workspace):
    _, music, _ = workspace
    files, batch = collect_inputs([str(music)])
    assert batch and [f.name for f in files] == ["broken.mp3", "loop.wav"]
    files, batch = collect_inputs([str(music / "loop.wav")])
    assert not batch and len(files) == 1


def test_csv_without_emotion():
    text = analyses_to_csv([{
        "source": "x.wav", "duration": 12.0,
        "key": {"tonic": "D", "mode": "minor", "confidence": 0.5}, "chords": [],
    }])
    rows = list(csv.DictReader(text.splitlines()))
    assert rows == [{"source": "x.wav", "segment": "track", "start": "0.0", "end": "12.0",
                     "key_tonic": "D", "key_mode": "minor", "key_confidence": "0.5",
                     "valence": "", "arousal": "", "top_tags": ""}]


def test_fast_is_refused_without_native_bf16(workspace, monkeypatch, capsys):
    import m2e_core.encoder
    from m2e_core.cli import main

    root, music, _ = workspace
    monkeypatch.setattr(m2e_core.encoder, "native_bf16", lambda device: False)
    code = main(["analyze", str(music / "loop.wav"), "--fast", "--device", "cpu", "--offline"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "native bf16" in err[0] and "drop --fast" in err[0]


def test_help_names_m2e_and_has_no_markup(capsys):
    from m2e_core.cli import main

    for argv in (["--help"], ["analyze", "--help"], ["merge", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: m2e ")
        assert "``" not in text and ":func:" not in text and ":mod:" not in text
    main_help = subprocess.run([sys.executable, "-m", "m2e_core", "--help"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert "--out results.jsonl" in main_help.stdout and "m2e merge" in main_help.stdout


@pytest.mark.parametrize("content, words", [(b"", "the file is empty"), (b"ID3" + b"\0" * 64, "cannot decode"),
                                            (None, "no such file")])
def test_bad_input_fails_before_any_model_loads(tmp_path, content, words):
    # Checked before torch is even imported: no model is loaded for an input that cannot be analysed.
    path = tmp_path / "song.wav"
    if content is not None:
        path.write_bytes(content)
    probe = ("import sys; from m2e_core.cli import main; code = main(['analyze', sys.argv[1]]); "
             "print('torch' in sys.modules, code)")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert result.stdout.split() == ["False", "1"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "song.wav" in lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--shard", "0/2"], "--shard applies to library mode"),
    (["--out", "r.jsonl", "--json", "x.json"], "drop --json/--csv"),
    (["--out", "r.jsonl", "--shard", "2/2"], "I must be in 0..N-1"),
    (["--out", "r.jsonl", "--shard", "half"], "--shard takes I/N"),
    (["--out", "r.jsonl", "--workers", "0"], "--workers must be >= 1"),
])
def test_library_options_are_checked(workspace, capsys, argv, words):
    from m2e_core.cli import main

    _, music, _ = workspace
    assert main(["analyze", str(music), *argv, "--no-emotion"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_merge_command(tmp_path, capsys):
    from m2e_core.cli import main
    from m2e_core.library import TrackResult

    first, second = tmp_path / "r.jsonl.shard-0-of-2", tmp_path / "r.jsonl.shard-1-of-2"
    first.write_bytes(TrackResult("b.wav", "2" * 64, "ok", 1, 1, {"source": "b.wav"}).to_line())
    second.write_bytes(TrackResult("a.wav", "1" * 64, "failed", 1, 1, error="a.wav: not audio").to_line())
    assert main(["merge", str(first), str(second), "--out", str(tmp_path / "r.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("a.wav", "failed"), ("b.wav", "ok")]
    assert "1 results and 1 failures from 2 files" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 1


@pytest.mark.slow
def test_tiny_models_include_a_btc_that_feeds_the_model(workspace):
    root, music, cwd = workspace
    tiny = root / "tiny-btc"
    made = run_cli("make-tiny-models", str(tiny), cwd=cwd, home=root / "home")
    assert made.returncode == 0, made.stderr
    assert f"--btc-checkpoint {tiny / 'btc.pt'}" in made.stdout
    result = run_cli("analyze", str(music / "loop.wav"), "--encoder", str(tiny / "encoder"),
                     "--checkpoint", str(tiny / "heads.safetensors"), "--btc-checkpoint", str(tiny / "btc.pt"),
                     cwd=cwd, home=root / "home")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    roles = {item["role"]: item["name"] for item in data["provenance"]}
    assert roles["chords"] == "btc-large-voca" and roles["model-chords"] == "btc-large-voca"
    assert data["warnings"] == [] and "warning:" not in result.stderr


def test_library_output_is_checked_before_models_load(workspace, tmp_path):
    _, music, _ = workspace
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    probe = ("import sys; from m2e_core.cli import main; code = main(['analyze', sys.argv[1], '--out', sys.argv[2]]); "
             "print('torch' in sys.modules, code)")
    result = subprocess.run([sys.executable, "-c", probe, str(music), str(blocker / "results.jsonl")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
    assert result.stdout.split() == ["False", "1"]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a writable folder" in lines[0]


@pytest.mark.slow
def test_library_run_without_weights_leaves_no_file(workspace, tmp_path):
    root, music, cwd = workspace
    out = tmp_path / "results.jsonl"
    result = run_cli("analyze", str(music), "--out", str(out), "--offline", cwd=cwd, home=root / "home")
    assert result.returncode == 1 and "--no-emotion" in result.stderr
    assert not out.exists() and os.listdir(tmp_path) == []
