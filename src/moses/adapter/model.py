"""MoSEsModel: wraps a Hugging Face causal LM, owns the task list, saves and loads like a peft adapter."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moses.adapter.config import ATTENTION_TARGETS_BY_MODEL_TYPE, DEFAULT_TARGETS, MoSEsConfig
from moses.adapter.layer import Conv1D, MoSEsLayer, TaskContext
from moses.adapter.masks import compressed_size, pack_bits, unpack_bits
from moses.adapter.taskid import TaskPrototypes, embed_prompts
from moses.errors import CheckpointError, ConfigError, TaskError
from moses.io import atomic_write, atomic_write_text, read_json

WEIGHTS_NAME = "adapter_model.safetensors"
TASKS_NAME = "moses_tasks.json"
TaskIds = Sequence[str | int] | torch.Tensor
TASK_INFERENCE_RULES = ("prototype", "keys")


def _check_inference_rule(rule: str) -> None:
    if rule not in TASK_INFERENCE_RULES:
        raise ConfigError(f"task inference rule {rule!r}: must be one of {', '.join(TASK_INFERENCE_RULES)}")


def resolve_targets(model: nn.Module, config: MoSEsConfig) -> list[str] | str:
    """The config's targets, or the architecture's attention projections when the default matches nothing."""
    targets = config.target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if list(targets) == list(DEFAULT_TARGETS) and model_type in ATTENTION_TARGETS_BY_MODEL_TYPE:
        return list(ATTENTION_TARGETS_BY_MODEL_TYPE[model_type])
    return targets


def is_target(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a string is a regex matched against the full module name; a list matches name suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


class MoSEsModel(nn.Module):
    """A causal LM whose targeted projections are MoSEs layers.

    Task order is the order of `add_task`. Everything not defined here (generation settings, `config`,
    `device`, ...) forwards to the wrapped model, as with a peft model.
    """

    def __init__(self, model: nn.Module, config: MoSEsConfig) -> None:
        super().__init__()
        self.moses_config = config
        self.context = TaskContext()
        self._task_names: list[str] = []
        self._ended = 0  # tasks 0.._ended-1 are ended (frozen)
        self.mask_moved: list[float | None] = []  # per ended task: share of its final mask not in its first
        targets = resolve_targets(model, config)
        for param in model.parameters():
            param.requires_grad_(False)
        wrapped = []
        for name, module in list(model.named_modules()):
            if is_target(name, targets) and not isinstance(module, MoSEsLayer):
                if not isinstance(module, (nn.Linear, Conv1D)):
                    raise ConfigError(f"MoSEsConfig.target_modules matches {name!r}, a {type(module).__name__}; "
                                      "only nn.Linear and Conv1D projections can be wrapped")
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child, MoSEsLayer(module, config, self.context))
                wrapped.append(name)
        if not wrapped:
            raise ConfigError(f"MoSEsConfig.target_modules={targets!r} matches no nn.Linear or Conv1D module "
                              f"of this {type(model).__name__}")
        self.resolved_targets = targets
        self.model = model
        self.prototypes = TaskPrototypes(model.get_input_embeddings().embedding_dim)
        self.prototypes.to(next(model.parameters()).device)
        self.infers_task_ids = False  # TaIL: pick each sample's task from its prompt when none is given
        self.task_inference_rule = "prototype"

    # ---- forwarding, like peft's PeftModel ----
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def moses_layers(self) -> Iterator[tuple[str, MoSEsLayer]]:
        return _moses_modules(self.model)

    # ---- tasks ----
    @property
    def tasks(self) -> list[str]:
        return list(self._task_names)

    @property
    def training_task(self) -> str | None:
        t = self.context.training
        return None if t is None else self._task_names[t]

    @property
    def active_task(self) -> str | None:
        t = self.context.active
        return None if t is None else self._task_names[t]

    def task_index(self, task: str | int) -> int:
        if isinstance(task, int) and not isinstance(task, bool):
            if 0 <= task < len(self._task_names):
                return task
            raise TaskError(f"task index {task} out of range: {len(self._task_names)} task(s)")
        if task not in self._task_names:
            known = ", ".join(self._task_names) or "none yet"
            raise TaskError(f"unknown task {task!r} (known tasks: {known})")
        return self._task_names.index(task)

    def add_task(self, name: str) -> None:
        """Start learning task `name`: a new router; the task becomes active and trainable."""
        if not isinstance(name, str) or not name:
            raise TaskError(f"task name must be a non-empty string, got {name!r}")
        if name in self._task_names:
            raise TaskError(f"task {name!r} already exists and is frozen; a task is trained once, add a new one")
        if self.context.training is not None:
            raise TaskError(f"task {self.training_task!r} is still being trained: call end_task() first")
        config = self.moses_config
        needed = (len(self._task_names) + 1) * config.new_subexperts
        if config.ownership == "subexperts" and needed > config.num_subexperts:
            raise TaskError(f"no free subexperts for task {name!r}: num_subexperts={config.num_subexperts} holds "
                            f"{config.num_subexperts // config.new_subexperts} tasks of new_subexperts="
                            f"{config.new_subexperts}")
        for _, layer in self.moses_layers():
            layer.add_router()
            if self._task_names and config.ownership == "entries" and config.scores == "fresh":
                layer.reset_scores()
            elif self._task_names and config.ownership == "entries" and config.free_share > 0:
                layer.reserve_free_entries(config.free_share)
            if self._task_names and config.ownership == "subexperts" and config.own_init == "previous":
                layer.copy_previous_subexperts(len(self._task_names))
            layer.start_task()
        self._task_names.append(name)
        index = len(self._task_names) - 1
        self.context.training = self.context.active = index
        self.context.sample_tasks = None

    def end_task(self) -> None:
        """Store the training task's masks (top-c of its scores) and router, then freeze them (E7)."""
        task = self.context.training
        if task is None:
            raise TaskError("end_task() called with no task being trained: call add_task(name) first")
        sizes = [layer.end_task(task) for _, layer in self.moses_layers()]
        total, kept = sum(size for size, _ in sizes), sum(k for _, k in sizes)
        self.mask_moved = self.mask_moved[:task] + [1 - kept / total if total else 0.0]
        if task in self.prototypes.pending:  # the prompts observed during the task train its TaIL key
            self.prototypes.fit_key(task)
        self.zero_grad(set_to_none=True)  # stale gradients would move frozen entries in a reused optimizer
        self.context.training = None
        self._ended = task + 1

    def set_task(self, name: str | int) -> None:
        """Use task `name`'s masks and router for every sample (TIL inference)."""
        self.context.active = self.task_index(name)
        self.context.sample_tasks = None

    def _sample_task_tensor(self, task_ids: TaskIds) -> torch.Tensor:
        if isinstance(task_ids, torch.Tensor):
            ids = task_ids.to(torch.long).reshape(-1)
            for t in ids.unique().tolist():
                if t >= 0:
                    self.task_index(t)
            return ids
        return torch.tensor([self.task_index(t) for t in task_ids], dtype=torch.long)

    @contextmanager
    def per_sample_tasks(self, task_ids: TaskIds | None) -> Iterator[None]:
        """Within the block, sample b of every batch uses task task_ids[b] (a mixed batch)."""
        if task_ids is None:
            yield
            return
        previous = self.context.sample_tasks
        self.context.sample_tasks = self._sample_task_tensor(task_ids)
        try:
            yield
        finally:
            self.context.sample_tasks = previous

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the model is the frozen base model."""
        previous = self.context.disabled
        self.context.disabled = True
        try:
            yield
        finally:
            self.context.disabled = previous

    def _check_trainable(self) -> None:
        ctx = self.context
        if not (self.training and torch.is_grad_enabled()) or ctx.disabled:
            return
        if ctx.sample_tasks is None and ctx.active is not None and ctx.active != ctx.training:
            raise TaskError(f"task {self.active_task!r} is frozen (ended) and cannot be trained; evaluate it under "
                            "torch.no_grad() or model.eval(), or add_task() a new task")

    # ---- task-id inference (TaIL) ----
    def observe_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        task: str | int | None = None) -> None:
        """Add prompts to a task's prototype (default: the task being trained) for `infer_tasks`."""
        index = self.context.training if task is None else self.task_index(task)
        if index is None:
            raise TaskError("observe_prompts() needs a task: none is being trained")
        with self.disable_adapter():
            self.prototypes.add(index, embed_prompts(self.model, input_ids, attention_mask))

    def infer_tasks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    rule: str | None = None) -> torch.Tensor:
        """Each prompt's task index: the nearest task prototype (rule "prototype") or learned key ("keys") of
        its base-model embedding."""
        rule = rule or self.task_inference_rule
        _check_inference_rule(rule)
        if not self.prototypes.ready():
            raise TaskError("no task prototypes: call observe_prompts() on each task's training prompts")
        with self.disable_adapter():
            embeddings = embed_prompts(self.model, input_ids, attention_mask)
        try:
            return self.prototypes.nearest(embeddings, rule)
        except RuntimeError as err:
            raise TaskError(f"{err}: keys are learned when a task with observed prompts ends") from None

    def set_task_inference(self, enabled: bool = True, rule: str = "prototype") -> None:
        """When enabled, forward/generate without task_ids infer a task per sample from its prompt
        (for step-by-step decoding with a KV cache, pass task_ids, or use generate)."""
        _check_inference_rule(rule)
        self.infers_task_ids, self.task_inference_rule = enabled, rule

    def _task_ids_for(self, task_ids: TaskIds | None, kwargs: dict[str, Any]) -> TaskIds | None:
        if task_ids is None and self.infers_task_ids and kwargs.get("input_ids") is not None:
            return self.infer_tasks(kwargs["input_ids"], kwargs.get("attention_mask"))
        return task_ids

    def forward(self, *args, task_ids: TaskIds | None = None, **kwargs):
        task_ids = self._task_ids_for(task_ids, kwargs)
        self._check_trainable()
        for _, layer in self.moses_layers():
            layer.aux_loss = None
        with self.per_sample_tasks(task_ids):
            outputs = self.model(*args, **kwargs)
        aux = self.aux_loss()
        if aux is not None and getattr(outputs, "loss", None) is not None:
            outputs.loss = outputs.loss + aux
        return outputs

    def generate(self, *args, task_ids: TaskIds | None = None, **kwargs):
        task_ids = self._task_ids_for(task_ids, kwargs)
        with self.per_sample_tasks(task_ids):
            return self.model.generate(*args, **kwargs)

    def aux_loss(self) -> torch.Tensor | None:
        """Mean load-balance loss of the last forward over the layers (None when its coefficient is 0)."""
        losses = [layer.aux_loss for _, layer in self.moses_layers() if layer.aux_loss is not None]
        return torch.stack(losses).mean() if losses else None

    # ---- training ----
    def optimizer_param_groups(self, lr: float, router_weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Param groups for a fresh optimizer of the training task. The pool and scores get weight decay 0:
        decay would move frozen entries (E5). Scores train at lr * score_lr_scale, R2's transfer gates at
        lr * transfer_lr_scale."""
        task = self.context.training
        if task is None:
            raise TaskError("no task is being trained: call add_task(name) before building the optimizer")
        layers = [layer for _, layer in self.moses_layers()]
        groups = [
            {"name": "pool", "params": [p for la in layers for p in (la.lora_A, la.lora_B)], "lr": lr,
             "weight_decay": 0.0},
            {"name": "scores", "params": [p for la in layers for p in (la.scores_A, la.scores_B)],
             "lr": lr * self.moses_config.score_lr_scale, "weight_decay": 0.0},
            {"name": "router", "params": [la.routers[task] for la in layers], "lr": lr,
             "weight_decay": router_weight_decay},
        ]
        if self.moses_config.ownership == "subexperts":
            groups.append({"name": "transfer", "params": [la.transfer_gates[task] for la in layers],
                           "lr": lr * self.moses_config.transfer_lr_scale, "weight_decay": 0.0})
        return groups

    def trainable_parameter_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_counts()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ---- capacity (E8) ----
    def capacity(self) -> dict[str, Any]:
        """Pool usage and storage after the ended tasks, against per-task LoRAs of the same active rank."""
        layers = [layer for _, layer in self.moses_layers()]
        ended = self._ended
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
                    packed.append(pack_bits(_stored_mask(la, mask)))
            reuse.append(row)
            active = sum(row)
            per_task.append({"name": self._task_names[t], "active_entries": active, "owned_entries": row[t],
                             "reused_entries": active - row[t],
                             "mask_moved": self.mask_moved[t] if t < len(self.mask_moved) else None})
            if self.moses_config.ownership == "subexperts":  # how much the task borrows (R2)
                gates = [abs(la.transfer_gates[t].item()) for la in layers]
                per_task[-1]["transfer_gate_mean_abs"] = sum(gates) / len(gates)
        used = sum(int(la.frozen_A.sum() + la.frozen_B.sum()) for la in layers)
        router_bytes = sum(p.numel() * p.element_size() for la in layers
                           for p in [*la.routers[:ended], *la.transfer_gates[:ended]])
        masks_raw = sum(p.numel() for p in packed)
        masks_compressed = compressed_size(packed)
        lora_rank = self.moses_config.top_k * self.moses_config.rank
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

    # ---- merging ----
    def merge_task(self, name: str | int) -> nn.Module:
        """A plain copy of the base model with task `name` folded into its weights (routing='task' only)."""
        task = self.task_index(name)
        if self.moses_config.routing != "task":
            raise TaskError("merge_task needs MoSEsConfig.routing='task': with routing='token' the mixture "
                            "depends on each token, so no single weight delta exists")
        if task >= self._ended:
            raise TaskError(f"task {self._task_names[task]!r} is still being trained: end_task() before merging")
        merged = copy.deepcopy(self.model)
        for _, layer in _moses_modules(merged):
            with torch.no_grad():
                layer.base_layer.weight += layer.merged_delta_weight(task).to(layer.base_layer.weight.dtype)
        return _unwrap(merged)

    def unload(self) -> nn.Module:
        """The base model with its original projections back in place (as peft's `unload`); the adapter is
        dropped, so save it first if it is needed."""
        return _unwrap(self.model)

    # ---- save / load ----
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the adapter needs, keyed by module name; masks bit-packed (uint8)."""
        state: dict[str, torch.Tensor] = {}
        for name, la in self.moses_layers():
            for key in ("lora_A", "lora_B", "scores_A", "scores_B"):
                state[f"{name}.{key}"] = getattr(la, key).detach()
            for t, router in enumerate(la.routers):
                state[f"{name}.router.{t}"] = router.detach()
            for t, gate in enumerate(la.transfer_gates):
                state[f"{name}.transfer_gate.{t}"] = gate.detach()
            for t in range(la.num_stored_masks):
                mask_a, mask_b = la.task_mask(t)
                state[f"{name}.mask_A.{t}"] = pack_bits(_stored_mask(la, mask_a))
                state[f"{name}.mask_B.{t}"] = pack_bits(_stored_mask(la, mask_b))
        if self.prototypes.num_tasks:
            state["task_prototypes.sums"] = self.prototypes.sums
            state["task_prototypes.counts"] = self.prototypes.counts
            state["task_prototypes.keys"] = self.prototypes.keys
        return {k: v.contiguous().cpu() for k, v in state.items()}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write adapter_config.json, adapter_model.safetensors and moses_tasks.json, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.adapter_state_dict()
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        base_name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        self.moses_config.save(directory, {"base_model_name_or_path": base_name,
                                           "resolved_target_modules": self.resolved_targets})
        tasks = {"tasks": self._task_names, "ended": self._ended, "training": self.training_task,
                 "active": self.active_task, "mask_moved": self.mask_moved}
        atomic_write_text(directory / TASKS_NAME, json.dumps(tasks, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path,
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
        wrapped.load_adapter_state(state, tasks, source=str(weights_path))
        return wrapped

    def load_adapter_state(self, state: dict[str, torch.Tensor], tasks: dict[str, Any], source: str) -> None:
        names, ended, training = tasks["tasks"], tasks["ended"], tasks["training"]
        layers = dict(self.moses_layers())
        expected = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B", "scores_A", "scores_B")}
        expected |= {f"{n}.router.{t}" for n in layers for t in range(len(names))}
        if self.moses_config.ownership == "subexperts":
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
            if sums.dim() != 2 or sums.shape[1] != self.prototypes.sums.shape[1] or counts.shape != sums.shape[:1]:
                raise CheckpointError(f"{source}: task_prototypes has shape {tuple(sums.shape)}, model needs "
                                      f"(tasks, {self.prototypes.sums.shape[1]})")
            self.prototypes.sums = sums.to(self.prototypes.sums)
            self.prototypes.counts = counts.to(self.prototypes.counts)
            keys = state.get("task_prototypes.keys", torch.zeros_like(sums))
            if keys.shape != sums.shape:
                raise CheckpointError(f"{source}: task_prototypes.keys has shape {tuple(keys.shape)}, "
                                      f"expected {tuple(sums.shape)}")
            self.prototypes.keys = keys.to(self.prototypes.keys)
        self._task_names = list(names)
        self._ended = ended
        moved = tasks.get("mask_moved")
        self.mask_moved = list(moved) if isinstance(moved, list) else [None] * ended
        self.context.training = None if training is None else self.task_index(training)
        active = tasks.get("active")
        self.context.active = None if active is None else self.task_index(active)


def _moses_modules(model: nn.Module) -> Iterator[tuple[str, MoSEsLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, MoSEsLayer):
            yield name, module


def _unwrap(model: nn.Module) -> nn.Module:
    for name, layer in list(_moses_modules(model)):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    return model


def _stored_mask(layer: MoSEsLayer, mask: torch.Tensor) -> torch.Tensor:
    """What is stored of a task mask: every entry (R1), or one bit per subexpert (R2: whole subexperts)."""
    return mask[:, 0, 0] if layer.dedicated else mask


def _expand_mask(layer: MoSEsLayer, packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The full mask from what was stored (R2 adapters saved before one-bit-per-subexpert masks stored every
    entry, and still load)."""
    if not layer.dedicated or packed.numel() == (math.prod(shape) + 7) // 8:
        return unpack_bits(packed, shape)
    per_subexpert = unpack_bits(packed, (shape[0],))
    return per_subexpert[:, None, None].expand(shape).clone()


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


def get_moses_model(model: nn.Module, config: MoSEsConfig | None = None) -> MoSEsModel:
    """Wrap every targeted projection of `model` in a MoSEs layer and freeze the base model."""
    return MoSEsModel(model, config if config is not None else MoSEsConfig())
