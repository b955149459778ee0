"""Requests that arrive together become one batch: the first waiting request opens a window of
`window_seconds`; every request that arrives within it (up to `max_batch`) joins, whatever its task. The batch
runs in a worker thread, so the server keeps accepting requests meanwhile. More than `queue_limit` waiting
requests is an overload (the server answers 429).

The window must cover a client's round trip: a batch's clients send their next requests as its answers arrive,
while the requests that waited meanwhile already open the next window. At 10 ms, 16 concurrent clients settled
into alternating batches of 8 (mean batch 8.0); at 50 ms, into batches of 16, for 1.2x the throughput
(benchmarks/serve.py). Without continuous batching (joining a running batch), this is the lever."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moses.serve.engine import Engine, GenerationRequest, GenerationResult


class Overloaded(Exception):
    """The queue is full."""


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future
    queued_at: float
    tokens: asyncio.Queue | None = None  # streaming: each generated token id as it is made, then None


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, window_seconds: float = 0.05, queue_limit: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.engine = engine  # replaced by a reload; a running batch keeps the engine it started with
        self.max_batch, self.window_seconds, self.queue_limit = max_batch, window_seconds, queue_limit
        self.on_batch = on_batch
        # Every forward runs on this one thread: a new thread would start its own OpenMP team beside the last
        # thread's, whose workers still spin-wait for a while, and the two would share the cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moses-generate")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        return await self._enqueue(request, stream=False).future

    def submit_streaming(self, request: GenerationRequest) -> tuple[asyncio.Queue, asyncio.Future]:
        """(queue of the token ids as they are generated, ended by None; future of the whole result)."""
        pending = self._enqueue(request, stream=True)
        return pending.tokens, pending.future

    def _enqueue(self, request: GenerationRequest, stream: bool) -> _Pending:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self.waiting >= self.queue_limit:
            raise Overloaded(f"{self.waiting} requests are waiting (queue limit {self.queue_limit}); retry later")
        pending = _Pending(request, asyncio.get_running_loop().create_future(), time.perf_counter(),
                           asyncio.Queue() if stream else None)
        self._queue.put_nowait(pending)
        return pending

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_seconds
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # a client may have gone away
            if not live:
                continue
            engine = self.engine
            if self.on_batch is not None:
                self.on_batch(len(live))
            def on_token(row: int, token: int, live=live) -> None:  # from the generation thread
                if live[row].tokens is not None:
                    loop.call_soon_threadsafe(live[row].tokens.put_nowait, token)

            streams = any(p.tokens is not None for p in live)
            try:
                results = await loop.run_in_executor(self.executor, engine.generate, [p.request for p in live],
                                                     on_token if streams else None)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
                results = [err] * len(live)
            for pending, result in zip(live, results, strict=True):
                if not pending.future.done():
                    if isinstance(result, Exception):
                        pending.future.set_exception(result)
                    else:
                        pending.future.set_result(result)
                if pending.tokens is not None:  # after every token: call_soon_threadsafe keeps their order
                    pending.tokens.put_nowait(None)
