"""The label-prior floor of a classification stream: per task, the exact-match score of always answering the
most frequent answer of its first N training examples, on the scored split. A method scoring at this level
has learned the label set, not the task.

    python benchmarks/label_prior.py --stream long14 --data-dir ../shared/data/long14 --split eval \
        --n-train 128 --out long14/label_prior
"""

from __future__ import annotations

import argparse
from collections import Counter

from common import results_name, write_results

from moses.data.long14 import load_long14
from moses.data.trace import load_trace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream", choices=("long14", "trace"), default="long14")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", choices=("eval", "test"), default="eval")
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--out", required=True, type=results_name)
    args = parser.parse_args()
    if args.stream == "long14":
        stream = load_long14(args.data_dir, n_train=args.n_train, split=args.split)
    else:
        stream = load_trace(args.data_dir, n_train=args.n_train, split=args.split, eval_as_train=True)
    rows, payload = [], {}
    for task in stream:
        label, _ = Counter(e["answer"] for e in task.train).most_common(1)[0]
        score = 100 * sum(e["answer"].strip() == label.strip() for e in task.test) / len(task.test)
        payload[task.name] = {"label": label, "score": score, "examples": len(task.test)}
        rows.append({"task": task.name, "most frequent training answer": label, "score": score,
                     "scored examples": len(task.test)})
    mean = sum(p["score"] for p in payload.values()) / len(payload)
    rows.append({"task": "mean", "score": mean})
    write_results(args.out, {"split": args.split, "n_train": args.n_train, "tasks": payload, "mean": mean}, rows,
                  ["task", "most frequent training answer", "score", "scored examples"],
                  f"Always the most frequent answer of the first {args.n_train} training examples, scored by exact "
                  f"match on the {args.split} split.")


if __name__ == "__main__":
    main()
