"""Bounded work per request: what the explorer accepts before it does anything with it.

An analysis JSON (written by ``m2e analyze --json``, by the batch tab, or by anyone) is checked
against these caps before it is parsed into an :class:`~m2e_core.types.Analysis` and before any
figure is drawn, so its cost is bounded by the caps, not by what the file claims:

=========================  =============  ==============================================
cap                        value          why
=========================  =============  ==============================================
``MAX_ANALYSIS_JSON_BYTES``  8 MB         a 30-minute analysis is about 1 MB
``max_duration``           30 min (or     :data:`m2e_core.constants.MAX_DURATION_SECONDS`,
                           the app's      or the app's longest track when that is longer
                           limit)
``MAX_SEGMENTS``           400            30 minutes in 5-second segments is 360
``MAX_CHORDS``             20,000 a list  30 minutes at 11 chord changes a second
``MAX_KEY_SPANS``          2,000
``MAX_TAGS``               100            the model has 56
``MAX_WARNINGS``           20
``MAX_BATCH_FILES``        20             files analysed by one batch request
=========================  =============  ==============================================

Every refusal is a one-line :class:`~m2e_core.errors.ConfigError` naming the cap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m2e_core.constants import MAX_DURATION_SECONDS, VA_MAX, VA_MIN
from m2e_core.errors import ConfigError
from m2e_core.key import spell_key
from m2e_core.types import Analysis, KeyEstimate

from .views.common import MAX_SEGMENTS, format_time

MAX_ANALYSIS_JSON_BYTES = 8_000_000
MAX_CHORDS = 20_000
MAX_KEY_SPANS = 2_000
MAX_TAGS = 100
MAX_WARNINGS = 20
MAX_TEXT_CHARS = 1_000
MAX_BATCH_FILES = 20
#: Tolerance on span ends past the track's end (seconds), for rounding in saved files.
END_SLACK_SECONDS = 0.5

__all__ = ["MAX_ANALYSIS_JSON_BYTES", "MAX_BATCH_FILES", "MAX_CHORDS", "MAX_KEY_SPANS", "MAX_SEGMENTS",
           "MAX_TAGS", "check_analysis_data", "check_analysis", "read_analysis_json"]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _count(data: Mapping[str, Any], field: str, cap: int, name: str, what: str) -> None:
    items = data.get(field)
    if items is None:
        return
    if not isinstance(items, list):
        raise ConfigError(f"{name}: {field} must be a list")
    if len(items) > cap:
        raise ConfigError(f"{name}: {len(items)} {what}, more than the {cap:,} an analysis may have")


def _tags_count(item: Any, name: str, where: str) -> None:
    if isinstance(item, Mapping) and isinstance(item.get("tags"), Mapping) and len(item["tags"]) > MAX_TAGS:
        raise ConfigError(f"{name}: {where} has {len(item['tags'])} tags, more than the {MAX_TAGS} allowed")


def check_analysis_data(data: Any, name: str, *, max_duration: float = MAX_DURATION_SECONDS) -> None:
    """Refuse a parsed analysis JSON object that exceeds a cap, before any work on it.

    Looks only at sizes and the duration (a constant number of steps per list): the content is
    checked by :func:`check_analysis` after parsing.

    Raises
    ------
    ConfigError
        Not an object, a duration that is not a positive number or longer than ``max_duration``,
        or more segments, chords, key spans, tags or warnings than the caps.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: not an m2e analysis (expected a JSON object)")
    duration = data.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration <= 0:
        raise ConfigError(f"{name}: not an m2e analysis (duration must be a positive number of seconds)")
    if duration > max_duration:
        raise ConfigError(f"{name}: the analysis is of a {format_time(duration)} track, longer than the "
                          f"{format_time(max_duration)} this explorer opens")
    _count(data, "segments", MAX_SEGMENTS, name, "segments")
    for field in ("chords", "model_chords", "normalized_chords"):
        _count(data, field, MAX_CHORDS, name, field.replace("_", " "))
    _count(data, "key_timeline", MAX_KEY_SPANS, name, "key spans")
    _count(data, "warnings", MAX_WARNINGS, name, "warnings")
    for number, segment in enumerate(data.get("segments") or ()):
        _tags_count(segment, name, f"segment {number + 1}")
    _tags_count(data.get("track"), name, "the track")
    source = data.get("source")
    if isinstance(source, str) and len(source) > MAX_TEXT_CHARS:
        raise ConfigError(f"{name}: the source name is {len(source)} characters long")
    for warning in data.get("warnings") or ():
        if isinstance(warning, str) and len(warning) > MAX_TEXT_CHARS:
            raise ConfigError(f"{name}: a warning is {len(warning)} characters long")


def _finite_time(value: float, duration: float) -> bool:
    return math.isfinite(value) and -1e-6 <= value <= duration + END_SLACK_SECONDS


def _check_key(key: KeyEstimate, name: str, where: str) -> None:
    try:
        spell_key(key)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{name}: {where}: not a key ({key.tonic!r} {key.mode!r})") from error
    if not math.isfinite(key.confidence):
        raise ConfigError(f"{name}: {where}: the key's confidence is not a number")


def check_analysis(analysis: Analysis, name: str) -> Analysis:
    """Refuse an analysis whose times, values or keys cannot be drawn (one pass over it).

    Raises
    ------
    ConfigError
        A span outside the track or ending before it starts, a valence/arousal or tag
        probability that is not a finite number in range, or a key that is not one.
    """
    duration = analysis.duration
    lists = {"chords": analysis.chords, "normalized chords": analysis.normalized_chords,
             "model chords": analysis.model_chords or ()}
    for what, chords in lists.items():
        for number, chord in enumerate(chords, start=1):
            if not (_finite_time(chord.start, duration) and _finite_time(chord.end, duration)
                    and chord.end >= chord.start) or not isinstance(chord.label, str) or len(chord.label) > 40:
                raise ConfigError(f"{name}: {what} {number} is not a chord span within the track")
    _check_key(analysis.key, name, "key")
    if analysis.model_key is not None:
        _check_key(analysis.model_key, name, "model key")
    for number, span in enumerate(analysis.key_timeline, start=1):
        if not (_finite_time(span.start, duration) and _finite_time(span.end, duration) and span.end >= span.start):
            raise ConfigError(f"{name}: key span {number} is not within the track")
        _check_key(span.key, name, f"key span {number}")
    emotions = list(analysis.segments or ())
    if analysis.track is not None:
        emotions.append(analysis.track.emotion)
    for emotion in emotions:
        where = "the track" if emotion.index < 0 else f"segment {emotion.index + 1}"
        if not (_finite_time(emotion.start, duration) and _finite_time(emotion.end, duration)
                and emotion.end > emotion.start):
            raise ConfigError(f"{name}: {where} is not a span within the track")
        if emotion.index >= MAX_SEGMENTS or emotion.index < -1:
            raise ConfigError(f"{name}: {where} has an impossible index {emotion.index}")
        for value in (emotion.valence, emotion.arousal):
            if value is not None and not (math.isfinite(value) and VA_MIN - 100 <= value <= VA_MAX + 100):
                raise ConfigError(f"{name}: {where} has a valence/arousal that is not a number on the 1-9 scale")
        for probability in emotion.tags.values():
            if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
                raise ConfigError(f"{name}: {where} has a tag probability outside [0, 1]")
        if emotion.key is not None:
            _check_key(emotion.key, name, where)
    if analysis.segments is not None and len({s.index for s in analysis.segments}) != len(analysis.segments):
        raise ConfigError(f"{name}: two segments have the same index")
    return analysis


def read_analysis_json(path: str | os.PathLike[str], *, max_duration: float = MAX_DURATION_SECONDS
                       ) -> tuple[Analysis, int]:
    """Open an analysis JSON (one analysis, or a batch file's first track) within the caps.

    Returns
    -------
    analysis : Analysis
    tracks : int
        How many tracks the file holds (1 for a single analysis).

    Raises
    ------
    ConfigError
        Too large, not JSON, not an analysis, or over a cap (see the module docstring).
    """
    file = Path(path)
    name = file.name
    try:
        size = file.stat().st_size
    except OSError as error:
        raise ConfigError(f"{name}: cannot read the file") from error
    if size > MAX_ANALYSIS_JSON_BYTES:
        raise ConfigError(f"{name} is {size / 1e6:.1f} MB, more than the {MAX_ANALYSIS_JSON_BYTES / 1e6:.0f} MB an "
                          "analysis JSON may be")
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_ANALYSIS_JSON_BYTES + 1)
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except OSError as error:
        raise ConfigError(f"{name}: cannot read the file") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{name}: not a JSON file (not UTF-8 text)") from error
    except RecursionError as error:
        raise ConfigError(f"{name}: not an m2e analysis (nested too deeply)") from error
    except ValueError as error:  # json.JSONDecodeError and NaN/Infinity
        raise ConfigError(f"{name}: not a JSON file ({str(error).splitlines()[0][:120]})") from error
    tracks = 1
    if isinstance(data, Mapping) and isinstance(data.get("tracks"), list):
        if not data["tracks"]:
            raise ConfigError(f"{name}: the batch holds no analysed tracks")
        tracks = len(data["tracks"])
        data = data["tracks"][0]
    check_analysis_data(data, name, max_duration=max_duration)
    try:
        analysis = Analysis.from_dict(data)
    except KeyError as error:
        raise ConfigError(f"{name}: not an m2e analysis (missing field {error.args[0]!r})") from error
    except (TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{name}: not an m2e analysis (a field has the wrong type)") from error
    return check_analysis(analysis, name), tracks
