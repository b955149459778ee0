"""Tasks and task streams: named examples of {prompt, answer}, a metric and generation settings.

Streams come from the TRACE layout (`trace.py`), the embedded demo (`demo.py`), or a manifest (YAML or
JSON) naming JSON / JSONL files per task. Every malformed input raises DataError naming file and place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from moses.errors import DataError
from moses.io import read_json, read_mapping, read_text

METRIC_NAMES = ("exact_match", "first_char_accuracy", "rouge_l", "edit_similarity", "sari")
# a prompt or answer longer than this is a broken file (a whole corpus on one line), not an example: prompts are
# cut to a few hundred tokens anyway, and tokenising megabytes would stall the run for minutes
MAX_FIELD_CHARS = 1_000_000


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
    max_new_tokens: int | None = 8  # None: the task's longest answer, in tokens (`answer_token_budget`)

    def __post_init__(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise DataError(f"task {self.name!r}: unknown metric {self.metric!r} (one of {', '.join(METRIC_NAMES)})")


def read_examples(path: str | Path) -> list[Example]:
    """A JSON list, or JSON Lines, of objects with string fields "prompt" and "answer"."""
    path = Path(path)
    if path.suffix == ".jsonl":
        text = read_text(path)
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: malformed JSON on line {number} column {err.colno}: {err.msg}") from None
    else:
        items = read_json(path)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of {{\"prompt\", \"answer\"}} objects")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {index} is not an object")
        for key in ("prompt", "answer"):
            if key not in item:
                raise DataError(f"{path}: item {index} has no field {key!r}")
            if not isinstance(item[key], str):
                raise DataError(f"{path}: item {index} field {key!r} is not a string")
            if not item[key].strip():
                raise DataError(f"{path}: item {index} field {key!r} is empty (nothing to learn or score)")
            if len(item[key]) > MAX_FIELD_CHARS:
                raise DataError(f"{path}: item {index} field {key!r} has {len(item[key]):,} characters (at most "
                                f"{MAX_FIELD_CHARS:,}: is the file one example per item?)")
    if not items:
        raise DataError(f"{path}: holds no examples")
    return [{"prompt": item["prompt"], "answer": item["answer"]} for item in items]


def check_unique(names: list[str], flag: str = "--tasks") -> None:
    """A task trained twice in one stream would have two runs' state under one name."""
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{flag} names {name} twice; each task appears once in a stream")
        seen.add(name)


def load_manifest(path: str | Path, n_train: int | None = None, n_test: int | None = None,
                  split: str = "test") -> list[Task]:
    """A stream described in YAML or JSON: {"tasks": [{"name", "train", "test", "eval"?, "metric"?,
    "max_new_tokens"?, "n_train"?, "n_test"?}]}; file paths are relative to the manifest. Caps keep the
    first examples of each file (the training loop shuffles, seeded). max_new_tokens "auto" is the task's
    longest answer in tokens. With split "eval" each task is scored on its eval file."""
    path = Path(path)
    data = read_mapping(path)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise DataError(f"{path}: expected a non-empty list under 'tasks'")
    allowed = {"name", "train", "test", "eval", "metric", "max_new_tokens", "n_train", "n_test"}
    stream, names = [], set()
    for index, spec in enumerate(tasks):
        where = f"{path}: tasks[{index}]"
        if not isinstance(spec, dict):
            raise DataError(f"{where} is not a mapping")
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}")
        for key in ("name", "train", "test"):
            if not isinstance(spec.get(key), str):
                raise DataError(f"{where}: '{key}' is required and must be a string")
        if spec["name"] in names:
            raise DataError(f"{where}: duplicate task name {spec['name']!r}")
        names.add(spec["name"])
        base = path.parent
        if split == "eval" and not isinstance(spec.get("eval"), str):
            raise DataError(f"{where}: split 'eval' needs an 'eval' file for every task")
        train = read_examples(base / spec["train"])[: spec.get("n_train", n_train)]
        evaluation = read_examples(base / spec["eval"]) if "eval" in spec else []
        scored = evaluation if split == "eval" else read_examples(base / spec["test"])
        test = scored[: spec.get("n_test", n_test)]
        max_new = spec.get("max_new_tokens", 8)
        if max_new == "auto":
            max_new = None
        elif not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
            raise DataError(f"{where}: max_new_tokens must be a positive integer or 'auto'")
        try:
            stream.append(Task(spec["name"], train, test, evaluation, spec.get("metric", "exact_match"), max_new))
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
    return stream
