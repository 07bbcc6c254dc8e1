"""Sharded evaluation: one `setdpo evaluate` launched on N ranks scores 1/N of the contexts each.

``torchrun --nproc_per_node N -m setdpo evaluate ...`` (or ``accelerate launch --multi_gpu
--num_processes N``, which sets the same ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``
environment) starts N copies of the command. `launched` joins them in a process group
(env://); `Shard.current` tells a process its rank. Each rank takes a contiguous run of whole batches of contexts (`Shard.span`), so
every forward pass holds the contexts, and the padding, it holds in one process: the scores
come out bit-identical. The ranks' per-context results are gathered on every rank in context
order, and the summary (metrics, bootstrap) is computed from all of them as one process does.

Only Python objects cross ranks (the per-context results), so the group is gloo, on CPU and
on GPUs alike: no GPU memory and no NCCL setup for what is a gather of a few megabytes; the
model sits on the rank's own GPU (``cuda:<LOCAL_RANK>``). A rank whose work raises reports
it in band: every rank raises the error, naming the rank, at the next `Shard.together`
rather than waiting for the failed one; a rank that dies outright is ended by the launcher,
and the group's timeout bounds any other wait.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from setdpo.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """A process's place among the ranks evaluating together (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> Shard:
        """This process's shard in the initialised process group, else rank 0 of 1."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, n: int, unit: int = 1) -> range:
        """This rank's contiguous share of ``n`` items, cut only between blocks of ``unit``
        items (a forward batch), the blocks spread as evenly as they divide."""
        blocks = -(-n // unit)
        lo, hi = self.rank * blocks // self.world, (self.rank + 1) * blocks // self.world
        return range(min(lo * unit, n), min(hi * unit, n))

    def device(self, requested: str) -> str:
        """The device for this rank's model: ``auto`` / ``cuda`` become the local rank's GPU
        (round-robin when ranks outnumber GPUs); one process keeps ``requested``."""
        if self.world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def together(self, work: Callable[[], T] | None) -> T | None:
        """Run ``work`` here (None: nothing to do on this rank), then raise on every rank if
        it raised on any: the failed rank raises its own error, the others an `InputError`
        (a bad input on that rank) or `RuntimeError` naming it."""
        result, error = None, None
        try:
            if work is not None:
                result = work()
        except Exception as err:  # reported to the other ranks, then raised here
            error = err
        report = None if error is None else (isinstance(error, InputError), str(error))
        reports = self.gather(report)
        if error is not None:
            raise error
        for rank, failed in enumerate(reports):
            if failed is not None:
                bad_input, message = failed
                kind = InputError if bad_input else RuntimeError
                raise kind(f"rank {rank} of {self.world} failed: {message}")
        return result

    def main_first(self, work: Callable[[], T]) -> T:
        """``work`` on rank 0, then on the others: a cache it fills (a converted model, a
        trained SASRec) is filled once, not raced for."""
        first = self.together(work if self.is_main else None)
        later = self.together(None if self.is_main else work)
        return first if self.is_main else later  # type: ignore[return-value]


@contextmanager
def launched(timeout_s: float) -> Iterator[Shard]:
    """This process's `Shard` under a launcher (``WORLD_SIZE`` > 1 in the environment): the
    gloo group joined from env:// with ``timeout_s`` on every wait, and left on exit. Without
    a launcher, or with a group already initialised (by the caller), nothing is joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield Shard.current()
        return
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield Shard.current()
    finally:
        dist.destroy_process_group()
