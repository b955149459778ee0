"""Markdown tables of a run: the score matrix R and the continual-learning metrics."""

from __future__ import annotations

from typing import Any


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def matrix_markdown(names: list[str], rows: list[list[float | None]],
                    zero_shot: list[float | None] | None = None) -> str:
    """R as a markdown table: row i = after training task i, column j = score on task j."""
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    if zero_shot is not None:
        lines.append("| zero-shot | " + " | ".join(_cell(v) for v in zero_shot) + " |")
    for name, row in zip(names, rows, strict=False):
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def metrics_markdown(metrics: dict[str, float | None]) -> str:
    keys = list(metrics)
    return "\n".join(["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|",
                      "| " + " | ".join(_cell(metrics[k]) for k in keys) + " |"])


def report_markdown(results: dict[str, Any], title: str = "moses run") -> str:
    names = results["tasks"]
    parts = [f"# {title}", "",
             f"Method `{results['method']}`, {results['completed']} of {len(names)} tasks trained, "
             f"{results.get('trainable_parameters') or 0:,} trainable parameters "
             f"({'the most any one task trains' if 'trainable_parameters_per_task' in results else 'at the start'}).",
             "",
             "## Score matrix R (row: after training task i; column: task j; 0-100)", "",
             matrix_markdown(names, results["R"], results.get("zero_shot")), ""]
    if results.get("metrics"):
        parts += ["## Continual-learning metrics (over the tasks trained so far)", "",
                  metrics_markdown(results["metrics"]), "",
                  "OP: mean final score. BWT: mean change of earlier tasks since they were learned (negative = "
                  "forgetting); BWT_clipped counts only losses. FWT: needs `fwt: true`. AAT: average accuracy "
                  "over time.", ""]
    if results.get("train_seconds"):
        train, evaluation = sum(results["train_seconds"]), sum(results.get("eval_seconds", []))
        parts += [f"Training {train:.0f}s, evaluation {evaluation:.0f}s, {train + evaluation:.0f}s in all.", ""]
    capacity = results.get("capacity")
    if capacity and "used_fraction" not in capacity:  # a LoRA family method: adapters and their bytes
        parts += ["## Capacity", "", f"Stored {capacity.get('stored_bytes', 0):,} bytes"
                  + (f" in {capacity['adapters']} adapter(s)." if "adapters" in capacity else "."), ""]
    elif capacity:
        parts += ["## Capacity", "",
                  f"Pool used: {100 * capacity['used_fraction']:.1f}% of {capacity['pool_entries']:,} entries; "
                  f"stored {capacity['stored_bytes_raw']:,} bytes raw, {capacity['stored_bytes_compressed']:,} with "
                  f"compressed masks; {capacity['num_tasks']} per-task LoRAs of rank {capacity['lora_per_task_rank']}"
                  f" would take {capacity['lora_per_task_bytes']:,} bytes.", "",
                  "| task | active | owned | reused |", "|---|---|---|---|"]
        parts += [f"| {t['name']} | {t['active_entries']:,} | {t['owned_entries']:,} | {t['reused_entries']:,} |"
                  for t in capacity["tasks"]]
        parts.append("")
    return "\n".join(parts)
