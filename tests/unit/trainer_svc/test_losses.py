"""The distillation loss: alpha T^2 KL(teacher || student) + (1 - alpha) CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer_svc.losses import distillation_loss

pytestmark = pytest.mark.unit


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=g)
    teacher = torch.randn(8, 10, generator=g) * 3
    labels = torch.randint(0, 10, (8,), generator=g)
    return student, teacher, labels


def test_alpha_zero_is_plain_cross_entropy(logits) -> None:
    student, teacher, labels = logits
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=6.0)
    torch.testing.assert_close(loss, F.cross_entropy(student, labels))


def test_matches_the_formula_by_hand(logits) -> None:
    student, teacher, labels = logits
    alpha, t = 0.95, 6.0
    p_t = F.softmax(teacher / t, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / t, dim=1))).sum(dim=1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, alpha, t), expected)


def test_the_soft_term_vanishes_when_student_equals_teacher(logits) -> None:
    _, teacher, labels = logits
    loss = distillation_loss(teacher.clone(), teacher, labels, alpha=1.0, temperature=4.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher(logits) -> None:
    student, teacher, labels = logits
    student = student.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    distillation_loss(student, teacher, labels, 0.5, 2.0).backward()
    assert student.grad is not None and teacher.grad is None
