"""The TRACE benchmark layout: <data_dir>/<Task>/{train,eval,test}.json."""

from __future__ import annotations

import warnings
from pathlib import Path

from moses.data.stream import Task, check_unique, read_examples
from moses.errors import DataError

TRACE_ORDER = ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten")
TRACE_METRICS = {
    "C-STANCE": "exact_match", "FOMC": "exact_match", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "first_char_accuracy", "NumGLUE-cm": "exact_match", "NumGLUE-ds": "exact_match", "20Minuten": "sari",
}
TRACE_MAX_NEW_TOKENS = {
    "C-STANCE": 4, "FOMC": 4, "ScienceQA": 4, "NumGLUE-cm": 8, "NumGLUE-ds": 8, "Py150": 32, "MeetingBank": 64,
    "20Minuten": 64,
}


def load_trace(data_dir: str | Path, tasks: list[str] | None = None, n_train: int | None = None,
               n_test: int | None = None, eval_as_train: bool = False) -> list[Task]:
    """TRACE tasks in `tasks` order (default: the TRACE order), the first n_train / n_test examples of
    each. A task without train.json falls back to its eval split only with `eval_as_train`, with a warning."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: TRACE data directory not found")
    names = list(tasks) if tasks else list(TRACE_ORDER)
    check_unique(names)
    unknown = [n for n in names if n not in TRACE_METRICS]
    if unknown:
        raise DataError(f"unknown TRACE task(s) {', '.join(unknown)} (known: {', '.join(TRACE_ORDER)})")
    stream = []
    for name in names:
        folder = data_dir / name
        if not folder.is_dir():
            raise DataError(f"{folder}: task directory not found")
        train_path = folder / "train.json"
        if not train_path.exists():
            if not eval_as_train:
                raise DataError(f"{train_path}: file not found (pass --eval-as-train to train on eval.json)")
            warnings.warn(f"{name}: no train.json, training on eval.json", stacklevel=2)
            train_path = folder / "eval.json"
        train = read_examples(train_path)[:n_train]
        test = read_examples(folder / "test.json")[:n_test]
        stream.append(Task(name, train, test, metric=TRACE_METRICS[name], max_new_tokens=TRACE_MAX_NEW_TOKENS[name]))
    return stream


def sari_source(prompt: str) -> str:
    """The paragraph a 20Minuten prompt asks to simplify (SARI's source sentence)."""
    text = prompt.split("Paragraph:\n", 1)[-1]
    return text.rsplit("\n\nSimplification:", 1)[0].strip()
