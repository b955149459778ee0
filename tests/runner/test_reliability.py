"""Reliability of a run directory (issue 13): locks, non-finite losses, clipping, failed writes and verified
checkpoints, on the tiny random Llama. The kill -9 points are in test_kill.py."""

import errno
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moses import cli
from moses.errors import CheckpointError, ConfigError, LockError, StorageError, TrainingError
from moses.io import atomic_write_text
from moses.runner import train as train_module
from moses.runner.checkpoints import UNVERIFIED, verify_checkpoint
from moses.runner.config import RunConfig
from moses.runner.lock import LOCK_FILE, directory_lock
from moses.runner.run import evaluate_run, run

from conftest import assert_one_error_line, run_interrupted_in_second_task, tiny_config


def quiet(*_):
    pass


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(directory: Path, pid: int, host: str | None = None) -> None:
    import socket

    directory.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "command": "moses run --output x", "since": 0}
    (directory / LOCK_FILE).write_text(json.dumps(holder))


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    config = tiny_config(tiny_model_dir, tmp_path_factory.mktemp("reliable") / "run", epochs=2)
    return config, run(config, echo=quiet)


# ---- locks ----
def test_a_directory_in_use_is_refused_naming_its_holder(tiny_model_dir, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "busy", holder.pid)
        with pytest.raises(LockError, match=f"in use by process {holder.pid} "):
            run(tiny_config(tiny_model_dir, tmp_path / "busy"), echo=quiet)
        code = cli.main(["run", "--model", tiny_model_dir, "--output", str(tmp_path / "busy"), "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"process {holder.pid}" in err, err
        assert json.loads((tmp_path / "busy" / LOCK_FILE).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with pytest.warns(UserWarning, match=f"taking over the lock of process {pid}"), directory_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end
    (tmp_path / LOCK_FILE).write_text("{not json")  # being written by a process taking it now: refused
    with pytest.raises(LockError, match="being locked by another process"), directory_lock(tmp_path):
        pass
    os.utime(tmp_path / LOCK_FILE, (0, 0))  # the same lock, long after: torn by a crash, so stale
    with pytest.warns(UserWarning, match="unreadable lock"), directory_lock(tmp_path):
        pass


def test_a_lock_held_on_another_host_is_respected(tmp_path):
    write_lock(tmp_path, dead_pid(), host="another-host")  # its pid cannot be checked from here
    with pytest.raises(LockError, match="on another-host"), directory_lock(tmp_path):
        pass


# ---- non-finite losses, clipping ----
def test_a_nan_loss_stops_the_task_naming_the_step_and_resume_takes_a_new_lr(finished, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    config = tiny_config(tiny_model_dir, tmp_path / "nan", epochs=2)
    real_loss, calls = train_module.answer_loss, []

    def nan_in_second_task(model, batch):  # the 3rd step of task 2 (2 steps per task here) gives NaN
        calls.append(1)
        loss, outputs = real_loss(model, batch)
        return (loss * float("nan"), outputs) if len(calls) == 7 else (loss, outputs)

    monkeypatch.setattr(train_module, "answer_loss", nan_in_second_task)
    with pytest.raises(TrainingError, match=r"train size \(2/2\): the loss is nan at step 3 of 4"):
        run(config, echo=quiet)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert saved["completed"] == 1 and verify_checkpoint(tmp_path / "nan" / "checkpoints" / "00-alive") is None
    messages = []
    resumed = run(replace(config, lr=config.lr / 2, max_grad_norm=1.0), resume=True, echo=messages.append)
    assert any("resuming with changed lr, max_grad_norm" in m for m in messages)
    assert resumed["completed"] == 2 and resumed["R"][0] == finished[1]["R"][0]  # task 1 kept as it was
    assert {r["lr"] for r in resumed["train_log"] if r["task"] == "size"} == {config.lr / 2}
    assert json.loads((tmp_path / "nan" / "config.json").read_text())["lr"] == config.lr / 2


def test_a_real_overflow_is_caught_before_the_weights_change(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "inf", epochs=4, lr=1e20, method="seq-lora")
    with pytest.raises(TrainingError, match="is (nan|inf) at step"):
        run(config, echo=quiet)


def test_gradient_clipping_bounds_every_step(finished, tiny_model_dir, tmp_path):
    config, results = finished
    clipped = run(replace(config, output=str(tmp_path / "clip"), max_grad_norm=1e-6), echo=quiet)
    losses = [r["loss"] for r in clipped["train_log"]]
    unclipped = [r["loss"] for r in results["train_log"]]
    assert losses[0] == unclipped[0]  # same first batch, same model
    assert abs(losses[1] - losses[0]) < abs(unclipped[1] - unclipped[0])  # a tiny norm barely moves the weights
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="max_grad_norm"):
            RunConfig(max_grad_norm=bad)


# ---- failed writes ----
def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("good")

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError, match="results.json: cannot write \\(No space left on device\\)"):
        atomic_write_text(target, "new")
    assert target.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_disk_full_during_a_run_is_one_line_and_resume_finishes(finished, tiny_model_dir, tmp_path, monkeypatch,
                                                                capsys):
    _, reference = finished
    output = tmp_path / "full"
    real_replace, writes = os.replace, []

    def full_on_third_results_write(src, dst):  # zero-shot row, task 1, then the disk is full
        if Path(dst).name == "results.json":
            writes.append(dst)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_on_third_results_write)
    code = cli.main(["run", "--model", tiny_model_dir, "--output", str(output), "--epochs", "2", "--n-train", "8",
                     "--n-test", "8", "--batch-size", "4", "--lr", "0.05", "--device", "cpu", "--precision", "fp32"])
    monkeypatch.undo()
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, "results.json: cannot write (No space left on device)")
    assert json.loads((output / "results.json").read_text())["completed"] == 1  # the last good state
    assert not list(output.glob(".*.tmp"))
    config = RunConfig.from_dict(json.loads((output / "config.json").read_text()), "config.json")
    assert run(config, resume=True, echo=quiet)["R"] == reference["R"]


# ---- verified checkpoints ----
def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_reported_and_the_previous_good_state_is_used(finished, tiny_model_dir, tmp_path,
                                                                            monkeypatch):
    _, uninterrupted = finished
    config = tiny_config(tiny_model_dir, tmp_path / "corrupt", epochs=2)
    run_interrupted_in_second_task(config, monkeypatch)
    checkpoint = tmp_path / "corrupt" / "checkpoints" / "00-alive"
    assert json.loads((checkpoint / "manifest.json").read_text())["task"] == "alive"
    corrupt(next(checkpoint.glob("*.safetensors")))
    assert "does not match its checksum" in verify_checkpoint(checkpoint)
    messages = []
    with pytest.warns(UserWarning, match="00-alive is not usable .*does not match its checksum"):
        resumed = run(config, resume=True, echo=messages.append)
    assert any("instead: task(s) alive will be trained again" in m for m in messages)
    assert resumed["R"] == uninterrupted["R"] and resumed["completed"] == 2


def test_hand_edited_task_list_and_missing_manifest_are_detected(finished, tmp_path):
    import shutil

    config, _ = finished
    checkpoint = tmp_path / "copy"
    shutil.copytree(Path(config.output) / "checkpoints" / "01-size", checkpoint)
    assert verify_checkpoint(checkpoint) is None
    tasks_file = checkpoint / "moses_tasks.json"
    tasks_file.write_text(tasks_file.read_text().replace("alive", "alivf"))
    assert verify_checkpoint(checkpoint) == "moses_tasks.json does not match its checksum"
    (checkpoint / "manifest.json").unlink()  # as a moses older than manifests wrote them
    assert verify_checkpoint(checkpoint) == UNVERIFIED


def test_a_checkpoint_from_before_manifests_still_resumes(finished, tiny_model_dir, tmp_path, monkeypatch):
    _, uninterrupted = finished
    config = tiny_config(tiny_model_dir, tmp_path / "old", epochs=2)
    run_interrupted_in_second_task(config, monkeypatch)
    (tmp_path / "old" / "checkpoints" / "00-alive" / "manifest.json").unlink()
    with pytest.warns(UserWarning, match="00-alive: no manifest.json.*using it unverified"):
        resumed = run(config, resume=True, echo=quiet)
    assert resumed["R"] == uninterrupted["R"]


def test_eval_refuses_a_damaged_final_checkpoint(finished, tmp_path):
    import shutil

    config, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(config.output, copy)
    corrupt(next((copy / "checkpoints" / "01-size").glob("*.safetensors")))
    with pytest.raises(CheckpointError, match="01-size: not usable"):
        evaluate_run(copy)


def test_run_refuses_a_second_process_through_the_cli_subprocess(tiny_model_dir, tmp_path):
    """The real second process: `moses run` while a lock names a live process exits 2 with one line."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "out", holder.pid)
        done = subprocess.run([sys.executable, "-m", "moses.cli", "run", "--model", tiny_model_dir, "--output",
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"in use by process {holder.pid}" in done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_compare_refuses_a_comparison_in_use(tiny_model_dir, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "cmp", holder.pid)
        code = cli.main(["compare", "--methods", "zero-shot", "--model", tiny_model_dir, "--output",
                         str(tmp_path / "cmp")])
        assert code == 2
        assert_one_error_line(capsys.readouterr().err, f"in use by process {holder.pid}")
        assert not (tmp_path / "cmp" / "zero-shot").exists()  # refused before any run started
    finally:
        holder.kill()
        holder.wait()
