"""MoSEsConfig: every hyperparameter of the adapter, validated on construction."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from moses.errors import CheckpointError, ConfigError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# Architectures whose attention projections are not called q/k/v/o_proj. Used only when the user keeps the
# default targets, like peft's per-architecture target table; the resolved names are saved with the adapter.
ATTENTION_TARGETS_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    "gpt2": ("attn.c_attn", "attn.c_proj"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "gpt_neox": ("query_key_value", "attention.dense"),
    "falcon": ("query_key_value", "self_attention.dense"),
    "bloom": ("query_key_value", "self_attention.dense"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense"),
}

CONFIG_NAME = "adapter_config.json"

# Defaults before reading R2 became the default (0.2.0): an adapter_config.json without these keys was saved
# under them, so it loads as what it was trained as.
LEGACY_DEFAULTS: dict[str, Any] = {"rank": 4, "router_input": "hidden", "ownership": "entries", "own_init": "fresh"}


@dataclass
class MoSEsConfig:
    """Hyperparameters of a MoSEs adapter (the spec's E1-E7: docs/spec.md).

    `ownership="subexperts"` (the default) is reading R2, "dedicated subexperts": task t owns `new_subexperts`
    subexperts of its own (always on, trainable, B = 0 so the task starts at delta 0) and borrows from the
    earlier tasks' frozen subexperts through its router (top-k among them) times a learned transfer gate that
    starts at 0; the gate learns at lr * `transfer_lr_scale`, since Adam moves a parameter by about lr per step
    and the gate must be able to reach O(1) in a few dozen steps. Every task adds its own parameters, so there
    is no task limit and storage grows linearly with the tasks; `num_subexperts` only sets the scale of a new
    router's initial weights (1/sqrt(num_subexperts * rank)), as the pool of that size did before 0.3.0.
    `ownership="entries"` is the spec's reading R1: a learned top-c entry mask per task over one shared pool of
    `num_subexperts` subexperts, whose size then bounds what all tasks can own.

    `routing="token"` is the paper's per-token router; `routing="task"` learns one input-independent gate
    vector per task, so a task's adapter collapses into one weight delta (`merge_task`, exact export).
    `router_input="subexperts"` routes on the subexpert features A x the task reads instead of the hidden state
    x (d_in values), so a router has (borrowable subexperts) x (read subexperts * r) numbers, not x d_in.
    `router_init="previous"` starts a new task's router as a copy of the previous task's (R2: in the corner
    they share). `router_init="best"` (R2, routing="task") chooses what a task borrows before it trains: among
    borrowing nothing and reading each earlier task's own subexperts (router logits on them, transfer gate 1),
    the start with the lowest loss on the task's first training examples (`MoSEsModel.choose_borrowed`); its own
    subexperts then start fresh and learn what the borrowed ones miss. `transfer_init` is the transfer gate's
    starting value otherwise (0: a task starts as the base model plus its own subexperts).
    `growth="loss"` (with router_init="best") adds a task's own subexperts only when borrowing does not
    suffice: when the best borrowed start's first-batch loss (mean per answer token) is above
    `growth_threshold`; otherwise the task trains only its router and transfer gate and stores nothing else.
    `own_init="previous"` (R2) starts a task's own subexperts as copies of the previous task's own
    ones instead of fresh (B = 0): a warm start, as sequential fine-tuning has, without touching the originals.
    `own_init="best"` chooses per task, among fresh and a copy of each earlier task's own subexperts, the start
    with the lowest loss on the task's first training examples (forward passes only;
    `MoSEsModel.choose_own_init`). `fresh_init="gradient"` (R2) draws a fresh start's A from the top
    right-singular vectors of the task's first-batch gradient of the base weight instead of uniformly (B stays
    0; `MoSEsModel.align_fresh_subexperts`).
    R1 only: `scores="fresh"` re-draws the mask scores at every task start, trading reuse for plasticity;
    `score_lr_scale` multiplies the learning rate of the scores, and `free_share` is the share of a new task's
    starting mask taken from entries no earlier task owns (persistent scores only): the remedies of the spec's
    plasticity pitfall.
    """

    num_subexperts: int = 8
    top_k: int = 2
    rank: int = 2
    alpha: float | None = None  # None means 2 * rank
    task_density: float = 0.3
    mask_granularity: str = "tensor"
    routing: str = "token"
    router_input: str = "subexperts"
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    dropout: float = 0.0
    load_balance_coef: float = 0.0
    scores: str = "persistent"
    score_lr_scale: float = 1.0
    free_share: float = 0.5
    ownership: str = "subexperts"
    new_subexperts: int = 1
    router_init: str = "random"
    transfer_lr_scale: float = 10.0
    transfer_init: float = 0.0
    growth: str = "always"
    growth_threshold: float = 0.5
    own_init: str | None = None  # None means "best" under ownership="subexperts", "fresh" under "entries"
    fresh_init: str = "uniform"

    def __post_init__(self) -> None:
        if self.alpha is None:
            self.alpha = float(2 * self.rank)
        if self.own_init is None:  # reading the best earlier subexperts replaces copying them
            self.own_init = "best" if self.ownership == "subexperts" and self.router_init != "best" else "fresh"
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"MoSEsConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("num_subexperts", "top_k", "rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "must be a positive integer")
        if self.top_k > self.num_subexperts:
            raise bad("top_k", f"must be at most num_subexperts ({self.num_subexperts})")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise bad("alpha", "must be a positive number")
        if not isinstance(self.task_density, (int, float)) or not 0 < self.task_density <= 1:
            raise bad("task_density", "must be in (0, 1]")
        if self.mask_granularity not in ("tensor", "subexpert"):
            raise bad("mask_granularity", "must be 'tensor' or 'subexpert'")
        if self.routing not in ("token", "task"):
            raise bad("routing", "must be 'token' or 'task'")
        if self.router_input not in ("hidden", "subexperts"):
            raise bad("router_input", "must be 'hidden' or 'subexperts'")
        if self.scores not in ("persistent", "fresh"):
            raise bad("scores", "must be 'persistent' or 'fresh'")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                raise bad("target_modules", "must not be empty")
        elif not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise bad("target_modules", "must be a regex string or a non-empty list of module-name suffixes")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if not isinstance(self.load_balance_coef, (int, float)) or self.load_balance_coef < 0:
            raise bad("load_balance_coef", "must be >= 0")
        if not isinstance(self.free_share, (int, float)) or not 0 <= self.free_share <= 1:
            raise bad("free_share", "must be in [0, 1]")
        if not isinstance(self.score_lr_scale, (int, float)) or self.score_lr_scale <= 0:
            raise bad("score_lr_scale", "must be > 0")
        if self.ownership not in ("entries", "subexperts"):
            raise bad("ownership", "must be 'entries' or 'subexperts'")
        if (not isinstance(self.new_subexperts, int) or isinstance(self.new_subexperts, bool)
                or not 1 <= self.new_subexperts <= self.num_subexperts):
            raise bad("new_subexperts", f"must be an integer from 1 to num_subexperts ({self.num_subexperts})")
        if not isinstance(self.transfer_lr_scale, (int, float)) or self.transfer_lr_scale <= 0:
            raise bad("transfer_lr_scale", "must be > 0")
        if self.own_init not in ("fresh", "previous", "best"):
            raise bad("own_init", "must be 'fresh', 'previous' or 'best'")
        if self.own_init != "fresh" and self.ownership != "subexperts":
            raise bad("own_init", "needs ownership='subexperts' (a task owns whole subexperts only in R2)")
        if self.fresh_init not in ("uniform", "gradient"):
            raise bad("fresh_init", "must be 'uniform' or 'gradient'")
        if self.fresh_init != "uniform" and self.ownership != "subexperts":
            raise bad("fresh_init", "needs ownership='subexperts' (a fresh start of a task's own subexperts)")
        if self.router_init not in ("random", "previous", "best"):
            raise bad("router_init", "must be 'random', 'previous' or 'best'")
        if self.router_init == "best" and (self.ownership != "subexperts" or self.routing != "task"):
            raise bad("router_init", "'best' needs ownership='subexperts' and routing='task' (a logit preference "
                      "per borrowed subexpert)")
        if self.router_init == "best" and self.own_init != "fresh":
            raise bad("own_init", "must be 'fresh' with router_init='best' (the chosen subexperts are read, not "
                      "copied)")
        if not isinstance(self.transfer_init, (int, float)) or isinstance(self.transfer_init, bool):
            raise bad("transfer_init", "must be a number")
        if self.growth not in ("always", "loss"):
            raise bad("growth", "must be 'always' or 'loss'")
        if self.growth == "loss" and self.router_init != "best":
            raise bad("growth", "'loss' needs router_init='best' (it decides from the borrowed start's loss)")
        if not isinstance(self.growth_threshold, (int, float)) or self.growth_threshold < 0:
            raise bad("growth_threshold", "must be >= 0")
        if self.ownership == "subexperts" and self.load_balance_coef > 0:
            raise bad("load_balance_coef", "must be 0 with ownership='subexperts' (own subexperts are always on)")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MoSEsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown MoSEsConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, extra: dict[str, Any] | None = None) -> str:
        """The text of `adapter_config.json`: peft_type, every field, and `extra` keys."""
        return json.dumps({"peft_type": "MOSES", **self.to_dict(), **(extra or {})}, indent=2) + "\n"

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        from moses.io import atomic_write_text

        atomic_write_text(Path(directory) / CONFIG_NAME, self.to_json(extra))

    @classmethod
    def load(cls, directory: str | Path) -> tuple[MoSEsConfig, dict[str, Any]]:
        """Read `adapter_config.json`; returns the config and the extra (non-config) keys."""
        from moses.io import read_json

        path = Path(directory) / CONFIG_NAME
        data = read_json(path, CheckpointError)
        if not isinstance(data, dict) or data.get("peft_type") != "MOSES":
            raise CheckpointError(f"{path}: not a MoSEs adapter config (peft_type is not 'MOSES')")
        known = {f.name for f in fields(cls)}
        extra = {k: v for k, v in data.items() if k not in known and k != "peft_type"}
        try:
            config = cls(**{**LEGACY_DEFAULTS, **{k: v for k, v in data.items() if k in known}})
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"{path}: {err}") from None
        return config, extra
