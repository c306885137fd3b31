"""Write the app's example clips into ``assets/examples/`` (synthesised here, so licence-free).

Each clip is a chord progression played with additive-synthesis tones: pad chords, a bass
line, an arpeggio, and (for the lively clip) noise-burst percussion. Output is mono OGG/Vorbis,
written in blocks (libvorbis crashes on very long single writes). Deterministic: the same
audio comes out on every run (only the Ogg stream serial number differs).

Usage: ``python assets/make_examples.py [OUT_DIR]``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 22_050
BLOCK_FRAMES = 1 << 16
MAX_BYTES = 300 * 1024

NOTE_NAMES = {"C": 0, "C#": 1, "D": 2, "D#": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "G#": 8, "A": 9, "A#": 10, "B": 11}
TRIADS = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "min7": (0, 3, 7, 10)}


@dataclass(frozen=True)
class Clip:
    """One example: a chord progression, how fast and how it is played."""

    name: str
    progression: tuple[str, ...]  # Harte labels, one per bar
    bpm: float
    seconds: float
    bright: float  # harmonic roll-off: higher is brighter
    arpeggio_per_beat: int
    drums: bool


CLIPS = (
    Clip("bright_c_major.ogg", ("C:maj", "G:maj", "A:min", "F:maj"), bpm=128, seconds=36.0, bright=0.65,
         arpeggio_per_beat=2, drums=True),
    Clip("slow_a_minor.ogg", ("A:min", "D:min", "E:7", "A:min"), bpm=66, seconds=36.0, bright=0.35,
         arpeggio_per_beat=1, drums=False),
)


def _midi(root: str, octave: int) -> int:
    return 12 * (octave + 1) + NOTE_NAMES[root]


def _tone(freq: float, seconds: float, *, bright: float, attack: float = 0.01, release: float = 0.08) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.zeros_like(t)
    for harmonic in range(1, 7):
        if freq * harmonic > SAMPLE_RATE / 2.2:
            break
        wave += bright ** (harmonic - 1) * np.sin(2 * np.pi * freq * harmonic * t)
    envelope = np.minimum(1.0, np.minimum(t / attack, np.maximum(seconds - t, 0.0) / release))
    return wave * envelope


def _freq(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def render(clip: Clip) -> np.ndarray:
    """The clip's samples, float32 mono in [-1, 1]."""
    rng = np.random.default_rng(7)
    beat = 60.0 / clip.bpm
    bar = 4 * beat
    total = int(clip.seconds * SAMPLE_RATE)
    out = np.zeros(total + int(2 * bar * SAMPLE_RATE))
    n_bars = int(np.ceil(clip.seconds / bar))
    for bar_index in range(n_bars):
        label = clip.progression[bar_index % len(clip.progression)]
        root, quality = label.split(":")
        intervals = TRIADS[quality]
        start = int(bar_index * bar * SAMPLE_RATE)
        chord = [_midi(root, 3) + i for i in intervals]
        pad = sum(_tone(_freq(n), bar, bright=clip.bright, attack=0.05, release=0.2) for n in chord)
        out[start:start + len(pad)] += 0.22 * pad
        for beat_index in range(4):
            bass = _tone(_freq(_midi(root, 2)), beat * 0.9, bright=0.5)
            at = start + int(beat_index * beat * SAMPLE_RATE)
            out[at:at + len(bass)] += 0.35 * bass
            step = beat / clip.arpeggio_per_beat
            for sub in range(clip.arpeggio_per_beat):
                note = chord[(beat_index * clip.arpeggio_per_beat + sub) % len(chord)] + 12
                tone = _tone(_freq(note), step * 0.8, bright=clip.bright)
                at_sub = at + int(sub * step * SAMPLE_RATE)
                out[at_sub:at_sub + len(tone)] += 0.18 * tone
            if clip.drums:
                hit_len = int(0.08 * SAMPLE_RATE)
                decay = np.exp(-np.arange(hit_len) / (0.012 * SAMPLE_RATE))
                noise = rng.standard_normal(hit_len) * decay
                kick = np.sin(2 * np.pi * 55 * np.arange(hit_len) / SAMPLE_RATE) * decay
                out[at:at + hit_len] += 0.25 * (kick if beat_index % 2 == 0 else noise)
    out = out[:total]
    fade = int(0.5 * SAMPLE_RATE)
    out[-fade:] *= np.linspace(1.0, 0.0, fade)
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def write_ogg(samples: np.ndarray, path: Path) -> None:
    """Write mono OGG/Vorbis in blocks."""
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, format="OGG", subtype="VORBIS",
                      compression_level=0.6) as handle:
        for first in range(0, len(samples), BLOCK_FRAMES):
            handle.write(samples[first:first + BLOCK_FRAMES])


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "examples"
    out_dir.mkdir(parents=True, exist_ok=True)
    for clip in CLIPS:
        path = out_dir / clip.name
        write_ogg(render(clip), path)
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{path}: {size} bytes is over the {MAX_BYTES}-byte budget for examples")
        print(f"{path} ({size / 1024:.0f} KB, {clip.seconds:.0f} s, {' '.join(clip.progression)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
