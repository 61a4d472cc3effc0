"""Canary revisions: a share of the replicas on the new revision, behind the same Service."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

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


def revisions(cluster: LocalCluster, namespace: str, name: str) -> Counter[str]:
    pods = get(cluster, "pods", "-n", namespace, "-l", f"kubemaas.io/model-service={name}")["items"]
    return Counter(
        p["metadata"]["labels"]["kubemaas.io/revision"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    )


def patch(cluster: LocalCluster, namespace: str, body: dict[str, object]) -> None:
    cluster.kubectl("patch", "ms", "cn", "-n", namespace, "--type=merge", "-p", json.dumps(body))


def test_canary_25_percent_of_4_runs_1_new_and_3_old_then_promote_leaves_only_new(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(model_service("cn", minReplicas=4, maxReplicas=4)),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/cn", "-n", namespace, "--timeout=90s", timeout=100)
    old = get(cluster, "ms", "cn", "-n", namespace)["status"]["revision"]
    eventually(
        lambda: get(cluster, "ms", "cn", "-n", namespace)["status"].get("stable", {}).get("revision") == old,
        what="stable recorded",
    )

    patch(cluster, namespace, {"spec": {"image": "kubemaas-server:v2", "rollout": {"canaryPercent": 25}}})
    ms = eventually(
        lambda: (m := get(cluster, "ms", "cn", "-n", namespace))["status"].get("canary") and m,
        what="the canary recorded",
    )
    new = ms["status"]["canary"]["revision"]
    assert new != old
    eventually(
        lambda: revisions(cluster, namespace, "cn") == Counter({old: 3, new: 1}), what="3 old and 1 new pods"
    )
    canary = get(cluster, "deployment", "cn-canary", "-n", namespace)
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "kubemaas-server:v2"
    assert (
        get(cluster, "deployment", "cn", "-n", namespace)["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == "kubemaas-server:test"
    )
    # One Service selects both tracks.
    selector = get(cluster, "service", "cn", "-n", namespace)["spec"]["selector"]
    assert "kubemaas.io/track" not in selector and selector["kubemaas.io/model-service"] == "cn"

    patch(cluster, namespace, {"spec": {"rollout": {"canaryPercent": 100}}})
    eventually(
        lambda: revisions(cluster, namespace, "cn") == Counter({new: 4}), timeout=90, what="only new pods"
    )
    eventually(
        lambda: (
            cluster.kubectl("get", "deployment", "cn-canary", "-n", namespace, check=False).returncode != 0
        ),
        what="the canary Deployment removed",
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/cn", "-n", namespace, "--timeout=60s", timeout=70)
    assert get(cluster, "ms", "cn", "-n", namespace)["status"]["revision"] == new


def test_setting_a_canary_to_zero_rolls_it_back_and_removes_it(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(model_service("cn", minReplicas=2, maxReplicas=2)),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/cn", "-n", namespace, "--timeout=90s", timeout=100)
    old = get(cluster, "ms", "cn", "-n", namespace)["status"]["revision"]
    eventually(
        lambda: get(cluster, "ms", "cn", "-n", namespace)["status"].get("stable", {}).get("revision") == old,
        what="stable recorded",
    )
    patch(cluster, namespace, {"spec": {"image": "kubemaas-server:v2", "rollout": {"canaryPercent": 50}}})
    eventually(
        lambda: (
            cluster.kubectl("get", "deployment", "cn-canary", "-n", namespace, check=False).returncode == 0
        ),
        what="the canary",
    )

    patch(cluster, namespace, {"spec": {"rollout": {"canaryPercent": 0}}})
    eventually(
        lambda: (
            cluster.kubectl("get", "deployment", "cn-canary", "-n", namespace, check=False).returncode != 0
        ),
        what="the canary removed",
    )
    eventually(lambda: revisions(cluster, namespace, "cn") == Counter({old: 2}), what="only the old revision")
    ms = get(cluster, "ms", "cn", "-n", namespace)
    assert condition(ms, "RolledBack")["reason"] == "CanaryRolledBack"
