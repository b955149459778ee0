"""Continual-learning methods behind one interface (base.Method); each is one file."""

from __future__ import annotations

from typing import Any

from moses.errors import ConfigError
from moses.methods.base import Method
from moses.methods.ewc import EWCMethod
from moses.methods.inflora import InfLoRAMethod
from moses.methods.lora_per_task import LoRAPerTaskMethod
from moses.methods.moe_lora import MoELoRAMethod
from moses.methods.moses import MoSEsMethod
from moses.methods.multitask import MultitaskMethod
from moses.methods.o_lora import OLoRAMethod
from moses.methods.replay import ReplayMethod
from moses.methods.seq_lora import SeqLoRAMethod
from moses.methods.zero_shot import ZeroShotMethod

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    MoSEsMethod, SeqLoRAMethod, LoRAPerTaskMethod, ReplayMethod, EWCMethod, OLoRAMethod, InfLoRAMethod,
    MoELoRAMethod, MultitaskMethod, ZeroShotMethod)}


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """A method from its options; `lr`, valid for every method, is its learning rate in place of the run's."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    options = dict(options or {})
    lr = options.pop("lr", None)
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < float("inf")):
        raise ConfigError(f"{name} option lr={lr!r}: must be a finite number > 0")
    method = METHODS[name](**options)
    method.lr = lr
    return method


__all__ = ["METHODS", "Method", "make_method"]
