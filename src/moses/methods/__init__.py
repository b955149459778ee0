"""Continual-learning methods behind one interface (base.Method); each is one file."""

from __future__ import annotations

from typing import Any

from moses.errors import ConfigError
from moses.methods.base import Method
from moses.methods.moses import MoSEsMethod
from moses.methods.seq_lora import SeqLoRAMethod

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (MoSEsMethod, SeqLoRAMethod)}


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name](**(options or {}))


__all__ = ["METHODS", "Method", "make_method"]
