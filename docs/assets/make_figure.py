"""Draw docs/assets/moses.svg: one adapted projection under MoSEs' default reading (R2), while task 3 trains.

    .venv/bin/python docs/assets/make_figure.py

The output is deterministic (fixed SVG hash salt, no date), so re-running it changes the file only when this
script changes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

FROZEN, OWN, ROUTER, GATE, BASE = "#d9d9d9", "#9ecae1", "#fdd0a2", "#c7e9c0", "#f0f0f0"
OUT = Path(__file__).with_name("moses.svg")


def box(ax, x, y, w, h, text, color, size=10, edge="#444444", style="-"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec=edge,
                                lw=1.2, ls=style))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, start, end, color="#444444", style="-|>", ls="-", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.2,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def main() -> None:
    plt.rcParams["svg.hashsalt"] = "moses"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small and selectable
    plt.rcParams["font.family"] = "DejaVu Sans"
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5.2)
    ax.axis("off")

    # input, frozen base projection, sum, output
    ax.text(0.35, 2.6, "x", fontsize=16, ha="center", va="center", style="italic")
    box(ax, 2.0, 4.15, 5.2, 0.7, "W$_0$: the base model's projection (frozen)", BASE)
    ax.add_patch(plt.Circle((8.4, 2.6), 0.28, fc="white", ec="#444444", lw=1.2))
    ax.text(8.4, 2.6, "+", fontsize=16, ha="center", va="center")
    ax.text(9.55, 2.6, "h", fontsize=16, ha="center", va="center", style="italic")
    arrow(ax, (0.55, 2.75), (2.0, 4.5))
    arrow(ax, (7.2, 4.5), (8.3, 2.85))
    arrow(ax, (8.68, 2.6), (9.4, 2.6))

    # the subexperts: two earlier tasks' (frozen) and the training task's own
    rows = [(3.25, "task 1's subexpert  B$_1$A$_1$\n(frozen)", FROZEN),
            (2.35, "task 2's subexpert  B$_2$A$_2$\n(frozen)", FROZEN),
            (1.45, "task 3's own subexpert  B$_3$A$_3$\n(trains; starts at delta 0 or a copy)", OWN)]
    for y, text, color in rows:
        box(ax, 2.0, y, 3.2, 0.72, text, color, size=9)
        arrow(ax, (0.55, 2.6), (2.0, y + 0.36))
    # gates on each subexpert's output
    box(ax, 5.75, 2.55, 1.55, 1.4, "top-k of the\nrouter's softmax\n× transfer\ngate λ$_3$", GATE, size=9)
    arrow(ax, (5.2, 3.61), (5.75, 3.5))
    arrow(ax, (5.2, 2.71), (5.75, 2.9))
    arrow(ax, (7.3, 3.25), (8.15, 2.75))
    ax.text(6.75, 1.95, "gate 1 (always on)", fontsize=9, ha="center", va="top")
    arrow(ax, (5.2, 1.81), (8.2, 2.4))

    # router of the training task
    box(ax, 2.0, 0.2, 3.2, 0.85, "router of task 3\n(on the subexperts' features A·x)", ROUTER, size=9)
    arrow(ax, (0.55, 2.45), (2.0, 0.62))
    arrow(ax, (5.2, 0.62), (6.5, 2.55), rad=0.25)
    ax.text(6.4, 0.35, "λ$_3$ starts at 0: how much\nto borrow is learned", fontsize=8.5, ha="left",
            va="bottom", color="#333333")

    ax.text(5.0, 5.05, "h = W$_0$x + (α/r) [ B$_3$A$_3$x + λ$_3$ Σ$_{i\\,\\in\\,top\\text{-}k}$ g$_i$(x) B$_i$A$_i$x ]",
            fontsize=11, ha="center", va="center")
    fig.savefig(OUT, format="svg", bbox_inches="tight", metadata={"Date": None})
    print(OUT)


if __name__ == "__main__":
    main()
