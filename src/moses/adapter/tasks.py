"""The task list of a MoSEs adapter: names in training order, how many have ended, and what is recorded per
task. Kept below `model.py` so that saving, capacity and export read it without the model."""

from __future__ import annotations

from dataclasses import dataclass, field

from moses.errors import TaskError


@dataclass
class TaskList:
    names: list[str] = field(default_factory=list)
    ended: int = 0  # tasks 0..ended-1 are stored and frozen
    own_init_sources: list[int | None] = field(default_factory=list)  # R2: whose subexperts each task started from
    mask_moved: list[float | None] = field(default_factory=list)  # R1: share of a task's final mask not in its first
    grew: list[bool] = field(default_factory=list)  # R2: whether the task added subexperts (else it only borrows)
    read_from: list[int | None] = field(default_factory=list)  # R2, router_init="best": whose subexperts it read first
    start_losses: list[dict[str, float] | None] = field(default_factory=list)  # the starts it chose among, by loss

    def __len__(self) -> int:
        return len(self.names)

    def index(self, task: str | int) -> int:
        """The index of a task given by name or index; a TaskError naming the known tasks otherwise."""
        if isinstance(task, int) and not isinstance(task, bool):
            if 0 <= task < len(self.names):
                return task
            raise TaskError(f"task index {task} out of range: {len(self.names)} task(s)")
        if task not in self.names:
            known = ", ".join(self.names) or "none yet"
            raise TaskError(f"unknown task {task!r} (known tasks: {known})")
        return self.names.index(task)

    def add(self, name: str, own_init_source: int | None) -> int:
        self.names.append(name)
        task = len(self.names) - 1
        self.own_init_sources = self.own_init_sources[:task] + [own_init_source]
        self.grew, self.read_from = self.grew[:task] + [True], self.read_from[:task] + [None]
        self.start_losses = self.start_losses[:task] + [None]
        return task

    def end(self, task: int, mask_moved: float | None) -> None:
        self.mask_moved = self.mask_moved[:task] + [mask_moved]
        self.ended = task + 1

    def to_json(self, training: int | None, active: int | None) -> dict:
        def name(i: int | None) -> str | None:
            return None if i is None else self.names[i]

        return {"tasks": self.names, "ended": self.ended, "training": name(training), "active": name(active),
                "mask_moved": self.mask_moved, "own_init_sources": self.own_init_sources, "grew": self.grew,
                "read_from": self.read_from, "start_losses": self.start_losses}

    @classmethod
    def from_json(cls, data: dict) -> TaskList:
        names, ended = list(data["tasks"]), data["ended"]
        moved, sources = data.get("mask_moved"), data.get("own_init_sources")
        def listed(key: str, default: object) -> list:  # adapters saved before a record existed: its default
            value = data.get(key)
            return list(value) if isinstance(value, list) and len(value) == len(names) else [default] * len(names)

        return cls(names, ended, list(sources) if isinstance(sources, list) else [None] * len(names),
                   list(moved) if isinstance(moved, list) else [None] * ended, listed("grew", True),
                   listed("read_from", None), listed("start_losses", None))
