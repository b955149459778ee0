"""Export one task of a MoSEs adapter as a standard peft LoRA adapter (loadable by peft, vLLM, TGI, LoRAX).

With input-independent gates (`routing="task"`) a task's delta is exactly a LoRA:

    delta W = (alpha / r) sum_i g_i B_t[i] A_t[i] = B' A',  A' = [A_t[i]]_i stacked,  B' = (alpha / r) [g_i B_t[i]]_i

over the subexperts with a non-zero gate (the top-k of R1; R2's own subexperts and the borrowed ones times
the transfer gate), A_t and B_t already masked. A' has rank (chosen subexperts) x r; layers that choose fewer
are padded with zero rows, so one rank fits all. The scaling is folded into B' and peft's lora_alpha equals
its rank (scaling 1). A token-routed task mixes subexperts per token, so it has no exact LoRA: that is an
error, with the way out (train with routing="task").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from moses.errors import TaskError
from moses.io import atomic_write

if TYPE_CHECKING:
    from moses.adapter.model import MoSEsModel

PEFT_WEIGHTS = "adapter_model.safetensors"


def task_lora_factors(model: MoSEsModel, task: str | int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A' (rank, d_in), B' (d_out, rank))} of an ended, task-routed task, one rank for all."""
    index = model.task_index(task)
    name = model.tasks[index]
    if model.moses_config.routing != "task":
        raise TaskError(f"task {name!r} is token-routed (routing='token'): its subexpert mixture changes with every "
                        "token, so no single LoRA equals it; train with routing='task' (--option routing=task) to "
                        "export tasks as LoRA adapters")
    if index >= model._ended:
        raise TaskError(f"task {name!r} is still being trained: end_task() before exporting it")
    factors = {}
    with torch.no_grad():
        for module, layer in model.moses_layers():
            a, b = layer.task_weights(index)
            gates = layer.gates(a.new_zeros(layer.in_features), index).detach().float()
            chosen = gates.nonzero().flatten()
            stacked_a = a[chosen].reshape(-1, layer.in_features)
            stacked_b = (b[chosen] * gates[chosen, None, None] * layer.scaling).permute(1, 0, 2)
            factors[module] = (stacked_a, stacked_b.reshape(layer.out_features, -1))
    rank = max(1, max(a.shape[0] for a, _ in factors.values()))
    for module, (a, b) in factors.items():  # zero rows of A' and columns of B' add nothing to delta W
        factors[module] = (torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])]).contiguous(),
                           torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1).contiguous())
    return factors


def export_task_lora(model: MoSEsModel, task: str | int, directory: str | Path) -> Path:
    """Write task `task` as `adapter_config.json` + `adapter_model.safetensors` in peft's format."""
    from peft import LoraConfig

    directory = Path(directory)
    factors = task_lora_factors(model, task)
    rank = next(iter(factors.values()))[0].shape[0]
    conv1d = any(not isinstance(layer.base_layer, torch.nn.Linear) for _, layer in model.moses_layers())
    base_name = getattr(getattr(model.model, "config", None), "_name_or_path", None) or None
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(factors), lora_dropout=0.0, bias="none",
                        fan_in_fan_out=conv1d, base_model_name_or_path=base_name, task_type="CAUSAL_LM")
    state = {}
    for module, (a, b) in factors.items():
        state[f"base_model.model.{module}.lora_A.weight"] = a.cpu()
        state[f"base_model.model.{module}.lora_B.weight"] = b.cpu()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / PEFT_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config.save_pretrained(str(directory))
    return directory
