"""Small pure helpers of the explorer's views (m2e_explorer.views): tag rules, chord families, times."""

from __future__ import annotations

import pytest

from m2e_core.errors import ConfigError
from m2e_explorer.views.common import empty_figure, format_time
from m2e_explorer.views.tags import decide_tags
from m2e_explorer.views.timeline import chord_family


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


@pytest.mark.parametrize("label,family", [
    ("C:maj", "major"), ("C", "major"), ("A:min7", "minor"), ("G:7", "dominant"), ("B:hdim7", "diminished"),
    ("B:dim", "diminished"), ("D:sus4", "suspended"), ("E:aug", "augmented"), ("N", "no chord"),
    ("F:maj7/3", "major"), ("C:min(9)", "minor"), ("X", "no chord"),
])
def test_chord_family(label, family):
    assert chord_family(label) == family


def test_small_helpers():
    assert format_time(0) == "0:00" and format_time(75.3) == "1:15" and format_time(3600) == "60:00"
    assert empty_figure("nothing").layout.annotations[0].text == "nothing"
