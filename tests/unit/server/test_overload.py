"""Overload is shed, not queued forever.

A model's queue refuses a request at once when `max_queue_size` requests already wait, answers a
request that waited past `default_queue_timeout_ms` without running it, and forgets requests
whose caller left. Through gRPC both sheds end UNAVAILABLE with a retry hint in the trailing
metadata, the metrics count them, and the server keeps serving. Assertions are on counts and
statuses, never on latencies: the tests share a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.model_config import (
    DEFAULT_MIN_QUEUE_SIZE,
    DynamicBatching,
    ModelConfig,
    ModelConfigError,
    default_max_queue_size,
    load_model_config,
    parse_model_config,
    write_model_config,
)
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .conftest import RunningServer, start_server, stop_server
from .models import build_overload_repository, spec
from .test_batcher import FakeModel, queue_for, run, submit, wait_entered
from .test_batching import sample, scrape

QUEUE_SIZE = 2
QUEUE_TIMEOUT_MS = 100.0

# --- the batch queue on its own -----------------------------------------------------------


def test_a_full_queue_refuses_the_next_request_at_once_while_the_admitted_ones_finish() -> None:
    model = FakeModel()

    async def scenario() -> tuple[list[np.ndarray], InferenceError]:
        queue = queue_for(model, max_queue_size=QUEUE_SIZE)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)  # the running pass does not count against the queue
        queued = [asyncio.create_task(submit(queue, float(i))) for i in (1, 2)]
        await asyncio.sleep(0)  # both are in the queue now
        with pytest.raises(InferenceError) as refused:
            await submit(queue, 3.0)  # refused without waiting for the gated pass
        model.gate.set()
        results = [await running] + [await task for task in queued]
        await queue.close()
        return results, refused.value

    results, error = run(scenario())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out, [[2.0 * i, 2.0 * i]])
    assert model.batches == [1, 2]  # the refused request never ran
    assert error.kind == ErrorKind.QUEUE_FULL
    assert "'m'" in error.message and f"max_queue_size={QUEUE_SIZE}" in error.message
    assert error.retry_after_s is not None and error.retry_after_s > 0


def test_the_retry_hint_is_the_backlog_at_the_measured_drain_rate() -> None:
    model = FakeModel()
    model.delay = 0.2  # every pass takes at least this long, so the drain rate is at most 5/s

    async def scenario() -> float:
        queue = queue_for(model, max_batch_size=1, max_queue_size=QUEUE_SIZE)
        for value in (1.0, 2.0):  # two passes measured
            await submit(queue, value)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        queued = [asyncio.create_task(submit(queue, 1.0)) for _ in range(QUEUE_SIZE)]
        await asyncio.sleep(0)
        with pytest.raises(InferenceError) as refused:
            await submit(queue, 1.0)
        model.gate.set()
        await asyncio.gather(running, *queued)
        await queue.close()
        assert refused.value.retry_after_s is not None
        return refused.value.retry_after_s

    # Two queued requests, each at least 0.2 s of service: the hint cannot be shorter than that.
    assert run(scenario()) >= QUEUE_SIZE * 0.2


def test_a_request_that_waited_past_the_queue_timeout_is_answered_without_running() -> None:
    model = FakeModel()

    async def scenario() -> tuple[np.ndarray, Any, np.ndarray]:
        queue = queue_for(model, max_queue_delay_ms=5.0, queue_timeout_ms=50.0)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 1.0))
        await wait_entered(model)
        expired = asyncio.create_task(submit(queue, 2.0))
        await asyncio.sleep(0.2)  # longer than the 50 ms timeout, however loaded the machine
        model.gate.set()
        first = await running
        outcome = (await asyncio.gather(expired, return_exceptions=True))[0]
        fresh = await submit(queue, 3.0)  # the queue serves on after a timeout
        await queue.close()
        return first, outcome, fresh

    first, outcome, fresh = run(scenario())
    np.testing.assert_array_equal(first, [[2.0, 2.0]])
    np.testing.assert_array_equal(fresh, [[6.0, 6.0]])
    assert isinstance(outcome, InferenceError)
    assert outcome.kind == ErrorKind.QUEUE_TIMEOUT
    assert "'m'" in outcome.message and "default_queue_timeout_ms=50" in outcome.message
    assert outcome.retry_after_s is not None and outcome.retry_after_s > 0
    assert model.batches == [1, 1]  # the expired request was never computed


def test_a_timed_out_request_gives_its_place_in_a_full_queue_to_a_new_one() -> None:
    model = FakeModel()

    async def scenario() -> tuple[Any, np.ndarray]:
        queue = queue_for(model, max_queue_delay_ms=5.0, max_queue_size=1, queue_timeout_ms=50.0)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 1.0))
        await wait_entered(model)
        expired = asyncio.create_task(submit(queue, 2.0))
        await asyncio.sleep(0.2)
        admitted = asyncio.create_task(submit(queue, 3.0))  # the queue is full, but of a stale request
        outcome = (await asyncio.gather(expired, return_exceptions=True))[0]
        model.gate.set()
        await running
        answer = await admitted
        await queue.close()
        return outcome, answer

    outcome, answer = run(scenario())
    assert isinstance(outcome, InferenceError) and outcome.kind == ErrorKind.QUEUE_TIMEOUT
    np.testing.assert_array_equal(answer, [[6.0, 6.0]])


def test_requests_whose_caller_went_away_are_not_computed() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        queue = queue_for(model)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        tasks = [asyncio.create_task(submit(queue, float(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        tasks[1].cancel()  # a cancelled RPC cancels its handler, and with it the wait
        await asyncio.sleep(0)
        model.gate.set()
        results = [await running, await tasks[0], await tasks[2]]
        await queue.close()
        return results

    results = run(scenario())
    for out, value in zip(results, (0.0, 1.0, 3.0), strict=True):
        np.testing.assert_array_equal(out, [[2.0 * value, 2.0 * value]])
    assert model.batches == [1, 2]


def test_an_overload_episode_logs_one_line_however_many_requests_it_sheds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = FakeModel()

    async def scenario() -> None:
        queue = queue_for(model, max_queue_size=1)
        model.gate.clear()
        running = asyncio.create_task(submit(queue, 0.0))
        await wait_entered(model)
        queued = asyncio.create_task(submit(queue, 1.0))
        await asyncio.sleep(0)
        for _ in range(5):
            with pytest.raises(InferenceError):
                await submit(queue, 2.0)
        model.gate.set()
        await asyncio.gather(running, queued)
        await queue.close()

    with caplog.at_level(logging.INFO, logger="kubemaas_server.batcher"):
        run(scenario())
    assert [record.getMessage() for record in caplog.records].count("shedding requests") == 1


# --- model.yaml ---------------------------------------------------------------------------


def document(**batching: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "max_batch_size": 8,
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "b", "datatype": "FP32", "shape": [1]}],
        "dynamic_batching": batching,
    }


BAD_QUEUE_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "zero queue (Triton's unbounded)": ({"max_queue_size": 0}, "max_queue_size: expected at least 1"),
    "negative queue": ({"max_queue_size": -4}, "max_queue_size: expected at least 1"),
    "fractional queue": ({"max_queue_size": 2.5}, "max_queue_size: expected an integer"),
    "string queue": ({"max_queue_size": "100"}, "max_queue_size: expected an integer"),
    "boolean queue": ({"max_queue_size": True}, "max_queue_size: expected an integer"),
    "negative timeout": ({"default_queue_timeout_ms": -1}, "default_queue_timeout_ms: expected milliseconds"),
    "string timeout": ({"default_queue_timeout_ms": "1s"}, "default_queue_timeout_ms: expected milliseconds"),
    "boolean timeout": (
        {"default_queue_timeout_ms": True},
        "default_queue_timeout_ms: expected milliseconds",
    ),
    "timeout within the batching delay": (
        {"max_queue_delay_ms": 20, "default_queue_timeout_ms": 10},
        "default_queue_timeout_ms: 10 must exceed max_queue_delay_ms (20)",
    ),
    "misspelt key": ({"max_queue_length": 10}, "unknown field(s) 'max_queue_length'"),
}


@pytest.mark.parametrize("case", list(BAD_QUEUE_SETTINGS))
def test_bad_queue_settings_are_refused_with_the_field_named(case: str) -> None:
    batching, message = BAD_QUEUE_SETTINGS[case]
    with pytest.raises(ModelConfigError) as refused:
        parse_model_config(document(**batching))
    assert "dynamic_batching." in str(refused.value) or "dynamic_batching:" in str(refused.value)
    assert message in str(refused.value)


def test_the_default_queue_holds_sixteen_full_batches_and_never_fewer_than_the_floor() -> None:
    assert parse_model_config(document()).max_queue_size == DEFAULT_MIN_QUEUE_SIZE  # 16 x 8 < 128
    assert default_max_queue_size(0) == DEFAULT_MIN_QUEUE_SIZE
    assert default_max_queue_size(64) == 16 * 64
    config = parse_model_config(document(max_queue_size=5, default_queue_timeout_ms=250))
    assert config.max_queue_size == 5
    assert config.dynamic_batching.default_queue_timeout_ms == 250.0


def test_queue_settings_round_trip_through_model_yaml(tmp_path: Path) -> None:
    config = ModelConfig(
        "m",
        inputs=(spec("a", "FP32", [4]),),
        outputs=(spec("b", "FP32", [1]),),
        max_batch_size=8,
        dynamic_batching=DynamicBatching(max_queue_size=3, default_queue_timeout_ms=40.0),
    )
    write_model_config(config, tmp_path / "m")
    assert load_model_config(tmp_path / "m") == config


# --- through a real gRPC server -----------------------------------------------------------


def busy_request(model: str, rounds: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="rounds", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[rounds]], dtype=np.float32).tobytes())
    return request


def answer(response: pb.ModelInferResponse) -> float:
    return float(np.frombuffer(response.raw_output_contents[0], dtype=np.float32)[0])


def outcome(call: Any) -> pb.ModelInferResponse | grpc.RpcError:
    try:
        response: pb.ModelInferResponse = call.result()
        return response
    except grpc.RpcError as error:
        return error


def requests_total(text: str, model: str, outcome_label: str) -> float:
    pattern = rf'^kubemaas_requests_total\{{model="{model}",outcome="{outcome_label}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def occupy(
    stub: pb_grpc.GRPCInferenceServiceStub, running: RunningServer, model: str, rounds: float
) -> tuple[Any, float]:
    """Sends a long request and returns its call and rounds once the server holds it (its
    forward pass has the worker). Should it finish before that is seen, the machine was faster
    than calibrated: send a longer one."""
    for _ in range(4):
        call = stub.ModelInfer.future(busy_request(model, rounds), timeout=120)
        deadline = time.monotonic() + 60
        while not call.done():
            if sample(scrape(running), "kubemaas_inflight_requests", model) >= 1:
                return call, rounds
            assert time.monotonic() < deadline, f"no request for {model} reached the server"
            time.sleep(0.01)
        assert answer(call.result()) == rounds
        rounds *= 2
    raise AssertionError(f"could not keep {model} busy long enough to see it")


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, float]]:
    """A server whose models shed early, and the rounds that keep one busy for about a second."""
    repository = build_overload_repository(
        tmp_path_factory.mktemp("overload"), max_queue_size=QUEUE_SIZE, queue_timeout_ms=QUEUE_TIMEOUT_MS
    )
    running = start_server(repository, torch_threads=1)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # The fastest of a few calls: TorchScript optimizes a model over its first calls, and
            # a slow outlier on a loaded machine must not shorten the long requests below.
            elapsed = []
            for _ in range(3):
                started = time.perf_counter()
                stub.ModelInfer(busy_request("queued", 100), timeout=60)
                elapsed.append(time.perf_counter() - started)
        yield running, float(round(max(100.0, 100 * 1.0 / max(min(elapsed), 1e-3))))
    finally:
        stop_server(running)


def test_a_full_queue_refuses_with_unavailable_and_a_retry_hint_and_the_server_keeps_serving(
    overloaded: tuple[RunningServer, float],
) -> None:
    running, rounds = overloaded
    values = [1.0 + i / 64 for i in range(12)]  # one round each, and an answer of their own
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        long_call, rounds = occupy(stub, running, "queued", rounds)
        calls = [stub.ModelInfer.future(busy_request("queued", value), timeout=120) for value in values]
        outcomes = [outcome(call) for call in calls]
        assert answer(long_call.result()) == rounds

        refused = 0
        for value, result in zip(values, outcomes, strict=True):
            if isinstance(result, grpc.RpcError):
                refused += 1
                assert result.code() == grpc.StatusCode.UNAVAILABLE, result
                assert "'queued'" in result.details() and f"max_queue_size={QUEUE_SIZE}" in result.details()
                metadata = dict(result.trailing_metadata())
                assert int(metadata["retry-after-ms"]) >= 1
                assert metadata["grpc-retry-pushback-ms"] == metadata["retry-after-ms"]
            else:
                assert answer(result) == value  # every admitted request got its own answer
        # Twelve requests met a pass of about a second and a queue of two: some were shed, and
        # the first of them found room.
        assert 1 <= refused < len(values)
        assert requests_total(scrape(running), "queued", "queue_full") == refused

        # Still live, ready and serving.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="queued"), timeout=10).ready
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert answer(stub.ModelInfer(busy_request("queued", 2.0), timeout=60)) == 2.0


def test_a_request_that_waited_past_the_queue_timeout_gets_unavailable_and_is_not_run(
    overloaded: tuple[RunningServer, float],
) -> None:
    running, rounds = overloaded
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        long_call, rounds = occupy(stub, running, "timed", rounds)
        late = outcome(stub.ModelInfer.future(busy_request("timed", 1.0), timeout=120))
        assert answer(long_call.result()) == rounds

        assert isinstance(late, grpc.RpcError)
        assert late.code() == grpc.StatusCode.UNAVAILABLE, late
        assert "'timed'" in late.details() and "default_queue_timeout_ms=100" in late.details()
        assert int(dict(late.trailing_metadata())["retry-after-ms"]) >= 1
        text = scrape(running)
        assert requests_total(text, "timed", "queue_timeout") == 1
        assert sample(text, "kubemaas_batch_size_sum", "timed") == 1  # only the long request ran
        assert answer(stub.ModelInfer(busy_request("timed", 3.0), timeout=60)) == 3.0
