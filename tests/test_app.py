"""The Gradio app: handlers called directly, and the launched app through gradio_client."""

from __future__ import annotations

import json
import socket
import sys
import threading
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import AudioDecodeError, ConfigError, LabelError, WeightsNotFoundError
from m2e_core.labels import LabelStore, ManifestRow, read_manifest
from m2e_core.labelstore import LabelPolicy
from m2e_core.pipeline import Analyzer
from m2e_core.types import Analysis
from m2e_core.vocab import tag_names

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from app import TRACK, ExplorerApp, build_demo, server_settings  # noqa: E402

RATE = 22_050


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
def major_page(explorer, audio_files):
    return explorer.analyze(str(audio_files[0]))


def _trace(figure, name):
    return next(trace for trace in figure.data if trace.name == name)


# -- handlers called directly ----------------------------------------------------------


def test_analyze_shows_key_chords_emotion_and_segments(explorer, major_page, audio_files, tiny_factory):
    page = major_page
    analysis = page.state.analysis
    assert tiny_factory.calls.count(True) >= 1 and False not in tiny_factory.calls
    assert (analysis.key.tonic, analysis.key.mode) == ("C", "major")
    assert page.state.spans == ((0, 0.0, 30.0), (1, 30.0, 40.0))
    assert "C major" in page.summary_md and "valence" in page.summary_md
    assert "Emotion model loaded" in page.status_md
    path = _trace(page.view.va_plot, "segments (time order)")
    assert list(path.x) == [s.valence for s in analysis.segments]
    assert _trace(page.view.va_plot, "whole track").x[0] == analysis.track.emotion.valence
    bars = page.view.tag_plot.data[0]
    assert len(bars.y) == 15 and set(analysis.track.selected_tags) <= set(bars.y)
    labels = {label for trace in page.view.chord_plot.data for label in trace.text}
    assert {"C:maj", "G:maj", "A:min", "F:maj"} <= labels
    assert page.selector["choices"] == [("whole track", TRACK), ("segment 1 (0:00-0:30)", 0),
                                        ("segment 2 (0:30-0:40)", 1)]
    assert page.view.segment_audio == str(audio_files[0])
    saved = Analysis.from_dict(json.loads(Path(page.json_file).read_text()))
    assert saved.to_dict() == page.raw == analysis.to_dict()
    assert Path(page.json_file).parent.parent == explorer.temp_root


def test_each_request_gets_its_own_directory(explorer, major_page):
    first = explorer.load_analysis(major_page.json_file)
    second = explorer.load_analysis(major_page.json_file)
    assert len({Path(p.json_file).parent for p in (major_page, first, second)}) == 3
    assert Path(first.json_file).read_text() == Path(second.json_file).read_text()


def test_segment_view_plays_that_segment_and_prefills_labels(explorer, major_page, audio_files):
    loaded = major_page.state
    view = explorer.view(loaded, 1, "top-k", 3, 0.5)
    segment = loaded.analysis.segments[1]
    rate, samples = view.segment_audio
    original, file_rate = sf.read(audio_files[0], dtype="float32")
    expected = original[30 * file_rate:40 * file_rate]
    assert rate == file_rate and samples.dtype == np.int16 and len(samples) == len(expected)
    np.testing.assert_allclose(samples / 32767.0, expected, atol=1.5 / 32767)
    assert "Segment 2" in view.segment_md and f"{segment.valence:.2f}" in view.segment_md
    assert view.label_tags == [name for name, _ in segment.top_tags(3)]
    assert view.valence == round(min(9.0, max(1.0, segment.valence)), 1)
    ring = [t for t in view.va_plot.data if t.name and t.name.startswith("selected: segment 2")]
    assert len(ring) == 1
    rects = [s for s in view.chord_plot.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(30.0, 40.0)]
    with pytest.raises(ConfigError, match="segment 8 does not exist"):
        explorer.view(loaded, 7, "top-k", 3, 0.5)


def test_tag_rules_are_user_adjustable(explorer, major_page):
    loaded = major_page.state
    track = loaded.analysis.track
    analysed = explorer.view(loaded, TRACK, "analysed", 5, 0.5)
    assert analysed.label_tags == list(track.selected_tags)  # the pipeline's own selection
    assert "top-4" in analysed.tag_plot.layout.title.text
    assert explorer.view(loaded, TRACK, "top-k", 2, 0.5).label_tags == [n for n, _ in track.emotion.top_tags(2)]
    everything = explorer.view(loaded, TRACK, "threshold", 5, 0.0)
    assert sorted(everything.label_tags) == sorted(tag_names())
    assert explorer.view(loaded, TRACK, "threshold", 5, 1.0).label_tags == []
    with pytest.raises(ConfigError):
        explorer.view(loaded, TRACK, "best", 5, 0.5)


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
    assert "A minor" in page.summary_md
    assert "no audio attached" in page.view.segment_md and page.view.segment_audio is None
    with pytest.raises(LabelError, match="attach the audio"):
        explorer.save_label(page.state, TRACK, True, 5.0, 5.0, [], "x")
    with_audio = explorer.load_analysis(str(out), str(audio_files[1]))
    assert with_audio.view.segment_audio == str(audio_files[1])
    with pytest.raises(ConfigError, match="attach the same audio"):
        explorer.load_analysis(str(out), str(audio_files[0]))


def test_load_analysis_batch_json_and_bad_files(explorer, major_page, tmp_path):
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"tracks": [major_page.raw, major_page.raw], "failed": []}))
    page = explorer.load_analysis(str(batch))
    assert "holds 2 tracks" in page.status_md and page.raw == major_page.raw
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


def test_label_save_export_reimport_round_trip(explorer, major_page, audio_files, tmp_path):
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy(admins={"local:ann"}))
    labeller = ExplorerApp(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    loaded = major_page.state
    message = labeller.save_label(loaded, TRACK, True, 6.5, 3.2, ["calm", "relaxing"], "ann")
    assert "whole track" in message and "calm, relaxing" in message
    labeller.save_label(loaded, 1, True, 2.0, 8.0, ["dark"], "ann")
    labeller.save_label(loaded, 1, True, 2.5, 8.5, ["dark", "epic"], "ann")  # a correction
    labeller.save_label(loaded, 0, False, 5.0, 5.0, ["happy"], " bob ")
    with pytest.raises(LabelError, match="unknown tag"):
        labeller.save_label(loaded, 0, True, 5.0, 5.0, ["joyful"], "ann")
    with pytest.raises(LabelError, match="or at least one tag"):
        labeller.save_label(loaded, 0, False, 5.0, 5.0, [], "ann")
    assert len(store.records()) == 4
    audio_path = store.records()[0].source  # manifests name the recording, never a server path
    expected_ann = [
        ManifestRow(audio_path, 6.5, 3.2, ("calm", "relaxing")),
        ManifestRow(audio_path, 2.5, 8.5, ("dark", "epic"), 30.0, 40.0, 1),
    ]
    for fmt in ("csv", "jsonl"):
        mine = labeller.export_labels(fmt, "mine", "ann")
        assert Path(mine).parent.parent == labeller.temp_root
        assert read_manifest(mine) == expected_ann
    everyone = read_manifest(labeller.export_labels("csv", "all", "ann"))
    assert everyone == [*expected_ann, ManifestRow(audio_path, None, None, ("happy",), 0.0, 30.0, 0)]
    bundle = labeller.export_labels("zip", "mine", "ann")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(unpacked)
    rows = read_manifest(unpacked / "manifest.csv")
    assert [r.resolve(unpacked).read_bytes() == audio_files[0].read_bytes() for r in rows] == [True, True]
    with pytest.raises(LabelError, match="no labels by 'nobody'"):
        labeller.export_labels("csv", "mine", "nobody")


def test_concurrent_label_saves_through_the_handler(explorer, major_page, tmp_path):
    store = LabelStore(tmp_path / "labels", policy=LabelPolicy(team=True))
    labeller = ExplorerApp(lambda **_: explorer.shared.get(), label_store=store, temp_root=tmp_path / "tmp")
    errors: list[BaseException] = []

    def save(who: str) -> None:
        try:
            for i in range(15):
                labeller.save_label(major_page.state, i % 2, True, 1.0 + i * 0.5, 9.0 - i * 0.5, ["sad"], who)
        except BaseException as error:  # re-raised below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(f"user{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    records = store.records()
    assert len(records) == 60
    for n in range(4):
        assert [r.valence for r in records if r.annotator == f"user{n}"] == [1.0 + i * 0.5 for i in range(15)]
    rows = read_manifest(labeller.export_labels("jsonl", "all", ""))
    assert len(rows) == 8  # newest per (track, segment, annotator): 4 annotators x 2 segments
    assert {(r.segment, r.valence) for r in rows} == {(0, 8.0), (1, 7.5)}  # i = 14 and i = 13


@pytest.mark.slow
def test_batch_table_csv_json_and_plane(explorer, audio_files, tmp_path):
    table, csv_path, json_path, figure, status = explorer.batch([str(p) for p in audio_files[3:0:-1]])
    assert list(table["file"]) == ["c_major_short.ogg", "not_audio.wav", "a_minor.flac"]
    assert list(table["key"]) == ["C major", "", "A minor"]
    assert table["error"][1] and not table["error"][0] and not table["error"][2]
    assert "2 of 3 files analysed" in status and "not_audio.wav" in status
    assert pd.read_csv(csv_path, keep_default_na=False)["file"].tolist() == list(table["file"])
    payload = json.loads(Path(json_path).read_text())
    assert [t["source"] for t in payload["tracks"]] == ["c_major_short.ogg", "a_minor.flac"]
    assert payload["failed"][0]["source"] == "not_audio.wav"
    points = _trace(figure, "tracks")
    assert list(points.text) == ["c_major_short.ogg", "a_minor.flac"]
    assert list(points.x) == [pytest.approx(v, abs=1e-3) for v in table["valence"][[0, 2]]]
    reopened = explorer.load_analysis(json_path)
    assert reopened.state.analysis.source == "c_major_short.ogg"
    with pytest.raises(AudioDecodeError, match="no files"):
        explorer.batch([])


def test_bad_input_is_a_readable_error(explorer, audio_files):
    with pytest.raises(AudioDecodeError, match="not_audio.wav: cannot decode"):
        explorer.analyze(str(audio_files[2]))
    with pytest.raises(AudioDecodeError, match="upload or record"):
        explorer.analyze(None)
    wrapped = app._user_errors(explorer.analyze)
    with pytest.raises(gr.Error) as caught:
        wrapped(str(audio_files[2]))
    assert "cannot decode" in caught.value.message and caught.value.title == "AudioDecodeError"


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
    before = explorer.mode_md()
    assert "Running without the emotion model" in before and app.DOWNLOAD_COMMAND in before
    assert "- MERT encoder: " in before and "- emotion heads: " in before
    with pytest.raises(WeightsNotFoundError):
        app.default_analyzer_factory(emotion=True)
    analyzer = explorer.shared.get()
    assert not analyzer.emotion_enabled and analyzer.encoder is None
    assert "python -m m2e_core download" in explorer.shared.missing
    assert explorer.shared.get() is analyzer  # built once
    after = explorer.mode_md()
    assert after.count("\n- ") == 2 and "- emotion heads: " in after  # everything missing, not the first


@pytest.mark.slow
def test_without_weights_key_chords_and_labelling_still_work(no_weights_env, chord_backend, audio_files):
    def factory(*, emotion: bool = True) -> Analyzer:
        return Analyzer(chords=chord_backend, emotion=emotion, allow_download=False)

    store = LabelStore(no_weights_env / "labels")
    explorer = ExplorerApp(factory, label_store=store, temp_root=no_weights_env / "t")
    page = explorer.analyze(str(audio_files[1]))
    analysis = page.state.analysis
    assert analysis.track is None and analysis.segments is None
    assert (analysis.key.tonic, analysis.key.mode) == ("A", "minor")
    assert "Running without the emotion model" in page.status_md and app.DOWNLOAD_COMMAND in page.status_md
    assert "Missing:\n\n- " in page.status_md
    assert "not predicted" in page.summary_md
    assert {t.name for t in page.view.va_plot.data} == {"tag anchors"}  # no made-up emotion
    assert not page.view.tag_plot.data
    assert page.state.spans == ((0, 0.0, 12.0),)  # the pipeline's segmentation, for labelling
    assert page.selector["choices"][-1] == ("segment 1 (0:00-0:12)", 0)
    view = explorer.view(page.state, 0, "analysed", 5, 0.5)
    assert "no emotion prediction" in view.segment_md and view.label_tags == []
    assert len(view.segment_audio[1]) == 12 * RATE
    explorer.save_label(page.state, 0, True, 3.0, 7.0, ["dark"], "ann")
    assert read_manifest(explorer.export_labels("csv", "mine", "ann"))[0].segment == 0
    table, _, _, figure, status = explorer.batch([str(audio_files[1])])
    assert table["valence"].isna().all() and "Running without the emotion model" in status
    assert not figure.data


# -- hosting ---------------------------------------------------------------------------


def test_server_settings_from_environment():
    local = server_settings({})
    assert local["server_name"] == "127.0.0.1" and local["server_port"] is None
    assert local["ssr_mode"] is False and local["max_file_size"] == "50mb"
    space = server_settings({"SPACE_ID": "user/m2e", "PORT": "7860"})
    assert space["server_name"] == "0.0.0.0" and space["server_port"] == 7860
    assert server_settings({"M2E_HOST": "1", "GRADIO_SERVER_PORT": "8080"})["server_port"] == 8080
    assert server_settings({"M2E_HOST": "1"})["server_name"] == "0.0.0.0"
    assert server_settings({"M2E_HOST": "10.0.0.5"})["server_name"] == "10.0.0.5"
    assert server_settings({"M2E_MAX_UPLOAD": "10mb"})["max_file_size"] == "10mb"
    with pytest.raises(ConfigError, match="PORT"):
        server_settings({"PORT": "http"})


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
    demo = build_demo(tiny_factory, label_store=LabelStore(root / "labels"), temp_root=root / "tmp")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                quiet=True, max_file_size="5mb")
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.slow
def test_gradio_client_analyze_label_and_export(served, audio_files, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = served
    client = Client(url, verbose=False)
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/analyze", "/load_analysis", "/select_segment", "/update_tags", "/save_label", "/export_labels",
            "/batch", "/model_status"} <= endpoints
    result = client.predict(handle_file(str(audio_files[3])), "analysed", 5, 0.5, api_name="/analyze")
    raw = result[-1]
    assert raw["source"] == "c_major_short.ogg" and raw["key"]["tonic"] == "C" and len(raw["segments"]) == 1
    assert Analysis.from_dict(json.loads(Path(result[-2]).read_text())).to_dict() == raw
    segment = client.predict(0, "analysed", 5, 0.5, api_name="/select_segment")
    assert "**Segment 1** (0:00-0:12)" in segment[3]
    assert list(segment[5:7]) == [pytest.approx(raw["segments"][0][name], abs=0.051) for name in ("valence", "arousal")]
    retagged = client.predict(0, "top-k", 2, 0.5, api_name="/update_tags")
    assert "top-2" in retagged[3]
    saved = client.predict(0, True, 7.0, 2.0, ["calm"], "api-user", api_name="/save_label")
    assert "Saved label for segment 1 of c_major_short.ogg" in saved
    manifest = client.predict("csv", "mine", "api-user", api_name="/export_labels")
    rows = read_manifest(manifest)
    assert [(r.valence, r.arousal, r.tags, r.segment) for r in rows] == [(7.0, 2.0, ("calm",), 0)]
    assert rows[0].path == "c_major_short.ogg"
    with pytest.raises(Exception, match="cannot decode"):
        client.predict(handle_file(str(audio_files[2])), "analysed", 5, 0.5, api_name="/analyze")
    too_big = tmp_path / "too_big.wav"
    sf.write(too_big, np.zeros(RATE * 70, dtype=np.float32), RATE, subtype="FLOAT")  # 6.2 MB > 5 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(too_big)), "analysed", 5, 0.5, api_name="/analyze")


@pytest.mark.slow
def test_two_concurrent_clients_get_their_own_results(served, audio_files):
    from gradio_client import Client, handle_file

    _, url = served
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    jobs = [
        (first.submit(handle_file(str(audio_files[3])), "analysed", 5, 0.5, api_name="/analyze"),
         "c_major_short.ogg", ("C", "major")),
        (second.submit(handle_file(str(audio_files[1])), "analysed", 5, 0.5, api_name="/analyze"), "a_minor.flac",
         ("A", "minor")),
    ]
    outputs = [job.result(timeout=240) for job, _, _ in jobs]
    for result, (_, source, key) in zip(outputs, jobs):
        raw = result[-1]
        assert raw["source"] == source and (raw["key"]["tonic"], raw["key"]["mode"]) == key
        assert json.loads(Path(result[-2]).read_text())["source"] == source
    assert Path(outputs[0][-2]).name != Path(outputs[1][-2]).name
