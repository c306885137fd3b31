"""Benchmark material with ground truth: Bach chorales and synthetic progressions, rendered with fluidsynth.

Each :class:`Piece` carries its notes (seconds), its truth key and its truth chord spans; audio is
rendered once with the fluidsynth command-line synthesiser and pretty_midi's bundled General MIDI
soundfont, and cached (FLAC) under the work directory, keyed by a hash of everything that shapes
the sound.

Truth, precisely
----------------
Chorales (``music21.corpus.chorales.Iterator()``, Riemenschneider numbering: 371 entries, 350
distinct scores):

- The score is converted to sounding pitch and ties are merged (``toSoundingPitch``,
  ``stripTies``). Quarter-note offsets become seconds at one constant tempo: the score's first
  ``MetronomeMark`` when it has one, else a tempo drawn per piece (seeded by its name) from
  60-100 quarter notes per minute. Fermatas and repeats are not performed (nor in the truth).
- Key: every part encodes a ``music21.key.Key`` at offset 0 (the MusicXML ``<key>`` element with
  its ``<mode>``): all share one signature, but in 103 of the 350 scores the parts disagree on the
  mode (relative major vs minor). The truth key is the encoded candidate whose tonic is the
  lowest note of the final sonority (the final cadence). When no encoded candidate has that
  tonic (modal chorales notated in a Dorian signature, endings on a half cadence) the chorale's
  key is ``ambiguous``: it keeps the bass part's encoded key as truth for the "all encoded" rows,
  and is left out of the headline "cadence-confirmed" rows.
- Chords: ``score.chordify()``; each slice's pitch-class set is matched exactly against chord
  templates built on each of its pitch classes (maj, min, 7, maj7, min7, dim, aug, dim7, hdim7,
  and the incomplete triads and sevenths without a fifth); a unique match, or the match whose
  root is the slice's bass, gives the Harte label in root position (``G:7``, ``E:min``). Slices
  that match no template (passing-note clusters, bare octaves or fifths) are ``X`` and leave the
  evaluation; rests in every part are ``N``. Consecutive equal labels are merged. mir_eval's
  ``majmin`` then scores exactly the spans whose truth is a major or minor triad (sevenths count
  as their triad).

Synthetic progressions: for each of the 24 keys, ``variants`` short progressions (diatonic, with
the harmonic-minor dominant in minor keys; every one ends on the tonic), each with its own
instrument, tempo (72-132 bpm), harmonic rhythm (2 or 4 beats) and texture (block chords or a
broken-chord figure); the truth is the progression itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from m2e_core.types import ChordSpan
from m2e_core.vocab import PITCH_CLASSES

#: Rate the audio is rendered and cached at.
RENDER_SAMPLE_RATE = 22_050
#: General MIDI programs the chorales are played on, cycled by index.
CHORALE_PROGRAMS = (19, 0, 48, 52)  # church organ, grand piano, string ensemble, choir aahs
#: Programs of the synthetic progressions, cycled.
SYNTH_PROGRAMS = (0, 4, 24, 48, 16, 61, 89, 46)  # piano, e-piano, nylon guitar, strings, organ, brass, pad, harp

_TEMPLATES: tuple[tuple[str, frozenset[int]], ...] = (
    ("maj", frozenset({0, 4, 7})),
    ("min", frozenset({0, 3, 7})),
    ("7", frozenset({0, 4, 7, 10})),
    ("maj7", frozenset({0, 4, 7, 11})),
    ("min7", frozenset({0, 3, 7, 10})),
    ("dim", frozenset({0, 3, 6})),
    ("aug", frozenset({0, 4, 8})),
    ("dim7", frozenset({0, 3, 6, 9})),
    ("hdim7", frozenset({0, 3, 6, 10})),
    ("maj", frozenset({0, 4})),
    ("min", frozenset({0, 3})),
    ("7", frozenset({0, 4, 10})),
    ("maj7", frozenset({0, 4, 11})),
    ("min7", frozenset({0, 3, 10})),
)


@dataclass(frozen=True)
class Note:
    """One sounding note: MIDI pitch, onset and offset in seconds, GM program."""

    pitch: int
    start: float
    end: float
    program: int


@dataclass(frozen=True)
class Piece:
    """A benchmark item: notes to render, truth key and truth chords."""

    name: str
    kind: str  # "chorale" or "synthetic"
    notes: tuple[Note, ...]
    key_tonic: str
    key_mode: str
    key_status: str  # "cadence-confirmed", "ambiguous" (chorales) or "exact" (synthetic)
    chords: tuple[ChordSpan, ...]
    tempo: float
    program: int

    @property
    def duration(self) -> float:
        return max(note.end for note in self.notes)

    @property
    def key_label(self) -> str:
        """The truth key in mir_eval syntax (``"C# minor"``)."""
        return f"{self.key_tonic} {self.key_mode}"

    def render_hash(self, soundfont: Path) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([(n.pitch, round(n.start, 6), round(n.end, 6), n.program) for n in self.notes]).encode())
        digest.update(f"{soundfont.stat().st_size}:{RENDER_SAMPLE_RATE}:{fluidsynth_version()}".encode())
        return digest.hexdigest()[:16]


def label_pitch_classes(pitch_classes: set[int], bass: int | None) -> str:
    """Harte label (root position) of a sonority, ``X`` when no template fits, ``N`` when empty."""
    if not pitch_classes:
        return "N"
    matches = []
    for root in sorted(pitch_classes):
        intervals = frozenset((pc - root) % 12 for pc in pitch_classes)
        for quality, template in _TEMPLATES:
            if intervals == template:
                matches.append((root, quality))
                break
    if not matches:
        return "X"
    if len(matches) > 1:
        by_bass = [match for match in matches if match[0] == bass]
        if not by_bass:
            return "X"
        matches = by_bass
    root, quality = matches[0]
    return f"{PITCH_CLASSES[root]}:{quality}"


def merge_spans(spans: list[ChordSpan]) -> tuple[ChordSpan, ...]:
    """Merge consecutive spans with equal labels (and drop empty ones)."""
    merged: list[ChordSpan] = []
    for span in spans:
        if span.end <= span.start:
            continue
        if merged and merged[-1].label == span.label and abs(merged[-1].end - span.start) < 1e-6:
            merged[-1] = ChordSpan(merged[-1].start, span.end, span.label)
        else:
            merged.append(span)
    return tuple(merged)


# -- chorales -----------------------------------------------------------------------------------


def chorale_names() -> list[str]:
    """Corpus names of the 371 Riemenschneider chorales, in music21's order."""
    from music21 import corpus

    return [str(name) for name in corpus.chorales.Iterator(returnType="filename")]


def _seeded_rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def load_chorale(name: str, index: int) -> Piece:
    """Parse a chorale and derive its notes (seconds), truth key and truth chords."""
    from music21 import corpus, key, tempo

    score = corpus.parse(name).toSoundingPitch()
    score = score.stripTies()
    flat = score.flatten()
    marks = list(flat.getElementsByClass(tempo.MetronomeMark))
    qpm = float(marks[0].getQuarterBPM()) if marks else float(_seeded_rng(name).uniform(60.0, 100.0))
    seconds_per_quarter = 60.0 / qpm
    program = CHORALE_PROGRAMS[index % len(CHORALE_PROGRAMS)]

    notes = []
    for element in flat.notes:
        if element.duration.isGrace or element.quarterLength <= 0:
            continue
        start = float(element.offset) * seconds_per_quarter
        end = start + float(element.quarterLength) * seconds_per_quarter
        for pitch in element.pitches:
            notes.append(Note(int(pitch.midi), start, end, program))
    if not notes:
        raise ValueError(f"{name}: no notes")

    # Key: encoded candidates, resolved by the final cadence's bass.
    last_end = max(note.end for note in notes)
    final_bass = min(note.pitch for note in notes if note.end > last_end - 1e-6) % 12
    candidates: list[tuple[str, str]] = []
    for part in score.parts:
        for encoded in part.flatten().getElementsByClass(key.Key):
            if encoded.offset == 0:
                candidate = (PITCH_CLASSES[encoded.tonic.pitchClass], str(encoded.mode))
                if candidate not in candidates:
                    candidates.append(candidate)
                break
    if not candidates:
        raise ValueError(f"{name}: no encoded key")
    confirmed = [c for c in candidates if PITCH_CLASSES.index(c[0]) == final_bass]
    if confirmed:
        (tonic, mode), status = confirmed[0], "cadence-confirmed"
    else:
        bass_keys = [k for k in score.parts[-1].flatten().getElementsByClass(key.Key) if k.offset == 0]
        chosen = bass_keys[0] if bass_keys else None
        tonic, mode = (PITCH_CLASSES[chosen.tonic.pitchClass], str(chosen.mode)) if chosen else candidates[0]
        status = "ambiguous"

    spans = []
    for sonority in score.chordify().flatten().getElementsByClass("Chord"):
        if sonority.quarterLength <= 0:
            continue
        start = float(sonority.offset) * seconds_per_quarter
        end = start + float(sonority.quarterLength) * seconds_per_quarter
        pcs = {p.pitchClass for p in sonority.pitches}
        bass = min(sonority.pitches, key=lambda p: p.midi).pitchClass if sonority.pitches else None
        spans.append(ChordSpan(start, end, label_pitch_classes(pcs, bass)))
    spans = _fill_gaps(spans)
    return Piece(name.replace("/", "_"), "chorale", tuple(notes), tonic, mode, status, merge_spans(spans), qpm, program)


def _fill_gaps(spans: list[ChordSpan]) -> list[ChordSpan]:
    """Rests in every part between chordify slices become ``N`` spans."""
    spans = sorted(spans, key=lambda span: span.start)
    filled: list[ChordSpan] = []
    cursor = 0.0
    for span in spans:
        if span.start > cursor + 1e-6:
            filled.append(ChordSpan(cursor, span.start, "N"))
        filled.append(span)
        cursor = max(cursor, span.end)
    return filled


# -- synthetic progressions ---------------------------------------------------------------------

# (degree in semitones above the tonic, quality) per Roman numeral.
_NUMERALS = {
    "I": (0, "maj"), "ii": (2, "min"), "iii": (4, "min"), "IV": (5, "maj"), "V": (7, "maj"),
    "V7": (7, "7"), "vi": (9, "min"), "i": (0, "min"), "iv": (5, "min"), "VI": (8, "maj"),
    "III": (3, "maj"), "VII": (10, "maj"),
}
_QUALITY_INTERVALS = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10)}
MAJOR_PROGRESSIONS = (
    ("I", "vi", "IV", "V", "I", "IV", "V7", "I"),
    ("I", "IV", "I", "V", "vi", "ii", "V7", "I"),
    ("I", "ii", "V7", "I", "vi", "IV", "V", "I"),
)
MINOR_PROGRESSIONS = (
    ("i", "iv", "V", "i", "VI", "iv", "V7", "i"),
    ("i", "VI", "iv", "V7", "i", "iv", "V", "i"),
    ("i", "iv", "VII", "III", "VI", "iv", "V7", "i"),
)


def synthetic_pieces(variants: int = 2) -> list[Piece]:
    """``variants`` progressions in each of the 24 keys, varied in instrument, tempo and texture."""
    pieces = []
    counter = 0
    for mode in ("major", "minor"):
        progressions = MAJOR_PROGRESSIONS if mode == "major" else MINOR_PROGRESSIONS
        for tonic in range(12):
            for variant in range(variants):
                name = f"synthetic_{PITCH_CLASSES[tonic].replace('#', 's')}_{mode}_{variant}"
                rng = _seeded_rng(name)
                progression = progressions[(tonic + variant) % len(progressions)]
                program = SYNTH_PROGRAMS[counter % len(SYNTH_PROGRAMS)]
                qpm = float(rng.integers(72, 133))
                beats = int(rng.choice([2, 4]))
                broken = bool(counter % 2)
                counter += 1
                pieces.append(_progression_piece(name, tonic, mode, progression, program, qpm, beats, broken))
    return pieces


def _progression_piece(name: str, tonic: int, mode: str, progression: tuple[str, ...], program: int,
                       qpm: float, beats: int, broken: bool) -> Piece:
    beat = 60.0 / qpm
    chord_seconds = beats * beat
    repeats = max(1, int(np.ceil(24.0 / (chord_seconds * len(progression)))))
    notes: list[Note] = []
    spans: list[ChordSpan] = []
    time = 0.0
    for numeral in progression * repeats:
        degree, quality = _NUMERALS[numeral]
        root = (tonic + degree) % 12
        bass = 36 + root  # C2..B2
        upper = sorted(55 + ((root + interval - 55) % 12) for interval in _QUALITY_INTERVALS[quality])
        end = time + chord_seconds
        notes.append(Note(bass, time, end, program))
        if broken:
            step = beat / 2
            for index in range(int(round(chord_seconds / step))):
                onset = time + index * step
                notes.append(Note(upper[index % len(upper)], onset, min(end, onset + step), program))
        else:
            notes.extend(Note(pitch, time, end, program) for pitch in upper)
        spans.append(ChordSpan(time, end, f"{PITCH_CLASSES[root]}:{quality}"))
        time = end
    return Piece(name, "synthetic", tuple(notes), PITCH_CLASSES[tonic], mode, "exact", merge_spans(spans), qpm, program)


# -- rendering ----------------------------------------------------------------------------------


def soundfont_path() -> Path:
    """pretty_midi's bundled General MIDI soundfont (TimGM6mb)."""
    import pretty_midi

    path = Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise FileNotFoundError(f"pretty_midi's soundfont is missing: {path}")
    return path


def fluidsynth_version() -> str:
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise FileNotFoundError("fluidsynth is not installed: apt-get install -y fluidsynth")
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0].strip()


def render(piece: Piece, cache_dir: Path) -> np.ndarray:
    """Mono float32 audio of ``piece`` at :data:`RENDER_SAMPLE_RATE`, from the cache when present."""
    import pretty_midi

    soundfont = soundfont_path()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{piece.name}-{piece.render_hash(soundfont)}.flac"
    if cached.is_file():
        samples, _ = sf.read(cached, dtype="float32")
        return samples
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    by_program: dict[int, pretty_midi.Instrument] = {}
    for note in piece.notes:
        instrument = by_program.setdefault(note.program, pretty_midi.Instrument(program=note.program))
        instrument.notes.append(pretty_midi.Note(velocity=80, pitch=note.pitch, start=note.start, end=note.end))
    midi.instruments.extend(by_program.values())
    with tempfile.TemporaryDirectory(prefix="m2e-render-") as scratch:
        midi_path = Path(scratch) / "piece.mid"
        wav_path = Path(scratch) / "piece.wav"
        midi.write(str(midi_path))
        subprocess.run(
            ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(RENDER_SAMPLE_RATE), "-F", str(wav_path),
             str(soundfont), str(midi_path)],
            check=True, capture_output=True,
        )
        stereo, rate = sf.read(wav_path, dtype="float32", always_2d=True)
    if rate != RENDER_SAMPLE_RATE:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz, expected {RENDER_SAMPLE_RATE}")
    mono = stereo.mean(axis=1)
    peak = float(np.max(np.abs(mono)))
    if peak <= 0:
        raise RuntimeError(f"{piece.name}: fluidsynth rendered silence")
    mono = (0.9 * mono / peak).astype(np.float32)
    partial = cached.with_suffix(".partial.flac")
    sf.write(partial, mono, RENDER_SAMPLE_RATE, format="FLAC")
    partial.replace(cached)
    return mono
