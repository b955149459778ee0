"""LONG-14: the "Long Sequence" continual-learning stream of O-LoRA (Wang et al. 2023, github.com/cmnfriend/O-LoRA,
CL_Benchmark/, scripts/long.sh) without yahoo: 14 classification tasks in four families, the label string
as the answer, exact match as the metric. <data_dir>/<Task>/{train,eval,test}.json."""

from __future__ import annotations

from pathlib import Path

from moses.data.folders import Benchmark, load_folders
from moses.data.stream import Task

LONG14_ORDER = ("yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews",
                "MultiRC", "BoolQA", "WiC")
LONG14_FAMILIES = {
    "sentiment": ("yelp", "amazon", "IMDB", "SST-2"),
    "NLI": ("MNLI", "CB", "RTE"),
    "topic": ("dbpedia", "agnews"),
    "binary reading or sense": ("COPA", "QQP", "MultiRC", "BoolQA", "WiC"),
}
LONG14 = Benchmark("LONG-14", LONG14_ORDER, dict.fromkeys(LONG14_ORDER, "exact_match"),
                   dict.fromkeys(LONG14_ORDER))  # new tokens: the longest label


def load_long14(data_dir: str | Path, tasks: list[str] | None = None, n_train: int | None = None,
                n_test: int | None = None, split: str = "test") -> list[Task]:
    """LONG-14 tasks in `tasks` order (default: O-LoRA's order); see `moses.data.folders.load_folders`."""
    return load_folders(LONG14, data_dir, tasks, n_train, n_test, split=split)


def family_of(task: str) -> str | None:
    return next((family for family, names in LONG14_FAMILIES.items() if task in names), None)
