"""The explorer's Library tab: a results.jsonl read into a table, filtered, on the plane, as a playlist."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import ConfigError
from m2e_core.library import TrackResult, analyze_library, scan_library
from m2e_core.pipeline import Analyzer

ROOT = Path(__file__).resolve().parent.parent  # the explorer is not installed: it lives beside the app
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from m2e_explorer import library_tab  # noqa: E402
from m2e_explorer.library import (  # noqa: E402
    COLUMNS,
    QUADRANT_NAMES,
    filter_table,
    library_plane,
    quadrant_of,
    read_library,
    tag_choices,
    to_m3u,
    track_summary,
)

RATE = 22_050


def analysis(source: str, duration: float, valence: float | None, arousal: float | None,
             tags: tuple[str, ...] = (), key: tuple[str, str] = ("C", "major")) -> dict:
    """An analysis object as the command line writes it (the fields the library reads, and a few more)."""
    data = {
        "version": "1", "source": source, "duration": duration,
        "key": {"tonic": key[0], "mode": key[1], "confidence": 0.8},
        "key_timeline": [], "chords": [{"start": 0.0, "end": duration, "label": "C:maj"}],
        "normalized_chords": [], "provenance": [{"role": "encoder", "name": "tiny", "revision": None,
                                                 "sha256": None, "source": None}],
        "warnings": [],
    }
    if valence is not None:
        probabilities = {tag: 0.9 - 0.1 * number for number, tag in enumerate(tags)} | {"film": 0.05}
        data["segments"] = []
        data["track"] = {"index": -1, "start": 0.0, "end": duration, "valence": valence, "arousal": arousal,
                         "tags": probabilities, "selected_tags": list(tags), "decision_rule": "top-k"}
    return data


def _digest(digest: str) -> str:
    return digest if len(digest) == 64 else digest * 64


def ok_line(path: str, digest: str, data: dict) -> bytes:
    return TrackResult(path, _digest(digest), "ok", 100, 1, data).to_line()


def failed_line(path: str, digest: str | None, error: str) -> bytes:
    return TrackResult(path, None if digest is None else _digest(digest), "failed", error=error).to_line()


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"".join([
        ok_line("rock/loud.mp3", "1", analysis("loud.mp3", 181.6, 7.2, 7.5, ("energetic", "party"))),
        ok_line("ambient/still.flac", "2", analysis("still.flac", 300.0, 6.0, 2.5, ("calm", "relaxing"))),
        ok_line("dark/slow.wav", "3", analysis("slow.wav", 95.4, 2.5, 3.0, ("sad", "calm"), ("A", "minor"))),
        ok_line("metal/angry.ogg", "4", analysis("angry.ogg", 240.0, 2.0, 8.0, ("energetic",), ("E", "minor"))),
        ok_line("chords-only/plain.wav", "5", analysis("plain.wav", 60.0, None, None)),
        failed_line("broken/notes.wav", "6", "broken/notes.wav: cannot decode the file (not audio)"),
    ]))
    return path


def test_results_become_one_row_per_track_with_failures_and_without_emotion(results):
    library = read_library([results])
    table = library.table
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert table["track"].tolist() == sorted(table["track"])
    assert (library.analysed, library.failed, library.lines, library.repeats) == (5, 1, 6, 0)
    rows = table.set_index("track")
    assert rows.loc["rock/loud.mp3", "quadrant"] == "excited / happy"
    assert rows.loc["rock/loud.mp3", "top tags"] == "energetic, party"
    assert rows.loc["rock/loud.mp3", "duration"] == pytest.approx(181.6)
    assert rows.loc["dark/slow.wav", "key"] == "A minor" and rows.loc["dark/slow.wav", "quadrant"] == "sad / depressed"
    assert rows.loc["ambient/still.flac", "quadrant"] == "calm / content"
    assert rows.loc["metal/angry.ogg", "quadrant"] == "tense / angry"
    plain = rows.loc["chords-only/plain.wav"]
    assert plain["quadrant"] == "" and pd.isna(plain["valence"]) and plain["failure"] == "" and plain["key"] == "C major"
    broken = rows.loc["broken/notes.wav"]
    assert broken["failure"] == "broken/notes.wav: cannot decode the file (not audio)" and broken["key"] == ""
    assert "6 tracks (5 analysed, 1 failed) from 1 file, 6 lines." == library.describe()


def test_a_torn_last_line_is_left_out_and_said(results):
    whole = results.read_bytes()
    results.write_bytes(whole + ok_line("new/half.wav", "7", analysis("half.wav", 10.0, 5.0, 5.0))[:40])
    library = read_library([results])
    assert len(library.table) == 6 and "new/half.wav" not in set(library.table["track"])
    assert library.torn == ("results.jsonl",) and "cut short" in library.describe()


def test_a_damaged_line_refuses_the_file_naming_the_line(results):
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(lines[:2] + [b'{"path": "x.wav", "status": "ok"}\n'] + lines[2:]))
    with pytest.raises(ConfigError, match=r"results.jsonl line 3 is not a result record .*no sha256"):
        read_library([results])
    results.write_bytes(b"".join(lines[:1] + [b"not json at all\n"]))
    with pytest.raises(ConfigError, match="line 2 is not a result record"):
        read_library([results])
    bad_va = ok_line("a.wav", "8", analysis("a.wav", 10.0, 5.0, 5.0)).replace(b'"valence":5.0', b'"valence":"high"')
    results.write_bytes(bad_va)
    with pytest.raises(ConfigError, match="line 1: valence must be a number"):
        read_library([results])


def test_shard_files_together_show_each_track_once_a_result_beating_a_failure(tmp_path):
    first, second = tmp_path / "results.jsonl.shard-0-of-2", tmp_path / "results.jsonl.shard-1-of-2"
    first.write_bytes(failed_line("a/song.wav", "1", "a/song.wav: boom") + ok_line(
        "b/other.wav", "2", analysis("other.wav", 30.0, 6.0, 6.0, ("happy",))))
    # The same song analysed again (resumed with --retry-failed), and a moved copy of another.
    second.write_bytes(ok_line("a/song.wav", "1", analysis("song.wav", 20.0, 3.0, 3.0, ("sad",)))
                       + ok_line("moved/other.wav", "2", analysis("other.wav", 30.0, 6.0, 6.0, ("happy",))))
    library = read_library([first, second])
    assert library.table["track"].tolist() == ["a/song.wav", "b/other.wav"]
    assert library.table["failure"].tolist() == ["", ""] and (library.lines, library.repeats) == (4, 2)
    assert library.files == ("results.jsonl.shard-0-of-2", "results.jsonl.shard-1-of-2")


def test_caps_refuse_before_the_work_grows(results, tmp_path):
    with pytest.raises(ConfigError, match="at most 0 MB are read here"):
        read_library([results], max_bytes=1000)
    with pytest.raises(ConfigError, match="more than 4 lines"):
        read_library([results], max_lines=4)
    with pytest.raises(ConfigError, match="line 1 is longer than"):
        read_library([results], max_line_bytes=100)
    with pytest.raises(ConfigError, match="no results file"):
        read_library([])
    with pytest.raises(ConfigError, match="cannot read missing.jsonl"):
        read_library([tmp_path / "missing.jsonl"])


def test_filters_by_tag_and_quadrant(results):
    table = read_library([results]).table
    assert tag_choices(table)[:2] == ["calm", "energetic"]  # two tracks each, then by name
    assert filter_table(table, tag="energetic")["track"].tolist() == ["metal/angry.ogg", "rock/loud.mp3"]
    assert filter_table(table, tag="energetic", quadrant="tense / angry")["track"].tolist() == ["metal/angry.ogg"]
    assert filter_table(table, quadrant="calm / content")["track"].tolist() == ["ambient/still.flac"]
    assert len(filter_table(table)) == 6 and filter_table(table, tag="nonexistent").empty
    with pytest.raises(ConfigError, match="unknown quadrant 'happy'"):
        filter_table(table, quadrant="happy")
    assert quadrant_of(5.0, 5.0) == "excited / happy" and quadrant_of(4.99, 5.0) == "tense / angry"


def test_m3u_lists_the_selection_with_relative_paths_and_durations(results):
    table = read_library([results]).table
    text = to_m3u(filter_table(table, tag="energetic"), "Music")
    assert text == ("#EXTM3U\n#EXTINF:240,angry\nMusic/metal/angry.ogg\n"
                    "#EXTINF:182,loud\nMusic/rock/loud.mp3\n")
    whole = to_m3u(table).splitlines()
    assert whole[0] == "#EXTM3U" and len(whole) == 1 + 2 * len(table)
    assert "#EXTINF:-1,notes" in whole and "broken/notes.wav" in whole  # a failure has no known duration
    odd = pd.DataFrame({"track": ["/home/someone/Music/a.mp3", "C:\\Users\\x\\b.flac", "line\nbreak.wav"],
                        "duration": [10.0, float("nan"), 3.0]})
    assert to_m3u(odd).splitlines() == ["#EXTM3U", "#EXTINF:10,a", "a.mp3", "#EXTINF:-1,b", "b.flac"]
    with pytest.raises(ConfigError, match="one line"):
        to_m3u(odd, "Music\n#EXTINF")


def test_plane_has_one_point_per_track_and_one_trace_per_quadrant(results, tmp_path):
    table = read_library([results]).table
    figure = library_plane(table)
    names = [trace.name for trace in figure.data]
    assert names == ["excited / happy (1)", "tense / angry (1)", "sad / depressed (1)", "calm / content (1)"]
    assert sum(len(trace.x) for trace in figure.data) == 4
    loud = next(trace for trace in figure.data if trace.name.startswith("excited"))
    assert list(loud.text) == ["rock/loud.mp3"] and (loud.x[0], loud.y[0]) == (7.2, 7.5)
    assert list(figure.layout.xaxis.range) == [1.0, 9.0] and list(figure.layout.yaxis.range) == [1.0, 9.0]
    assert figure.layout.yaxis.scaleanchor == "x" and "2 without valence/arousal" in figure.layout.title.text
    # A large library: still one trace per quadrant, every point drawn.
    many = tmp_path / "many.jsonl"
    many.write_bytes(b"".join(ok_line(f"t/{n}.wav", f"{n:064x}", analysis(
        f"{n}.wav", 60.0, 1 + (n % 81) / 10, 1 + (n * 37 % 81) / 10)) for n in range(3000)))
    big = read_library([many]).table
    assert len(big) == 3000
    figure = library_plane(big)
    assert len(figure.data) == 4 and sum(len(trace.x) for trace in figure.data) == 3000


def test_track_summary_says_the_result_or_the_failure(results):
    rows = read_library([results]).table.set_index("track", drop=False)
    loud = track_summary(rows.loc["rock/loud.mp3"])
    assert "### rock/loud.mp3" in loud and "3:02" in loud and "**Valence** 7.20, **arousal** 7.50" in loud
    assert "excited / happy" in loud and "energetic 0.90" in loud and "Models: encoder: tiny" in loud
    assert "not predicted" in track_summary(rows.loc["chords-only/plain.wav"])
    assert "**Not analysed:** broken/notes.wav: cannot decode" in track_summary(rows.loc["broken/notes.wav"])


# -- the tab -----------------------------------------------------------------------------------


class Dirs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def request_dir(self) -> Path:
        self.count += 1
        path = self.root / f"req-{self.count}"
        path.mkdir(parents=True)
        return path


def test_tab_handlers_open_filter_select_and_export(results, tmp_path):
    handlers = library_tab.LibraryHandlers(Dirs(tmp_path / "requests"))
    library, view = handlers.open([str(results)])
    assert len(view.rows) == 6 and list(view.rows.columns) == list(COLUMNS) and view.caption == "6 of 6 tracks."
    filtered = handlers.view(library.table, "calm", "")
    assert filtered.rows["track"].tolist() == ["ambient/still.flac", "dark/slow.wav"]
    assert filtered.caption == "2 of 6 tracks with tag **calm**."
    assert sum(len(trace.x) for trace in filtered.plane.data) == 2
    assert "### dark/slow.wav" in handlers.summary(library.table, filtered.rows["track"][1])
    with pytest.raises(ConfigError, match="'elsewhere.wav' is not in this library"):
        handlers.summary(library.table, "elsewhere.wav")
    playlist = Path(handlers.export(library.table, "calm", "sad / depressed", "Music"))
    assert playlist.name == "m2e-library.m3u" and playlist.parent.parent == tmp_path / "requests"
    assert playlist.read_text() == "#EXTM3U\n#EXTINF:95,slow\nMusic/dark/slow.wav\n"
    with pytest.raises(ConfigError, match="selection is empty"):
        handlers.export(library.table, "party", "sad / depressed", "")
    with pytest.raises(ConfigError, match="open a results.jsonl first"):
        handlers.view(None, "", "")


def test_tab_builds_inside_tabs_and_its_wired_events_open_filter_select_export(results, tmp_path):
    with gr.Blocks() as demo, gr.Tabs():
        tab = library_tab.build(Dirs(tmp_path))
    assert tab.quadrant.choices[1:] == [(name, name) for name in QUADRANT_NAMES]
    config = demo.get_config_file()
    assert any(block.get("props", {}).get("label") == "Library" for block in config["components"])
    events = [dep for dep in config["dependencies"] if dep["targets"]]
    assert len(events) == 4 and {dep["api_visibility"] for dep in events} == {"private"}  # UI only: no API, no MCP
    on_open, on_filter, on_select, on_export = (demo.fns[dep["id"]].fn for dep in events)

    state, status, tags, quadrant, plane, shown, summary = on_open([str(results)])
    assert status.startswith("6 tracks (5 analysed, 1 failed)") and len(shown) == 6 and summary == ""
    assert tags["choices"][:3] == [("any tag", ""), ("calm", "calm"), ("energetic", "energetic")]
    caption, plane, shown, _ = on_filter(state, "energetic", "")
    assert caption == "2 of 6 tracks with tag **energetic**." and shown["track"].tolist() == [
        "metal/angry.ogg", "rock/loud.mp3"]
    picked = gr.SelectData(None, {"index": [1, 0], "value": "rock/loud.mp3", "row_value": shown.iloc[1].tolist()})
    assert on_select(state, shown, picked).startswith("### rock/loud.mp3")
    playlist = Path(on_export(state, "energetic", "", ""))
    assert playlist.read_text().splitlines()[1:] == ["#EXTINF:240,angry", "metal/angry.ogg",
                                                      "#EXTINF:182,loud", "rock/loud.mp3"]
    with pytest.raises(gr.Error, match="open a results.jsonl first"):
        on_export(None, "", "", "")
    with pytest.raises(gr.Error, match="line 1 is not a result record"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{}\n")
        on_open([str(bad)])


@pytest.mark.slow
def test_a_library_analysed_by_the_command_line_path_opens_in_the_tab(tiny_models, chord_backend, tmp_path):
    encoder_dir, heads = tiny_models
    folder = tmp_path / "music"
    (folder / "a").mkdir(parents=True)
    sf.write(folder / "a" / "major.wav", synth_chord_loop(C_MAJOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)
    sf.write(folder / "minor.flac", synth_chord_loop(A_MINOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)
    (folder / "bad.wav").write_bytes(b"not audio at all\n" * 50)
    analyzer = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu", top_k=2,
                        allow_download=False)
    output = tmp_path / "results.jsonl"
    analyze_library(analyzer, scan_library([folder]), output, progress=False, warn=lambda text: None)
    library, view = library_tab.LibraryHandlers(Dirs(tmp_path / "req")).open([str(output)])
    rows = library.table.set_index("track")
    assert sorted(rows.index) == ["a/major.wav", "bad.wav", "minor.flac"]
    assert rows.loc["a/major.wav", "key"] == "C major" and rows.loc["minor.flac", "key"] == "A minor"
    assert rows.loc["bad.wav", "failure"].startswith("bad.wav: ")
    for name in ("a/major.wav", "minor.flac"):
        assert rows.loc[name, "quadrant"] in QUADRANT_NAMES and len(rows.loc[name, "tags"]) == 2
        assert rows.loc[name, "duration"] == pytest.approx(12.0, abs=0.01)
    assert sum(len(trace.x) for trace in view.plane.data) == 2
    assert json.loads(output.read_text().splitlines()[0])["status"] in ("ok", "failed")
