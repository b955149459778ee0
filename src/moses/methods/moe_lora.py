"""MoE-LoRA: the MoSEs pool with one shared token router, trained through every task with no masks and no
freezing. The ablation that shows what per-task masks and routers buy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from moses.adapter import MoSEsConfig, MoSEsModel, get_moses_model
from moses.data.stream import Task
from moses.errors import ConfigError
from moses.methods.base import Method

SHARED = "shared"
# the pool it shares: N rank-4 subexperts under one token router on the hidden state (reading R1's layout with
# c = 1), whatever MoSEsConfig's defaults are; options may change N, rank, top_k and the router input
POOL_DEFAULTS: dict[str, Any] = {"ownership": "entries", "router_input": "hidden", "rank": 4}


class MoELoRAMethod(Method):
    """Options: MoSEsConfig fields except task_density (always 1: the whole pool, never masked)."""

    name = "moe-lora"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for fixed, why in (("task_density", "the pool is never masked"),
                           ("ownership", "one shared pool: no task owns anything")):
            if fixed in options:
                raise ConfigError(f"moe-lora option {fixed}: not settable ({why})")
        self.config = MoSEsConfig.from_dict({**POOL_DEFAULTS, **options, "task_density": 1.0},
                                            source="moe-lora options")

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        self.tokenizer = tokenizer
        self.model = get_moses_model(model, self.config)
        return self._freeze_scores()

    def _freeze_scores(self) -> nn.Module:
        for _, layer in self.model.moses_layers():  # c = 1: the mask is all ones, its scores never matter
            layer.scores_A.requires_grad_(False)
            layer.scores_B.requires_grad_(False)
        return self.model

    def on_task_start(self, task: Task, index: int) -> None:
        if not self.model.tasks:
            self.model.add_task(SHARED)  # one router and one never-ended "task" for the whole stream

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [g for g in self.model.optimizer_param_groups(lr) if g["name"] != "scores"]  # c = 1: no mask

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        if not self.model.tasks:  # before the first task: the base model
            with self.model.disable_adapter():
                yield
            return
        self.model.set_task(SHARED)
        yield

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        self.tokenizer = tokenizer
        self.model = MoSEsModel.from_pretrained(model, directory, config=self.config)
        return self._freeze_scores()

    def capacity(self) -> dict[str, Any]:
        layers = [layer for _, layer in self.model.moses_layers()]
        entries = sum(la.lora_A.numel() + la.lora_B.numel() + sum(r.numel() for r in la.routers) for la in layers)
        return {"stored_bytes": entries * layers[0].lora_A.element_size()}
