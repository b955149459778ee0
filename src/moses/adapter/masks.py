"""Binary task masks: top-c selection with a straight-through gradient, bit packing, compression."""

from __future__ import annotations

import lzma
import math

import torch


def num_kept(numel: int, density: float) -> int:
    """Entries a mask keeps: floor(c * n) (at least one), so a task never owns more than c of a tensor."""
    return max(1, math.floor(density * numel + 1e-9))


def top_c_mask(scores: torch.Tensor, density: float, per_subexpert: bool = False) -> torch.Tensor:
    """Boolean mask of the `density` fraction of entries with the largest |score|.

    Per tensor by default; with `per_subexpert` the fraction is taken within each slice scores[i]
    (dim 0 indexes subexperts), so every subexpert keeps the same share. Ties break by index (topk).
    """
    flat = scores.detach().abs().reshape(scores.shape[0], -1) if per_subexpert else scores.detach().abs().reshape(1, -1)
    keep = num_kept(flat.shape[1], density)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep == flat.shape[1]:
        mask.fill_(True)
    else:
        mask.scatter_(1, flat.topk(keep, dim=1, sorted=False).indices, True)
    return mask.reshape(scores.shape)


class _StraightThroughTopC(torch.autograd.Function):
    """Forward: the binary top-c mask of |scores|. Backward: the mask's gradient passes to the scores
    unchanged (WSN, Kang et al. 2022), so scores of useful entries grow and enter the mask."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, density: float, per_subexpert: bool) -> torch.Tensor:
        return top_c_mask(scores, density, per_subexpert).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def straight_through_mask(scores: torch.Tensor, density: float, per_subexpert: bool = False) -> torch.Tensor:
    return _StraightThroughTopC.apply(scores, density, per_subexpert)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor of ceil(n / 8) bytes, most significant bit first (numpy.packbits order)."""
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.reshape(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (numel + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes of {packed.dtype}; shape {tuple(shape)} needs "
                         f"{(numel + 7) // 8} bytes of uint8")
    bits = packed.to("cpu").unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0)
    return bits.reshape(-1)[:numel].reshape(shape)


def compressed_size(packed_masks: list[torch.Tensor]) -> int:
    """Bytes of the bit-packed masks after a real entropy coder (LZMA, preset 9): measured, not estimated."""
    if not packed_masks:
        return 0
    stream = b"".join(p.numpy().tobytes() for p in packed_masks)
    return len(lzma.compress(stream, preset=9))
