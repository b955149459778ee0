"""The interface every continual-learning method implements; the runner calls only these hooks.

A method owns how the base model is adapted and which parameters train; the one training loop
(runner/train.py) owns batching, the optimizer step and logging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from moses.data.collate import training_batch
from moses.data.loss import answer_loss
from moses.data.stream import Example, Task
from moses.precision import autocast

FIRST_BATCH = 8  # training examples that set up a task before its first step (see Method.first_batch_loss)


class Method:
    name: ClassVar[str]
    uses_task_id: ClassVar[bool] = False  # True: inference needs the task id (TIL)
    # True: until its first training example the method's model is the base model exactly (no adapter, or one
    # whose delta is 0), so the runner reuses the zero-shot row's answers instead of generating them again
    base_until_trained: ClassVar[bool] = False
    # False: the method trains once on every task's data at the last stage (multitask), so the stream's
    # backward metrics (BWT, forgetting) do not apply to it
    continual: ClassVar[bool] = True
    trains: ClassVar[bool] = True  # False: nothing to train (zero-shot), so nothing to sweep
    # the run's token limits, set by the runner, for methods that encode examples themselves
    max_prompt_tokens: int = 320
    max_answer_tokens: int = 64
    precision: str = "fp32"  # the run's precision, set by the runner, for methods that run forwards themselves
    lr: float | None = None  # option `lr` of any method: its learning rate in place of the run's

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.model: nn.Module | None = None
        self.tokenizer = None

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        """Wrap the base model; return the model the loop trains and evaluates."""
        raise NotImplementedError

    def on_task_start(self, task: Task, index: int) -> None:
        """Called before the first step of each task."""

    @property
    def device(self) -> torch.device:
        """Where the prepared model lives (after `prepare` or `load`)."""
        return next(self.model.parameters()).device

    def first_batch_loss(self, task: Task) -> Callable[[], torch.Tensor]:
        """The answer loss of the current model on the task's first FIRST_BATCH training examples, under the
        run's precision: what a method that sets up a task from data before training (a start chosen by loss,
        a gradient-aligned A) scores it by."""
        device = self.device
        batch = training_batch(self.tokenizer, task.train[:FIRST_BATCH], self.max_prompt_tokens,
                               self.max_answer_tokens)
        batch = {k: v.to(device) for k, v in batch.items()}

        def loss() -> torch.Tensor:
            with autocast(self.precision, device.type):
                return answer_loss(self.model, batch)[0]

        return loss

    def training_examples(self, task: Task, index: int, stream: list[Task]) -> list[Example]:
        """What the loop trains on during `task` (replay mixes in old examples; multitask the union)."""
        return task.train

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups of a fresh optimizer for the current task."""
        raise NotImplementedError

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        """A loss added to the LM loss of every step (regularisers)."""
        return None

    def before_optimizer_step(self) -> None:
        """After backward, before the optimizer step (gradient surgery)."""

    def on_task_end(self, task: Task, index: int) -> None:
        """After the last step of a task."""

    @contextmanager
    def inference_context(self, task_name: str | None) -> Iterator[None]:
        """Evaluate as task `task_name` (None: the task is unknown)."""
        yield

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        """Restore a saved state onto a fresh base model; returns the prepared model."""
        raise NotImplementedError

    def restore(self, stream: list[Task], completed: int) -> None:
        """After `load` on resume: rebuild state that is derived from the stream (e.g. a replay buffer)."""

    def infer_task_names(self, prompts: list[str]) -> list[str] | None:
        """The task each prompt is taken for when no id is given (None: the method does not infer one)."""
        return None

    def capacity(self) -> dict[str, Any] | None:
        return None

    def trainable_parameters(self) -> int:
        assert self.model is not None
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
