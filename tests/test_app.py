"""The Gradio app: handlers called directly, and the launched app through gradio_client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import AudioDecodeError, ConfigError, LabelError, WeightsNotFoundError
from m2e_core.labels import Identity, LabelStore, ManifestRow, read_manifest
from m2e_core.labelstore import LabelPolicy
from m2e_core.pipeline import Analyzer
from m2e_core.types import Analysis
from m2e_core.vocab import tag_names

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from app import TRACK, ExplorerApp, ViewOptions, build_demo, server_settings  # noqa: E402
from m2e_explorer.errors import guarded  # noqa: E402
from m2e_explorer.settings import Settings, wav_bytes  # noqa: E402

RATE = 22_050
ANN = Identity.local("ann")


def _top_k(k: int) -> ViewOptions:
    return ViewOptions(rule="top-k", top_k=k)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-audio")
    major = root / "c_major.wav"
    minor = root / "a_minor.flac"
    sf.write(major, synth_chord_loop(C_MAJOR_LOOP, repeats=5), RATE)  # 40 s: segments 0-30, 30-40
    sf.write(minor, synth_chord_loop(A_MINOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)  # 12 s: one segment
    bad = root / "not_audio.wav"
    bad.write_bytes(b"this is a text file, not a wave file\n" * 20)
    short_major = root / "c_major_short.ogg"
    sf.write(short_major, synth_chord_loop(C_MAJOR_LOOP, repeats=2, seconds_per_chord=1.5), RATE)  # 12 s
    return major, minor, bad, short_major


@pytest.fixture(scope="module")
def tiny_factory(tiny_models, chord_backend):
    encoder_dir, heads = tiny_models
    calls: list[bool] = []

    def factory(*, emotion: bool = True) -> Analyzer:
        calls.append(emotion)
        return Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, emotion=emotion,
                        device="cpu", top_k=4, allow_download=False)

    factory.calls = calls
    return factory


@pytest.fixture(scope="module")
def explorer(tiny_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("explorer")
    return ExplorerApp(tiny_factory, label_store=LabelStore(root / "labels"), temp_root=root / "tmp")


@pytest.fixture(scope="module")
def major_pages(explorer, audio_files):
    return list(explorer.iter_analyze(str(audio_files[0])))


@pytest.fixture(scope="module")
def major_page(major_pages):
    return major_pages[-1]


def _trace(figure, name):
    return next(trace for trace in figure.data if trace.name == name)


class RecordingProgress:
    """Called like ``gr.Progress``, and falsy like it (it has a length)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return 0

    def __call__(self, value: float, desc: str | None = None, **_: object) -> None:
        self.calls.append((value, desc or ""))


# -- handlers called directly ----------------------------------------------------------


def test_analyze_shows_key_chords_emotion_and_segments(explorer, major_page, audio_files, tiny_factory):
    page = major_page
    analysis = page.state.analysis
    assert tiny_factory.calls.count(True) >= 1 and False not in tiny_factory.calls
    assert (analysis.key.tonic, analysis.key.mode) == ("C", "major")
    assert [(s.index, s.start, s.end) for s in page.state.spans] == [(0, 0.0, 30.0), (1, 30.0, 40.0)]
    assert "C major" in page.summary and "valence" in page.summary
    assert "Emotion model loaded" in page.models
    path = _trace(page.plane, "segments (time order)")
    assert list(path.x) == [s.valence for s in analysis.segments]
    assert _trace(page.plane, "whole track").x[0] == analysis.track.emotion.valence
    bars = page.tags.data[0]
    assert len(bars.y) == 15 and set(analysis.track.selected_tags) <= set(bars.y)
    chords = _trace(page.timeline, "chords")
    assert {"C", "G", "Am", "F"} <= set(chords.text)  # lead-sheet names, spelled in the key
    over_time = _trace(page.emotion, "valence points")
    assert list(over_time.y) == [s.valence for s in analysis.segments]
    assert list(over_time.x) == [15.0, 35.0]  # segment middles, in track time
    choices, value = page.selector
    assert value == TRACK
    assert choices == [("whole track", TRACK), ("segment 1 (0:00-0:30)", 0), ("segment 2 (0:30-0:40)", 1)]
    assert "c_major.wav" in page.player and "data-duration='40.000'" in page.player
    saved = Analysis.from_dict(json.loads(Path(page.json_file).read_text()))
    assert saved.to_dict() == page.raw == analysis.to_dict()
    assert Path(page.json_file).parent.parent == explorer.temp_root


def test_results_stream_key_and_chords_first_then_each_segment(major_pages):
    key_only, first, *middle, last = major_pages
    assert key_only.state.analysis.chords == () and key_only.state.analysis.pending == ("chords", "emotion")
    assert "Key after" in key_only.stage and "C major" in key_only.summary and "being recognised" in key_only.summary
    assert _trace(key_only.timeline, "key").text and not key_only.state.complete and key_only.json_file is None
    assert "c_major.wav" in key_only.player  # playable from the first seconds
    assert first.state.analysis.segments == () and first.state.analysis.track is None
    assert "Key and chords after" in first.stage and "C major" in first.summary
    assert _trace(first.timeline, "chords").text  # the timeline is drawn before any emotion
    assert first.json_file is None  # no JSON of a half-done analysis
    assert [len(p.state.analysis.segments) for p in middle] == [1, 2]
    assert "1 of 2 segments analysed" in middle[0].stage and middle[0].json_file is None
    assert len(_trace(middle[0].emotion, "valence points").x) == 1
    assert "Analysed in" in last.stage and last.state.analysis.track is not None


def test_progress_names_the_stage_and_the_segment_through_a_falsy_progress(explorer, audio_files):
    progress = RecordingProgress()
    assert not progress  # as gr.Progress: `progress or ...` would drop every update
    explorer.analyze(str(audio_files[0]), progress=progress)
    texts = [text for _, text in progress.calls]
    assert any("decoding" in text for text in texts)
    assert any("key" in text for text in texts) and any("chords" in text for text in texts)
    assert any("segment 1 of 2" in text for text in texts) and any("segment 2 of 2" in text for text in texts)
    fractions = [value for value, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_each_request_gets_its_own_directory(explorer, major_page):
    first = explorer.load_analysis(major_page.json_file)
    second = explorer.load_analysis(major_page.json_file)
    assert len({Path(p.json_file).parent for p in (major_page, first, second)}) == 3
    assert Path(first.json_file).read_text() == Path(second.json_file).read_text()


def test_segment_view_plays_that_segment_in_track_time_and_labels_blind(explorer, major_page):
    loaded = major_page.state
    view = explorer.view(loaded, 1, _top_k(3))
    segment = loaded.analysis.segments[1]
    assert "data-start='30.000'" in view.player and "data-end='40.000'" in view.player  # the track, from 0:30
    assert "c_major.wav" in view.player
    assert "Segment 2" in view.segment and f"{segment.valence:.2f}" in view.segment
    assert (view.label_valence, view.label_arousal, view.label_tags) == (5.0, 5.0, [])  # blind: nothing pre-filled
    seen = explorer.view(loaded, 1, ViewOptions(rule="top-k", top_k=3, blind=False))
    assert seen.label_tags == [name for name, _ in segment.top_tags(3)]
    assert seen.label_valence == round(min(9.0, max(1.0, segment.valence)), 1)
    ring = [t for t in view.plane.data if t.name == "selected segment"]
    assert len(ring) == 1 and ring[0].x[0] == segment.valence
    assert tuple(view.timeline.layout.xaxis.range) == (30.0, 40.0)  # the timeline opens on the segment
    highlighted = _trace(view.timeline, "segment").marker.color
    assert highlighted[1] != highlighted[0]  # segment 2 highlighted on the timeline
    rects = [s for s in view.emotion.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(30.0, 40.0)]
    with pytest.raises(ConfigError, match="segment 8 does not exist"):
        explorer.view(loaded, 7, _top_k(3))


def test_tag_rules_are_user_adjustable(explorer, major_page):
    loaded = major_page.state
    track = loaded.analysis.track
    shown = ViewOptions(blind=False)
    analysed = explorer.view(loaded, TRACK, ViewOptions(rule="analysed", top_k=5, blind=False))
    assert analysed.label_tags == list(track.selected_tags)  # the pipeline's own selection
    assert "top-4" in analysed.tags.layout.title.text
    assert explorer.view(loaded, TRACK, ViewOptions(rule="top-k", top_k=2, blind=False)).label_tags == [
        n for n, _ in track.emotion.top_tags(2)]
    everything = explorer.view(loaded, TRACK, ViewOptions(rule="threshold", threshold=0.0, blind=False))
    assert sorted(everything.label_tags) == sorted(tag_names())
    assert explorer.view(loaded, TRACK, ViewOptions(rule="threshold", threshold=1.0, blind=False)).label_tags == []
    assert shown.blind is False and ViewOptions().blind is True
    with pytest.raises(ConfigError):
        explorer.view(loaded, TRACK, ViewOptions(rule="best"))


@pytest.mark.slow
def test_load_analysis_written_by_the_cli(explorer, audio_files, tiny_models, tmp_path):
    from m2e_core.cli import main as cli_main

    encoder_dir, heads = tiny_models
    out = tmp_path / "cli.json"
    assert cli_main(["analyze", str(audio_files[1]), "--json", str(out), "--encoder", str(encoder_dir),
                     "--checkpoint", str(heads), "--offline", "--device", "cpu"]) == 0
    analysis = Analysis.from_dict(json.loads(out.read_text()))
    page = explorer.load_analysis(str(out))
    assert page.state.analysis == analysis and page.state.audio_path is None
    assert "A minor" in page.summary
    assert "no audio attached" in page.segment and "No audio to play" in page.player
    with pytest.raises(LabelError, match="attach the audio"):
        explorer.save_label(page.state, TRACK, True, 5.0, 5.0, [], ANN)
    with_audio = explorer.load_analysis(str(out), str(audio_files[1]))
    assert "a_minor.flac" in with_audio.player
    with pytest.raises(ConfigError, match="attach the same audio"):
        explorer.load_analysis(str(out), str(audio_files[0]))


def test_load_analysis_batch_json_and_bad_files(explorer, major_page, tmp_path):
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"tracks": [major_page.raw, major_page.raw], "failed": []}))
    page = explorer.load_analysis(str(batch))
    assert "holds 2 tracks" in page.stage and page.raw == major_page.raw
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON file"):
        explorer.load_analysis(str(broken))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not an m2e analysis"):
        explorer.load_analysis(str(other))
    with pytest.raises(ConfigError, match="choose an analysis"):
        explorer.load_analysis(None)


def test_a_crafted_analysis_is_refused_before_any_work(explorer, major_page, tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({**major_page.raw, "duration": 1_000_000, "segments": []}))  # the 1.3 KB attack
    with pytest.raises(ConfigError, match="longer than the"):
        explorer.load_analysis(str(huge))
    many = dict(major_page.raw)
    many["segments"] = [dict(major_page.raw["segments"][0], index=i) for i in range(500)]
    crowded = tmp_path / "crowded.json"
    crowded.write_text(json.dumps(many))
    with pytest.raises(ConfigError, match="500 segments, more than the 400"):
        explorer.load_analysis(str(crowded))
    chords = dict(major_page.raw, chords=[{"start": 0.0, "end": 0.1, "label": "C:maj"}] * 20_001)
    chatty = tmp_path / "chatty.json"
    chatty.write_text(json.dumps(chords))
    with pytest.raises(ConfigError, match="20001 chords"):
        explorer.load_analysis(str(chatty))


def test_figures_cost_is_linear_in_segments(major_page):
    """Segment bands and boundaries are one trace each: no shape or annotation per segment."""
    from m2e_explorer.views.common import planned_spans
    from m2e_explorer.views.emotion import emotion_over_time
    from m2e_explorer.views.timeline import chord_timeline

    analysis = major_page.state.analysis
    sizes = []
    for duration in (40.0, 1800.0):
        spans = planned_spans(duration, segment_seconds=5.0)
        figure = chord_timeline(analysis, segments=spans, selected=1)
        sizes.append((len(figure.data), len(figure.layout.shapes), len(figure.layout.annotations)))
        emotion = emotion_over_time(analysis, segments=spans)
        assert len(emotion.data) <= 6 and len(emotion.layout.shapes) <= 3
    assert sizes[0] == sizes[1] and sizes[1][1] <= 1 and sizes[1][2] == 0
    assert len(_trace(chord_timeline(analysis, segments=planned_spans(1800.0, segment_seconds=5.0)),
                      "segment").x) == 360


def test_label_save_export_reimport_round_trip(explorer, major_page, audio_files, tmp_path):
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy(admins={"local:ann"}))
    labeller = ExplorerApp(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    loaded = major_page.state
    bob = labeller.identify(typed_name=" bob ")
    message = labeller.save_label(loaded, TRACK, True, 6.5, 3.2, ["calm", "relaxing"], ANN)
    assert "whole track" in message and "calm, relaxing" in message
    labeller.save_label(loaded, 1, True, 2.0, 8.0, ["dark"], ANN)
    labeller.save_label(loaded, 1, True, 2.5, 8.5, ["dark", "epic"], ANN)  # a correction
    labeller.save_label(loaded, 0, False, 5.0, 5.0, ["happy"], bob)
    with pytest.raises(LabelError, match="unknown tag"):
        labeller.save_label(loaded, 0, True, 5.0, 5.0, ["joyful"], ANN)
    with pytest.raises(LabelError, match="or at least one tag"):
        labeller.save_label(loaded, 0, False, 5.0, 5.0, [], ANN)
    assert len(store.records()) == 4
    assert [r.annotator for r in store.records()] == ["ann", "ann", "ann", "bob"]
    audio_path = "c_major.wav"  # manifests name the recording, never a server path
    expected_ann = [  # every export names who gave each label
        ManifestRow(audio_path, 6.5, 3.2, ("calm", "relaxing"), annotator="ann"),
        ManifestRow(audio_path, 2.5, 8.5, ("dark", "epic"), 30.0, 40.0, 1, annotator="ann"),
    ]
    for fmt in ("csv", "jsonl"):
        mine = labeller.export_labels(fmt, "mine", ANN)
        assert Path(mine).parent.parent == labeller.temp_root
        assert read_manifest(mine) == expected_ann
    everyone = read_manifest(labeller.export_labels("csv", "all", ANN))
    assert everyone == [*expected_ann, ManifestRow(audio_path, None, None, ("happy",), 0.0, 30.0, 0, annotator="bob")]
    with pytest.raises(LabelError, match="only the label admins"):
        labeller.export_labels("csv", "all", bob)  # bob is no admin: his own labels only
    assert read_manifest(labeller.export_labels("csv", "mine", bob)) == [everyone[-1]]
    bundle = labeller.export_labels("zip", "mine", ANN)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(unpacked)
    rows = read_manifest(unpacked / "manifest.csv")
    assert all(not Path(r.path).is_absolute() for r in rows)
    assert [r.resolve(unpacked).read_bytes() == audio_files[0].read_bytes() for r in rows] == [True, True]
    with pytest.raises(LabelError, match="no labels by 'nobody'"):
        labeller.export_labels("csv", "mine", Identity.local("nobody"))
    assert "ann has 3 labels" in labeller.label_summary(ANN)


def test_on_a_space_labels_need_a_signed_in_account(explorer, tmp_path):
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy.from_env({"SPACE_ID": "user/m2e"}))
    labeller = ExplorerApp(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    with pytest.raises(LabelError, match="sign in with Hugging Face"):
        labeller.identify(typed_name="mallory")
    assert labeller.identify(hf_username="alice", typed_name="mallory") == Identity.huggingface("alice")


def test_concurrent_label_saves_through_the_handler(explorer, major_page, tmp_path):
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy(team=True))
    labeller = ExplorerApp(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    errors: list[BaseException] = []

    def save(who: Identity) -> None:
        try:
            for i in range(15):
                labeller.save_label(major_page.state, i % 2, True, 1.0 + i * 0.5, 9.0 - i * 0.5, ["sad"], who)
        except BaseException as error:  # re-raised below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(Identity.local(f"user{n}"),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    records = store.records()
    assert len(records) == 60
    for n in range(4):
        assert [r.valence for r in records if r.annotator == f"user{n}"] == [1.0 + i * 0.5 for i in range(15)]
    rows = read_manifest(labeller.export_labels("jsonl", "all", Identity.local("user0")))
    assert len(rows) == 8  # newest per (track, segment, annotator): 4 annotators x 2 segments
    assert {(r.segment, r.valence) for r in rows} == {(0, 8.0), (1, 7.5)}  # i = 14 and i = 13


@pytest.mark.slow
def test_batch_table_csv_json_plane_and_opening_a_row(explorer, audio_files, tmp_path):
    progress = RecordingProgress()
    results = list(explorer.iter_batch([str(p) for p in audio_files[3:0:-1]], progress=progress))
    assert [len(r.table) for r in results] == [1, 2, 3] and [r.done for r in results] == [False, False, True]
    texts = [text for _, text in progress.calls]
    assert any(text.startswith("file 2 of 3 (not_audio.wav)") for text in texts)
    assert any(text.startswith("file 3 of 3 (a_minor.flac): ") and "segment 1 of 1" in text for text in texts)
    result = results[-1]
    table = result.table
    assert list(table["file"]) == ["c_major_short.ogg", "not_audio.wav", "a_minor.flac"]
    assert list(table["key"]) == ["C major", "", "A minor"]
    assert list(table["duration"]) == ["0:12", "", "0:12"]
    assert table["error"][1].startswith("cannot decode") and "not_audio.wav" not in table["error"][1]  # said once
    assert not table["error"][0] and not table["error"][2]
    assert "2 of 3 files analysed" in result.status and "not_audio.wav" in result.status
    assert pd.read_csv(result.csv_path, keep_default_na=False)["file"].tolist() == list(table["file"])
    payload = json.loads(Path(result.json_path).read_text())
    assert [t["source"] for t in payload["tracks"]] == ["c_major_short.ogg", "a_minor.flac"]
    assert payload["failed"][0]["source"] == "not_audio.wav"
    tracks = [t for t in result.plane.data if t.meta and t.meta.get("role") == "track"]
    assert [t.name for t in tracks] == ["c_major_short.ogg", "a_minor.flac"]
    assert tracks[0].marker.color != tracks[1].marker.color and result.plane.layout.showlegend
    assert [t.x[0] for t in tracks] == [pytest.approx(v, abs=1e-3) for v in table["valence"][[0, 2]]]
    reopened = explorer.load_analysis(result.json_path)
    assert reopened.state.analysis.source == "c_major_short.ogg"
    opened = explorer.open_batch_row(result, 1)
    assert opened.state.analysis.source == "a_minor.flac" and "a_minor.flac" in opened.player
    with pytest.raises(AudioDecodeError, match="no files"):
        explorer.batch([])


def test_batch_csv_cells_cannot_run_as_formulas(explorer, audio_files, tmp_path):
    evil = tmp_path / "=2+5+cmd|' -c calc'!A0.wav"
    evil.write_bytes(audio_files[2].read_bytes())  # not audio: a failed row still names the file
    result = explorer.batch([str(evil)])
    cell = pd.read_csv(result.csv_path, keep_default_na=False)["file"][0]
    assert cell == "'" + evil.name


def test_bad_input_is_a_readable_one_line_error(explorer, audio_files):
    with pytest.raises(AudioDecodeError, match="not_audio.wav: cannot decode: not an audio file"):
        explorer.analyze(str(audio_files[2]))
    with pytest.raises(AudioDecodeError, match="upload or record"):
        explorer.analyze(None)
    wrapped = guarded(explorer.analyze)
    with pytest.raises(gr.Error) as caught:
        wrapped(str(audio_files[2]))
    assert caught.value.message.startswith("not_audio.wav: cannot decode") and "\n" not in caught.value.message
    assert str(audio_files[2].parent) not in caught.value.message  # no server paths
    assert caught.value.title == "Cannot read the audio"


def test_unexpected_errors_are_logged_with_an_id(caplog):
    def broken(path: str) -> None:
        raise ValueError(f"cannot convert float NaN to integer in /srv/secret/{path}")

    with pytest.raises(gr.Error) as caught:
        guarded(broken)("x.wav")
    message = caught.value.message
    assert message.startswith("internal error (id ") and "secret" not in message and "NaN" not in message
    reference = message.split("(id ")[1][:8]
    assert any(reference in record.getMessage() for record in caplog.records)


# -- without weights -------------------------------------------------------------------


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    monkeypatch.setenv("M2E_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("M2E_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("M2E_ENCODER", raising=False)
    monkeypatch.delenv("M2E_CHECKPOINT", raising=False)
    return tmp_path


def test_default_factory_falls_back_to_key_and_chords_without_weights(no_weights_env):
    explorer = ExplorerApp(label_store=LabelStore(no_weights_env / "labels"), temp_root=no_weights_env / "t")
    before = explorer.models_md()
    assert "Running without the emotion model" in before and app.DOWNLOAD_COMMAND in before
    assert "the MERT encoder" in before and "the emotion heads" in before and "M2E_OFFLINE=1" in before
    with pytest.raises(WeightsNotFoundError):
        app.default_analyzer_factory(emotion=True)
    analyzer = explorer.shared.get()
    assert not analyzer.emotion_enabled and analyzer.encoder is None
    assert app.DOWNLOAD_COMMAND in explorer.shared.missing
    assert explorer.shared.get() is analyzer  # built once
    after = explorer.models_md()
    assert after.count("Running without the emotion model") == 1 and after.count("MERT encoder") == 1
    assert "downloaded on the first" not in after  # offline: it says so, once, without contradiction


def test_banner_without_weights_but_online_says_they_will_download(no_weights_env, monkeypatch):
    monkeypatch.delenv("M2E_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    explorer = ExplorerApp(label_store=LabelStore(no_weights_env / "labels"), temp_root=no_weights_env / "t")
    banner = explorer.models_md()
    assert "downloaded on the first analysis" in banner and "offline" not in banner
    assert banner.count("MERT encoder") == 1


@pytest.mark.slow
def test_without_weights_key_chords_and_labelling_still_work(no_weights_env, chord_backend, audio_files):
    def factory(*, emotion: bool = True) -> Analyzer:
        return Analyzer(chords=chord_backend, emotion=emotion, allow_download=False)

    store = LabelStore(no_weights_env / "labels")
    explorer = ExplorerApp(factory, label_store=store, temp_root=no_weights_env / "t")
    pages = list(explorer.iter_analyze(str(audio_files[1])))
    assert len(pages) == 2  # the key, then key and chords: nothing more is coming
    assert "No valence/arousal" in pages[0].emotion.layout.annotations[0].text
    page = pages[1]
    analysis = page.state.analysis
    assert analysis.track is None and analysis.segments is None
    assert (analysis.key.tonic, analysis.key.mode) == ("A", "minor")
    assert "Running without the emotion model" in page.models and app.DOWNLOAD_COMMAND in page.models
    assert "not predicted" in page.summary
    assert {t.name for t in page.plane.data} == {"tag anchors"}  # no made-up emotion
    assert not page.tags.data
    assert [(s.index, s.start, s.end) for s in page.state.spans] == [(0, 0.0, 12.0)]  # for labelling
    assert page.selector[0][-1] == ("segment 1 (0:00-0:12)", 0)
    view = explorer.view(page.state, 0, ViewOptions(blind=False))
    assert "no emotion prediction" in view.segment and view.label_tags == []
    assert "data-start='0.000'" in view.player and "data-end='12.000'" in view.player
    explorer.save_label(page.state, 0, True, 3.0, 7.0, ["dark"], ANN)
    assert read_manifest(explorer.export_labels("csv", "mine", ANN))[0].segment == 0
    result = explorer.batch([str(audio_files[1])])
    assert result.table["valence"].isna().all() and "Running without the emotion model" in result.status
    assert not result.plane.data


# -- hosting ---------------------------------------------------------------------------


def test_server_settings_from_environment():
    local = server_settings({})
    assert local["server_name"] == "127.0.0.1" and local["server_port"] is None
    assert local["ssr_mode"] is False
    assert local["max_file_size"] == wav_bytes(15) > 15 * 60 * 44_100 * 4  # 15 min of CD-quality WAV fits
    space = server_settings({"SPACE_ID": "user/m2e", "PORT": "7860"})
    assert space["server_name"] == "0.0.0.0" and space["server_port"] == 7860
    assert server_settings({"M2E_HOST": "1", "GRADIO_SERVER_PORT": "8080"})["server_port"] == 8080
    assert server_settings({"M2E_HOST": "1"})["server_name"] == "0.0.0.0"
    assert server_settings({"M2E_HOST": "10.0.0.5"})["server_name"] == "10.0.0.5"
    assert server_settings({"M2E_MAX_UPLOAD": "10mb"})["max_file_size"] == 10 * 1024 * 1024
    assert server_settings({"M2E_MAX_MINUTES": "6"})["max_file_size"] == wav_bytes(6)
    with pytest.raises(ConfigError, match="PORT"):
        server_settings({"PORT": "http"})
    with pytest.raises(ConfigError, match="M2E_MAX_UPLOAD"):
        server_settings({"M2E_MAX_UPLOAD": "lots"})


def test_upload_advice_agrees_with_the_limits():
    assert "FLAC or MP3" in Settings.from_env({}).upload_advice()
    small = Settings.from_env({"M2E_MAX_UPLOAD": "50mb"}).upload_advice()
    assert "up to 15 min" in small and "a WAV up to 4 min" in small and "FLAC or MP3" in small


def test_temporary_files_are_removed_on_sigterm_and_sigint(tmp_path):
    script = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
              "from m2e_explorer.files import TempFiles, remove_on_signals\n"
              "files = TempFiles(); remove_on_signals(); (files.request_dir() / 'x.json').write_text('{}')\n"
              "print(files.root, flush=True)\n"
              "while True: time.sleep(0.1)\n")
    # SIGTERM exits with 143; SIGINT ends as Ctrl-C does (KeyboardInterrupt: killed by SIGINT).
    for sig, codes in ((signal.SIGTERM, (128 + signal.SIGTERM,)), (signal.SIGINT, (1, -signal.SIGINT))):
        process = subprocess.Popen([sys.executable, "-c", script, str(ROOT)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        root = Path(process.stdout.readline().strip())
        assert root.is_dir() and any(root.glob("req-*/x.json"))
        process.send_signal(sig)
        assert process.wait(timeout=30) in codes
        assert not root.exists()


def test_examples_are_shipped_and_small():
    examples = app.example_files()
    assert len(examples) >= 2
    for path in examples:
        assert Path(path).stat().st_size < 300 * 1024
        assert sf.info(path).duration > 30  # long enough for two segments


# -- the launched app ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    store = LabelStore(root / "labels", policy=LabelPolicy())
    demo = build_demo(tiny_factory, label_store=store, temp_root=root / "tmp")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                quiet=True, max_file_size="5mb")
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


VIEW_ARGS = ("analysed", 5, 0.5, False, True)  # rule, k, threshold, name every anchor, blind


def _fields(result) -> dict:
    """A page event's outputs by field name (clients get no ``gr.State``)."""
    from m2e_explorer.session import Page

    assert len(result) == len(Page.FIELDS) - 1
    return dict(zip(Page.FIELDS[1:], result))


@pytest.mark.slow
def test_gradio_client_analyze_label_and_export(served, audio_files, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = served
    client = Client(url, verbose=False)
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/analyze", "/load_analysis", "/select_segment", "/update_tags", "/save_label", "/export_labels",
            "/batch", "/open_batch_row", "/model_status"} <= endpoints
    result = client.predict(handle_file(str(audio_files[3])), *VIEW_ARGS, api_name="/analyze")
    raw = result[-1]
    assert raw["source"] == "c_major_short.ogg" and raw["key"]["tonic"] == "C" and len(raw["segments"]) == 1
    assert Analysis.from_dict(json.loads(Path(result[-2]).read_text())).to_dict() == raw
    fields = _fields(client.predict(0, "analysed", 5, 0.5, False, False, api_name="/select_segment"))
    assert "**Segment 1** (0:00-0:12)" in fields["segment"]
    assert [fields["label_valence"], fields["label_arousal"]] == [
        pytest.approx(raw["segments"][0][name], abs=0.051) for name in ("valence", "arousal")]
    retagged = _fields(client.predict(0, "top-k", 2, 0.5, False, True, api_name="/update_tags"))
    assert "top-2" in retagged["segment"]
    saved = client.predict(0, True, 7.0, 2.0, ["calm"], "api-user", api_name="/save_label")
    assert "Saved label for segment 1 of c_major_short.ogg by api-user" in saved
    manifest = client.predict("csv", "mine", "api-user", api_name="/export_labels")
    rows = read_manifest(manifest)
    assert [(r.valence, r.arousal, r.tags, r.segment) for r in rows] == [(7.0, 2.0, ("calm",), 0)]
    assert rows[0].path == "c_major_short.ogg"
    with pytest.raises(Exception, match="only the label admins|'all'.* not in the list of choices"):
        client.predict("csv", "all", "api-user", api_name="/export_labels")  # nobody else's labels
    with pytest.raises(Exception, match="type your name"):
        client.predict(0, True, 7.0, 2.0, ["calm"], "", api_name="/save_label")
    with pytest.raises(Exception, match="not_audio.wav: cannot decode"):
        client.predict(handle_file(str(audio_files[2])), *VIEW_ARGS, api_name="/analyze")
    too_big = tmp_path / "too_big.wav"
    sf.write(too_big, np.zeros(RATE * 70, dtype=np.float32), RATE, subtype="FLOAT")  # 6.2 MB > 5 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(too_big)), *VIEW_ARGS, api_name="/analyze")


@pytest.mark.slow
def test_gradio_client_sees_progress_and_streamed_results(served, audio_files):
    from gradio_client import Client, handle_file

    _, url = served
    client = Client(url, verbose=False)
    job = client.submit(handle_file(str(audio_files[0])), *VIEW_ARGS, api_name="/analyze")
    seen: list[str] = []
    deadline = time.monotonic() + 240
    while not job.done() and time.monotonic() < deadline:
        status = job.status()
        for unit in status.progress_data or ():
            if unit.desc:
                seen.append(unit.desc)
        time.sleep(0.02)
    outputs = job.outputs()
    assert job.done() and len(outputs) >= 4  # the key, key and chords, segment 1, the complete analysis
    assert "Key after" in _fields(outputs[0])["stage"]  # the key, seconds after the upload
    first, last = _fields(outputs[1]), _fields(outputs[-1])
    assert "Key and chords after" in first["stage"] and "C major" in first["summary"]
    assert first["json_file"] == first["raw"] == {"__type__": "update"}  # left as it was: no JSON yet
    assert last["raw"]["track"] is not None and "Analysed in" in last["stage"]
    assert any("segment" in text and " of 2" in text for text in seen), seen


@pytest.mark.slow
def test_two_concurrent_clients_get_their_own_results(served, audio_files):
    from gradio_client import Client, handle_file

    _, url = served
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    jobs = [
        (first.submit(handle_file(str(audio_files[3])), *VIEW_ARGS, api_name="/analyze"),
         "c_major_short.ogg", ("C", "major")),
        (second.submit(handle_file(str(audio_files[1])), *VIEW_ARGS, api_name="/analyze"), "a_minor.flac",
         ("A", "minor")),
    ]
    outputs = [job.result(timeout=240) for job, _, _ in jobs]
    for result, (_, source, key) in zip(outputs, jobs):
        raw = result[-1]
        assert raw["source"] == source and (raw["key"]["tonic"], raw["key"]["mode"]) == key
        assert json.loads(Path(result[-2]).read_text())["source"] == source
    assert Path(outputs[0][-2]).name != Path(outputs[1][-2]).name


def test_load_analysis_shares_the_analysis_concurrency_group(served):
    demo, _ = served
    groups = {fn.api_name: fn.concurrency_id for fn in demo.fns.values() if fn.api_name}
    assert groups["analyze"] == groups["load_analysis"] == groups["batch"] == "analysis"
    assert os.environ.get("M2E_CONCURRENCY", "2") == str(next(
        fn.concurrency_limit for fn in demo.fns.values() if fn.api_name == "load_analysis"))


def test_on_a_space_the_signed_in_account_is_the_annotator(explorer, major_page, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("SPACE_ID", "someone/m2e")
    monkeypatch.setenv("SYSTEM", "spaces")  # as Hugging Face sets both on a Space
    import gradio.oauth

    for name, value in (("OAUTH_CLIENT_ID", "m2e-test"), ("OAUTH_CLIENT_SECRET", "not-a-secret"),
                        ("OAUTH_SCOPES", "openid profile"), ("OPENID_PROVIDER_URL", "http://127.0.0.1:9")):
        monkeypatch.setattr(gradio.oauth, name, value)  # what a Space with hf_oauth sets (read at import)
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy.from_env({"SPACE_ID": "someone/m2e"}))
    demo = build_demo(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    assert any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())
    handlers = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    save, export = handlers["save_label"], handlers["export_labels"]
    alice = SimpleNamespace(username="alice")
    message = save(major_page.state, 0, True, 6.0, 4.0, ["calm"], "mallory", profile=alice)
    assert "by alice" in message and [r.annotator for r in store.records()] == ["alice"]
    assert read_manifest(export("csv", "mine", "", profile=alice))[0].tags == ("calm",)
    with pytest.raises(gr.Error, match="sign in with Hugging Face"):
        save(major_page.state, 0, True, 6.0, 4.0, ["calm"], "mallory", profile=None)
