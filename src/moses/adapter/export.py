"""Export one task of a MoSEs adapter as a standard peft LoRA adapter (loadable by peft, vLLM, TGI, LoRAX).

Where a task's gates do not depend on the input, its delta is exactly a LoRA:

    delta W = (alpha / r) sum_i g_i B_t[i] A_t[i] = B' A',  A' = [A_t[i]]_i stacked,  B' = (alpha / r) [g_i B_t[i]]_i

over the subexperts with a non-zero gate, A_t and B_t already masked (R1). That holds with `routing="task"`,
and under R2 for every layer where the task borrows nothing: task 0 always, and any task whose transfer gate
is 0 there (its own subexperts have gate 1). A' has rank (chosen subexperts) x r; layers that choose fewer are
padded with zero rows, so one rank fits all. The scaling is folded into B' and peft's lora_alpha equals its
rank (scaling 1). A token-routed task that borrows mixes subexperts per token and has no exact LoRA; with its
mean gates over its training prompts folded in instead (`moses export --approximate`) it has an approximate
one, whose agreement with MoSEs the runner measures (runner/export.py).

These functions take the layers and the task list, not the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from moses.adapter.layer import MoSEsLayer
from moses.adapter.tasks import TaskList
from moses.errors import TaskError
from moses.io import atomic_write

Layers = Sequence[tuple[str, MoSEsLayer]]

PEFT_WEIGHTS = "adapter_model.safetensors"


def exact_gates(layer: MoSEsLayer, task: int) -> torch.Tensor | None:
    """The task's gates over the subexperts it reads in this layer when they do not depend on the input (None:
    they do)."""
    if layer.routing == "task":
        return layer.task_gates(task).float()
    if layer.dedicated and (task == 0 or float(layer.transfer_gates[task]) == 0.0):
        borrowed, own = layer.borrowable(task), layer.own_A[task].shape[0]
        return torch.cat([torch.zeros(borrowed), torch.ones(own)]).to(layer.own_A[task].device)
    return None


def task_lora_factors(layers: Layers, tasks: TaskList, task: str | int,
                      mean_gates: Mapping[str, torch.Tensor] | None = None
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A' (rank, d_in), B' (d_out, rank))} of an ended task, one rank for all layers. Where
    the gates depend on the input, `mean_gates[module]` (the task's mean gates, `mean_task_gates`) are folded
    in instead: an approximation; without them that is an error."""
    index = tasks.index(task)
    name = tasks.names[index]
    if index >= tasks.ended:
        raise TaskError(f"task {name!r} is still being trained: end_task() before exporting it")
    factors = {}
    with torch.no_grad():
        for module, layer in layers:
            gates = exact_gates(layer, index)
            if gates is None and mean_gates is not None:
                gates = mean_gates[module].to(layer.base_layer.weight.device)
            if gates is None:
                why = (f"borrows earlier subexperts (transfer gate {float(layer.transfer_gates[index]):.3g} in "
                       f"{module})" if layer.dedicated else "routes every token")
                raise TaskError(f"task {name!r} is token-routed (routing='token') and {why}: its subexpert mixture "
                                "changes with every token, so no single LoRA equals it; export it with "
                                "--approximate (its mean routing folded in), or train with routing='task' "
                                "(--option routing=task)")
            a, b = layer.subexperts(index)
            chosen = gates.nonzero().flatten()
            stacked_a = a[chosen].reshape(-1, layer.in_features)
            stacked_b = (b[chosen] * gates[chosen, None, None] * layer.scaling).permute(1, 0, 2)
            factors[module] = (stacked_a, stacked_b.reshape(layer.out_features, -1))
    rank = max(1, max(a.shape[0] for a, _ in factors.values()))
    for module, (a, b) in factors.items():  # zero rows of A' and columns of B' add nothing to delta W
        factors[module] = (torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])]).contiguous(),
                           torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1).contiguous())
    return factors


def write_peft_lora(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], conv1d: bool, base_name: str | None,
                    directory: str | Path) -> Path:
    """Write LoRA factors as `adapter_config.json` + `adapter_model.safetensors` in peft's format."""
    from peft import LoraConfig

    directory = Path(directory)
    rank = next(iter(factors.values()))[0].shape[0]
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
