"""A run's checkpoints: `<output>/checkpoints/<i>-<task>/`, the method's state after task i.

Each is written into a temporary folder, closed by `manifest.json` (the size and SHA-256 of every file,
written last) and renamed into place, so a checkpoint folder is complete or absent. Loading verifies every
file against the manifest: a damaged checkpoint (a torn copy, bit rot, a file edited by hand) is reported
and the one before it is used. The two newest checkpoints are kept for that."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

from moses import faults
from moses.data.stream import Task
from moses.errors import CheckpointError
from moses.io import atomic_write_text, fsync_directory, read_json

MANIFEST = "manifest.json"
KEEP = 2
# a folder renamed into place is complete (moses never renamed a partial one), so one without a manifest was
# written by a moses older than manifests: usable, but it cannot be verified
UNVERIFIED = f"no {MANIFEST}: written before checkpoints were verified"


def checkpoint_dir(output: Path, index: int, task: Task) -> Path:
    return output / "checkpoints" / f"{index:02d}-{task.name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def save_checkpoint(method, output: Path, index: int, task: Task) -> Path:
    """The method's state after task `index`, verified-on-load; older checkpoints are pruned by `prune`."""
    final = checkpoint_dir(output, index, task)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(tmp)
    files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(tmp)}
    atomic_write_text(tmp / MANIFEST, json.dumps({"task": task.name, "index": index, "files": files}, indent=2))
    faults.reached("checkpoint")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_directory(final.parent)
    return final


def verify_checkpoint(directory: Path) -> str | None:
    """None when every file matches the manifest, else why not (one phrase)."""
    if not directory.is_dir():
        return "missing"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return UNVERIFIED
    try:
        listed = read_json(manifest_path)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is damaged"
    present = {str(p.relative_to(directory)) for p in _files(directory)}
    if set(listed) - present:
        return f"{sorted(set(listed) - present)[0]} is missing"
    for name, expected in listed.items():
        path = directory / name
        if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def final_checkpoint(output: Path, tasks: list[Task], completed: int) -> Path:
    """The checkpoint of a run's last finished task, verified (one written before manifests is used with a
    warning); `moses eval`, `export` and `serve` read it, and a damaged one is an error, not a fallback."""
    if completed == 0:
        raise CheckpointError(f"{output}: no task has finished training yet")
    last = checkpoint_dir(output, completed - 1, tasks[completed - 1])
    problem = verify_checkpoint(last)
    if problem == UNVERIFIED:
        warnings.warn(f"checkpoint {last}: {problem}; using it unverified", stacklevel=3)
    elif problem:
        raise CheckpointError(f"{last}: not usable ({problem}); `moses run --resume` retrains from the newest good one")
    return last


def newest_good_checkpoint(output: Path, tasks: list[Task], completed: int,
                           warn) -> tuple[int, Path | None]:
    """(tasks completed, checkpoint to load) for resuming after `completed` tasks: the checkpoint of task
    completed - 1 when it verifies, else the newest earlier one that does (`warn` is told why), else (0, None):
    start again from the base model."""
    for index in range(completed - 1, -1, -1):
        directory = checkpoint_dir(output, index, tasks[index])
        problem = verify_checkpoint(directory)
        if problem == UNVERIFIED:
            warn(f"checkpoint {directory}: {problem}; using it unverified")
        if problem in (None, UNVERIFIED):
            return index + 1, directory
        if directory.exists() or index == completed - 1:
            warn(f"checkpoint {directory} is not usable ({problem})")
    return 0, None


def prune(output: Path, index: int) -> None:
    """Keep the checkpoints of tasks index - KEEP + 1 .. index (older ones are not needed to resume) and drop
    the temporary copies a crash may have left."""
    for path in (output / "checkpoints").iterdir():
        if path.name.startswith("."):
            if path.name.endswith(".tmp"):
                shutil.rmtree(path, ignore_errors=True)
        elif int(path.name.split("-", 1)[0]) <= index - KEEP:
            shutil.rmtree(path)
