"""`moses demo`: MoSEs on the embedded stream, showing that learning a task leaves earlier tasks untouched."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from moses.adapter import MoSEsConfig, get_moses_model
from moses.data.demo import demo_stream
from moses.io import atomic_write_text
from moses.metrics import exact_match
from moses.models import DEFAULT_MODEL, load_model
from moses.runner.evaluate import generate_answers
from moses.runner.train import train_on_examples


@dataclass
class DemoSettings:
    model: str = DEFAULT_MODEL
    output: str = "runs/demo"
    lr: float = 3e-3
    epochs: int = 4
    batch_size: int = 8
    n_train: int = 64
    n_test: int = 24
    seed: int = 0
    device: str = "cpu"


def run_demo(settings: DemoSettings, echo=print) -> dict:
    torch.manual_seed(settings.seed)
    began = time.perf_counter()
    echo(f"loading {settings.model} ...")
    base, tokenizer = load_model(settings.model, device=settings.device)
    model = get_moses_model(base, MoSEsConfig())
    tasks = demo_stream(settings.n_train, settings.n_test, settings.seed)
    echo(f"tasks: {', '.join(t.name for t in tasks)} ({settings.n_train} train / {settings.n_test} test each)")

    def evaluate(task, adapter_task: str | None) -> tuple[float, list[str]]:
        prompts = [e["prompt"] for e in task.test]
        if adapter_task is None:
            with model.disable_adapter():
                preds = generate_answers(model, tokenizer, prompts, task.max_new_tokens)
        else:
            model.set_task(adapter_task)
            preds = generate_answers(model, tokenizer, prompts, task.max_new_tokens)
        return exact_match(preds, [e["answer"] for e in task.test]), preds

    zero_shot = [evaluate(t, None)[0] for t in tasks]
    rows: list[list[float | None]] = []
    recorded: dict[str, list[str]] = {}
    timings = []
    for i, task in enumerate(tasks):
        model.add_task(task.name)
        started = time.perf_counter()
        log = train_on_examples(model, tokenizer, task.train, model.optimizer_param_groups(settings.lr),
                                epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed,
                                description=f"train {task.name}")
        model.end_task()
        timings.append(time.perf_counter() - started)
        echo(f"trained {task.name}: {len(log)} steps in {timings[-1]:.0f}s, loss {log[0]['loss']:.3f} -> "
             f"{log[-1]['loss']:.3f}")
        row: list[float | None] = []
        for j, seen in enumerate(tasks):
            if j > i:
                row.append(None)
                continue
            score, preds = evaluate(seen, seen.name)
            row.append(score)
            if j == i:
                recorded[seen.name] = preds
        rows.append(row)
    unchanged = {t.name: evaluate(t, t.name)[1] == recorded[t.name] for t in tasks}
    capacity = model.capacity()
    results = {"tasks": [t.name for t in tasks], "zero_shot": zero_shot, "R": rows, "train_seconds": timings,
               "earlier_predictions_unchanged": unchanged, "used_fraction": capacity["used_fraction"],
               "capacity_tasks": capacity["tasks"], "wall_seconds": time.perf_counter() - began}
    output = Path(settings.output)
    model.save_pretrained(output / "adapter")
    atomic_write_text(output / "results.json", json.dumps(results, indent=2) + "\n")
    echo("")
    echo(format_matrix([t.name for t in tasks], zero_shot, rows))
    for name, same in unchanged.items():
        echo(f"{name}: predictions after the last task identical to those when it ended: {same}")
    owned = ", ".join(f"{t['name']} owns {t['owned_entries']:,} reuses {t['reused_entries']:,}"
                      for t in capacity["tasks"])
    echo(f"pool used: {100 * capacity['used_fraction']:.1f}% ({owned})")
    echo(f"adapter saved to {output / 'adapter'}; results in {output / 'results.json'} "
         f"({results['wall_seconds']:.0f}s in all)")
    return results


def format_matrix(names: list[str], zero_shot: list[float], rows: list[list[float | None]]) -> str:
    width = max(12, *(len(n) + 2 for n in names))
    lines = ["accuracy (exact match, %): row = after training task i, column = task j",
             "".ljust(width) + "".join(n.rjust(width) for n in names),
             "zero-shot".ljust(width) + "".join(f"{s:.1f}".rjust(width) for s in zero_shot)]
    for name, row in zip(names, rows, strict=True):
        lines.append(f"after {name}".ljust(width) + "".join(("-" if s is None else f"{s:.1f}").rjust(width)
                                                            for s in row))
    return "\n".join(lines)
