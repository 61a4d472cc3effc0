"""Two operator replicas: one leads through the Lease, the other stands by and takes over."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubemaas_operator.leader import LeaseTiming
from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import (
    OperatorProcess,
    condition,
    eventually,
    get,
    model_service,
    models_claim,
)

pytestmark = pytest.mark.integration

LEASE = ("lease", "kubemaas-operator", "-n", "kubemaas-system")


def holder(cluster: LocalCluster) -> str:
    result = cluster.kubectl("get", *LEASE, "-o", "json", check=False)
    if result.returncode != 0:
        return ""
    return str(yaml.safe_load(result.stdout)["spec"].get("holderIdentity") or "")


@pytest.fixture
def replicas(
    operator: OperatorProcess, cluster: LocalCluster, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    """Replicas a and b instead of the session's standalone operator, which comes back afterwards."""
    operator.stop()
    started: list[OperatorProcess] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            started.append(
                OperatorProcess(cluster, workdir, standalone=False, env={"POD_NAME": f"operator-{name}"})
            )
        yield started
    finally:
        for process in started:
            process.stop()
            print(f"\n--- replica log tail ---\n{process.logs()[-2000:]}")
        operator.restart()


def test_one_replica_leads_the_other_takes_over_when_it_dies(
    replicas: list[OperatorProcess], cluster: LocalCluster, namespace: str
) -> None:
    by_name = {"operator-a": replicas[0], "operator-b": replicas[1]}
    first = eventually(lambda: holder(cluster), timeout=30, what="a leader")
    leader, standby = by_name[first], next(p for n, p in by_name.items() if n != first)

    models_claim(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(model_service("ha")))
    cluster.kubectl("wait", "--for=condition=Ready", "ms/ha", "-n", namespace, "--timeout=60s", timeout=70)
    assert "applied children" in leader.logs()
    assert "standing by" in standby.logs()
    assert "applied children" not in standby.logs(), "the standby reconciled while another replica led"

    leader.stop(signal.SIGKILL)  # no release: the standby must wait out the Lease
    killed = time.monotonic()
    cluster.kubectl("patch", "ms", "ha", "-n", namespace, "--type=merge", "-p", '{"spec":{"minReplicas":2}}')
    second = eventually(
        lambda: holder(cluster) not in ("", first) and holder(cluster), timeout=40, what="takeover"
    )
    assert by_name[second] is standby

    def scaled() -> bool:
        ms = get(cluster, "ms", "ha", "-n", namespace)
        return (
            ms["status"].get("observedGeneration") == ms["metadata"]["generation"]
            and condition(ms, "Ready").get("status") == "True"
            and ms["status"].get("readyReplicas") == 2
        )

    eventually(scaled, timeout=60, what="the new leader to act on the change made while nobody led")
    takeover = time.monotonic() - killed
    print(f"\ntakeover: the change made while nobody led was Ready {takeover:.1f}s after SIGKILL")
    # The Lease lasts 15 s by the standby's clock; a standby checks every 2 s; then one reconcile.
    timing = LeaseTiming()
    assert takeover < timing.duration_seconds + timing.retry_seconds + 15
    assert get(cluster, "deployment", "ha", "-n", namespace)["spec"]["replicas"] == 2
    # No duplicates, no orphans: exactly the children of one ModelService, each owned by it.
    uid = get(cluster, "ms", "ha", "-n", namespace)["metadata"]["uid"]
    for kind in ("deployments", "services", "networkpolicies", "poddisruptionbudgets"):
        items = get(cluster, kind, "-n", namespace)["items"]
        assert [i["metadata"]["name"] for i in items] == ["ha"], kind
        assert [o["uid"] for o in items[0]["metadata"]["ownerReferences"]] == [uid]

    standby.stop()  # a clean stop gives the Lease up for the next replica
    assert holder(cluster) == ""
