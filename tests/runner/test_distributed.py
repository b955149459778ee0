"""`accelerate launch` with two CPU processes (gloo): each trains on its half of every batch and generates
for every other prompt; the run equals the single-process one."""

import json
import os
import socket
import subprocess
import sys

import pytest

from moses.runner.predictions import read_predictions
from moses.runner.run import run
from runner.test_run import read_jsonl, tiny_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_reproduce_the_single_process_run(tiny_model_dir, tmp_path):
    torch_distributed = pytest.importorskip("torch.distributed")
    if not torch_distributed.is_available():
        pytest.skip("torch.distributed is not built into this torch")
    single = tiny_config(tiny_model_dir, tmp_path / "one", epochs=2)
    expected = run(single, echo=lambda *_: None)

    output = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "moses.cli", "run", "--model", tiny_model_dir,
               "--method", "moses", "--n-train", "8", "--n-test", "8", "--epochs", "2", "--batch-size", "4",
               "--lr", str(single.lr), "--device", "cpu", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("## Score matrix") == 1  # one process reports

    results = json.loads((output / "results.json").read_text())
    assert results["completed"] == 2 and results["metrics"]["BWT"] == 0.0
    # every answer of the demo stream has the same number of tokens, so the mean of the two halves' losses
    # (what DDP's averaged gradient follows) is the whole batch's loss: training is the same
    two_losses = [row["loss"] for row in read_jsonl(output / "train_log.jsonl")]
    one_losses = [row["loss"] for row in read_jsonl(tmp_path / "one" / "train_log.jsonl")]
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    one, two = read_predictions(tmp_path / "one"), read_predictions(output)
    for stage, task in (("zero-shot", "alive"), ("after-01", "alive"), ("after-01", "size")):  # in prompt order
        assert len(two[stage][task]) == 8
        assert two[stage][task] == one[stage][task]
    assert (output / "predictions.jsonl").read_text() == (tmp_path / "one" / "predictions.jsonl").read_text()
    assert results["R"] == expected["R"]
