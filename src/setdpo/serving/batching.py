"""A batching window in front of one batched function (litserve's shape), that does no work
for requests nobody awaits any more.

Requests wait in a bounded queue; one worker takes the first, keeps collecting for
``window_s`` seconds (only while requests are on their way: announced with `arriving`, not
yet submitted; a lone request does not wait, see benchmarks/RESULTS.md, "Serving") or until
``max_batch`` requests, then runs ``run_batch`` on all of them
in one thread (the model is used by one thread at a time) and answers each.

Every request has a deadline (its timeout) and is dropped, before it is scored or between the
chunks of a long one, once its deadline passes or its client goes (the route cancels it):
``run_batch(payloads, alive)`` asks ``alive(i)`` and answers None for a request it dropped.
Admission control: the worker measures the seconds per unit of cost (``cost(payload)``: the
candidates to score), and a request whose estimated wait (the cost queued and running ahead
of it, plus its own) exceeds its timeout raises `Overloaded` at once, as a full queue does
(the server answers 503 with ``Retry-After``), instead of a 504 once the time is spent.
`BatchStats` counts the requests scored, dropped and refused.
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
    """Refused at once: ``retry_after`` is the seconds until the server has likely caught up."""

    def __init__(self, retry_after: int, why: str = "the request queue is full") -> None:
        super().__init__(f"{why}; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # hashed by identity: a set holds the waiting ones
class _Job:
    payload: Any
    future: asyncio.Future
    deadline: float  # time.monotonic()
    cost: int

    def alive(self) -> bool:
        """Still awaited: not timed out, not cancelled (its client left), deadline ahead.
        Read from the scoring thread: a done flag and a clock, no mutation."""
        return not self.future.done() and time.monotonic() < self.deadline


@dataclass
class BatchStats:
    """Counters for `/health`, `/v1/model` and the benchmark: batches run, requests in them,
    busy seconds, the largest batch; requests scored, dropped (their client left or their
    deadline passed, before or while being scored) and refused (503)."""

    batches: int = 0
    requests: int = 0
    seconds: float = 0.0
    largest: int = 0
    scored: int = 0
    dropped: int = 0
    refused: int = 0


class Batcher:
    """``await batcher.submit(payload, timeout_s)`` -> ``run_batch([...payloads], alive)[i]``.

    ``run_batch(payloads, alive) -> results`` (same length and order; None for a request it
    dropped because ``alive(i)`` turned False) runs in a single worker thread. ``cost(payload)``
    is a request's work in the units admission control measures (default 1). Call `start`
    inside the event loop that will submit, and `stop` at shutdown.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any], Callable[[int], bool]], Sequence[Any]],
        max_batch: int,
        window_s: float,
        max_queue: int,
        cost: Callable[[Any], int] = lambda payload: 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and window_s >= 0")
        self.run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self.max_queue, self.cost = max_queue, cost
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        # Jobs queued and still awaited: the bound counts these, so a request that timed out
        # while queued does not hold a place until the worker reaches it.
        self._waiting: set[_Job] = set()
        self._running_cost = 0  # of the batch being scored
        self.running = 0  # requests in the batch being scored
        # Seconds and cost of the batches scored whole: the measured seconds per unit of cost.
        self._measured = [0.0, 0]
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

    def seconds_per_cost(self) -> float | None:
        """Measured seconds per unit of cost (None before a batch was scored whole)."""
        seconds, cost = self._measured
        return seconds / cost if cost else None

    def retry_after(self) -> int:
        """Seconds to drain the work ahead (a full queue) at the measured rate (at least 1)."""
        rate = self.seconds_per_cost()
        if rate is None:
            per_batch = self.stats.seconds / self.stats.batches if self.stats.batches else 1.0
            return max(1, math.ceil(per_batch * self.max_queue / self.max_batch))
        return max(1, math.ceil(rate * self._cost_ahead()))

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (and still awaited)."""
        return len(self._waiting)

    def _cost_ahead(self) -> int:
        return self._running_cost + sum(job.cost for job in self._waiting)

    def _refuse(self, why: str) -> Overloaded:
        self.stats.refused += 1
        return Overloaded(self.retry_after(), why)

    async def submit(self, payload: Any, timeout_s: float) -> Any:
        """The result of ``payload``; `Overloaded` at once when the queue is full or the
        request would not be scored within ``timeout_s``; `TimeoutError` after it. A cancelled
        call (the client left) drops the request."""
        assert self._queue is not None, "Batcher.start() was not called"
        if len(self._waiting) >= self.max_queue:
            raise self._refuse("the request queue is full")
        cost, rate = self.cost(payload), self.seconds_per_cost()
        if rate is not None and rate * (self._cost_ahead() + cost) > timeout_s:
            estimate = rate * (self._cost_ahead() + cost)
            raise self._refuse(
                f"the request would be scored in about {estimate:.1f} s, over the timeout of "
                f"{timeout_s:g} s"
            )
        future = asyncio.get_running_loop().create_future()
        job = _Job(payload, future, time.monotonic() + timeout_s, cost)
        self._waiting.add(job)
        job.future.add_done_callback(lambda _: self._waiting.discard(job))
        self._queue.put_nowait(job)
        # On timeout or cancellation wait_for cancels the future: the worker skips the job,
        # or stops scoring it between chunks.
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
        alive = [job for job in jobs if job.alive()]  # not timed out or abandoned while queued
        self.stats.dropped += len(jobs) - len(alive)
        for job in jobs:
            if not job.alive() and not job.future.done():
                job.future.set_exception(TimeoutError())  # its deadline passed in the queue
        return alive

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            start = time.perf_counter()
            self._running_cost, self.running = sum(job.cost for job in jobs), len(jobs)
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [job.payload for job in jobs], _alive(jobs)
                )
            except Exception as error:  # answered to each request, the worker keeps going
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self._running_cost = self.running = 0
                seconds = time.perf_counter() - start
                self.stats.batches += 1
                self.stats.requests += len(jobs)
                self.stats.largest = max(self.stats.largest, len(jobs))
                self.stats.seconds += seconds
            self._answer(jobs, results, seconds)

    def _answer(self, jobs: list[_Job], results: Sequence[Any], seconds: float) -> None:
        dropped = sum(result is None for result in results)
        self.stats.dropped += dropped
        self.stats.scored += len(jobs) - dropped
        if not dropped:  # a batch scored whole measures the rate
            self._measured[0] += seconds
            self._measured[1] += sum(job.cost for job in jobs)
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if result is None:  # dropped at its deadline, as the timeout fires
                job.future.set_exception(TimeoutError())
            else:
                job.future.set_result(result)


def _alive(jobs: list[_Job]) -> Callable[[int], bool]:
    """``alive(i)``: whether ``jobs[i]`` is still awaited (called from the scoring thread)."""
    return lambda i: jobs[i].alive()
