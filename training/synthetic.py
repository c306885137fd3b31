"""A small synthetic emotion dataset whose labels follow from the audio.

Each track is an additive-synthesis chord loop with known latent factors:

- mode (major: I-V-vi-IV, minor: i-iv-V-i) in a random key -> valence, and arousal a little
  (valence and arousal correlate in the real datasets too);
- tempo (60-180 BPM; a chord every two beats, a note onset every eighth) -> arousal (mostly)
  and valence (a little); in the features it shows as the number of chord changes;
- timbre (``soft``: near-sine, ``bright``: sawtooth-like, ``pluck``: decaying) -> arousal
  (brightness) and three timbre tags;
- level (-18 to -3 dBFS peak) -> arousal (a little; an encoder that normalises each segment,
  as the tiny test encoder does, cannot hear it).

Labels, with ``t`` tempo in [-1, 1], ``m`` = +1 major / -1 minor, ``b`` brightness in {-1, 0, 1},
``l`` level in [-1, 1] and Gaussian noise ``e`` (sd 0.3), clipped to 1.5-8.5::

    valence = 5 + 1.6 m + 0.4 t + e
    arousal = 5 + 1.5 t + 0.5 b + 0.6 m + 0.3 l + e

Tags: ``happy`` (major and t > 0), ``sad`` (minor and t < 0), ``energetic`` (t > 0.35),
``calm`` (t < -0.35), ``soft`` / ``powerful`` / ``melodic`` (timbre soft / bright / pluck).

The set is heterogeneous, like the real mix of datasets: 40 % of the tracks carry tags only,
40 % valence/arousal only, 20 % both. :func:`generate` writes ``audio/*.wav`` (24 kHz mono),
``manifest.csv`` (the :mod:`m2e_core.labels` format, relative paths) and ``truth.json`` (the
latent factors of every track).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from m2e_core.constants import MERT_SAMPLE_RATE
from m2e_core.errors import ConfigError
from m2e_core.files import atomic_path, write_text_atomic

#: Tags the generator uses (all in the model vocabulary).
SYNTHETIC_TAGS = ("happy", "sad", "energetic", "calm", "soft", "powerful", "melodic")
TIMBRES = ("soft", "bright", "pluck")
_TIMBRE_TAG = {"soft": "soft", "bright": "powerful", "pluck": "melodic"}
_BRIGHTNESS = {"soft": -1.0, "pluck": 0.0, "bright": 1.0}
#: Scale degrees (semitones above the tonic) and qualities of the two progressions.
_PROGRESSIONS = {
    "major": ((0, "maj"), (7, "maj"), (9, "min"), (5, "maj")),
    "minor": ((0, "min"), (5, "min"), (7, "maj"), (0, "min")),
}
_TRIAD = {"maj": (0, 4, 7), "min": (0, 3, 7)}
_TEMPO_RANGE = (60.0, 180.0)
_LEVEL_RANGE_DB = (-18.0, -3.0)


@dataclass(frozen=True)
class SyntheticTrack:
    """The latent factors and labels of one synthetic track."""

    name: str
    path: str
    mode: str
    tonic: int
    tempo_bpm: float
    timbre: str
    level_db: float
    valence: float | None
    arousal: float | None
    tags: tuple[str, ...] | None


def _harmonics(timbre: str) -> tuple[np.ndarray, float]:
    """Harmonic amplitudes and the per-note decay rate (1/s) of a timbre."""
    if timbre == "soft":
        return np.array([1.0, 0.12]), 1.0
    if timbre == "bright":
        return 1.0 / np.arange(1, 11), 1.0
    return 1.0 / np.arange(1, 7) ** 2, 7.0


def render(
    mode: str,
    tonic: int,
    tempo_bpm: float,
    timbre: str,
    level_db: float,
    *,
    seconds: float,
    sample_rate: int = MERT_SAMPLE_RATE,
    seed: int = 0,
) -> np.ndarray:
    """Synthesise one track (float32 mono, peak at ``level_db`` dBFS)."""
    if mode not in _PROGRESSIONS or timbre not in TIMBRES:
        raise ConfigError(f"unknown mode {mode!r} or timbre {timbre!r}")
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sample_rate))
    audio = np.zeros(total)
    eighth = 30.0 / tempo_bpm
    chord_seconds = 4 * eighth
    amplitudes, decay = _harmonics(timbre)
    note_length = int(round(eighth * sample_rate))
    t = np.arange(note_length) / sample_rate
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-decay * t) * np.minimum(1.0, (eighth - t) / 0.02)
    for onset_index in range(int(np.ceil(seconds / eighth))):
        start_time = onset_index * eighth
        degree, quality = _PROGRESSIONS[mode][int(start_time / chord_seconds) % 4]
        root = 48 + (tonic + degree) % 12
        notes = [root - 12] + [root + 12 + interval for interval in _TRIAD[quality]]
        block = np.zeros(note_length)
        for note in notes:
            frequency = 440.0 * 2 ** ((note - 69) / 12)
            for harmonic, amplitude in enumerate(amplitudes, start=1):
                if frequency * harmonic < sample_rate / 2:
                    block += amplitude * np.sin(2 * np.pi * frequency * harmonic * t)
        accent = 1.0 if onset_index % 2 == 0 else 0.7
        first = int(round(start_time * sample_rate))
        stop = min(total, first + note_length)
        audio[first:stop] += accent * (block * envelope)[: stop - first]
    audio += 1e-3 * rng.standard_normal(total)
    audio /= np.max(np.abs(audio))
    return (audio * 10 ** (level_db / 20)).astype(np.float32)


def _labels(mode: str, tempo_bpm: float, timbre: str, level_db: float, rng: np.random.Generator) -> tuple[
        float, float, tuple[str, ...]]:
    tempo = (tempo_bpm - sum(_TEMPO_RANGE) / 2) / ((_TEMPO_RANGE[1] - _TEMPO_RANGE[0]) / 2)
    level = (level_db - sum(_LEVEL_RANGE_DB) / 2) / ((_LEVEL_RANGE_DB[1] - _LEVEL_RANGE_DB[0]) / 2)
    major = 1.0 if mode == "major" else -1.0
    valence = 5.0 + 1.6 * major + 0.4 * tempo + 0.3 * rng.standard_normal()
    arousal = 5.0 + 1.5 * tempo + 0.5 * _BRIGHTNESS[timbre] + 0.6 * major + 0.3 * level + 0.3 * rng.standard_normal()
    tags = []
    if major > 0 and tempo > 0:
        tags.append("happy")
    if major < 0 and tempo < 0:
        tags.append("sad")
    if tempo > 0.35:
        tags.append("energetic")
    if tempo < -0.35:
        tags.append("calm")
    tags.append(_TIMBRE_TAG[timbre])
    return float(np.clip(valence, 1.5, 8.5)), float(np.clip(arousal, 1.5, 8.5)), tuple(tags)


def generate(
    out_dir: str | os.PathLike[str],
    *,
    tracks: int = 120,
    seconds: float = 4.5,
    seed: int = 0,
    sample_rate: int = MERT_SAMPLE_RATE,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset to ``out_dir`` and return its manifest path.

    Every file is written atomically, with the permissions the umask gives.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed; ``audio/``, ``manifest.csv`` and ``truth.json`` are (over)written.
    tracks : int
        Number of tracks (at least 10, so every split gets some of each kind).
    seconds : float
        Length of every track (at least 2 s).
    seed : int
        Everything (factors, noise, label kinds) follows from it.
    sample_rate : int
        Sample rate of the WAV files.
    progress : bool
        A tqdm bar over the clips (on a terminal only).

    Returns
    -------
    Path
        ``out_dir/manifest.csv``.
    """
    import soundfile as sf
    from tqdm import tqdm

    from m2e_core.labels import ManifestRow, write_manifest

    if tracks < 10:
        raise ConfigError(f"a synthetic dataset needs at least 10 tracks, got {tracks}")
    if seconds < 2.0:
        raise ConfigError(f"synthetic tracks must be at least 2 s long, got {seconds}")
    root = Path(out_dir)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["tags", "va", "both"], size=tracks, p=[0.40, 0.40, 0.20])
    items: list[SyntheticTrack] = []
    rows: list[ManifestRow] = []
    for index in tqdm(range(tracks), desc="synthetic data", unit="clip", disable=None if progress else True):
        mode = ("major", "minor")[index % 2]
        tonic = int(rng.integers(12))
        tempo_bpm = float(rng.uniform(*_TEMPO_RANGE))
        timbre = TIMBRES[int(rng.integers(len(TIMBRES)))]
        level_db = float(rng.uniform(*_LEVEL_RANGE_DB))
        valence, arousal, tags = _labels(mode, tempo_bpm, timbre, level_db, rng)
        name = f"synth_{index:04d}"
        relative = f"audio/{name}.wav"
        samples = render(mode, tonic, tempo_bpm, timbre, level_db, seconds=seconds, sample_rate=sample_rate,
                         seed=seed * 100_003 + index)
        with atomic_path(audio_dir / f"{name}.wav", ".wav") as temporary:
            sf.write(temporary, samples, sample_rate, subtype="PCM_16", format="WAV")
        has_va = kinds[index] in ("va", "both")
        has_tags = kinds[index] in ("tags", "both")
        item = SyntheticTrack(name, relative, mode, tonic, tempo_bpm, timbre, level_db,
                              valence if has_va else None, arousal if has_va else None, tags if has_tags else None)
        items.append(item)
        rows.append(ManifestRow(relative, item.valence, item.arousal, item.tags or ()))
    manifest = write_manifest(rows, root / "manifest.csv")
    truth = {"seed": seed, "seconds": seconds, "sample_rate": sample_rate, "tracks": [asdict(i) for i in items]}
    write_text_atomic(root / "truth.json", json.dumps(truth, indent=1) + "\n")
    return manifest
