"""The explorer's text: the track summary, the selection's details, the models banner, stage lines.

Pure functions of typed results returning Markdown. Times are track times (``1:15``), keys
and chords are spelled in their key's context, and each analysis warning is said once, in the
summary.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from m2e_core.types import Analysis, ChordSpan, SegmentEmotion

from .chordnames import is_no_chord, key_name, short_name
from .common import SegmentSpan, format_span, format_time
from .tags import TagDecision
from .timeline import key_spans, keys_at, merge_chords

#: Chords named in a segment's details before "+N more".
SEGMENT_CHORDS_SHOWN = 16


def _escape(text: str) -> str:
    """Text shown as-is in Markdown (file names may hold ``*``, ``_``, ``<`` ...)."""
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_{}[]()#+-.!|~":
        out = out.replace(char, "\\" + char)
    return out


def chord_overview(chords: Sequence[ChordSpan], analysis: Analysis, *, top: int = 5) -> str:
    """``"148 chord changes, 9 distinct; most heard: F 22%, C 18%, ..."`` (by time sounding)."""
    merged = merge_chords(chords)
    heard = [c for c in merged if not is_no_chord(c.label)]
    if not heard:
        return "no chords detected"
    spans, _ = key_spans(analysis)
    names = [short_name(c.label, k) for c, k in zip(heard, keys_at(heard, spans, analysis.key))]
    seconds: Counter[str] = Counter()
    for chord, name in zip(heard, names):
        seconds[name] += chord.end - chord.start
    total = sum(seconds.values()) or 1.0
    common = ", ".join(f"{name} {100 * value / total:.0f}%" for name, value in seconds.most_common(top))
    return f"{len(merged)} chord changes, {len(seconds)} distinct; most heard: {common}"


def key_overview(analysis: Analysis) -> str:
    """The key, and its changes when the key timeline has several."""
    text = f"**Key:** {key_name(analysis.key)} (confidence {analysis.key.confidence:.2f})"
    spans, source = key_spans(analysis)
    if len(spans) > 1:
        path = " → ".join(f"{key_name(s.key)} ({format_time(s.start)})" for s in spans[:6])
        more = f" … +{len(spans) - 6} more" if len(spans) > 6 else ""
        text += f"  \n**Over time** ({source}, {len(spans)} spans): {path}{more}"
    return text


def summary_md(analysis: Analysis) -> str:
    """The track at a glance: key (and its changes), emotion, tags, chords, models, warnings."""
    lines = [f"### {_escape(analysis.source)} ({format_time(analysis.duration)})", key_overview(analysis)]
    chord_key = analysis.chord_key
    if (chord_key.tonic, chord_key.mode) != (analysis.key.tonic, analysis.key.mode):
        lines.append(f"<sub>The emotion model reads the mode of {key_name(chord_key)} (from the chords, as it "
                     "was trained).</sub>")
    if analysis.segments is None and "emotion" in analysis.pending:
        lines.append("**Emotion:** coming after the chords, segment by segment …")
    elif analysis.segments is None:
        lines.append("**Emotion:** not predicted for this analysis (no emotion model)")
    elif analysis.track is None:
        lines.append(f"**Emotion:** {len(analysis.segments)} segment(s) analysed so far …")
    else:
        emotion = analysis.track.emotion
        if emotion.valence is not None and emotion.arousal is not None:
            lines.append(f"**Track:** valence {emotion.valence:.2f}, arousal {emotion.arousal:.2f} (1-9)")
        rule = "per-tag thresholds" if analysis.track.decision_rule == "thresholds" else "top-k"
        lines.append(f"**Tags** ({rule}): {', '.join(analysis.track.selected_tags) or 'none'}")
    if "chords" in analysis.pending:
        lines.append("**Chords:** being recognised …")
    else:
        lines.append(f"**Chords:** {chord_overview(analysis.chords, analysis)}")
    for warning in dict.fromkeys(analysis.warnings):  # each said once
        lines.append(f"<div class='m2e-warning'>{html.escape(warning)}</div>")
    if analysis.provenance:
        models = "; ".join(f"{p.role}: {_escape(p.name)}" + (f" @ {p.revision[:12]}" if p.revision else "")
                           for p in analysis.provenance)
        lines.append(f"<sub>Models: {models}</sub>")
    return "\n\n".join(lines)


def segment_md(analysis: Analysis, span: SegmentSpan | None, emotion: SegmentEmotion | None,
               decision: TagDecision | None, *, has_audio: bool) -> str:
    """Details of the selection (a segment, or the whole track when ``span`` is ``None``)."""
    start, end = (0.0, analysis.duration) if span is None else (span.start, span.end)
    name = "Whole track" if span is None else f"Segment {span.index + 1}"
    lines = [f"**{name}** ({format_span(start, end)})"]
    if emotion is not None and emotion.valence is not None and emotion.arousal is not None:
        lines.append(f"valence **{emotion.valence:.2f}**, arousal **{emotion.arousal:.2f}**")
    if emotion is not None and decision is not None and emotion.tags:
        picked = ", ".join(f"{t} {emotion.tags[t]:.2f}" for t in decision.selected) or "none"
        lines.append(f"tags ({decision.short()}): {picked}")
    if emotion is None:
        if analysis.segments is None:
            lines.append("no emotion prediction (emotion model not loaded)")
        else:
            lines.append("emotion not computed yet")
    if emotion is not None and emotion.key is not None:
        lines.append(f"local key: {key_name(emotion.key)}")
    window = [c for c in merge_chords(analysis.chords) if c.end > start and c.start < end]
    if window:
        spans, _ = key_spans(analysis)
        names = [short_name(c.label, k) for c, k in zip(window, keys_at(window, spans, analysis.key))]
        more = f" … (+{len(names) - SEGMENT_CHORDS_SHOWN} more)" if len(names) > SEGMENT_CHORDS_SHOWN else ""
        lines.append(f"chords: {' '.join(names[:SEGMENT_CHORDS_SHOWN])}{more}")
    else:
        lines.append("chords: none")
    if not has_audio:
        lines.append("_no audio attached: open the analysis together with its audio file to play and label it_")
    return "  \n".join(lines)


@dataclass(frozen=True)
class ModelsState:
    """What the emotion models are doing, for the banner.

    ``state`` is one of ``"unknown"`` (not checked), ``"on disk"``, ``"missing"`` (not on disk,
    downloadable), ``"missing offline"`` (not on disk and downloads are off), ``"loaded"``,
    ``"failed"`` (loading failed: ``reason``).
    """

    state: str
    missing: tuple[str, ...] = ()
    reason: str = ""
    offline_variable: str = ""
    download_command: str = "m2e download"


def models_md(models: ModelsState) -> str:
    """The models banner: said once, true, with what to do."""
    if models.state == "loaded":
        return "Emotion model loaded: valence/arousal and mood/theme tags are predicted."
    if models.state == "on disk":
        return "Models are on disk; they load on the first analysis."
    if models.state == "unknown":
        return "Models load on the first analysis."
    what = " and ".join(models.missing) or "the emotion model"
    if models.state == "missing":
        return (f"<div class='m2e-warning'>Not on this server yet: {what}. They are downloaded on the first "
                "analysis (the first one takes longer).</div>")
    if models.state == "missing offline":
        return (f"<div class='m2e-warning'><b>Running without the emotion model</b>: {what} "
                f"{'is' if len(models.missing) == 1 else 'are'} not on this server and downloads are off "
                f"({models.offline_variable}=1). Key, chords and labelling work. To predict emotion, run "
                f"<code>{models.download_command}</code> where the Hub is reachable and restart the app."
                "</div>")
    return (f"<div class='m2e-warning'><b>Running without the emotion model</b>: {html.escape(models.reason)}. "
            "Key, chords and labelling work.</div>")


def stage_md(text: str) -> str:
    """A stage line under the upload (``"Analysed in 12.3 s."``)."""
    return f"<span class='m2e-stage-text'>{html.escape(text)}</span>" if text else ""
