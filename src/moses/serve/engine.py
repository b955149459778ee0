"""Generation for a batch of requests whose tasks may differ: one forward per step for all of them, each sample
through its own task's masks and router (MoSEsModel's per-sample task ids). A request names a task (TIL), the
base model (no adapter) or AUTO (the task is inferred from its prompt by the adapter's TaIL rule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from moses.data.collate import generation_batch
from moses.errors import TaskError
from moses.precision import autocast, frozen_weights_cast, resolve_precision
from moses.serve.prefill import bucketed_prefill, cache_argument, should_bucket
from moses.serve.ragged import RAGGED_SDPA

AUTO = "auto"
TokenCallback = Callable[[int, int], None]  # (request index in the batch, token id), called as tokens are made


class _StepStreamer(BaseStreamer):
    """Hands each generation step's new token of every row to `on_token` (generate's first put is the prompt)."""

    def __init__(self, rows: list[int], on_token: TokenCallback) -> None:
        self.rows, self.on_token, self.prompt_seen = rows, on_token, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            self.on_token(row, token)

    def end(self) -> None:
        pass


def stop_index(text: str, stops: list[str]) -> int:
    """Where the first stop string starts in `text` (-1: none occurs): the text is cut there."""
    return min((text.find(s) for s in stops if s and s in text), default=-1)


@dataclass
class GenerationRequest:
    prompt: str
    task: str | None = AUTO  # a task name, None for the base model, or AUTO
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens whatever the model says (vLLM's extension; for benchmarks)


@dataclass
class GenerationResult:
    text: str
    task: str | None  # the task that answered (AUTO resolved), None for the base model
    finish_reason: str  # "stop" (end of text or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class Engine:
    """A MoSEs model, its tokenizer and how to run it; `generate` answers a batch of requests."""

    def __init__(self, model, tokenizer, base_name: str, precision: str = "fp32", max_prompt_tokens: int = 1024,
                 source: str | None = None, bucket_prefill: bool = True, static_cache: bool = True,
                 ragged_decode: bool = True) -> None:
        self.model, self.tokenizer, self.base_name = model, tokenizer, base_name
        self.precision, self.max_prompt_tokens, self.source = precision, max_prompt_tokens, source
        self.bucket_prefill = bucket_prefill  # prompts of very different lengths: prefill them in length buckets
        self.static_cache = static_cache  # a batch decodes into a preallocated cache (False: transformers' dynamic)
        self.ragged_decode = ragged_decode
        self.model.eval()

    @property
    def ragged_decode(self) -> bool:
        """Whether a batch's decoding steps attend each group of similar prompt length over its own span of the
        cache (serve/ragged.py) rather than all rows over the longest prompt; only over SDPA attention."""
        return self._causal_lm.config._attn_implementation == RAGGED_SDPA

    @ragged_decode.setter
    def ragged_decode(self, on: bool) -> None:
        current = self._causal_lm.config._attn_implementation
        if on and current == "sdpa":
            self._causal_lm.set_attn_implementation(RAGGED_SDPA)
        elif not on and current == RAGGED_SDPA:
            self._causal_lm.set_attn_implementation("sdpa")

    @property
    def _causal_lm(self):
        return getattr(self.model, "model", self.model)  # a MoSEsModel's base, or a plain causal LM

    @classmethod
    def load(cls, source: str | Path, model_name: str | None = None, precision: str = "auto",
             device: str = "cpu", max_prompt_tokens: int = 1024) -> Engine:
        """From a run directory (its last checkpoint) or a MoSEs adapter directory."""
        from moses.adapter import MoSEsModel
        from moses.models import load_model
        from moses.runner.export import resolve_adapter

        adapter, model_name = resolve_adapter(Path(source), model_name)
        chosen, _ = resolve_precision(precision, torch.device(device).type)
        base, tokenizer = load_model(model_name, device=device)
        return cls(MoSEsModel.from_pretrained(base, adapter), tokenizer, model_name, chosen, max_prompt_tokens,
                   str(source))

    @property
    def tasks(self) -> list[str]:
        return self.model.tasks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_task(self, task: str | None) -> None:
        """A TaskError naming the known tasks when `task` is none of them (nor AUTO, nor the base model)."""
        if task not in (None, AUTO) and task not in self.tasks:
            raise TaskError(f"unknown task {task!r} (tasks: {', '.join(self.tasks)}; or {AUTO!r}, or the base "
                            f"model {self.base_name!r})")

    def task_indices(self, requests: list[GenerationRequest]) -> list[int]:
        """Each request's task index (-1: the base model); AUTO prompts go through TaIL together."""
        for request in requests:
            self.check_task(request.task)
        indices = [-1 if r.task is None else (self.tasks.index(r.task) if r.task != AUTO else -2) for r in requests]
        auto = [i for i, index in enumerate(indices) if index == -2]
        if auto:
            batch = self._batch([requests[i].prompt for i in auto])
            with torch.no_grad(), autocast(self.precision, self.device.type):
                inferred = self.model.infer_tasks(batch["input_ids"], batch["attention_mask"]).tolist()
            for i, index in zip(auto, inferred, strict=True):
                indices[i] = index
        return indices

    def _batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        batch = generation_batch(self.tokenizer, prompts, self.max_prompt_tokens)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest],
                 on_token: TokenCallback | None = None) -> list[GenerationResult]:
        """Answers in request order. Greedy requests share one batch whatever their tasks; sampled ones are
        batched by (temperature, top_p, seed), since one generate call samples with one setting. `on_token`
        sees every generated token as it is made (streaming), before the results are returned."""
        indices = self.task_indices(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            mode = ("greedy",) if request.temperature == 0 else (request.temperature, request.top_p, request.seed)
            key = (*mode, request.ignore_eos)
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for key, members in groups.items():
            for i, result in self._generate_group(key, members, requests, indices, on_token):
                results[i] = result
        return results  # type: ignore[return-value]

    def _generate_group(self, key: tuple, members: list[int], all_requests: list[GenerationRequest],
                        all_indices: list[int], on_token: TokenCallback | None) -> list[tuple[int, GenerationResult]]:
        """(request index, result) for the requests `members` of one sampling setting, in one generate call.
        The rows are sorted longest prompt first, so rows of similar length are neighbours (ragged decoding)."""
        batch = self._batch([all_requests[i].prompt for i in members])
        lengths = batch["attention_mask"].sum(dim=1)
        order = lengths.argsort(descending=True, stable=True).tolist()
        batch = {name: tensor[order] for name, tensor in batch.items()}
        members = [members[i] for i in order]
        requests, indices = [all_requests[i] for i in members], [all_indices[i] for i in members]
        streamer = _StepStreamer(members, on_token) if on_token is not None else None
        greedy = key[0] == "greedy"
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": requests[0].temperature, "top_p": requests[0].top_p}
        if requests[0].ignore_eos:
            sampling["min_new_tokens"] = max(r.max_tokens for r in requests)
        if not greedy and requests[0].seed is not None:
            torch.manual_seed(requests[0].seed)
        task_ids = torch.tensor(indices, device=self.device)
        max_new_tokens = max(r.max_tokens for r in requests)
        # A batch decodes into a preallocated (static) cache: a dynamic one copies its whole cache every step.
        # No auto-compilation (which transformers starts on a GPU with a static cache): a batch's shapes change.
        static = self.static_cache and len(requests) > 1
        cache_options = {"cache_implementation": "static"} if static else {}
        with autocast(self.precision, self.device.type), frozen_weights_cast(self.model, self.precision):
            if self.bucket_prefill and should_bucket(batch["attention_mask"]):
                cache = bucketed_prefill(self.model, batch["input_ids"], batch["attention_mask"], task_ids,
                                         max_new_tokens if static else None)
                if cache is not None:
                    cache_options = {cache_argument(): cache}
            out = self.model.generate(**batch, task_ids=task_ids, max_new_tokens=max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                                      disable_compile=True, **cache_options, **sampling)
        width = batch["input_ids"].shape[1]
        prompt_tokens = lengths[order].tolist()
        return [(member, self._result(request, out[row, width:].tolist(), index, prompt_tokens[row]))
                for row, (member, request, index) in enumerate(zip(members, requests, indices, strict=True))]

    def _result(self, request: GenerationRequest, ids: list[int], index: int, prompt_tokens: int) -> GenerationResult:
        eos = self.tokenizer.eos_token_id
        ids = ids[: request.max_tokens]
        finish = "length"
        if eos in ids and not request.ignore_eos:
            ids, finish = ids[: ids.index(eos)], "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = stop_index(text, request.stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return GenerationResult(text=text, task=None if index < 0 else self.tasks[index], finish_reason=finish,
                                prompt_tokens=int(prompt_tokens), completion_tokens=len(ids))
