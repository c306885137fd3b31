"""Whole runs on a feature cache made without models: counts, console output, reproducibility,
file permissions, packaged configs and the command line as installed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from m2e_core.errors import AudioError, ConfigError
from m2e_core.labels import ManifestRow, write_manifest
from m2e_core.types import ChordSpan, KeyEstimate
from training.cache import FeatureCache, FeatureIdentity, TrackFeatures, extract_features
from training.config import load_config, packaged_configs, parse_config, resolve_config_path

EMBEDDING_DIM = 12
IDENTITY = FeatureIdentity("toy-encoder", None, None, (1,), 24_000, 1.0, 0.5, "fp32", "toy-chords", None, None)
PACKAGED_SMOKE = (Path(__import__("training").__file__).parent / "configs" / "smoke.yaml").resolve()


class ToyExtractor:
    """Stands in for the encoder and chord models: a track's features are its file's bytes.

    Each toy audio file holds float32 numbers (a latent vector); the segments are that vector
    plus a little content-derived noise. Files named ``bad*`` fail to "decode".
    """

    identity = IDENTITY

    def __init__(self) -> None:
        self.extracted: list[str] = []

    def load(self, track):
        if track.audio_path.name.startswith("bad"):
            raise AudioError(f"{track.audio_path}: cannot decode")
        return track.audio_path, None

    def extract(self, path, _chords) -> TrackFeatures:
        self.extracted.append(path.name)
        latent = np.frombuffer(path.read_bytes(), dtype=np.float32)
        noise = np.random.default_rng(int(abs(latent[0]) * 1e6)).standard_normal((3, len(latent)))
        embeddings = (latent[None, :] + 0.1 * noise).astype(np.float32)
        mode = "major" if latent[0] > 0 else "minor"
        roots = np.zeros(100, dtype=np.int64)
        roots[:2] = (1, 8)
        return TrackFeatures(embeddings, np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]),
                             (ChordSpan(0.0, 3.0, "C:maj"),), (ChordSpan(0.0, 3.0, "C:maj"),),
                             KeyEstimate("C", mode, 0.9), roots, np.zeros(100, dtype=np.int64), 3.0)


def _toy_data(directory: Path, count: int = 40, *, seed: int = 0, bad: int = 0) -> Path:
    """A manifest of toy clips: 40 % tags only, 40 % VA only, 20 % both (as the synthetic set); bad ones both."""
    rng = np.random.default_rng(seed)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count + bad):
        name = f"bad{index}.raw" if index >= count else f"clip{index:03d}.raw"
        latent = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        (directory / "audio" / name).write_bytes(latent.tobytes())
        signal = float(latent[0])
        kind = "both" if index >= count else ("tags", "tags", "va", "va", "both")[index % 5]
        tags = (("happy",) if signal > 0 else ("sad",)) if kind != "va" else ()
        valence = 5.0 + 1.5 * signal if kind != "tags" else None
        arousal = 5.0 - float(latent[1]) if kind != "tags" else None
        rows.append(ManifestRow(f"audio/{name}", valence, arousal, tags))
    return write_manifest(rows, directory / "manifest.csv")


def _config(workdir: Path, **training) -> dict:
    return {
        "name": "toy",
        "seed": 0,
        "cache_dir": "cache",
        "output_dir": "runs/toy",
        "features": {"encoder": "tiny", "segment_seconds": 1.0, "min_tail_seconds": 0.5, "device": "cpu",
                     "workers": 1},
        "datasets": [{"name": "toy_tags", "kind": "manifest", "manifest": "data/manifest.csv", "task": "tags"},
                     {"name": "toy_va", "kind": "manifest", "manifest": "data/manifest.csv", "task": "va"}],
        "training": {"device": "cpu", "bf16": False, "learning_rate": 1e-2, "max_epochs": 4, "patience": 3,
                     "hidden_dim": 16, "branch_dim": 8, **training},
    }


@pytest.fixture
def toy_workdir(tmp_path):
    """A work directory with toy data and its features in the cache (no model runs)."""
    workdir = tmp_path / "work"
    _toy_data(workdir / "data")
    config = parse_config(_config(workdir), workdir=workdir)
    datasets = [spec.load() for spec in config.datasets]
    extract_features(datasets, config.features, FeatureCache(config.cache_dir), extractor=ToyExtractor(),
                     progress=False)
    return workdir


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- counts ---------------------------------------------------------------------------------


def test_extraction_counts_add_up_when_datasets_share_tracks(tmp_path):
    manifest = _toy_data(tmp_path / "data", 20, bad=1)
    (tmp_path / "data" / "audio" / "clip004.raw").unlink()  # listed in both datasets (index 4: "both")
    from training.datasets import load_manifest_dataset

    datasets = [load_manifest_dataset(manifest, "tags", name="tags"), load_manifest_dataset(manifest, "va", name="va")]
    listings = sum(len(d.tracks) for d in datasets)
    shared = {t.audio_path for t in datasets[0].tracks} & {t.audio_path for t in datasets[1].tracks}
    assert len(shared) == 5  # clips 4, 9, 14, 19 and the bad one carry tags and valence/arousal
    settings = parse_config(_config(tmp_path), workdir=tmp_path).features
    cache = FeatureCache(tmp_path / "cache")
    extractor = ToyExtractor()
    outcomes: list[str] = []
    report = extract_features(datasets, settings, cache, extractor=extractor, progress=False,
                              on_track=lambda track, outcome: outcomes.append(outcome))
    # 21 files, each extracted at most once; the listings of a shared file are counted apart.
    assert (report.listings, report.tracks) == (listings, 21) == (26, 21)
    assert (report.extracted, report.cached, report.failed_tracks) == (19, 0, 2)
    assert report.tracks == report.extracted + report.cached + report.failed_tracks
    assert report.multi_listed == 5 and len(extractor.extracted) == 19
    assert len(report.failed) == 4  # both listings of the missing file and of the undecodable one
    assert report.summary() == ("21 tracks: 19 extracted, 0 already cached, 2 failed "
                                "(26 listings in 2 datasets: 5 tracks listed twice, extracted once)")
    assert outcomes.count("repeat") == 4 and outcomes.count("extracted") == 19
    # Both datasets' indexes name the failure, so training says why a track is missing.
    for name in ("tags", "va"):
        records = cache.read_index(name, settings)
        assert "cannot decode" in records["audio/bad20.raw"]["error"]
        assert "not readable" in records["audio/clip004.raw"]["error"]

    again = extract_features(datasets, settings, cache, extractor=extractor, progress=False)
    assert (again.tracks, again.extracted, again.cached, again.failed_tracks) == (21, 0, 19, 2)
    assert again.summary().startswith("21 tracks: 0 extracted, 19 already cached, 2 failed (26 listings")


# -- console output -------------------------------------------------------------------------


def test_training_prints_a_line_every_few_epochs_and_the_report(toy_workdir, tmp_path, capsys, one_thread):
    from training.cli import main

    config = _write_config(tmp_path / "toy.yaml", _config(toy_workdir, max_epochs=12, patience=50, log_every=5))
    assert main(["train", "--config", str(config), "--workdir", str(toy_workdir)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    for label in ("teacher:toy_tags", "teacher:toy_va", "student"):
        epochs = [line for line in lines if line.startswith(f"[{label}] epoch")]
        assert [line.split()[2] for line in epochs] == ["1/12", "5/12", "10/12", "12/12"]
        closing = [line for line in lines if line.startswith(f"[{label}] reached max_epochs 12")]
        assert len(closing) == 1 and "kept epoch" in closing[0]
    assert len(lines) == 3 * (1 + 4 + 1)  # per model: what it reads, 4 epoch lines, why it stopped
    assert "student" in captured.out and "chance:train-prior" in captured.out and "analyze with: m2e" in captured.out

    # --log-every overrides the config; --quiet leaves only the report.
    assert main(["train", "--config", str(config), "--workdir", str(toy_workdir), "--log-every", "0"]) == 0
    epochs = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[student] epoch")]
    assert [line.split()[2] for line in epochs] == ["1/12", "12/12"]
    assert main(["train", "--config", str(config), "--workdir", str(toy_workdir), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "student" in quiet.out


def test_early_stop_says_why_and_which_epoch_was_kept(toy_workdir, tmp_path, capsys, one_thread):
    from training.cli import main

    config = _write_config(tmp_path / "toy.yaml", _config(toy_workdir, max_epochs=60, patience=1,
                                                          learning_rate=0.5))
    assert main(["train", "--config", str(config), "--workdir", str(toy_workdir), "--stage", "teachers"]) == 0
    err = capsys.readouterr().err
    assert "stopped early after epoch" in err and "(1 without improvement); kept epoch" in err


# -- reproducibility ------------------------------------------------------------------------


def _train(workdir: Path, output: str, **overrides) -> Path:
    from training.solver import run

    seed = overrides.pop("seed", 0)
    data = _config(workdir, **overrides)
    data.update(seed=seed, output_dir=output)
    run(parse_config(data, workdir=workdir))
    return workdir / output


def _run_files(directory: Path) -> dict[str, tuple[dict, bytes]]:
    """Per checkpoint: the tensor index (names, dtypes, shapes, offsets) and every byte of the tensors.

    The file's metadata is left out: safetensors writes its entries in hash-map order, which
    changes from one process to the next.
    """
    files = {}
    for path in sorted(directory.glob("*.safetensors")):
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        header.pop("__metadata__", None)
        files[path.name] = (header, data[8 + size:])
    return files


def _metrics(directory: Path) -> list[dict]:
    return json.loads((directory / "report.json").read_text(encoding="utf-8"))["rows"]


@pytest.mark.slow
def test_same_config_and_seed_give_bit_identical_checkpoints_and_metrics(toy_workdir, one_thread):
    first = _train(toy_workdir, "runs/first")
    second = _train(toy_workdir, "runs/second")
    weights = _run_files(first)
    assert set(weights) == {"teacher-toy_tags.safetensors", "teacher-toy_va.safetensors", "student.safetensors"}
    assert weights == _run_files(second)  # every byte of every tensor of every checkpoint
    assert _metrics(first) == _metrics(second)
    # The loader workers do not change the batches or the augmented spans.
    assert _run_files(_train(toy_workdir, "runs/workers", num_workers=1)) == weights
    # The control: another seed trains other weights.
    other = _run_files(_train(toy_workdir, "runs/other-seed", seed=1))
    assert all(other[name] != weights[name] for name in weights)
    # The checkpoint says what else decides its exact figures.
    from m2e_core.model import load_heads

    environment = load_heads(first / "student.safetensors")[1].metrics["environment"]
    assert environment["torch"] == torch.__version__ and environment["cpu_threads"] == 1
    assert environment["deterministic"] is True and environment["cpu_capability"]


def test_training_leaves_the_callers_random_state_and_torch_settings_alone(toy_workdir, one_thread):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _train(toy_workdir, "runs/state", max_epochs=1)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


# -- file permissions -----------------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}


def _assert_umask_022_modes(root: Path) -> None:
    modes = _modes(root)
    assert modes
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (root / name).is_dir() else 0o644)}
    assert wrong == {}


def test_training_writes_files_with_the_users_umask(tmp_path, umask_022, one_thread):
    workdir = tmp_path / "work"
    _toy_data(workdir / "data")
    config = parse_config(_config(workdir, max_epochs=2), workdir=workdir)
    extract_features([spec.load() for spec in config.datasets], config.features, FeatureCache(config.cache_dir),
                     extractor=ToyExtractor(), progress=False)
    from training.evaluate import write_report
    from training.solver import run

    summary = run(config)
    write_report([dict(row) for model in summary.models for row in model.rows], tmp_path / "work" / "eval")
    names = set(_modes(workdir))
    assert {"runs/toy/student.safetensors", "runs/toy/student.json", "runs/toy/student.history.json",
            "runs/toy/report.csv", "runs/toy/report.json", "eval/report.csv"} <= names
    assert any(name.startswith("cache/index/toy_tags.") for name in names)
    assert any(name.startswith("cache/entries/") and name.endswith(".npz") for name in names)
    for written in ("cache", "runs", "eval"):  # data/ is the test's own
        _assert_umask_022_modes(workdir / written)


def test_synthetic_data_gets_the_users_umask(tmp_path, umask_022):
    from training.synthetic import generate

    generate(tmp_path / "synth", tracks=10, seconds=2.0)
    assert sorted(_modes(tmp_path / "synth"))[:3] == ["audio", "audio/synth_0000.wav", "audio/synth_0001.wav"]
    assert {"manifest.csv", "truth.json"} <= set(_modes(tmp_path / "synth"))
    _assert_umask_022_modes(tmp_path / "synth")


# -- configs by name, paths and the command line --------------------------------------------


def test_a_bare_name_finds_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"smoke", "jamendo", "deam", "pmemo", "emomusic", "student_all"} <= set(packaged_configs())
    for name in ("smoke", "smoke.yaml"):
        assert resolve_config_path(name).resolve() == PACKAGED_SMOKE
    config = load_config("smoke", workdir=tmp_path / "w")
    # Relative paths resolve against the work directory, not the config's folder.
    assert config.cache_dir == tmp_path / "w" / "cache" and config.output_dir == tmp_path / "w" / "runs" / "smoke"
    assert config.datasets[0].manifest == tmp_path / "w" / "data" / "synth" / "manifest.csv"
    assert load_config("smoke").cache_dir == tmp_path / "cache"  # default: the current directory
    # A file of that name wins over the packaged config; a path with a folder is only that file.
    (tmp_path / "smoke").write_text(yaml.safe_dump({**_config(tmp_path), "name": "local"}), encoding="utf-8")
    assert load_config("smoke").name == "local"
    with pytest.raises(ConfigError, match=r"config file not found: configs/smoke \(a YAML file, or one of the "
                                          r"packaged configs: .*smoke"):
        resolve_config_path("configs/smoke")
    with pytest.raises(ConfigError, match="packaged configs: deam, emomusic, jamendo, pmemo, smoke, student_all"):
        resolve_config_path("smokee")


def _all_help(parser) -> list[str]:
    import argparse

    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    return texts


def test_help_is_plain_text_and_names_the_command(tmp_path):
    from training.cli import build_parser

    texts = _all_help(build_parser())
    assert len(texts) == 6
    assert all("``" not in text and ":mod:" not in text for text in texts)
    assert texts[0].startswith("usage: m2e-train ")
    assert "--workdir (default: the current directory)" in texts[0] and "smoke, student_all" in texts[0]
    assert build_parser("python -m training").format_usage().startswith("usage: python -m training ")
    result = subprocess.run([sys.executable, "-m", "training", "train", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout.startswith("usage: python -m training train ") and "``" not in result.stdout


def _console_script() -> str:
    script = shutil.which("m2e-train", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("the m2e-train console script is not installed next to this Python: pip install -e .")
    return script


@pytest.mark.slow
def test_console_script_runs_a_packaged_config_from_any_directory(tmp_path):
    script = _console_script()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workdir = tmp_path / "work"
    environment = dict(os.environ)
    subprocess.run([script, "synth", "--out", str(workdir / "data" / "synth"), "--tracks", "10", "--seconds", "2"],
                   cwd=elsewhere, env=environment, check=True, capture_output=True, text=True)
    result = subprocess.run([script, "datasets", "--config", "smoke", "--workdir", str(workdir)], cwd=elsewhere,
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["synth_tags", "synth_va"]
    assert all(line.split()[-2:][0] == "total" for line in lines)
    assert list(elsewhere.iterdir()) == []  # nothing written to the working directory
    missing = subprocess.run([script, "datasets", "--config", "nosuch"], cwd=elsewhere, env=environment,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: config file not found: nosuch (a YAML file, or one of the packaged")
