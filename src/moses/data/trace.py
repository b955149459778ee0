"""The TRACE benchmark (Wang et al. 2023): <data_dir>/<Task>/{train,eval,test}.json, 8 tasks of mixed kinds."""

from __future__ import annotations

from pathlib import Path

from moses.data.folders import Benchmark, load_folders
from moses.data.stream import Task

TRACE_ORDER = ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten")
TRACE_METRICS = {
    "C-STANCE": "exact_match", "FOMC": "exact_match", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "first_char_accuracy", "NumGLUE-cm": "exact_match", "NumGLUE-ds": "exact_match", "20Minuten": "sari",
}
TRACE_MAX_NEW_TOKENS: dict[str, int | None] = {
    "C-STANCE": 4, "FOMC": 4, "ScienceQA": 4, "NumGLUE-cm": 8, "NumGLUE-ds": 8, "Py150": 32, "MeetingBank": 64,
    "20Minuten": 64,
}
TRACE = Benchmark("TRACE", TRACE_ORDER, TRACE_METRICS, TRACE_MAX_NEW_TOKENS)


def load_trace(data_dir: str | Path, tasks: list[str] | None = None, n_train: int | None = None,
               n_test: int | None = None, eval_as_train: bool = False, split: str = "test") -> list[Task]:
    """TRACE tasks in `tasks` order (default: the TRACE order); see `load_folders`."""
    return load_folders(TRACE, data_dir, tasks, n_train, n_test, eval_as_train, split)


def sari_source(prompt: str) -> str:
    """The paragraph a 20Minuten prompt asks to simplify (SARI's source sentence)."""
    text = prompt.split("Paragraph:\n", 1)[-1]
    return text.rsplit("\n\nSimplification:", 1)[0].strip()
