"""Wall time of `moses compare` with the methods one at a time (`--jobs 1`) against two at a time
(`--jobs 2`), on slices of TRACE-CPU v2 (its settings, fewer examples): does running methods side by side
shorten a comparison on this CPU? Each round runs both modes in turn, each into a fresh output directory
(nothing reused), the order alternating by round; the ratio (jobs 2 over jobs 1) is taken within a round.
Slices differ in prompt length, since that decides how well one process uses every core.

    python benchmarks/compare_jobs.py [--slices short,long] [--methods zero-shot,moses,lora-per-task] [--rounds 2]
                                      [--n-train 32] [--n-test 16] [--out compare_jobs]

Needs TRACE-500 (benchmarks/trace_cpu.yaml's data_dir). Writes benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import results_name, write_results

CONFIG = Path(__file__).resolve().parent / "trace_cpu.yaml"
SLICES = {"short": ["ScienceQA", "NumGLUE-ds"],  # multiple choice and arithmetic: short prompts and answers
          "long": ["C-STANCE", "Py150"]}  # prompts cut at 256 tokens; Py150 answers up to 64 tokens
MOSES = Path(sys.executable).with_name("moses")


def compare_seconds(tasks: list[str], methods: str, jobs: int, n_train: int, n_test: int) -> float:
    """Wall seconds of one `moses compare` of `methods` on `tasks`, from nothing (a fresh output directory)."""
    with tempfile.TemporaryDirectory(prefix="compare-jobs-") as output:
        command = [str(MOSES), "compare", "--config", str(CONFIG), "--methods", methods, "--jobs", str(jobs),
                   "--tasks", ",".join(tasks), "--n-train", str(n_train), "--n-test", str(n_test),
                   "--output", output]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"compare_jobs: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", default="short,long", help=f"comma-separated, of {', '.join(SLICES)}")
    parser.add_argument("--methods", default="zero-shot,moses,lora-per-task",
                        help="the zero-shot method, listed, evaluates the shared row alone first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--out", default="compare_jobs", type=results_name)
    args = parser.parse_args()
    for flag in ("rounds", "n_train", "n_test"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    unknown = set(args.slices.split(",")) - set(SLICES)
    if unknown:
        parser.error(f"unknown slice(s) {', '.join(sorted(unknown))}; known: {', '.join(SLICES)}")
    rows, payload = [], {"methods": args.methods, "n_train": args.n_train, "n_test": args.n_test, "slices": {}}
    for name in args.slices.split(","):
        tasks = SLICES[name]
        seconds: dict[int, list[float]] = {1: [], 2: []}
        ratios = []
        for round_ in range(args.rounds):
            for jobs in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                seconds[jobs].append(compare_seconds(tasks, args.methods, jobs, args.n_train, args.n_test))
                print(f"{name} round {round_ + 1}: --jobs {jobs} {seconds[jobs][-1]:.0f} s", flush=True)
            ratios.append(seconds[2][-1] / seconds[1][-1])
        payload["slices"][name] = {"tasks": tasks, "jobs1_seconds": seconds[1], "jobs2_seconds": seconds[2],
                                   "ratios": ratios}
        rows.append({"slice": f"{name} ({', '.join(tasks)})", "--jobs 1 s": statistics.median(seconds[1]),
                     "--jobs 2 s": statistics.median(seconds[2]), "jobs 2 / jobs 1": statistics.median(ratios),
                     "by round": " ".join(f"{r:.2f}" for r in ratios)})
    notes = (f"`moses compare --config benchmarks/trace_cpu.yaml --methods {args.methods}` on each slice with "
             f"--n-train {args.n_train} --n-test {args.n_test} (zero-shot row included, as the config asks), "
             f"from a fresh output directory; {args.rounds} round(s), the two modes in turn with the order "
             "alternating; the ratio is within a round (below 1: two at a time is faster).")
    write_results(args.out, payload, rows, ["slice", "--jobs 1 s", "--jobs 2 s", "jobs 2 / jobs 1", "by round"],
                  notes)


if __name__ == "__main__":
    main()
