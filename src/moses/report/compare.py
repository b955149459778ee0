"""`moses compare`: several methods on one stream, one after another, each in its own resumable run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moses.errors import ConfigError
from moses.io import atomic_write_text
from moses.methods import METHODS
from moses.report.plots import comparison_bars
from moses.runner.config import RunConfig
from moses.runner.run import read_results, run

COLUMNS = ("method", "OP", "BWT", "FWT", "forgetting", "trainable_parameters", "stored_bytes", "train_seconds",
           "total_seconds")


def comparison_row(method: str, results: dict[str, Any]) -> dict[str, Any]:
    metrics = results.get("metrics") or {}
    capacity = results.get("capacity") or {}
    stored = capacity.get("stored_bytes", capacity.get("stored_bytes_raw"))
    train = sum(results.get("train_seconds", []))
    return {"method": method, "OP": metrics.get("OP"), "BWT": metrics.get("BWT"), "FWT": metrics.get("FWT"),
            "forgetting": metrics.get("forgetting"), "trainable_parameters": results.get("trainable_parameters"),
            "stored_bytes": stored, "train_seconds": train,
            "total_seconds": train + sum(results.get("eval_seconds", []))}


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def compare(config: RunConfig, methods: list[str], resume: bool = True, echo=print) -> list[dict[str, Any]]:
    """Run each method into <output>/<method> (a finished run is reused, an interrupted one resumed) and
    write compare.md, compare.json and compare.png into <output>. Each method runs with its entry in
    `options_by_method`; `method_options` apply to the config's own method only."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    output = Path(config.output)
    rows = []
    for method in methods:
        method_config = config.for_method(method, str(output / method))
        existing = read_results(Path(method_config.output))
        if existing and existing.get("completed") == len(existing.get("tasks", [])) and resume:
            echo(f"[{method}] finished earlier: reusing {method_config.output}")
            results = existing
        else:
            results = run(method_config, resume=resume and existing is not None, echo=echo)
        rows.append(comparison_row(method, results))
    atomic_write_text(output / "compare.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(output / "compare.md", comparison_markdown(rows) + "\n")
    comparison_bars(rows, output / "compare.png")
    return rows
