"""Saving and loading a MoSEs adapter like a peft one: `adapter_config.json`, `adapter_model.safetensors`
(tensors keyed by module name, masks bit-packed) and `moses_tasks.json` (task names and state), each written
atomically. A mismatched or corrupt directory raises CheckpointError naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moses.adapter.config import MoSEsConfig
from moses.adapter.layer import MoSEsLayer
from moses.adapter.masks import pack_bits, unpack_bits
from moses.errors import CheckpointError
from moses.io import atomic_write, atomic_write_text, read_json

if TYPE_CHECKING:
    from moses.adapter.model import MoSEsModel

WEIGHTS_NAME = "adapter_model.safetensors"
TASKS_NAME = "moses_tasks.json"


def adapter_state_dict(model: MoSEsModel) -> dict[str, torch.Tensor]:
    """Every tensor the adapter needs, keyed by module name; masks bit-packed (uint8)."""
    state: dict[str, torch.Tensor] = {}
    for name, la in model.moses_layers():
        for key in ("lora_A", "lora_B", "scores_A", "scores_B"):
            state[f"{name}.{key}"] = getattr(la, key).detach()
        for t, router in enumerate(la.routers):
            state[f"{name}.router.{t}"] = router.detach()
        for t, gate in enumerate(la.transfer_gates):
            state[f"{name}.transfer_gate.{t}"] = gate.detach()
        for t in range(la.num_stored_masks):
            mask_a, mask_b = la.task_mask(t)
            state[f"{name}.mask_A.{t}"] = pack_bits(stored_mask(la, mask_a))
            state[f"{name}.mask_B.{t}"] = pack_bits(stored_mask(la, mask_b))
    if model.prototypes.num_tasks:
        state["task_prototypes.sums"] = model.prototypes.sums
        state["task_prototypes.counts"] = model.prototypes.counts
        state["task_prototypes.keys"] = model.prototypes.keys
    return {k: v.contiguous().cpu() for k, v in state.items()}

def save_adapter(model: MoSEsModel, directory: str | Path) -> None:
    """Write adapter_config.json, adapter_model.safetensors and moses_tasks.json, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    base_name = getattr(getattr(model.model, "config", None), "_name_or_path", None)
    model.moses_config.save(directory, {"base_model_name_or_path": base_name,
                                       "resolved_target_modules": model.resolved_targets})
    tasks = {"tasks": model._task_names, "ended": model._ended, "training": model.training_task,
             "active": model.active_task, "mask_moved": model.mask_moved, "own_init_sources": model.own_init_sources}
    atomic_write_text(directory / TASKS_NAME, json.dumps(tasks, indent=2) + "\n")

def load_adapter(cls: type[MoSEsModel], model: nn.Module, directory: str | Path,
                 config: MoSEsConfig | None = None) -> MoSEsModel:
    """Wrap `model` and load a saved adapter. A `config` that differs from the saved one is an error."""
    directory = Path(directory)
    saved, _ = MoSEsConfig.load(directory)
    if config is not None and config != saved:
        diffs = [f"{k}: saved {v!r}, given {getattr(config, k)!r}" for k, v in saved.to_dict().items()
                 if getattr(config, k) != v]
        raise CheckpointError(f"{directory / 'adapter_config.json'}: saved with another config "
                              f"({'; '.join(diffs)})")
    tasks = _read_tasks(directory / TASKS_NAME)
    weights_path = directory / WEIGHTS_NAME
    try:
        state = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: corrupt or truncated safetensors file ({err})") from None
    wrapped = cls(model, saved)
    load_adapter_state(wrapped, state, tasks, source=str(weights_path))
    return wrapped

def load_adapter_state(model: MoSEsModel, state: dict[str, torch.Tensor], tasks: dict[str, Any],
                       source: str) -> None:
    names, ended, training = tasks["tasks"], tasks["ended"], tasks["training"]
    layers = dict(model.moses_layers())
    expected = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B", "scores_A", "scores_B")}
    expected |= {f"{n}.router.{t}" for n in layers for t in range(len(names))}
    if model.moses_config.ownership == "subexperts":
        expected |= {f"{n}.transfer_gate.{t}" for n in layers for t in range(len(names))}
    expected |= {f"{n}.mask_{w}.{t}" for n in layers for w in "AB" for t in range(ended)}
    optional = {"task_prototypes.sums", "task_prototypes.counts", "task_prototypes.keys"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected - optional)
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not match this model and adapter config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, la in layers.items():
            for key in ("lora_A", "lora_B", "scores_A", "scores_B"):
                _copy_checked(getattr(la, key), state[f"{name}.{key}"], f"{source}: {name}.{key}")
            for t in range(len(names)):
                la.add_router()
                _copy_checked(la.routers[t], state[f"{name}.router.{t}"], f"{source}: {name}.router.{t}")
                if la.dedicated:
                    key = f"{name}.transfer_gate.{t}"
                    _copy_checked(la.transfer_gates[t], state[key], f"{source}: {key}")
            for t in range(ended):
                try:
                    masks = [_expand_mask(la, state[f"{name}.mask_{w}.{t}"], getattr(la, f"lora_{w}").shape)
                             for w in "AB"]
                except ValueError as err:
                    raise CheckpointError(f"{source}: {name}.mask.{t}: {err}") from None
                la.store_task_mask(t, *masks)
    if "task_prototypes.sums" in state:
        sums, counts = state["task_prototypes.sums"], state["task_prototypes.counts"]
        if sums.dim() != 2 or sums.shape[1] != model.prototypes.sums.shape[1] or counts.shape != sums.shape[:1]:
            raise CheckpointError(f"{source}: task_prototypes has shape {tuple(sums.shape)}, model needs "
                                  f"(tasks, {model.prototypes.sums.shape[1]})")
        model.prototypes.sums = sums.to(model.prototypes.sums)
        model.prototypes.counts = counts.to(model.prototypes.counts)
        keys = state.get("task_prototypes.keys", torch.zeros_like(sums))
        if keys.shape != sums.shape:
            raise CheckpointError(f"{source}: task_prototypes.keys has shape {tuple(keys.shape)}, "
                                  f"expected {tuple(sums.shape)}")
        model.prototypes.keys = keys.to(model.prototypes.keys)
    model._task_names = list(names)
    model._ended = ended
    moved = tasks.get("mask_moved")
    model.mask_moved = list(moved) if isinstance(moved, list) else [None] * ended
    sources = tasks.get("own_init_sources")
    model.own_init_sources = list(sources) if isinstance(sources, list) else [None] * len(names)
    model.context.training = None if training is None else model.task_index(training)
    active = tasks.get("active")
    model.context.active = None if active is None else model.task_index(active)


def stored_mask(layer: MoSEsLayer, mask: torch.Tensor) -> torch.Tensor:
    """What is stored of a task mask: every entry (R1), or one bit per subexpert (R2: whole subexperts)."""
    return mask[:, 0, 0] if layer.dedicated else mask


def _expand_mask(layer: MoSEsLayer, packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The full mask from what `stored_mask` kept."""
    if not layer.dedicated:
        return unpack_bits(packed, shape)
    return unpack_bits(packed, (shape[0],))[:, None, None].expand(shape)


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
    if tasks.get("training") is not None and tasks["training"] not in tasks["tasks"]:
        raise CheckpointError(f"{path}: training task {tasks['training']!r} is not in the task list")
    return tasks
