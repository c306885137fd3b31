"""Dataset adapters on small fixtures written in each official format, and the seeded split."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2e_core.errors import ConfigError, LabelError
from m2e_core.labels import ManifestRow, write_manifest
from training.datasets import (
    load_jamendo,
    load_manifest_dataset,
    load_static_va,
    read_deam,
    read_emomusic,
    read_jamendo_tsv,
    read_pmemo,
    seeded_split,
)

JAMENDO_HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"


def _jamendo_line(number: int, *tags: str) -> str:
    cells = [f"track_{number:07d}", "artist_000001", "album_000001", f"{number % 100:02d}/{number}.mp3", "212.7"]
    return "\t".join(cells + [f"mood/theme---{tag}" for tag in tags])


def _write_tsv(path: Path, lines: list[str]) -> Path:
    # The official files end their lines in CRLF.
    path.write_bytes(("\r\n".join([JAMENDO_HEADER, *lines]) + "\r\n").encode("ascii"))
    return path


@pytest.fixture
def jamendo(tmp_path: Path) -> dict[str, Path]:
    files = {
        "train": _write_tsv(tmp_path / "autotagging_moodtheme-train.tsv",
                            [_jamendo_line(948, "background"), _jamendo_line(950, "happy", "film")]),
        "validation": _write_tsv(tmp_path / "autotagging_moodtheme-validation.tsv",
                                 [_jamendo_line(3346, "calm", "melodic")]),
        "test": _write_tsv(tmp_path / "autotagging_moodtheme-test.tsv", [_jamendo_line(3524, "sad")]),
    }
    table = _write_tsv(tmp_path / "autotagging_moodtheme.tsv", [
        _jamendo_line(948, "background"), _jamendo_line(950, "happy", "film", "horror"),
        _jamendo_line(3346, "calm", "melodic"), _jamendo_line(3524, "sad"), _jamendo_line(7777, "mellow"),
    ])
    return {**files, "table": table}


def test_jamendo_tsv_parses_variable_tag_columns_and_crlf(jamendo):
    rows = read_jamendo_tsv(jamendo["train"])
    assert [row.track_id for row in rows] == ["track_0000948", "track_0000950"]
    assert rows[1].tags == ("happy", "film")
    assert rows[1].path == "50/950.mp3" and rows[1].duration == pytest.approx(212.7)


def test_jamendo_official_split_with_table_cross_check(jamendo, tmp_path):
    splits = {name: jamendo[name] for name in ("train", "validation", "test")}
    dataset = load_jamendo(splits, tmp_path / "audio", table=jamendo["table"], audio_suffix=".low.mp3")
    assert dataset.task == "tags" and dataset.kind == "jamendo"
    assert dataset.counts() == {"train": 2, "validation": 1, "test": 1}
    first = dataset.split("train")[1]
    assert first.tags == ("happy", "film") and first.valence is None
    assert first.audio_path == tmp_path / "audio" / "50" / "950.low.mp3"


def test_jamendo_table_disagreement_is_an_error(jamendo, tmp_path):
    _write_tsv(jamendo["table"], [_jamendo_line(948, "dark"), _jamendo_line(950, "happy", "film"),
                                  _jamendo_line(3346, "calm", "melodic"), _jamendo_line(3524, "sad")])
    splits = {name: jamendo[name] for name in ("train", "validation", "test")}
    with pytest.raises(LabelError, match="track_0000948"):
        load_jamendo(splits, tmp_path, table=jamendo["table"])


def test_jamendo_bad_inputs(jamendo, tmp_path):
    splits = {name: jamendo[name] for name in ("train", "validation", "test")}
    with pytest.raises(ConfigError, match="not found"):
        load_jamendo({**splits, "test": tmp_path / "missing.tsv"}, tmp_path)
    with pytest.raises(ConfigError, match="split files"):
        load_jamendo({"train": splits["train"]}, tmp_path)
    _write_tsv(splits["test"], [_jamendo_line(3524, "horror")])
    with pytest.raises(LabelError, match="unknown tag"):
        load_jamendo(splits, tmp_path)
    _write_tsv(splits["test"], [_jamendo_line(948, "sad")])
    with pytest.raises(LabelError, match="both"):
        load_jamendo(splits, tmp_path)
    _write_tsv(splits["test"], [_jamendo_line(1, "sad"), _jamendo_line(1, "calm")])
    with pytest.raises(LabelError, match="duplicate"):
        read_jamendo_tsv(splits["test"])
    _write_tsv(splits["test"], [_jamendo_line(1, "sad").replace("mood/theme---sad", "genre---rock")])
    with pytest.raises(LabelError, match="not a mood/theme tag"):
        read_jamendo_tsv(splits["test"])
    splits["test"].write_text("TRACK\tPATH\n", encoding="ascii")
    with pytest.raises(LabelError, match="header"):
        read_jamendo_tsv(splits["test"])


def _deam_files(tmp_path: Path) -> list[Path]:
    first = tmp_path / "static_annotations_averaged_songs_1_2000.csv"
    first.write_text("song_id, valence_mean, valence_std, arousal_mean, arousal_std\n"
                     "2,3.1,0.94,3,0.63\n3,3.5,1.75,3.3,1.62\n4,5.7,1.42,5.5,1.63\n", encoding="utf-8")
    second = tmp_path / "static_annotations_averaged_songs_2000_2058.csv"
    second.write_text("song_id, valence_mean, valence_std, valence_max_mean, valence_max_std, valence_min_mean,"
                      " valence_min_std, arousal_mean, arousal_std, arousal_max_mean, arousal_max_std,"
                      " arousal_min_mean, arousal_min_std\n"
                      "2001,6.2,1.1,7,1,5,1,6.8,0.9,7.5,1,6,1\n", encoding="utf-8")
    return [first, second]


def test_deam_reads_both_files_with_spaced_headers(tmp_path):
    labels = read_deam(_deam_files(tmp_path))
    assert [(label.song_id, label.valence, label.arousal) for label in labels] == [
        ("2", 3.1, 3.0), ("3", 3.5, 3.3), ("4", 5.7, 5.5), ("2001", 6.2, 6.8)]
    dataset = load_static_va("deam", _deam_files(tmp_path), tmp_path / "MEMD_audio", seed=1)
    assert dataset.task == "va" and len(dataset.tracks) == 4
    assert dataset.tracks[3].audio_path == tmp_path / "MEMD_audio" / "2001.mp3"
    assert sum(dataset.counts().values()) == 4


def test_deam_bad_inputs(tmp_path):
    first, second = _deam_files(tmp_path)
    second.write_text("song_id, valence_mean, valence_std, arousal_mean, arousal_std\n4,5,1,5,1\n", encoding="utf-8")
    with pytest.raises(LabelError, match="duplicate"):
        read_deam([first, second])
    second.write_text("song_id, valence_mean, valence_std, arousal_mean, arousal_std\n9,9.5,1,5,1\n", encoding="utf-8")
    with pytest.raises(LabelError, match="outside"):
        read_deam([first, second])
    second.write_text("song_id, valence, arousal\n9,5,5\n", encoding="utf-8")
    with pytest.raises(LabelError, match="missing column"):
        read_deam([second])
    second.write_text("song_id, valence_mean, valence_std, arousal_mean, arousal_std\n9,,1,5,1\n", encoding="utf-8")
    with pytest.raises(LabelError, match="number"):
        read_deam([second])
    with pytest.raises(ConfigError, match="not found"):
        read_deam([tmp_path / "nope.csv"])


def test_pmemo_is_rescaled_from_unit_interval(tmp_path):
    path = tmp_path / "static_annotations.csv"
    path.write_text("musicId,Arousal(mean),Valence(mean)\n1,0.4,0.575\n4,0.0,1.0\n", encoding="utf-8")
    labels = read_pmemo(path)
    assert labels[0].song_id == "1"
    assert labels[0].arousal == pytest.approx(1 + 8 * 0.4) and labels[0].valence == pytest.approx(1 + 8 * 0.575)
    assert (labels[1].arousal, labels[1].valence) == (1.0, 9.0)
    path.write_text("musicId,Arousal(mean),Valence(mean)\n1,1.2,0.5\n", encoding="utf-8")
    with pytest.raises(LabelError, match="outside"):
        read_pmemo(path)


def test_emomusic_columns(tmp_path):
    path = tmp_path / "static_annotations.csv"
    path.write_text("song_id,mean_arousal,std_arousal,mean_valence,std_valence\n"
                    "2,3.1,0.99,3,0.66\n3,4.7,1.7,5.1,1.5\n", encoding="utf-8")
    assert [(label.valence, label.arousal) for label in read_emomusic(path)] == [(3.0, 3.1), (5.1, 4.7)]
    dataset = load_static_va("emomusic", [path], tmp_path / "clips_45seconds")
    assert {track.track_id for track in dataset.tracks} == {"2", "3"}


def test_seeded_split_is_deterministic_and_complete():
    ids = [f"song{i}" for i in range(100)]
    first = seeded_split(ids, seed=3)
    assert first == seeded_split(list(reversed(ids)), seed=3)
    assert first != seeded_split(ids, seed=4)
    counts = {name: sum(value == name for value in first.values()) for name in ("train", "validation", "test")}
    assert counts == {"train": 70, "validation": 15, "test": 15}
    with pytest.raises(ConfigError):
        seeded_split(ids, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(LabelError, match="duplicate"):
        seeded_split(["a", "a", "b"])


def test_manifest_dataset_views_share_the_split(tmp_path):
    rows = [ManifestRow(f"audio/{i}.wav", 5.0 + (i % 3), 4.0, ("happy",) if i % 2 else ()) for i in range(30)]
    rows += [ManifestRow(f"audio/t{i}.wav", None, None, ("sad", "calm")) for i in range(10)]
    rows += [ManifestRow("audio/long.wav", None, None, ("dark",), 0.0, 30.0, 0),
             ManifestRow("audio/long.wav", None, None, ("epic",), 30.0, 60.0, 1)]
    manifest = write_manifest(rows, tmp_path / "labels.csv")
    tags = load_manifest_dataset(manifest, "tags", seed=0)
    va = load_manifest_dataset(manifest, "va", seed=0)
    assert len(va.tracks) == 30 and all(track.tags is None or track.valence is not None for track in va.tracks)
    assert len(tags.tracks) == 15 + 10 + 2 and all(track.tags for track in tags.tracks)
    split_of = {track.audio_path: track.split for track in va.tracks}
    for track in tags.tracks:
        if track.audio_path in split_of:
            assert track.split == split_of[track.audio_path]
    excerpts = [track for track in tags.tracks if track.start is not None]
    assert {t.track_id for t in excerpts} == {"audio/long.wav@0-30", "audio/long.wav@30-60"}
    assert excerpts[0].split == excerpts[1].split
    assert tags.tracks[0].audio_path == tmp_path / "audio" / "1.wav"
    only_va = write_manifest([ManifestRow("a.wav", 5.0, 5.0, ())], tmp_path / "va.csv")
    with pytest.raises(LabelError, match="no row"):
        load_manifest_dataset(only_va, "tags")
    with pytest.raises(ConfigError):
        load_manifest_dataset(tmp_path / "missing.csv", "va")
