"""One pair of methods over several seeds: each seed's OP difference with `moses compare`'s paired interval,
and the pooled difference, where every test example's score is first averaged over the seeds (the seeds
change the data order and initialisation, not the test examples) and then bootstrapped the same way. The
pooled interval holds the noise of which test examples were drawn, not the spread between training seeds.
Two more rows hold the seeds' spread: a t-interval over the per-seed differences, and a two-stage bootstrap
that resamples the seeds and then the test examples (`moses.metrics.bootstrap`).

    python benchmarks/seed_pool.py --candidate moses=RUN[,RUN...] --reference lora-per-task=RUN[,RUN...]
                                   [--seeds 0,1] [--out seed_pool]

RUN: a finished run directory with predictions; the i-th run of each side belongs to the i-th seed.
Writes benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import results_name, write_results

from moses.metrics.bootstrap import paired_difference_summary
from moses.report.compare import final_scores
from moses.report.seeds import seed_intervals, seed_mean
from moses.runner.run import read_results


def side(text: str) -> tuple[str, list[Path]]:
    name, _, runs = text.partition("=")
    if not name or not runs:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN[,RUN...], got {text!r}")
    return name, [Path(p) for p in runs.split(",")]


def load(run: Path, tasks: list[str], parser: argparse.ArgumentParser) -> list[list[float]]:
    """[task][example] final scores of `run`, which must have trained `tasks` in that order."""
    scores = final_scores(run) if (run / "results.json").is_file() else None
    if scores is None:
        parser.error(f"{run}: not a finished run with per-example predictions")
    if read_results(run)["tasks"] != tasks:
        parser.error(f"{run}: its tasks differ from the first run's ({', '.join(tasks)})")
    return scores


def op(scores) -> float:
    return float(np.mean([np.mean(task) for task in scores]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", type=side, required=True)
    parser.add_argument("--reference", type=side, required=True)
    parser.add_argument("--seeds", default=None, help="labels of the runs in order (default 0, 1, ...)")
    parser.add_argument("--out", default="seed_pool", type=results_name,
                        help="a name under benchmarks/results/, e.g. seeds/trace_cpu_v2_pooled (no .md/.json)")
    args = parser.parse_args()
    (name, runs), (ref_name, ref_runs) = args.candidate, args.reference
    if len(runs) != len(ref_runs):
        parser.error(f"{len(runs)} {name} run(s) against {len(ref_runs)} {ref_name} run(s)")
    seeds = args.seeds.split(",") if args.seeds else [str(i) for i in range(len(runs))]
    if len(seeds) != len(runs):
        parser.error(f"--seeds names {len(seeds)} seed(s) for {len(runs)} run(s) a side")
    tasks = (read_results(runs[0]) or {}).get("tasks", [])
    mine, theirs = [load(r, tasks, parser) for r in runs], [load(r, tasks, parser) for r in ref_runs]
    rows, payload = [], {"candidate": name, "reference": ref_name, "tasks": tasks, "rows": []}
    pairs = [(f"seed {s}", [m], [r]) for s, m, r in zip(seeds, mine, theirs, strict=True)]
    pairs.append((f"pooled over seeds {', '.join(seeds)}", mine, theirs))
    for label, a_runs, b_runs in pairs:
        a, b = seed_mean(a_runs), seed_mean(b_runs)
        summary = paired_difference_summary(a, b)
        per_task = [float(np.mean(x) - np.mean(y)) for x, y in zip(a, b, strict=True)]
        rows.append({"runs": label, name: f"{op(a):.1f}", ref_name: f"{op(b):.1f}",
                     "difference": f"{op(a) - op(b):+.1f}",
                     "paired 95% CI": f"[{summary['ci'][0]:.1f}, {summary['ci'][1]:.1f}]",
                     "resamples above 0": f"{summary['share_above']:.3f}",
                     "per task": ", ".join(f"{t} {d:+.1f}" for t, d in zip(tasks, per_task, strict=True))})
        payload["rows"].append({"runs": label, "OP": op(a), "OP_reference": op(b), **summary,
                                "per_task_difference": per_task})
    if len(runs) >= 2:
        differences = [op(a) - op(b) for a, b in zip(mine, theirs, strict=True)]
        intervals = seed_intervals(mine, theirs, differences)
        mean = intervals["difference"]
        for label, (low, high) in (("t-interval over the per-seed differences", intervals["t_ci"]),
                                   ("bootstrap over seeds and test examples", intervals["seeds_examples_ci"])):
            rows.append({"runs": label, name: "", ref_name: "", "difference": f"{mean:+.1f}",
                         "paired 95% CI": f"[{low:.1f}, {high:.1f}]", "resamples above 0": "", "per task": ""})
            payload["rows"].append({"runs": label, "difference": mean, "ci": [low, high],
                                    "per_seed_differences": differences})
    payload["run_dirs"] = {name: [str(r) for r in runs], ref_name: [str(r) for r in ref_runs]}
    notes = (f"OP({name}) - OP({ref_name}) per seed and pooled: 1000 paired resamples of the test examples "
             "within each task, seed 0, as `moses compare` reports; pooled = each test example's score averaged "
             "over the seeds first. Runs: " + "; ".join(f"{s}: {m}, {r}" for s, m, r in
                                                       zip(seeds, runs, ref_runs, strict=True)) + ".")
    write_results(args.out, payload, rows, ["runs", name, ref_name, "difference", "paired 95% CI",
                                            "resamples above 0", "per task"], notes)


if __name__ == "__main__":
    main()
