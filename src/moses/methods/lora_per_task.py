"""A separate LoRA per task, chosen by task id: the isolation upper bound, with linear storage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moses.data.stream import Task
from moses.methods.lora import LoRAMethod


class LoRAPerTaskMethod(LoRAMethod):
    name = "lora-per-task"
    uses_task_id = True

    def on_task_start(self, task: Task, index: int) -> None:
        if index > 0:
            self.add_adapter()
        super().on_task_start(task, index)

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        # without a task id (TaIL) the newest adapter answers
        self.model.set_adapter(self.task_adapters.get(task_name, self.adapters[-1]))
        yield
