"""The reconcile loop meets conflicts (409), throttling (429) and server errors with backoff and
goes on; a child the API server refuses as invalid (422) ends in status, not in a retry loop.

The API server is replaced here by a client that refuses on cue: the point is the loop's
reaction to each answer, which a real API server does not produce on demand.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any, cast

import pytest

from kubemaas_operator import reconciler as reconciler_module
from kubemaas_operator.clients import KubeApiError, KubeClient
from kubemaas_operator.reconciler import Reconciler
from kubemaas_operator.settings import OperatorSettings

BODY = {
    "apiVersion": "kubemaas.io/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": "mlp", "namespace": "ml", "uid": "u-1", "generation": 1},
    "spec": {"model": {"uri": "pvc://models/mlp"}},
}


class RefusingClient:
    """Refuses the first applies with the given HTTP statuses, then accepts everything."""

    def __init__(self, refusals: list[int]) -> None:
        self.refusals = refusals
        self.applied: list[str] = []
        self.statuses: list[Mapping[str, Any]] = []

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if self.refusals:
            status = self.refusals.pop(0)
            raise KubeApiError(status, "Refused", '{"message": "refused on cue: ' + str(status) + '"}')
        self.applied.append(manifest["kind"])
        result = copy.deepcopy(dict(manifest))
        result["metadata"].update(generation=1, resourceVersion=str(len(self.applied)))
        return result

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.statuses.append(status)

    def get(self, *args: str) -> None:
        return None

    def delete(self, *args: str) -> bool:
        return False


async def run_until(client: RefusingClient, done: Any, *, linger: float = 0.0) -> None:
    loop = Reconciler(cast(KubeClient, client), OperatorSettings())
    loop.on_model_service("ADDED", BODY)
    deadline = asyncio.get_running_loop().time() + 10
    try:
        while not done():
            assert asyncio.get_running_loop().time() < deadline, f"gave up: {client.statuses[-1:]}"
            task = loop._tasks[("ml", "mlp")]
            assert not task.done(), "the reconcile loop ended"
            await asyncio.sleep(0.02)
        await asyncio.sleep(linger)  # time for any retry to happen
    finally:
        await loop.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "RETRY_SECONDS", (0.01, 0.02, 0.05))


@pytest.mark.parametrize("refusals", [[409], [429, 429], [409, 429, 500, 503]])
def test_conflicts_throttling_and_server_errors_are_retried_until_applied(refusals: list[int]) -> None:
    client = RefusingClient(list(refusals))
    asyncio.run(run_until(client, lambda: client.statuses and "Deployment" in client.applied))
    assert not client.refusals, "every refusal was met with a retry"
    assert client.applied[:3] == ["Deployment", "Service", "NetworkPolicy"]
    assert client.statuses[-1]["phase"] != "Failed"


def test_a_child_refused_as_invalid_ends_in_status_without_retrying() -> None:
    client = RefusingClient([422] * 10)
    # Half a second is ten rounds of the patched backoff: a retry loop would use up the refusals.
    asyncio.run(run_until(client, lambda: client.statuses, linger=0.5))
    ready = next(c for c in client.statuses[-1]["conditions"] if c["type"] == "Ready")
    assert (client.statuses[-1]["phase"], ready["reason"]) == ("Failed", "ChildRejected")
    assert "refused on cue: 422" in ready["message"]
    # One apply per reconcile: the first, and the one the autoscaler's first view wakes.
    assert len(client.refusals) >= 8, f"an invalid child was retried: {10 - len(client.refusals)} applies"
