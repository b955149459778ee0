"""O-LoRA (Wang et al. 2023): a new LoRA per task, trained orthogonal to the frozen earlier ones; at
inference every adapter is on (their sum), so no task id is needed."""

from __future__ import annotations

import torch
from torch import nn

from moses.methods.lora import StackedLoRAMethod


def orthogonality_loss(model: nn.Module, old: list[str], new: str) -> torch.Tensor:
    """sum over layers and old adapters of |A_old A_new^T| (entrywise L1): 0 when the row spaces of the
    down-projections are orthogonal."""
    total = torch.zeros(())
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and new in lora_a:
            a_new = lora_a[new].weight
            for name in old:
                total = total.to(a_new) + (lora_a[name].weight @ a_new.T).abs().sum()
    return total


class OLoRAMethod(StackedLoRAMethod):
    name = "o-lora"
    extra_defaults = {"lambda1": 0.5}

    def extra_loss(self, batch, outputs) -> torch.Tensor | None:
        if len(self.adapters) < 2:
            return None
        return self.options["lambda1"] * orthogonality_loss(self.model, self.adapters[:-1], self.adapters[-1])
