"""Handlers of the Analyze tab: analyse (streamed), open a saved analysis, select, re-tag.

Each returns :class:`~m2e_explorer.session.Page` objects built from the views; ``ctx`` is the
:class:`~m2e_explorer.explorer.ExplorerApp` (models, settings, temporary files).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf

from m2e_core.constants import MAX_DURATION_SECONDS
from m2e_core.errors import AudioDecodeError, ConfigError
from m2e_core.types import Analysis, SegmentEmotion

from ..caps import read_analysis_json
from ..session import NEUTRAL_VA, TRACK, Loaded, Page, ViewOptions
from ..views import emotion as emotion_view
from ..views import plane as plane_view
from ..views import tags as tags_view
from ..views import text as text_view
from ..views import timeline as timeline_view
from ..views.common import SegmentSpan, empty_figure, format_span, format_time, segment_spans
from ..views.player import player_html

if TYPE_CHECKING:
    from ..explorer import ExplorerApp

#: Words for the pipeline's stages when it gives no detail.
STAGES = {
    "decode": "decoding the audio",
    "chords": "recognising chords",
    "key": "estimating the key",
    "embed": "computing MERT embeddings",
    "heads": "predicting emotion",
    "done": "done",
}


class StageReport:
    """Forwards progress to Gradio's progress bar (``gr.Progress`` or anything called the same way).

    ``progress`` may be ``None`` (no bar). A ``gr.Progress`` is falsy (it has a length), so it
    is compared with ``None``, never tested for truth. Texts get ``prefix``; fractions are mapped
    into ``[low, high]`` (a file's share of a batch).
    """

    def __init__(self, progress: Any = None, *, prefix: str = "", low: float = 0.0, high: float = 1.0) -> None:
        self._progress = progress
        self.prefix = prefix
        self.low, self.high = low, high
        self.last = ""

    def __call__(self, fraction: float, text: str) -> None:
        self.last = self.prefix + text
        if self._progress is not None:
            value = self.low + max(0.0, min(1.0, float(fraction))) * (self.high - self.low)
            self._progress(value, desc=self.last)

    def pipeline(self, stage: str, fraction: float, detail: str = "") -> None:
        """The :data:`m2e_core.pipeline.ProgressCallback` signature."""
        self(fraction, detail or STAGES.get(stage, stage))


def decision(ctx: ExplorerApp, analysis: Analysis, emotion: SegmentEmotion,
             options: ViewOptions) -> tags_view.TagDecision:
    """The tag decision for one segment (or the track) under the chosen rule."""
    if options.rule == "top-k":
        return tags_view.decide_tags(emotion.tags, top_k=int(options.top_k))
    if options.rule == "threshold":
        return tags_view.decide_tags(emotion.tags, rule="threshold", threshold=float(options.threshold))
    if options.rule != "analysed":
        raise ConfigError(f"unknown tag rule {options.rule!r}: use analysed, top-k or threshold")
    track = analysis.track
    thresholds = ctx.thresholds()
    if emotion.index < 0 and track is not None and track.decision_rule in ("top-k", "thresholds"):
        selected = tuple(track.selected_tags)
        if track.decision_rule == "top-k":
            return tags_view.TagDecision("top-k", selected, top_k=len(selected))
        return tags_view.TagDecision("thresholds", selected, thresholds=thresholds)
    if track is not None and track.decision_rule == "thresholds" and thresholds is not None:
        return tags_view.decide_tags(emotion.tags, rule="thresholds", thresholds=thresholds)
    return tags_view.decide_tags(emotion.tags, top_k=int(options.top_k))


def _emotion_of(analysis: Analysis, selection: int) -> SegmentEmotion | None:
    if selection == TRACK:
        return analysis.track.emotion if analysis.track is not None else None
    for segment in analysis.segments or ():
        if segment.index == selection:
            return segment
    return None


def selection_index(value: Any) -> int:
    if value is None or value == "":
        return TRACK
    try:
        number = int(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"choose a segment from the list, got {value!r}") from error
    if number != value and str(number) != str(value):
        raise ConfigError(f"choose a segment from the list, got {value!r}")
    return number


def _choices(loaded: Loaded) -> list[tuple[str, int]]:
    return [("whole track", TRACK)] + [(f"segment {s.index + 1} ({format_span(s.start, s.end)})", s.index)
                                       for s in loaded.spans]


def view(ctx: ExplorerApp, loaded: Loaded | None, selection: Any, options: ViewOptions, *,
         move_player: bool = True, reset_form: bool = True) -> Page:
    """The figures and text for the selected segment (or the whole track) under ``options``."""
    if loaded is None:
        raise ConfigError("analyse a track or open an analysis first")
    index = selection_index(selection)
    span = loaded.span(index)
    analysis = loaded.analysis
    emotion = _emotion_of(analysis, index)
    track_decision = decision(ctx, analysis, analysis.track.emotion, options) if analysis.track else None
    chosen = decision(ctx, analysis, emotion, options) if emotion is not None else None
    segment_index = None if span is None else span.index
    if emotion is not None and chosen is not None and emotion.tags:
        tag_figure = tags_view.tag_bars(emotion, chosen)
    elif analysis.segments is None:
        tag_figure = empty_figure("No tag prediction: the emotion model is not loaded")
    elif not loaded.complete:
        tag_figure = empty_figure("Tags appear as the segments are analysed")
    else:
        tag_figure = empty_figure("This checkpoint predicts no tags")
    page = Page(
        timeline=timeline_view.chord_timeline(analysis, segments=loaded.spans, selected=segment_index,
                                              window=_window(span, analysis.duration)),
        emotion=emotion_view.emotion_over_time(analysis, segments=loaded.spans, selected=segment_index),
        plane=plane_view.va_plane(analysis, selected_segment=segment_index,
                                  highlight_tags=track_decision.selected if track_decision else (),
                                  label_all=options.label_all),
        tags=tag_figure,
        segment=text_view.segment_md(analysis, span, emotion, chosen, has_audio=loaded.audio_path is not None),
    )
    if move_player:
        page = _replace(page, player=player_html(loaded.audio_path, duration=analysis.duration,
                                                 start=None if span is None else span.start,
                                                 end=None if span is None else span.end,
                                                 request=time.monotonic_ns()))
    if reset_form:
        blind = options.blind or emotion is None
        page = _replace(
            page,
            label_valence=NEUTRAL_VA if blind or emotion.valence is None else _clip(emotion.valence),
            label_arousal=NEUTRAL_VA if blind or emotion.arousal is None else _clip(emotion.arousal),
            label_tags=[] if blind or chosen is None else list(chosen.selected),
        )
    return page


def _window(span: SegmentSpan | None, duration: float) -> tuple[float, float] | None:
    """The timeline's first window: the selected segment (at least the default window), else the default."""
    if span is None:
        return None
    end = min(float(duration), max(span.end, span.start + timeline_view.DEFAULT_WINDOW_SECONDS))
    return float(span.start), end


def _clip(value: float) -> float:
    return round(min(9.0, max(1.0, float(value))), 1)


def _replace(page: Page, **changes: Any) -> Page:
    from dataclasses import replace

    return replace(page, **changes)


def _safe_stem(source: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(source).stem)[:80].strip("._")
    return stem or "analysis"


def full_page(ctx: ExplorerApp, loaded: Loaded, options: ViewOptions, *, stage: str) -> Page:
    """Everything the Analyze tab shows for an analysis; its JSON is written when it is complete."""
    page = view(ctx, loaded, TRACK, options)
    json_file = raw = None
    if loaded.complete:
        raw = loaded.analysis.to_dict()
        target = ctx.files.request_dir() / f"{_safe_stem(loaded.analysis.source)}.m2e.json"
        target.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        json_file = str(target)
    return _replace(page, state=loaded, stage=text_view.stage_md(stage), summary=text_view.summary_md(loaded.analysis),
                    selector=(_choices(loaded), TRACK), json_file=json_file, raw=raw,
                    models=ctx.models_md() if loaded.complete else None)


def analyze(ctx: ExplorerApp, audio_path: str | None, options: ViewOptions, progress: Any = None,
            *, clock: Callable[[], float] = time.perf_counter) -> Iterator[Page]:
    """Analyse an uploaded or recorded file, yielding the page as the analysis grows.

    The first page has key and chords (emotion pending); then one page per analysed segment
    (emotion over time, the plane, the summary); the last page is complete, with the JSON.
    """
    if not audio_path:
        raise AudioDecodeError("no audio: upload or record a track first")
    report = StageReport(progress)
    if ctx.shared.loaded is None:
        report(0.0, "loading the models (the first analysis only)")
    analyzer = ctx.shared.get()
    started = clock()
    first_after: float | None = None
    segment_seconds = float(getattr(analyzer, "segment_seconds", 30.0))
    min_tail = float(getattr(analyzer, "min_tail_seconds", 5.0))
    for partial in analyzer.iter_analyze(str(audio_path), progress=report.pipeline, key_first=True):
        spans = segment_spans(partial, segment_seconds=segment_seconds, min_tail_seconds=min_tail)
        loaded = Loaded(partial, str(audio_path), spans)
        elapsed = clock() - started
        if "chords" in partial.pending:
            yield key_page(loaded, options, stage=f"Key after {elapsed:.1f} s; recognising the chords …")
            continue
        if loaded.complete:
            first = "" if first_after is None else f" (key and chords after {first_after:.1f} s)"
            yield full_page(ctx, loaded, options, stage=f"Analysed in {elapsed:.1f} s{first}.")
            return
        if first_after is None:
            first_after = elapsed
            yield full_page(ctx, loaded, options,
                            stage=f"Key and chords after {elapsed:.1f} s; emotion comes segment by segment.")
            continue
        done = len(partial.segments or ())
        yield Page(
            state=loaded,
            stage=text_view.stage_md(f"{done} of {len(spans)} segments analysed ({elapsed:.1f} s)."),
            summary=text_view.summary_md(partial),
            emotion=emotion_view.emotion_over_time(partial, segments=spans),
            plane=plane_view.va_plane(partial, label_all=options.label_all),
        )


def key_page(loaded: Loaded, options: ViewOptions, *, stage: str) -> Page:
    """The page while only the key is known: the key row, the player, what is still coming."""
    analysis = loaded.analysis
    coming = "Valence and arousal come after the chords, segment by segment" if "emotion" in analysis.pending \
        else "No valence/arousal: the emotion model is not loaded"
    return Page(
        state=loaded,
        stage=text_view.stage_md(stage),
        summary=text_view.summary_md(analysis),
        player=player_html(loaded.audio_path, duration=analysis.duration, request=time.monotonic_ns()),
        timeline=timeline_view.chord_timeline(analysis, segments=loaded.spans),
        emotion=empty_figure(coming),
        plane=plane_view.va_plane(None, label_all=options.label_all),
        tags=empty_figure("Tags come with the emotion"),
        selector=(_choices(loaded), TRACK),
        segment="",
    )


def load_analysis(ctx: ExplorerApp, json_path: str | None, audio_path: str | None,
                  options: ViewOptions) -> Page:
    """Open an analysis JSON written by the command line (or by this app), optionally with its audio."""
    if not json_path:
        raise ConfigError("choose an analysis .json file (from `m2e analyze --json`)")
    analysis, tracks = read_analysis_json(json_path, max_duration=max(MAX_DURATION_SECONDS, ctx.settings.max_seconds))
    if audio_path:
        audio_name = Path(audio_path).name
        try:
            info = sf.info(audio_path)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            raise AudioDecodeError(f"{audio_name}: not an audio file this explorer can read") from error
        if abs(info.duration - analysis.duration) > max(1.0, 0.01 * analysis.duration):
            raise ConfigError(
                f"{audio_name} is {format_time(info.duration)} long but the analysis is of a "
                f"{format_time(analysis.duration)} track ({analysis.source}): attach the same audio")
    loaded = Loaded(analysis, str(audio_path) if audio_path else None, segment_spans(analysis))
    note = f" The file holds {tracks} tracks; showing the first (the Batch tab compares them)." if tracks > 1 else ""
    return full_page(ctx, loaded, options, stage=f"Opened {Path(json_path).name}.{note}")


def open_loaded(ctx: ExplorerApp, loaded: Loaded, options: ViewOptions, stage: str) -> Page:
    """Show an analysis already in memory (a batch row) in the Analyze tab."""
    return full_page(ctx, loaded, options, stage=stage)
