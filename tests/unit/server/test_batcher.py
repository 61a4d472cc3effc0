"""The batch queue on its own, with a stand-in model whose timing the tests control."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from kubemaas_server.batcher import BatchQueue
from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.metrics import ServerMetrics


class FakeModel:
    """Doubles its input; can be held mid-pass, and raises on negative rows."""

    def __init__(self) -> None:
        self.delay = 0.0  # seconds each pass takes
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, inputs: Sequence[Any], rows: int) -> list[Any]:
        self.batches.append(rows)
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.delay)
        (x,) = inputs
        if (x < 0).any():
            raise RuntimeError("negative row")
        return [x * 2]


def queue_for(model: FakeModel, **options: Any) -> BatchQueue:
    settings: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_ms": 1000.0}
    settings.update(options)
    queue = BatchQueue("m", model, metrics=ServerMetrics().for_model("m"), **settings)
    queue.start()
    return queue


def row(value: float, width: int = 2) -> np.ndarray:
    return np.full((1, width), value, dtype=np.float32)


async def submit(queue: BatchQueue, value: float, width: int = 2) -> np.ndarray:
    (out,) = await queue.submit([row(value, width)], 1, ((width,),))
    return out


async def wait_entered(model: FakeModel) -> None:
    assert await asyncio.to_thread(model.entered.wait, 10)
    model.entered.clear()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_lone_request_runs_at_once_even_with_a_long_queue_delay() -> None:
    async def scenario() -> float:
        queue = queue_for(FakeModel(), max_queue_delay_ms=5000.0)
        started = time.perf_counter()
        out = await submit(queue, 3.0)
        elapsed = time.perf_counter() - started
        np.testing.assert_array_equal(out, [[6.0, 6.0]])
        await queue.close()
        return elapsed

    assert run(scenario()) < 0.5  # far below the 5 s delay it could have waited


def test_requests_arriving_during_a_pass_form_the_next_batch_and_each_gets_its_row() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        queue = queue_for(model)
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        rest = [asyncio.create_task(submit(queue, float(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = [await first] + [await task for task in rest]
        await queue.close()
        return results

    results = run(scenario())
    assert model.batches == [1, 5]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, [[2.0 * i, 2.0 * i]])


def test_batches_never_exceed_max_batch_size() -> None:
    model = FakeModel()

    async def scenario() -> None:
        queue = queue_for(model, max_batch_size=4)
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        rest = [asyncio.create_task(submit(queue, float(i))) for i in range(10)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *rest)
        await queue.close()

    run(scenario())
    assert model.batches[0] == 1
    assert sorted(model.batches[1:], reverse=True) == [4, 4, 2]


def test_requests_with_different_shapes_are_never_mixed() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        queue = queue_for(model)
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        tasks = [
            asyncio.create_task(submit(queue, float(i), width)) for i, width in enumerate([2, 3, 2, 3, 2])
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = [await task for task in tasks]
        await first
        await queue.close()
        return results

    results = run(scenario())
    assert model.batches == [1, 3, 2]
    for i, (out, width) in enumerate(zip(results, [2, 3, 2, 3, 2], strict=True)):
        np.testing.assert_array_equal(out, np.full((1, width), 2.0 * i))


def test_a_failing_request_fails_alone_and_its_batch_mates_get_answers() -> None:
    model = FakeModel()

    async def scenario() -> list[Any]:
        queue = queue_for(model)
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 1.0))
        await wait_entered(model)
        tasks = [asyncio.create_task(submit(queue, value)) for value in (2.0, -1.0, 3.0)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await first
        await queue.close()
        return results

    ok_before, failed, ok_after = run(scenario())
    assert model.batches[:2] == [1, 3]  # ran together first, then one by one
    np.testing.assert_array_equal(ok_before, [[4.0, 4.0]])
    np.testing.assert_array_equal(ok_after, [[6.0, 6.0]])
    assert isinstance(failed, InferenceError)
    assert failed.kind == ErrorKind.INTERNAL
    assert "negative row" in failed.message


def test_under_load_a_free_model_holds_briefly_for_returning_callers() -> None:
    model = FakeModel()

    async def scenario() -> None:
        queue = queue_for(model, max_queue_delay_ms=300.0)
        model.delay = 0.4  # slow passes: holding up to half of one (200 ms) is allowed
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        batch = [asyncio.create_task(submit(queue, float(i))) for i in range(4)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *batch)  # a batch of 4 rows just finished
        returning = [asyncio.create_task(submit(queue, 1.0))]
        await asyncio.sleep(0.05)
        returning += [asyncio.create_task(submit(queue, 1.0)) for _ in range(3)]
        await asyncio.gather(*returning)
        await queue.close()

    run(scenario())
    assert model.batches == [1, 4, 4]  # the four callers came back into one batch


def test_the_hold_never_exceeds_max_queue_delay() -> None:
    model = FakeModel()

    async def scenario() -> float:
        queue = queue_for(model, max_queue_delay_ms=150.0)
        model.delay = 0.6  # half of a pass would allow a 300 ms hold; the 150 ms delay caps it
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        batch = [asyncio.create_task(submit(queue, float(i))) for i in range(4)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *batch)
        model.delay = 0.0
        started = time.perf_counter()
        await submit(queue, 1.0)  # only one of the four comes back
        elapsed = time.perf_counter() - started
        await queue.close()
        return elapsed

    elapsed = run(scenario())
    assert 0.12 <= elapsed < 1.0
    assert model.batches[-1] == 1


def test_a_closed_queue_refuses_new_requests() -> None:
    async def scenario() -> None:
        queue = queue_for(FakeModel())
        await queue.close()
        with pytest.raises(InferenceError) as refused:
            await submit(queue, 1.0)
        assert refused.value.kind == ErrorKind.UNAVAILABLE

    run(scenario())


def test_preferred_batch_sizes_cut_batches_to_the_largest_preferred_size_queued() -> None:
    model = FakeModel()

    async def scenario() -> None:
        queue = queue_for(model, preferred_batch_sizes=(2, 4))
        model.gate.clear()
        first = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        rest = [asyncio.create_task(submit(queue, float(i))) for i in range(7)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *rest)
        await queue.close()

    run(scenario())
    assert model.batches == [1, 4, 2, 1]
