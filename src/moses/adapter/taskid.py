"""Task-id inference for TaIL (task id unknown at test time).

A prompt is embedded by the frozen base model (adapters off): the mean of its last hidden states over
the prompt's tokens. Two rules pick the task whose vector is most similar (cosine):
- "prototype" (the spec's default): the mean embedding of the task's training prompts, kept as running sums;
- "keys": a key per task learned with a pull loss, 1 - cos(embedding, key), over the task's training prompts
  when the task ends (as in key-query prompt selection).
Both are saved with the adapter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def embed_prompts(model: nn.Module, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, hidden] mean-pooled last hidden states of `model`'s backbone (call with adapters disabled)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    backbone = getattr(model, "base_model", model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TaskPrototypes(nn.Module):
    """Per-task sums and counts of prompt embeddings; rows are task indices in training order."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("sums", torch.zeros(0, hidden_size))
        self.register_buffer("counts", torch.zeros(0))
        self.register_buffer("keys", torch.zeros(0, hidden_size))
        self.pending: dict[int, list[torch.Tensor]] = {}  # embeddings of a task whose key is not fitted yet

    @property
    def num_tasks(self) -> int:
        return self.sums.shape[0]

    def ensure(self, num_tasks: int) -> None:
        missing = num_tasks - self.num_tasks
        if missing > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(missing, self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(missing)])
            self.keys = torch.cat([self.keys, self.keys.new_zeros(missing, self.keys.shape[1])])

    def add(self, task: int, embeddings: torch.Tensor) -> None:
        self.ensure(task + 1)
        self.sums[task] += embeddings.to(self.sums).sum(dim=0)
        self.counts[task] += embeddings.shape[0]
        self.pending.setdefault(task, []).append(embeddings.detach().to(self.sums))

    def fit_key(self, task: int, steps: int = 200, lr: float = 0.05) -> list[float]:
        """Learn task `task`'s key from its observed embeddings with the pull loss; returns the losses."""
        targets = F.normalize(torch.cat(self.pending.pop(task)), dim=-1)
        generator = torch.Generator(device="cpu").manual_seed(task)
        key = torch.randn(targets.shape[1], generator=generator).to(targets).requires_grad_(True)
        optimizer = torch.optim.Adam([key], lr=lr)
        losses = []
        with torch.enable_grad():
            for _ in range(steps):
                loss = (1 - targets @ F.normalize(key, dim=0)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        self.keys[task] = F.normalize(key.detach(), dim=0)
        return losses

    def ready(self) -> list[int]:
        return [t for t in range(self.num_tasks) if self.counts[t] > 0]

    def nearest(self, embeddings: torch.Tensor, rule: str = "prototype") -> torch.Tensor:
        """Index of the most similar prototype, or learned key (rule="keys"), for each embedding (cosine)."""
        if rule == "keys":
            tasks = [t for t in range(self.num_tasks) if self.keys[t].abs().sum() > 0]
            prototypes = self.keys[tasks]
        else:
            tasks = self.ready()
            prototypes = self.sums[tasks] / self.counts[tasks].unsqueeze(1) if tasks else self.sums[:0]
        if not tasks:
            raise RuntimeError(f"no task has a {'key' if rule == 'keys' else 'prototype'} yet")
        similarity = F.normalize(embeddings.to(prototypes), dim=-1) @ F.normalize(prototypes, dim=-1).T
        return torch.tensor(tasks, device=similarity.device)[similarity.argmax(dim=-1)]
