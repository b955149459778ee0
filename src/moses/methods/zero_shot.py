"""Zero-shot: the base model, never trained; the floor every method should clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from moses.data.stream import Example, Task
from moses.io import atomic_write_text
from moses.methods.base import Method


class ZeroShotMethod(Method):
    name = "zero-shot"
    base_until_trained = True  # always: every row is the zero-shot row
    trains = False

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        self.tokenizer = tokenizer
        model.requires_grad_(False)
        self.model = model
        return model

    def training_examples(self, task: Task, index: int, stream: list[Task]) -> list[Example]:
        return []

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return []

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / "zero_shot.txt", "the base model: nothing to store\n")

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        return self.prepare(model, tokenizer)

    def capacity(self) -> dict[str, Any]:
        return {"stored_bytes": 0}
