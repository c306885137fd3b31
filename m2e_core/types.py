"""Typed results of an analysis.

All are frozen dataclasses with ``to_dict()`` (JSON-ready) and ``from_dict()`` (the inverse),
so an analysis written by the CLI can be re-opened by the app.

Conventions: times in seconds from the start of the track; valence and arousal on the
1-9 scale; tag probabilities in [0, 1] keyed by bare tag name in model order; chord labels
in Harte syntax (``C:maj``, ``A:min7``, ``N``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["major", "minor"]
MODES: tuple[Mode, Mode] = ("major", "minor")


@dataclass(frozen=True)
class KeyEstimate:
    """A key: tonic pitch name (sharps), mode, and the estimator's confidence in [0, 1]."""

    tonic: str
    mode: Mode
    confidence: float

    @property
    def mode_index(self) -> int:
        """The model's key input: major 0, minor 1."""
        return MODES.index(self.mode)

    def to_dict(self) -> dict[str, Any]:
        return {"tonic": self.tonic, "mode": self.mode, "confidence": float(self.confidence)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyEstimate:
        return cls(str(data["tonic"]), data["mode"], float(data["confidence"]))


@dataclass(frozen=True)
class KeySpan:
    """The local key over ``[start, end)`` seconds (one step of a key timeline)."""

    start: float
    end: float
    key: KeyEstimate

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(float(self.start), 4), "end": round(float(self.end), 4), **self.key.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeySpan:
        return cls(float(data["start"]), float(data["end"]), KeyEstimate.from_dict(data))


@dataclass(frozen=True)
class ChordSpan:
    """One chord over ``[start, end)`` seconds."""

    start: float
    end: float
    label: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(float(self.start), 4), "end": round(float(self.end), 4), "label": self.label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChordSpan:
        return cls(float(data["start"]), float(data["end"]), str(data["label"]))


@dataclass(frozen=True)
class SegmentEmotion:
    """Emotion of one segment (or of the whole track, with ``index = -1``).

    ``valence``/``arousal`` are ``None`` and ``tags`` is empty when the checkpoint was not
    trained for that task (a single-task teacher).
    """

    index: int
    start: float
    end: float
    valence: float | None
    arousal: float | None
    tags: dict[str, float] = field(hash=False)
    #: The local key that sounds longest in the segment (from the key timeline), when known.
    key: KeyEstimate | None = None

    def top_tags(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable tags, most probable first."""
        return sorted(self.tags.items(), key=lambda item: item[1], reverse=True)[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start": round(float(self.start), 4),
            "end": round(float(self.end), 4),
            "valence": None if self.valence is None else float(self.valence),
            "arousal": None if self.arousal is None else float(self.arousal),
            "tags": {name: float(prob) for name, prob in self.tags.items()},
            **({"key": self.key.to_dict()} if self.key is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentEmotion:
        return cls(
            int(data.get("index", -1)),
            float(data["start"]),
            float(data["end"]),
            None if data.get("valence") is None else float(data["valence"]),
            None if data.get("arousal") is None else float(data["arousal"]),
            {str(name): float(prob) for name, prob in data["tags"].items()},
            KeyEstimate.from_dict(data["key"]) if data.get("key") else None,
        )


@dataclass(frozen=True)
class TrackEmotion:
    """Whole-track emotion plus the tags selected by the decision rule."""

    emotion: SegmentEmotion
    selected_tags: tuple[str, ...]
    decision_rule: str  # "thresholds" or "top-k"

    def to_dict(self) -> dict[str, Any]:
        data = self.emotion.to_dict()
        data["selected_tags"] = list(self.selected_tags)
        data["decision_rule"] = self.decision_rule
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackEmotion:
        return cls(
            SegmentEmotion.from_dict(data),
            tuple(data.get("selected_tags", ())),
            str(data.get("decision_rule", "top-k")),
        )


@dataclass(frozen=True)
class ModelProvenance:
    """Where a model came from: role in the pipeline, name, revision, file hash, source."""

    role: str
    name: str
    revision: str | None = None
    sha256: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "revision": self.revision,
            "sha256": self.sha256,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProvenance:
        return cls(
            str(data["role"]),
            str(data["name"]),
            data.get("revision"),
            data.get("sha256"),
            data.get("source"),
        )


@dataclass(frozen=True)
class Analysis:
    """Everything m2e says about one track.

    ``segments`` and ``track`` are ``None`` when emotion recognition was switched off.
    ``key`` is the displayed key (a key-profile estimate over the audio's chroma);
    ``key_timeline`` the local key over time. ``chords`` are the displayed chords.
    ``model_chords`` are the chords the emotion model read when another recogniser produced
    them (``None`` when the model read ``chords``). ``model_key`` is the key the emotion model
    reads, estimated the way its checkpoint was trained (music21 over the model's chords);
    ``normalized_chords`` are the model's chords transposed with it so its tonic is C (major) or
    A (minor). ``model_key`` is ``None`` in analyses saved before it existed, and then
    :attr:`chord_key` falls back to ``key``. ``warnings`` are said once per analysis: things the
    user should know about the result (e.g. the model read chords it was not trained on).
    ``pending`` names what a partial analysis (from :meth:`m2e_core.pipeline.Analyzer.iter_analyze`)
    is still computing, ``"chords"`` and/or ``"emotion"``; it is empty in a finished one.
    """

    source: str
    duration: float
    key: KeyEstimate
    chords: tuple[ChordSpan, ...]
    normalized_chords: tuple[ChordSpan, ...]
    segments: tuple[SegmentEmotion, ...] | None
    track: TrackEmotion | None
    provenance: tuple[ModelProvenance, ...]
    version: str = "1"
    model_key: KeyEstimate | None = None
    key_timeline: tuple[KeySpan, ...] = ()
    model_chords: tuple[ChordSpan, ...] | None = None
    warnings: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()

    @property
    def chord_key(self) -> KeyEstimate:
        """The key ``normalized_chords`` were transposed with."""
        return self.model_key if self.model_key is not None else self.key

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "source": self.source,
            "duration": round(float(self.duration), 4),
            "key": self.key.to_dict(),
            **({"model_key": self.model_key.to_dict()} if self.model_key is not None else {}),
            "key_timeline": [span.to_dict() for span in self.key_timeline],
            "chords": [chord.to_dict() for chord in self.chords],
            **({"model_chords": [chord.to_dict() for chord in self.model_chords]}
               if self.model_chords is not None else {}),
            "normalized_chords": [chord.to_dict() for chord in self.normalized_chords],
            "provenance": [item.to_dict() for item in self.provenance],
            "warnings": list(self.warnings),
            **({"pending": list(self.pending)} if self.pending else {}),
        }
        if self.segments is not None:
            data["segments"] = [segment.to_dict() for segment in self.segments]
        if self.track is not None:
            data["track"] = self.track.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Analysis:
        segments = data.get("segments")
        track = data.get("track")
        return cls(
            source=str(data["source"]),
            duration=float(data["duration"]),
            key=KeyEstimate.from_dict(data["key"]),
            chords=tuple(ChordSpan.from_dict(item) for item in data["chords"]),
            normalized_chords=tuple(ChordSpan.from_dict(item) for item in data.get("normalized_chords", [])),
            segments=None if segments is None else tuple(SegmentEmotion.from_dict(s) for s in segments),
            track=None if track is None else TrackEmotion.from_dict(track),
            provenance=tuple(ModelProvenance.from_dict(p) for p in data.get("provenance", [])),
            version=str(data.get("version", "1")),
            model_key=KeyEstimate.from_dict(data["model_key"]) if data.get("model_key") else None,
            key_timeline=tuple(KeySpan.from_dict(item) for item in data.get("key_timeline", [])),
            model_chords=None if data.get("model_chords") is None
            else tuple(ChordSpan.from_dict(item) for item in data["model_chords"]),
            warnings=tuple(str(item) for item in data.get("warnings", [])),
            pending=tuple(str(item) for item in data.get("pending", [])),
        )
