"""Does a run learn its label tasks, or their label prior? For every finished run given and every task scored by
exact match or answer letter: the final score, the share of test answers that are the run's most frequent
answer (1.0: the same answer for every prompt), and the score of always giving the training set's most
frequent answer (the prior). A score at the prior with a mode share near 1 is a collapsed task: methods that
differ there differ by which answer they collapsed to, not by what they learned.

    python benchmarks/prediction_modes.py RUN_DIR [RUN_DIR ...] --name trace_cpu_v2_modes [--plot]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from common import RESULTS, write_results

from moses.data.trace import TRACE_METRICS, load_trace
from moses.metrics.text import exact_match, first_char_accuracy
from moses.runner.predictions import after_stage, read_predictions

LABEL_METRICS = {"exact_match": exact_match, "first_char_accuracy": first_char_accuracy}


def answer_key(text: str, metric: str) -> str:
    """What the metric compares: the stripped answer, or its first character."""
    return text.strip()[:1] if metric == "first_char_accuracy" else text.strip()


def task_modes(run_dir: Path) -> dict[str, dict]:
    """{task: {score, mode, mode_share, prior_answer, prior_score}} of the run's final predictions."""
    config = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    tasks = results["tasks"]
    stage = after_stage(results["completed"] - 1)
    answers = read_predictions(run_dir, [stage]).get(stage, {})
    data_dir = Path(config["data_dir"])
    if not data_dir.is_absolute():
        data_dir = (run_dir / data_dir).resolve()
    stream = {t.name: t for t in load_trace(data_dir, tasks, config["n_train"], config["n_test"],
                                            config.get("eval_as_train", False))}
    out = {}
    for name in tasks:
        metric = TRACE_METRICS[name]
        rows = answers.get(name)
        if metric not in LABEL_METRICS or not rows:
            continue
        predictions = [r["prediction"] for r in rows]
        references = [r["reference"] for r in rows]
        mode, count = Counter(answer_key(p, metric) for p in predictions).most_common(1)[0]
        prior = Counter(answer_key(e["answer"], metric) for e in stream[name].train).most_common(1)[0][0]
        score = LABEL_METRICS[metric]
        out[name] = {"score": score(predictions, references), "mode": mode, "mode_share": count / len(rows),
                     "prior_answer": prior, "prior_score": score([prior] * len(references), references)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="prediction_modes", help="results/<name>.json, .md (and .png)")
    parser.add_argument("--plot", action="store_true", help="a heat map of the mode shares")
    args = parser.parse_args()
    by_run = {run.name: task_modes(run) for run in args.runs}
    tasks = [t for t in dict.fromkeys(t for modes in by_run.values() for t in modes)]
    prior = {t: next(m[t] for m in by_run.values() if t in m) for t in tasks}
    rows = [{"run": "(always the most frequent training answer)",
             **{t: f"{prior[t]['prior_score']:.1f} ({prior[t]['prior_answer']!r})" for t in tasks}}]
    for run, modes in by_run.items():
        rows.append({"run": run, **{t: f"{m['score']:.1f}, {m['mode_share']:.0%} {m['mode'][:12]!r}"
                                    for t, m in modes.items()}})
    notes = ("Each cell: final score, then the share of the 64 test answers that are the run's most frequent "
             "answer (and that answer). The first row is the score of always answering the training split's most "
             "frequent answer.")
    write_results(args.name, {"runs": by_run}, rows, ["run", *tasks], notes)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shares = [[by_run[r].get(t, {}).get("mode_share", float("nan")) for t in tasks] for r in by_run]
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 3, 0.35 * len(by_run) + 1.5))
        image = ax.imshow(shares, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(by_run)), list(by_run))
        for i, run in enumerate(by_run):
            for j, t in enumerate(tasks):
                if t in by_run[run]:
                    cell = by_run[run][t]
                    ax.text(j, i, f"{cell['score']:.0f}", ha="center", va="center", fontsize=8,
                            color="k" if cell["mode_share"] > 0.5 else "w")
        fig.colorbar(image, ax=ax, label="mode share")
        ax.set_title("Label tasks: collapse onto one answer (numbers: final score)")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.name}.png", dpi=120)


if __name__ == "__main__":
    main()
