"""Library analysis: one JSON line per track, resume after a kill, failures, shards and merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import ConfigError
from m2e_core.files import file_sha256
from m2e_core.library import (
    ResultsFile,
    TrackResult,
    analyze_library,
    merge_results,
    read_results,
    scan_library,
)
from m2e_core.sharding import DistributedContext, shard_file

ROOT = Path(__file__).resolve().parent.parent
LOOPS = [C_MAJOR_LOOP, A_MINOR_LOOP, C_MAJOR_LOOP[::-1], A_MINOR_LOOP[::-1], C_MAJOR_LOOP[1:] + C_MAJOR_LOOP[:1]]


def make_library(root: Path, count: int = 5, *, broken: bool = True) -> Path:
    """``count`` distinct synthesised tracks in two sub-folders, and one file that is not audio."""
    for index in range(count):
        folder = root / ("rock" if index % 2 else "jazz")
        folder.mkdir(parents=True, exist_ok=True)
        audio = synth_chord_loop(LOOPS[index % len(LOOPS)], repeats=1 + index // len(LOOPS), seconds_per_chord=1.5)
        sf.write(folder / f"track{index}.{'flac' if index % 3 == 0 else 'wav'}", audio, 22_050)
    if broken:
        (root / "rock").mkdir(parents=True, exist_ok=True)
        (root / "rock" / "broken.mp3").write_bytes(b"ID3" + b"\0" * 64)
    return root


class CountingAnalyzer:
    """A real key-and-chords Analyzer that counts the tracks it prepares (what a rerun must not redo)."""

    def __init__(self, analyzer):
        self.analyzer = analyzer
        self.prepared: list[str] = []
        self.device = analyzer.device

    def provenance(self):
        return self.analyzer.provenance()

    def prepare(self, path):
        self.prepared.append(Path(path).name)
        return self.analyzer.prepare(path)

    def complete(self, prepared):
        return self.analyzer.complete(prepared)


@pytest.fixture(scope="module")
def plain_analyzer():
    from m2e_core.pipeline import Analyzer

    return Analyzer(emotion=False, chords="chroma-hmm", device="cpu")


@pytest.fixture
def analyzer(plain_analyzer):
    return CountingAnalyzer(plain_analyzer)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_line_per_track_with_hash_and_failures(tmp_path, analyzer):
    library = make_library(tmp_path / "music")
    out = tmp_path / "results.jsonl"
    summary = analyze_library(analyzer, scan_library([library]), out, progress=False)
    assert (summary.total, summary.analysed, summary.failed, summary.already_done) == (6, 5, 1, 0)
    records = lines_of(out)
    assert sorted(r["path"] for r in records) == sorted(
        ["jazz/track0.flac", "rock/track1.wav", "jazz/track2.wav", "rock/track3.flac", "jazz/track4.wav",
         "rock/broken.mp3"])
    for record in records:
        assert record["sha256"] == file_sha256(library / record["path"])
        assert record["bytes"] == (library / record["path"]).stat().st_size
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["path"] == "rock/broken.mp3"
    assert "\n" not in failed[0]["error"] and failed[0]["error"].startswith("rock/broken.mp3: cannot decode")
    # Each "ok" line is the command line's analysis JSON, readable as an Analysis.
    ok = [entry.result.to_analysis() for entry in read_results(out) if entry.result.status == "ok"]
    keys = {a.source: (a.key.tonic, a.key.mode) for a in ok}
    assert keys["track0.flac"] == ("C", "major") and keys["track1.wav"] == ("A", "minor")


def test_resume_after_a_torn_last_line_loses_and_repeats_nothing(tmp_path, analyzer, plain_analyzer):
    library = make_library(tmp_path / "music", broken=False)
    out = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([library]), out, progress=False)
    complete = out.read_bytes().splitlines(keepends=True)
    # A crash while the third line was being written: two whole lines and part of the third.
    out.write_bytes(b"".join(complete[:2]) + complete[2][: len(complete[2]) // 2])
    again = CountingAnalyzer(plain_analyzer)
    summary = analyze_library(again, scan_library([library]), out, progress=False)
    assert summary.repaired.startswith("removed a torn last line")
    assert (summary.analysed, summary.already_done) == (3, 2)
    assert len(again.prepared) == 3
    resumed = out.read_bytes().splitlines(keepends=True)
    assert resumed[:2] == complete[:2]  # what was on disk stays byte for byte
    hashes = [json.loads(line)["sha256"] for line in resumed]
    assert len(hashes) == 5 and len(set(hashes)) == 5
    assert sorted(resumed) == sorted(complete)


def test_a_whole_last_line_without_newline_is_kept(tmp_path, analyzer, plain_analyzer):
    library = make_library(tmp_path / "music", count=2, broken=False)
    out = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([library]), out, progress=False)
    out.write_bytes(out.read_bytes()[:-1])
    again = CountingAnalyzer(plain_analyzer)
    summary = analyze_library(again, scan_library([library]), out, progress=False)
    assert summary.repaired.startswith("completed")
    assert again.prepared == [] and summary.already_done == 2
    assert len(lines_of(out)) == 2


def test_renamed_and_moved_files_are_not_analysed_again(tmp_path, analyzer, plain_analyzer):
    library = make_library(tmp_path / "music", count=3, broken=False)
    out = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([library]), out, progress=False)
    before = out.read_bytes()
    (library / "jazz" / "track0.flac").rename(library / "rock" / "renamed.flac")
    (library / "jazz" / "copy-of-track2.wav").write_bytes((library / "jazz" / "track2.wav").read_bytes())
    again = CountingAnalyzer(plain_analyzer)
    summary = analyze_library(again, scan_library([library]), out, progress=False)
    assert again.prepared == []  # hashed, found in the results, never decoded
    assert (summary.analysed, summary.already_done, summary.total) == (0, 4, 4)
    assert out.read_bytes() == before


def test_failures_are_not_retried_unless_asked(tmp_path, analyzer, plain_analyzer):
    library = make_library(tmp_path / "music", count=1)
    out = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([library]), out, progress=False)
    again = CountingAnalyzer(plain_analyzer)
    assert analyze_library(again, scan_library([library]), out, progress=False).failed == 0
    assert again.prepared == []
    retry = CountingAnalyzer(plain_analyzer)
    summary = analyze_library(retry, scan_library([library]), out, retry_failed=True, progress=False)
    assert retry.prepared == ["broken.mp3"] and summary.failed == 1


def test_shards_are_disjoint_and_merge_to_the_unsharded_result(tmp_path, analyzer):
    library = make_library(tmp_path / "music", count=5)
    tracks = scan_library([library])
    whole = tmp_path / "whole" / "results.jsonl"
    analyze_library(analyzer, tracks, whole, progress=False)
    sharded = tmp_path / "sharded" / "results.jsonl"
    totals = []
    for rank in range(2):
        summary = analyze_library(analyzer, tracks, sharded, context=DistributedContext(rank, 2), progress=False)
        assert summary.output == shard_file(sharded, rank, 2)
        totals.append(summary.total)
    assert sum(totals) == 6 and min(totals) > 0
    parts = [{r["path"] for r in lines_of(shard_file(sharded, rank, 2))} for rank in range(2)]
    assert not parts[0] & parts[1]
    assert not sharded.exists()
    merged = merge_results([shard_file(sharded, rank, 2) for rank in range(2)], sharded)
    assert (merged.ok, merged.failed, merged.duplicates) == (5, 1, 0)
    merge_results([whole], tmp_path / "whole-sorted.jsonl")
    assert sharded.read_bytes() == (tmp_path / "whole-sorted.jsonl").read_bytes()
    paths = [r["path"] for r in lines_of(sharded)]
    assert paths == sorted(paths)


def test_a_moved_file_done_by_another_shard_is_not_redone(tmp_path, analyzer, plain_analyzer):
    library = make_library(tmp_path / "music", count=4, broken=False)
    out = tmp_path / "results.jsonl"
    for rank in range(2):
        analyze_library(analyzer, scan_library([library]), out, context=DistributedContext(rank, 2), progress=False)
    # Rename files until one of them changes shard; its result lives in the other shard's file.
    context = DistributedContext(0, 2)
    source = next(p for p in sorted(library.rglob("*.*")))
    relative = source.relative_to(library).as_posix()
    target = next(f"moved/{n}-{source.name}" for n in range(100)
                  if context.owns(f"moved/{n}-{source.name}") != context.owns(relative))
    (library / target).parent.mkdir(parents=True, exist_ok=True)
    source.rename(library / target)
    for rank in range(2):
        again = CountingAnalyzer(plain_analyzer)
        analyze_library(again, scan_library([library]), out, context=DistributedContext(rank, 2), progress=False)
        assert again.prepared == []


def test_merge_prefers_results_and_drops_duplicates(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ok = TrackResult("x/song.wav", "1" * 64, "ok", 10, 5, {"source": "song.wav", "duration": 3.0})
    twin = TrackResult("a/same-song.wav", "1" * 64, "ok", 10, 7, {"source": "same-song.wav", "duration": 3.0})
    failure = TrackResult("x/song.wav", "1" * 64, "failed", 10, 5, error="x/song.wav: boom")
    other = TrackResult("b/bad.wav", "2" * 64, "failed", 3, 1, error="b/bad.wav: not audio")
    unreadable = TrackResult("x/song.wav", None, "failed", error="x/song.wav: cannot read the file")
    first.write_bytes(failure.to_line() + other.to_line() + unreadable.to_line())
    second.write_bytes(ok.to_line() + twin.to_line())
    out = tmp_path / "merged.jsonl"
    summary = merge_results([first, second], out)
    records = lines_of(out)
    assert [(r["path"], r["status"]) for r in records] == [("a/same-song.wav", "ok"), ("b/bad.wav", "failed")]
    assert (summary.ok, summary.failed, summary.duplicates, summary.lines_read) == (1, 1, 3, 5)
    assert records[0]["source"] == "same-song.wav" and records[0]["mtime_ns"] == 7
    # Merging a merged file with itself changes nothing.
    again = merge_results([out, out], out)
    assert again.ok == 1 and lines_of(out) == records


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "results.jsonl"
    with ResultsFile(out), pytest.raises(ConfigError, match="another m2e process"):
        ResultsFile(out).open()
    with ResultsFile(out) as reopened:  # the lock goes with the first writer
        assert reopened.entries == []


def test_damaged_line_is_named(tmp_path):
    out = tmp_path / "results.jsonl"
    line = TrackResult("a.wav", "1" * 64, "failed", error="a.wav: boom").to_line()
    out.write_bytes(line + b"{not json\n" + line)
    with pytest.raises(ConfigError, match=r"line 2 is not a result record"):
        ResultsFile(out).open()
    assert out.read_bytes() == line + b"{not json\n" + line  # nothing was changed


def test_results_of_other_models_are_refused(tmp_path, analyzer):
    library = make_library(tmp_path / "music", count=1, broken=False)
    out = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([library]), out, progress=False)
    record = lines_of(out)[0]
    for item in record["provenance"]:
        if item["role"] == "chords":
            item["name"] = "some-other-recogniser"
    out.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="chords: some-other-recogniser there, chroma-hmm now"):
        analyze_library(analyzer, scan_library([library]), out, progress=False)


def test_scan_library_paths_are_relative_to_each_folder(tmp_path):
    library = make_library(tmp_path / "music", count=2)
    (library / "notes.txt").write_text("not audio")
    tracks = scan_library([library, library / "jazz" / "track0.flac"])
    assert [t.relative for t in tracks] == ["jazz/track0.flac", "rock/broken.mp3", "rock/track1.wav",
                                            (library / "jazz" / "track0.flac").as_posix()]
    with pytest.raises(ConfigError, match="no such file or folder"):
        scan_library([tmp_path / "nowhere"])


# -- the command line, in processes: SIGKILL mid-run, torchrun ---------------------------------


def cli_env(home: Path) -> dict[str, str]:
    return dict(os.environ, M2E_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    made = subprocess.run([sys.executable, "-m", "m2e_core", "make-tiny-models", str(root), "--no-btc"],
                          env=cli_env(root / "home"), capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    return root


def tiny_flags(tiny: Path) -> list[str]:
    return ["--encoder", str(tiny / "encoder"), "--checkpoint", str(tiny / "heads.safetensors"),
            "--device", "cpu"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path):
    library = make_library(tmp_path / "music", count=10, broken=False)
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "m2e_core", "analyze", str(library), "--out", str(out), "--no-emotion",
               "--chords", "chroma-hmm", "--no-progress"]
    process = subprocess.Popen(command, env=cli_env(tmp_path / "home"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if out.is_file() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    written = out.read_bytes().count(b"\n")
    assert 2 <= written < 10  # killed mid-run
    done = subprocess.run(command, env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = lines_of(out)
    assert len(records) == 10 and len({r["sha256"] for r in records}) == 10
    assert all(r["status"] == "ok" for r in records)
    assert f"analysed {10 - written}, failed 0, done before {written} of 10" in done.stderr


@pytest.mark.slow
def test_library_command_with_tiny_models(tmp_path, tiny):
    library = make_library(tmp_path / "music", count=3)
    out = tmp_path / "out" / "results.jsonl"
    command = [sys.executable, "-m", "m2e_core", "analyze", str(library), "--out", str(out), *tiny_flags(tiny)]
    result = subprocess.run(command, env=cli_env(tmp_path / "home"), capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 2, result.stderr  # one file failed, the others are done
    records = lines_of(out)
    assert len(records) == 4
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 3 and all(len(r["track"]["tags"]) == 56 and r["segments"] for r in ok)
    # The model reads chords from a recogniser it was not trained on (no BTC weights here): said once.
    assert result.stderr.count("warning: the emotion model reads chords from") == 1
    assert all(r["warnings"] for r in ok)
    assert "failed 1" in result.stderr  # the progress bar counts failures
    assert "failed rock/broken.mp3: cannot decode" in result.stderr
    again = subprocess.run(command, env=cli_env(tmp_path / "home"), capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "analysed 0, failed 0, done before 4 of 4" in again.stderr
    assert len(lines_of(out)) == 4


@pytest.mark.slow
def test_torchrun_two_ranks_write_shards_and_merge(tmp_path, tiny):
    library = make_library(tmp_path / "music", count=5)
    tracks = scan_library([library])
    assert all(DistributedContext(rank, 2).shard(tracks, key=lambda t: t.relative) for rank in range(2))
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "m2e_core",
               "analyze", str(library), "--out", str(out), *tiny_flags(tiny), "--chords", "chroma-hmm"]
    result = subprocess.run(command, env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr  # the broken file is recorded, not a crashed rank
    shards = [shard_file(out, rank, 2) for rank in range(2)]
    per_rank = [lines_of(path) for path in shards]
    assert all(per_rank) and sum(len(lines) for lines in per_rank) == 6
    assert "rank 0/2: analysed" in result.stderr and "rank 1/2: analysed" in result.stderr
    merged = lines_of(out)
    assert sorted(r["path"] for r in merged) == sorted(t.relative for t in tracks)
    assert [r["path"] for r in merged] == sorted(r["path"] for r in merged)
    assert {r["sha256"] for r in merged if r["status"] == "ok"} == {
        file_sha256(t.path) for t in tracks if t.path.suffix != ".mp3"}
    # The same library in one process gives the same results (the emotion figures to fp32 rounding).
    single = tmp_path / "single.jsonl"
    alone = subprocess.run([sys.executable, "-m", "m2e_core", "analyze", str(library), "--out", str(single),
                            *tiny_flags(tiny), "--chords", "chroma-hmm", "--no-progress"],
                           env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 2, alone.stderr
    by_hash = {r["sha256"]: r for r in lines_of(single)}
    for record in merged:
        twin = by_hash[record["sha256"]]
        assert record["status"] == twin["status"] and record["path"] == twin["path"]
        if record["status"] == "ok":
            assert record["chords"] == twin["chords"] and record["key"] == twin["key"]
            assert record["track"]["valence"] == pytest.approx(twin["track"]["valence"], abs=1e-4)
            assert record["track"]["tags"] == pytest.approx(twin["track"]["tags"], abs=1e-4)


def test_shard_contexts_from_the_command_line_and_torchrun(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert DistributedContext.resolve("1/3") == DistributedContext(1, 3)
    assert DistributedContext.resolve(None) == DistributedContext(0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert DistributedContext.resolve(None) == DistributedContext(3, 4, 1, torchrun=True)
    with pytest.raises(ConfigError, match="use one or the other"):
        DistributedContext.resolve("0/2")
    assert shard_file(tmp_path / "r.jsonl", 3, 4).name == "r.jsonl.shard-3-of-4"
    assert shard_file(tmp_path / "r.jsonl", 0, 1) == tmp_path / "r.jsonl"
    from m2e_core.sharding import shard_files

    for name in ("r.jsonl.shard-1-of-2", "r.jsonl.shard-0-of-2", "r.jsonl.shard-x", "other.jsonl.shard-0-of-2"):
        (tmp_path / name).write_text("")
    assert [p.name for p in shard_files(tmp_path / "r.jsonl")] == ["r.jsonl.shard-0-of-2", "r.jsonl.shard-1-of-2"]
