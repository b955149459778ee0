"""Capacity of a MoSEs adapter (spec E8): what each task owns and reuses, and the bytes the adapter writes,
against per-task LoRAs of the same active rank. Takes the layers and the task list, not the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from moses.adapter.layer import MoSEsLayer
from moses.adapter.masks import compressed_size, pack_bits
from moses.adapter.tasks import TaskList


def capacity_report(layers: Sequence[MoSEsLayer], tasks: TaskList, top_k: int, rank: int,
                    written_bytes: int) -> dict[str, Any]:
    """Entries owned and reused per task, and storage after the ended tasks. `stored_bytes` is
    `written_bytes`, the size of the files `save_pretrained` writes now (`adapter_files`)."""
    report = (_dedicated_usage(layers, tasks) if layers[0].dedicated else _entry_usage(layers, tasks))
    lora_rank = top_k * rank
    elem = 4  # fp32, as the adapters are kept and saved
    lora_bytes = tasks.ended * sum(lora_rank * (la.in_features + la.out_features) for la in layers) * elem
    return {"num_tasks": tasks.ended, **report, "stored_bytes": written_bytes, "lora_per_task_rank": lora_rank,
            "lora_per_task_bytes": lora_bytes}


def _dedicated_usage(layers: Sequence[MoSEsLayer], tasks: TaskList) -> dict[str, Any]:
    """R2: every task owns its subexperts and reads every earlier task's whole; nothing is masked."""
    ended = tasks.ended
    owned = [sum(la.own_A[t].numel() + la.own_B[t].numel() for la in layers) for t in range(ended)]
    reuse = [owned[: t + 1] for t in range(ended)]
    per_task = []
    for t in range(ended):
        source = tasks.own_init_sources[t] if t < len(tasks.own_init_sources) else None
        gates = [abs(float(la.transfer_gates[t])) for la in layers]
        read = tasks.read_from[t] if t < len(tasks.read_from) else None
        per_task.append({"name": tasks.names[t], "active_entries": sum(reuse[t]), "owned_entries": owned[t],
                         "reused_entries": sum(reuse[t]) - owned[t], "mask_moved": 0.0,
                         "transfer_gate_mean_abs": sum(gates) / len(gates),
                         "own_init_from": None if source is None else tasks.names[source],
                         "own_subexperts": layers[0].own_A[t].shape[0],
                         "read_from": None if read is None else tasks.names[read]})
    router_bytes = sum(p.numel() * p.element_size() for la in layers
                       for p in [*la.routers[1:ended], *la.transfer_gates[1:ended]])
    used = sum(owned)
    subexpert_bytes = sum(p.numel() * p.element_size() for la in layers for p in [*la.own_A[:ended], *la.own_B[:ended]])
    return {"pool_entries": used, "used_entries": used, "used_fraction": 1.0 if used else 0.0, "tasks": per_task,
            "subexperts_per_projection": sum(layers[0].own_counts()[:ended]),
            "gate_matrix": _gate_matrix(layers, ended) if layers[0].routing == "task" else None,
            "reuse_matrix": reuse, "pool_bytes": subexpert_bytes, "mask_bytes_raw": 0, "mask_bytes_compressed": 0,
            "router_bytes": router_bytes, "stored_bytes_raw": subexpert_bytes + router_bytes,
            "stored_bytes_compressed": subexpert_bytes + router_bytes}


def _gate_matrix(layers: Sequence[MoSEsLayer], ended: int) -> list[list[float]]:
    """Task routing: row t, the gate task t puts on each task's subexperts (summed over them, averaged over the
    layers); s < t is what it borrows, s = t its own (1 when it owns subexperts, else 0)."""
    matrix = []
    for t in range(ended):
        row = [0.0] * (t + 1)
        for layer in layers:
            gates, counts, start = layer.task_gates(t).float(), layer.own_counts(), 0
            for s in range(t + 1):
                row[s] += float(gates[start: start + counts[s]].sum()) / len(layers)
                start += counts[s]
        matrix.append(row)
    return matrix


def _entry_usage(layers: Sequence[MoSEsLayer], tasks: TaskList) -> dict[str, Any]:
    """R1: entries of the shared pool under each task's mask, by the task that first took them."""
    ended = tasks.ended
    pool = sum(la.lora_A.numel() + la.lora_B.numel() for la in layers)
    elem = layers[0].lora_A.element_size()
    per_task, packed = [], []
    # owner[j][i]: index of the task that first took each entry of layer i's A (j=0) or B (j=1); -1 free
    owner = ([torch.full_like(la.lora_A, -1, dtype=torch.int16) for la in layers],
             [torch.full_like(la.lora_B, -1, dtype=torch.int16) for la in layers])
    reuse = []  # reuse[t][s]: entries of task t's masks that task s owns (s = t: its own new entries)
    for t in range(ended):
        row = [0] * (t + 1)
        for i, la in enumerate(layers):
            for j, mask in enumerate(la.task_mask(t)):
                owners = owner[j][i]
                owners[mask & (owners < 0)] = t
                row = [c + int((mask & (owners == s)).sum()) for s, c in enumerate(row)]
                packed.append(pack_bits(mask))
        reuse.append(row)
        active = sum(row)
        per_task.append({"name": tasks.names[t], "active_entries": active, "owned_entries": row[t],
                         "reused_entries": active - row[t],
                         "mask_moved": tasks.mask_moved[t] if t < len(tasks.mask_moved) else None})
    used = sum(int(la.frozen_A.sum() + la.frozen_B.sum()) for la in layers)
    router_bytes = sum(p.numel() * p.element_size() for la in layers for p in la.routers[:ended])
    masks_raw = sum(p.numel() for p in packed)
    masks_compressed = compressed_size(packed)
    return {"pool_entries": pool, "used_entries": used, "used_fraction": used / pool, "tasks": per_task,
            "reuse_matrix": reuse, "pool_bytes": used * elem, "mask_bytes_raw": masks_raw,
            "mask_bytes_compressed": masks_compressed, "router_bytes": router_bytes,
            "stored_bytes_raw": used * elem + masks_raw + router_bytes,
            "stored_bytes_compressed": used * elem + masks_compressed + router_bytes}
