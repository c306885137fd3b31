"""Run configuration: one YAML file per run (see ``training/configs/``).

Top-level keys::

    name          run name (used in checkpoint names and reports)
    seed          random seed of the run (model init, shuffling, augmentation)
    cache_dir     the feature cache (shared between runs)
    output_dir    checkpoints, reports and logs of this run
    stages        [teachers, student] or one of them
    synthetic     optional: {out, tracks, seconds, seed} - generate the synthetic set first
    features      FeatureSettings: encoder, revision, chords, btc_checkpoint, segment_seconds,
                  min_tail_seconds, fast, device, workers
    cpu_threads   torch's intra-op threads (default: torch's choice). 1 is much faster for the small
                  models here when the CPU is shared with other work.
    extract_missing   train extracts the features the cache lacks first (default false)
    allow_missing     leave out tracks whose features failed (default false: an error)
    datasets      list of dataset entries (below)
    teachers      {dataset name: checkpoint} for a student stage run without the teacher stage
    training      TrainSettings (see :class:`TrainSettings`)

Dataset entries (``name`` and ``kind`` always)::

    kind: jamendo    splits: {train, validation, test}, table (optional), audio_dir, audio_suffix
    kind: deam | pmemo | emomusic
                     annotations: [file, ...], audio_dir, audio_pattern ("{id}.mp3"),
                     split_seed (0), split_fractions ([0.7, 0.15, 0.15])
    kind: manifest   manifest, task (tags | va), split_seed, split_fractions

Relative paths in a config (``cache_dir``, ``output_dir``, ``synthetic.out``, manifests, split
files, tables, annotations, audio directories, teachers, a local ``features.encoder``
directory) are resolved against the work directory (``--workdir``, default the current
directory), never against the config file's own folder, so one config serves any machine that
lays its data out the same way under its work directory; ``~`` and ``${VAR}`` are expanded
first, and absolute paths are kept. Unknown keys are errors, so a typo never passes silently.

A config is a YAML file, or the name of one shipped in ``training/configs`` (``smoke``,
``jamendo``, ...; see :func:`packaged_configs`) when no file of that name exists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from m2e_core.errors import ConfigError

from .cache import FeatureSettings
from .datasets import DEFAULT_FRACTIONS, KINDS, SPLITS, TASKS, LabeledDataset
from .losses import KD_VARIANTS

STAGES = ("teachers", "student")
MIXING = ("interleave", "cycle")
STOP_ON = ("normalized", "sum")


def _expand(text: object, workdir: Path, what: str) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be a path, got {text!r}")
    path = Path(os.path.expanduser(os.path.expandvars(text)))
    return path if path.is_absolute() else workdir / path


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    allowed = {item.name for item in fields(cls)}
    _check_keys(data, allowed, where)
    try:
        return cls(**data)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


@dataclass(frozen=True)
class KDSettings:
    """Distillation: ``variant`` (bernoulli | upstream), ``alpha`` (KD weight), ``temperature``."""

    variant: str = "bernoulli"
    alpha: float = 0.8
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in KD_VARIANTS:
            raise ConfigError(f"training.kd.variant must be one of {KD_VARIANTS}, got {self.variant!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"training.kd.alpha must be in [0, 1], got {self.alpha!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"training.kd.temperature must be positive, got {self.temperature!r}")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (defaults: the paper's).

    Attributes
    ----------
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    bf16 : bool or str
        bf16 autocast of the forward pass; ``auto`` = on with CUDA. Losses run in float32.
    batch_size : int
        Per dataset (each optimiser step reads one batch of one dataset).
    learning_rate : float
        Adam.
    max_epochs, patience : int
        Early stopping on the validation loss (see ``stop_on``).
    stop_on : str
        ``normalized`` (default): the sum over datasets of each dataset's validation task loss
        divided by its value before training, so a tag BCE near 0.1 and a VA MSE near 1 weigh
        alike; ``sum``: the plain sum of the validation task losses.
    num_workers : int
        DataLoader worker processes.
    mixing : str
        Student batch schedule: ``interleave`` (every batch of every dataset once per epoch,
        in a random order) or ``cycle`` (as many rounds as the largest dataset has batches,
        one batch of each dataset per round, smaller datasets restarting).
    span_chords : str
        ``track`` or ``window`` (see :mod:`training.loader`).
    hidden_dim, branch_dim : int
        Trunk and branch widths (512 / 256 published).
    kd : KDSettings
    log_every : int
        A summary line every ``log_every`` epochs (and for the first, the last and the best
        epoch); 0: only those three.
    deterministic : bool
        ``torch.use_deterministic_algorithms``: an op without a deterministic implementation
        is an error (set false to train with it; the run is then not bit-reproducible).
    """

    device: str = "auto"
    bf16: bool | str = "auto"
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_epochs: int = 200
    patience: int = 10
    stop_on: str = "normalized"
    num_workers: int = 0
    mixing: str = "interleave"
    span_chords: str = "track"
    hidden_dim: int = 512
    branch_dim: int = 256
    kd: KDSettings = field(default_factory=KDSettings)
    log_every: int = 10
    deterministic: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"training.device must be auto, cpu or cuda, got {self.device!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ConfigError(f"training.bf16 must be true, false or auto, got {self.bf16!r}")
        for name in ("batch_size", "max_epochs", "hidden_dim", "branch_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"training.{name} must be a positive integer, got {value!r}")
        for name in ("patience", "num_workers", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"training.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be positive, got {self.learning_rate!r}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(f"training.deterministic must be true or false, got {self.deterministic!r}")
        if self.stop_on not in STOP_ON:
            raise ConfigError(f"training.stop_on must be one of {STOP_ON}, got {self.stop_on!r}")
        if self.mixing not in MIXING:
            raise ConfigError(f"training.mixing must be one of {MIXING}, got {self.mixing!r}")
        if self.span_chords not in ("track", "window"):
            raise ConfigError(f"training.span_chords must be track or window, got {self.span_chords!r}")
        if isinstance(self.kd, Mapping):
            object.__setattr__(self, "kd", _build(KDSettings, self.kd, "training.kd"))


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset entry of a config (see the module docstring for the keys per kind)."""

    name: str
    kind: str
    task: str
    audio_dir: Path | None = None
    splits: Mapping[str, Path] | None = None
    table: Path | None = None
    audio_suffix: str | None = None
    annotations: tuple[Path, ...] = ()
    audio_pattern: str = "{id}.mp3"
    manifest: Path | None = None
    split_seed: int = 0
    split_fractions: tuple[float, ...] = DEFAULT_FRACTIONS

    def load(self) -> LabeledDataset:
        """Read the dataset's label files (see :mod:`training.datasets`)."""
        from .datasets import load_jamendo, load_manifest_dataset, load_static_va

        if self.kind == "jamendo":
            return load_jamendo(self.splits or {}, self.audio_dir, table=self.table, audio_suffix=self.audio_suffix,
                                name=self.name)
        if self.kind == "manifest":
            return load_manifest_dataset(self.manifest, self.task, seed=self.split_seed,
                                         fractions=self.split_fractions, name=self.name)
        return load_static_va(self.kind, self.annotations, self.audio_dir, audio_pattern=self.audio_pattern,
                              seed=self.split_seed, fractions=self.split_fractions, name=self.name)


_DATASET_KEYS = {
    "jamendo": {"splits", "table", "audio_dir", "audio_suffix"},
    "deam": {"annotations", "audio_dir", "audio_pattern", "split_seed", "split_fractions"},
    "pmemo": {"annotations", "audio_dir", "audio_pattern", "split_seed", "split_fractions"},
    "emomusic": {"annotations", "audio_dir", "audio_pattern", "split_seed", "split_fractions"},
    "manifest": {"manifest", "task", "split_seed", "split_fractions"},
}


def _dataset_spec(data: Mapping[str, Any], workdir: Path, position: int) -> DatasetSpec:
    where = f"datasets[{position}]"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    name, kind = data.get("name"), data.get("kind")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\. "):
        raise ConfigError(f"{where}.name must be a non-empty name without '/', '.' or spaces, got {name!r}")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind must be one of {KINDS}, got {kind!r}")
    where = f"dataset {name!r}"
    _check_keys(data, {"name", "kind"} | _DATASET_KEYS[kind], where)
    values: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "jamendo":
        splits = data.get("splits")
        if not isinstance(splits, Mapping) or set(splits) != set(SPLITS):
            raise ConfigError(f"{where}: splits must map exactly {SPLITS} to TSV files")
        values.update(task="tags", splits={s: _expand(splits[s], workdir, f"{where}.splits.{s}") for s in SPLITS},
                      audio_dir=_expand(data.get("audio_dir"), workdir, f"{where}.audio_dir"),
                      audio_suffix=data.get("audio_suffix"))
        if data.get("table") is not None:
            values["table"] = _expand(data["table"], workdir, f"{where}.table")
    elif kind == "manifest":
        task = data.get("task")
        if task not in TASKS:
            raise ConfigError(f"{where}: task must be one of {TASKS}, got {task!r}")
        values.update(task=task, manifest=_expand(data.get("manifest"), workdir, f"{where}.manifest"))
    else:
        annotations = data.get("annotations")
        if isinstance(annotations, str):
            annotations = [annotations]
        if not isinstance(annotations, list) or not annotations:
            raise ConfigError(f"{where}: annotations must be a file or a list of files")
        values.update(task="va", audio_dir=_expand(data.get("audio_dir"), workdir, f"{where}.audio_dir"),
                      annotations=tuple(_expand(a, workdir, f"{where}.annotations") for a in annotations))
        if "audio_pattern" in data:
            values["audio_pattern"] = str(data["audio_pattern"])
    if "split_seed" in data:
        if isinstance(data["split_seed"], bool) or not isinstance(data["split_seed"], int):
            raise ConfigError(f"{where}: split_seed must be an integer")
        values["split_seed"] = data["split_seed"]
    if "split_fractions" in data:
        fractions = data["split_fractions"]
        if not isinstance(fractions, list) or len(fractions) != 3 or not math.isclose(sum(fractions), 1.0):
            raise ConfigError(f"{where}: split_fractions must be three numbers summing to 1")
        values["split_fractions"] = tuple(float(f) for f in fractions)
    return DatasetSpec(**values)


@dataclass(frozen=True)
class SyntheticSpec:
    """Generate the synthetic set into ``out`` before anything else (when absent)."""

    out: Path
    tracks: int = 120
    seconds: float = 4.5
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """A parsed run config (see the module docstring)."""

    name: str
    seed: int
    cache_dir: Path
    output_dir: Path
    stages: tuple[str, ...]
    features: FeatureSettings
    datasets: tuple[DatasetSpec, ...]
    teachers: Mapping[str, Path]
    training: TrainSettings
    synthetic: SyntheticSpec | None = None
    extract_missing: bool = False
    allow_missing: bool = False
    cpu_threads: int | None = None
    source: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def apply_cpu_threads(self) -> None:
        """Set torch's intra-op thread count when the config asks for one."""
        if self.cpu_threads is not None:
            import torch

            torch.set_num_threads(self.cpu_threads)

    def dataset(self, name: str) -> DatasetSpec:
        for spec in self.datasets:
            if spec.name == name:
                return spec
        raise ConfigError(f"no dataset named {name!r} in the config; have {[d.name for d in self.datasets]}")


_TOP_KEYS = {"name", "seed", "cache_dir", "output_dir", "stages", "synthetic", "features", "extract_missing",
             "allow_missing", "cpu_threads", "datasets", "teachers", "training"}


def parse_config(data: Mapping[str, Any], *, workdir: str | os.PathLike[str] | None = None,
                 source: Path | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from a mapping (the parsed YAML).

    Raises
    ------
    ConfigError
        Unknown keys, missing required keys, or invalid values (naming the key).
    """
    base = Path(workdir) if workdir is not None else Path.cwd()
    _check_keys(data, _TOP_KEYS, "config")
    name = data.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise ConfigError(f"config.name must be a non-empty name without '/' or spaces, got {name!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"config.seed must be an integer, got {seed!r}")
    stages = data.get("stages", list(STAGES))
    if isinstance(stages, str):
        stages = [stages]
    if not isinstance(stages, list) or not stages or not set(stages) <= set(STAGES) or len(set(stages)) != len(stages):
        raise ConfigError(f"config.stages must be a non-empty list from {STAGES}, got {stages!r}")
    stages = tuple(stage for stage in STAGES if stage in stages)
    features = _build(FeatureSettings, data.get("features") or {}, "features")
    if features.encoder != "tiny":
        # A local directory is resolved against the work directory; anything else is a Hub id.
        candidate = _expand(features.encoder, base, "features.encoder")
        if candidate.exists():
            features = replace(features, encoder=str(candidate))
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise ConfigError("config.datasets must be a non-empty list")
    datasets = tuple(_dataset_spec(item, base, position) for position, item in enumerate(raw_datasets))
    names = [spec.name for spec in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset names must be unique, got {names}")
    raw_teachers = data.get("teachers") or {}
    _check_keys(raw_teachers, set(names), "teachers")
    teachers = {key: _expand(value, base, f"teachers.{key}") for key, value in raw_teachers.items()}
    training_data = dict(data.get("training") or {})
    training = _build(TrainSettings, training_data, "training")
    synthetic = None
    if data.get("synthetic") is not None:
        spec = dict(data["synthetic"])
        _check_keys(spec, {"out", "tracks", "seconds", "seed"}, "synthetic")
        spec["out"] = _expand(spec.get("out"), base, "synthetic.out")
        synthetic = SyntheticSpec(**spec)
    threads = data.get("cpu_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"config.cpu_threads must be a positive integer or null, got {threads!r}")
    for flag in ("extract_missing", "allow_missing"):
        if not isinstance(data.get(flag, False), bool):
            raise ConfigError(f"config.{flag} must be true or false")
    return RunConfig(
        name=name,
        seed=seed,
        cache_dir=_expand(data.get("cache_dir", "cache"), base, "cache_dir"),
        output_dir=_expand(data.get("output_dir", f"runs/{name}"), base, "output_dir"),
        stages=stages,
        features=features,
        datasets=datasets,
        teachers=teachers,
        training=training,
        synthetic=synthetic,
        extract_missing=bool(data.get("extract_missing", False)),
        allow_missing=bool(data.get("allow_missing", False)),
        cpu_threads=threads,
        source=source,
        raw=dict(data),
    )


def packaged_configs() -> dict[str, Path]:
    """The configs shipped with the package: ``name -> file`` (``smoke``, ``jamendo``, ...)."""
    from importlib.resources import files

    folder = files("training") / "configs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml") and entry.is_file()}


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """The file ``path`` names: itself when it exists, else the packaged config of that name.

    A bare name (``smoke``, ``smoke.yaml``: no directory part) that is not a file in the current
    directory names a config shipped with the package, so ``--config smoke`` works from any
    directory. A path with a directory part is only ever that file.

    Raises
    ------
    ConfigError
        Neither exists (the message lists the packaged configs).
    """
    source = Path(os.path.expanduser(os.fspath(path)))
    if source.is_file():
        return source
    packaged = packaged_configs()
    if source.parent == Path(".") and source.suffix in ("", ".yaml", ".yml"):
        stem = source.name[: -len(source.suffix)] if source.suffix else source.name
        if stem in packaged:
            return packaged[stem]
    raise ConfigError(f"config file not found: {source} (a YAML file, or one of the packaged configs: "
                      f"{', '.join(packaged)})")


def load_config(path: str | os.PathLike[str], *, workdir: str | os.PathLike[str] | None = None) -> RunConfig:
    """Read a YAML run config: a file, or a packaged config by name (:func:`resolve_config_path`).

    Relative paths inside it are resolved against ``workdir`` (default: the current directory).

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or invalid.
    """
    import yaml

    source = resolve_config_path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML ({error})") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the config must be a YAML mapping")
    return parse_config(data, workdir=workdir, source=source)
