"""Task-id inference for TaIL (task id unknown at test time), the spec's default "prototype" rule.

A prompt is embedded by the frozen base model (adapters off): the mean of its last hidden states over
the prompt's tokens. Each task's prototype is the mean embedding of its training prompts; a test prompt
goes to the task whose prototype is most similar (cosine). Prototypes are running sums, so they can be
built batch by batch and are saved with the adapter.
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

    @property
    def num_tasks(self) -> int:
        return self.sums.shape[0]

    def ensure(self, num_tasks: int) -> None:
        missing = num_tasks - self.num_tasks
        if missing > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(missing, self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(missing)])

    def add(self, task: int, embeddings: torch.Tensor) -> None:
        self.ensure(task + 1)
        self.sums[task] += embeddings.to(self.sums).sum(dim=0)
        self.counts[task] += embeddings.shape[0]

    def ready(self) -> list[int]:
        return [t for t in range(self.num_tasks) if self.counts[t] > 0]

    def nearest(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Index of the most similar prototype (cosine) for each embedding."""
        tasks = self.ready()
        if not tasks:
            raise RuntimeError("no task has a prototype yet")
        prototypes = self.sums[tasks] / self.counts[tasks].unsqueeze(1)
        similarity = F.normalize(embeddings.to(prototypes), dim=-1) @ F.normalize(prototypes, dim=-1).T
        return torch.tensor(tasks, device=similarity.device)[similarity.argmax(dim=-1)]
