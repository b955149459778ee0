"""Training step time of the per-task layout (0.3.0) against the pool layout it replaced (0.2.0, commit
07cd552), from `step_time.py --interleave` runs of each, taken in turns (old, new, old, new): in every run
MoSEs' step is paired with a peft LoRA r=8 step in the same process, so each run gives a ratio MoSEs / LoRA r8
that process-to-process drift does not move; the two layouts are compared through those ratios.

    # in a checkout of each layout, in turns:
    python benchmarks/step_time.py --interleave --adapters lora-r8,moses --precisions bf16,fp32 \\
        --shapes 8x32,8x128,8x256 --steps 10 --out step_time-layout-<old|new>-<round>
    python benchmarks/step_time_layout.py   # reads benchmarks/results/step_time-layout-*.json
"""

from __future__ import annotations

import json
import re
import statistics

from common import RESULTS, write_results


def ratios(run: dict, precision: str, shape: str) -> list[float]:
    times = run["runs"][precision]["shapes"][shape]
    return [t / ref for t, ref in zip(times["moses"], times["lora-r8"], strict=True)]


def main() -> None:
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for path in sorted(RESULTS.glob("step_time-layout-*-*.json")):
        side = re.fullmatch(r"step_time-layout-(old|new)-\d+\.json", path.name)
        if side:
            runs[side.group(1)].append(json.loads(path.read_text()))
    if not runs["old"] or not runs["new"]:
        raise SystemExit("needs step_time-layout-old-<n>.json and step_time-layout-new-<n>.json in benchmarks/results")
    first = runs["new"][0]
    rows = []
    for precision in first["runs"]:
        for shape in first["shapes"]:
            row = {"precision": precision, "shape": shape}
            for side in ("old", "new"):
                per_run = [ratios(run, precision, shape) for run in runs[side]]
                pooled = [r for run in per_run for r in run]
                quartiles = statistics.quantiles(pooled, n=4)
                row[f"{side} MoSEs / LoRA r8 (per run)"] = " / ".join(f"{statistics.median(r):.3f}" for r in per_run)
                row[f"{side} pooled median [IQR]"] = f"{quartiles[1]:.3f} [{quartiles[0]:.3f}, {quartiles[2]:.3f}]"
                row[f"{side} median"] = quartiles[1]
            row["new / old"] = round(row["new median"] / row["old median"], 3)
            rows.append(row)
    columns = [c for c in rows[0] if not c.endswith(" median")]
    write_results("step_time_layout", {"rows": rows, "runs": {s: len(r) for s, r in runs.items()}}, rows, columns,
                  notes="SmolLM2-135M, 2-core CPU, AdamW, MoSEs defaults training their third task (two ended "
                  "before it); each run pairs every MoSEs step with a peft LoRA r=8 step (step_time.py "
                  f"--interleave, 10 steps per shape), {len(runs['old'])} run(s) of the pool layout (07cd552) and "
                  f"{len(runs['new'])} of the per-task layout, taken in turns. `new / old`: the ratio of the pooled "
                  "medians; IQR: quartiles of the per-step ratios.")


if __name__ == "__main__":
    main()
