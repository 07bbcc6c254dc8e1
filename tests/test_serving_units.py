"""The serving pieces without a model or a server: the batching window, the bounded queue and
the timeout of `Batcher`; error field names; `ServeConfig` checks; the exposure warning."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from setdpo.errors import InputError
from setdpo.serving.app import _field, exposure_warning
from setdpo.serving.batching import Batcher, Overloaded
from setdpo.serving.service import API_KEY_ENV, ServeConfig


class Doubler:
    """A batch function that records the batches it was given, optionally slowly."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.threads: set[str] = set()

    def __call__(self, payloads: list[int], alive=None) -> list[int]:
        self.batches.append(list(payloads))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return [2 * p for p in payloads]


def _run(coroutine):
    return asyncio.run(coroutine)


async def _submit(batcher: Batcher, payload: int, timeout_s: float, cost: int = 1) -> int:
    """Admit a request and submit its payload at once (the route tokenizes in between)."""
    with batcher.admit(cost, timeout_s) as request:
        return await batcher.submit(request, payload)


def test_requests_within_the_window_share_one_batch_in_order() -> None:
    work = Doubler()

    async def main():
        batcher = Batcher(work, max_batch=8, window_s=0.2, max_queue=16)
        await batcher.start()
        results = await asyncio.gather(*(_submit(batcher, i, 5) for i in range(5)))
        await batcher.stop()
        return results, batcher.stats

    results, stats = _run(main())
    assert results == [0, 2, 4, 6, 8]
    assert work.batches == [[0, 1, 2, 3, 4]]
    assert (stats.batches, stats.requests, stats.largest) == (1, 5, 5)
    assert len(work.threads) == 1 and next(iter(work.threads)).startswith("setdpo-scoring")


def test_the_window_waits_only_while_requests_are_announced() -> None:
    work = Doubler()

    async def late(batcher: Batcher, payload: int, announce: bool) -> int:
        if announce:
            with batcher.admit(1, 5) as request:  # admitted, then tokenized for 0.1 s
                await asyncio.sleep(0.1)
                return await batcher.submit(request, payload)
        await asyncio.sleep(0.1)  # not arrived yet
        return await _submit(batcher, payload, 5)

    async def main():
        batcher = Batcher(work, max_batch=8, window_s=0.5, max_queue=16)
        await batcher.start()
        start = time.perf_counter()
        await _submit(batcher, 1, 5)  # alone: no wait for the window
        lone = time.perf_counter() - start
        await asyncio.gather(_submit(batcher, 2, 5), late(batcher, 3, announce=True))
        await asyncio.gather(_submit(batcher, 4, 5), late(batcher, 5, announce=False))
        await batcher.stop()
        return lone

    assert _run(main()) < 0.25
    assert work.batches == [[1], [2, 3], [4], [5]]


def test_max_batch_splits_and_max_batch_1_scores_one_at_a_time() -> None:
    for max_batch, expected in ((3, [[0, 1, 2], [3, 4, 5], [6]]), (1, [[i] for i in range(7)])):
        work = Doubler()

        async def main(max_batch=max_batch, work=work):
            batcher = Batcher(work, max_batch=max_batch, window_s=0.2, max_queue=16)
            await batcher.start()
            results = await asyncio.gather(*(_submit(batcher, i, 5) for i in range(7)))
            await batcher.stop()
            return results

        assert _run(main()) == [2 * i for i in range(7)]
        assert work.batches == expected


def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    work = Doubler(seconds=0.3)

    async def main():
        batcher = Batcher(work, max_batch=1, window_s=0.0, max_queue=2)
        await batcher.start()
        first = asyncio.create_task(_submit(batcher, 0, 5))
        await asyncio.sleep(0.1)  # the worker took it: the queue is empty again
        queued = [asyncio.create_task(_submit(batcher, i, 5)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await _submit(batcher, 3, 5)
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused.value, results

    refused, results = _run(main())
    assert refused.retry_after >= 1 and "queue is full" in str(refused)
    assert results == [0, 2, 4]


def test_a_request_past_its_timeout_raises_and_is_not_scored() -> None:
    work = Doubler(seconds=0.3)

    async def main():
        batcher = Batcher(work, max_batch=1, window_s=0.0, max_queue=4)
        await batcher.start()
        busy = asyncio.create_task(_submit(batcher, 0, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await _submit(batcher, 1, 0.1)  # waits behind the 0.3 s batch
        result = await busy
        await asyncio.sleep(0.1)
        await batcher.stop()
        return result

    assert _run(main()) == 0
    assert work.batches == [[0]]  # the timed-out request was dropped, never scored


def test_a_request_that_timed_out_in_the_queue_gives_its_place_back() -> None:
    """A one-place queue behind a slow batch: once the queued request times out, the next one
    is queued (not refused), although the worker has not reached the dead one yet."""
    work = Doubler(seconds=0.5)

    async def main():
        batcher = Batcher(work, max_batch=1, window_s=0.0, max_queue=1)
        await batcher.start()
        busy = asyncio.create_task(_submit(batcher, 0, 5))
        await asyncio.sleep(0.05)  # the worker is scoring 0 for 0.5 s
        with pytest.raises(TimeoutError):
            await _submit(batcher, 1, 0.1)
        with pytest.raises(Overloaded):  # the place is taken while 2 waits
            await asyncio.gather(_submit(batcher, 2, 5), _submit(batcher, 3, 5))
        await asyncio.sleep(1.5)
        await busy
        await batcher.stop()

    _run(main())
    assert work.batches == [[0], [2]]  # 1 timed out, 3 was refused


def test_an_error_in_the_batch_reaches_its_requests_and_the_worker_goes_on() -> None:
    def flaky(payloads: list[int], alive) -> list[int]:
        if 13 in payloads:
            raise RuntimeError("bad batch")
        return payloads

    async def main():
        batcher = Batcher(flaky, max_batch=1, window_s=0.0, max_queue=4)
        await batcher.start()
        with pytest.raises(RuntimeError, match="bad batch"):
            await _submit(batcher, 13, 5)
        result = await _submit(batcher, 7, 5)
        await batcher.stop()
        return result

    assert _run(main()) == 7


def test_a_request_whose_client_left_is_dropped_between_chunks_and_counted() -> None:
    """A long request scored in 20 chunks of 0.05 s stops once its caller is cancelled (the
    client left); a queued one whose caller left is never scored."""
    chunks: list[int] = []

    def chunked(payloads: list[int], alive) -> list[int | None]:
        out: list[int | None] = []
        for i, payload in enumerate(payloads):
            for _ in range(payload):
                if not alive(i):
                    out.append(None)
                    break
                chunks.append(i)
                time.sleep(0.05)
            else:
                out.append(payload)
        return out

    async def main():
        batcher = Batcher(chunked, max_batch=1, window_s=0.0, max_queue=4)
        await batcher.start()
        long = asyncio.create_task(_submit(batcher, 20, 30))
        queued = asyncio.create_task(_submit(batcher, 3, 30))
        await asyncio.sleep(0.2)
        long.cancel()  # what the route does when the client disconnects
        queued.cancel()
        await asyncio.sleep(0.3)
        assert await _submit(batcher, 1, 30) == 1
        await batcher.stop()
        return batcher.stats

    stats = _run(main())
    assert len(chunks) < 10  # of the long request's 20, then the last request's one
    assert (stats.scored, stats.dropped, stats.refused) == (1, 2, 0)


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once() -> None:
    """From start-up on (`calibrate`: 0.2 s per unit of cost, before any request), a request
    whose estimated scoring time is over half its timeout gets Overloaded at once, with the
    wait as Retry-After, and is never scored; the warm-up is no request in the counters."""
    work = Doubler(seconds=0.2)

    async def main():
        batcher = Batcher(work, max_batch=1, window_s=0.0, max_queue=8)
        await batcher.start()
        await batcher.calibrate(1, cost=1)  # what the server does before it answers
        with pytest.raises(Overloaded) as refused:
            await _submit(batcher, 10, 1.0, cost=10)  # about 2 s of work, 1 s allowed
        assert await _submit(batcher, 2, 5, cost=2) == 4
        await batcher.stop()
        return refused.value, batcher.stats

    refused, stats = _run(main())
    assert "over 50% of the timeout of 1 s" in str(refused) and refused.retry_after >= 1
    assert (stats.batches, stats.scored, stats.dropped, stats.refused) == (1, 1, 0, 1)
    assert work.batches == [[1], [2]]  # the warm-up, then the request admitted


def test_a_burst_is_admitted_at_arrival_before_any_request_is_prepared() -> None:
    """Issue 29's cold burst: five requests arrive at once, each 3 units (about 0.6 s at the
    seeded 0.2 s per unit) with a 2 s timeout (1 s admitted). The first one's cost counts
    ahead while it is still being prepared (tokenized), so the other four are refused as they
    arrive: never prepared, never scored, no 504. Admitting after the preparing, each would have found an
    empty queue (or none measured yet, without `calibrate`)."""
    work = Doubler(seconds=0.2)
    prepared: list[int] = []

    async def request(batcher: Batcher, payload: int) -> int:
        with batcher.admit(3, 2.0) as admitted:
            prepared.append(payload)
            await asyncio.sleep(0.05)  # tokenizing
            return await batcher.submit(admitted, payload)

    async def main():
        batcher = Batcher(work, max_batch=8, window_s=0.0, max_queue=8)
        await batcher.start()
        await batcher.calibrate(0, cost=1)
        answers = await asyncio.gather(
            *(request(batcher, i) for i in range(1, 6)), return_exceptions=True
        )
        await batcher.stop()
        return answers, batcher.stats

    answers, stats = _run(main())
    assert answers[0] == 2 and all(isinstance(a, Overloaded) for a in answers[1:]), answers
    assert prepared == [1] and work.batches == [[0], [1]]
    assert (stats.scored, stats.dropped, stats.refused) == (1, 0, 4)


@pytest.mark.parametrize(
    "loc,kind,expected",
    [
        (("body", "history", 2, "ItemId", "item_id"), "missing", "history[2].item_id"),
        (("body", "candidates", 0, "str"), "string_type", "candidates[0]"),
        (("body", "top"), "int_parsing", "top"),
        (("body", "colour"), "extra_forbidden", "colour"),
        (("body",), "model_attributes_type", "body"),
    ],
)
def test_validation_locations_become_field_names(loc, kind, expected) -> None:
    assert _field(loc, kind) == expected


def test_serve_config_checks_and_reads_the_key_from_the_environment(monkeypatch) -> None:
    with pytest.raises(InputError, match="needs a model"):
        ServeConfig()
    with pytest.raises(InputError, match="max_batch must be >= 1"):
        ServeConfig(model="run", max_batch=0)
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeConfig(model="run").api_key == "from-env"
    assert ServeConfig(model="run", api_key="given").api_key == "given"


def test_a_non_local_address_without_a_key_is_warned_about(monkeypatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert exposure_warning(ServeConfig(model="run")) is None  # 127.0.0.1
    assert exposure_warning(ServeConfig(model="run", host="0.0.0.0", api_key="k")) is None
    warning = exposure_warning(ServeConfig(model="run", host="0.0.0.0"))
    assert "0.0.0.0 without an API key" in warning and API_KEY_ENV in warning
