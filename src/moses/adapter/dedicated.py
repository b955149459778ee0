"""Reading R2, "dedicated subexperts" (ownership="subexperts", the default): the math of `MoSEsLayer` that
only this reading has.

Task t owns n_t whole subexperts, kept as parameters of its own (`own_A[t]` [n_t, r, d_in], `own_B[t]`
[n_t, d_out, r]), as peft keeps one parameter set per adapter name: n_t = new_subexperts when it grows, 0 when
it only borrows (`drop_own_subexperts`; task 0 always grows). It reads its own subexperts (gate 1) and every
earlier task's (gate: its router's top-k among them, times its transfer gate). Its router `routers[t]` scores
only the subexperts it may borrow, those of tasks 0..t-1, so task 0's router is empty. Subexperts are numbered
in task order, so task t reads a prefix of them: `borrowable(t)` borrowed, then its own.

Isolation is structural: when a task ends its parameters get requires_grad=False and their gradients are
dropped, so no optimizer, weight decay or optimizer state can move them, and nothing later writes to them.
There is no task limit: every task adds its own parameters.

For speed the subexperts are still computed as one matmul: the ended tasks' subexperts are concatenated
once into flat (k*n*r, d_in) and (d_out, k*n*r) matrices and kept until one of them changes (version
counters); the training task's are concatenated below them at each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moses.adapter.gradient_init import aligned_rows
from moses.errors import TaskError


class DedicatedSubexperts:
    """Mixed into `MoSEsLayer` (which sets rank, new_subexperts, in/out features, routing, top_k, context)."""

    def init_dedicated(self) -> None:
        self.own_A = nn.ParameterList()
        self.own_B = nn.ParameterList()
        self._frozen_flat: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    # ---- tasks ----
    def own_counts(self) -> list[int]:
        """How many subexperts each task owns (new_subexperts, or 0 for a task that only borrows)."""
        return [a.shape[0] for a in self.own_A]

    def borrowable(self, task: int) -> int:
        """How many subexperts task `task` may borrow: every earlier task's own."""
        return sum(a.shape[0] for a in self.own_A[:task])

    def readable_subexperts(self, task: int) -> int:
        """The subexperts task `task` reads: the borrowable ones, then its own (a prefix of the numbering)."""
        return self.borrowable(task) + self.own_A[task].shape[0]

    def add_dedicated_task(self, device: torch.device) -> None:
        """E1 for task t's own subexperts (A kaiming-uniform as peft's LoRA A, B = 0: delta 0), its router over
        the earlier tasks' subexperts and its transfer gate (`transfer_init`, 0 by default)."""
        task, n, r = len(self.own_A), self.new_subexperts, self.rank
        bound = 1 / math.sqrt(self.in_features)
        self.own_A.append(nn.Parameter(torch.empty(n, r, self.in_features, device=device).uniform_(-bound, bound)))
        self.own_B.append(nn.Parameter(torch.zeros(n, self.out_features, r, device=device)))
        self._fresh_own_A = (task, self.own_A[task].detach().clone())
        borrow = self.borrowable(task)
        if self.routing == "task":
            router = torch.randn(borrow, device=device) * 0.02
        else:
            fan_in = (borrow + n) * r if self.router_inputs else self.in_features
            # the scale of the router over the nominal pool of num_subexperts, as the pool layout drew it
            scale = 1 / math.sqrt(self.router_inputs or self.in_features)
            router = torch.empty(borrow, fan_in, device=device).uniform_(-scale, scale)
        if self.router_init == "previous" and task > 1:
            previous = self.routers[task - 1].detach()
            router[tuple(slice(0, s) for s in previous.shape)] = previous
        self.routers.append(nn.Parameter(router, requires_grad=borrow > 0))
        self._drawn_router = (task, router.detach().clone())  # what prefer_borrowed(None) restores
        # task 0 borrows nothing: its (empty) router and gate are never read, and a trainable parameter
        # without gradients stops DistributedDataParallel
        self.transfer_gates.append(nn.Parameter(torch.full((), self.transfer_init if task else 0.0, device=device),
                                                requires_grad=task > 0))

    def drop_own_subexperts(self, task: int) -> None:
        """Task `task` (the one being trained, not the first) adds no subexperts: it only borrows, through its
        router and transfer gate, and stores nothing else. A router that reads subexpert features loses the
        columns of the dropped ones."""
        if task == 0 or task != len(self.own_A) - 1 or task < self.num_ended:
            raise TaskError(f"task {task}: only the task being trained, and not the first, can borrow only")
        r, d_in, d_out = self.rank, self.in_features, self.out_features
        device = self.own_A[task].device
        self.own_A[task] = nn.Parameter(torch.empty(0, r, d_in, device=device), requires_grad=False)
        self.own_B[task] = nn.Parameter(torch.empty(0, d_out, r, device=device), requires_grad=False)
        self._fresh_own_A = None
        if self.routing == "token" and self.router_inputs:
            self.routers[task] = nn.Parameter(self.routers[task].detach()[:, : self.borrowable(task) * r].clone())

    def prefer_borrowed(self, task: int, source: int | None, logit: float) -> None:
        """router_init="best" (task routing): task `task` starts by reading task `source`'s subexperts, its
        router's logits `logit` on them and 0 elsewhere, its transfer gate 1 (or borrowing nothing when `source`
        is None: gate 0, logits as drawn)."""
        if self.routing != "task":
            raise TaskError("prefer_borrowed needs routing='task' (a token router has no input-free preference)")
        counts = self.own_counts()
        with torch.no_grad():
            if source is None:
                self.transfer_gates[task].zero_()
                if self._drawn_router is not None and self._drawn_router[0] == task:
                    self.routers[task].copy_(self._drawn_router[1])
                return
            if not 0 <= source < task or counts[source] == 0:
                raise TaskError(f"task {task} can read an earlier task's own subexperts, not task {source}'s")
            start = sum(counts[:source])
            self.routers[task].zero_()
            self.routers[task][start: start + counts[source]] = logit
            self.transfer_gates[task].fill_(1.0)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Everything task `task` owns in this layer: its subexperts, router and transfer gate."""
        return [self.own_A[task], self.own_B[task], self.routers[task], self.transfer_gates[task]]

    def end_dedicated_task(self, task: int) -> None:
        """Freeze task `task`: requires_grad=False and no gradient, so no optimizer step can move it."""
        for param in self.task_parameters(task):
            param.requires_grad_(False)
            param.grad = None

    def start_own_subexperts(self, task: int, source: int | None) -> None:
        """R2: task `task` starts its own subexperts as copies of task `source`'s own ones (a warm start, as
        sequential fine-tuning has, while both stay isolated: the copies are the new task's parameters and the
        originals stay frozen), or fresh when `source` is None: A as first drawn, B = 0 (delta 0)."""
        with torch.no_grad():
            if source is None:
                self.own_A[task].copy_(self._fresh_own_A[1])
                self.own_B[task].zero_()
            else:
                if not 0 <= source < task:
                    raise TaskError(f"task {task} can start from an earlier task's subexperts, not task {source}")
                self.own_A[task].copy_(self.own_A[source])
                self.own_B[task].copy_(self.own_B[source])

    def align_fresh_subexperts(self, task: int, weight_grad: torch.Tensor) -> None:
        """R2, fresh_init="gradient": the rows of task `task`'s fresh own A become the top right-singular
        vectors of the loss gradient of the base weight (`gradient_init.aligned_rows`); B stays 0, so the task
        still starts at delta 0. `weight_grad` is the base weight's, as [d_out, d_in] (`weight_gradients`)."""
        n, r = self.new_subexperts, self.rank
        rows = aligned_rows(weight_grad, self.own_A[task].reshape(n * r, self.in_features))
        with torch.no_grad():
            self._fresh_own_A = (task, rows.reshape(n, r, self.in_features))
            self.own_A[task].copy_(self._fresh_own_A[1])
            self.own_B[task].zero_()

    # ---- the subexperts as matmul operands ----
    def frozen_flat(self, tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The own subexperts of ended tasks 0..tasks-1 as (tasks*n*r, d_in) and (d_out, tasks*n*r): views of one
        concatenation of every ended task's, made once and kept until a task ends or one of them changes, so
        serving many tasks holds one copy, not one per task."""
        ended = self.num_ended
        key = (ended, tuple((self.own_A[t]._version, self.own_B[t]._version) for t in range(ended)))
        if self._frozen_flat is None or self._frozen_flat[0] != key:
            n_r = self.borrowable(ended) * self.rank
            a = (torch.cat([self.own_A[t].detach() for t in range(ended)]).reshape(n_r, self.in_features) if ended
                 else self.own_A[0].new_zeros(0, self.in_features))
            b_rows = (torch.cat([self.own_B[t].detach().transpose(1, 2) for t in range(ended)]).reshape(
                n_r, self.out_features) if ended else self.own_B[0].new_zeros(0, self.out_features))
            self._frozen_flat = (key, a, b_rows)  # B as (n_r, d_out) rows, so a prefix of it is a view
        _, a, b_rows = self._frozen_flat
        width = self.borrowable(tasks) * self.rank
        return a[:width], b_rows[:width].T

    def dedicated_flat(self, tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The subexperts of tasks 0..tasks-1 as matmul operands: the ended ones from the cache, the training
        task's (when it is among them) live, so gradients reach its parameters only."""
        ended = self.num_ended
        if tasks <= ended:
            return self.frozen_flat(tasks)
        live = tasks - 1
        if live != ended or live != self.context.training:
            raise self.unknown_task(live)
        a, b = self.frozen_flat(ended)
        own_a, own_b = self.flatten(self.own_A[live], self.own_B[live])
        return torch.cat([a, own_a]), torch.cat([b, own_b], dim=1)

    # ---- routing ----
    def dedicated_logits(self, features: torch.Tensor, task: int) -> torch.Tensor:
        """R2 router logits over the earlier subexperts the task may borrow, from its readable subexpert features
        (or the hidden state). In fp32 even under autocast: on CPU a matmul this thin costs several times more in
        bf16 than in fp32 (benchmarks/thin_matmul.py)."""
        router = self.routers[task]
        if self.routing == "task":
            return router
        if self.router_inputs:  # the features of the subexperts it reads (a wider prefix is cut)
            features = features[..., : self.readable_subexperts(task) * self.rank]
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(features.float(), router)

    def dedicated_gates(self, logits: torch.Tensor, task: int) -> torch.Tensor:
        """R2 gates [..., readable] over the subexperts the task reads: on the earlier tasks' ones, the softmax
        over the top-k router logits among them times the task's transfer gate (0 at the start); 1 on its own."""
        n = self.own_A[task].shape[0]
        if task == 0:
            return logits.new_ones(n).expand(*logits.shape[:-1], n)
        top = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1)
        chosen = top.values.softmax(dim=-1) * self.transfer_gates[task].to(logits.dtype)
        return F.pad(torch.zeros_like(logits).scatter(-1, top.indices, chosen), (0, n), value=1.0)

    def dedicated_delta(self, x: torch.Tensor, task: int) -> torch.Tensor:
        a, b = self.dedicated_flat(task + 1)
        x = self.adapter_input(x, a.dtype)
        down = F.linear(x, a)
        gates = None if task == 0 else self.dedicated_gates(  # task 0 reads only its own: gates all 1
            self.dedicated_logits(down if self.router_inputs else x, task), task)
        return self.mix(down, gates, b)

    def mixed_batch_pool_delta(self, x: torch.Tensor, sample_tasks: torch.Tensor) -> torch.Tensor:
        """R2: every task reads the subexperts of tasks 0..itself, so a mixed batch is two matmuls over the
        widest of them for all of its samples; only the gates (router, top-k) are computed per task, on that
        task's rows, and are 0 beyond the subexperts it reads. Equals `adapter_delta` per sample."""
        tasks = [t for t in sample_tasks.unique().tolist() if t >= 0]
        for task in tasks:
            if task >= self.num_ended and task != self.context.training:
                raise self.unknown_task(task)
        if not tasks:
            return torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
        a, b = self.dedicated_flat(max(tasks) + 1)
        width = self.readable_subexperts(max(tasks))
        x = self.adapter_input(x, a.dtype)
        down = F.linear(x, a)
        if self.routing == "token" and not torch.is_grad_enabled():
            return self.mix(down, self.batched_dedicated_gates(down if self.router_inputs else x,
                                                               sample_tasks, width), b)
        gates = down.new_zeros(*down.shape[:-1], width, dtype=torch.float32)
        for task in tasks:
            rows = (sample_tasks == task).nonzero().squeeze(1)
            features = (down if self.router_inputs else x).index_select(0, rows)
            chosen = self.dedicated_gates(self.dedicated_logits(features, task), task)
            chosen = F.pad(chosen, (0, width - chosen.shape[-1])).expand(*features.shape[:-1], -1)
            gates = gates.index_copy(0, rows, chosen.to(gates.dtype))
        return self.mix(down, gates, b)

    def batched_dedicated_gates(self, features: torch.Tensor, sample_tasks: torch.Tensor, width: int
                                ) -> torch.Tensor:
        """R2 gates [batch, ..., width] of a mixed batch in one pass for all of its tasks (inference): each
        sample's router, borrow mask, own subexperts and transfer gate are gathered once per batch layout
        (kept while decoding it), then one batched matmul and one top-k serve every sample. The same
        numbers as `dedicated_gates` per task: a router's columns beyond the features its task reads are
        zero, and a task with nothing to borrow has transfer gate 0."""
        routers, closed, own, transfer = self._batch_plan(sample_tasks, width, features.shape[-1], features.device)
        shape = features.shape
        tokens = (1,) * (features.dim() - 2)  # the per-sample tensors broadcast over the token dimensions
        closed, own = closed.view(shape[0], *tokens, width), own.view(shape[0], *tokens, width)
        transfer = transfer.view(shape[0], *tokens, 1)
        with torch.autocast(features.device.type, enabled=False):
            logits = torch.bmm(features.float().reshape(shape[0], -1, shape[-1]), routers)
        logits = logits.reshape(*shape[:-1], width) + closed
        top = logits.topk(min(self.top_k, width), dim=-1)
        chosen = top.values.softmax(dim=-1) * transfer
        return torch.zeros_like(logits).scatter(-1, top.indices, chosen) + own

    def _batch_plan(self, sample_tasks: torch.Tensor, width: int, fan_in: int, device: torch.device) -> tuple:
        """Per sample of a mixed batch: its router as [fan_in, width] (zero where its task may not read), its
        0/-inf borrow mask and own one-hot [width], and its transfer gate [1]."""
        key = (tuple(sample_tasks.tolist()), width, fan_in, device, tuple(self.own_counts()),
               tuple(r._version for r in self.routers), tuple(g._version for g in self.transfer_gates))
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        batch, counts = len(key[0]), self.own_counts()
        routers = torch.zeros(batch, fan_in, width, device=device)
        closed = torch.zeros(batch, width, device=device)
        own = torch.zeros(batch, width, device=device)
        transfer = torch.zeros(batch, 1, device=device)
        for row, task in enumerate(key[0]):
            if task < 0:  # no adapter: every gate stays 0
                continue
            start = sum(counts[:task])
            own[row, start: start + counts[task]] = 1.0
            closed[row, start:] = float("-inf")
            if task:  # task 0 borrows nothing: its transfer gate stays 0 (and its logits finite)
                router = self.routers[task].detach().float()
                routers[row, : router.shape[1], :start] = router.T
                transfer[row] = self.transfer_gates[task].detach().float()
            else:
                closed[row, :] = 0.0
        self._plan = (key, (routers, closed, own, transfer))
        return self._plan[1]
