"""The MERT input's resampler: torchaudio's default sinc (ours) against soxr, with the encoder.

Usage (from the repository root)::

    python benchmarks/resampling.py           # full-size random MERT-v1-95M (a few minutes)
    python benchmarks/resampling.py --tiny    # the tiny random encoder only (seconds)

The Music2Emo features were extracted from audio resampled to 24 kHz by torchaudio's default
resampler (``torchaudio.transforms.Resample``: Hann-windowed sinc, 6 zero crossings, rolloff
0.99). torchaudio cannot be installed here, so the reference is that resampler's formula
evaluated directly, output sample by output sample in float64 (:func:`formula_resample`, an
implementation independent of :func:`m2e_core.audio.sinc_resample`'s polyphase one).

For 30 s of tones and of white noise at 44.1 kHz and 48 kHz it reports the cosine between the
encoder's embedding of the reference input and of each candidate input (``sinc``: ours;
``soxr-vhq``: what the pipeline used before; ``soxr-hq``), and the waveform's relative difference
from the reference. Timing: both resamplers on a 3-minute 44.1 kHz track against the encoder's
time for its six segments, so the extra share of the analysis time is bounded from above (the
chord and key stages, left out of the denominator, only make it smaller).

The encoder is the full MERT-v1-95M architecture with random weights (``benchmarks/speed.py``);
results go to ``benchmarks/results/resampling.csv`` and ``resampling.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGET_RATE = 24_000


def formula_resample(samples: np.ndarray, orig_sr: int, target_sr: int, *, width: int = 6,
                     rolloff: float = 0.99, chunk: int = 1 << 15) -> np.ndarray:
    """torchaudio's default resampler by its formula: each output a windowed-sinc sum over the input (float64)."""
    divisor = math.gcd(orig_sr, target_sr)
    step, phases = orig_sr // divisor, target_sr // divisor
    cutoff = min(step, phases) * rolloff
    reach = width * step / cutoff
    taps = int(math.floor(2 * reach)) + 2
    x = np.asarray(samples, dtype=np.float64)
    total = math.ceil(len(x) * phases / step)
    out = np.empty(total)
    for first in range(0, total, chunk):
        n = np.arange(first, min(total, first + chunk))
        position = n * step / phases
        lo = np.ceil(position - reach).astype(np.int64)
        index = lo[:, None] + np.arange(taps)[None, :]
        u = (index - position[:, None]) * cutoff / step
        inside = (np.abs(u) < width) & (index >= 0) & (index < len(x))
        weights = np.where(inside, np.sinc(u) * np.cos(np.pi * u / (2 * width)) ** 2 * cutoff / step, 0.0)
        out[n] = np.sum(weights * x[np.clip(index, 0, len(x) - 1)], axis=1)
    return out.astype(np.float32)


def signals(rate: int, seconds: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rate)
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(amp * np.sin(2 * np.pi * freq * t) for freq, amp in
                ((110.0, 0.2), (440.0, 0.2), (1_760.0, 0.15), (5_000.0, 0.1), (10_500.0, 0.1), (11_800.0, 0.05)))
    noise = 0.25 * rng.standard_normal(len(t))
    return {"tones": tones.astype(np.float32), "white noise": np.clip(noise, -1, 1).astype(np.float32)}


def candidates(samples: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    import soxr

    from m2e_core.audio import resample

    return {
        "sinc": resample(samples, rate, TARGET_RATE, method="sinc"),
        "soxr-vhq": resample(samples, rate, TARGET_RATE, method="soxr"),
        "soxr-hq": soxr.resample(samples, rate, TARGET_RATE, quality="HQ").astype(np.float32),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def load_encoder(tiny: bool, work: Path):
    from m2e_core.encoder import MertEncoder, make_tiny_encoder

    if tiny:
        return MertEncoder.from_pretrained(make_tiny_encoder(work / "tiny-encoder", seed=0)), "tiny random"
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed

    directory = speed.make_random_mert(work / "mert-v1-95m-random")
    return MertEncoder.from_pretrained(directory, device="cpu"), "MERT-v1-95M architecture, random weights"


def timing(encoder, rate: int = 44_100, seconds: float = 180.0) -> dict[str, float]:
    from m2e_core.audio import Audio, resample, segment_audio

    sys.path.insert(0, str(REPO / "benchmarks"))
    import speed

    track = speed.synthesize_track(seconds).mean(axis=1).astype(np.float32)
    result: dict[str, float] = {}
    for method in ("soxr", "sinc", "soxr", "sinc"):  # twice each, interleaved; the faster of each kept
        started = time.perf_counter()
        at_rate = resample(track, rate, TARGET_RATE, method=method)
        result[method] = min(result.get(method, math.inf), time.perf_counter() - started)
    segments = segment_audio(Audio(at_rate, TARGET_RATE, "track"), tail="drop")
    started = time.perf_counter()
    encoder.embed([segment.samples for segment in segments])
    result["encoder"] = time.perf_counter() - started
    result["segments"] = len(segments)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random encoder (quick check)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/m2e-memory-bench"))
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each test signal")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    encoder, encoder_name = load_encoder(args.tiny, args.work)
    load_before = os.getloadavg()
    rows = []
    for rate in (44_100, 48_000):
        for name, samples in signals(rate, args.seconds).items():
            reference = formula_resample(samples, rate, TARGET_RATE)
            inputs = candidates(samples, rate)
            embeddings = encoder.embed([reference, *inputs.values()])
            for (method, waveform), embedding in zip(inputs.items(), embeddings[1:]):
                row = {"rate": rate, "signal": name, "resampler": method,
                       "embedding_cosine": cosine(embeddings[0], embedding),
                       "waveform_relative_difference": float(np.linalg.norm(waveform - reference)
                                                             / np.linalg.norm(reference))}
                rows.append(row)
                print(row, flush=True)
    times = timing(encoder)
    print(times, flush=True)
    write_results(rows, times, encoder_name, args, load_before, os.getloadavg())
    return 0


def write_results(rows, times, encoder_name, args, load_before, load_after) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-tiny" if args.tiny else ""
    with open(RESULTS / f"resampling{suffix}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    extra = (times["sinc"] - times["soxr"]) / (times["encoder"] + times["soxr"])
    lines = [
        "# The MERT input's resampler against torchaudio's default (by its formula)",
        "",
        f"{when}; {platform.machine()}, {os.cpu_count()} CPUs; encoder: {encoder_name}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared).",
        "",
        f"{args.seconds:g} s signals resampled to 24 kHz; cosine between the encoder's embedding of the "
        "reference input (the formula, float64) and of each candidate's.",
        "",
        "| rate | signal | resampler | embedding cosine | waveform rel. difference |",
        "|---:|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['rate']} | {row['signal']} | {row['resampler']} | {row['embedding_cosine']:.7f} | "
                     f"{row['waveform_relative_difference']:.2e} |")
    lines += [
        "",
        f"Time on a 3-minute 44.1 kHz track: soxr VHQ {times['soxr']:.3f} s, sinc {times['sinc']:.3f} s, "
        f"the encoder {times['encoder']:.1f} s for its {times['segments']:.0f} segments: the sinc resampler adds "
        f"at most {100 * extra:.2f} % to the analysis time.",
    ]
    (RESULTS / f"resampling{suffix}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
