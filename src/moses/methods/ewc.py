"""EWC: sequential LoRA plus a quadratic penalty that anchors the adapter where earlier tasks left it,
weighted by a diagonal Fisher estimate (squared gradients), accumulated online over tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from moses.data.collate import training_batch
from moses.data.loss import answer_loss
from moses.data.stream import Task
from moses.errors import CheckpointError
from moses.io import atomic_write
from moses.methods.lora import LoRAMethod

STATE_FILE = "ewc_state.safetensors"


class EWCMethod(LoRAMethod):
    """Options: `lam` (penalty weight), `gamma` (decay of older Fisher terms, 1 = plain sum),
    `fisher_examples` (training examples used to estimate the Fisher after each task)."""

    name = "ewc"
    extra_defaults = {"lam": 1000.0, "gamma": 1.0, "fisher_examples": 32}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def named_lora(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def penalty(self) -> torch.Tensor | None:
        """lam / 2 * sum_i F_i (theta_i - theta*_i)^2; None before the first task ends."""
        if not self.fisher:
            return None
        params = self.named_lora()
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]).pow(2)).sum() for n in self.fisher)
        return 0.5 * self.options["lam"] * total

    def extra_loss(self, batch, outputs) -> torch.Tensor | None:
        return self.penalty()

    def on_task_end(self, task: Task, index: int) -> None:
        """Squared gradients of the LM loss, one example at a time, then F = gamma * F + F_task."""
        params = self.named_lora()
        estimate = {n: torch.zeros_like(p) for n, p in params.items()}
        examples = task.train[: self.options["fisher_examples"]]
        device = self.device
        was_training = self.model.training
        self.model.eval()
        for example in examples:
            batch = {k: v.to(device) for k, v in training_batch(self.tokenizer, [example]).items()}
            self.model.zero_grad(set_to_none=True)
            answer_loss(self.model, batch)[0].backward()
            for n, p in params.items():
                if p.grad is not None:
                    estimate[n] += p.grad.detach().pow(2) / len(examples)
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        gamma = self.options["gamma"]
        self.fisher = {n: gamma * self.fisher.get(n, 0) + estimate[n] for n in estimate}
        self.anchor = {n: p.detach().clone() for n, p in params.items()}

    def save(self, directory: Path) -> None:
        super().save(directory)
        state = {f"fisher/{n}": t.contiguous() for n, t in self.fisher.items()}
        state |= {f"anchor/{n}": t.contiguous() for n, t in self.anchor.items()}
        atomic_write(directory / STATE_FILE, lambda tmp: save_file(state, str(tmp)))

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        loaded = super().load(model, tokenizer, directory)
        try:
            state = load_file(str(directory / STATE_FILE))
        except Exception as err:  # a missing or damaged file: say which
            raise CheckpointError(f"{directory / STATE_FILE}: cannot read EWC state ({err})") from None
        self.fisher = {k.removeprefix("fisher/"): v for k, v in state.items() if k.startswith("fisher/")}
        self.anchor = {k.removeprefix("anchor/"): v for k, v in state.items() if k.startswith("anchor/")}
        return loaded

    def capacity(self) -> dict[str, Any]:
        return {"stored_bytes": 3 * self.adapter_bytes(), "adapters": 1}  # adapter, its anchor, its Fisher
