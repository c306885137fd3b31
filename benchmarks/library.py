"""Library throughput (tracks/hour), kill-and-resume and shard-and-merge checks of ``m2e analyze --out``.

Usage (from the repository root)::

    python benchmarks/library.py                        # 40 tracks of 3 min, tiny models; full-size on 8
    python benchmarks/library.py --tracks 10 --seconds 60 --full-tracks 0    # a quick look

Material: ``--tracks`` synthesised tracks (chords on organ-like tones, a bass line and noise
hi-hats, each with its own noise so every file has its own hash; 44.1 kHz stereo FLAC), made once
under ``benchmarks/.work/library``.

Models, all random (nothing is downloaded, timing does not depend on weight values):

- ``tiny``: the tiny MERT-style encoder and heads of ``m2e make-tiny-models`` (32 wide) and BTC at
  its real size (the published large-vocabulary architecture). BTC feeds the emotion model and its
  chords are displayed, as with the published heads: the work per track is decoding, BTC, the key
  estimates and a small encoder, so this measures how the library path overlaps the stages of
  different tracks and what process start-up costs.
- ``full``: the MERT-v1-95M architecture (``benchmarks/speed.py``) with full-size heads and the
  same BTC, on the first ``--full-tracks`` tracks: the encoder dominates as it does with real
  weights.

Configurations, each timed from process start to exit (model loading included, once per process):

- ``cli-per-file``: one ``m2e analyze FILE --json OUT`` process per track, one after another, as
  a user scripts it in a shell loop (run last; ``--cli-tracks`` runs it on the first tracks only);
- ``serial-loop``: one Python process, ``Analyzer`` built once, ``analyze`` on each track in turn,
  each result written as JSON;
- ``library``: ``m2e analyze DIR --out results.jsonl`` (worker threads prepare the next tracks
  while the encoder runs), with ``--workers`` 1 and 2;
- ``shards-2``: ``--shard 0/2`` and ``--shard 1/2`` as two processes at once, then ``m2e merge``.

Checks: a library run killed with SIGKILL once a third of the lines are on disk, then run again,
must end with every track exactly once (lines counted, hashes compared with the files), the lines
written before the kill unchanged, and the same results as the uninterrupted run; the merged
shards must equal the unsharded run (merged to the same order) byte for byte.

Results: ``benchmarks/results/library.csv`` and ``library.md``, with the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, Path(__file__).resolve().parent):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from speed import machine_description, make_random_mert, synthesize_track  # noqa: E402

TRACK_RATE = 44_100


# -- material -----------------------------------------------------------------------------------


def make_tracks(directory: Path, count: int, seconds: float) -> list[Path]:
    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"album{index % 4}" / f"track{index:03d}.flac"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.flac")
            sf.write(partial, synthesize_track(seconds, seed=1000 + index), TRACK_RATE, format="FLAC",
                     subtype="PCM_16")
            partial.replace(path)
        paths.append(path)
    return paths


def make_models(work: Path) -> dict[str, list[str]]:
    """Model flags of each model set (``tiny``, ``full``); written once."""
    from m2e_core.btc import make_random_btc_checkpoint
    from m2e_core.encoder import MertEncoder, make_tiny_encoder
    from m2e_core.model import make_tiny_heads

    tiny = work / "models-tiny"
    if not (tiny / "heads.safetensors").is_file():
        encoder = make_tiny_encoder(tiny / "encoder", seed=0)
        make_tiny_heads(tiny / "heads.safetensors", embedding_dim=MertEncoder.from_pretrained(encoder).embedding_dim)
    btc = work / "btc-random.pt"
    if not btc.is_file():
        make_random_btc_checkpoint(btc, seed=0)
    full = work / "models-full"
    mert = make_random_mert(full / "mert-v1-95m-random")
    heads = full / "heads.safetensors"
    if not heads.is_file():
        make_tiny_heads(heads, embedding_dim=1536, seed=0)
    common = ["--btc-checkpoint", str(btc), "--device", "cpu", "--offline"]
    return {
        "tiny": ["--encoder", str(tiny / "encoder"), "--checkpoint", str(tiny / "heads.safetensors"), *common],
        "full": ["--encoder", str(mert), "--checkpoint", str(heads), *common],
    }


# -- running ------------------------------------------------------------------------------------


def environment(work: Path) -> dict[str, str]:
    return dict(os.environ, M2E_HOME=str(work / "m2e-home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "m2e_core", *args]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: list[list[str]], env: dict[str, str], *, parallel: bool = False,
          allowed: tuple[int, ...] = (0,)) -> tuple[float, float, float]:
    """Run the commands (one after another, or all at once); wall s, children's CPU s, mean load."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), children_cpu()
    if parallel:
        processes = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for c in commands]
        outcomes = [(p, p.communicate()[1]) for p in processes]
        codes = [(p.returncode, err) for p, err in outcomes]
    else:
        codes = []
        for command in commands:
            done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            codes.append((done.returncode, done.stderr))
    elapsed, used = time.perf_counter() - wall, children_cpu() - cpu
    for code, err in codes:
        if code not in allowed:
            raise RuntimeError(f"exit {code}:\n{err[-3000:]}")
    return elapsed, used, (load + os.getloadavg()[0]) / 2


SERIAL_LOOP = """
import json, sys
from pathlib import Path
from m2e_core.runtime import use_huge_pages
use_huge_pages()
from m2e_core.pipeline import Analyzer
args = json.loads(sys.argv[1])
analyzer = Analyzer(encoder=args["encoder"], checkpoint=args["checkpoint"], chords_checkpoint=args["btc"],
                    device="cpu", allow_download=False)
out = Path(args["out"])
out.mkdir(parents=True, exist_ok=True)
for index, path in enumerate(args["tracks"]):
    (out / f"{index:03d}.json").write_text(json.dumps(analyzer.analyze(path).to_dict()))
"""


def flag(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.is_file() else []


def kill_and_resume(library: Path, flags: list[str], work: Path, env: dict[str, str], total: int,
                    reference: Path) -> dict[str, object]:
    """SIGKILL a library run once a third of the tracks are written; run it again; check the result."""
    from m2e_core.files import file_sha256

    out = work / "kill" / "results.jsonl"
    for stale in out.parent.glob("*"):
        stale.unlink()
    command = cli("analyze", str(library), "--out", str(out), "--no-progress", *flags)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = max(1, total // 3)
    while process.poll() is None and len(lines(out)) < target:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = out.read_bytes() if out.is_file() else b""
    whole_before = before[: before.rfind(b"\n") + 1]
    written = whole_before.count(b"\n")
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    if resumed.returncode != 0:
        raise RuntimeError(f"resume failed:\n{resumed.stderr[-3000:]}")
    after = lines(out)
    records = [json.loads(line) for line in after]
    hashes = [record["sha256"] for record in records]
    files = {file_sha256(path) for path in library.rglob("*.flac")}
    merge_a, merge_b = work / "kill" / "sorted.jsonl", work / "kill" / "reference-sorted.jsonl"
    for source, target_path in ((out, merge_a), (reference, merge_b)):
        subprocess.run(cli("merge", str(source), "--out", str(target_path)), env=env, check=True,
                       capture_output=True)
    summary = next((line for line in resumed.stderr.splitlines() if line.startswith("analysed ")), "")
    return {
        "killed_with": "SIGKILL", "exit_code_of_killed_run": process.returncode,
        "lines_before_kill": written, "torn_bytes_after_kill": len(before) - len(whole_before),
        "lines_after_resume": len(after), "distinct_hashes": len(set(hashes)),
        "hashes_equal_files": set(hashes) == files, "all_ok": all(r["status"] == "ok" for r in records),
        "prefix_unchanged": out.read_bytes().startswith(whole_before),
        "analysed_on_resume": summary,
        "same_as_uninterrupted": merge_a.read_bytes() == merge_b.read_bytes(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--full-tracks", type=int, default=8,
                        help="tracks for the full-size encoder runs (0 skips them)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cli-tracks", type=int, default=0,
                        help="tracks for the one-process-per-file run (default all; its rate is per track)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work" / "library")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    work = args.work_dir.resolve()
    print(f"material under {work}", flush=True)
    tracks = make_tracks(work / f"tracks-{args.tracks}x{int(args.seconds)}s", args.tracks, args.seconds)
    library = tracks[0].parent.parent
    models = make_models(work)
    env = environment(work)
    rows: list[dict[str, object]] = []
    checks: dict[str, object] = {}

    def record(models_name: str, config: str, count: int, wall: float, cpu: float, load: float, **extra) -> None:
        row = {"models": models_name, "config": config, "tracks": count, "track_s": args.seconds,
               "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tracks_per_hour": round(3600 * count / wall, 1),
               "load_average": round(load, 2), **extra}
        rows.append(row)
        print(f"  {models_name:5} {config:22} {count} tracks: {wall:8.1f} s wall, {cpu:8.1f} s CPU, "
              f"{row['tracks_per_hour']:7.1f} tracks/h (load {load:.1f})", flush=True)
        write_results(rows, checks, args, argv, complete=False)  # what is measured so far survives an abort

    for models_name, count in (("tiny", args.tracks), ("full", min(args.full_tracks, args.tracks))):
        if count <= 0:
            continue
        flags = models[models_name]
        subset = tracks[:count]
        subset_dir = library if count == len(tracks) else work / f"subset-{count}"
        if subset_dir != library:
            for path in subset:
                link = subset_dir / path.relative_to(library)
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(path)
        runs = work / f"runs-{models_name}"
        print(f"{models_name} models, {count} tracks of {args.seconds:g} s", flush=True)
        loop_args = json.dumps({"encoder": flag(flags, "--encoder"), "checkpoint": flag(flags, "--checkpoint"),
                                "btc": flag(flags, "--btc-checkpoint"), "out": str(runs / "serial-loop"),
                                "tracks": [str(p) for p in subset]})
        record(models_name, "serial-loop", count, *timed([[sys.executable, "-c", SERIAL_LOOP, loop_args]], env))
        for workers in args.workers:
            out = runs / f"library-w{workers}" / "results.jsonl"
            for stale in out.parent.glob("*") if out.parent.is_dir() else ():
                stale.unlink()
            record(models_name, f"library (workers {workers})", count, *timed(
                [cli("analyze", str(subset_dir), "--out", str(out), "--no-progress", "--workers", str(workers),
                     *flags)], env), workers=workers)
        if models_name != "tiny":
            continue
        reference = runs / f"library-w{args.workers[0]}" / "results.jsonl"
        sharded = runs / "shards" / "results.jsonl"
        for stale in sharded.parent.glob("*") if sharded.parent.is_dir() else ():
            stale.unlink()
        wall, cpu, load = timed([cli("analyze", str(library), "--out", str(sharded), "--no-progress",
                                     "--shard", f"{rank}/2", *flags) for rank in range(2)], env, parallel=True)
        record(models_name, "shards-2 (2 processes)", count, wall, cpu, load)
        shard_names = [str(sharded) + f".shard-{rank}-of-2" for rank in range(2)]
        subprocess.run(cli("merge", *shard_names, "--out", str(sharded)), env=env, check=True, capture_output=True)
        unsharded = runs / "shards" / "unsharded-sorted.jsonl"
        subprocess.run(cli("merge", str(reference), "--out", str(unsharded)), env=env, check=True,
                       capture_output=True)
        checks["shards"] = {
            "lines_per_shard": [len(lines(Path(name))) for name in shard_names],
            "merged_lines": len(lines(sharded)),
            "merged_equals_unsharded_bytes": sharded.read_bytes() == unsharded.read_bytes(),
        }
        print(f"  shards: {checks['shards']}", flush=True)
        write_results(rows, checks, args, argv, complete=False)
        checks["kill_and_resume"] = kill_and_resume(library, flags, work, env, count, reference)
        print(f"  kill and resume: {checks['kill_and_resume']}", flush=True)
        # Last, as the slowest: a process start per track. Its rate is tracks/hour of the tracks it ran.
        per_file = subset[: args.cli_tracks or count]
        out = runs / "cli-per-file"
        out.mkdir(parents=True, exist_ok=True)
        record(models_name, "cli-per-file", len(per_file), *timed(
            [cli("analyze", str(path), "--json", str(out / f"{path.stem}.json"), *flags) for path in per_file], env))

    write_results(rows, checks, args, argv, complete=True)
    print((args.out / "library.md").read_text(encoding="utf-8"))
    return 0


def write_results(rows: list[dict[str, object]], checks: dict[str, object], args: argparse.Namespace,
                  argv: list[str] | None, *, complete: bool) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    columns = ["models", "config", "tracks", "track_s", "wall_s", "cpu_s", "tracks_per_hour", "speedup_vs_serial",
               "load_average"]
    for row in rows:
        serial = next((r for r in rows if r["models"] == row["models"] and r["config"] == "serial-loop"), None)
        row["speedup_vs_serial"] = (round(float(row["tracks_per_hour"]) / float(serial["tracks_per_hour"]), 2)
                                    if serial else "")
    with (out / "library.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    machine = machine_description("cpu")

    def vs_serial(row: dict[str, object]) -> str:
        value = row["speedup_vs_serial"]
        return f"{value:.2f}x" if value != "" else "-"

    md = [
        f"Library throughput, {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine}, "
        f"{args.tracks} synthesised tracks of {args.seconds / 60:g} min.", "",
        "Wall time from process start to exit (model loading included, once per process); CPU = user + system "
        "seconds of the processes; load = 1-minute load average, mean of before and after.", "",
        *([] if complete else ["**Partial: the run had not finished when this was written.**", ""]),
        "| models | configuration | tracks | wall s | CPU s | tracks/hour | vs serial loop | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        md.append(f"| {row['models']} | {row['config']} | {row['tracks']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
                  f"{row['tracks_per_hour']:.1f} | {vs_serial(row)} | {row['load_average']:.1f} |")
    md += ["", "Models: `tiny` = tiny random MERT-style encoder and heads (`m2e make-tiny-models`), BTC random at "
           "its real size feeding the model and displayed; `full` = random MERT-v1-95M architecture, full-size "
           "random heads, the same BTC. All on the CPU, exact (fp32) encoder."]
    shards = checks.get("shards")
    if shards:
        md += ["", f"Shards: `--shard 0/2` and `--shard 1/2` wrote {shards['lines_per_shard']} lines; merged "
               f"{shards['merged_lines']} lines; merged file equal byte for byte to the unsharded run merged the "
               f"same way: {'yes' if shards['merged_equals_unsharded_bytes'] else 'NO'}."]
    kill = checks.get("kill_and_resume")
    if kill:
        md += ["", f"Kill and resume: the library run was killed with {kill['killed_with']} (exit code "
               f"{kill['exit_code_of_killed_run']}) with {kill['lines_before_kill']} whole lines on disk and "
               f"{kill['torn_bytes_after_kill']} bytes of a torn line; the second run said "
               f"\"{kill['analysed_on_resume']}\". After it: {kill['lines_after_resume']} lines, "
               f"{kill['distinct_hashes']} distinct hashes, hashes equal to the files' "
               f"{'yes' if kill['hashes_equal_files'] else 'NO'}, every line ok "
               f"{'yes' if kill['all_ok'] else 'NO'}, the lines written before the kill unchanged "
               f"{'yes' if kill['prefix_unchanged'] else 'NO'}, results equal to the uninterrupted run's "
               f"{'yes' if kill['same_as_uninterrupted'] else 'NO'}."]
    md += ["", "GPU figures (encoder segments/s in bf16, library tracks/hour end to end) could not be recorded: "
           "no GPU was available to this run.",
           "", "Command: `" + " ".join(["python benchmarks/library.py", *(argv if argv is not None else sys.argv[1:])])
           + "`.", ""]
    (out / "library.md").write_text("\n".join(md), encoding="utf-8")
    (out / "library-checks.json").write_text(json.dumps(checks, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
