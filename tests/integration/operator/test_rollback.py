"""A new revision whose pods crash-loop is rolled back automatically; the old one keeps its replicas."""

from __future__ import annotations

import json

import pytest
import yaml

from kubemaas_cluster.simulation import SIM_CRASHLOOP_IMAGE
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


def test_a_crash_looping_revision_is_rolled_back_and_the_old_one_never_loses_replicas(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(model_service("svc", minReplicas=2))
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/svc", "-n", namespace, "--timeout=90s", timeout=100)
    good = get(cluster, "ms", "svc", "-n", namespace)["status"]["revision"]
    eventually(
        lambda: (
            get(cluster, "ms", "svc", "-n", namespace)["status"].get("stable", {}).get("revision") == good
        ),
        what="the good revision recorded as stable",
    )
    old_pods = {
        p["metadata"]["uid"]
        for p in get(cluster, "pods", "-n", namespace, "-l", f"kubemaas.io/revision={good}")["items"]
    }
    assert len(old_pods) == 2

    # The new image's pods crash at start (a KWOK stage plays the kubelet's part).
    cluster.kubectl(
        "patch",
        "ms",
        "svc",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"image": SIM_CRASHLOOP_IMAGE}}),
    )
    available: list[int] = []

    def rolled_back() -> dict[str, object]:
        available.append(
            int(get(cluster, "deployment", "svc", "-n", namespace)["status"].get("availableReplicas", 0))
        )
        ms = get(cluster, "ms", "svc", "-n", namespace)
        return ms if condition(ms, "RolledBack").get("status") == "True" else {}

    ms = eventually(rolled_back, timeout=60, what="the RolledBack condition")
    rolled = condition(ms, "RolledBack")
    assert rolled["reason"] == "CrashLoopBackOff"
    assert "model failed to load" in rolled["message"]
    assert ms["status"]["rolledBack"]["to"] == good
    eventually(
        lambda: (
            get(cluster, "deployment", "svc", "-n", namespace)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == "kubemaas-server:test"
        ),
        what="the Deployment back on the good image",
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/svc", "-n", namespace, "--timeout=60s", timeout=70)
    assert min(available) >= 2, f"available replicas dipped during the failed rollout: {available}"
    still = {
        p["metadata"]["uid"]
        for p in get(cluster, "pods", "-n", namespace, "-l", f"kubemaas.io/revision={good}")["items"]
    }
    assert still == old_pods, "the good revision's pods must never be replaced during the failed rollout"
    # The spec still says what the user wrote; only a new change starts a new rollout.
    assert get(cluster, "ms", "svc", "-n", namespace)["spec"]["image"] == SIM_CRASHLOOP_IMAGE
