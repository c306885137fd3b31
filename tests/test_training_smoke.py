"""End to end on a very small synthetic set: synth -> extract -> teachers -> student -> analyze."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from m2e_core.model import load_heads

SMOKE = Path(__file__).resolve().parent.parent / "training" / "configs" / "smoke.yaml"


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path, capsys, chord_backend, restore_threads, umask_022):
    from training.cli import main

    config = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    config["synthetic"].update(tracks=24, seconds=3.0)
    config["features"].update(segment_seconds=1.0, min_tail_seconds=0.5)
    config["training"].update(max_epochs=12, patience=4, learning_rate=1e-2, hidden_dim=32, branch_dim=16)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    workdir = tmp_path / "work"

    assert main(["--quiet", "train", "--config", str(path), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    run = workdir / "runs" / "smoke"
    for stem in ("teacher-synth_tags", "teacher-synth_va", "student"):
        assert (run / f"{stem}.safetensors").is_file() and (run / f"{stem}.json").is_file()
        assert (run / f"{stem}.history.json").is_file()
    assert "student" in out and "analyze with:" in out
    with (run / "report.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["model"], row["split"]) for row in rows} >= {("student", "test"), ("teacher:synth_va", "test")}
    assert json.loads((run / "report.json").read_text(encoding="utf-8"))["rows"]

    # The student loads with the library's loader and carries tasks, thresholds, metrics and its config.
    model, heads = load_heads(run / "student.safetensors")
    assert heads.tasks == ("tags", "va") and heads.tag_thresholds is not None
    assert set(heads.metrics["datasets"]) == {"synth_tags", "synth_va"}
    assert heads.training_config["config"]["name"] == "smoke"
    assert heads.provenance["features"]["encoder_name"] == "m2e-tiny-mert-seed0"
    teacher = load_heads(run / "teacher-synth_va.safetensors")[1]
    assert teacher.tasks == ("va",) and teacher.tag_thresholds is None

    # The student stage alone, distilling from teacher checkpoints named in the config.
    config["stages"] = ["student"]
    config["output_dir"] = "runs/student-only"
    config["teachers"] = {name: str(run / f"teacher-{name}.safetensors") for name in ("synth_tags", "synth_va")}
    student_only = tmp_path / "student.yaml"
    student_only.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "train", "--config", str(student_only), "--workdir", str(workdir)]) == 0
    trained = load_heads(workdir / "runs" / "student-only" / "student.safetensors")[1]
    assert trained.training_config["teachers"] == ["synth_tags", "synth_va"]
    capsys.readouterr()

    # A second extraction finds everything cached.
    assert main(["extract", "--config", str(path), "--workdir", str(workdir), "--no-progress"]) == 0
    again = capsys.readouterr().out
    tracks = len(list((workdir / "data" / "synth" / "audio").glob("*.wav")))
    assert again.startswith(f"{tracks} tracks: 0 extracted, {tracks} already cached, 0 failed ("), again

    # Evaluation of the saved checkpoint from the command line.
    assert main(["--quiet", "evaluate", "--config", str(path), "--workdir", str(workdir), "--checkpoint",
                 str(run / "student.safetensors"), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "evaluation.csv").is_file()

    # The Analyzer runs the trained checkpoint with the same tiny encoder.
    from m2e_core.pipeline import Analyzer

    analyzer = Analyzer(encoder=workdir / "cache" / "encoders" / "tiny-seed0", checkpoint=run / "student.safetensors",
                        chords=chord_backend, device="cpu", allow_download=False)
    analysis = analyzer.analyze(workdir / "data" / "synth" / "audio" / "synth_0000.wav")
    assert analysis.track is not None and analysis.track.decision_rule == "thresholds"
    assert math.isfinite(analysis.track.emotion.valence) and math.isfinite(analysis.track.emotion.arousal)
    # The Analyzer segments as the checkpoint was trained: 1 s segments, not the default 30 s.
    assert heads.provenance["features"]["segment_seconds"] == 1.0
    starts = [segment.start for segment in analysis.segments]
    assert len(starts) >= 2 and starts == [float(i) for i in range(len(starts))]
    assert analysis.segments[-1].end == pytest.approx(analysis.duration, abs=1e-3)

    # Every file the run wrote (synthetic audio, cache, tiny encoder, checkpoints, reports) has
    # the permissions the umask gives, as a plain open() would.
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in [*workdir.rglob("*"), *(tmp_path / "eval").rglob("*")]}
    wrong = {str(path): oct(mode) for path, mode in modes.items() if mode != (0o755 if path.is_dir() else 0o644)}
    assert len(modes) > 50 and wrong == {}
