"""Per-family scores of a LONG-14 comparison: each method's final score averaged over the tasks of each family
(sentiment, NLI, topic, binary reading or sense), from a `moses compare` folder's compare.json.

    python benchmarks/family_table.py RUNS/long14/compare.json --out long14/families

Writes benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import results_name, write_results

from moses.data.long14 import LONG14_FAMILIES


def family_means(row: dict) -> dict[str, float]:
    """{family: mean final score over its tasks in the run}; families with no task in the run are left out."""
    scores = dict(zip(row["tasks"], row["final_scores"], strict=True))
    return {family: sum(scores[t] for t in tasks if t in scores) / sum(t in scores for t in tasks)
            for family, tasks in LONG14_FAMILIES.items() if any(t in scores for t in tasks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("compare_json", type=Path)
    parser.add_argument("--out", required=True, type=results_name)
    args = parser.parse_args()
    rows = [r for r in json.loads(args.compare_json.read_text()) if r.get("final_scores")]
    families = {r["method"]: family_means(r) for r in rows}
    names = list(next(iter(families.values())))
    table = [{"method": m, **{f: f"{v:.1f}" for f, v in by_family.items()}, "OP": f"{r['OP']:.1f}"}
             for (m, by_family), r in zip(families.items(), rows, strict=True)]
    sizes = ", ".join(f"{f} ({len(t)}: {', '.join(t)})" for f, t in LONG14_FAMILIES.items())
    write_results(args.out, {"source": str(args.compare_json), "families": LONG14_FAMILIES, "rows": families},
                  table, ["method", *names, "OP"],
                  f"Mean final score per task family, from {args.compare_json}. Families: {sizes}.")


if __name__ == "__main__":
    main()
