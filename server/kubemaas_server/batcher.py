"""Dynamic batching: one `BatchQueue` per model, on the server's event loop.

Requests wait in a FIFO. A single worker coroutine per model takes a batch off it, runs the
forward pass in the model's own thread (so the event loop keeps accepting requests and the next
batch fills while this one computes), splits the outputs back per caller and resolves each
caller's future.

When to start a batch is the whole policy:

* An idle model never waits: a request that finds the worker free and no recent traffic runs at
  once, alone. That is what a single client sees every time.
* Under load the worker expects as many rows as were active around the previous batch (its own
  rows plus those that queued while it ran), because closed-loop callers come back: the
  clients of the batch that just finished send their next request within a round trip. A free
  worker holds the queue back until that many rows are there (never more than
  `max_batch_size`), but no longer than `max_queue_delay_ms`, and no longer than half the
  previous forward pass took. For a cheap, overhead-bound model that is a fraction of a
  millisecond and batches simply form from what queued during the previous pass; for a
  compute-bound model it lets the callers of the last batch return, so batches stay full. The
  hold is counted from when the worker became free or the request arrived, whichever is later:
  time spent queued behind a running forward pass is queueing, not batching delay.
  Without the hold, callers split into groups that alternate into partial batches; measured on
  the wide benchmark MLP that costs a fifth of the throughput.
* Requests whose non-batch shapes differ are never mixed: a batch takes the oldest request's
  shape and the queued requests with the same shape; others wait for a later batch.
* If a batched forward pass raises, every request of that batch is run again alone, so one bad
  request fails by itself and the others still get their answers.

Past saturation the queue sheds instead of growing, so the requests it does admit keep a
bounded wait:

* Admission: a request that finds `max_queue_size` requests waiting (the batch being computed
  does not count) is refused at once with `ErrorKind.QUEUE_FULL`. The error carries
  `retry_after_s`: the time the queue needs to drain what it holds, at the drain rate of the
  recent passes (a smoothed average of seconds per request served, finish to finish, so the
  event loop's own overhead is in it).
* Queue timeout: with `queue_timeout_ms` > 0, a request that waited longer than that when the
  worker reaches it is answered `ErrorKind.QUEUE_TIMEOUT` and never run. Expiry is checked when
  a batch is taken (and when a full queue is asked to admit one more), not by a timer per
  request: the hot path stays free of timers, and a caller learns of its timeout at most one
  forward pass late.
* Requests whose caller went away (a cancelled RPC, a client deadline) are dropped the same
  way instead of being computed for nobody, which is where an overloaded server would
  otherwise spend its time.

The batcher only decides; the servicer turns the errors into gRPC statuses and metadata.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from kubemaas.logs import kv
from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.metrics import ModelMetrics
from kubemaas_server.model_config import default_max_queue_size
from kubemaas_server.tensor_codec import Array

log = logging.getLogger(__name__)

ShapeKey = tuple[tuple[int, ...], ...]
RunFn = Callable[[Sequence[Array], int], list[Array]]

# A free model holds for a fuller batch at most this fraction of its previous forward pass.
HOLD_FRACTION = 0.5
# Weight of the newest pass in the smoothed drain rate: a few passes of history, so one slow
# pass (a GC pause, a noisy neighbour) moves the retry hint without dictating it.
DRAIN_SMOOTHING = 0.2
# The smallest retry hint: "at once" would invite a retry storm against a full queue.
MIN_RETRY_AFTER_S = 0.001
# Shedding is logged once when it starts and once when it has stopped for this long, so an
# overload episode costs two log lines however many requests it sheds.
SHED_QUIET_S = 5.0


@dataclass(slots=True)
class PendingRequest:
    inputs: list[Array]
    rows: int  # rows along the batch dimension; 0 for models without one
    key: ShapeKey  # non-batch shapes of every input
    future: asyncio.Future[list[Array]]
    enqueued: float = field(default_factory=time.perf_counter)


class BatchQueue:
    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int | None = None,
        queue_timeout_ms: float = 0.0,
        metrics: ModelMetrics,
    ) -> None:
        self.name = name
        self._run = run
        self._max_rows = max(1, max_batch_size)
        self._batched = max_batch_size > 0
        self._max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = (
            default_max_queue_size(max_batch_size) if max_queue_size is None else max_queue_size
        )
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        self._timeout_ms = queue_timeout_ms
        self._timeout = queue_timeout_ms / 1000.0
        self._preferred = sorted(size for size in preferred_batch_sizes if size <= self._max_rows)
        self._metrics = metrics
        self._queue: collections.deque[PendingRequest] = collections.deque()
        self._rows_by_key: collections.defaultdict[ShapeKey, int] = collections.defaultdict(int)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._arrival = asyncio.Event()
        self._fill_target = 0  # rows the worker waits for; 0 when it is not waiting for a fill
        self._fill_key: ShapeKey | None = None
        self._expected_rows = 1
        self._last_compute = 0.0
        self._last_finish = 0.0
        self._busy = False
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._seconds_per_request = 0.0  # smoothed drain rate; 0 until a pass has finished
        self._pass_started = 0.0
        self._drained = 0  # requests dropped (timed out, abandoned) since the last pass finished
        self._shed = 0  # requests shed in the current overload episode
        self._last_shed = 0.0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def submit(self, inputs: list[Array], rows: int, key: ShapeKey) -> list[Array]:
        """Queues one request and returns its outputs (numpy arrays, this caller's rows only)."""
        if self._closed:
            raise InferenceError(ErrorKind.UNAVAILABLE, f"model {self.name!r} is shutting down")
        now = time.perf_counter()
        if len(self._queue) >= self.max_queue_size:
            self._drop_stale_head(now)  # timed-out or abandoned requests must not hold the places
            if len(self._queue) >= self.max_queue_size:
                raise self._refuse(now)
        elif self._shed and now - self._last_shed > SHED_QUIET_S:
            log.info("stopped shedding", extra=kv(model=self.name, shed=self._shed))
            self._shed = 0
        request = PendingRequest(inputs, rows, key, asyncio.get_running_loop().create_future(), now)
        self._queue.append(request)
        self._rows_by_key[key] += max(rows, 1)
        # Wake the worker only when it can act: it is idle, or the fill it waits for is complete.
        if not self._busy and (
            self._fill_target == 0 or (key == self._fill_key and self._rows_by_key[key] >= self._fill_target)
        ):
            self._arrival.set()
        return await request.future

    def retry_after_s(self) -> float:
        """How long until the requests queued now have been served, at the recent drain rate."""
        backlog = len(self._queue)
        if self._seconds_per_request > 0.0:
            estimate = backlog * self._seconds_per_request
        elif self._busy:  # no pass has finished yet: the running one is the only evidence
            passes = -(-backlog // self._max_rows)
            estimate = passes * (time.perf_counter() - self._pass_started)
        else:
            estimate = 0.0
        return max(MIN_RETRY_AFTER_S, estimate)

    def _refuse(self, now: float) -> InferenceError:
        retry = self.retry_after_s()
        self._note_shed(now, ErrorKind.QUEUE_FULL, retry)
        return InferenceError(
            ErrorKind.QUEUE_FULL,
            f"model {self.name!r} is overloaded: its queue already holds max_queue_size="
            f"{self.max_queue_size} requests; retry in about {_milliseconds(retry)} ms",
            retry_after_s=retry,
        )

    def _note_shed(self, now: float, kind: ErrorKind, retry: float) -> None:
        if not self._shed:
            log.warning(
                "shedding requests",
                extra=kv(
                    model=self.name,
                    reason=kind.value,
                    max_queue_size=self.max_queue_size,
                    retry_after_ms=_milliseconds(retry),
                ),
            )
        self._shed += 1
        self._last_shed = now

    async def close(self) -> None:
        """Refuses new requests, lets the queued ones finish, then stops the worker and thread."""
        self._closed = True
        while self._queue or self._busy:
            self._arrival.set()
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            await self._wait_for_fill()
            batch = self._take_batch()
            if not batch:  # everything queued was stale
                continue
            try:
                results = await self._run_batch(batch)
            except Exception as error:  # a bug here must fail this batch, never stall the queue
                log.exception("batch worker error", extra=kv(model=self.name))
                failure = InferenceError(ErrorKind.INTERNAL, f"{type(error).__name__}: {error}")
                results = [failure] * len(batch)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():  # the caller went away (cancelled RPC)
                    continue
                if isinstance(result, BaseException):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    async def _run_batch(self, batch: list[PendingRequest]) -> list[list[Array] | BaseException]:
        rows = sum(request.rows for request in batch) if self._batched else 0
        self._busy = True
        started = self._pass_started = time.perf_counter()
        first_enqueued = started
        for request in batch:
            self._metrics.queue_duration.observe(started - request.enqueued)
            first_enqueued = min(first_enqueued, request.enqueued)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, batch, rows
            )
        finally:
            self._busy = False
            finished = time.perf_counter()
            self._note_drain(len(batch), finished - max(self._last_finish, first_enqueued))
            self._last_compute = finished - started
            self._last_finish = finished
            self._expected_rows = max(1, rows) + sum(self._rows_by_key.values())
        self._metrics.compute_duration.observe(self._last_compute)
        self._metrics.batch_size.observe(max(rows, 1))
        return results

    def _note_drain(self, served: int, seconds: float) -> None:
        """Updates the drain rate with one pass: the requests it served (and those dropped since
        the previous pass, which left the queue too) over the time since the worker could have
        started it, which is finish to finish under a backlog and from the first arrival after
        an idle spell."""
        drained = served + self._drained
        self._drained = 0
        sample = max(seconds, 0.0) / drained
        if self._seconds_per_request == 0.0:
            self._seconds_per_request = sample
        else:
            self._seconds_per_request += DRAIN_SMOOTHING * (sample - self._seconds_per_request)

    async def _wait_for_fill(self) -> None:
        """Under load, holds (bounded) until the rows expected from the last cycle are queued."""
        if not self._batched:
            return
        head = self._queue[0]
        now = time.perf_counter()
        if now - self._last_finish > max(self._max_delay, self._last_compute):
            self._expected_rows = 1  # the model was idle: whoever comes first runs at once
        target = min(self._max_rows, self._expected_rows)
        if self._rows_by_key.get(head.key, 0) >= target:
            return
        hold = min(self._max_delay, HOLD_FRACTION * self._last_compute)
        deadline = max(head.enqueued, self._last_finish) + hold
        if deadline <= now:
            return
        self._fill_target, self._fill_key = target, head.key
        self._arrival.clear()
        try:
            await asyncio.wait_for(self._arrival.wait(), deadline - now)
        except TimeoutError:
            pass
        finally:
            self._fill_target, self._fill_key = 0, None

    def _take_batch(self) -> list[PendingRequest]:
        """The oldest live request and the same-shape requests that fit with it; stale requests
        met on the way are answered (or forgotten) and dropped. Empty when all were stale."""
        now = time.perf_counter()
        self._drop_stale_head(now)
        if not self._queue:
            return []
        head = self._queue.popleft()
        self._dequeued(head)
        batch = [head]
        if not self._batched:
            return batch
        limit = self._max_rows
        if self._preferred:
            available = min(self._rows_by_key.get(head.key, 0) + head.rows, limit)
            fitting = [size for size in self._preferred if size <= available]
            if fitting:
                limit = fitting[-1]
        rows = head.rows
        kept: list[PendingRequest] = []
        while self._queue and rows < limit:
            request = self._queue.popleft()
            if self._stale(request, now):
                self._drop(request, now)
            elif request.key == head.key and rows + request.rows <= limit:
                batch.append(request)
                rows += request.rows
                self._dequeued(request)
            else:
                kept.append(request)
                if request.key == head.key:
                    break  # the next same-shape request does not fit: keep FIFO order from here
        self._queue.extendleft(reversed(kept))
        return batch

    def _stale(self, request: PendingRequest, now: float) -> bool:
        """The caller went away, or the request waited past the queue timeout."""
        return request.future.done() or (self._timeout > 0.0 and now - request.enqueued > self._timeout)

    def _drop_stale_head(self, now: float) -> None:
        # The queue is in arrival order, so timed-out requests are at its head; abandoned ones
        # elsewhere are dropped when a batch scan meets them.
        while self._queue and self._stale(self._queue[0], now):
            self._drop(self._queue.popleft(), now)

    def _drop(self, request: PendingRequest, now: float) -> None:
        """Takes a stale request (already popped) out of the books; answers it if it timed out."""
        self._dequeued(request)
        self._drained += 1
        if request.future.done():
            return
        retry = self.retry_after_s()
        self._note_shed(now, ErrorKind.QUEUE_TIMEOUT, retry)
        waited = _milliseconds(now - request.enqueued)
        request.future.set_exception(
            InferenceError(
                ErrorKind.QUEUE_TIMEOUT,
                f"model {self.name!r} is overloaded: the request waited {waited} ms in its queue, "
                f"longer than default_queue_timeout_ms={self._timeout_ms:g}, and was not run; "
                f"retry in about {_milliseconds(retry)} ms",
                retry_after_s=retry,
            )
        )

    def _dequeued(self, request: PendingRequest) -> None:
        left = self._rows_by_key[request.key] - max(request.rows, 1)
        if left:
            self._rows_by_key[request.key] = left
        else:
            del self._rows_by_key[request.key]  # variable shapes must not grow this map forever

    def _compute(self, batch: list[PendingRequest], rows: int) -> list[list[Array] | BaseException]:
        """Runs in the model's thread: concatenate, forward, split."""
        try:
            return self._compute_together(batch, rows)
        except Exception as error:
            if len(batch) == 1:
                return [_as_request_error(error)]
            log.info(
                "batch failed, retrying its requests one by one", extra=kv(model=self.name, size=len(batch))
            )
        outcomes: list[list[Array] | BaseException] = []
        for request in batch:
            try:
                outcomes.extend(self._compute_together([request], request.rows))
            except Exception as error:
                outcomes.append(_as_request_error(error))
        return outcomes

    def _compute_together(self, batch: list[PendingRequest], rows: int) -> list[list[Array] | BaseException]:
        # Both branches copy, even a single array: the model gets writable memory of its own,
        # never the read-only request buffer that np.frombuffer wraps.
        if self._batched:
            count = len(batch[0].inputs)
            inputs = [np.concatenate([request.inputs[i] for request in batch]) for i in range(count)]
        else:
            inputs = [np.array(array) for array in batch[0].inputs]
        outputs = self._run(inputs, rows)
        if len(batch) == 1:
            return [outputs]
        results: list[list[Array] | BaseException] = []
        start = 0
        for request in batch:
            end = start + request.rows
            results.append([output[start:end] for output in outputs])
            start = end
        return results


def _milliseconds(seconds: float) -> int:
    """Whole milliseconds, rounded up: a hint of 0 ms would read as "retry at once"."""
    return max(1, math.ceil(seconds * 1000.0))


def _as_request_error(error: Exception) -> InferenceError:
    if isinstance(error, InferenceError):
        return error
    message = str(error).strip() or type(error).__name__
    if "TorchScript interpreter" in message:  # its last line already names the exception type
        return InferenceError(ErrorKind.INTERNAL, f"model raised {_first_lines(message)}")
    return InferenceError(ErrorKind.INTERNAL, f"model raised {type(error).__name__}: {_first_lines(message)}")


def _first_lines(message: str, limit: int = 2000) -> str:
    """TorchScript errors carry the whole script traceback; callers need the gist, which is the
    last line (`RuntimeError: <what the model raised>`)."""
    if "TorchScript interpreter" in message:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        message = lines[-1] if lines else message
    return message if len(message) <= limit else message[:limit] + " ..."
