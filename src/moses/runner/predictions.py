"""A run's generated answers: one file per run, `<run>/predictions.jsonl`, one record per test example of each
evaluation, in the order they were evaluated:

    {"stage": "after-03", "task": "FOMC", "index": 0, "prediction": "...", "reference": "...", "score": 100.0}

- stage: `zero-shot` (the base model), `after-<i>` (after training task i, two digits, from 00),
  `after-<i>-tail` (the same model without the task id, config `tail`), `eval-til` / `eval-tail` (`moses eval`);
- index: the example's place in the task's test split;
- score: the example's score under the task's metric, 0-100. A task's score is the mean of its examples',
  which is what lets `moses compare` bootstrap intervals (paired ones too) from this file.

Writing replaces one stage's records and rewrites the file atomically (moses.io.atomic_write): a crash at
any point leaves the previous file whole, and a resumed run replaces the stages it evaluates again. The
file is rewritten once per stage, so it costs its size times the number of stages in writes.

Reading is `read_predictions`, the one reader every consumer uses (compare, the benchmark scripts). It
ignores a torn last line (one without its newline: a file copied or truncated while written), takes the
later block where one stage and task appear twice (a stage evaluated again), and also reads the layout
before this one, `predictions/<stage>-<task>.jsonl` (one file per stage and task; `predictions/eval-<mode>.jsonl`
for every task of `moses eval`), so older run directories keep working. Where both exist, the new file's
records of a stage and task win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moses.errors import CheckpointError
from moses.io import atomic_write_text, read_text

PREDICTIONS_FILE = "predictions.jsonl"
OLD_DIRECTORY = "predictions"  # the layout before predictions.jsonl: predictions/<stage>-<task>.jsonl
FIELDS = ("stage", "task", "index", "prediction", "reference", "score")

# {stage: {task: records in test-split order}}
Predictions = dict[str, dict[str, list[dict[str, Any]]]]


def after_stage(i: int) -> str:
    """The stage after training task `i` (0-based): after-00, after-01, ..."""
    return f"after-{i:02d}"


def _lines(path: Path, required: tuple[str, ...] = ("task",)) -> list[dict[str, Any]]:
    """The file's records; a last line without its newline is torn and left out, any other malformed line
    raises CheckpointError naming the file and line."""
    text = read_text(path, CheckpointError)
    lines = text.split("\n")
    lines.pop()  # "" after a final newline, else the torn last line
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: malformed record at line {number} ({err.msg})") from None
        if not isinstance(record, dict) or any(key not in record for key in required):
            raise CheckpointError(f"{path}: line {number} is not a prediction record (it needs "
                                  f"{' and '.join(required)})")
        records.append(record)
    return records


def _group(records: list[dict[str, Any]], into: Predictions) -> None:
    """Add records (each with stage and task) to `into`; a stage and task met again after other records
    starts over: the later block is the one evaluated last."""
    previous = None
    for record in records:
        key = (record["stage"], record["task"])
        tasks = into.setdefault(key[0], {})
        if key != previous:
            tasks[key[1]] = []
            previous = key
        tasks[key[1]].append(record)


def _old_layout(run_dir: Path) -> Predictions:
    """predictions/<stage>-<task>.jsonl (and predictions/eval-<mode>.jsonl, every task in one file), with each
    record given its stage and index as predictions.jsonl has them."""
    out: Predictions = {}
    directory = run_dir / OLD_DIRECTORY
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl")):
        counts: dict[str, int] = {}
        records = []
        for record in _lines(path):
            task = record["task"]
            stage = path.stem[: -len(task) - 1] if path.stem.endswith(f"-{task}") else path.stem
            index = counts[task] = counts.get(task, -1) + 1
            records.append({"stage": stage, "task": task, "index": index,
                            **{k: v for k, v in record.items() if k not in ("stage", "task", "index")}})
        _group(records, out)
    return out


def read_predictions(run_dir: str | Path, stages: list[str] | None = None) -> Predictions:
    """{stage: {task: records}} of a run directory (either layout; {} when it saved none), only `stages`
    when given. Each record has the fields of FIELDS (score may be missing in runs older than per-example
    scores)."""
    run_dir = Path(run_dir)
    out = _old_layout(run_dir)
    path = run_dir / PREDICTIONS_FILE
    if path.is_file():
        new: Predictions = {}
        _group(_lines(path, ("stage", "task")), new)
        for stage, tasks in new.items():
            out.setdefault(stage, {}).update(tasks)
    return {s: t for s, t in out.items() if stages is None or s in stages}


def write_predictions(run_dir: str | Path, stage: str, records: list[dict[str, Any]]) -> None:
    """Make `records` (each with task, prediction, reference, score; in test-split order within a task) the
    whole of `stage` in <run_dir>/predictions.jsonl: the stage's earlier records go, the rest are kept, and
    the file is replaced atomically."""
    path = Path(run_dir) / PREDICTIONS_FILE
    kept = [r for r in _lines(path, ("stage", "task")) if r["stage"] != stage] if path.is_file() else []
    counts: dict[str, int] = {}
    added = []
    for record in records:
        index = counts[record["task"]] = counts.get(record["task"], -1) + 1
        added.append({"stage": stage, "task": record["task"], "index": index,
                      **{k: v for k, v in record.items() if k not in ("stage", "task", "index")}})
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept + added))
