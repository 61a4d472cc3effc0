"""Dynamic batching through the real server: concurrent callers share forward passes, and each
gets its own rows back."""

from __future__ import annotations

import queue
import re
import urllib.request
import warnings

import numpy as np
import torch
import tritonclient.grpc as triton

from .conftest import RunningServer


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
