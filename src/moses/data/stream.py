"""A task of a continual-learning stream: named examples of {prompt, answer} and how to score them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict


class Example(TypedDict):
    prompt: str
    answer: str


@dataclass
class Task:
    name: str
    train: list[Example]
    test: list[Example]
    eval: list[Example] = field(default_factory=list)
    metric: str = "exact_match"
    max_new_tokens: int = 8
