"""`moses compare --seeds`: the same comparison at several training seeds, and a table whose intervals hold
the spread between seeds as well as the test-set noise.

Each seed's comparison is a plain `moses compare` in <output>/seed-<s>/. The summary, compare_seeds.{md,json}
in <output>, gives per method its OP at each seed and their mean, and against the reference: the mean paired
difference with three 95% intervals. "pooled" averages each test example's score over the seeds and
bootstraps the examples (it holds the test-set noise only); "t over seeds" is a t-interval over the per-seed
differences; "seeds x examples" is a two-stage bootstrap of seeds, then examples.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from moses.errors import ConfigError
from moses.io import atomic_write_text
from moses.metrics.bootstrap import paired_difference_interval, seed_t_interval, seeds_and_examples_interval
from moses.report.compare import RESAMPLES, SEED, compare, final_scores
from moses.runner.config import RunConfig


def compare_seeds(config: RunConfig, methods: list[str], seeds: list[int], resume: bool = True, echo=print,
                  reference: str = "moses", jobs: int = 1, lr_grid: list[float] | None = None) -> list[dict[str, Any]]:
    """Run `compare` once per seed into <output>/seed-<s>/ and write the seed-aware summary into <output>."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: at least two different seeds")
    output = Path(config.output)
    per_seed = {}
    for seed in seeds:
        echo(f"== seed {seed} ==")
        rows = compare(replace(config, seed=seed, output=str(output / f"seed-{seed}")), methods, resume, echo,
                       reference, jobs, lr_grid)
        per_seed[seed] = {row["method"]: row for row in rows}
    names = list(per_seed[seeds[0]])
    reference = rows[0]["reference"]
    scores = {(s, m): final_scores(output / f"seed-{s}" / m) for s in seeds for m in names}
    summary = [seed_row(m, reference, seeds, per_seed, scores) for m in names]
    atomic_write_text(output / "compare_seeds.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(output / "compare_seeds.md", seeds_markdown(summary, seeds) + "\n")
    return summary


def seed_row(method: str, reference: str, seeds: list[int], per_seed: dict, scores: dict) -> dict[str, Any]:
    ops = [per_seed[s][method]["OP"] for s in seeds]
    row = {"method": method, "reference": reference, "seeds": seeds, "OP_per_seed": ops,
           "OP_mean": float(np.mean(ops)), "difference": None, "pooled_ci": None, "t_ci": None,
           "seeds_examples_ci": None}
    mine, theirs = [scores[(s, method)] for s in seeds], [scores[(s, reference)] for s in seeds]
    if method == reference or any(x is None for x in (*mine, *theirs)):
        return row
    differences = [per_seed[s][method]["OP"] - per_seed[s][reference]["OP"] for s in seeds]
    row.update(seed_intervals(mine, theirs, differences))
    return row


def seed_intervals(mine: list, theirs: list, differences: list[float]) -> dict[str, Any]:
    """The difference of two methods run at the same seeds (`mine[i]`, `theirs[i]`: [task][example] scores at
    seed i; `differences[i]`: their OP difference): its mean and the three 95% intervals of the summary."""
    return {"difference": float(np.mean(differences)), "differences": differences,
            "pooled_ci": list(paired_difference_interval(seed_mean(mine), seed_mean(theirs), RESAMPLES, SEED)),
            "t_ci": list(seed_t_interval(differences)),
            "seeds_examples_ci": list(seeds_and_examples_interval(mine, theirs, RESAMPLES, SEED))}


def seed_mean(runs: list) -> list[list[float]]:
    """[task][example] scores averaged over the runs (the same test examples in each)."""
    return [np.mean([run[t] for run in runs], axis=0).tolist() for t in range(len(runs[0]))]


def seeds_markdown(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    def interval(pair) -> str:
        return f"[{pair[0]:.1f}, {pair[1]:.1f}]" if pair else "-"

    reference = rows[0]["reference"]
    head = (["method"] + [f"OP seed {s}" for s in seeds]
            + ["OP mean", f"- {reference}", "pooled 95% CI", "t over seeds 95% CI", "seeds x examples 95% CI"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        difference = "-" if row["difference"] is None else f"{row['difference']:+.1f}"
        cells = [row["method"], *(f"{op:.1f}" for op in row["OP_per_seed"]), f"{row['OP_mean']:.1f}", difference,
                 interval(row["pooled_ci"]), interval(row["t_ci"]), interval(row["seeds_examples_ci"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = (f"OP at each training seed and the mean; against {reference}, the mean of the per-seed differences "
             "and three 95% intervals: pooled (each test example's score averaged over the seeds, then a paired "
             "bootstrap of the examples: test-set noise only), a t-interval over the per-seed differences, and a "
             "two-stage bootstrap of seeds then examples. The last two hold the spread between seeds.")
    return "\n".join(lines) + "\n\n" + notes
