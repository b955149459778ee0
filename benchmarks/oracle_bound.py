"""How far ahead of a reference any method measured on a stream could be: a per-task oracle that takes, for
every task, the final predictions of whichever trained run scored best on it, against the reference's, with
the paired bootstrap interval of `moses compare` (the same resamples of the same test examples). The
oracle is biased upwards (a maximum over noisy runs, chosen on the test set itself), so it bounds what a
method that is as good as the best measured method on every task at once could show.

    python benchmarks/oracle_bound.py [--runs benchmarks/results/trace_cpu_v2] [--reference lora-per-task]
                                      [--moses r2-best]

Writes benchmarks/results/oracle_bound.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import write_results

from moses.metrics.bootstrap import paired_difference_summary
from moses.report.compare import final_scores
from moses.runner.run import read_results

RUNS = Path(__file__).resolve().parent / "results" / "trace_cpu_v2"
CONTINUAL = ("replay", "o-lora", "seq-lora", "inflora", "ewc", "moe-lora")


def op(scores) -> float:
    return float(np.mean([np.mean(task) for task in scores]))


def paired(scores, reference, resamples: int = 1000, seed: int = 0) -> dict:
    """OP and OP minus the reference's, with the paired interval and SE exactly as `moses compare` reports."""
    return {"OP": op(scores), "minus_reference": op(scores) - op(reference),
            **paired_difference_summary(scores, reference, resamples, seed)}


def oracle(runs: dict[str, list], tasks: list[str]) -> tuple[list, list[str]]:
    chosen = [max(runs, key=lambda name, t=t: float(np.mean(runs[name][t]))) for t in range(len(tasks))]
    return [runs[name][t] for t, name in enumerate(chosen)], chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=RUNS, help="a folder of finished runs with predictions")
    parser.add_argument("--reference", default="lora-per-task")
    parser.add_argument("--moses", default="r2-best", help="the MoSEs run's folder name")
    args = parser.parse_args()
    runs = {}
    for folder in sorted(p for p in args.runs.iterdir() if p.is_dir() and p.name != "zero-shot"):
        scores = final_scores(folder)
        if scores is not None:
            runs[folder.name] = scores
    tasks = read_results(args.runs / args.reference)["tasks"]
    reference = runs[args.reference]
    candidates = {
        "MoSEs (the measured run)": {args.moses: runs[args.moses]},
        "oracle over every trained run": runs,
        "oracle over the continual baselines and MoSEs": {n: runs[n] for n in (*CONTINUAL, args.moses) if n in runs},
        "oracle over every trained run but MoSEs": {n: s for n, s in runs.items() if n != args.moses},
    }
    rows, payload = [], {"reference": args.reference, "tasks": tasks, "runs": sorted(runs), "rows": []}
    for label, pool in candidates.items():
        scores, chosen = oracle(pool, tasks)
        result = paired(scores, reference)
        per_task = [f"{t} {np.mean(s):.1f} ({c})" for t, s, c in zip(tasks, scores, chosen, strict=True)]
        rows.append({"candidate": label, "OP": result["OP"], f"- {args.reference}": result["minus_reference"],
                     "paired 95% CI": f"[{result['ci'][0]:.1f}, {result['ci'][1]:.1f}]",
                     "detectable (80% power)": result["detectable"],
                     "resamples above 0": result["share_above"], "per task (run)": "; ".join(per_task)})
        payload["rows"].append({"candidate": label, **result, "chosen": chosen,
                                "per_task": [float(np.mean(s)) for s in scores]})
    notes = (f"Final predictions of the runs in `{args.runs.name}` ({len(runs)} trained runs with predictions). An "
             "oracle takes each task's predictions from the run that scored best on it; its OP minus the "
             f"reference's ({args.reference}) is bootstrapped as `moses compare` does (1000 paired resamples "
             "of the test examples within each task, seed 0). 'detectable': the smallest true difference whose "
             "interval would exclude 0 with 80% power at this paired SE (2.80 x SE).")
    write_results("oracle_bound", payload, rows,
                  ["candidate", "OP", f"- {args.reference}", "paired 95% CI", "detectable (80% power)",
                   "resamples above 0", "per task (run)"], notes)


if __name__ == "__main__":
    main()
