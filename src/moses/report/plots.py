"""PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from moses.io import atomic_write


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _figure().close(fig)


def comparison_bars(rows: list[dict], path: Path) -> None:
    """Grouped bars of OP and BWT per method."""
    plt = _figure()
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(names) * 2), 3.6))
    for ax, key, color in ((axes[0], "OP", "#4C72B0"), (axes[1], "BWT", "#C44E52")):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        errors = None
        if key == "OP" and any(r.get("OP_ci") for r in rows):  # the 95% bootstrap interval as error bars
            errors = [[v - r["OP_ci"][0] if r.get("OP_ci") else 0 for v, r in zip(values, rows, strict=True)],
                      [r["OP_ci"][1] - v if r.get("OP_ci") else 0 for v, r in zip(values, rows, strict=True)]]
        bars = ax.bar(names, values, color=color, yerr=errors, capsize=3 if errors else 0)
        ax.bar_label(bars, labels=[f"{v:.1f}" if r[key] is not None else "n/a" for v, r in zip(values, rows,
                                                                                               strict=True)])
        ax.set_title(f"{key} (higher is better)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Methods on the same stream, budget and evaluation", y=1.04)
    save_png(fig, path)


def transfer_heatmap(names: list[str], rows: list[list[float | None]], title: str, path: Path) -> None:
    """R as an annotated heatmap: row i = after training task i, column j = task j (blank: not evaluated)."""
    import numpy as np

    plt = _figure()
    grid = np.full((len(rows), len(names)), np.nan)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if value is not None:
                grid[i, j] = value
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 1.0 + 0.7 * len(rows)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center",
                        color="white" if grid[i, j] < 60 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [f"after {n}" for n in names[: len(rows)]])
    ax.set_xlabel("evaluated on task j")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="score (0-100)")
    save_png(fig, path)


def capacity_growth(history: list[dict], path: Path) -> None:
    """MoSEs stored bytes and used fraction against the number of tasks, beside per-task LoRAs' linear growth."""
    plt = _figure()
    tasks = [h["num_tasks"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(tasks, [h["stored_bytes_raw"] / 1e6 for h in history], "o-", label="MoSEs (masks raw)")
    left.plot(tasks, [h["stored_bytes_compressed"] / 1e6 for h in history], "o--", label="MoSEs (masks LZMA)")
    left.plot(tasks, [h["lora_per_task_bytes"] / 1e6 for h in history], "s-", label="one LoRA per task")
    left.set_xlabel("tasks learned")
    left.set_ylabel("stored MB")
    left.legend()
    right.plot(tasks, [100 * h["used_fraction"] for h in history], "o-")
    right.set_ylim(0, 100)
    right.set_xlabel("tasks learned")
    right.set_ylabel("pool used (%)")
    for ax in (left, right):
        ax.set_xticks(tasks)
        ax.grid(alpha=0.3)
    fig.suptitle("Capacity against the number of tasks")
    save_png(fig, path)


def reuse_heatmap(names: list[str], reuse: list[list[int]], path: Path) -> None:
    """Share of each task's mask owned by each earlier task (diagonal: its own new entries)."""
    import numpy as np

    plt = _figure()
    grid = np.full((len(reuse), len(reuse)), np.nan)
    for t, row in enumerate(reuse):
        total = sum(row) or 1
        for s, count in enumerate(row):
            grid[t, s] = 100.0 * count / total
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(reuse), 1.0 + 0.7 * len(reuse)))
    image = ax.imshow(grid, cmap="magma", vmin=0, vmax=100)
    for t in range(grid.shape[0]):
        for s in range(t + 1):
            ax.text(s, t, f"{grid[t, s]:.0f}%", ha="center", va="center",
                    color="white" if grid[t, s] < 60 else "black", fontsize=8)
    ax.set_xticks(range(len(reuse)), [f"owned by {n}" for n in names[: len(reuse)]], rotation=35, ha="right")
    ax.set_yticks(range(len(reuse)), [f"{n} reads" for n in names[: len(reuse)]])
    ax.set_title("Reuse: whose weights each task's mask reads")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the task's active entries")
    save_png(fig, path)


def training_loss(train_log: list[dict], path: Path) -> None:
    """Loss per optimizer step, one colour per task."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    step = 0
    for task in dict.fromkeys(r["task"] for r in train_log):
        losses = [r["loss"] for r in train_log if r["task"] == task]
        ax.plot(range(step, step + len(losses)), losses, label=task)
        step += len(losses)
    ax.set_xlabel("optimizer step (all tasks in order)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("Training loss per task")
    save_png(fig, path)
