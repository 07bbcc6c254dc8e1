"""A batching window in front of one batched function (litserve's shape).

Requests wait in a bounded queue; one worker takes the first, keeps collecting for
``window_s`` seconds (only while requests are on their way: announced with `arriving`, not
yet submitted; a lone request does not wait, see benchmarks/RESULTS.md, "Serving") or until
``max_batch`` requests, then runs ``run_batch`` on all of them
in one thread (the model is used by one thread at a time) and answers each. A full queue
raises `Overloaded` at once (the server answers 503 with ``Retry-After``); a request that waits
longer than its timeout raises `TimeoutError`, gives its place in the queue back at once and is
dropped from the batch it would join.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """The queue is full; ``retry_after`` is the seconds until it has likely drained."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # hashed by identity: a set holds the waiting ones
class _Job:
    payload: Any
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for `/v1/model` and the benchmark: batches run, requests in them, busy seconds."""

    batches: int = 0
    requests: int = 0
    seconds: float = 0.0
    largest: int = 0


class Batcher:
    """``await batcher.submit(payload, timeout_s)`` -> ``run_batch([...payloads])[i]``.

    ``run_batch(payloads) -> results`` (same length and order) runs in a single worker thread.
    Call `start` inside the event loop that will submit, and `stop` at shutdown.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        max_batch: int,
        window_s: float,
        max_queue: int,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and window_s >= 0")
        self.run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        # Jobs queued and still awaited: the bound counts these, so a request that timed out
        # while queued does not hold a place until the worker reaches it.
        self._waiting: set[_Job] = set()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._arriving = 0

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that will be submitted when the block ends (while it is being
        tokenized): a batch being collected waits for it, up to the window."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="setdpo-scoring")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds to drain a full queue at the mean batch time seen so far (at least 1)."""
        per_batch = self.stats.seconds / self.stats.batches if self.stats.batches else 1.0
        return max(1, math.ceil(per_batch * self.max_queue / self.max_batch))

    async def submit(self, payload: Any, timeout_s: float) -> Any:
        assert self._queue is not None, "Batcher.start() was not called"
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(self.retry_after())
        job = _Job(payload, asyncio.get_running_loop().create_future())
        self._waiting.add(job)
        job.future.add_done_callback(lambda _: self._waiting.discard(job))
        self._queue.put_nowait(job)
        # On timeout wait_for cancels the future: the worker skips or ignores the job.
        return await asyncio.wait_for(job.future, timeout_s)

    def _take(self, job: _Job) -> _Job:
        self._waiting.discard(job)  # taken by the worker: no longer in the queue
        return job

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [self._take(await self._queue.get())]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._take(self._queue.get_nowait()))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._arriving:
                break
            try:
                jobs.append(self._take(await asyncio.wait_for(self._queue.get(), remaining)))
            except TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]  # timed out while queued

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [job.payload for job in jobs]
                )
            except Exception as error:  # answered to each request, the worker keeps going
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self.stats.batches += 1
                self.stats.requests += len(jobs)
                self.stats.largest = max(self.stats.largest, len(jobs))
                self.stats.seconds += time.perf_counter() - start
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
