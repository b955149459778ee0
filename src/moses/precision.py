"""Mixed precision: which one a run uses, and the autocast context for its forwards.

`precision` is "fp32", "bf16" or "auto". bf16 is autocast (`torch.autocast(device, dtype=torch.bfloat16)`),
as accelerate's `mixed_precision="bf16"` does: matmuls run in bf16, while the master weights (the adapter's
parameters, the mask scores) and the optimizer state stay fp32. "auto" picks bf16 where the hardware runs it
natively (a CPU with AVX512-BF16 or AMX, a GPU that reports bf16 support) and fp32 otherwise; on a CPU
without them bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from moses.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_field(name: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The first value of `name` in /proc/cpuinfo (None where the file or the field is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux, or no /proc
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.partition(":")[2].strip()
    return None


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The CPU's native bf16 instruction sets among AVX512-BF16 and AMX-BF16 (empty where unknown)."""
    flags = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return [f for f in _CPU_BF16_FLAGS if f in flags]


def resolve_precision(precision: str, device_type: str) -> tuple[str, str]:
    """("fp32" or "bf16", why): the precision a run on `device_type` ("cpu", "cuda", ...) uses."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, "asked for"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # set by `accelerate launch --mixed_precision`
    if launched in ("no", "bf16"):
        return ("bf16" if launched == "bf16" else "fp32"), f"accelerate launch --mixed_precision {launched}"
    if device_type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16", "the GPU supports bf16") if supported else ("fp32", "the GPU has no bf16")
    if device_type == "cpu":
        flags = cpu_bf16_flags()
        return ("bf16", f"the CPU has {', '.join(flags)}") if flags else ("fp32", "the CPU has no native bf16")
    return "fp32", f"no bf16 check for device {device_type!r}"


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context a forward or `generate` runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accelerate_mixed_precision(precision: str) -> str:
    """accelerate's name for it."""
    return "bf16" if precision == "bf16" else "no"


# bf16 copies of frozen weights, kept while the weight lives and is unchanged (its version counter)
_CASTS = WeakIdKeyDictionary()  # weight -> (its version, its bf16 copy as a frozen parameter), by identity


def _bf16_copy(weight: torch.Tensor) -> nn.Parameter:
    cached = _CASTS.get(weight)
    if cached is None or cached[0] != weight._version:
        cached = (weight._version, nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False))
        _CASTS[weight] = cached
    return cached[1]


@contextlib.contextmanager
def frozen_weights_cast(model: nn.Module, precision: str) -> Iterator[int]:
    """Under bf16, every frozen nn.Linear of `model` computes with a bf16 copy of its weight (and bias) for
    the duration; yields how many were swapped. Why: autocast keeps the bf16 cast of a weight only for
    leaves that require grad, so a frozen base model's projections (and a tied LM head) were cast again at
    every decoding step (benchmarks/precast.py). The copy is the cast autocast makes, so outputs are
    bit-identical; it is made once per weight (kept until the weight changes), and the original fp32
    parameters, ties included, are back on exit. Trainable weights are left to autocast."""
    if precision != "bf16":
        yield 0
        return
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            for name in ("weight", "bias"):
                original = getattr(module, name)
                if original is None or original.requires_grad or original.dtype != torch.float32:
                    continue
                setattr(module, name, _bf16_copy(original))
                swapped.append((module, name, original))
        yield len(swapped)
    finally:
        for module, name, original in reversed(swapped):
            setattr(module, name, original)
