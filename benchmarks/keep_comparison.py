"""Copy a `moses compare` folder into benchmarks/results/ lean: compare.{json,md,png}, and per finished run
its config.json, results.json and the final stage of its predictions.jsonl (the answers every published
table and paired interval reads). Checkpoints, earlier stages (their scores are in results.json) and
unfinished runs stay behind.

    python benchmarks/keep_comparison.py runs/long14-sweep --out long14/sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import RESULTS, results_name

from moses.runner.predictions import PREDICTIONS_FILE, after_stage


def keep_run(run: Path, dest: Path) -> bool:
    """Keep `run` in `dest` when it has finished; whether it had."""
    results = json.loads((run / "results.json").read_text())
    if results.get("completed") != len(results.get("tasks", [])):
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "results.json"):
        shutil.copyfile(run / name, dest / name)
    final = after_stage(results["completed"] - 1)
    lines = [line for line in (run / PREDICTIONS_FILE).read_text().splitlines()
             if line.strip() and json.loads(line)["stage"] == final]
    (dest / PREDICTIONS_FILE).write_text("\n".join(lines) + "\n")
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path, help="a moses compare --output folder")
    parser.add_argument("--out", required=True, type=results_name)
    args = parser.parse_args()
    dest = RESULTS / args.out
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("compare.json", "compare.md", "compare.png"):
        if (args.source / name).is_file():
            shutil.copyfile(args.source / name, dest / name)
    kept = sum(keep_run(run, dest / run.name) for run in sorted(args.source.iterdir())
               if (run / "results.json").is_file())
    print(f"{kept} run(s) kept in {dest}")


if __name__ == "__main__":
    main()
