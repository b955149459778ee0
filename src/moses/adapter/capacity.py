"""Capacity of a MoSEs adapter (spec E8): pool usage, what each task owns and reuses, and stored bytes
against per-task LoRAs of the same active rank."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from moses.adapter.masks import compressed_size, pack_bits
from moses.adapter.save_load import stored_mask

if TYPE_CHECKING:
    from moses.adapter.model import MoSEsModel


def capacity_report(model: MoSEsModel) -> dict[str, Any]:
    """Pool usage and storage after the ended tasks, against per-task LoRAs of the same active rank."""
    layers = [layer for _, layer in model.moses_layers()]
    ended = model._ended
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
                packed.append(pack_bits(stored_mask(la, mask)))
        reuse.append(row)
        active = sum(row)
        per_task.append({"name": model._task_names[t], "active_entries": active, "owned_entries": row[t],
                         "reused_entries": active - row[t],
                         "mask_moved": model.mask_moved[t] if t < len(model.mask_moved) else None})
        if model.moses_config.ownership == "subexperts":  # how much the task borrows (R2)
            gates = [abs(la.transfer_gates[t].item()) for la in layers]
            per_task[-1]["transfer_gate_mean_abs"] = sum(gates) / len(gates)
            source = model.own_init_sources[t] if t < len(model.own_init_sources) else None
            per_task[-1]["own_init_from"] = None if source is None else model._task_names[source]
    used = sum(int(la.frozen_A.sum() + la.frozen_B.sum()) for la in layers)
    router_bytes = sum(p.numel() * p.element_size() for la in layers
                       for p in [*la.routers[:ended], *la.transfer_gates[:ended]])
    masks_raw = sum(p.numel() for p in packed)
    masks_compressed = compressed_size(packed)
    lora_rank = model.moses_config.top_k * model.moses_config.rank
    lora_bytes = ended * sum(lora_rank * (la.in_features + la.out_features) for la in layers) * elem
    return {
        "num_tasks": ended,
        "pool_entries": pool,
        "used_entries": used,
        "used_fraction": used / pool,
        "tasks": per_task,
        "reuse_matrix": reuse,
        "pool_bytes": used * elem,
        "mask_bytes_raw": masks_raw,
        "mask_bytes_compressed": masks_compressed,
        "router_bytes": router_bytes,
        "stored_bytes_raw": used * elem + masks_raw + router_bytes,
        "stored_bytes_compressed": used * elem + masks_compressed + router_bytes,
        "lora_per_task_rank": lora_rank,
        "lora_per_task_bytes": lora_bytes,
    }
