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


def comparison_figure(rows: list[dict], path: Path) -> None:
    """One row per method: OP with its 95% bootstrap interval, OP minus the reference's OP with its paired
    interval (the figure a claim of a win rests on), BWT, and each task's final score beside zero-shot's."""
    import numpy as np

    plt = _figure()
    names = [r["method"] for r in rows]
    reference = rows[0].get("reference") if rows else None
    height = 1.2 + 0.42 * len(rows)
    fig = plt.figure(figsize=(15, 2 * height + 1.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[height, height + 0.4], hspace=0.3, wspace=0.08, top=0.92)
    places = np.arange(len(rows))[::-1]  # the first method on top

    ax = fig.add_subplot(grid[0, 0])
    values = [r["OP"] if r.get("OP") is not None else np.nan for r in rows]
    low = [v - r["OP_ci"][0] if r.get("OP_ci") else 0 for v, r in zip(values, rows, strict=True)]
    high = [r["OP_ci"][1] - v if r.get("OP_ci") else 0 for v, r in zip(values, rows, strict=True)]
    ax.barh(places, values, xerr=[low, high], color="#4C72B0", capsize=3)
    for y, v in zip(places, values, strict=True):
        ax.text(0.5, y, "n/a" if np.isnan(v) else f"{v:.1f}", va="center", color="white", fontsize=8)
    ax.set_yticks(places, names)
    ax.set_title("OP, 95% bootstrap interval")

    ax = fig.add_subplot(grid[0, 1], sharey=ax)
    for y, r in zip(places, rows, strict=True):
        if r.get("OP_minus_reference_ci"):
            d, (lo, hi) = r["OP_minus_reference"], r["OP_minus_reference_ci"]
            color = "#2CA02C" if lo > 0 else "#C44E52" if hi < 0 else "#7F7F7F"
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3)
            ax.text(d, y - 0.22, f"{d:+.1f} [{lo:.1f}, {hi:.1f}]", fontsize=7, va="top", ha="center")
        else:
            ax.text(0, y, "reference" if r["method"] == reference else "n/a", ha="center", va="center", fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title(f"OP - OP({reference}), paired 95% interval")
    ax.set_xlabel("green: interval above 0, red: below 0, grey: holds 0")
    ax.tick_params(axis="y", labelleft=False)

    ax = fig.add_subplot(grid[0, 2], sharey=ax)
    trained = [r.get("trainable_parameters") != 0 and r.get("BWT") is not None for r in rows]
    bwt = [r["BWT"] if ok else 0.0 for r, ok in zip(rows, trained, strict=True)]
    ax.barh(places, bwt, color="#C44E52")
    for y, v, ok in zip(places, bwt, trained, strict=True):
        ax.text(v if ok else 0, y, f" {v:.1f} " if ok else " n/a", va="center", fontsize=8,
                ha="right" if v < 0 else "left")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(min(min(bwt), 0) * 1.2 - 1, max(max(bwt), 0) * 1.2 + 1)
    ax.set_title("BWT (0: no forgetting)")
    ax.tick_params(axis="y", labelleft=False)

    tasks = next((r["tasks"] for r in rows if r.get("tasks")), None)
    if tasks:
        ax = fig.add_subplot(grid[1, :])
        zero = next((r["zero_shot"] for r in rows if r.get("zero_shot")), None)
        shown = [r for r in rows if not (zero and r.get("trainable_parameters") == 0)]  # zero-shot: once
        labels = (["(zero-shot)"] if zero else []) + [r["method"] for r in shown]
        table = ([zero] if zero else []) + [r.get("final_scores") or [None] * len(tasks) for r in shown]
        scores = np.array([[np.nan if v is None else v for v in row] for row in table], dtype=float)
        image = ax.imshow(scores, cmap="viridis", vmin=0, vmax=max(60.0, float(np.nanmax(scores, initial=0))),
                          aspect="auto")
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                if not np.isnan(scores[i, j]):
                    ax.text(j, i, f"{scores[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if scores[i, j] < 0.6 * image.norm.vmax else "black")
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title("Final score per task (after the last task)")
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    fig.suptitle("Methods on the same stream, budget and evaluation", y=0.97)
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
    rows = [[100.0 * count / (sum(row) or 1) for count in row] for row in reuse]
    _task_by_task(rows, [f"owned by {n}" for n in names], names, "{:.0f}%", 100.0,
                  "Reuse: whose weights each task's mask reads", "% of the task's active entries", path)


def gate_heatmap(names: list[str], gates: list[list[float]], path: Path) -> None:
    """Task routing: the gate each task (row) puts on each task's subexperts (column; the diagonal is its own,
    0 when it added none)."""
    top = max([1.0, *(g for row in gates for g in row)])
    _task_by_task(gates, [f"{n}'s" for n in names], names, "{:.2f}", top,
                  "What each task reads: its gate on each task's subexperts", "gate (mean over layers)", path)


def _task_by_task(rows: list[list[float]], columns: list[str], names: list[str], fmt: str, top: float,
                  title: str, label: str, path: Path) -> None:
    """A lower-triangular heatmap, row t = what task t reads of tasks 0..t, each cell annotated."""
    import numpy as np

    plt = _figure()
    size = len(rows)
    grid = np.full((size, size), np.nan)
    for t, row in enumerate(rows):
        grid[t, : len(row)] = row
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * size, 1.0 + 0.7 * size))
    image = ax.imshow(grid, cmap="magma", vmin=0, vmax=top)
    for t in range(size):
        for s in range(t + 1):
            ax.text(s, t, fmt.format(grid[t, s]), ha="center", va="center",
                    color="white" if grid[t, s] < 0.6 * top else "black", fontsize=8)
    ax.set_xticks(range(size), columns[:size], rotation=35, ha="right")
    ax.set_yticks(range(size), [f"{n} reads" for n in names[:size]])
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
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
