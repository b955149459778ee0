"""Multitask: one LoRA trained once, on the union of every task's training data, at the last stage. Not
continual (it sees all data at once): an upper bound for the final row of R (OP); earlier rows are the
untrained model, so BWT and forgetting mean nothing for it."""

from __future__ import annotations

from moses.data.stream import Example, Task
from moses.methods.lora import LoRAMethod


class MultitaskMethod(LoRAMethod):
    name = "multitask"
    base_until_trained = True  # a fresh LoRA has B = 0: its rows before the last stage are the zero-shot row
    continual = False

    def training_examples(self, task: Task, index: int, stream: list[Task]) -> list[Example]:
        return [e for t in stream for e in t.train] if index == len(stream) - 1 else []
