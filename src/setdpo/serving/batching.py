"""A batching window in front of one batched function (litserve's shape), with admission
control at a request's arrival, that does no work for requests nobody awaits any more.

A request is admitted (`Batcher.admit`) as it arrives, before any work is done for it: the
worker's measured seconds per unit of cost (the request's candidates) times the cost admitted
ahead of it (being prepared, queued or scored) plus its own is its estimated wait, and a
request whose estimate exceeds `ADMITTED_SHARE` of its timeout, or that finds ``max_queue``
requests ahead, raises `Overloaded` at once (the server answers 503 with ``Retry-After``) instead of a 504 once the
time is spent. Refusing only after the request was tokenized, or behind the other requests'
tokenizing, made a refusal at 32 clients take 3.2 s; without a measured rate a cold server
admitted all 32 and answered 31 of them 504 (benchmarks/RESULTS.md, "Serving SmolLM2 at the
default settings"): `Batcher.calibrate` seeds the rate at start-up, and every batch scored
whole updates it, the recent ones weighing most.

An admitted request is prepared (tokenized), then submitted to a queue; one worker takes the
first, keeps collecting for ``window_s`` seconds (only while admitted requests are still being
prepared; a lone request does not wait, see benchmarks/RESULTS.md, "Serving") or until
``max_batch`` requests, then runs ``run_batch`` on all of them in one thread (the model is used
by one thread at a time) and answers each.

Every request has a deadline (its timeout, from its admission) and is dropped, before it is
scored or between the chunks of a long one, once its deadline passes or its client goes (the
route cancels it): ``run_batch(payloads, alive)`` asks ``alive(i)`` and answers None for a
request it dropped. `BatchStats` counts the requests scored, dropped and refused.
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

# A request is admitted only if its estimated wait is within this share of its timeout: on the
# shared 2-core machine one SmolLM2 context (20 candidates) took 2.6 s, then 4.9 s minutes
# later (load average 2, then 4.6), and admitting up to the whole timeout answered 6 of 8
# requests 504 (scored after their clients had gone).
ADMITTED_SHARE = 0.5


class Overloaded(Exception):
    """Refused at once: ``retry_after`` is the seconds until the server has likely caught up."""

    def __init__(self, retry_after: int, why: str = "the request queue is full") -> None:
        super().__init__(f"{why}; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # hashed by identity: a set holds the waiting ones
class Admitted:
    """A request admitted by `Batcher.admit`: its future, deadline (``time.monotonic()``) and
    cost; its payload once submitted."""

    future: asyncio.Future
    deadline: float
    cost: int
    payload: Any = None
    submitted: bool = False

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
    """Admit, prepare, submit: ``with batcher.admit(cost, timeout_s) as request:``, then
    ``await batcher.submit(request, payload)`` -> ``run_batch([...payloads], alive)[i]``.

    ``run_batch(payloads, alive) -> results`` (same length and order; None for a request it
    dropped because ``alive(i)`` turned False) runs in a single worker thread. A request's
    cost is its work in the units admission control measures. Call `start` inside the event
    loop that will submit, then `calibrate`, and `stop` at shutdown.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any], Callable[[int], bool]], Sequence[Any]],
        max_batch: int,
        window_s: float,
        max_queue: int,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and window_s >= 0")
        self.run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[Admitted] | None = None
        # Requests admitted and still awaited, not yet taken by the worker (being prepared or
        # queued): the bound and the cost ahead count these, so a request that timed out while
        # queued does not hold a place until the worker reaches it.
        self._waiting: set[Admitted] = set()
        self._preparing = 0  # admitted, not yet submitted: a batch being collected waits
        self._running_cost = 0  # of the batch being scored
        self.running = 0  # requests in the batch being scored
        # Seconds and cost of the batches scored whole, older ones weighing less (`_measure`):
        # the measured seconds per unit of cost.
        self._measured = [0.0, 0.0]
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="setdpo-scoring")
        self._task = asyncio.create_task(self._loop())

    async def calibrate(self, payload: Any, cost: int) -> None:
        """Seed the measured rate before any request with the time of ``payload`` (of
        ``cost``), run in the worker thread (which also warms the model). Not counted in
        `stats`: no client asked for it."""
        start = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.run_batch, [payload], lambda i: True
        )
        self._measure(time.perf_counter() - start, cost)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def seconds_per_cost(self) -> float | None:
        """Measured seconds per unit of cost (None before `calibrate` or a batch scored whole)."""
        seconds, cost = self._measured
        return seconds / cost if cost else None

    def _measure(self, seconds: float, cost: int) -> None:
        """Add a timing to the rate, halving the weight of those before it: the rate follows
        the load of a shared machine instead of its average since the start."""
        self._measured = [self._measured[0] / 2 + seconds, self._measured[1] / 2 + cost]

    def retry_after(self) -> int:
        """Seconds to drain the work ahead (a full queue) at the measured rate (at least 1)."""
        rate = self.seconds_per_cost()
        if rate is None:
            per_batch = self.stats.seconds / self.stats.batches if self.stats.batches else 1.0
            return max(1, math.ceil(per_batch * self.max_queue / self.max_batch))
        return max(1, math.ceil(rate * self._cost_ahead()))

    @property
    def queued(self) -> int:
        """Requests admitted and waiting for the worker (being prepared or queued)."""
        return len(self._waiting)

    def _cost_ahead(self) -> int:
        return self._running_cost + sum(request.cost for request in self._waiting)

    def _refuse(self, why: str) -> Overloaded:
        self.stats.refused += 1
        return Overloaded(self.retry_after(), why)

    @contextmanager
    def admit(self, cost: int, timeout_s: float) -> Iterator[Admitted]:
        """Admit a request of ``cost`` as it arrives, before any work on it: `Overloaded` at
        once when ``max_queue`` requests wait or it would not be scored within
        `ADMITTED_SHARE` of ``timeout_s`` (its deadline, from now). Inside the block the request is prepared and submitted;
        until then its cost counts ahead of later requests and a batch being collected waits
        for it. Leaving the block gives up a request not answered (never submitted, say)."""
        assert self._queue is not None, "Batcher.start() was not called"
        if len(self._waiting) >= self.max_queue:
            raise self._refuse("the request queue is full")
        rate = self.seconds_per_cost()
        estimate = None if rate is None else rate * (self._cost_ahead() + cost)
        if estimate is not None and estimate > ADMITTED_SHARE * timeout_s:
            raise self._refuse(
                f"the request would be scored in about {estimate:.1f} s, over "
                f"{ADMITTED_SHARE:.0%} of the timeout of {timeout_s:g} s"
            )
        future = asyncio.get_running_loop().create_future()
        request = Admitted(future, time.monotonic() + timeout_s, cost)
        self._waiting.add(request)
        future.add_done_callback(lambda _: self._waiting.discard(request))
        self._preparing += 1
        try:
            yield request
        finally:
            if not request.submitted:
                self._preparing -= 1
            future.cancel()  # a no-op once answered; else the worker skips it

    async def submit(self, request: Admitted, payload: Any) -> Any:
        """The result of ``payload`` for ``request`` (inside its `admit` block); `TimeoutError`
        at its deadline. A cancelled call (the client left) drops the request."""
        assert self._queue is not None and not request.submitted
        request.payload, request.submitted = payload, True
        self._preparing -= 1
        self._queue.put_nowait(request)
        # On timeout or cancellation wait_for cancels the future: the worker skips the
        # request, or stops scoring it between chunks.
        return await asyncio.wait_for(request.future, request.deadline - time.monotonic())

    def _take(self, job: Admitted) -> Admitted:
        self._waiting.discard(job)  # taken by the worker: no longer in the queue
        return job

    async def _collect(self) -> list[Admitted]:
        assert self._queue is not None
        jobs = [self._take(await self._queue.get())]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._take(self._queue.get_nowait()))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._preparing:
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

    def _answer(self, jobs: list[Admitted], results: Sequence[Any], seconds: float) -> None:
        dropped = sum(result is None for result in results)
        self.stats.dropped += dropped
        self.stats.scored += len(jobs) - dropped
        if not dropped:  # a batch scored whole measures the rate
            self._measure(seconds, sum(job.cost for job in jobs))
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if result is None:  # dropped at its deadline, as the timeout fires
                job.future.set_exception(TimeoutError())
            else:
                job.future.set_result(result)


def _alive(jobs: list[Admitted]) -> Callable[[int], bool]:
    """``alive(i)``: whether ``jobs[i]`` is still awaited (called from the scoring thread)."""
    return lambda i: jobs[i].alive()
