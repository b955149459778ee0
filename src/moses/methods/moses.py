"""MoSEs as a runner plug-in: a task id at training and at inference (TIL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from moses.adapter import MoSEsConfig, MoSEsModel, get_moses_model
from moses.data.stream import Task
from moses.methods.base import Method


class MoSEsMethod(Method):
    name = "moses"
    uses_task_id = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.config = MoSEsConfig.from_dict(options, source="method options")

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = get_moses_model(model, self.config)
        return self.model

    def on_task_start(self, task: Task, index: int) -> None:
        self.model.add_task(task.name)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return self.model.optimizer_param_groups(lr)

    def on_task_end(self, task: Task, index: int) -> None:
        self.model.end_task()

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        if task_name is None:  # until task inference lands: the latest task's masks and router
            task_name = self.model.tasks[-1] if self.model.tasks else None
        if task_name is None:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_task(task_name)
        yield

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load(self, model: nn.Module, directory: Path) -> nn.Module:
        self.model = MoSEsModel.from_pretrained(model, directory, config=self.config)
        return self.model

    def capacity(self) -> dict[str, Any]:
        return self.model.capacity()
