"""Plot builders: pure functions from typed results to plotly figures."""

from __future__ import annotations

import json

import pytest

from m2e_core.errors import ConfigError
from m2e_core.plots import (
    batch_va_plane,
    chord_family,
    chord_timeline,
    decide_tags,
    empty_figure,
    format_time,
    tag_bars,
    va_plane,
)
from m2e_core.types import Analysis, ChordSpan, KeyEstimate, SegmentEmotion, TrackEmotion
from m2e_core.vocab import mood_tags, tag_names


def _tags(peak: str, second: str) -> dict[str, float]:
    probs = {name: 0.01 * (i % 7) for i, name in enumerate(tag_names())}
    probs[peak] = 0.9
    probs[second] = 0.6
    return probs


def _analysis(*, source: str = "song.wav", va=((3.0, 7.0), (6.5, 2.5)), track_va=(5.0, 4.5),
              emotion: bool = True) -> Analysis:
    chords = (
        ChordSpan(0.0, 2.0, "C:maj"), ChordSpan(2.0, 4.0, "G:7"), ChordSpan(4.0, 6.0, "A:min"),
        ChordSpan(6.0, 8.0, "N"), ChordSpan(8.0, 40.0, "F:maj"),
    )
    segments = (
        SegmentEmotion(0, 0.0, 30.0, va[0][0], va[0][1], _tags("dark", "epic")),
        SegmentEmotion(1, 30.0, 40.0, va[1][0], va[1][1], _tags("calm", "relaxing")),
    )
    track = TrackEmotion(SegmentEmotion(-1, 0.0, 40.0, track_va[0], track_va[1], _tags("calm", "dark")),
                         ("calm", "dark"), "top-k")
    return Analysis(
        source=source, duration=40.0, key=KeyEstimate("C", "major", 0.87), chords=chords,
        normalized_chords=chords, segments=segments if emotion else None, track=track if emotion else None,
        provenance=(),
    )


def _trace(figure, name):
    matches = [trace for trace in figure.data if trace.name == name]
    assert len(matches) == 1, [trace.name for trace in figure.data]
    return matches[0]


def test_va_plane_draws_track_trajectory_and_all_tag_anchors():
    figure = va_plane(_analysis())
    anchors = [t for t in figure.data if t.name in ("tag anchors", "selected tags (anchors)")]
    assert sum(len(t.x) for t in anchors) == 56
    drawn = {name: (x, y) for t in anchors for name, x, y in zip(t.text, t.x, t.y)}
    for tag in mood_tags():
        assert drawn[tag.name] == (tag.valence, tag.arousal)
    assert set(_trace(figure, "selected tags (anchors)").text) == {"calm", "dark"}
    path = _trace(figure, "segments (time order)")
    assert list(path.x) == [3.0, 6.5] and list(path.y) == [7.0, 2.5]
    hover = [list(item) for item in path.customdata]
    assert hover[0][0] == "segment 1 (0:00-0:30)" and hover[1][0] == "segment 2 (0:30-0:40)"
    assert hover[0][1].startswith("dark 0.90, epic 0.60")
    track = _trace(figure, "whole track")
    assert (track.x[0], track.y[0]) == (5.0, 4.5)
    assert figure.layout.xaxis.range == (1.0, 9.0) and figure.layout.yaxis.range == (1.0, 9.0)
    texts = {a.text for a in figure.layout.annotations}
    assert {"<i>excited / happy</i>", "<i>tense / angry</i>", "<i>sad / depressed</i>",
            "<i>calm / content</i>"} <= texts
    json.loads(figure.to_json())


def test_va_plane_orders_trajectory_by_time_and_rings_the_selected_segment():
    analysis = _analysis()
    shuffled = Analysis(**{**analysis.__dict__, "segments": analysis.segments[::-1]})
    figure = va_plane(shuffled, selected_segment=1)
    assert list(_trace(figure, "segments (time order)").x) == [3.0, 6.5]
    ring = _trace(figure, "selected: segment 2 (0:30-0:40)")
    assert (ring.x[0], ring.y[0]) == (6.5, 2.5)


def test_va_plane_widens_axes_instead_of_clipping():
    figure = va_plane(_analysis(va=((0.2, 5.0), (5.0, 9.8)), track_va=(5.0, 5.0)))
    assert figure.layout.xaxis.range[0] < 0.2 and figure.layout.xaxis.range[1] == 9.0
    assert figure.layout.yaxis.range[1] > 9.8


def test_va_plane_without_emotion_says_so_and_invents_nothing():
    figure = va_plane(_analysis(emotion=False))
    assert {t.name for t in figure.data} == {"tag anchors"}
    assert "No emotion prediction" in figure.layout.title.text
    plain = va_plane(None)
    assert {t.name for t in plain.data} == {"tag anchors"}


def test_decide_tags_rules():
    probs = {"happy": 0.7, "sad": 0.1, "calm": 0.4, "dark": 0.05}
    assert decide_tags(probs, top_k=2).selected == ("happy", "calm")
    assert decide_tags(probs, rule="threshold", threshold=0.3).selected == ("happy", "calm")
    assert decide_tags(probs, rule="threshold", threshold=0.95).selected == ()
    per_tag = decide_tags(probs, rule="thresholds", thresholds={"happy": 0.8, "sad": 0.05, "calm": 0.3,
                                                                  "dark": 0.5})
    assert per_tag.selected == ("calm", "sad")
    assert decide_tags(probs, rule="thresholds", thresholds=[0.8, 0.05, 0.3, 0.5]).selected == ("calm", "sad")
    assert "top-2" in decide_tags(probs, top_k=2).describe()
    assert per_tag.limit_for("sad") == 0.05


@pytest.mark.parametrize("kwargs", [
    {"rule": "best"}, {"top_k": 0}, {"top_k": 2.5}, {"rule": "threshold", "threshold": 1.5},
    {"rule": "thresholds"}, {"rule": "thresholds", "thresholds": [0.5]},
    {"rule": "thresholds", "thresholds": {"happy": 0.5}},
])
def test_decide_tags_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError):
        decide_tags({"happy": 0.7, "sad": 0.1}, **kwargs)


def test_tag_bars_highlight_the_selection_and_mark_thresholds():
    emotion = _analysis().track.emotion
    decision = decide_tags(emotion.tags, rule="threshold", threshold=0.5)
    figure = tag_bars(emotion, decision, max_bars=10)
    bars = figure.data[0]
    assert list(bars.y)[-2:] == ["dark", "calm"]  # most probable at the top
    colors = dict(zip(bars.y, bars.marker.color))
    assert colors["calm"] != colors[bars.y[0]] and colors["calm"] == colors["dark"]
    assert set(figure.data[1].x) == {0.5}
    assert "threshold" in figure.layout.title.text
    top_k = tag_bars(emotion, decide_tags(emotion.tags, top_k=3))
    assert len(top_k.data) == 1 and "top-3" in top_k.layout.title.text


def test_tag_bars_keep_selected_tags_beyond_max_bars():
    emotion = _analysis().track.emotion
    decision = decide_tags(emotion.tags, rule="threshold", threshold=0.0)
    figure = tag_bars(emotion, decision, max_bars=5)
    assert len(figure.data[0].y) == 56


def test_tag_bars_without_tags():
    empty = SegmentEmotion(-1, 0.0, 1.0, None, None, {})
    figure = tag_bars(empty, decide_tags({}, top_k=1))
    assert not figure.data and "No tag prediction" in figure.layout.annotations[0].text


def test_chord_timeline_bars_span_each_chord_and_mark_segments():
    analysis = _analysis()
    figure = chord_timeline(analysis, selected_segment=1)
    spans = []
    for trace in figure.data:
        for base, width, label, row in zip(trace.base, trace.x, trace.text, trace.y):
            spans.append((row.split(" ")[0], base, base + width, label))
    original = sorted(s[1:] for s in spans if s[0] == "chords")
    assert original == [(c.start, c.end, c.label) for c in analysis.chords]
    assert len(spans) == 2 * len(analysis.chords)
    assert {t.name for t in figure.data} == {"major", "dominant", "minor", "no chord"}
    lines = sorted(s.x0 for s in figure.layout.shapes if s.type == "line")
    assert lines == [0.0, 30.0, 40.0]
    rects = [s for s in figure.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(30.0, 40.0)]
    assert figure.layout.xaxis.range == (0, 40.0)
    assert "Key C major" in figure.layout.title.text
    only = chord_timeline(analysis, show_normalized=False)
    assert {row for t in only.data for row in t.y} == {"chords (C major)"}


def test_chord_timeline_takes_explicit_segment_bounds():
    analysis = _analysis(emotion=False)
    figure = chord_timeline(analysis, segments=[(0, 0.0, 30.0), (1, 30.0, 40.0)], selected_segment=0)
    assert sorted(s.x0 for s in figure.layout.shapes if s.type == "line") == [0.0, 30.0, 40.0]
    assert [(s.x0, s.x1) for s in figure.layout.shapes if s.type == "rect"] == [(0.0, 30.0)]
    assert not chord_timeline(analysis).layout.shapes


def test_chord_timeline_without_segments_or_chords():
    analysis = Analysis("x.wav", 5.0, KeyEstimate("A", "minor", 0.5), (), (), None, None, ())
    figure = chord_timeline(analysis)
    assert not figure.data and not figure.layout.shapes
    assert figure.layout.annotations[0].text == "No chords detected"


@pytest.mark.parametrize("label,family", [
    ("C:maj", "major"), ("C", "major"), ("A:min7", "minor"), ("G:7", "dominant"), ("B:hdim7", "diminished"),
    ("B:dim", "diminished"), ("D:sus4", "suspended"), ("E:aug", "augmented"), ("N", "no chord"),
    ("F:maj7/3", "major"), ("C:min(9)", "minor"), ("X", "no chord"),
])
def test_chord_family(label, family):
    assert chord_family(label) == family


def test_batch_plane_has_one_point_per_track_with_emotion():
    analyses = [_analysis(source="a.wav"), _analysis(source="b.wav", track_va=(7.0, 8.0)),
                _analysis(source="c.wav", emotion=False)]
    figure = batch_va_plane(analyses)
    tracks = _trace(figure, "tracks")
    assert list(tracks.text) == ["a.wav", "b.wav"]
    assert list(tracks.x) == [5.0, 7.0] and list(tracks.y) == [4.5, 8.0]
    assert "1 without emotion" in figure.layout.title.text
    json.loads(figure.to_json())


def test_small_helpers():
    assert format_time(0) == "0:00" and format_time(75.3) == "1:15" and format_time(3600) == "60:00"
    assert empty_figure("nothing").layout.annotations[0].text == "nothing"


def test_chord_timeline_sets_segment_shapes_in_one_batch():
    """A long track's boundaries are one list of shapes (linear), not one add_vline per segment."""
    analysis = _analysis(emotion=False)
    many = [(index, index * 0.08, (index + 1) * 0.08) for index in range(500)]
    figure = chord_timeline(analysis, segments=many, selected_segment=3)
    assert len(figure.layout.shapes) == 500 + 1 + 1 and len(figure.layout.annotations) == 500
    assert [(s.x0, s.x1) for s in figure.layout.shapes if s.type == "rect"] == [(0.24, 0.32)]
