"""Saving and loading a MoSEs adapter like a peft one: `adapter_config.json`, `adapter_model.safetensors`
(tensors keyed by module name) and `moses_tasks.json` (task names and state), each written atomically. A
mismatched or corrupt directory raises CheckpointError naming the file.

What is written is what exists. Reading R2: each task's own subexperts, its router over the earlier
subexperts and its transfer gate (task 0 has neither; all layers' routers of a task are one tensor, as are
its gates, since a key per layer would cost more header than they hold); no scores, no masks. Reading R1:
the pool as the tasks read it, the scores (they pick the next task's mask) and bit-packed masks. Plus TaIL's
prototypes and keys. `adapter_files` builds the three files' bytes, so `capacity()` reports exactly the bytes
`save_pretrained` writes. Adapters saved by the pool layout before 0.3.0 (R2 in one preallocated tensor) still load.

These functions take the layers, the task list and the prototypes, never the model (`model.py` calls them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from moses.adapter.config import CONFIG_NAME, MoSEsConfig
from moses.adapter.layer import MoSEsLayer, TaskContext
from moses.adapter.masks import pack_bits, unpack_bits
from moses.adapter.taskid import TaskPrototypes
from moses.adapter.tasks import TaskList
from moses.errors import CheckpointError
from moses.io import atomic_write, read_json

WEIGHTS_NAME = "adapter_model.safetensors"
TASKS_NAME = "moses_tasks.json"
Layers = Sequence[tuple[str, MoSEsLayer]]


def adapter_state_dict(layers: Layers, prototypes: TaskPrototypes) -> dict[str, torch.Tensor]:
    """Every tensor the adapter needs, keyed by module name."""
    state: dict[str, torch.Tensor] = {}
    dedicated = [la for _, la in layers if la.dedicated]
    for t in range(1, len(dedicated[0].own_A) if dedicated else 0):  # task 0 borrows nothing: no router, no gate
        # one tensor per task for all layers' routers (flattened, in module order) and one for their gates: a
        # key per layer would cost more header than the tensors hold
        state[f"routers.{t}"] = torch.cat([la.routers[t].detach().reshape(-1) for la in dedicated])
        state[f"transfer_gates.{t}"] = torch.stack([la.transfer_gates[t].detach() for la in dedicated])
    for name, la in layers:
        if la.dedicated:
            for t in range(len(la.own_A)):
                if not la.own_A[t].shape[0]:  # a task that only borrows owns nothing here
                    continue
                state[f"{name}.own_A.{t}"] = la.own_A[t].detach()
                state[f"{name}.own_B.{t}"] = la.own_B[t].detach()
            continue
        state[f"{name}.lora_A"], state[f"{name}.lora_B"] = la.stored_pool()
        state[f"{name}.scores_A"], state[f"{name}.scores_B"] = la.scores_A.detach(), la.scores_B.detach()
        for t, router in enumerate(la.routers):
            state[f"{name}.router.{t}"] = router.detach()
        for t in range(la.num_ended):
            mask_a, mask_b = la.task_mask(t)
            state[f"{name}.mask_A.{t}"] = pack_bits(mask_a)
            state[f"{name}.mask_B.{t}"] = pack_bits(mask_b)
    if prototypes.num_tasks:
        state["task_prototypes.sums"] = prototypes.sums
        state["task_prototypes.counts"] = prototypes.counts
        state["task_prototypes.keys"] = prototypes.keys
    return {k: v.contiguous().cpu() for k, v in state.items()}


def adapter_files(layers: Layers, tasks: TaskList, context: TaskContext, prototypes: TaskPrototypes,
                  config: MoSEsConfig, extra: dict[str, Any]) -> dict[str, bytes]:
    """{file name: bytes} of a saved adapter: what `save_adapter` writes and `capacity()` counts."""
    weights = save(adapter_state_dict(layers, prototypes), metadata={"format": "pt"})
    tasks_json = tasks.to_json(context.training, context.active)
    return {WEIGHTS_NAME: weights, CONFIG_NAME: config.to_json(extra).encode(),
            TASKS_NAME: (json.dumps(tasks_json, indent=2) + "\n").encode()}


def save_adapter(files: dict[str, bytes], directory: str | Path) -> None:
    """Write the files of `adapter_files`, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        atomic_write(directory / name, lambda tmp, payload=payload: tmp.write_bytes(payload))


def read_adapter(directory: str | Path, config: MoSEsConfig | None = None
                 ) -> tuple[MoSEsConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The saved config, task list (json) and tensors of an adapter directory. A `config` that differs from
    the saved one is an error."""
    directory = Path(directory)
    saved, _ = MoSEsConfig.load(directory)
    if config is not None and config != saved:
        diffs = [f"{k}: saved {v!r}, given {getattr(config, k)!r}" for k, v in saved.to_dict().items()
                 if getattr(config, k) != v]
        raise CheckpointError(f"{directory / CONFIG_NAME}: saved with another config ({'; '.join(diffs)})")
    tasks = _read_tasks(directory / TASKS_NAME)
    weights_path = directory / WEIGHTS_NAME
    try:
        state = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: corrupt or truncated safetensors file ({err})") from None
    return saved, tasks, state


def load_adapter_state(layers: Layers, prototypes: TaskPrototypes, state: dict[str, torch.Tensor],
                       tasks: TaskList, source: str) -> None:
    """Fill freshly wrapped layers (no tasks yet) and the prototypes from a saved state dict."""
    layer_map = dict(layers)
    dedicated = next(iter(layer_map.values())).dedicated
    if dedicated and any(k.endswith(".lora_A") for k in state):
        state = _from_pool_layout(layer_map, state, len(tasks))
    expected = (_dedicated_keys(layer_map, tasks) if dedicated
                else _entry_keys(layer_map, len(tasks), tasks.ended))
    optional = {"task_prototypes.sums", "task_prototypes.counts", "task_prototypes.keys"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected - optional)
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not match this model and adapter config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, la in layer_map.items():
            if not dedicated:
                for key in ("lora_A", "lora_B", "scores_A", "scores_B"):
                    _copy_checked(getattr(la, key), state[f"{name}.{key}"], f"{source}: {name}.{key}")
            for t in range(len(tasks)):
                la.add_task()
                if dedicated and not tasks.grew[t]:
                    la.drop_own_subexperts(t)
                    continue
                for key in ("own_A", "own_B") if dedicated else ("router",):
                    target = la.routers if key == "router" else getattr(la, key)
                    _copy_checked(target[t], state[f"{name}.{key}.{t}"], f"{source}: {name}.{key}.{t}")
            if dedicated:
                continue
            for t in range(tasks.ended):
                try:
                    masks = [unpack_bits(state[f"{name}.mask_{w}.{t}"], getattr(la, f"lora_{w}").shape)
                             for w in "AB"]
                except ValueError as err:
                    raise CheckpointError(f"{source}: {name}.mask.{t}: {err}") from None
                la.store_task_mask(t, *masks)
        if dedicated:
            _load_routers(list(layer_map.values()), state, len(tasks), source)
            for la in layer_map.values():
                for t in range(tasks.ended):
                    la.end_task(t)
    if "task_prototypes.sums" in state:
        sums, counts = state["task_prototypes.sums"], state["task_prototypes.counts"]
        if sums.dim() != 2 or sums.shape[1] != prototypes.sums.shape[1] or counts.shape != sums.shape[:1]:
            raise CheckpointError(f"{source}: task_prototypes has shape {tuple(sums.shape)}, model needs "
                                  f"(tasks, {prototypes.sums.shape[1]})")
        keys = state.get("task_prototypes.keys", torch.zeros_like(sums))
        if keys.shape != sums.shape:
            raise CheckpointError(f"{source}: task_prototypes.keys has shape {tuple(keys.shape)}, "
                                  f"expected {tuple(sums.shape)}")
        prototypes.sums = sums.to(prototypes.sums)
        prototypes.counts = counts.to(prototypes.counts)
        prototypes.keys = keys.to(prototypes.keys)


def _load_routers(layers: list[MoSEsLayer], state: dict[str, torch.Tensor], num_tasks: int, source: str) -> None:
    """R2: each task's routers and transfer gates from their one tensor per task (module order)."""
    for t in range(1, num_tasks):
        flat, gates = state[f"routers.{t}"], state[f"transfer_gates.{t}"]
        sizes = [la.routers[t].numel() for la in layers]
        if flat.dim() != 1 or flat.numel() != sum(sizes) or gates.shape != (len(layers),):
            raise CheckpointError(f"{source}: routers.{t} / transfer_gates.{t} have {flat.numel()} / "
                                  f"{gates.numel()} values, this model needs {sum(sizes)} / {len(layers)}")
        for la, router, gate in zip(layers, flat.split(sizes), gates, strict=True):
            la.routers[t].copy_(router.view_as(la.routers[t]))
            la.transfer_gates[t].copy_(gate)


def _dedicated_keys(layers: dict[str, MoSEsLayer], tasks: TaskList) -> set[str]:
    keys = {f"{n}.own_{w}.{t}" for n in layers for w in "AB" for t in range(len(tasks)) if tasks.grew[t]}
    return keys | {f"{k}.{t}" for k in ("routers", "transfer_gates") for t in range(1, len(tasks))}


def _entry_keys(layers: dict[str, MoSEsLayer], num_tasks: int, ended: int) -> set[str]:
    keys = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B", "scores_A", "scores_B")}
    keys |= {f"{n}.router.{t}" for n in layers for t in range(num_tasks)}
    return keys | {f"{n}.mask_{w}.{t}" for n in layers for w in "AB" for t in range(ended)}


def _from_pool_layout(layers: dict[str, MoSEsLayer], state: dict[str, torch.Tensor], num_tasks: int
                      ) -> dict[str, torch.Tensor]:
    """An R2 state dict saved by the pool layout (before 0.3.0) in the per-task layout. Task t owned pool rows
    t*n..(t+1)*n-1, and its router's logits were read for the t*n subexperts before them, from the features of
    the (t+1)*n it reads (or the hidden state): those are exactly the parameters of the per-task layout."""
    converted = {k: v for k, v in state.items() if k.startswith("task_prototypes.")}
    routers: dict[int, list[torch.Tensor]] = {t: [] for t in range(1, num_tasks)}
    gates: dict[int, list[torch.Tensor]] = {t: [] for t in range(1, num_tasks)}
    for name, la in layers.items():
        n, r = la.new_subexperts, la.rank
        pool_a, pool_b = state.get(f"{name}.lora_A"), state.get(f"{name}.lora_B")
        if pool_a is None or pool_b is None:
            raise CheckpointError(f"pool-layout adapter without {name}.lora_A / lora_B")
        for t in range(num_tasks):
            converted[f"{name}.own_A.{t}"] = pool_a[t * n:(t + 1) * n]
            converted[f"{name}.own_B.{t}"] = pool_b[t * n:(t + 1) * n]
            if t:
                router = state.get(f"{name}.router.{t}")
                if router is None or f"{name}.transfer_gate.{t}" not in state:
                    raise CheckpointError(f"pool-layout adapter without {name}.router.{t} / transfer_gate.{t}")
                columns = (t + 1) * n * r if la.router_inputs else router.shape[-1]
                kept = router[: t * n] if router.dim() == 1 else router[: t * n, :columns]
                routers[t].append(kept.reshape(-1))
                gates[t].append(state[f"{name}.transfer_gate.{t}"].reshape(()))
    for t in routers:
        converted[f"routers.{t}"], converted[f"transfer_gates.{t}"] = torch.cat(routers[t]), torch.stack(gates[t])
    return {k: v.contiguous() for k, v in converted.items()}


def _copy_checked(target: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if target.shape != value.shape:
        raise CheckpointError(f"{what}: saved shape {tuple(value.shape)}, model needs {tuple(target.shape)}")
    target.copy_(value)


def _read_tasks(path: Path) -> dict[str, Any]:
    tasks = read_json(path, CheckpointError)
    ok = (isinstance(tasks, dict) and isinstance(tasks.get("tasks"), list)
          and all(isinstance(t, str) for t in tasks["tasks"]) and isinstance(tasks.get("ended"), int)
          and 0 <= tasks["ended"] <= len(tasks["tasks"]))
    if not ok:
        raise CheckpointError(f"{path}: expected {{'tasks': [names], 'ended': int, 'training': name|null}}")
    grew = tasks.get("grew")
    if grew is not None and not (isinstance(grew, list) and len(grew) == len(tasks["tasks"])
                                 and all(isinstance(g, bool) for g in grew) and (not grew or grew[0])):
        raise CheckpointError(f"{path}: 'grew' must list true/false per task, true for the first")
    if tasks.get("training") is not None and tasks["training"] not in tasks["tasks"]:
        raise CheckpointError(f"{path}: training task {tasks['training']!r} is not in the task list")
    return tasks

