"""The QAT loss with knowledge distillation (METHODS.md section 6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(
    student: Tensor, teacher: Tensor, labels: Tensor, alpha: float, temperature: float
) -> Tensor:
    """alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y).

    The T^2 keeps the soft term's gradients the size of the hard term's as T
    grows (Hinton et al. 2015); the KL is averaged over the batch.
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard
