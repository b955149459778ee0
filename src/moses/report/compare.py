"""`moses compare`: several methods (or named variants) on one stream, one after another or `jobs` at a time,
each in its own resumable run; one table with OP's bootstrap interval and the paired interval against a
reference method."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from moses.errors import CheckpointError, ConfigError
from moses.io import atomic_write_text
from moses.methods import METHODS
from moses.metrics.bootstrap import TaskScores, op_interval, paired_difference_summary
from moses.report.plots import comparison_figure
from moses.runner.config import RunConfig
from moses.runner.lock import directory_lock
from moses.runner.predictions import after_stage, read_predictions
from moses.runner.run import CONFIG_FILE, check_output, read_config, read_results, run

COLUMNS = ("method", "lr", "OP", "OP 95% CI", "vs reference (95% CI)", "BWT", "FWT", "forgetting",
           "trainable_parameters", "stored_bytes", "owned entries per task", "precision", "split",
           "median_step_seconds", "train_seconds", "total_seconds")
RESAMPLES, SEED = 1000, 0


def lr_tag(lr: float) -> str:
    """A learning rate as a variant names it: 0.001 -> "1e-3", 0.0025 -> "2.5e-3"."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def with_lr_grid(config: RunConfig, methods: list[str], grid: list[float]) -> tuple[RunConfig, list[str]]:
    """The sweep of `methods` over the learning rates of `grid`: a variant `<name>-lr<lr>` per method (or
    variant) and lr, with its options and that lr. Methods that train nothing (zero-shot) stay as they are."""
    variants, names = dict(config.variants), []
    for name in methods:
        base = config.variants.get(name, {"method": name})
        if not getattr(METHODS.get(base.get("method")), "trains", True):
            names.append(name)
            continue
        for lr in grid:
            variants[f"{name}-lr{lr_tag(lr)}"] = {**base, "lr": lr}
            names.append(f"{name}-lr{lr_tag(lr)}")
    return replace(config, variants=variants), names


def run_lr(run_dir: Path, results: dict[str, Any]) -> float | None:
    """The learning rate a run trained with, as its saved config resolves it (its method's options over the
    config's `lr`); None for a run that trained nothing (zero-shot) or has no readable config."""
    if not results.get("train_log") or not (run_dir / CONFIG_FILE).is_file():
        return None
    try:
        config = read_config(run_dir)
    except (CheckpointError, ConfigError):
        return None
    return config.options().get("lr", config.lr)


def comparison_row(method: str, results: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
    metrics = dict(results.get("metrics") or {})
    if not getattr(METHODS.get(results.get("method")), "continual", True):  # also runs saved before the flag
        metrics["BWT"] = metrics["forgetting"] = None
    capacity = results.get("capacity") or {}
    stored = capacity.get("stored_bytes", capacity.get("stored_bytes_raw"))
    train = sum(results.get("train_seconds", []))
    steps = [row["seconds"] for row in results.get("train_log", [])]
    owned = [t["owned_entries"] for t in capacity.get("tasks", [])] or None
    return {"method": method, "lr": lr, "OP": metrics.get("OP"), "BWT": metrics.get("BWT"), "FWT": metrics.get("FWT"),
            "forgetting": metrics.get("forgetting"), "trainable_parameters": results.get("trainable_parameters"),
            "stored_bytes": stored, "owned_entries": owned,
            "median_step_seconds": statistics.median(steps) if steps else None, "train_seconds": train,
            "total_seconds": train + sum(results.get("eval_seconds", [])), "precision": results.get("precision"),
            "split": results.get("split", "test"),
            "tasks": results.get("tasks"), "final_scores": _final_row(results), "zero_shot": results.get("zero_shot")}


def _final_row(results: dict[str, Any]) -> list[float | None] | None:
    """Each task's score after the last task (None: the run has not finished)."""
    rows = results.get("R") or []
    return rows[-1] if rows and results.get("completed") == len(results.get("tasks", [])) else None


def per_task_markdown(rows: list[dict[str, Any]]) -> str:
    """Each task's final score per method, the zero-shot row first: where a method wins or loses."""
    tasks = next((r["tasks"] for r in rows if r.get("tasks")), None)
    if not tasks:
        return ""

    def cells(values: list[float | None] | None) -> str:
        return " | ".join("-" if v is None else f"{v:.1f}" for v in (values or [None] * len(tasks)))

    lines = ["| final score | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    zero = next((r["zero_shot"] for r in rows if r.get("zero_shot")), None)
    if zero:
        lines.append(f"| (zero-shot) | {cells(zero)} |")
    lines += [f"| {r['method']} | {cells(r.get('final_scores'))} |" for r in rows]
    return "\n".join(lines)


def final_scores(run_dir: Path) -> TaskScores | None:
    """[task][example] scores after the last task, from the run's saved predictions (None: not saved, e.g. a
    run made before per-example scores were recorded)."""
    results = read_results(run_dir)
    if not results or results.get("completed") != len(results.get("tasks", [])):
        return None
    stage = after_stage(len(results["tasks"]) - 1)
    answers = read_predictions(run_dir, [stage]).get(stage, {})
    scores = []
    for name in results["tasks"]:
        records = answers.get(name)
        if not records or any("score" not in r for r in records):
            return None
        scores.append([float(r["score"]) for r in records])
    return scores


def add_intervals(rows: list[dict[str, Any]], scores: dict[str, TaskScores | None], reference: str) -> None:
    """OP's 95% bootstrap interval per row, and the paired interval of OP - OP(reference) on the same
    resamples (1000, seeded), where the predictions allow it."""
    base = scores.get(reference)
    for row in rows:
        mine = scores.get(row["method"])
        row["OP_ci"] = list(op_interval(mine, RESAMPLES, SEED)) if mine else None
        row["reference"] = reference
        paired = mine and base and row["method"] != reference and [len(t) for t in mine] == [len(t) for t in base]
        row["OP_minus_reference"] = (row["OP"] - next(r["OP"] for r in rows if r["method"] == reference)
                                     if paired else None)
        row["OP_minus_reference_ci"] = row["OP_minus_reference_se"] = row["detectable_difference"] = None
        if paired:
            summary = paired_difference_summary(mine, base, RESAMPLES, SEED)
            row["OP_minus_reference_ci"] = summary["ci"]
            row["OP_minus_reference_se"] = summary["se"]
            row["detectable_difference"] = summary["detectable"]


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    def interval(low_high: list[float] | None) -> str:
        return f"[{low_high[0]:.1f}, {low_high[1]:.1f}]" if low_high else "-"

    def versus(row: dict[str, Any]) -> str:
        if row.get("OP_minus_reference_ci") is None:
            return "-"
        return f"{row['OP_minus_reference']:+.1f} {interval(row['OP_minus_reference_ci'])}"

    reference = rows[0].get("reference", "reference") if rows else "reference"
    header = [c.replace("reference", reference) for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        cells = {c: cell(row.get(c)) for c in COLUMNS}
        cells["OP 95% CI"] = interval(row.get("OP_ci"))
        cells["vs reference (95% CI)"] = versus(row)
        cells["lr"] = "-" if row.get("lr") is None else f"{row['lr']:g}"
        owned = row.get("owned_entries")
        cells["owned entries per task"] = " ".join(f"{n / 1e6:.2f}M" for n in owned) if owned else "-"
        lines.append("| " + " | ".join(cells[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def time_summary(rows: list[dict[str, Any]]) -> str:
    """The comparison's cost: seconds of training and evaluation summed over its runs, split by precision
    (a comparison may reuse runs made on other machines, so the split says what the sum is made of)."""
    by_precision: dict[str, float] = {}
    for row in rows:
        precision = row.get("precision") or "?"
        by_precision[precision] = by_precision.get(precision, 0.0) + (row.get("total_seconds") or 0.0)
    total = sum(by_precision.values())
    parts = ", ".join(f"{name} {seconds:,.0f} s" for name, seconds in sorted(by_precision.items()) if seconds)
    return (f"Time: {len(rows)} runs, {total:,.0f} s ({total / 3600:.2f} h) of training and evaluation summed "
            f"over the runs{f' ({parts})' if parts else ''}.")


def power_summary(rows: list[dict[str, Any]]) -> str:
    """How large a difference to the reference these test sets can detect, row by row: a paired interval that
    holds 0 means little where the difference is below this."""
    rows = [r for r in rows if r.get("detectable_difference") is not None]
    if not rows:
        return ""
    reference = rows[0]["reference"]
    sizes = ", ".join(f"{r['method']} {r['detectable_difference']:.1f}" for r in rows)
    return (f"Smallest OP difference to {reference} that these test sets detect with 80% power (the paired "
            f"interval excluding 0; 2.80 x the paired bootstrap SE): {sizes}.")


def compare(config: RunConfig, methods: list[str], resume: bool = True, echo=print,
            reference: str = "moses", jobs: int = 1, lr_grid: list[float] | None = None) -> list[dict[str, Any]]:
    """Run each method or variant into <output>/<name> (a finished run is reused, an interrupted one resumed)
    and write compare.md, compare.json and compare.png into <output>. Each method runs with its entry in
    `options_by_method`; `method_options` apply to the config's own method only; a variant (config
    `variants`) runs its method with its own options. The zero-shot row is evaluated once and shared.
    `jobs` > 1 runs that many at a time in worker processes, each with its share of the torch threads.
    `lr_grid` runs every method at each of those learning rates instead (`with_lr_grid`)."""
    unknown = [m for m in methods if m not in METHODS and m not in config.variants]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)}"
                          f"{'; variants: ' + ', '.join(config.variants) if config.variants else ''})")
    if lr_grid:
        if any(not isinstance(lr, (int, float)) or not 0 < lr < float("inf") for lr in lr_grid):
            raise ConfigError(f"--lr-grid {lr_grid}: every learning rate must be a finite number > 0")
        config, methods = with_lr_grid(config, methods, lr_grid)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be a whole number of at least 1")
    if jobs > 1:
        from accelerate import PartialState

        if PartialState().num_processes > 1:
            raise ConfigError("--jobs runs methods side by side on one machine; under `accelerate launch` every "
                              "run already uses all processes: drop --jobs or the launcher")
    output = Path(config.output)
    check_output(output)
    with directory_lock(output):
        return _compare_locked(config, methods, resume, echo, reference, output, jobs)


def _finished(results: dict[str, Any] | None) -> bool:
    return bool(results) and results.get("completed") == len(results.get("tasks", []))


def _run_in_worker(config: RunConfig, resume: bool, zero_shot_from: Path | None, label: str, threads: int) -> None:
    """One method of a parallel comparison, in its own process (spawned: no state shared with the parent)."""
    import torch

    torch.set_num_threads(threads)
    run(config, resume=resume, echo=partial(print, flush=True), zero_shot_from=zero_shot_from, label=label)


def _run_side_by_side(pending: list[tuple[str, RunConfig, bool]], zero_shot_from: Path | None, jobs: int,
                      echo) -> None:
    """`jobs` runs at a time, each with an equal share of this process's torch threads. The first failure cancels
    the runs not yet started and is raised once the running ones have finished; every run is resumable."""
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    echo(f"running {len(pending)} method(s) {jobs} at a time, {threads} torch thread(s) each")
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_run_in_worker, cfg, resume, zero_shot_from, method, threads)
                   for method, cfg, resume in pending]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            wait(futures)
            raise failed[0].exception()


def _compare_locked(config: RunConfig, methods: list[str], resume: bool, echo, reference: str,
                    output: Path, jobs: int = 1) -> list[dict[str, Any]]:
    began = time.perf_counter()
    configs = {method: config.for_method(method, str(output / method)) for method in methods}
    zero_shot_from, pending = None, []
    for method in methods:
        run_dir = Path(configs[method].output)
        existing = read_results(run_dir)
        if existing is not None and existing.get("split", "test") != config.split:
            raise ConfigError(f"{run_dir}: scored on the {existing.get('split', 'test')} split, and this comparison "
                              f"is on {config.split}: choose another --output")
        if _finished(existing) and resume:
            echo(f"[{method}] finished earlier: reusing {run_dir}")
            if existing.get("zero_shot") is not None and zero_shot_from is None:
                zero_shot_from = run_dir
        else:
            pending.append((method, configs[method], resume and existing is not None))
    if jobs > 1 and len(pending) > 1:
        if zero_shot_from is None and config.zero_shot:  # one run evaluates the row the others share, alone
            # first: the zero-shot method when listed (it only evaluates), else the first listed
            first_index = next((i for i, p in enumerate(pending) if p[1].method == "zero-shot"), 0)
            method, first, resumed = pending.pop(first_index)
            results = run(first, resume=resumed, echo=echo, label=method)
            zero_shot_from = Path(first.output) if results.get("zero_shot") is not None else None
        _run_side_by_side(pending, zero_shot_from, jobs, echo)
    else:
        for number, (method, method_config, resumed) in enumerate(pending, 1):
            elapsed = time.perf_counter() - began
            echo(f"run {number} of {len(pending)}: {method}"
                 + (f" ({elapsed / 60:,.0f} min so far)" if number > 1 else ""))
            results = run(method_config, resume=resumed, echo=echo, zero_shot_from=zero_shot_from, label=method)
            if results.get("zero_shot") is not None and zero_shot_from is None:
                zero_shot_from = Path(method_config.output)
    if pending:
        echo(f"{len(pending)} run(s) in {time.perf_counter() - began:,.0f} s of wall time"
             + (f", {jobs} at a time" if jobs > 1 else ""))
    rows, scores = [], {}
    for method in methods:
        run_dir = Path(configs[method].output)
        results = read_results(run_dir)
        rows.append(comparison_row(method, results, run_lr(run_dir, results)))
        scores[method] = final_scores(run_dir)
    add_intervals(rows, scores, reference if reference in methods else methods[0])
    atomic_write_text(output / "compare.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(output / "compare.md", "\n\n".join(
        part for part in (comparison_markdown(rows), power_summary(rows), time_summary(rows), per_task_markdown(rows))
        if part) + "\n")
    comparison_figure(rows, output / "compare.png")
    return rows
