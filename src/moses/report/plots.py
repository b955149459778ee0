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
        bars = ax.bar(names, values, color=color)
        ax.bar_label(bars, labels=[f"{v:.1f}" if r[key] is not None else "n/a" for v, r in zip(values, rows,
                                                                                               strict=True)])
        ax.set_title(f"{key} (higher is better)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Methods on the same stream, budget and evaluation", y=1.04)
    save_png(fig, path)
