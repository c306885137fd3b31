"""Losses: weighted BCE for tags, MSE for valence/arousal, and knowledge distillation.

Conventions
-----------
- Tag outputs are logits ``(B, tags)``; targets are 0/1 floats of the same shape.
- VA outputs and targets are ``(B, 2)`` on the 1-9 scale (valence, arousal).
- Every loss returns a scalar float32 tensor (inputs are cast to float32 first, so the
  losses stay exact when the forward pass ran under bf16 autocast).

Distillation variants (``kd_variant``)
--------------------------------------
``"bernoulli"`` (default)
    Tags: per-tag Bernoulli KL(teacher || student) between ``sigmoid(logit / T)``, averaged over
    batch and tags, times ``T**2``. Tags without a single positive in the teacher's training
    data are left out (``tag_mask``): the teacher learnt nothing about them. Each tag is an independent yes/no decision, which is what a
    sigmoid output means. VA: mean squared error between student and teacher outputs.
``"upstream"``
    As the published training code: KL(softmax(teacher / T) || softmax(student / T)) over the
    56 tag logits and, separately, over the 2 VA outputs, ``batchmean`` reduction, times ``T**2``.
    A softmax across valence and arousal treats two regression values as one categorical
    distribution; it is kept for reproducing the published numbers.

The total loss of a student batch is ``alpha * kd + (1 - alpha) * task``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m2e_core.errors import ConfigError

#: The distillation variants.
KD_VARIANTS = ("bernoulli", "upstream")
#: Smallest tag frequency used for the class weights (tags without positives get ~0 weight).
MIN_TAG_FREQUENCY = 1e-6


@dataclass(frozen=True)
class TagClassWeights:
    """Per-tag BCE weights from training-set frequencies ``p``.

    ``pos_weight = 1 / p`` multiplies the positive term and ``weight = 2p / (1 + p)`` the
    whole per-tag loss (the published weighting). A tag with ``p`` near zero contributes
    almost nothing.
    """

    frequency: torch.Tensor
    pos_weight: torch.Tensor
    weight: torch.Tensor

    def to(self, device: torch.device | str) -> TagClassWeights:
        return TagClassWeights(self.frequency.to(device), self.pos_weight.to(device), self.weight.to(device))

    @property
    def trained(self) -> torch.Tensor:
        """Boolean mask of the tags with at least one positive."""
        return self.frequency > MIN_TAG_FREQUENCY


def tag_class_weights(tag_targets: np.ndarray | torch.Tensor) -> TagClassWeights:
    """Weights from a ``(tracks, tags)`` 0/1 matrix of training labels.

    Raises
    ------
    ConfigError
        An empty or non-2-D matrix.
    """
    targets = torch.as_tensor(np.asarray(tag_targets), dtype=torch.float32)
    if targets.dim() != 2 or targets.shape[0] == 0:
        raise ConfigError(f"tag targets must be a non-empty (tracks, tags) matrix, got shape {tuple(targets.shape)}")
    frequency = targets.mean(dim=0).clamp(min=MIN_TAG_FREQUENCY)
    return TagClassWeights(frequency, 1.0 / frequency, 2.0 * frequency / (1.0 + frequency))


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: TagClassWeights | None) -> torch.Tensor:
    """BCE-with-logits averaged over batch and tags, class-weighted when ``weights`` is given."""
    logits = logits.float()
    targets = targets.float()
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weights.weight, pos_weight=weights.pos_weight)


def va_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch and both dimensions."""
    return F.mse_loss(predictions.float(), targets.float())


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ConfigError(f"the distillation temperature must be positive, got {temperature}")
    return float(temperature)


def softmax_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) over the last axis, batch mean, times ``T**2``."""
    temperature = _check_temperature(temperature)
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def bernoulli_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 tag_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch and tags of KL(Bern(sigmoid(t / T)) || Bern(sigmoid(s / T))), times ``T**2``.

    ``tag_mask`` (bool, one per tag) restricts the mean to those tags.
    """
    temperature = _check_temperature(temperature)
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    p_teacher = torch.sigmoid(teacher)
    # log sigmoid(x) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x): stable for large |x|.
    kl = p_teacher * (F.softplus(-student) - F.softplus(-teacher)) + (1.0 - p_teacher) * (
        F.softplus(student) - F.softplus(teacher)
    )
    if tag_mask is not None:
        if not bool(tag_mask.any()):
            raise ConfigError("the tag mask selects no tag to distil")
        kl = kl[:, tag_mask]
    return kl.mean() * temperature**2


def distillation_loss(
    task: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    variant: str = "bernoulli",
    temperature: float = 1.0,
    tag_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The distillation term for one batch of ``task`` (``"tags"``: logits; ``"va"``: 1-9 outputs).

    ``tag_mask`` applies to the Bernoulli variant only (the upstream softmax spans all tags).
    """
    if variant not in KD_VARIANTS:
        raise ConfigError(f"unknown distillation variant {variant!r}; choose one of {KD_VARIANTS}")
    if task not in ("tags", "va"):
        raise ConfigError(f"unknown task {task!r}")
    if student.shape != teacher.shape:
        raise ConfigError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} outputs differ in shape")
    teacher = teacher.detach()
    if variant == "upstream":
        return softmax_kd(student, teacher, temperature)
    if task == "tags":
        return bernoulli_kd(student, teacher, temperature, tag_mask)
    return va_mse(student, teacher)


def combine(task_loss: torch.Tensor, kd_loss: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``alpha * kd + (1 - alpha) * task``; ``kd_loss=None`` (no teacher) is allowed only with ``alpha = 0``."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if kd_loss is None:
        if alpha != 0.0:
            raise ConfigError(f"distillation weight alpha={alpha} needs a teacher; set alpha to 0 to train without")
        return task_loss
    return alpha * kd_loss + (1.0 - alpha) * task_loss
