"""Dynamic batching through the real server: concurrent callers share forward passes, and each
gets its own rows back."""

from __future__ import annotations

import queue
import re
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton

from kubemaas_server.model_config import BatchingOverride, ModelConfig

from .conftest import RunningServer, start_server, stop_server


def scrape(served: RunningServer) -> str:
    return str(urllib.request.urlopen(served.metrics_url, timeout=10).read().decode())


def sample(text: str, name: str, model: str, le: str | None = None) -> float:
    labels = f'le="{le}",model="{model}"' if le is not None else f'model="{model}"'
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def fire_concurrently(
    client: triton.InferenceServerClient, model: str, name: str, rows: list[np.ndarray]
) -> list[triton.InferResult | Exception]:
    """Sends every request before waiting for any answer (tritonclient's async_infer)."""
    answers: queue.Queue[tuple[int, object, object]] = queue.Queue()
    for index, data in enumerate(rows):
        tensor = triton.InferInput(name, list(data.shape), "FP32").set_data_from_numpy(data)
        client.async_infer(
            model,
            [tensor],
            callback=lambda result, error, i=index: answers.put((i, result, error)),
            request_id=str(index),
        )
    results: list[triton.InferResult | Exception] = [None] * len(rows)  # type: ignore[list-item]
    for _ in rows:
        index, result, error = answers.get(timeout=60)
        results[index] = error if error is not None else result  # type: ignore[assignment]
    return results


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_row(
    client: triton.InferenceServerClient, served: RunningServer
) -> None:
    before = scrape(served)
    count_before = sample(before, "kubemaas_batch_size_count", "slow")
    singles_before = sample(before, "kubemaas_batch_size_bucket", "slow", "1.0")
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(24)]

    results = fire_concurrently(client, "slow", "x", rows)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(served.repository / "slow" / "1" / "model.pt"))
    with torch.inference_mode():
        expected = module(torch.from_numpy(np.concatenate(rows))).numpy()
    for index, result in enumerate(results):
        assert isinstance(result, triton.InferResult), result
        assert result.get_response().id == str(index)
        np.testing.assert_allclose(result.as_numpy("y"), expected[index : index + 1], rtol=1e-4, atol=1e-5)

    after = scrape(served)
    passes = sample(after, "kubemaas_batch_size_count", "slow") - count_before
    singles = sample(after, "kubemaas_batch_size_bucket", "slow", "1.0") - singles_before
    rows_served = sample(after, "kubemaas_batch_size_sum", "slow") - sample(
        before, "kubemaas_batch_size_sum", "slow"
    )
    assert rows_served == 24
    assert passes < 24, "every request ran alone: nothing was batched"
    assert passes - singles >= 1, "the histogram shows no batch of more than one row"


def test_a_request_that_makes_the_model_raise_does_not_fail_its_batch_mates(
    client: triton.InferenceServerClient, served: RunningServer
) -> None:
    rows = [np.array([[float(i), 1.0]], dtype=np.float32) for i in range(16)]
    rows[5] = np.array([[-5000.0, 1.0]], dtype=np.float32)
    results = fire_concurrently(client, "poison", "x", rows)
    for index, result in enumerate(results):
        if index == 5:
            assert isinstance(result, Exception)
            assert "StatusCode.INTERNAL" in str(result.status())  # type: ignore[attr-defined]
            assert "poisoned row" in str(result)
        else:
            assert isinstance(result, triton.InferResult), result
            np.testing.assert_array_equal(result.as_numpy("y"), rows[index] * 2)


def test_a_deployment_cap_limits_rows_per_pass_but_never_refuses_a_valid_request(repository: Path) -> None:
    """`--max-batch-size 2` (the ModelService's spec.batching): passes of at most 2 rows from
    many single-row callers, while a 6-row request, valid for the model (max 32), still runs."""
    capped = start_server(repository, torch_threads=1, batching=BatchingOverride(max_batch_size=2))
    try:
        with triton.InferenceServerClient(capped.target) as client:
            rng = np.random.default_rng(11)
            rows = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(12)]
            results = fire_concurrently(client, "slow", "x", rows)
            assert all(isinstance(r, triton.InferResult) for r in results), results
            big = rng.standard_normal((6, 8)).astype(np.float32)
            (answer,) = fire_concurrently(client, "slow", "x", [big])
            assert isinstance(answer, triton.InferResult), answer
            assert answer.as_numpy("y").shape == (6, 8)
        text = scrape(capped)
        passes = sample(text, "kubemaas_batch_size_count", "slow")
        within_two = sample(text, "kubemaas_batch_size_bucket", "slow", "2.0")
        assert sample(text, "kubemaas_batch_size_sum", "slow") == 18
        # Every pass but the 6-row request's merged at most 2 rows; some merged exactly 2.
        assert within_two == passes - 1
        assert passes < 12 + 1, "nothing was merged"
    finally:
        stop_server(capped)


def test_batching_override_caps_only_batched_models_and_replaces_the_delay() -> None:
    batched = ModelConfig("m", inputs=(), outputs=(), max_batch_size=32)
    unbatched = ModelConfig("u", inputs=(), outputs=(), max_batch_size=0)
    override = BatchingOverride(max_batch_size=4, max_queue_delay_ms=7.0)
    assert (override.rows_per_pass(batched), override.rows_per_pass(unbatched)) == (4, 0)
    assert BatchingOverride(max_batch_size=64).rows_per_pass(batched) == 32
    assert BatchingOverride().rows_per_pass(batched) == 32
    assert override.queue_delay_ms(batched) == 7.0
    assert BatchingOverride().queue_delay_ms(batched) == batched.dynamic_batching.max_queue_delay_ms
