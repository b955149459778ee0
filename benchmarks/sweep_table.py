"""The learning-rate sweep as one table: each method's OP (95% bootstrap interval) at every swept lr, from a
`moses compare` of the sweep's variants (`<method>-lr1e-3`, ...; the plain method name is the run's lr), and
the lr each method is then run at (the best OP).

    python benchmarks/sweep_table.py benchmarks/results/lr_sweep/compare.json [--plain-lr 2e-3]
        [--alias moses-r2-rank2-warm=r2@5e-3] [--plot sweep.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def sweep_rows(rows: list[dict], plain_lr: str, aliases: dict[str, tuple[str, str]] | None = None
               ) -> dict[str, dict[str, dict]]:
    """{method: {lr: compare row}} for the rows named `<method>` (at `plain_lr`) or `<method>-lr<lr>`, or
    named in `aliases` (name: (method, lr))."""
    table: dict[str, dict[str, dict]] = {}
    for row in rows:
        match = re.fullmatch(r"(.+)-lr([0-9.]+e-[0-9]+)", row["method"])
        if row["method"] in (aliases or {}):
            method, lr = aliases[row["method"]]
        else:
            method, lr = (match.group(1), match.group(2)) if match else (row["method"], plain_lr)
        table.setdefault(method, {})[lr] = row
    return table


def markdown(table: dict[str, dict[str, dict]]) -> str:
    """One row per swept method; where the runs were made in more than one precision (machines with and
    without native bf16), each cell names its own."""
    lrs = sorted({lr for by_lr in table.values() if len(by_lr) > 1 for lr in by_lr}, key=float)
    mixed = len({row.get("precision") for by_lr in table.values() for row in by_lr.values()}) > 1
    lines = ["| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " | best lr |",
             "|---" * (len(lrs) + 2) + "|"]
    for method, by_lr in table.items():
        if len(by_lr) < 2:  # not a sweep (e.g. an ablation variant)
            continue
        cells = []
        for lr in lrs:
            row = by_lr.get(lr)
            cells.append("-" if row is None or row["OP"] is None else
                         f"{row['OP']:.1f} [{row['OP_ci'][0]:.1f}, {row['OP_ci'][1]:.1f}]"
                         + (f" {row.get('precision') or '?'}" if mixed else ""))
        best = max((lr for lr in by_lr if by_lr[lr]["OP"] is not None), key=lambda lr: by_lr[lr]["OP"])
        swept = sorted(by_lr, key=float)
        edge = (" (lowest swept: extend the grid below)" if best == swept[0] else
                " (highest swept: extend the grid above)" if best == swept[-1] else "")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best} ({len(by_lr)} of {len(lrs)} swept){edge} |")
    return "\n".join(lines)


def plot(table: dict[str, dict[str, dict]], path: Path) -> None:
    """OP against lr (log scale) per method, with the 95% intervals as error bars."""
    from moses.report.plots import _figure, save_png

    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, by_lr in table.items():
        points = sorted((float(lr), row) for lr, row in by_lr.items() if row["OP"] is not None)
        if len(points) < 2:
            continue
        lrs, ops = [lr for lr, _ in points], [row["OP"] for _, row in points]
        errors = [[row["OP"] - row["OP_ci"][0] for _, row in points],
                  [row["OP_ci"][1] - row["OP"] for _, row in points]]
        ax.errorbar(lrs, ops, yerr=errors, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("OP (95% CI)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("compare_json", type=Path)
    parser.add_argument("--plain-lr", default="2e-3", help="the lr of the rows named by the method alone")
    parser.add_argument("--alias", action="append", default=[], help="NAME=METHOD@LR for a row named otherwise")
    parser.add_argument("--plot", type=Path, help="also draw OP against lr per method into this PNG")
    args = parser.parse_args()
    aliases = {}
    for alias in args.alias:
        name, _, target = alias.partition("=")
        method, _, lr = target.partition("@")
        aliases[name] = (method, lr)
    rows = json.loads(args.compare_json.read_text())
    table = sweep_rows(rows, args.plain_lr, aliases)
    print(markdown(table))
    seconds = sum(r.get("total_seconds") or 0.0 for r in rows)
    splits = sorted({r.get("split", "test") for r in rows})
    print(f"\nScored on the {' and '.join(splits)} split; {len(rows)} runs, {seconds:,.0f} s ({seconds / 3600:.1f} h) "
          "of training and evaluation in all.")
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
