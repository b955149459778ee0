"""Benchmarks stored as one folder per task, <data_dir>/<Task>/{train,eval,test}.json (TRACE, LONG-14), and
the split a run is scored on.

Validation is for choosing, test for reporting: a run scores the test split by default, and with
split="eval" it scores each task's eval split instead. A task that trains on its eval split (TRACE's
MeetingBank, which has no train split) holds out the last quarter of it in eval-split runs: it trains on the
first three quarters and is scored on the rest.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from moses.data.stream import Task, check_unique, read_examples
from moses.errors import DataError

SPLITS = ("test", "eval")
HELD_OUT_SHARE = 0.25  # of a task's eval split held out when the task trains on it and runs score eval


@dataclass(frozen=True)
class Benchmark:
    """What a folder benchmark fixes per task: its order, metric and generation budget (None: the longest
    answer of the task in tokens, for label tasks)."""

    name: str
    order: tuple[str, ...]
    metrics: dict[str, str]
    max_new_tokens: dict[str, int | None]


def load_folders(benchmark: Benchmark, data_dir: str | Path, tasks: list[str] | None = None,
                 n_train: int | None = None, n_test: int | None = None, eval_as_train: bool = False,
                 split: str = "test") -> list[Task]:
    """The tasks of `benchmark` in `tasks` order (default: its own), the first n_train training and n_test
    scored examples of each, scored on `split`. A task without train.json falls back to its eval split only
    with `eval_as_train`, with a warning."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: {benchmark.name} data directory not found")
    names = list(tasks) if tasks else list(benchmark.order)
    check_unique(names)
    unknown = [n for n in names if n not in benchmark.metrics]
    if unknown:
        raise DataError(f"unknown {benchmark.name} task(s) {', '.join(unknown)} (known: "
                        f"{', '.join(benchmark.order)})")
    return [_load_task(benchmark, data_dir / name, name, n_train, n_test, eval_as_train, split) for name in names]


def _load_task(benchmark: Benchmark, folder: Path, name: str, n_train: int | None, n_test: int | None,
               eval_as_train: bool, split: str) -> Task:
    if not folder.is_dir():
        raise DataError(f"{folder}: task directory not found")
    train_path, eval_path = folder / "train.json", folder / "eval.json"
    evaluation = read_examples(eval_path) if eval_path.exists() else []
    if train_path.exists():
        train = read_examples(train_path)
    elif eval_as_train:
        if not evaluation:
            raise DataError(f"{eval_path}: file not found (--eval-as-train trains on it: {train_path} is missing)")
        warnings.warn(f"{name}: no train.json, training on eval.json", stacklevel=3)
        train, evaluation = evaluation, []
        if split == "eval":  # hold out its last quarter to score on
            cut = len(train) - max(1, int(len(train) * HELD_OUT_SHARE))
            train, evaluation = train[:cut], train[cut:]
    else:
        raise DataError(f"{train_path}: file not found (pass --eval-as-train to train on eval.json)")
    if split == "eval":
        if not evaluation:
            raise DataError(f"{eval_path}: file not found (split 'eval' scores each task's eval split)")
        scored = evaluation
    else:
        scored = read_examples(folder / "test.json")
    return Task(name, train[:n_train], scored[:n_test], evaluation, metric=benchmark.metrics[name],
                max_new_tokens=benchmark.max_new_tokens[name])
