"""MoSEs as a runner plug-in: TIL with the task id, TaIL by inferring it from the prompt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moses.adapter import MoSEsConfig, MoSEsModel, get_moses_model
from moses.data.collate import generation_batches, longest_first
from moses.data.stream import Task
from moses.errors import ConfigError
from moses.methods.base import Method
from moses.precision import autocast

TAIL_RULES = ("prototype", "keys", "latest")


class MoSEsMethod(Method):
    """Options: every MoSEsConfig field, plus `tail`: "prototype" (nearest mean base-model embedding of
    each task's training prompts; the spec's default), "keys" (nearest key learned with a pull loss on those
    embeddings) or "latest" (the last task's masks and router). Masked, gated subexperts need a larger
    learning rate than LoRA at a few dozen steps per task (measured on TRACE-CPU): give it the option `lr`."""

    name = "moses"
    uses_task_id = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.tail = options.pop("tail", "prototype")
        if self.tail not in TAIL_RULES:
            raise ConfigError(f"moses option tail={self.tail!r}: must be one of {', '.join(TAIL_RULES)}")
        self.config = MoSEsConfig.from_dict(options, source="moses options")

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        self.tokenizer = tokenizer
        self.model = get_moses_model(model, self.config)
        return self.model

    def on_task_start(self, task: Task, index: int) -> None:
        self.model.add_task(task.name)
        config = self.config
        align, choose = config.fresh_init == "gradient", config.own_init == "best" and index > 0
        borrow = config.router_init == "best" and index > 0
        first_batch_loss = self.first_batch_loss(task) if align or choose or borrow else None
        if align:
            self.model.align_fresh_subexperts(first_batch_loss)
        if choose:
            self.model.choose_own_init(first_batch_loss)
        if borrow:  # what it reads of the earlier tasks, and (growth="loss") whether it adds its own
            self.model.choose_borrowed(first_batch_loss)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return self.model.optimizer_param_groups(lr)

    def extra_loss(self, batch, outputs) -> torch.Tensor | None:
        return self.model.aux_loss()  # the load-balance term (None when its coefficient is 0)

    def on_task_end(self, task: Task, index: int) -> None:
        _, prompts = self._longest_first([e["prompt"] for e in task.train])  # less padding; sums ignore order
        with autocast(self.precision, self.device.type):  # as generation will embed prompts for TaIL
            for batch in self._prompt_batches(prompts):
                self.model.observe_prompts(batch["input_ids"], batch["attention_mask"])
        self.model.end_task()

    def _prompt_batches(self, prompts: list[str], size: int = 16) -> Iterator[dict[str, torch.Tensor]]:
        return generation_batches(self.tokenizer, prompts, size, self.max_prompt_tokens, self.device)

    def _longest_first(self, prompts: list[str]) -> tuple[list[int], list[str]]:
        order = longest_first(self.tokenizer, prompts, self.max_prompt_tokens)
        return order, [prompts[i] for i in order]

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        model = self.model
        if task_name is not None:
            model.set_task(task_name)
            yield
        elif not model.tasks:  # nothing learned yet: the base model
            with model.disable_adapter():
                yield
        elif self.tail == "latest":
            model.set_task(model.tasks[-1])
            yield
        else:
            model.set_task_inference(True, rule=self.tail)
            try:
                yield
            finally:
                model.set_task_inference(False)

    def infer_task_names(self, prompts: list[str]) -> list[str] | None:
        if self.tail == "latest":
            return [self.model.tasks[-1]] * len(prompts)
        order, ordered = self._longest_first(prompts)
        names = []
        for batch in self._prompt_batches(ordered):
            with autocast(self.precision, self.device.type):
                inferred = self.model.infer_tasks(**batch, rule=self.tail)
            names += [self.model.tasks[i] for i in inferred.tolist()]
        return [name for _, name in sorted(zip(order, names, strict=True))]

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        self.tokenizer = tokenizer
        self.model = MoSEsModel.from_pretrained(model, directory, config=self.config)
        return self.model

    def capacity(self) -> dict[str, Any]:
        return self.model.capacity()
