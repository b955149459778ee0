"""kill -9 at any point (issue 13): `moses run` is SIGKILLed at a named point (moses/faults.py) in a real
subprocess; `moses run --resume` must then finish with the same R, capacity and predictions as a run that
was never interrupted. Two tasks of the embedded demo stream on the tiny random Llama."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moses.faults import ENV

SETTINGS = {"stream": "demo", "n_train": 8, "n_test": 8, "epochs": 2, "batch_size": 4, "lr": 0.05,
            "device": "cpu", "precision": "fp32", "method": "moses", "eval_batch_size": 4}
# (point, which time it is reached): 2 steps of each task per epoch; 2 generation batches per evaluation;
# results.json is written after the zero-shot row and after each task; predictions.jsonl after each row
# (the 2nd time: after-00's answers, before results.json records task 0)
KILL_POINTS = [("train-step", 6), ("eval-batch", 5), ("checkpoint", 1), ("write:results.json", 2),
               ("between-tasks", 1), ("write:adapter_model.safetensors", 2), ("write:predictions.jsonl", 2)]


def moses_run(config_path: Path, output: Path, kill_at: str | None = None, resume: bool = False):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if kill_at:
        env[ENV] = kill_at
    command = [sys.executable, "-m", "moses.cli", "run", "--config", str(config_path), "--output", str(output)]
    return subprocess.run(command + (["--resume"] if resume else []), env=env, capture_output=True, text=True,
                          timeout=300)


def outcome(output: Path) -> dict:
    results = json.loads((output / "results.json").read_text())
    predictions = (output / "predictions.jsonl").read_text()
    return {"R": results["R"], "zero_shot": results["zero_shot"], "capacity": results["capacity"],
            "losses": [row["loss"] for row in results["train_log"]], "predictions": predictions}


@pytest.fixture(scope="module")
def config_file(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "config.json"
    path.write_text(json.dumps({**SETTINGS, "model": tiny_model_dir}))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file) -> dict:
    output = config_file.parent / "reference"
    done = moses_run(config_file, output)
    assert done.returncode == 0, done.stderr
    return outcome(output)


@pytest.mark.parametrize(("point", "count"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_kill_9_then_resume_equals_an_uninterrupted_run(config_file, uninterrupted, point, count, tmp_path):
    output = tmp_path / "run"
    killed = moses_run(config_file, output, kill_at=f"{point}:{count}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # it really died there, mid-run
    assert (output / "moses.lock").exists()  # and left its lock behind, as a killed process does
    resumed = moses_run(config_file, output, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "taking over the lock" in resumed.stderr
    assert outcome(output) == uninterrupted
    assert not list(output.rglob(".*.tmp")) and not (output / "moses.lock").exists()
