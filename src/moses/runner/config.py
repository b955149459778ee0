"""RunConfig: every hyperparameter of a run; saved as config.json beside its results and checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from moses.data.folders import SPLITS  # the split a run is scored on: validation chooses, test reports
from moses.errors import ConfigError
from moses.io import atomic_write_text, read_mapping
from moses.models import DEFAULT_MODEL
from moses.precision import PRECISIONS

STREAMS = ("demo", "trace", "long14", "manifest")


@dataclass
class RunConfig:
    # model
    model: str = DEFAULT_MODEL
    device: str = "auto"  # "auto": what accelerate picks (a GPU when there is one), or "cpu"
    dtype: str = "float32"  # the weights as loaded; mixed precision is `precision`
    precision: str = "auto"  # fp32, bf16 (autocast, fp32 master weights) or auto (bf16 where native)
    # method
    method: str = "moses"
    method_options: dict[str, Any] = field(default_factory=dict)  # options of `method` (win over the below)
    options_by_method: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {"moses": {"lr": 0.01}}
    # named variants of a method for `moses compare`, e.g. {"moses-sub": {"method": "moses", "lr": 0.005}}
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # task stream
    stream: str = "demo"
    data_dir: str | None = None
    manifest: str | None = None
    tasks: list[str] | None = None
    n_train: int | None = 64
    n_test: int | None = 32  # scored examples per task (of `split`)
    eval_as_train: bool = False
    split: str = "test"  # "eval": score each task's eval split (for choosing); "test" (for reporting)
    # training
    lr: float = 3e-3
    epochs: int = 4
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float | None = None  # clip the gradient norm of every optimizer step to this (None: no)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the trained weights (not on gates or scores)
    max_prompt_tokens: int = 320
    max_answer_tokens: int = 64
    seed: int = 0
    # evaluation
    eval_batch_size: int = 16
    zero_shot: bool = True
    fwt: bool = False  # also evaluate tasks not trained yet (forward transfer)
    eval_rows: str = "full"  # after each task: "full" every seen task; "diagonal" the new one (all at the end)
    tail: bool = False  # also evaluate every row with the task id unknown (TaIL), with task-id accuracy
    output: str = "runs/run"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config {name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "grad_accum", "max_prompt_tokens", "max_answer_tokens",
                     "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "must be a positive integer")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad(name, "must be a positive integer or null (all)")
        if (not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0
                or self.lr == float("inf")):
            raise bad("lr", "must be a finite number > 0")
        norm = self.max_grad_norm
        if norm is not None and (not isinstance(norm, (int, float)) or isinstance(norm, bool) or not norm > 0
                                 or norm == float("inf")):
            raise bad("max_grad_norm", "must be a finite number > 0 or null (no clipping)")
        decay = self.weight_decay
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 <= decay < float("inf"):
            raise bad("weight_decay", "must be a finite number >= 0")
        if self.stream not in STREAMS:
            raise bad("stream", f"must be one of {', '.join(STREAMS)}")
        if self.stream in ("trace", "long14") and not self.data_dir:
            raise bad("data_dir", f"is required with stream '{self.stream}'")
        if self.split not in SPLITS:
            raise bad("split", f"must be one of {', '.join(SPLITS)}")
        if self.split == "eval" and self.stream == "demo":
            raise bad("split", "the demo stream has no eval split")
        if self.stream == "manifest" and not self.manifest:
            raise bad("manifest", "is required with stream 'manifest'")
        names_ok = isinstance(self.tasks, list) and all(isinstance(t, str) for t in self.tasks)
        if self.tasks is not None and not names_ok:
            raise bad("tasks", "must be a list of task names")
        if not isinstance(self.method_options, dict):
            raise bad("method_options", "must be a mapping")
        by_method_ok = isinstance(self.options_by_method, dict) and all(
            isinstance(v, dict) for v in self.options_by_method.values())
        if not by_method_ok:
            raise bad("options_by_method", "must map method names to mappings of options")
        if self.options_by_method:
            from moses.methods import METHODS  # late: the methods import torch and peft

            unknown = sorted(set(self.options_by_method) - set(METHODS))
            if unknown:
                raise bad("options_by_method", f"unknown method(s) {', '.join(unknown)}")
        self._validate_variants()
        if self.eval_rows not in ("full", "diagonal"):
            raise bad("eval_rows", "must be full or diagonal")
        if self.eval_rows == "diagonal" and self.fwt:
            raise bad("eval_rows", "must be full with fwt (forward transfer needs every row)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise bad("dtype", "must be float32, bfloat16 or float16")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")

    def _validate_variants(self) -> None:
        if not self.variants:
            return
        from moses.methods import METHODS  # late: the methods import torch and peft

        if not isinstance(self.variants, dict):
            raise ConfigError(f"config variants={self.variants!r}: must map variant names to options")
        for name, options in self.variants.items():
            where = f"config variants.{name}"
            if name in METHODS:
                raise ConfigError(f"{where}: a variant cannot take the name of a method")
            if not isinstance(options, dict) or options.get("method") not in METHODS:
                raise ConfigError(f"{where}: needs 'method', one of {', '.join(METHODS)}")

    def options(self) -> dict[str, Any]:
        """The options `method` runs with: its entry in `options_by_method`, then `method_options`."""
        return {**self.options_by_method.get(self.method, {}), **self.method_options}

    def for_method(self, method: str, output: str) -> RunConfig:
        """This config for another method or variant of a comparison: `method_options` belong to `self.method`
        only; `options_by_method` travels with every run (so each run's config.json says what it ran with).
        A variant runs its `method` with the variant's options over that method's `options_by_method`."""
        if method in self.variants:  # (a run needs no variants: adding one later does not block its resume)
            options = {k: v for k, v in self.variants[method].items() if k != "method"}
            return replace(self, method=self.variants[method]["method"], output=output, method_options=options,
                           variants={})
        return replace(self, method=method, output=output, variants={},
                       method_options=self.method_options if method == self.method else {})

    def evaluation_key(self) -> dict[str, Any]:
        """The settings that decide the zero-shot row: runs that agree on them can share it."""
        keys = ("model", "dtype", "precision", "stream", "data_dir", "manifest", "tasks", "n_train", "n_test",
                "eval_as_train", "split", "max_prompt_tokens", "eval_batch_size", "seed", "device")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """A YAML or JSON file of settings; `overrides` (e.g. from the command line) win."""
        path = Path(path)
        data = read_mapping(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        base = path.parent
        for key in ("data_dir", "manifest"):  # relative paths in a config file are relative to the file
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str((base / data[key]).resolve())
        return cls.from_dict({**data, **overrides}, source=str(path))

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
