"""Reading R2, "dedicated subexperts" (ownership="subexperts", the default): the math of `MoSEsLayer` that
only this reading has. Task t owns n = new_subexperts whole subexperts, t*n .. (t+1)*n - 1, and reads exactly
the subexperts 0 .. (t+1)n - 1 (the earlier tasks' and its own), so it computes that prefix of the pool and
no more. Its own subexperts have gate 1; the earlier ones get the task's top-k routing times its transfer
gate (0 at the start); a gradient hook on the pool keeps every row but its own from learning (E5). A mixed
batch of several tasks reads one prefix of the pool for all of its samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moses.adapter.gradient_init import aligned_rows
from moses.errors import TaskError


def check_free_subexperts(num_subexperts: int, new_subexperts: int, task: int, what: str) -> None:
    """R2: task index `task` needs subexperts up to (task + 1) * new_subexperts; a clear error when the pool
    has no room left."""
    if (task + 1) * new_subexperts > num_subexperts:
        raise TaskError(f"no free subexperts for {what}: num_subexperts={num_subexperts} holds "
                        f"{num_subexperts // new_subexperts} tasks of new_subexperts={new_subexperts}")


class DedicatedSubexperts:
    """Mixed into `MoSEsLayer`: uses its pool (lora_A [N, r, d_in], lora_B [N, d_out, r]), routers, transfer
    gates, context and caches."""

    def start_own_subexperts(self, task: int, source: int | None) -> None:
        """R2: task `task` starts its own subexperts as copies of task `source`'s own ones (a warm start, as
        sequential fine-tuning has, while both stay isolated: the copies are new, trainable entries and the
        originals stay frozen), or fresh when `source` is None: A as initialised, B = 0 (delta 0)."""
        n = self.new_subexperts
        own = slice(task * n, (task + 1) * n)
        with torch.no_grad():
            if self._fresh_own_A is None or self._fresh_own_A[0] != task:  # the slot's A as first drawn
                self._fresh_own_A = (task, self.lora_A[own].clone())
            if source is None:
                self.lora_A[own] = self._fresh_own_A[1]
                self.lora_B[own] = 0.0
            else:
                if not 0 <= source < task:
                    raise TaskError(f"task {task} can start from an earlier task's subexperts, not task {source}")
                self.lora_A[own] = self.lora_A[source * n:(source + 1) * n]
                self.lora_B[own] = self.lora_B[source * n:(source + 1) * n]

    def align_fresh_subexperts(self, task: int, weight_grad: torch.Tensor) -> None:
        """R2, fresh_init="gradient": the rows of task `task`'s fresh own A become the top right-singular
        vectors of the loss gradient of the base weight (`gradient_init.aligned_rows`); B stays 0, so the task
        still starts at delta 0. `weight_grad` is the base weight's, as [d_out, d_in] (`weight_gradients`)."""
        n, r = self.new_subexperts, self.rank
        own = slice(task * n, (task + 1) * n)
        rows = aligned_rows(weight_grad, self.lora_A[own].reshape(n * r, self.in_features))
        rows = rows.reshape(n, r, self.in_features)
        with torch.no_grad():
            self._fresh_own_A = (task, rows)
            self.lora_A[own] = rows
            self.lora_B[own] = 0.0

    def dedicated_masks(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R2: task `task` reads every subexpert owned by it or an earlier task (indices below
        (task + 1) * new_subexperts), each whole."""
        usable = torch.arange(self.num_subexperts, device=self.lora_A.device) < (task + 1) * self.new_subexperts
        return usable[:, None, None].expand_as(self.lora_A), usable[:, None, None].expand_as(self.lora_B)

    def readable_subexperts(self, task: int) -> int:
        return (task + 1) * self.new_subexperts

    def pool_weights(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R2: A and B of the subexperts task `task` reads, gradients only into the training task's own
        ones. Nothing is masked and the subexperts after them are not computed, so a task costs what it
        reads, not the whole pool."""
        width = self.readable_subexperts(task)
        a, b = self.lora_A[:width], self.lora_B[:width]
        if task != self.context.training:
            if task >= self.num_stored_masks:
                raise self.unknown_task(task)
            return a.detach(), b.detach()
        return a, b  # the earlier tasks' rows get no gradient: `own_rows_only` clears it (fewer ops than a mask)

    def own_rows_only(self, grad: torch.Tensor) -> torch.Tensor:
        """R2's gradient hook on the pool: only the training task's own subexperts receive gradient, so an
        ended task's subexperts stay bit-identical whatever optimizer is used (E5)."""
        task = self.context.training
        if task is None:
            return torch.zeros_like(grad)
        key = (task, "gradient", grad.device)
        if key not in self._gate_constants:
            own = self.gate_constants(task, torch.bool, grad.device)[1]
            self._gate_constants[key] = (F.pad(own, (0, self.num_subexperts - len(own)))[:, None, None],)
        return torch.where(self._gate_constants[key][0], grad, 0.0)

    def flat_pool(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R2 inference: the first `width` subexperts as (width*r, d_in) and (d_out, width*r), kept until the
        pool changes."""
        key = ("pool", width, self.lora_A._version, self.lora_B._version)
        cached = self._inference_cache.get(-width)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        flat = self.flatten(self.lora_A[:width].detach(), self.lora_B[:width].detach())
        self._inference_cache[-width] = (key, *flat)  # negative keys: pool prefixes, beside the tasks' entries
        return flat

    def dedicated_logits(self, features: torch.Tensor, task: int) -> torch.Tensor:
        """R2 router logits over the subexperts the task reads, from its readable subexpert features (or the
        hidden state). In fp32 even under autocast: on CPU a matmul this thin costs several times more in bf16
        than in fp32 (benchmarks/thin_matmul.py)."""
        width = self.readable_subexperts(task)
        router = self.routers[task]
        if self.routing == "task":
            return router[:width]
        if self.router_inputs:  # the features of the subexperts it reads (a wider prefix is cut)
            features, weight = features[..., : width * self.rank], router[:width, : width * self.rank]
        else:
            weight = router[:width]
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(features.float(), weight)

    def dedicated_gates(self, logits: torch.Tensor, task: int) -> torch.Tensor:
        """R2 gates [..., (task+1)*new_subexperts] over the subexperts the task reads: 1 on its own ones; on the
        earlier tasks', the softmax over the top-k router logits among them times the task's transfer gate
        (0 at the start: delta starts at 0). The own subexperts' logits are set to -inf so top-k runs over
        one tensor (with fewer old subexperts than k, the -inf ones get weight 0)."""
        logits = logits[..., : self.readable_subexperts(task)]
        closed, own = self.gate_constants(task, logits.dtype, logits.device)
        if task == 0:
            return own.expand(*logits.shape[:-1], -1)
        top = (logits + closed).topk(min(self.top_k, logits.shape[-1]), dim=-1)
        chosen = top.values.softmax(dim=-1) * self.transfer_gates[task].to(logits.dtype)
        return torch.zeros_like(logits).scatter(-1, top.indices, chosen) + own

    def gate_constants(self, task: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """R2, over the subexperts task `task` reads, built once per dtype and device: (0 on the ones it may
        borrow and -inf on its own, 1 on its own and 0 elsewhere); as booleans (borrowable, own)."""
        key = (task, dtype, device)
        if key not in self._gate_constants:
            index = torch.arange(self.readable_subexperts(task), device=device)
            own = index >= task * self.new_subexperts
            if dtype == torch.bool:
                self._gate_constants[key] = (~own, own)
            else:
                closed = torch.zeros(len(index), device=device).masked_fill(own, float("-inf"))
                self._gate_constants[key] = (closed.to(dtype), own.to(dtype))
        return self._gate_constants[key]

    def mixed_batch_pool_delta(self, x: torch.Tensor, sample_tasks: torch.Tensor) -> torch.Tensor:
        """R2: every task reads a prefix of the same pool, so a mixed batch is two matmuls over the widest
        prefix for all of its samples; only the gates (router, top-k) are computed per task, on that task's
        rows, and are 0 beyond the subexperts it reads. Equals `adapter_delta` per sample."""
        tasks = [t for t in sample_tasks.unique().tolist() if t >= 0]
        for task in tasks:
            if task >= self.num_stored_masks and task != self.context.training:
                raise self.unknown_task(task)
        if not tasks:
            return torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
        width = max(self.readable_subexperts(t) for t in tasks)
        a, b = self.flat_pool(width)
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
        """Per sample of a mixed batch: its router's first `width` rows as [fan_in, width] (zero where its task
        may not read), its 0/-inf borrow mask and own one-hot [width], and its transfer gate [1]."""
        key = (tuple(sample_tasks.tolist()), width, fan_in, device,
               tuple(r._version for r in self.routers), tuple(g._version for g in self.transfer_gates))
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        batch, n, r = len(key[0]), self.new_subexperts, self.rank
        routers = torch.zeros(batch, fan_in, width, device=device)
        closed = torch.zeros(batch, width, device=device)
        own = torch.zeros(batch, width, device=device)
        transfer = torch.zeros(batch, 1, device=device)
        for row, task in enumerate(key[0]):
            if task < 0:  # no adapter: every gate stays 0
                continue
            readable = self.readable_subexperts(task)
            router = self.routers[task].detach().float()
            block = router[:readable, : readable * r] if self.router_inputs else router[:readable]
            routers[row, : block.shape[1], :readable] = block.T
            own[row, task * n: readable] = 1.0
            if task:  # task 0 borrows nothing: its transfer gate stays 0 (and its logits finite)
                closed[row, task * n:] = float("-inf")
                transfer[row] = self.transfer_gates[task].detach().float()
        self._plan = (key, (routers, closed, own, transfer))
        return self._plan[1]
