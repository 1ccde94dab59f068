"""Distillation of a frozen teacher into a shift-invariant student (``idcmap train
--distill-from``).

The teacher sees the *clean* training patch (with the same dihedral symmetry as the student's
sample, but no colour jitter and no scanner degradation); the student sees the clean patch or
one of its degraded copies, jittered. The loss pulls the student's IDC probability towards the
teacher's clean one, so the student keeps the teacher's answers (and with them an aggregator and
threshold fitted to the teacher) and gives them on shifted input too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DistillLoss(torch.nn.Module):
    """``weight`` · soft-target cross-entropy to the teacher's clean IDC probability
    + (1 − ``weight``) · class-weighted cross-entropy to the label.

    Called as ``loss(logits, labels)`` (validation batches: the label term only) or
    ``loss(logits, labels, teacher_p)`` (training batches carry the teacher's probability).
    """

    def __init__(self, weight: float, class_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight must be in [0, 1], got {weight}")
        self.weight = weight
        self.label_loss = torch.nn.CrossEntropyLoss(weight=class_weight)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, teacher_p: torch.Tensor | None = None
    ) -> torch.Tensor:
        label = self.label_loss(logits, labels)
        if teacher_p is None:
            return label
        t = teacher_p.float()
        # binary cross-entropy against a soft target = cross-entropy with class probabilities
        soft = F.cross_entropy(logits.float(), torch.stack([1 - t, t], 1))
        return self.weight * soft + (1 - self.weight) * label

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def frozen(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in eval mode with no parameter requiring a gradient (a teacher)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def teacher_probability(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's IDC probability of float N×3×H×W patches in [0, 1]."""
    return torch.softmax(teacher(x).float(), 1)[:, 1]
