"""MoSEsModel: wraps a Hugging Face causal LM and owns the task list (add, end, select, per-sample tasks, TaIL).
Capacity, save/load and export live in capacity.py, save_load.py and export.py, which take the layers and
the task list (tasks.py), so they sit below this module."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moses.adapter.capacity import capacity_report
from moses.adapter.config import ATTENTION_TARGETS_BY_MODEL_TYPE, DEFAULT_TARGETS, MoSEsConfig
from moses.adapter.export import task_lora_factors, write_peft_lora
from moses.adapter.gradient_init import weight_gradients
from moses.adapter.layer import Conv1D, MoSEsLayer, TaskContext, moses_layers, unwrap_layers
from moses.adapter.save_load import adapter_files, adapter_state_dict, load_adapter_state, read_adapter, save_adapter
from moses.adapter.taskid import TaskPrototypes, embed_prompts
from moses.adapter.tasks import TaskList
from moses.errors import ConfigError, TaskError

TaskIds = Sequence[str | int] | torch.Tensor
# router_init="best": the chosen subexperts' router logit (0 elsewhere); top-2 of [5, 0] gives them 0.993
PREFERRED_LOGIT = 5.0
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
        self.task_list = TaskList()
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
        return moses_layers(self.model)

    # ---- tasks ----
    @property
    def tasks(self) -> list[str]:
        return list(self.task_list.names)

    @property
    def own_init_sources(self) -> list[int | None]:
        """R2: per task, the index of the task whose own subexperts it started from (None: fresh)."""
        return list(self.task_list.own_init_sources)

    @property
    def mask_moved(self) -> list[float | None]:
        """R1: per ended task, the share of its final mask that was not in its first."""
        return list(self.task_list.mask_moved)

    @property
    def training_task(self) -> str | None:
        t = self.context.training
        return None if t is None else self.task_list.names[t]

    @property
    def active_task(self) -> str | None:
        t = self.context.active
        return None if t is None else self.task_list.names[t]

    def task_index(self, task: str | int) -> int:
        return self.task_list.index(task)

    def add_task(self, name: str) -> None:
        """Start learning task `name`: its own parameters (R2: subexperts, router, transfer gate; R1: router)
        are created trainable, every earlier task's stay frozen; the task becomes active."""
        if not isinstance(name, str) or not name:
            raise TaskError(f"task name must be a non-empty string, got {name!r}")
        if name in self.task_list.names:
            raise TaskError(f"task {name!r} already exists and is frozen; a task is trained once, add a new one")
        if self.context.training is not None:
            raise TaskError(f"task {self.training_task!r} is still being trained: call end_task() first")
        config, index = self.moses_config, len(self.task_list)
        for _, layer in self.moses_layers():
            if index and config.ownership == "entries" and config.scores == "fresh":
                layer.reset_scores()
            elif index and config.ownership == "entries" and config.free_share > 0:
                layer.reserve_free_entries(config.free_share)
            layer.add_task()
            if index and config.ownership == "subexperts" and config.own_init == "previous":
                layer.start_own_subexperts(index, index - 1)
        self.task_list.add(name, index - 1 if index and config.own_init == "previous" else None)
        self.context.training = self.context.active = index
        self.context.sample_tasks = None

    def start_own_subexperts(self, source: str | int | None) -> None:
        """R2: the training task's own subexperts start as copies of task `source`'s (None: fresh, delta 0)."""
        task = self.context.training
        if task is None or self.moses_config.ownership != "subexperts":
            raise TaskError("start_own_subexperts() needs ownership='subexperts' and a task being trained")
        index = None if source is None else self.task_index(source)
        for _, layer in self.moses_layers():
            layer.start_own_subexperts(task, index)
        self.task_list.own_init_sources[task] = index

    def align_fresh_subexperts(self, loss_of: Callable[[], torch.Tensor]) -> None:
        """R2, fresh_init="gradient": set the training task's fresh own A, in every layer, from the gradient of
        `loss_of()` (e.g. the loss on the task's first training batch, taken at the fresh start, delta 0) with
        respect to the base weight it adapts (`MoSEsLayer.align_fresh_subexperts`). The base weights get no
        stored gradient and nothing else changes; the task's chosen start is restored afterwards."""
        task = self.context.training
        if task is None or self.moses_config.ownership != "subexperts":
            raise TaskError("align_fresh_subexperts() needs ownership='subexperts' and a task being trained")
        source = self.task_list.own_init_sources[task]
        self.start_own_subexperts(None)
        layers = [layer for _, layer in self.moses_layers()]
        grads = weight_gradients(loss_of, [layer.base_layer for layer in layers])
        for layer, grad in zip(layers, grads, strict=True):
            layer.align_fresh_subexperts(task, grad)
        self.start_own_subexperts(source)

    @torch.no_grad()
    def choose_own_init(self, loss_of: Callable[[], torch.Tensor]) -> int | None:
        """R2, own_init="best": try each start of the training task's own subexperts (fresh, then a copy of
        each earlier task's), keep the one whose `loss_of()` (e.g. the loss on the task's first training
        batch) is lowest, ties to the earliest, fresh first; returns its source task (None: fresh). The losses
        are only compared, so they are computed without a graph."""
        task = self.context.training
        losses: dict[int | None, float] = {}
        for source in [None, *range(task or 0)]:
            self.start_own_subexperts(source)
            with torch.no_grad():
                losses[source] = float(loss_of())
        best = min(losses, key=lambda s: losses[s])
        self.start_own_subexperts(best)
        return best

    @torch.no_grad()
    def choose_borrowed(self, loss_of: Callable[[], torch.Tensor]) -> int | None:
        """R2, router_init="best": try each start of what the training task borrows (nothing, then reading each
        earlier task's own subexperts through its router, transfer gate 1; its own subexperts add nothing yet,
        B = 0), keep the one whose `loss_of()` (e.g. the mean loss on the task's first training batch) is lowest,
        ties to the earliest, nothing first; returns its source task (None: nothing). With growth="loss" the task
        then adds no subexperts of its own when that loss is at most `growth_threshold`."""
        task, config = self.context.training, self.moses_config
        if task is None or config.router_init != "best":
            raise TaskError("choose_borrowed() needs router_init='best' and a task being trained")
        layers = [layer for _, layer in self.moses_layers()]
        counts = layers[0].own_counts()
        losses: dict[int | None, float] = {}
        for source in [None, *(s for s in range(task) if counts[s])]:
            for layer in layers:
                layer.prefer_borrowed(task, source, PREFERRED_LOGIT)
            losses[source] = float(loss_of())
        best = min(losses, key=lambda s: losses[s])
        for layer in layers:
            layer.prefer_borrowed(task, best, PREFERRED_LOGIT)
        tasks = self.task_list
        tasks.read_from[task] = best
        tasks.start_losses[task] = {"none" if s is None else tasks.names[s]: loss for s, loss in losses.items()}
        if config.growth == "loss" and best is not None and losses[best] <= config.growth_threshold:
            for layer in layers:
                layer.drop_own_subexperts(task)
            tasks.grew[task] = False
        return best

    def end_task(self) -> None:
        """Store and freeze the training task (E7): its parameters get requires_grad=False and lose their
        gradients, so no optimizer, old or new, can move them (R1: its masks, top-c of its scores, are stored
        and its entries read from the frozen buffers from now on)."""
        task = self.context.training
        if task is None:
            raise TaskError("end_task() called with no task being trained: call add_task(name) first")
        sizes = [layer.end_task(task) for _, layer in self.moses_layers()]
        total, kept = sum(size for size, _ in sizes), sum(k for _, k in sizes)
        self.task_list.end(task, 1 - kept / total if total else 0.0)
        if task in self.prototypes.pending:  # the prompts observed during the task train its TaIL key
            self.prototypes.fit_key(task)
        self.zero_grad(set_to_none=True)
        self.context.training = None

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

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                task_ids: TaskIds | None = None, **kwargs):
        """The wrapped model's forward, with `task_ids` (one task per sample) as in `generate`. The inputs are
        named, as in peft's PeftModelForCausalLM, so `transformers.Trainer` keeps the dataset's columns."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds,
                  "labels": labels, **kwargs}
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("input_ids", "attention_mask")}
        task_ids = self._task_ids_for(task_ids, kwargs)
        self._check_trainable()
        for _, layer in self.moses_layers():
            layer.aux_loss = None
        with self.per_sample_tasks(task_ids):
            outputs = self.model(**kwargs)
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
    def optimizer_param_groups(self, lr: float, weight_decay: float | None = None,
                               router_weight_decay: float | None = None) -> list[dict[str, Any]]:
        """Param groups of the training task's parameters, and only those (R1: the pool and scores, whose frozen
        entries no forward reads). R2's transfer gates learn at lr * transfer_lr_scale and R1's scores at
        lr * score_lr_scale, both without decay (as do the logits of a task router, routing="task"); the
        subexperts and a token router take `weight_decay` and `router_weight_decay` (None: the optimizer's own).
        Any optimizer over `parameters()` works too: frozen tasks have requires_grad=False and no gradient, so
        weight decay or a reused optimizer cannot move them."""
        task = self.context.training
        if task is None:
            raise TaskError("no task is being trained: call add_task(name) before building the optimizer")
        layers = [layer for _, layer in self.moses_layers()]
        config = self.moses_config
        decay = {} if weight_decay is None else {"weight_decay": weight_decay}
        router_decay = {} if router_weight_decay is None else {"weight_decay": router_weight_decay}
        if config.ownership == "subexperts":
            # a task router's logits are a handful of scalars per layer, like the gate: they learn as it does
            logits = config.routing == "task"
            routers = [la.routers[task] for la in layers if la.routers[task].requires_grad]
            groups = [
                {"name": "subexperts", "params": [p for la in layers for p in (la.own_A[task], la.own_B[task])
                                                  if p.requires_grad], "lr": lr, **decay},
                {"name": "router", "params": [] if logits else routers, "lr": lr, **router_decay},
                {"name": "transfer", "params": [la.transfer_gates[task] for la in layers
                                                if la.transfer_gates[task].requires_grad] + (routers if logits else []),
                 "lr": lr * config.transfer_lr_scale, "weight_decay": 0.0},
            ]
        else:
            groups = [
                {"name": "pool", "params": [p for la in layers for p in (la.lora_A, la.lora_B)], "lr": lr, **decay},
                {"name": "scores", "params": [p for la in layers for p in (la.scores_A, la.scores_B)
                                              if p.requires_grad],
                 "lr": lr * config.score_lr_scale, "weight_decay": 0.0},
                {"name": "router", "params": [la.routers[task] for la in layers], "lr": lr, **router_decay},
            ]
        return [g for g in groups if g["params"]]

    def trainable_parameter_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def adapter_parameter_counts(self) -> dict[str, int]:
        """Adapter parameters: `per_task` (what one task trains, the newest one's under R2; R1: the pool,
        scores and one router) and `stored` (every task's, what the adapter keeps)."""
        layers = [layer for _, layer in self.moses_layers()]
        if not self.task_list.names:
            return {"per_task": 0, "stored": 0}
        last = len(self.task_list) - 1
        if self.moses_config.ownership == "subexperts":
            per_task = sum(p.numel() for la in layers for p in la.task_parameters(last))
            stored = sum(p.numel() for la in layers for t in range(last + 1) for p in la.task_parameters(t))
        else:
            shared = sum(p.numel() for la in layers for p in (la.lora_A, la.lora_B, la.scores_A, la.scores_B))
            per_task = shared + sum(la.routers[last].numel() for la in layers)
            stored = shared + sum(r.numel() for la in layers for r in la.routers)
        return {"per_task": per_task, "stored": stored}

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_counts()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ---- capacity (E8) ----
    def capacity(self) -> dict[str, Any]:
        """What each ended task owns and reuses, and `stored_bytes`: exactly the bytes `save_pretrained` writes
        now; against per-task LoRAs of the same active rank."""
        written = sum(len(payload) for payload in self.adapter_files().values())
        return capacity_report([layer for _, layer in self.moses_layers()], self.task_list,
                               self.moses_config.top_k, self.moses_config.rank, written)

    # ---- merging and export ----
    def merge_task(self, name: str | int) -> nn.Module:
        """A plain copy of the base model with task `name` folded into its weights, where that is exact
        (routing='task', or an R2 task that borrows nothing; see `export_task_lora`)."""
        factors = task_lora_factors(list(self.moses_layers()), self.task_list, name)
        merged = copy.deepcopy(self.model)
        for module, layer in moses_layers(merged):
            a, b = factors[module]
            delta = b @ a
            weight = layer.base_layer.weight
            with torch.no_grad():
                weight += (delta if isinstance(layer.base_layer, nn.Linear) else delta.T).to(weight.dtype)
        return unwrap_layers(merged)

    @torch.no_grad()
    def mean_task_gates(self, name: str | int, prompts: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{module: task `name`'s gates over the subexperts it reads, averaged over every token of `prompts`}
        (each a 1-D tensor of token ids, run alone, so no padding counts): what `export_task_lora(...,
        mean_gates=)` folds into one LoRA where the router mixes per token."""
        layers = list(self.moses_layers())
        previous = self.context.active, self.context.sample_tasks, self.training
        self.set_task(name)
        self.eval()
        for _, layer in layers:
            layer.gate_record = []
        try:
            count = 0
            for ids in prompts:
                self.model(input_ids=ids.reshape(1, -1).to(next(self.model.parameters()).device))
                count += 1
            if not count:
                raise TaskError(f"mean gates of task {name!r}: no prompts given")
            means = {}
            for module, layer in layers:
                records = layer.gate_record
                if records:
                    means[module] = torch.cat(records).mean(dim=0)
        finally:
            for _, layer in layers:
                layer.gate_record = None
            self.context.active, self.context.sample_tasks = previous[:2]
            self.train(previous[2])
        return means

    def export_task_lora(self, name: str | int, directory: str | Path,
                         mean_gates: dict[str, torch.Tensor] | None = None) -> Path:
        """Task `name` as a standard peft LoRA adapter in `directory`: exact where the task's gates do not depend on
        the input; elsewhere `mean_gates` (`mean_task_gates`) are folded in, an approximation (adapter/export.py)."""
        factors = task_lora_factors(list(self.moses_layers()), self.task_list, name, mean_gates)
        conv1d = any(not isinstance(layer.base_layer, nn.Linear) for _, layer in self.moses_layers())
        base_name = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        return write_peft_lora(factors, conv1d, base_name, directory)

    def unload(self) -> nn.Module:
        """The base model with its original projections back in place (as peft's `unload`); the adapter is
        dropped, so save it first if it is needed."""
        return unwrap_layers(self.model)

    # ---- save / load (adapter/save_load.py) ----
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the adapter needs, keyed by module name."""
        return adapter_state_dict(list(self.moses_layers()), self.prototypes)

    def adapter_files(self) -> dict[str, bytes]:
        """{file name: bytes} that `save_pretrained` writes."""
        base_name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        extra = {"base_model_name_or_path": base_name, "resolved_target_modules": self.resolved_targets}
        return adapter_files(list(self.moses_layers()), self.task_list, self.context, self.prototypes,
                             self.moses_config, extra)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write adapter_config.json, adapter_model.safetensors and moses_tasks.json, each atomically."""
        save_adapter(self.adapter_files(), directory)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path,
                        config: MoSEsConfig | None = None) -> MoSEsModel:
        """Wrap `model` and load a saved adapter (also one saved by the pool layout before 0.3.0). A `config`
        that differs from the saved one is an error."""
        saved, tasks_json, state = read_adapter(directory, config)
        wrapped = cls(model, saved)
        tasks = TaskList.from_json(tasks_json)
        source = str(Path(directory) / "adapter_model.safetensors")
        load_adapter_state(list(wrapped.moses_layers()), wrapped.prototypes, state, tasks, source)
        wrapped.task_list = tasks
        training, active = tasks_json.get("training"), tasks_json.get("active")
        wrapped.context.training = None if training is None else tasks.index(training)
        wrapped.context.active = None if active is None else tasks.index(active)
        return wrapped


def get_moses_model(model: nn.Module, config: MoSEsConfig | None = None) -> MoSEsModel:
    """Wrap every targeted projection of `model` in a MoSEs layer and freeze the base model."""
    return MoSEsModel(model, config if config is not None else MoSEsConfig())
