"""Where a run was measured: timings and the precision `auto` picks depend on the machine, and sessions do not
always get the same one (an AVX2-only CPU runs bf16 autocast ~27x slower than fp32 instead of ~2x faster)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from moses.precision import cpu_bf16_flags, cpuinfo_field


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("unknown" where /proc/cpuinfo is missing or says nothing)."""
    return cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown"


def describe_machine(device_type: str) -> dict[str, Any]:
    """The facts a timing depends on, saved in a run's results.json."""
    facts: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "cpu_bf16": cpu_bf16_flags(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                             "torch": torch.__version__}
    if device_type == "cuda" and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts
