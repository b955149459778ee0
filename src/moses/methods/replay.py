"""Experience replay: sequential LoRA whose batches mix in examples kept from earlier tasks."""

from __future__ import annotations

import random
from typing import Any

from moses.data.stream import Example, Task
from moses.methods.lora import LoRAMethod


class ReplayMethod(LoRAMethod):
    """Option `per_task`: examples kept from each finished task (the first ones of a seeded shuffle)."""

    name = "replay"
    extra_defaults = {"per_task": 8, "seed": 0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.buffer: dict[str, list[Example]] = {}

    def training_examples(self, task: Task, index: int, stream: list[Task]) -> list[Example]:
        replayed = [e for name in self.buffer for e in self.buffer[name]]
        return task.train + replayed  # the loop's seeded shuffle spreads them over the batches

    def on_task_end(self, task: Task, index: int) -> None:
        kept = task.train[:]
        random.Random(f"{self.options['seed']}:{task.name}").shuffle(kept)
        self.buffer[task.name] = kept[: self.options["per_task"]]

    def restore(self, stream: list[Task], completed: int) -> None:
        for index, task in enumerate(stream[:completed]):
            self.on_task_end(task, index)

    def capacity(self) -> dict[str, Any]:
        replay_bytes = sum(len((e["prompt"] + e["answer"]).encode()) for kept in self.buffer.values() for e in kept)
        return {"stored_bytes": self.adapter_bytes() + replay_bytes, "adapters": 1,
                "replay_examples": {name: len(kept) for name, kept in self.buffer.items()}}
