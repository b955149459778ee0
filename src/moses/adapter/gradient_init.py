"""A fresh low-rank adapter's down-projection A from the loss gradient of the weight it adapts.

With B = 0 the adapter starts at delta 0 and B's first gradient is G A^T (G = dL/dW of the base weight,
[d_out, d_in]). Taking A's rows as the top right-singular vectors of G makes that gradient, and so B's first
steps, capture the largest share of the full fine-tuning gradient a rank-r adapter can: the idea of LoRA-GA
(Wang et al., 2024, arXiv:2407.05000) and LoRA-One (Zhang et al., 2025, arXiv:2502.01235), here without
changing the base weight (B stays 0), so old tasks and the start at delta 0 are untouched. The rows keep the
expected norm of the uniform draw (kaiming-uniform, bound 1/sqrt(d_in): row norm 1/sqrt(3)), so only their
direction changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

UNIFORM_ROW_NORM = 1 / math.sqrt(3)


def weight_gradients(loss_of: Callable[[], torch.Tensor], layers: Sequence[nn.Module]) -> list[torch.Tensor]:
    """d loss_of() / d W of each (frozen) projection's weight as [d_out, d_in] (an nn.Linear's layout; a
    transformers Conv1D stores [d_in, d_out]), without storing gradients anywhere or changing which
    parameters train."""
    weights = [layer.weight for layer in layers]
    was_trainable = [w.requires_grad for w in weights]
    try:
        for weight in weights:
            weight.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_of(), weights)
    finally:
        for weight, trainable in zip(weights, was_trainable, strict=True):
            weight.requires_grad_(trainable)
    return [g if isinstance(layer, nn.Linear) else g.T for layer, g in zip(layers, grads, strict=True)]


def aligned_rows(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`rows` ([k, d_in], a uniform draw) with its first min(k, rank) rows replaced by the top right-singular
    vectors of `grad` ([d_out, d_in]) at the uniform draw's expected norm."""
    _, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    k = min(rows.shape[0], vh.shape[0])
    aligned = rows.detach().clone()
    aligned[:k] = (vh[:k] * UNIFORM_ROW_NORM).to(aligned.dtype)
    return aligned
