"""Losses against values computed by hand on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from m2e_core.errors import ConfigError
from training.losses import (
    bernoulli_kd,
    combine,
    distillation_loss,
    softmax_kd,
    tag_class_weights,
    va_mse,
    weighted_bce,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_class_weights_follow_label_frequency():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32)
    weights = tag_class_weights(targets)
    assert weights.frequency.tolist() == pytest.approx([0.25, 0.5])
    assert weights.pos_weight.tolist() == pytest.approx([4.0, 2.0])
    assert weights.weight.tolist() == pytest.approx([2 * 0.25 / 1.25, 2 * 0.5 / 1.5])
    empty = tag_class_weights(np.zeros((3, 1)))
    assert float(empty.weight[0]) < 1e-5  # a tag without positives contributes almost nothing
    with pytest.raises(ConfigError):
        tag_class_weights(np.zeros((0, 2)))


def test_weighted_bce_by_hand():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = tag_class_weights(np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32))
    pos_weight, weight = [4.0, 2.0], [0.4, 2 / 3]
    expected = 0.0
    for row in range(2):
        for tag in range(2):
            p = _sigmoid(float(logits[row, tag]))
            y = float(targets[row, tag])
            expected += -weight[tag] * (pos_weight[tag] * y * math.log(p) + (1 - y) * math.log(1 - p))
    assert float(weighted_bce(logits, targets, weights)) == pytest.approx(expected / 4, rel=1e-6)
    plain = (-math.log(_sigmoid(0.5)) - math.log(1 - _sigmoid(-1.0)) - math.log(1 - _sigmoid(2.0))
             - math.log(_sigmoid(0.0)))
    assert float(weighted_bce(logits, targets, None)) == pytest.approx(plain / 4, rel=1e-6)


def test_bernoulli_kd_by_hand():
    student = torch.tensor([[0.0, 1.0, -2.0]])
    teacher = torch.tensor([[1.0, 1.0, 3.0]])
    for temperature in (1.0, 2.0):
        expected = 0.0
        for s, t in zip(student[0].tolist(), teacher[0].tolist()):
            ps, pt = _sigmoid(s / temperature), _sigmoid(t / temperature)
            expected += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
        expected = expected / 3 * temperature**2
        assert float(bernoulli_kd(student, teacher, temperature)) == pytest.approx(expected, rel=1e-5)
    assert float(bernoulli_kd(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    mask = torch.tensor([True, False, True])
    both = float(bernoulli_kd(student[:, [0, 2]], teacher[:, [0, 2]]))
    assert float(bernoulli_kd(student, teacher, tag_mask=mask)) == pytest.approx(both)
    with pytest.raises(ConfigError):
        bernoulli_kd(student, teacher, tag_mask=torch.zeros(3, dtype=torch.bool))
    # Stable for confident logits.
    assert math.isfinite(float(bernoulli_kd(torch.tensor([[-80.0]]), torch.tensor([[80.0]]))))


def test_softmax_kd_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for temperature in (1.0, 3.0):
        total = 0.0
        for s_row, t_row in zip(student.tolist(), teacher.tolist()):
            s_exp = [math.exp(v / temperature) for v in s_row]
            t_exp = [math.exp(v / temperature) for v in t_row]
            q = [v / sum(s_exp) for v in s_exp]
            p = [v / sum(t_exp) for v in t_exp]
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        expected = total / 2 * temperature**2
        assert float(softmax_kd(student, teacher, temperature)) == pytest.approx(expected, rel=1e-5)


def test_distillation_variants_per_task():
    student_va = torch.tensor([[5.0, 3.0], [6.0, 7.0]])
    teacher_va = torch.tensor([[4.0, 3.5], [6.0, 8.0]])
    expected_mse = (1.0 + 0.25 + 0.0 + 1.0) / 4
    assert float(distillation_loss("va", student_va, teacher_va)) == pytest.approx(expected_mse)
    assert float(distillation_loss("va", student_va, teacher_va, variant="upstream")) == pytest.approx(
        float(softmax_kd(student_va, teacher_va)))
    logits = torch.tensor([[0.3, -0.2]])
    assert float(distillation_loss("tags", logits, logits + 1)) == pytest.approx(float(bernoulli_kd(logits, logits + 1)))
    with pytest.raises(ConfigError):
        distillation_loss("tags", logits, logits, variant="other")
    with pytest.raises(ConfigError):
        distillation_loss("tags", logits, torch.zeros(1, 3))
    with pytest.raises(ConfigError):
        softmax_kd(logits, logits, 0.0)


def test_va_mse_and_alpha_mixing():
    assert float(va_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]]))) == pytest.approx(2.5)
    task, kd = torch.tensor(2.0), torch.tensor(10.0)
    assert float(combine(task, kd, 0.8)) == pytest.approx(0.8 * 10 + 0.2 * 2)
    assert float(combine(task, None, 0.0)) == 2.0
    with pytest.raises(ConfigError, match="teacher"):
        combine(task, None, 0.8)
    with pytest.raises(ConfigError):
        combine(task, kd, 1.5)
    # The teacher's outputs carry no gradient.
    student = torch.tensor([[0.5, 0.1]], requires_grad=True)
    teacher = torch.tensor([[0.2, 0.9]], requires_grad=True)
    distillation_loss("tags", student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
