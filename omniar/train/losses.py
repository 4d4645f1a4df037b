"""Training losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from omniar.stream.collate import IGNORE


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each position (shape of `labels`; 0 where the label is IGNORE)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="none").reshape(labels.shape)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """sum_t w_t * CE_t / sum_t w_t over positions with a label (AR-Omni's task-aware form; w = 1 is plain CE)."""
    ce = token_cross_entropy(logits, labels).reshape(-1)
    valid = (labels.reshape(-1) != IGNORE).float()
    w = valid if weights is None else weights.reshape(-1).float() * valid
    return (ce * w).sum() / w.sum().clamp(min=1e-8)


def feature_distillation(pred: Tensor, target: Tensor) -> Tensor:
    """OneCAT's understanding-distillation loss between student and teacher features (N, d): MSE + 1 - cosine."""
    return F.mse_loss(pred, target) + (1 - F.cosine_similarity(pred, target, -1)).mean()
