"""The MoSEs layer: a frozen projection plus a routed, masked mixture of low-rank subexperts.

    h = W0 x + (alpha / r) * sum_{i in topk(z)} g_i(x) * B_t[i] A_t[i] x         (MOSES_SPEC E4)

A_t = A * m_t(A), B_t = B * m_t(B) with m_t the task's binary mask (E2); z = W_r(t) x the task's router
logits (E3). The N subexperts are stacked, so A_t x for all of them is one matmul against the
(N*r, d_in) matrix; the gates zero the subexperts outside the top-k and a second matmul against the
(d_out, N*r) matrix of B_t sums the chosen ones. `reference_delta` is the slow per-subexpert loop kept
for tests.

Reading R1 (ownership="entries") keeps the pool: an ended task's entries are read from a buffer of their
values, so nothing an optimizer does to the trainable pool can move them. Reading R2 (ownership="subexperts",
the default) keeps each task's subexperts as parameters of its own and needs no masks: `dedicated.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moses.adapter.config import MoSEsConfig
from moses.adapter.dedicated import DedicatedSubexperts
from moses.adapter.masks import num_kept, straight_through_mask, top_c_mask
from moses.errors import TaskError

try:  # GPT-2 style projections store their weight as (d_in, d_out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()


@dataclass
class TaskContext:
    """Which task the layers of one model use; shared by all of them so one assignment switches all."""

    active: int | None = None  # task whose masks and router the forward uses
    training: int | None = None  # task being learned: its masks come from the scores, with gradients
    sample_tasks: torch.Tensor | None = None  # per-sample task indices for a mixed batch (-1: no adapter)
    disabled: bool = False




def projection_shape(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a projection MoSEs can wrap."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if Conv1D and isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"MoSEs wraps nn.Linear or transformers Conv1D, not {type(layer).__name__}")


class MoSEsLayer(DedicatedSubexperts, nn.Module):
    def __init__(self, base_layer: nn.Module, config: MoSEsConfig, context: TaskContext | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = projection_shape(base_layer)
        self.num_subexperts, self.rank, self.top_k = config.num_subexperts, config.rank, config.top_k
        self.scaling = config.scaling
        self.density = config.task_density
        self.per_subexpert = config.mask_granularity == "subexpert"
        self.routing = config.routing
        self.router_inputs = (config.num_subexperts * config.rank if config.router_input == "subexperts"
                              else None)  # None: route on the hidden state x
        # a token router on x is stacked under A_t, so one matmul yields subexpert inputs and router logits
        self.fuses_router = config.routing == "token" and self.router_inputs is None and config.ownership == "entries"
        self.load_balance_coef = config.load_balance_coef
        self.dedicated = config.ownership == "subexperts"  # reading R2: each task owns whole subexperts
        self.new_subexperts = config.new_subexperts
        self.router_init = config.router_init
        self.transfer_init = config.transfer_init
        self.context = context if context is not None else TaskContext()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

        weight = base_layer.weight
        self.routers = nn.ParameterList()
        self.transfer_gates = nn.ParameterList()  # R2: one scalar per task, how much it borrows (starts at 0)
        self.num_ended = 0  # tasks 0..num_ended-1 are stored and frozen in this layer
        self.aux_loss: torch.Tensor | None = None
        self.gate_record: list[torch.Tensor] | None = None  # when a list: each forward's gates [tokens, width]
        # per task: (key, A_t flat, B_t flat) for inference; one entry per task, so a mixed-task batch (serving)
        # does not rebuild every task's weights at every decoding step
        self._inference_cache: dict[int, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self._fresh_own_A: tuple[int, torch.Tensor] | None = None  # R2: (task, its own A as first drawn)
        self._drawn_router: tuple[int, torch.Tensor] | None = None  # R2: (task, its router as first drawn)
        self._plan: tuple | None = None  # R2: the gathered gates of the last mixed batch layout (decoding)
        if self.dedicated:
            self.init_dedicated()
            return
        factory = {"device": weight.device, "dtype": torch.float32}
        n, r, d_in, d_out = self.num_subexperts, self.rank, self.in_features, self.out_features
        self.lora_A = nn.Parameter(torch.empty(n, r, d_in, **factory))
        self.lora_B = nn.Parameter(torch.empty(n, d_out, r, **factory))
        self.scores_A = nn.Parameter(torch.empty(n, r, d_in, **factory))
        self.scores_B = nn.Parameter(torch.empty(n, d_out, r, **factory))
        # M_{t-1}: entries owned by ended tasks, and their values. Later tasks read them from these buffers,
        # never from the trainable pool, so weight decay or optimizer state on the pool cannot move them (E5).
        self.register_buffer("frozen_A", torch.zeros(n, r, d_in, dtype=torch.bool, device=weight.device))
        self.register_buffer("frozen_B", torch.zeros(n, d_out, r, dtype=torch.bool, device=weight.device))
        self.register_buffer("frozen_values_A", torch.zeros(n, r, d_in, **factory), persistent=False)
        self.register_buffer("frozen_values_B", torch.zeros(n, d_out, r, **factory), persistent=False)
        self.start_masks: tuple[torch.Tensor, torch.Tensor] | None = None  # R1: the training task's first mask
        self.reset_parameters()

    # ---- initialisation (explicit, seeded by the caller's torch generator) ----
    def reset_parameters(self) -> None:
        """E1: A kaiming-uniform (as peft's LoRA A), B zero, so a new adapter leaves the model unchanged."""
        nn.init.uniform_(self.lora_A, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))
        nn.init.zeros_(self.lora_B)
        self.reset_scores()

    def reset_scores(self) -> None:
        """E2: scores kaiming-uniform over each subexpert's fan-in."""
        with torch.no_grad():
            self.scores_A.uniform_(-1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))
            self.scores_B.uniform_(-1 / math.sqrt(self.rank), 1 / math.sqrt(self.rank))

    def reserve_free_entries(self, share: float) -> None:
        """Plasticity remedy (spec, "Pitfall"): lift the scores of the best free entries above every other,
        so a new task's starting mask holds `share` of its entries outside M (trainable) and the rest reused.
        Without it, persistent scores start the task on the previous task's frozen mask."""
        with torch.no_grad():
            for scores, frozen in ((self.scores_A, self.frozen_A), (self.scores_B, self.frozen_B)):
                rows = scores.shape[0] if self.per_subexpert else 1
                magnitude = scores.abs().reshape(rows, -1)
                free = ~frozen.reshape(rows, -1)
                wanted = round(share * num_kept(magnitude.shape[1], self.density))
                count = min(wanted, int(free.sum(dim=1).min()))
                if count == 0:
                    continue
                chosen = magnitude.masked_fill(~free, -1.0).topk(count, dim=1).indices
                ceiling = magnitude.max(dim=1, keepdim=True).values
                lifted = ceiling + magnitude.gather(1, chosen)  # above every other score, order preserved
                flat = scores.view(rows, -1)
                flat.scatter_(1, chosen, torch.where(flat.gather(1, chosen) < 0, -lifted, lifted))

    def add_task(self) -> None:
        """A new task's parameters: R2 its own subexperts, router and gate (`add_dedicated_task`); R1 its router,
        W_r in R^{N x d_in} ("token"; N x N*r when routing on subexpert features) or one gate-logit vector
        ("task") (E3)."""
        device = self.base_layer.weight.device
        if self.dedicated:
            self.add_dedicated_task(device)
            return
        if self.router_init == "previous" and self.routers:
            router = self.routers[-1].detach().clone()
        elif self.routing == "token":
            fan_in = self.router_inputs or self.in_features
            bound = 1 / math.sqrt(fan_in)
            router = torch.empty(self.num_subexperts, fan_in, device=device).uniform_(-bound, bound)
        else:
            router = torch.randn(self.num_subexperts, device=device) * 0.02
        self.routers.append(nn.Parameter(router))
        self.start_masks = self.score_masks()  # to measure how far learning moves the task's mask

    # ---- task bookkeeping ----
    def task_mask(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R1: task `task`'s stored binary masks."""
        return getattr(self, f"mask_A_{task}"), getattr(self, f"mask_B_{task}")

    def store_task_mask(self, task: int, mask_a: torch.Tensor, mask_b: torch.Tensor) -> None:
        """E7 (R1): keep task `task`'s binary masks, fold them into the frozen set M and copy the values of the
        entries it adds to M into the frozen buffers, which is where every later forward reads them."""
        if task != self.num_ended:
            raise TaskError(f"masks must be stored in task order: expected task {self.num_ended}, got {task}")
        device = self.frozen_A.device
        self.register_buffer(f"mask_A_{task}", mask_a.to(device=device, dtype=torch.bool).contiguous().clone(),
                             persistent=False)
        self.register_buffer(f"mask_B_{task}", mask_b.to(device=device, dtype=torch.bool).contiguous().clone(),
                             persistent=False)
        for pool, frozen, values, mask in ((self.lora_A, self.frozen_A, self.frozen_values_A, self.task_mask(task)[0]),
                                           (self.lora_B, self.frozen_B, self.frozen_values_B, self.task_mask(task)[1])):
            new = mask & ~frozen
            values[new] = pool.detach()[new]
            frozen |= new
        self.end_router(task)

    def end_router(self, task: int) -> None:
        self.routers[task].requires_grad_(False)
        self.routers[task].grad = None
        self.num_ended += 1

    def end_task(self, task: int) -> tuple[int, int]:
        """Store and freeze the task; returns (entries it reads, of those also in its starting mask (R1))."""
        if task != self.num_ended:
            raise TaskError(f"tasks end in order: expected task {self.num_ended}, got {task}")
        if self.dedicated:
            self.end_dedicated_task(task)
            self.num_ended += 1
            entries = self.readable_subexperts(task) * self.rank * (self.in_features + self.out_features)
            return entries, entries
        with torch.no_grad():
            masks = self.score_masks()
            kept = (sum(int((m & s).sum()) for m, s in zip(masks, self.start_masks, strict=True))
                    if self.start_masks is not None else sum(int(m.sum()) for m in masks))
            self.store_task_mask(task, *masks)
            self.start_masks = None
        return sum(int(m.sum()) for m in masks), kept

    def score_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (top_c_mask(self.scores_A, self.density, self.per_subexpert),
                top_c_mask(self.scores_B, self.density, self.per_subexpert))

    # ---- the math ----
    def task_weights(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R1: A_t, B_t. Entries in M come from the frozen buffers, so the pool's values there are never read
        and their gradient is exactly zero (E5)."""
        live_a = torch.where(self.frozen_A, self.frozen_values_A, self.lora_A)
        live_b = torch.where(self.frozen_B, self.frozen_values_B, self.lora_B)
        if task == self.context.training:
            mask_a = straight_through_mask(self.scores_A, self.density, self.per_subexpert)
            mask_b = straight_through_mask(self.scores_B, self.density, self.per_subexpert)
        elif task < self.num_ended:
            mask_a, mask_b = self.task_mask(task)
        else:
            raise self.unknown_task(task)
        return live_a * mask_a, live_b * mask_b

    def stored_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """R1: the pool as the tasks read it (frozen entries from their buffers), for saving."""
        return (torch.where(self.frozen_A, self.frozen_values_A, self.lora_A.detach()),
                torch.where(self.frozen_B, self.frozen_values_B, self.lora_B.detach()))

    def unknown_task(self, task: int) -> TaskError:
        return TaskError(f"task {task} is not stored in this layer (not ended and not being trained)")

    def flat_task_weights(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R1: A_t as (N*r, d_in) (with the router's N rows below it when fused) and B_t as (d_out, N*r). At
        inference of an ended task they are kept until the pool, stored values or router change (version counters), so
        decoding does not rebuild them every token."""
        key = (task, self.lora_A._version, self.lora_B._version, self.frozen_values_A._version,
               self.frozen_values_B._version, self.routers[task]._version, self.num_ended)
        cacheable = not torch.is_grad_enabled() and task != self.context.training
        cached = self._inference_cache.get(task) if cacheable else None
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        a_flat, b_flat = self.flatten(*self.task_weights(task))
        if self.fuses_router:
            a_flat = torch.cat([a_flat, self.routers[task]])
        if cacheable:
            self._inference_cache[task] = (key, a_flat, b_flat)
        return a_flat, b_flat

    def flatten(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked subexperts A [n, r, d_in], B [n, d_out, r] as matmul operands (n*r, d_in), (d_out, n*r)."""
        n_r = a.shape[0] * self.rank
        return a.reshape(n_r, self.in_features), b.permute(1, 0, 2).reshape(self.out_features, n_r)

    def adapter_input(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x as the subexperts read it: in their dtype (under autocast F.linear casts it), after dropout."""
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(dtype)
        return self.dropout(x)

    def gates(self, x: torch.Tensor | None, task: int, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Dense gate values over the subexperts the task reads: softmax over the top-k router logits, 0
        elsewhere (E3; R2: `dedicated_gates`). `x` is what the router reads: the hidden state, or the subexpert
        features A_t x (router_input="subexperts"); `logits` when they were computed already (fused with A_t)."""
        if self.dedicated:
            return self.dedicated_gates(self.dedicated_logits(x, task) if logits is None else logits, task)
        if logits is None:
            router = self.routers[task]
            logits = F.linear(x, router) if self.routing == "token" else router
        top = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(dim=-1))
        if self.routing == "token" and self.load_balance_coef > 0 and torch.is_grad_enabled():
            self.aux_loss = self.load_balance_loss(logits, top.indices)
        return gates

    def load_balance_loss(self, logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """E6, Switch form: lambda * N * sum_i f_i P_i, f_i the share of routing slots, P_i the mean prob."""
        n = self.num_subexperts
        slots = F.one_hot(chosen.reshape(-1), n).float().mean(dim=0)
        probs = logits.reshape(-1, n).softmax(dim=-1).mean(dim=0)
        return self.load_balance_coef * n * (slots * probs).sum()

    def adapter_delta(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self.dedicated:
            return self.dedicated_delta(x, task)
        a, b = self.flat_task_weights(task)
        x = self.adapter_input(x, a.dtype)
        down = F.linear(x, a)
        if self.fuses_router:
            n_r = self.num_subexperts * self.rank
            down, logits = down[..., :n_r], down[..., n_r:]
            gates = self.gates(None, task, logits=logits)
        else:
            gates = self.gates(down if self.router_inputs else x, task)
        return self.mix(down, gates, b)

    def mix(self, down: torch.Tensor, gates: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
        """sum_i g_i B_t[i] (A_t[i] x): the gated subexpert features through the stacked B (gates None: 1)."""
        if gates is not None:
            if self.gate_record is not None:
                width = gates.shape[-1]
                self.gate_record.append(gates.detach().float().expand(*down.shape[:-1], width).reshape(-1, width))
            down = (down.unflatten(-1, (-1, self.rank)) * gates.to(down.dtype).unsqueeze(-1)).flatten(-2)
        return F.linear(down, b) * self.scaling

    def subexperts(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A_t [k, r, d_in], B_t [k, d_out, r] of the k subexperts task `task` reads (R1: all N, masked)."""
        if not self.dedicated:
            return self.task_weights(task)
        return torch.cat(list(self.own_A[: task + 1])), torch.cat(list(self.own_B[: task + 1]))

    def reference_delta(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The same sum as `adapter_delta`, one subexpert at a time (slow; the tests' reference)."""
        a, b = self.subexperts(task)
        x = x.to(a.dtype)
        features = torch.cat([x @ a[i].T for i in range(len(a))], dim=-1)
        if self.dedicated and task == 0:
            gates = x.new_ones(len(a))
        else:
            gates = self.gates(features if self.router_inputs else x, task)
        if gates.dim() == 1:
            gates = gates.expand(*x.shape[:-1], -1)
        out = torch.zeros(*x.shape[:-1], self.out_features, dtype=a.dtype, device=x.device)
        for i in range(len(a)):
            out = out + gates[..., i : i + 1] * (x @ a[i].T @ b[i].T)
        return out * self.scaling

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        ctx = self.context
        if ctx.disabled:
            return result
        if ctx.sample_tasks is not None:
            return result + self.mixed_batch_delta(x, ctx.sample_tasks).to(result.dtype)
        if ctx.active is None:
            return result
        return result + self.adapter_delta(x, ctx.active).to(result.dtype)

    def mixed_batch_delta(self, x: torch.Tensor, sample_tasks: torch.Tensor) -> torch.Tensor:
        """Each sample of the batch (dim 0) through its own task's masks and router."""
        sample_tasks = sample_tasks.to(x.device)
        if sample_tasks.shape[0] != x.shape[0]:
            raise TaskError(f"task_ids has {sample_tasks.shape[0]} entries but the batch has {x.shape[0]} samples")
        if self.dedicated:
            return self.mixed_batch_pool_delta(x, sample_tasks)
        delta = torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
        for task in sample_tasks.unique().tolist():
            if task < 0:
                continue
            rows = (sample_tasks == task).nonzero().squeeze(1)
            delta = delta.index_copy(0, rows, self.adapter_delta(x.index_select(0, rows), task).to(delta.dtype))
        return delta

    def task_gates(self, task: int) -> torch.Tensor:
        """The input-independent gates of a task-routed task (routing='task') over the subexperts it reads."""
        if self.routing != "task":
            raise TaskError("input-independent gates need routing='task': a token router's mixture depends on "
                            "the input")
        if self.dedicated and task == 0:
            return self.own_A[0].new_ones(self.own_A[0].shape[0])
        return self.gates(None, task).detach()

    def merged_delta_weight(self, task: int) -> torch.Tensor:
        """Delta W of a task-routed task in the base layer's own weight layout."""
        gates = self.task_gates(task)
        a, b = self.subexperts(task)
        delta = torch.einsum("n,nor,nri->oi", gates, b.detach(), a.detach()) * self.scaling
        return delta.T if not isinstance(self.base_layer, nn.Linear) else delta

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, subexperts={self.num_subexperts}, "
                f"top_k={self.top_k}, rank={self.rank}, routing={self.routing}")


def moses_layers(model: nn.Module) -> Iterator[tuple[str, MoSEsLayer]]:
    """Every MoSEs layer of `model`, by module name, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MoSEsLayer):
            yield name, module


def unwrap_layers(model: nn.Module) -> nn.Module:
    """`model` with each MoSEs layer replaced by its original projection (`base_layer`)."""
    for name, layer in list(moses_layers(model)):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    return model
