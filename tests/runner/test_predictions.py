"""predictions.jsonl, a run's answers in one file: written a stage at a time, read by one reader that skips a torn
last line and reads the layout before it (predictions/<stage>-<task>.jsonl); compare's intervals agree on both."""

import json
import random
from pathlib import Path

import pytest

from moses.errors import CheckpointError
from moses.report.compare import add_intervals, comparison_row, final_scores
from moses.runner.config import RunConfig
from moses.runner.predictions import PREDICTIONS_FILE, read_predictions, write_predictions
from moses.runner.run import _shared_zero_shot

TASKS = ["C-STANCE", "NumGLUE-cm"]  # names with hyphens, as TRACE's: the old file names do not split on them


def answers(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"task": task, "prediction": f"p{i}", "reference": f"r{i}", "score": float(rng.choice([0, 100]))}
            for i in range(n)]


def test_written_stages_read_back_with_their_index_and_a_stage_written_again_replaces_only_itself(tmp_path):
    write_predictions(tmp_path, "zero-shot", answers("C-STANCE", 3, 0) + answers("NumGLUE-cm", 2, 1))
    write_predictions(tmp_path, "after-00", answers("C-STANCE", 3, 2))
    saved = read_predictions(tmp_path)
    assert {s: list(t) for s, t in saved.items()} == {"zero-shot": TASKS, "after-00": ["C-STANCE"]}
    assert saved["zero-shot"]["NumGLUE-cm"] == [{"stage": "zero-shot", "task": "NumGLUE-cm", "index": i, **r}
                                                 for i, r in enumerate(answers("NumGLUE-cm", 2, 1))]
    assert [r["index"] for r in saved["zero-shot"]["C-STANCE"]] == [0, 1, 2]
    write_predictions(tmp_path, "after-00", answers("C-STANCE", 3, 3))  # evaluated again after a resume
    again = read_predictions(tmp_path)
    assert again["zero-shot"] == saved["zero-shot"]
    assert [r["score"] for r in again["after-00"]["C-STANCE"]] == [r["score"] for r in answers("C-STANCE", 3, 3)]
    assert list(read_predictions(tmp_path, ["after-00"])) == ["after-00"]
    assert len((tmp_path / PREDICTIONS_FILE).read_text().splitlines()) == 8  # one line per example of a stage
    assert read_predictions(tmp_path / "nothing") == {}


def test_a_torn_last_line_is_skipped_and_the_next_write_drops_it(tmp_path):
    write_predictions(tmp_path, "zero-shot", answers("C-STANCE", 2, 0))
    path = tmp_path / PREDICTIONS_FILE
    whole = path.read_text()
    with open(path, "a") as handle:  # a write cut short
        handle.write('{"stage": "after-00", "task": "C-STANCE", "index": 0, "predic')
    assert list(read_predictions(tmp_path)) == ["zero-shot"]
    write_predictions(tmp_path, "after-00", answers("C-STANCE", 2, 1))  # the resumed run goes on
    assert path.read_text().startswith(whole) and path.read_text().endswith("\n")
    assert [len(t["C-STANCE"]) for t in read_predictions(tmp_path).values()] == [2, 2]
    path.write_text(whole + "not json\n" + whole)  # a malformed whole line is not a torn write: say where
    with pytest.raises(CheckpointError, match="predictions.jsonl: malformed record at line 3"):
        read_predictions(tmp_path)


def test_a_stage_met_again_further_on_is_the_later_evaluation(tmp_path):
    lines = [json.dumps({"stage": "after-00", "index": i, **r}) for i, r in enumerate(answers("C-STANCE", 2, 0))]
    lines += [json.dumps({"stage": "zero-shot", "index": 0, **answers("FOMC", 1, 0)[0]})]
    lines += [json.dumps({"stage": "after-00", "index": i, **r}) for i, r in enumerate(answers("C-STANCE", 2, 5))]
    (tmp_path / PREDICTIONS_FILE).write_text("\n".join(lines) + "\n")
    later = read_predictions(tmp_path)["after-00"]["C-STANCE"]
    assert [r["score"] for r in later] == [r["score"] for r in answers("C-STANCE", 2, 5)]


def write_old_layout(run_dir: Path, stage_records: dict[str, list[dict]]) -> None:
    """predictions/<stage>-<task>.jsonl as runs wrote them before predictions.jsonl (eval-<mode>.jsonl: all tasks)."""
    folder = run_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in stage_records.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_old_layout_reads_as_the_new_one(tmp_path):
    old = {"zero-shot-C-STANCE": answers("C-STANCE", 3, 0), "after-01-NumGLUE-cm": answers("NumGLUE-cm", 2, 1),
           "after-01-tail-NumGLUE-cm": answers("NumGLUE-cm", 2, 2),
           "eval-tail": answers("C-STANCE", 3, 3) + answers("NumGLUE-cm", 2, 4)}
    write_old_layout(tmp_path / "old", old)
    new = tmp_path / "new"
    write_predictions(new, "zero-shot", old["zero-shot-C-STANCE"])
    write_predictions(new, "after-01", old["after-01-NumGLUE-cm"])
    write_predictions(new, "after-01-tail", old["after-01-tail-NumGLUE-cm"])
    write_predictions(new, "eval-tail", old["eval-tail"])
    assert read_predictions(tmp_path / "old") == read_predictions(new)
    assert list(read_predictions(new)["eval-tail"]) == TASKS
    # a run of the old layout resumed by this version: its new stages are in predictions.jsonl, and where
    # both hold a stage and task, the newer file's are the answers
    write_predictions(tmp_path / "old", "after-01", answers("NumGLUE-cm", 2, 9))
    both = read_predictions(tmp_path / "old")
    assert both["zero-shot"] == read_predictions(new)["zero-shot"]
    assert [r["score"] for r in both["after-01"]["NumGLUE-cm"]] == [r["score"] for r in answers("NumGLUE-cm", 2, 9)]


def synthetic_run(run_dir: Path, seed: int, layout: str) -> None:
    """A finished two-task run with 40 answers per task: results.json and its answers in `layout`."""
    final = {task: answers(task, 40, seed + k) for k, task in enumerate(TASKS)}
    row = [sum(r["score"] for r in records) / len(records) for records in final.values()]
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({
        "method": "lora-per-task", "tasks": TASKS, "completed": 2, "R": [[row[0], None], row],
        "metrics": {"OP": sum(row) / 2, "BWT": 0.0}}))
    if layout == "old":
        write_old_layout(run_dir, {f"after-01-{task}": records for task, records in final.items()})
    else:
        write_predictions(run_dir, "after-01", [r for records in final.values() for r in records])


def test_compare_intervals_are_the_same_from_either_layout(tmp_path):
    rows = {}
    for layout in ("old", "new"):
        scores = {}
        for method, seed in (("moses", 10), ("lora-per-task", 20)):
            synthetic_run(tmp_path / layout / method, seed, layout)
            scores[method] = final_scores(tmp_path / layout / method)
        rows[layout] = [comparison_row(m, json.loads((tmp_path / layout / m / "results.json").read_text()))
                        for m in scores]
        add_intervals(rows[layout], scores, "moses")
    assert rows["old"][1]["OP_minus_reference_ci"] is not None and rows["old"][0]["OP_ci"] is not None
    assert rows["old"] == rows["new"]
    assert final_scores(tmp_path / "old" / "moses") == final_scores(tmp_path / "new" / "moses")


def test_a_zero_shot_row_is_shared_only_with_its_answers(tmp_path):
    config = RunConfig(stream="demo", output=str(tmp_path / "out"))
    source = tmp_path / "source"
    source.mkdir()
    config.save(source / "config.json")
    zero = [11.0, 22.0]
    (source / "results.json").write_text(json.dumps({"tasks": TASKS, "completed": 2, "zero_shot": zero}))
    assert _shared_zero_shot(config, source, tmp_path / "out") is None  # no answers to copy: evaluated again
    write_predictions(source, "zero-shot", answers("C-STANCE", 2, 0) + answers("NumGLUE-cm", 2, 1))
    assert _shared_zero_shot(config, source, tmp_path / "out") == zero
    assert read_predictions(tmp_path / "out") == read_predictions(source)
