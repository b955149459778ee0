"""One continual-learning run: train a task stream with one method, evaluate after every task, and keep a
run directory that survives interruption.

    <output>/config.json              every hyperparameter
    <output>/results.json             R, zero-shot row, metrics, timings, capacity (rewritten atomically)
    <output>/train_log.jsonl          one row per optimizer step
    <output>/predictions.jsonl        every generated answer with its score, one record per (stage, task,
                                      example): moses.runner.predictions
    <output>/checkpoints/<i>-<task>/  the method's state after task i, verified on load (the two newest kept)
    <output>/moses.lock               held by the process working in the directory
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moses import faults
from moses.data.demo import demo_stream
from moses.data.long14 import load_long14
from moses.data.stream import Task, check_unique, load_manifest
from moses.data.trace import load_trace
from moses.errors import CheckpointError, ConfigError
from moses.io import atomic_write_text, read_json
from moses.machine import describe_machine
from moses.methods import Method, make_method
from moses.metrics.continual import summarize
from moses.models import load_model
from moses.precision import accelerate_mixed_precision, resolve_precision
from moses.runner.checkpoints import final_checkpoint, newest_good_checkpoint, prune, save_checkpoint
from moses.runner.config import RunConfig
from moses.runner.evaluate import evaluate_task
from moses.runner.lock import directory_lock
from moses.runner.predictions import PREDICTIONS_FILE, after_stage, read_predictions, write_predictions
from moses.runner.train import train_task

CONFIG_FILE, RESULTS_FILE, LOG_FILE = "config.json", "results.json", "train_log.jsonl"


def build_stream(config: RunConfig) -> list[Task]:
    if config.stream == "demo":
        stream = demo_stream(n_train=config.n_train or 64, n_test=config.n_test or 24, seed=config.seed)
    elif config.stream == "trace":
        return load_trace(config.data_dir, config.tasks, config.n_train, config.n_test, config.eval_as_train,
                          config.split)
    elif config.stream == "long14":
        return load_long14(config.data_dir, config.tasks, config.n_train, config.n_test, config.split)
    else:
        stream = load_manifest(config.manifest, config.n_train, config.n_test, config.split)
    if config.tasks:
        check_unique(config.tasks)
        by_name = {t.name: t for t in stream}
        unknown = [n for n in config.tasks if n not in by_name]
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)} (this stream has: {', '.join(by_name)})")
        stream = [by_name[n] for n in config.tasks]
    return stream


def read_results(output: Path) -> dict[str, Any] | None:
    path = output / RESULTS_FILE
    return read_json(path, CheckpointError) if path.exists() else None


def read_config(output: Path) -> RunConfig:
    """The settings a run directory was started with (its config.json)."""
    return RunConfig.from_dict(read_json(output / CONFIG_FILE, CheckpointError), str(output / CONFIG_FILE))


def _accelerator(config: RunConfig):
    """(accelerator, precision, why): bf16 or fp32 resolved for the run's device."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    precision, why = resolve_precision(config.precision, PartialState(cpu=config.device == "cpu").device.type)
    wanted = accelerate_mixed_precision(precision)
    if AcceleratorState._shared_state.get("_mixed_precision", wanted) != wanted:
        AcceleratorState._reset_state()  # one process, runs of two precisions (tests, comparisons)
    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision=wanted,
                              gradient_accumulation_steps=config.grad_accum)
    return accelerator, precision, why


def _write_results(output: Path, results: dict[str, Any]) -> None:
    atomic_write_text(output / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    atomic_write_text(output / LOG_FILE, "".join(json.dumps(row) + "\n" for row in results["train_log"]))


def _silent(*_: Any) -> None:
    pass


def _method(config: RunConfig) -> Method:
    method = make_method(config.method, config.options())
    method.max_prompt_tokens, method.max_answer_tokens = config.max_prompt_tokens, config.max_answer_tokens
    return method


def _shared_zero_shot(config: RunConfig, source: Path | None, output: Path) -> list[float | None] | None:
    """The zero-shot row of the finished run `source` when it was evaluated with the same settings and saved
    its zero-shot answers, which are copied into `output` (the base model's answers do not depend on the
    method); None otherwise (the row is then evaluated again)."""
    if source is None or not (source / CONFIG_FILE).is_file():
        return None
    other = read_config(source)
    results = read_results(source)
    if other.evaluation_key() != config.evaluation_key() or not results or results.get("zero_shot") is None:
        return None
    answers = read_predictions(source, ["zero-shot"]).get("zero-shot", {})
    if any(name not in answers for name in results["tasks"]):
        return None
    write_predictions(output, "zero-shot", [r for name in results["tasks"] for r in answers[name]])
    return results["zero_shot"]


def check_output(output: Path) -> None:
    """A run directory that can be written, or one clear error before any work starts."""
    for place in (output, *output.parents):
        if place.exists():
            if not place.is_dir():
                raise ConfigError(f"--output {output}: {place} is a file, not a directory")
            if not os.access(place, os.W_OK | os.X_OK):
                raise ConfigError(f"--output {output}: {place} is not writable")
            return


# settings a resumed run may change, e.g. after a non-finite loss: they act on the tasks still to train
RESUMABLE_CHANGES = ("lr", "max_grad_norm")


def _without_resumable(config: RunConfig) -> RunConfig:
    """The settings that decide what a resumed run computes. Of `options_by_method` only the run's own
    method's entry counts: a compare's config that later gained another method's lr resumes this run."""
    def no_lr(options: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k != "lr"}

    own = no_lr(config.options_by_method.get(config.method, {}))
    return replace(config, lr=1.0, max_grad_norm=None, method_options=no_lr(config.method_options),
                   options_by_method={config.method: own} if own else {})


def _check_resumable(output: Path, config: RunConfig) -> list[str]:
    """The settings changed since the run started (only learning rates and clipping may change), or one
    clear error naming the others."""
    saved = read_config(output)
    if _without_resumable(saved) != _without_resumable(config):
        diffs = [k for k, v in _without_resumable(saved).to_dict().items()
                 if _without_resumable(config).to_dict()[k] != v]
        raise CheckpointError(f"{output / CONFIG_FILE}: the run was started with other settings "
                              f"({', '.join(diffs)}); resume with the same ones (only "
                              f"{', '.join(RESUMABLE_CHANGES)} and method lr options may change)")
    return [k for k, v in saved.to_dict().items() if config.to_dict()[k] != v]


def run(config: RunConfig, resume: bool = False, echo=print, zero_shot_from: Path | None = None,
        label: str | None = None) -> dict[str, Any]:
    """Train and evaluate the stream; with `resume`, continue after the last finished task. `zero_shot_from`:
    a run directory whose zero-shot row is reused when its evaluation settings match (moses compare);
    `label` names the run in messages (a variant's name; default the method). The output directory is
    locked while the run works in it."""
    from accelerate import PartialState

    output = Path(config.output)
    check_output(output)
    tasks = build_stream(config)  # bad data or settings: one error before anything is written
    method = _method(config)
    main = PartialState(cpu=config.device == "cpu").is_main_process
    with directory_lock(output) if main else nullcontext():
        return _run_locked(config, tasks, method, resume, echo, zero_shot_from, label or config.method)


def _run_locked(config: RunConfig, tasks: list[Task], method: Method, resume: bool, echo,
                zero_shot_from: Path | None, label: str) -> dict[str, Any]:
    from accelerate.utils import set_seed

    output = Path(config.output)
    results = read_results(output)
    if results is not None and not resume and results.get("completed", 0) > 0:
        raise ConfigError(f"{output}: already holds a run; pass --resume to continue it or choose another --output")
    changed = _check_resumable(output, config) if resume and results is not None else []
    if changed:
        echo(f"[{label}] resuming with changed {', '.join(changed)}: they apply to the tasks still to train")
    names = [t.name for t in tasks]
    accelerator, precision, why = _accelerator(config)
    method.precision = precision
    main = accelerator.is_main_process
    if not main:  # one process speaks for all
        echo = _silent
    if main:
        output.mkdir(parents=True, exist_ok=True)
        for stale in output.glob(".*.tmp"):  # a write torn by a crash; the file it was replacing is intact
            stale.unlink(missing_ok=True)
        config.save(output / CONFIG_FILE)
    if results is None or not resume:
        results = {"method": config.method, "tasks": names, "completed": 0, "zero_shot": None,
                   "R": [], "train_seconds": [], "eval_seconds": [], "train_log": [], "capacity": None,
                   "metrics": None, "trainable_parameters": None}
    results["precision"] = precision
    results["split"] = config.split
    results["machine"] = describe_machine(accelerator.device.type)
    set_seed(config.seed)
    echo(f"[{label}] loading {config.model} (precision {precision}: {why}; {results['machine']['cpu']}, "
         f"{results['machine']['torch_threads']} threads) ...")
    base, tokenizer = load_model(config.model, device=str(accelerator.device), dtype=config.dtype)
    completed = results["completed"]
    last = None
    if completed:
        usable, last = newest_good_checkpoint(output, tasks, completed, lambda text: warnings.warn(text,
                                                                                                 stacklevel=2))
        if usable < completed:
            echo(f"[{label}] resuming from {last or 'the base model'} instead: task(s) "
                 f"{', '.join(names[usable:completed])} will be trained again")
            _forget_tasks_from(results, usable, names)
            completed = usable
    if last is not None:
        model = method.load(base, tokenizer, last)
        method.restore(tasks, completed)
        echo(f"[{label}] resuming after task {completed}/{len(tasks)} ({names[completed - 1]})")
    else:
        model = method.prepare(base, tokenizer)
    results["trainable_parameters"] = method.trainable_parameters()

    def evaluate_row(stage: str, columns: list[int], task_given: bool, as_base: bool = False) -> list[float | None]:
        began = time.perf_counter()
        row: list[float | None] = [None] * len(tasks)
        records: list[dict] = []
        zero_shot = read_predictions(output, ["zero-shot"]).get("zero-shot", {}) if as_base and main else {}
        for j in columns:
            if as_base:  # the model is the base model: the zero-shot row's answers, not generated again
                row[j] = results["zero_shot"][j]
                if main and names[j] not in zero_shot:
                    raise CheckpointError(f"{output / PREDICTIONS_FILE}: no zero-shot answers of {names[j]} to copy "
                                          f"into {stage}; start the run again in a new --output")
                records += zero_shot.get(names[j], [])
                continue
            with method.inference_context(names[j] if task_given else None):
                row[j], task_records = evaluate_task(model, tokenizer, tasks[j], config.eval_batch_size,
                                                     config.max_prompt_tokens, precision)
            records += task_records
        if main:  # the stage's answers in one atomic rewrite: a crash before it leaves the stage to evaluate again
            write_predictions(output, stage, records)
        results["eval_seconds"].append(time.perf_counter() - began)
        return row

    if config.zero_shot and results["zero_shot"] is None:
        single = accelerator.num_processes == 1  # several processes evaluate together: no sharing
        results["zero_shot"] = _shared_zero_shot(config, zero_shot_from, output) if single else None
        if results["zero_shot"] is None:
            results["zero_shot"] = evaluate_row("zero-shot", list(range(len(tasks))), task_given=False)
        else:
            echo(f"[{label}] zero-shot row reused from {zero_shot_from}")
        if main:
            _write_results(output, results)

    def still_base(stage: int) -> bool:
        """Whether the model after `stage` is still the base model (and its zero-shot answers are saved)."""
        return (method.base_until_trained and results["zero_shot"] is not None
                and all(not method.training_examples(tasks[k], k, tasks) for k in range(stage + 1)))

    for i in range(completed, len(tasks)):
        task = tasks[i]
        set_seed(config.seed + i)
        began = time.perf_counter()
        method.on_task_start(task, i)
        started = time.perf_counter()
        # what this task trains (MoSEs: its own subexperts, router and gate; the ended tasks' are frozen)
        per_task = results.get("trainable_parameters_per_task", [])[:i] + [method.trainable_parameters()]
        results["trainable_parameters_per_task"] = per_task
        results["trainable_parameters"] = max(per_task)
        examples = method.training_examples(task, i, tasks)
        log = train_task(model, tokenizer, examples, method, config, accelerator, seed=config.seed + i,
                         description=f"[{label}] train {task.name} ({i + 1}/{len(tasks)})")
        trained = time.perf_counter()
        method.on_task_end(task, i)
        ended = time.perf_counter()
        results["train_seconds"] = results["train_seconds"][:i] + [ended - began]
        results["train_log"] = [r for r in results["train_log"] if r["task"] != task.name]
        results["train_log"] += [{"task": task.name, **row} for row in log]
        if main:
            save_checkpoint(method, output, i, task)
        saved = time.perf_counter()
        columns = list(range(len(tasks))) if config.fwt else list(range(i + 1))
        if config.eval_rows == "diagonal" and i < len(tasks) - 1:
            columns = [i]
        row = evaluate_row(after_stage(i), columns, task_given=True, as_base=still_base(i))
        results["R"] = results["R"][:i] + [row]
        # where the task's time went: the method's set-up before training (MoSEs: choosing its start), the
        # steps, its wrap-up after them (MoSEs: recording TaIL prototypes), the checkpoint, the evaluation
        results["task_seconds"] = results.get("task_seconds", [])[:i] + [{
            "task_start": started - began, "training": trained - started, "task_end": ended - trained,
            "checkpoint": saved - ended, "evaluation": time.perf_counter() - saved}]
        if config.tail:
            tail_row = evaluate_row(f"{after_stage(i)}-tail", columns, task_given=False)
            results["R_tail"] = results.get("R_tail", [])[:i] + [tail_row]
            confusion = task_id_confusion(method, [tasks[j] for j in columns], names[: i + 1])
            results["task_id_confusion"] = results.get("task_id_confusion", [])[:i] + [confusion]
            results["task_id_accuracy"] = (results.get("task_id_accuracy", [])[:i]
                                           + [confusion_accuracy(confusion) if confusion else None])
        results["completed"] = i + 1
        results["capacity"] = method.capacity()
        results["capacity_history"] = results.get("capacity_history", [])[:i] + [results["capacity"]]
        seen = [[r[j] for j in range(i + 1)] for r in results["R"]]
        complete = all(score is not None for score in seen[-1])  # not in the middle of a diagonal run
        results["metrics"] = (summarize(seen, results["zero_shot"][: i + 1] if results["zero_shot"] else None,
                                        continual=method.continual)
                              if complete else None)
        if main:
            _write_results(output, results)
            prune(output, i)
        scores = ", ".join(f"{names[j]} {row[j]:.1f}" for j in columns if j <= i)
        final = f", final loss {log[-1]['loss']:.3f}" if log else ""
        echo(f"[{label}] after {task.name}: {scores} ({results['train_seconds'][i]:.0f}s training{final})")
        faults.reached("between-tasks")
    return results


def _forget_tasks_from(results: dict[str, Any], usable: int, names: list[str]) -> None:
    """Results as they were after `usable` tasks (their checkpoint is the newest one that verifies)."""
    results["completed"] = usable
    for key in ("R", "R_tail", "train_seconds", "task_seconds", "capacity_history", "task_id_confusion",
                "task_id_accuracy"):
        if key in results:
            results[key] = results[key][:usable]
    results["train_log"] = [r for r in results["train_log"] if r["task"] in names[:usable]]
    results["capacity"] = results["capacity_history"][-1] if results.get("capacity_history") else None
    results["metrics"] = None


def task_id_confusion(method, tasks: list[Task], candidates: list[str]) -> dict[str, dict[str, int]] | None:
    """Rows: each task's test prompts; columns: the task the method infers for them (None: it infers none)."""
    confusion = {}
    for task in tasks:
        inferred = method.infer_task_names([e["prompt"] for e in task.test])
        if inferred is None:
            return None
        confusion[task.name] = {name: inferred.count(name) for name in candidates}
    return confusion


def confusion_accuracy(confusion: dict[str, dict[str, int]]) -> float:
    total = sum(sum(row.values()) for row in confusion.values())
    return 100.0 * sum(row.get(name, 0) for name, row in confusion.items()) / total


@dataclass
class LoadedRun:
    """A run's last checkpoint loaded for inference: its config, stream, method, model and trained tasks."""

    config: RunConfig
    stream: list[Task]
    completed: int
    method: Method
    model: Any  # the method's model (a peft or MoSEs wrapper of the base model)
    tokenizer: Any
    precision: str

    @property
    def trained(self) -> dict[str, Task]:
        return {t.name: t for t in self.stream[: self.completed]}


def load_run(output: Path, tasks: list[str] | None = None) -> LoadedRun:
    """Load the last good checkpoint of the run in `output` (for `moses eval` and analyses of a finished run);
    `tasks`, when given, must all be trained in it (checked before the model loads)."""
    if not (output / CONFIG_FILE).is_file():
        raise ConfigError(f"{output}: no {CONFIG_FILE} (not a run directory)")
    config = read_config(output)
    results = read_results(output)
    completed = results["completed"] if results else 0
    stream = build_stream(config)
    last = final_checkpoint(output, stream, completed)
    trained = [t.name for t in stream[:completed]]
    unknown = [n for n in tasks or [] if n not in trained]
    if unknown:
        raise ConfigError(f"task(s) {', '.join(unknown)} not trained in this run (trained: {', '.join(trained)})")
    method = _method(config)
    accelerator, precision, _ = _accelerator(config)
    method.precision = precision
    base, tokenizer = load_model(config.model, device=str(accelerator.device), dtype=config.dtype)
    model = method.load(base, tokenizer, last)
    return LoadedRun(config, stream, completed, method, model, tokenizer, precision)


def evaluate_run(output: Path, mode: str = "til", tasks: list[str] | None = None) -> dict[str, Any]:
    """Scores of a run's last checkpoint on its trained tasks, with the task id given (til) or not (tail);
    written to <output>/eval-<mode>.json, the answers to <output>/predictions.jsonl as stage eval-<mode>."""
    loaded = load_run(output, tasks)
    method, config, trained = loaded.method, loaded.config, loaded.trained
    chosen = tasks or list(trained)
    scores, records = {}, []
    for name in chosen:
        with method.inference_context(name if mode == "til" else None):
            scores[name], task_records = evaluate_task(loaded.model, loaded.tokenizer, trained[name],
                                                       config.eval_batch_size, config.max_prompt_tokens,
                                                       loaded.precision)
        records += task_records
    path = output / f"eval-{mode}.json"
    summary = {"mode": mode, "precision": loaded.precision, "after_task": loaded.stream[loaded.completed - 1].name,
               "scores": scores, "mean": sum(scores.values()) / len(scores)}
    confusion = task_id_confusion(method, [trained[n] for n in chosen], list(trained)) if mode == "tail" else None
    if confusion:
        summary["task_id_accuracy"] = confusion_accuracy(confusion)
        summary["task_id_confusion"] = confusion
    write_predictions(output, f"eval-{mode}", records)  # first: a summary on disk has its answers beside it
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return {**summary, "path": str(path)}
