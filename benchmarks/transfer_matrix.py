"""How far one task's adapter carries to another: each task of a finished per-task run scored with the adapter
of every earlier task (and its own), on the run's split. A high score off the diagonal means a later task could
borrow that adapter instead of adding its own (the growth rule's question); rows of one family show whether
a wrong task id would be harmless under TaIL.

    python benchmarks/transfer_matrix.py RUN_DIR --out long14/transfer_matrix [--full] [--plot PATH.png]
    python benchmarks/transfer_matrix.py RUN_DIR --out long14/transfer_losses --losses

RUN_DIR is a `moses run` folder of a method with one adapter per task (lora-per-task, moses). Cell (k, j): task
k's score with task j's adapter (task id j given). Without --full only j <= k is scored (what task k could
borrow when it arrives). Writes benchmarks/results/<out>.{json,md}. Each cell is scored as `moses eval` scores
a task; the diagonal equals the run's final row. With --losses a cell is instead the answer loss of task k's
first 8 training examples under task j's adapter (what a start chosen by loss compares; forward passes only),
with the base model's loss beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import results_name, write_results

from moses.runner.evaluate import evaluate_task
from moses.runner.run import load_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", required=True, type=results_name)
    parser.add_argument("--full", action="store_true", help="also score each task with later tasks' adapters")
    parser.add_argument("--plot", type=Path, default=None, help="write a heatmap of the matrix here (.png)")
    parser.add_argument("--losses", action="store_true", help="first-batch answer losses instead of scores")
    args = parser.parse_args()
    if args.losses:
        first_batch_losses(args)
        return
    loaded = load_run(args.run_dir)
    config, tasks = loaded.config, list(loaded.trained.values())
    names = [t.name for t in tasks]
    matrix: list[list[float | None]] = [[None] * len(tasks) for _ in tasks]
    began = time.perf_counter()
    pairs = [(k, j) for k in range(len(tasks)) for j in range(len(tasks)) if args.full or j <= k]
    for done, (k, j) in enumerate(pairs, 1):
        with loaded.method.inference_context(names[j]):
            matrix[k][j], _ = evaluate_task(loaded.model, loaded.tokenizer, tasks[k], config.eval_batch_size,
                                            config.max_prompt_tokens, loaded.precision)
        print(f"[{done}/{len(pairs)}] {names[k]} with {names[j]}'s adapter: {matrix[k][j]:.1f} "
              f"({(time.perf_counter() - began) / 60:.1f} min)", flush=True)
    rows = []
    for k, name in enumerate(names):
        earlier = [(matrix[k][j], names[j]) for j in range(k)]
        best = max(earlier) if earlier else None
        rows.append({"task": name, **{names[j]: "" if v is None else f"{v:.0f}" for j, v in enumerate(matrix[k])},
                     "best earlier": f"{best[0]:.0f} ({best[1]})" if best else "-",
                     "own - best earlier": f"{matrix[k][k] - best[0]:+.0f}" if best else "-"})
    payload = {"run_dir": str(args.run_dir), "method": config.method, "split": config.split,
               "precision": loaded.precision, "tasks": names, "matrix": matrix,
               "seconds": time.perf_counter() - began}
    write_results(args.out, payload, rows, ["task", *names, "best earlier", "own - best earlier"],
                  f"Score of each task (row) with each task's adapter (column), task id given, from the final "
                  f"checkpoint of {args.run_dir} ({config.method}, {config.split} split, {loaded.precision}). "
                  f"The diagonal is the task's own adapter; 'best earlier' is the best adapter of a task before "
                  f"it in the stream. {len(pairs)} cells, {payload['seconds'] / 60:.0f} min.")
    if args.plot:
        plot(matrix, names, args.plot)


def first_batch_losses(args: argparse.Namespace) -> None:
    import torch

    loaded = load_run(args.run_dir)
    config, tasks, method = loaded.config, list(loaded.trained.values()), loaded.method
    names = [t.name for t in tasks]
    matrix: list[list[float | None]] = [[None] * len(tasks) for _ in tasks]
    base = []
    with torch.no_grad():
        for k, task in enumerate(tasks):
            loss_of = method.first_batch_loss(task)
            with loaded.model.disable_adapter():
                base.append(float(loss_of()))
            for j in range(len(tasks)):
                if args.full or j <= k:
                    with method.inference_context(names[j]):
                        matrix[k][j] = float(loss_of())
            print(f"{names[k]}: base {base[k]:.2f}, " + ", ".join(
                f"{names[j]} {v:.2f}" for j, v in enumerate(matrix[k]) if v is not None), flush=True)
    rows = []
    for k, name in enumerate(names):
        earlier = [(matrix[k][j], names[j]) for j in range(k)]
        best = min(earlier) if earlier else None
        rows.append({"task": name, "base": f"{base[k]:.2f}",
                     **{names[j]: "" if v is None else f"{v:.2f}" for j, v in enumerate(matrix[k])},
                     "best earlier": f"{best[0]:.2f} ({best[1]})" if best else "-"})
    payload = {"run_dir": str(args.run_dir), "method": config.method, "precision": loaded.precision,
               "tasks": names, "base_loss": base, "losses": matrix}
    write_results(args.out, payload, rows, ["task", "base", *names, "best earlier"],
                  f"Answer loss (mean per answer token) of each task's first 8 training examples (row) under "
                  f"each task's adapter (column) and under the base model, from the final checkpoint of "
                  f"{args.run_dir} ({config.method}, {loaded.precision}).")


def plot(matrix: list[list[float | None]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix])
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(names), 1 + 0.5 * len(names)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("adapter of task")
    ax.set_ylabel("scored task")
    for (k, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, k, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 60 else "k")
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
