"""`moses report`: report.md and one self-contained report.html (plots inline) for a run directory."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from moses.io import atomic_write_text
from moses.report import plots
from moses.report.tables import matrix_markdown, report_markdown


def make_plots(run_dir: Path, results: dict[str, Any]) -> list[tuple[str, str]]:
    """Draw every plot the results allow into <run_dir>/plots; returns (title, relative path) pairs."""
    names, made = results["tasks"], []
    folder = run_dir / "plots"

    def add(title: str, filename: str, draw, *args) -> None:
        draw(*args, folder / filename)
        made.append((title, f"plots/{filename}"))

    if results["R"]:
        add("Transfer matrix, task id given (TIL)", "transfer_til.png", plots.transfer_heatmap, names, results["R"],
            "TIL: score after training task i (rows)")
    if results.get("R_tail"):
        add("Transfer matrix, task id inferred (TaIL)", "transfer_tail.png", plots.transfer_heatmap, names,
            results["R_tail"], "TaIL: score after training task i (rows)")
    history = [h for h in results.get("capacity_history") or [] if "used_fraction" in h]
    if history:
        add("Capacity against the number of tasks", "capacity.png", plots.capacity_growth, history)
        add("Reuse: whose weights each task reads", "reuse.png", plots.reuse_heatmap, names,
            history[-1]["reuse_matrix"])
        if history[-1].get("gate_matrix"):
            add("Borrowing: each task's gate on every task's subexperts", "gates.png", plots.gate_heatmap, names,
                history[-1]["gate_matrix"])
    if results.get("train_log"):
        add("Training loss", "loss.png", plots.training_loss, results["train_log"])
    return made


def confusion_markdown(confusion: dict[str, dict[str, int]]) -> list[str]:
    names = list(confusion)
    columns = list(next(iter(confusion.values())))
    lines = ["| true \\ inferred | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    return lines + [f"| {n} | " + " | ".join(str(confusion[n][m]) for m in columns) + " |" for n in names]


def tail_markdown(results: dict[str, Any], tail_eval: dict[str, Any] | None) -> str:
    parts = []
    if results.get("R_tail"):
        parts += ["## TaIL (task id inferred) during the run", "",
                  matrix_markdown(results["tasks"], results["R_tail"]), "",
                  "Task-id accuracy after each task: " + ", ".join(
                      "-" if a is None else f"{a:.1f}%" for a in results.get("task_id_accuracy", [])), ""]
        if (results.get("task_id_confusion") or [None])[-1]:
            parts += ["Task-id confusion after the last task (rows: true task, columns: inferred):", "",
                      *confusion_markdown(results["task_id_confusion"][-1]), ""]
    if tail_eval:
        parts += [f"## TaIL evaluation of the final model (after {tail_eval['after_task']})", "",
                  "| task | score |", "|---|---|"]
        parts += [f"| {n} | {s:.1f} |" for n, s in tail_eval["scores"].items()]
        parts += ["", f"Mean {tail_eval['mean']:.1f}."]
        if tail_eval.get("task_id_confusion"):
            parts += [f"Task-id accuracy {tail_eval['task_id_accuracy']:.1f}%. Confusion (rows: true task, columns: "
                      "inferred):", "", *confusion_markdown(tail_eval["task_id_confusion"])]
        parts.append("")
    return "\n".join(parts)


def markdown_to_html(text: str, base: Path, title: str) -> str:
    """Just enough markdown for these reports (headings, tables, images, paragraphs, `code`), images inlined."""
    def inline(s: str) -> str:
        s = html.escape(s)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", s)

    out, table = [], []

    def flush_table() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|(---\|)+", r.replace(" ", ""))]
            cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        image = re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip())
        if image:
            data = base64.b64encode((base / image.group(2)).read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{inline(image.group(1))}</figcaption></figure>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#666;font-size:90%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n")


def write_report(run_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    title = f"moses report: {results['method']} ({run_dir.name})"
    tail_path = run_dir / "eval-tail.json"
    tail_eval = json.loads(tail_path.read_text()) if tail_path.is_file() else None
    figures = make_plots(run_dir, results)
    text = report_markdown(results, title=title) + "\n" + tail_markdown(results, tail_eval)
    if figures:
        text += "\n## Plots\n\n" + "\n\n".join(f"![{t}]({p})" for t, p in figures) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "report.html", markdown_to_html(text, run_dir, title))
    return run_dir / "report.md", run_dir / "report.html"
