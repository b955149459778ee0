"""Sequential LoRA: one peft LoRA adapter trained through all tasks; the forgetting reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from moses.errors import ConfigError
from moses.methods.base import Method


class SeqLoRAMethod(Method):
    name = "seq-lora"
    defaults = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults)
            raise ConfigError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: {known})")
        super().__init__(**{**self.defaults, **options})

    def lora_config(self):
        from peft import LoraConfig

        o = self.options
        return LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"],
                          target_modules=o["target_modules"], task_type="CAUSAL_LM")

    def prepare(self, model: nn.Module, tokenizer) -> nn.Module:
        from peft import get_peft_model

        self.tokenizer = tokenizer
        self.model = get_peft_model(model, self.lora_config())
        return self.model

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"name": "lora", "params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": 0.0}]

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        from peft import PeftModel

        self.tokenizer = tokenizer
        self.model = PeftModel.from_pretrained(model, directory, is_trainable=True)
        return self.model
