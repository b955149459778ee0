"""Shared ground of the LoRA baselines: peft LoRA adapters, one per stage or one for all.

Adapters are named t0, t1, ... (peft keys cannot hold a task name's dots); `adapter_tasks.json` in a
checkpoint lists which adapters exist, so `load` restores them all.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moses.adapter.gradient_init import aligned_rows, weight_gradients
from moses.data.stream import Task
from moses.errors import CheckpointError, ConfigError
from moses.io import atomic_write_text
from moses.methods.base import Method

LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0,
                                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                                 "fresh_init": "uniform"}  # or "gradient": see align_fresh_adapter
INDEX_FILE = "adapter_tasks.json"


class LoRAMethod(Method):
    """One peft LoRA adapter ("t0") trained through every task; subclasses add adapters or losses."""

    extra_defaults: dict[str, Any] = {}

    def __init__(self, **options: Any) -> None:
        defaults = {**LORA_DEFAULTS, **self.extra_defaults}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ConfigError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: {', '.join(defaults)})")
        super().__init__(**{**defaults, **options})
        if self.options["fresh_init"] not in ("uniform", "gradient"):
            raise ConfigError(f"{self.name} option fresh_init={self.options['fresh_init']!r}: must be uniform or "
                              "gradient")
        self.fresh_adapter: str | None = None  # an adapter created for the coming task, not trained yet
        self.adapters: list[str] = []
        self.task_adapters: dict[str, str] = {}  # task name -> the adapter that learned it

    def lora_config(self):
        from peft import LoraConfig

        o = self.options
        return LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"],
                          target_modules=o["target_modules"], task_type="CAUSAL_LM")

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        from peft import get_peft_model

        self.tokenizer = tokenizer
        self.model = get_peft_model(model, self.lora_config(), adapter_name="t0")
        self.adapters = ["t0"]
        self.fresh_adapter = "t0"
        return self.model

    def on_task_start(self, task, index: int) -> None:
        self.task_adapters[task.name] = self.adapters[-1]
        if self.fresh_adapter is not None and self.options["fresh_init"] == "gradient":
            self.align_fresh_adapter(self.fresh_adapter, self.first_batch_loss(task))
        self.fresh_adapter = None

    def align_fresh_adapter(self, adapter: str, loss_of) -> None:
        """fresh_init="gradient": the new adapter's A rows become the top right-singular vectors of the
        gradient of `loss_of()` (taken as the task starts: B = 0) with respect to each adapted base weight, at
        the uniform draw's norm (`moses.adapter.gradient_init`, the same rule as MoSEs' fresh_init)."""
        modules = [m for m in self.model.modules()
                   if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and adapter in m.lora_A]
        grads = weight_gradients(loss_of, [m.base_layer for m in modules])
        with torch.no_grad():
            for module, grad in zip(modules, grads, strict=True):
                weight = module.lora_A[adapter].weight  # [r, d_in]
                weight.copy_(aligned_rows(grad, weight))

    def add_adapter(self) -> str:
        """A new adapter, the only trainable one."""
        name = f"t{len(self.adapters)}"
        self.model.add_adapter(name, self.lora_config())
        self.adapters.append(name)
        self.model.set_adapter(name)
        self.fresh_adapter = name
        return name

    def lora_parameters(self, adapter: str | None = None) -> list[nn.Parameter]:
        """Trainable parameters (default), or every parameter of one adapter."""
        if adapter is None:
            return [p for p in self.model.parameters() if p.requires_grad]
        return [p for n, p in self.model.named_parameters() if f".{adapter}." in n and "lora_" in n]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"name": "lora", "params": self.lora_parameters(), "lr": lr}]

    def save(self, directory: Path) -> None:
        with warnings.catch_warnings():  # peft looks for the base model's config.json beside a GGUF file
            warnings.filterwarnings("ignore", message="Could not find a config file")
            self.model.save_pretrained(directory)
        index = {"adapters": self.adapters, "tasks": self.task_adapters}
        atomic_write_text(directory / INDEX_FILE, json.dumps(index) + "\n")

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        from peft import PeftModel

        self.tokenizer = tokenizer
        index = directory / INDEX_FILE
        try:
            saved = json.loads(index.read_text())
            self.adapters, self.task_adapters = saved["adapters"], saved["tasks"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{index}: missing or malformed ({err})") from None
        # peft keeps a non-default adapter in a subfolder of the same name
        self.model = PeftModel.from_pretrained(model, directory / self.adapters[0], adapter_name=self.adapters[0],
                                               is_trainable=True)
        for name in self.adapters[1:]:
            self.model.load_adapter(directory / name, adapter_name=name, is_trainable=True)
        self.after_load()
        return self.model

    def after_load(self) -> None:
        """Restore which adapters are active and trainable after `load` (default: the last one)."""
        self.model.set_adapter(self.adapters[-1])

    def adapter_bytes(self, adapter: str = "t0") -> int:
        return sum(p.numel() * p.element_size() for p in self.lora_parameters(adapter))

    def capacity(self) -> dict[str, Any]:
        return {"stored_bytes": len(self.adapters) * self.adapter_bytes(), "adapters": len(self.adapters)}


class StackedLoRAMethod(LoRAMethod):
    """A new adapter per task; earlier ones frozen; at inference every adapter is on (their sum), so no
    task id is needed (O-LoRA, InfLoRA)."""

    def on_task_start(self, task: Task, index: int) -> None:
        if index > 0:
            self.add_adapter()
        self.activate_all(trainable=self.adapters[-1])  # before a fresh_init gradient: the model the task starts as
        super().on_task_start(task, index)

    def activate_all(self, trainable: str | None) -> None:
        self.model.base_model.set_adapter(self.adapters)
        for name in self.adapters:
            for p in self.lora_parameters(name):
                p.requires_grad_(name == trainable)

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        yield  # all adapters stay on, with or without a task id

    def after_load(self) -> None:
        self.activate_all(trainable=self.adapters[-1])
