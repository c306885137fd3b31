"""Teachers and the multitask student: the training loops, selective updates and checkpoints.

Teachers
    One per dataset, the full network trained on that dataset's task only (the other branch is
    never updated and the checkpoint says ``tasks: [<task>]``).
Student
    One network trained on every dataset at once. Each optimiser step reads one batch of one
    dataset; its loss is ``alpha * KD + (1 - alpha) * task`` with KD against that dataset's
    teacher (same inputs, same augmented span). Selective update: a tag batch reaches the shared
    trunk and the tag branch only, a VA batch the trunk and the VA branch only. The other
    branch's gradients are ``None`` (not zero), so Adam leaves those parameters and their
    moment estimates untouched - without this, Adam's momentum would keep moving a branch on
    the other task's steps.
Early stopping
    After every epoch the validation loss is computed: per dataset, the mean task loss over its
    validation tracks (all segments); summed over datasets, each divided by its value before
    training (``stop_on: normalized``) or as is (``stop_on: sum``). The best weights are kept
    and training stops after ``patience`` epochs without improvement.
Reproducibility
    Everything random follows from the config's seed: initialisation, batch order, the
    augmented spans (drawn in the main process, so the number of loader workers does not
    matter) and dropout; torch's deterministic algorithms are on while training
    (``training.deterministic``). The same config and seed on the same machine give
    bit-identical weights and metrics. Another machine can differ - CPU kernels (AVX2 or
    AVX-512), thread count, GPU model, library versions - because float rounding differs and
    grows over the epochs; every checkpoint records these (``metrics.environment``).
Outputs
    ``<output_dir>/teacher-<dataset>.safetensors`` and ``student.safetensors`` (with their
    ``.json`` configs: tasks, tuned tag thresholds, metrics, the run config), one
    ``*.history.json`` per model, and ``report.csv`` / ``report.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from m2e_core.errors import ConfigError, ModelError
from m2e_core.model import HeadsConfig, MultitaskEmotionModel, load_heads, save_heads
from m2e_core.vocab import tag_names

from .cache import FeatureCache, MissingFeaturesError, extract_features
from .config import KDSettings, RunConfig, TrainSettings
from .datasets import SPLITS, LabeledDataset
from .evaluate import (
    format_table,
    json_ready,
    paper_figures,
    tag_metrics,
    tune_thresholds,
    va_metrics,
    write_report,
)
from .loader import FeatureDataset, SpanSampler, make_examples
from .losses import TagClassWeights, combine, distillation_loss, tag_class_weights, va_mse, weighted_bce

log = logging.getLogger("training")

_EVAL_BATCH = 64
#: cuBLAS workspace setting that makes its results deterministic (torch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """One dataset ready for training: its three splits and (for tags) the class weights."""

    name: str
    kind: str
    task: str
    train: FeatureDataset
    validation: FeatureDataset
    test: FeatureDataset
    class_weights: TagClassWeights | None
    embedding_dim: int

    def split(self, name: str) -> FeatureDataset:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def task_data(dataset: LabeledDataset, features: Mapping[str, Any], *, span_chords: str = "track") -> TaskData:
    """Examples of every split of ``dataset`` from its cached features.

    Raises
    ------
    ConfigError
        The train or validation split has no example with features, or embedding widths differ.
    """
    splits = {}
    for split in SPLITS:
        examples = make_examples(dataset.split(split), features, dataset.task)
        splits[split] = FeatureDataset(examples, dataset.task, augment=split == "train", span_chords=span_chords)
    for split in ("train", "validation"):
        if len(splits[split]) == 0:
            raise ConfigError(f"dataset {dataset.name!r} has no {split} examples with features")
    widths = {example.features.segment_embeddings.shape[1] for s in splits.values() for example in s.examples}
    if len(widths) != 1:
        raise ConfigError(f"dataset {dataset.name!r} mixes embedding widths {sorted(widths)}: clear the cache")
    weights = tag_class_weights(splits["train"].targets()) if dataset.task == "tags" else None
    return TaskData(dataset.name, dataset.kind, dataset.task, splits["train"], splits["validation"], splits["test"],
                    weights, widths.pop())


# -- device ---------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda, but no CUDA device is available")
    return torch.device(name)


def use_bf16(settings: TrainSettings, device: torch.device) -> bool:
    """bf16 autocast: on with CUDA when ``auto``; as asked otherwise."""
    return device.type == "cuda" if settings.bf16 == "auto" else bool(settings.bf16)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast of the forward pass (a no-op when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def branch_output(model: MultitaskEmotionModel, task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The trunk and one branch: tag logits (``tags``) or VA (``va``); the other branch is not run."""
    shared = model.trunk(batch["mert"], batch["chord_roots"], batch["chord_qualities"], batch["mode"])
    branch = model.classification_branch if task == "tags" else model.regression_branch
    return branch(shared)


def other_branch_parameters(model: MultitaskEmotionModel, task: str) -> list[torch.nn.Parameter]:
    """Parameters a ``task`` batch must not update."""
    return model.va_parameters() if task == "tags" else model.tag_parameters()


def task_loss(task: str, output: torch.Tensor, target: torch.Tensor, weights: TagClassWeights | None) -> torch.Tensor:
    return weighted_bce(output, target, weights) if task == "tags" else va_mse(output, target)


# -- one step -------------------------------------------------------------------------------


def train_step(
    model: MultitaskEmotionModel,
    optimizer: torch.optim.Optimizer,
    task: str,
    batch: Mapping[str, torch.Tensor],
    *,
    weights: TagClassWeights | None = None,
    teacher: MultitaskEmotionModel | None = None,
    kd: KDSettings | None = None,
    bf16: bool = False,
) -> float:
    """One optimiser step on one batch of ``task``; returns the loss.

    Only the trunk and ``task``'s branch receive gradients; the other branch's gradients are
    set to ``None`` so that Adam skips those parameters entirely (no update, no moment change).
    """
    device = batch["mert"].device
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        output = branch_output(model, task, batch)
    loss = task_loss(task, output, batch["target"], weights)
    if teacher is not None and kd is not None and kd.alpha > 0:
        with torch.no_grad(), autocast(device, bf16):
            teacher_output = branch_output(teacher, task, batch)
        mask = weights.trained if weights is not None and task == "tags" else None
        distilled = distillation_loss(task, output, teacher_output, variant=kd.variant, temperature=kd.temperature,
                                      tag_mask=mask)
        loss = combine(loss, distilled, kd.alpha)
    loss.backward()
    for parameter in other_branch_parameters(model, task):
        parameter.grad = None
    optimizer.step()
    return float(loss.detach())


# -- evaluation passes ----------------------------------------------------------------------


def _eval_loader(dataset: FeatureDataset, device: torch.device, settings: TrainSettings) -> DataLoader:
    # A generator of its own: iterating the loader then draws nothing from torch's global one.
    return DataLoader(dataset, batch_size=_EVAL_BATCH, shuffle=False, num_workers=settings.num_workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def predict(model: MultitaskEmotionModel, dataset: FeatureDataset, device: torch.device, *,
            settings: TrainSettings, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Tag probabilities ``(N, tags)`` and VA ``(N, 2)`` of every example (all segments)."""
    model.eval()
    probabilities, va = [], []
    for batch in _eval_loader(dataset, device, settings):
        batch = _to_device(batch, device)
        with autocast(device, bf16):
            logits, values = model(batch["mert"], batch["chord_roots"], batch["chord_qualities"], batch["mode"])
        probabilities.append(torch.sigmoid(logits.float()).cpu().numpy())
        va.append(values.float().cpu().numpy())
    if not probabilities:
        return np.zeros((0, model.num_tags), np.float32), np.zeros((0, 2), np.float32)
    return np.concatenate(probabilities), np.concatenate(va)


@torch.no_grad()
def validation_loss(model: MultitaskEmotionModel, data: TaskData, device: torch.device, *,
                    settings: TrainSettings, bf16: bool = False) -> float:
    """Mean task loss over the validation split (all segments per track)."""
    model.eval()
    weights = data.class_weights.to(device) if data.class_weights is not None else None
    total, count = 0.0, 0
    for batch in _eval_loader(data.validation, device, settings):
        batch = _to_device(batch, device)
        with autocast(device, bf16):
            output = branch_output(model, data.task, batch)
        size = int(batch["target"].shape[0])
        total += float(task_loss(data.task, output, batch["target"], weights)) * size
        count += size
    return total / max(count, 1)


# -- the loop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """A trained model with its best epoch, validation loss and history."""

    model: MultitaskEmotionModel
    best_epoch: int
    best_validation_loss: float
    history: tuple[dict[str, Any], ...]
    seconds: float
    steps: int
    examples: int

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


def _train_loader(source: TaskData, settings: TrainSettings, device: torch.device,
                  generator: torch.Generator) -> DataLoader:
    """Shuffled batches with augmented spans; order and spans from seeds drawn from ``generator``."""
    return DataLoader(source.train, batch_size=settings.batch_size,
                      sampler=SpanSampler(len(source.train), torch.Generator().manual_seed(_draw_seed(generator))),
                      generator=torch.Generator().manual_seed(_draw_seed(generator)),  # the workers' seeds
                      num_workers=settings.num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=settings.num_workers > 0)


def _schedule(loaders: Mapping[str, DataLoader], mixing: str, generator: torch.Generator) -> Iterator[
        tuple[str, Mapping[str, torch.Tensor]]]:
    """Batches of one epoch as ``(dataset name, batch)``."""
    names = list(loaders)
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    if mixing == "interleave":
        order = [name for name in names for _ in range(len(loaders[name]))]
        for position in torch.randperm(len(order), generator=generator).tolist():
            yield order[position], next(iterators[order[position]])
        return
    rounds = max(len(loader) for loader in loaders.values())
    for _ in range(rounds):
        for name in names:
            try:
                batch = next(iterators[name])
            except StopIteration:
                iterators[name] = iter(loaders[name])
                batch = next(iterators[name])
            yield name, batch


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block: torch's deterministic kernels, no cuDNN autotuning; restored afterwards.

    Where torch has no deterministic implementation of an op it raises (``enabled``), which
    :func:`fit` turns into a one-line :class:`~m2e_core.errors.ModelError`. cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` before its first use; :func:`run` and the command line set it.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def _train_losses(record: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value:.4f}" for name, value in record["train_loss"].items() if value is not None)


def _epoch_line(record: Mapping[str, Any], max_epochs: int, best_loss: float, best_epoch: int) -> str:
    return (f"epoch {record['epoch']:>{len(str(max_epochs))}}/{max_epochs}  train {_train_losses(record)}  "
            f"val {record['validation_criterion']:.4f}  best {best_loss:.4f} (epoch {best_epoch})")


def _closing_line(history: Sequence[Mapping[str, Any]], settings: TrainSettings, best_epoch: int, stale: int,
                  seconds: float) -> str:
    """Why training ended, and the epoch kept."""
    epochs = len(history)
    if epochs < settings.max_epochs:
        why = f"stopped early after epoch {epochs} ({stale} without improvement)"
    elif stale < settings.patience:
        why = (f"reached max_epochs {epochs} still improving (early stopping, patience {settings.patience}, "
               "did not act: a larger training.max_epochs may do better)")
    else:
        why = f"reached max_epochs {epochs}"
    if not best_epoch:
        return f"{why}; no epoch improved the validation loss; {seconds:.1f} s"
    best = history[best_epoch - 1]
    return (f"{why}; kept epoch {best_epoch}: train {_train_losses(best)}  val {best['validation_criterion']:.4f}; "
            f"{seconds:.1f} s")


def fit(
    model: MultitaskEmotionModel,
    sources: Sequence[TaskData],
    settings: TrainSettings,
    *,
    teachers: Mapping[str, MultitaskEmotionModel] | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    label: str = "model",
    progress: bool = False,
) -> FitResult:
    """Train ``model`` on ``sources`` with early stopping; the best weights are loaded at the end.

    Parameters
    ----------
    model : MultitaskEmotionModel
    sources : sequence of TaskData
        One for a teacher, several for the student.
    settings : TrainSettings
    teachers : mapping, optional
        ``dataset name -> teacher`` for distillation (needed for every source when
        ``settings.kd.alpha > 0``); ``None`` trains on the task losses only.
    device : torch.device, optional
    seed : int
        Everything random in training follows from it: the batch order, the augmented spans
        (whatever the number of loader workers) and dropout. The caller's random state is
        left as it was.
    label : str
        Name used in log lines and on the progress bar.
    progress : bool
        A tqdm bar over the epochs (on a terminal only). Log lines (``INFO`` on the
        ``training`` logger): the first epoch, every ``settings.log_every`` epochs, the last
        and the best.

    Raises
    ------
    ModelError
        ``settings.deterministic`` is on and an op has no deterministic implementation on
        this device.
    """
    device = device or resolve_device(settings.device)
    try:
        with deterministic_algorithms(settings.deterministic), \
                torch.random.fork_rng(devices=_rng_devices(device), device_type=device.type):
            return _fit(model, sources, settings, teachers=teachers, device=device, seed=seed, label=label,
                        progress=progress)
    except RuntimeError as error:
        if settings.deterministic and "deterministic" in str(error):
            first = str(error).strip().splitlines()[0]
            raise ModelError(f"{first} (on {device}); set training.deterministic: false to train with it, "
                             "without bit-for-bit reproducible runs") from error
        raise


def _fit(
    model: MultitaskEmotionModel,
    sources: Sequence[TaskData],
    settings: TrainSettings,
    *,
    teachers: Mapping[str, MultitaskEmotionModel] | None,
    device: torch.device,
    seed: int,
    label: str,
    progress: bool,
) -> FitResult:
    from tqdm import tqdm

    bf16 = use_bf16(settings, device)
    if teachers is not None and settings.kd.alpha > 0:
        absent = [source.name for source in sources if source.name not in teachers]
        if absent:
            raise ConfigError(f"distillation (alpha={settings.kd.alpha}) needs a teacher for {absent}")
    model.to(device)
    for teacher in (teachers or {}).values():
        teacher.to(device).eval()
    tasks = {source.task for source in sources}
    parameters = model.shared_parameters()
    if "tags" in tasks:
        parameters += model.tag_parameters()
    if "va" in tasks:
        parameters += model.va_parameters()
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(_draw_seed(generator))  # dropout (inside fork_rng: the caller's state is restored)
    loaders = {source.name: _train_loader(source, settings, device, generator) for source in sources}
    by_name = {source.name: source for source in sources}
    weights = {source.name: source.class_weights.to(device) if source.class_weights is not None else None
               for source in sources}
    best_loss, best_epoch, best_state = float("inf"), 0, None
    history: list[dict[str, Any]] = []
    initial = {source.name: validation_loss(model, source, device, settings=settings, bf16=bf16) for source in sources}
    scale = {name: value if settings.stop_on == "normalized" and value > 0 else 1.0 for name, value in initial.items()}
    counts = " + ".join(f"{len(s.train)}/{len(s.validation)}/{len(s.test)}" for s in sources)
    log.info("[%s] %s train/validation/test tracks; up to %d epochs, early stop after %d without improvement",
             label, counts, settings.max_epochs, settings.patience)
    steps = examples = 0
    started = time.perf_counter()
    stale = 0
    bar = tqdm(total=settings.max_epochs, desc=label, unit="epoch", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        for epoch in range(1, settings.max_epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            losses: dict[str, list[float]] = {name: [] for name in by_name}
            for name, batch in _schedule(loaders, settings.mixing, generator):
                batch = _to_device(batch, device)
                teacher = None if teachers is None else teachers.get(name)
                losses[name].append(train_step(model, optimizer, by_name[name].task, batch, weights=weights[name],
                                               teacher=teacher, kd=settings.kd if teacher is not None else None,
                                               bf16=bf16))
                steps += 1
                examples += int(batch["target"].shape[0])
            validation = {source.name: validation_loss(model, source, device, settings=settings, bf16=bf16)
                          for source in sources}
            total = float(sum(value / scale[name] for name, value in validation.items()))
            improved = total < best_loss
            if improved:
                best_loss, best_epoch, stale = total, epoch, 0
                best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
            else:
                stale += 1
            record = {
                "epoch": epoch,
                "train_loss": {name: float(np.mean(values)) if values else None for name, values in losses.items()},
                "validation_loss": validation,
                "validation_criterion": total,
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(record)
            bar.set_postfix_str(f"val {total:.4f}, best {best_loss:.4f} (epoch {best_epoch})", refresh=False)
            bar.update(1)
            stopping = stale >= settings.patience > 0 or (settings.patience == 0 and not improved)
            last = stopping or epoch == settings.max_epochs
            if epoch == 1 or last or (settings.log_every > 0 and epoch % settings.log_every == 0):
                log.info("[%s] %s", label, _epoch_line(record, settings.max_epochs, best_loss, best_epoch))
            if stopping:
                break
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    log.info("[%s] %s", label, _closing_line(history, settings, best_epoch, stale, seconds))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_epoch, best_loss, tuple(history), seconds, steps, examples)


# -- checkpoints and reports -----------------------------------------------------------------


def new_model(embedding_dim: int, settings: TrainSettings, *, seed: int,
              va_mean: Sequence[float] | None = None) -> MultitaskEmotionModel:
    """A freshly initialised network (deterministic for ``seed``).

    ``va_mean`` (the training targets' mean valence and arousal) initialises the VA output bias,
    so training starts from the mean prediction instead of 0 on a 1-9 scale: the first VA
    losses are then near the targets' variance rather than ~25, and their gradients do not
    swamp Adam's moment estimates of the shared trunk that the tag task also uses.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultitaskEmotionModel(embedding_dim, hidden_dim=settings.hidden_dim, branch_dim=settings.branch_dim)
    if va_mean is not None:
        with torch.no_grad():
            model.regression_branch[-1].bias.copy_(torch.as_tensor(va_mean, dtype=torch.float32))
    return model


def va_target_mean(sources: Sequence[TaskData]) -> list[float] | None:
    """Mean valence and arousal over the training splits of the VA datasets (``None`` without any)."""
    targets = [source.train.targets() for source in sources if source.task == "va"]
    if not targets:
        return None
    return [float(value) for value in np.concatenate(targets).mean(axis=0)]


def evaluate_model(
    model: MultitaskEmotionModel,
    sources: Sequence[TaskData],
    *,
    settings: TrainSettings,
    device: torch.device,
    thresholds: Sequence[float] | None,
    label: str,
    student: bool,
    splits: Sequence[str] = ("validation", "test"),
) -> list[dict[str, Any]]:
    """Report rows (one per dataset and split) for ``model``."""
    bf16 = use_bf16(settings, device)
    rows = []
    for source in sources:
        for split in splits:
            dataset = source.split(split)
            if len(dataset) == 0:
                continue
            probabilities, va = predict(model, dataset, device, settings=settings, bf16=bf16)
            targets = dataset.targets()
            row: dict[str, Any] = {"model": label, "dataset": source.name, "kind": source.kind, "task": source.task,
                                   "split": split}
            if source.task == "tags":
                row.update(tag_metrics(probabilities, targets, thresholds))
            else:
                row.update(va_metrics(va, targets))
            if split == "test":
                row.update(paper_figures(source.kind, student=student))
            rows.append(row)
    return rows


def tuned_thresholds(model: MultitaskEmotionModel, sources: Sequence[TaskData], *, settings: TrainSettings,
                     device: torch.device) -> tuple[tuple[float, ...] | None, list[str]]:
    """Max-F1 thresholds from the validation splits of the tag datasets (``None`` without any)."""
    tag_sources = [source for source in sources if source.task == "tags"]
    if not tag_sources:
        return None, []
    bf16 = use_bf16(settings, device)
    probabilities = np.concatenate([predict(model, s.validation, device, settings=settings, bf16=bf16)[0]
                                    for s in tag_sources])
    targets = np.concatenate([s.validation.targets() for s in tag_sources])
    tuned = tune_thresholds(probabilities, targets)
    names = tag_names()
    return tuned.values, [names[index] for index in tuned.untuned]


def save_checkpoint(
    model: MultitaskEmotionModel,
    path: Path,
    *,
    tasks: Sequence[str],
    thresholds: Sequence[float] | None,
    provenance: Mapping[str, Any],
    metrics: Mapping[str, Any],
    training_config: Mapping[str, Any],
) -> Path:
    """Write heads in the m2e_core format with config, metrics and training config inside."""
    config = HeadsConfig(
        embedding_dim=model.embedding_dim,
        hidden_dim=model.hidden_dim,
        branch_dim=model.branch_dim,
        tag_names=tag_names(),
        tasks=tuple(task for task in ("tags", "va") if task in tasks),
        tag_thresholds=tuple(thresholds) if thresholds is not None and "tags" in tasks else None,
        provenance=json_ready(dict(provenance)),
        metrics=json_ready(dict(metrics)),
        training_config=json_ready(dict(training_config)),
    )
    return save_heads(model.cpu(), config, path)


@dataclass(frozen=True)
class TrainedModel:
    """A saved model of a run."""

    label: str
    checkpoint: Path
    rows: tuple[dict[str, Any], ...]
    fit: FitResult


@dataclass(frozen=True)
class RunSummary:
    """Everything a run produced."""

    models: tuple[TrainedModel, ...]
    report_csv: Path
    report_json: Path
    table: str


def _metrics_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for row in rows:
        values = {key: value for key, value in row.items() if key not in ("model", "dataset", "split")}
        result.setdefault(row["dataset"], {})[row["split"]] = values
    return result


def _train_and_save(
    label: str,
    stem: str,
    sources: Sequence[TaskData],
    config: RunConfig,
    *,
    device: torch.device,
    teachers: Mapping[str, MultitaskEmotionModel] | None,
    seed: int,
    provenance: Mapping[str, Any],
    progress: bool = False,
) -> TrainedModel:
    settings = config.training
    model = new_model(sources[0].embedding_dim, settings, seed=seed, va_mean=va_target_mean(sources))
    result = fit(model, sources, settings, teachers=teachers, device=device, seed=seed, label=label,
                 progress=progress)
    thresholds, untuned = tuned_thresholds(result.model, sources, settings=settings, device=device)
    rows = evaluate_model(result.model, sources, settings=settings, device=device, thresholds=thresholds, label=label,
                          student=teachers is not None and len(sources) > 1)
    tasks = sorted({source.task for source in sources})
    metrics = {
        "datasets": _metrics_of(rows),
        "best_epoch": result.best_epoch,
        "best_validation_loss": result.best_validation_loss,
        "epochs_run": len(result.history),
        "train_seconds": result.seconds,
        "train_examples_per_second": result.examples_per_second,
        "device": str(device),
        "environment": training_environment(device, settings),
        "untuned_tags": untuned if "tags" in tasks else [],
    }
    config.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(
        result.model,
        config.output_dir / f"{stem}.safetensors",
        tasks=tasks,
        thresholds=thresholds,
        provenance={**provenance, "name": f"{config.name}-{stem}", "role": label},
        metrics=metrics,
        training_config={"config": config.raw, "config_file": config.source, "cache_dir": config.cache_dir,
                         "output_dir": config.output_dir, "datasets": [s.name for s in sources],
                         "teachers": sorted(teachers) if teachers else []},
    )
    from .cache import write_json_atomic

    write_json_atomic(config.output_dir / f"{stem}.history.json", json_ready(list(result.history)))
    log.debug("[%s] saved %s (%.0f examples/s)", label, checkpoint, result.examples_per_second)
    return TrainedModel(label, checkpoint, tuple(rows), result)


def training_environment(device: torch.device, settings: TrainSettings) -> dict[str, Any]:
    """What else decides the exact figures of a run: library versions, kernels, threads, device.

    Two machines that differ in any of these can train to different weights from the same
    config and seed (float rounding differs and grows over the epochs).
    """
    import platform

    environment: dict[str, Any] = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "deterministic": settings.deterministic,
        "device": str(device),
    }
    if device.type == "cuda":
        environment.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                           cudnn=torch.backends.cudnn.version())
    return environment


def load_teacher(path: Path, *, embedding_dim: int, task: str) -> MultitaskEmotionModel:
    """A teacher checkpoint, checked against the features and the dataset's task."""
    model, config = load_heads(path)
    if config.embedding_dim != embedding_dim:
        raise ModelError(f"teacher {path} reads {config.embedding_dim}-d embeddings; the cached features are "
                         f"{embedding_dim}-d (another encoder)")
    if task not in config.tasks:
        raise ModelError(f"teacher {path} was trained for {list(config.tasks)}, not {task!r}")
    return model


def run(config: RunConfig, *, stages: Sequence[str] | None = None, progress: bool = False) -> RunSummary:
    """Run a config: (synthetic data), (extraction), teachers and/or student, report.

    One tqdm bar per stage when ``progress`` (on a terminal only), and ``INFO`` lines on the
    ``training`` logger: what each stage read and did, a line every ``training.log_every``
    epochs. The same config and seed on the same machine give bit-identical checkpoints and
    metrics (see :func:`fit`).

    Raises
    ------
    MissingFeaturesError
        Features are missing and ``extract_missing`` is off.
    ConfigError, LabelError, ModelError
        Invalid config, labels or teacher checkpoints.
    """
    if config.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before cuBLAS's first use
    config.apply_cpu_threads()
    stages = tuple(stages or config.stages)
    unknown = sorted(set(stages) - {"teachers", "student"})
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}")
    if config.synthetic is not None and not (config.synthetic.out / "manifest.csv").is_file():
        from .synthetic import generate

        spec = config.synthetic
        generate(spec.out, tracks=spec.tracks, seconds=spec.seconds, seed=spec.seed, progress=progress)
        log.info("synthetic data: %d clips of %g s in %s", spec.tracks, spec.seconds, spec.out)
    cache = FeatureCache(config.cache_dir)
    datasets = [spec.load() for spec in config.datasets]
    if config.extract_missing:
        report = extract_features(datasets, config.features, cache, progress=progress)
        log.info("features: %s; %.1f s", report.summary(), report.seconds)
    sources = [task_data(dataset, cache.features_for(dataset, config.features, allow_missing=config.allow_missing),
                         span_chords=config.training.span_chords)
               for dataset in datasets]
    widths = {source.embedding_dim for source in sources}
    if len(widths) != 1:
        raise ConfigError(f"datasets have different embedding widths {sorted(widths)}")
    device = resolve_device(config.training.device)
    provenance = _provenance(config, cache, datasets)
    trained: list[TrainedModel] = []
    teachers: dict[str, MultitaskEmotionModel] = {}
    for position, source in enumerate(sources):
        if "teachers" in stages:
            model = _train_and_save(f"teacher:{source.name}", f"teacher-{source.name}", [source], config,
                                    device=device, teachers=None, seed=config.seed + 1 + position,
                                    provenance=provenance, progress=progress)
            trained.append(model)
            teachers[source.name] = model.fit.model
        elif "student" in stages and config.training.kd.alpha > 0:
            path = config.teachers.get(source.name)
            if path is None:
                raise ConfigError(f"the student needs a teacher for {source.name!r}: add it under 'teachers:' or "
                                  "run the teachers stage in the same run")
            teachers[source.name] = load_teacher(path, embedding_dim=source.embedding_dim, task=source.task)
    if "student" in stages:
        trained.append(_train_and_save("student", "student", sources, config, device=device,
                                       teachers=teachers if config.training.kd.alpha > 0 else None,
                                       seed=config.seed, provenance=provenance, progress=progress))
    rows = [row for model in trained for row in model.rows] + chance_rows(sources)
    table = format_table(rows)
    csv_path, json_path = write_report(rows, config.output_dir)
    return RunSummary(tuple(trained), csv_path, json_path, table)


def chance_rows(sources: Sequence[TaskData], splits: Sequence[str] = ("validation", "test")) -> list[dict[str, Any]]:
    """Report rows of a predictor that ignores its input (the chance level of every metric).

    Tags: every track gets the training frequency of each tag (ROC-AUC 0.5, PR-AUC the base
    rate). VA: every track gets the training mean (R2 is 0 only if the split's mean equals it).
    """
    rows = []
    for source in sources:
        train = source.train.targets()
        prior = train.mean(axis=0)
        for split in splits:
            targets = source.split(split).targets()
            if len(targets) == 0:
                continue
            row: dict[str, Any] = {"model": "chance:train-prior", "dataset": source.name, "kind": source.kind,
                                   "task": source.task, "split": split}
            constant = np.tile(prior, (len(targets), 1))
            row.update(tag_metrics(constant, targets) if source.task == "tags" else va_metrics(constant, targets))
            rows.append(row)
    return rows


def _provenance(config: RunConfig, cache: FeatureCache, datasets: Sequence[LabeledDataset]) -> dict[str, Any]:
    identity: dict[str, Any] | None = None
    for dataset in datasets:
        for record in cache.read_index(dataset.name, config.features).values():
            if record.get("key") and cache.has(record["key"]):
                identity = cache.identity_of(record["key"])
                break
        if identity is not None:
            break
    if identity is None:
        raise MissingFeaturesError("no cached features found for this config; run: m2e-train extract --config "
                                   "<config> (or set extract_missing: true)")
    provenance: dict[str, Any] = {
        "source": f"m2e-train train ({config.source or 'config'})",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features": identity,
        "datasets": {dataset.name: {"kind": dataset.kind, "task": dataset.task, **dataset.counts()}
                     for dataset in datasets},
    }
    if config.features.encoder == "tiny":
        provenance["encoder_dir"] = str(cache.directory / "encoders" / "tiny-seed0")
    return provenance


def evaluate_checkpoint(config: RunConfig, checkpoint: Path, *, splits: Sequence[str] = ("test",)) -> list[dict]:
    """Report rows of a saved checkpoint on the config's datasets (those of its tasks)."""
    config.apply_cpu_threads()
    model, heads = load_heads(checkpoint)
    cache = FeatureCache(config.cache_dir)
    device = resolve_device(config.training.device)
    sources = []
    for spec in config.datasets:
        if spec.task not in heads.tasks:
            continue
        dataset = spec.load()
        sources.append(task_data(dataset, cache.features_for(dataset, config.features,
                                                             allow_missing=config.allow_missing),
                                 span_chords=config.training.span_chords))
    if not sources:
        raise ConfigError(f"the config has no dataset for the checkpoint's tasks {list(heads.tasks)}")
    if sources[0].embedding_dim != heads.embedding_dim:
        raise ModelError(f"{checkpoint} reads {heads.embedding_dim}-d embeddings; the cached features are "
                         f"{sources[0].embedding_dim}-d")
    model.to(device)
    return evaluate_model(model, sources, settings=config.training, device=device, thresholds=heads.tag_thresholds,
                          label=Path(checkpoint).stem, student=len(heads.tasks) > 1, splits=splits)
