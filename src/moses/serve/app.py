"""The HTTP API, in the OpenAI format (as vLLM serves it): the request's `model` picks the task.

    POST /v1/completions, /v1/chat/completions   model = a task (TIL), "auto" (TaIL) or the base model's name
    GET  /v1/models                              the base model, "auto" and one entry per task (parent: base)
    POST /v1/adapters/reload                     load the adapter again (or {"path": ...}): new tasks, no restart
    GET  /health, /metrics                       liveness; Prometheus counters and histograms per task

Errors are OpenAI error objects: unknown model 404, bad request 400, queue full 429, never a traceback."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from moses.errors import MoSEsError, TaskError
from moses.serve.batcher import Batcher, Overloaded
from moses.serve.engine import AUTO, Engine, GenerationRequest, GenerationResult, stop_index


class Sampling(BaseModel):
    """What both endpoints share, with OpenAI's defaults (temperature 1 samples; 0 is greedy)."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False  # vLLM's extension: always generate max_tokens (benchmarks)


class CompletionRequest(Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=4096)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)


class ReloadRequest(BaseModel):
    path: str | None = None


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps may live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("moses_requests", "Requests answered, by task and status", ["task", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("moses_prompt_tokens", "Prompt tokens read", ["task"], registry=self.registry)
        self.tokens = Counter("moses_generated_tokens", "Tokens generated", ["task"], registry=self.registry)
        self.latency = Histogram("moses_request_latency_seconds", "Seconds from arrival to answer", ["task"],
                                 registry=self.registry)
        self.batch_size = Histogram("moses_batch_size", "Requests per generation batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)

    def answered(self, result: GenerationResult, seconds: float) -> None:
        task = result.task or "base"
        self.requests.labels(task=task, status="ok").inc()
        self.prompt_tokens.labels(task=task).inc(result.prompt_tokens)
        self.tokens.labels(task=task).inc(result.completion_tokens)
        self.latency.labels(task=task).observe(seconds)


def create_app(engine: Engine, max_batch: int = 16, window_seconds: float = 0.05, queue_limit: int = 64) -> FastAPI:
    metrics = Metrics()
    batcher = Batcher(engine, max_batch, window_seconds, queue_limit, on_batch=metrics.batch_size.observe)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="moses", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics
    created = int(time.time())

    def task_of(model: str) -> str | None:
        """The request's `model` as a task: a task name, AUTO, or None for the base model."""
        current = batcher.engine
        if model == current.base_name:
            return None
        if model != AUTO and model not in current.tasks:
            raise TaskError(f"The model `{model}` does not exist (tasks: {', '.join(current.tasks)}; or "
                            f"'{AUTO}', or the base model '{current.base_name}')")
        return model

    def model_name(result: GenerationResult) -> str:
        return result.task or batcher.engine.base_name

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return openai_error(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error")

    @app.exception_handler(TaskError)
    async def unknown_model(_: Request, err: TaskError) -> JSONResponse:
        return openai_error(404, str(err), "invalid_request_error", "model_not_found")

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, err: Overloaded) -> JSONResponse:
        metrics.requests.labels(task="-", status="overloaded").inc()
        return openai_error(429, str(err), "rate_limit_error", "queue_full")

    @app.exception_handler(MoSEsError)
    async def user_error(_: Request, err: MoSEsError) -> JSONResponse:
        return openai_error(400, str(err), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        return openai_error(500, f"{type(err).__name__}: {err}", "server_error")

    async def answer(requests: list[GenerationRequest]) -> list[tuple[GenerationResult, float]]:
        began = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        seconds = time.perf_counter() - began
        for result in results:
            metrics.answered(result, seconds)
        return [(result, seconds) for result in results]

    def stops(stop: str | list[str] | None) -> list[str]:
        return [stop] if isinstance(stop, str) else list(stop or [])

    async def streamed(requests: list[GenerationRequest], chunk, opening: bool = False) -> AsyncIterator[dict]:
        """Submit streaming requests now (a full queue is a 429 before the stream starts) and return the chunks
        as their tokens are generated: `chunk(index, model, text, finish_reason)`; with `opening`, first a chunk
        of text None (chat's role chunk). AUTO is resolved first, so every chunk names the answering task."""
        engine = batcher.engine
        indices = await asyncio.get_running_loop().run_in_executor(batcher.executor, engine.task_indices,
                                                                       requests)
        for request, index in zip(requests, indices, strict=True):
            request.task = None if index < 0 else engine.tasks[index]
        began = time.perf_counter()
        submitted = [batcher.submit_streaming(r) for r in requests]

        async def chunks() -> AsyncIterator[dict]:
            for i, (request, (tokens, future)) in enumerate(zip(requests, submitted, strict=True)):
                model = request.task or engine.base_name
                if opening:
                    yield chunk(i, model, None, None)
                async for item in stream_text(engine.tokenizer, request, tokens, future):
                    if isinstance(item, GenerationResult):
                        metrics.answered(item, time.perf_counter() - began)
                        yield chunk(i, model, "", item.finish_reason)
                    else:
                        yield chunk(i, model, item, None)

        return chunks()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        task = task_of(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        requests = [GenerationRequest(p, task, body.max_tokens, body.temperature, body.top_p, stops(body.stop),
                                      body.seed, body.ignore_eos) for p in prompts]
        ident = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return sse(await streamed(requests, lambda i, model, text, finish: {
                "id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}]}))
        answered = await answer(requests)
        usage = {"prompt_tokens": sum(r.prompt_tokens for r, _ in answered),
                 "completion_tokens": sum(r.completion_tokens for r, _ in answered)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": ident, "object": "text_completion", "created": created, "model": model_name(answered[0][0]),
                "choices": [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                            for i, (r, _) in enumerate(answered)], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        task = task_of(body.model)
        tokenizer = batcher.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise MoSEsError(f"the model {batcher.engine.base_name!r} has no chat template; use /v1/completions")
        prompt = tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False,
                                               add_generation_prompt=True)
        limit = body.max_completion_tokens or body.max_tokens or 16
        request = GenerationRequest(prompt, task, limit, body.temperature, body.top_p, stops(body.stop), body.seed,
                                    body.ignore_eos)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            def chunk(i: int, model: str, text: str | None, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": i, "delta": delta, "finish_reason": finish}]}

            return sse(await streamed([request], chunk, opening=True))
        ((result, _),) = await answer([request])
        return {"id": ident, "object": "chat.completion", "created": created, "model": model_name(result),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": result.prompt_tokens + result.completion_tokens}}

    @app.get("/v1/models")
    async def models():
        current = batcher.engine
        entry = {"object": "model", "created": created, "owned_by": "moses"}
        data = [{"id": current.base_name, **entry, "root": current.base_name, "parent": None},
                {"id": AUTO, **entry, "root": current.base_name, "parent": current.base_name}]
        data += [{"id": task, **entry, "root": current.base_name, "parent": current.base_name}
                 for task in current.tasks]
        return {"object": "list", "data": data}

    @app.post("/v1/adapters/reload")
    async def reload(body: ReloadRequest | None = None):
        current = batcher.engine
        source = (body.path if body and body.path else None) or current.source
        fresh = await asyncio.get_running_loop().run_in_executor(
            None, lambda: Engine.load(source, current.base_name, current.precision, str(current.device),
                                      current.max_prompt_tokens))
        before = set(current.tasks)
        batcher.engine = fresh  # batches already running finish on the old engine
        return {"source": str(source), "tasks": fresh.tasks, "added": [t for t in fresh.tasks if t not in before]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": len(batcher.engine.tasks), "waiting": batcher.waiting}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def stream_text(tokenizer, request: GenerationRequest, tokens: asyncio.Queue,
                      future: asyncio.Future) -> AsyncIterator[str | GenerationResult]:
    """The request's text as its tokens arrive, in pieces, then its GenerationResult. A piece is sent once it
    can no longer change: not ending inside a character, and not possibly the start of a stop string."""
    eos, ids, emitted, finished = tokenizer.eos_token_id, [], "", False
    hold = max((len(s) for s in request.stop if s), default=1) - 1
    while (token := await tokens.get()) is not None:
        if finished:
            continue
        if (token == eos and not request.ignore_eos) or len(ids) >= request.max_tokens:
            finished = True
            continue
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue
        cut = stop_index(text, request.stop)
        if cut >= 0:
            text, finished = text[:cut], True
        ready = text if finished else text[: max(len(emitted), len(text) - hold)]
        if ready.startswith(emitted) and len(ready) > len(emitted):
            yield ready[len(emitted):]
            emitted = ready
    result = await future
    if result.text.startswith(emitted) and len(result.text) > len(emitted):
        yield result.text[len(emitted):]
    yield result


def sse(events: AsyncIterator[dict[str, Any]] | list[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: `data: {chunk}` for each chunk, then `data: [DONE]`."""

    async def stream():
        try:
            if isinstance(events, list):
                for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
            else:
                async for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
        except Exception as err:  # noqa: BLE001 - the status line is sent: the error goes into the stream
            error = {"message": str(err), "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")
