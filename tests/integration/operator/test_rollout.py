"""Rollouts that cannot surge: every GPU is taken by the ModelService itself."""

from __future__ import annotations

import pytest

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


def gpus_free(cluster: LocalCluster) -> bool:
    """True when no pod anywhere holds a GPU (earlier tests' namespaces are deleted asynchronously)."""
    pods = get(cluster, "pods", "-A")["items"]
    return not any(
        "nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
        for p in pods
        if p["status"].get("phase") in ("Pending", "Running")
        for c in p["spec"]["containers"]
    )


def test_a_full_gpu_cluster_rolls_out_by_replacement_and_says_why(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    eventually(lambda: gpus_free(cluster), timeout=120, what="every GPU free")
    models_claim(cluster, namespace)
    # 2 replicas x 8 GPUs: both 8-GPU nodes full, no room for a surge pod.
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_yaml(model_service("full", gpu={"count": 8}, minReplicas=2)),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "ms/full", "-n", namespace, "--timeout=90s", timeout=100)
    old_revision = get(cluster, "ms", "full", "-n", namespace)["status"]["revision"]

    cluster.kubectl(
        "patch",
        "ms",
        "full",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"model":{"uri":"pvc://models/mlp-v2"}}}',
    )

    def rolled_out() -> bool:
        current = get(cluster, "ms", "full", "-n", namespace)
        pods = get(cluster, "pods", "-n", namespace, "-l", "kubemaas.io/model-service=full")["items"]
        revisions = {
            p["metadata"]["labels"]["kubemaas.io/revision"]
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
        }
        return condition(current, "Ready").get("status") == "True" and revisions == {
            current["status"]["revision"]
        }

    eventually(rolled_out, timeout=120, what="the rollout to complete on the new revision")
    done = get(cluster, "ms", "full", "-n", namespace)
    assert done["status"]["revision"] != old_revision
    # The switch can complete within a second, so the proof is the record it leaves in the status.
    rollout = done["status"]["rollout"]
    assert rollout["replaceRevision"] == done["status"]["revision"]
    assert rollout["reason"] == "ReplacingForLackOfGPUs"
    assert "Insufficient nvidia.com/gpu" in rollout["message"]
    deployment = get(cluster, "deployment", "full", "-n", namespace)
    assert (
        deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["subPath"] == "mlp-v2"
    cluster.kubectl("delete", "ms", "full", "-n", namespace, "--wait=false")


def test_a_rollout_with_room_to_spare_surges_with_zero_unavailable(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_yaml(model_service("roomy", minReplicas=2)))
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/roomy", "-n", namespace, "--timeout=90s", timeout=100
    )
    cluster.kubectl(
        "patch",
        "ms",
        "roomy",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"image":"kubemaas-server:v2"}}',
    )
    eventually(
        lambda: (
            get(cluster, "deployment", "roomy", "-n", namespace)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == "kubemaas-server:v2"
        ),
        what="the new image applied",
    )
    cluster.kubectl("rollout", "status", "deployment/roomy", "-n", namespace, "--timeout=90s", timeout=100)
    ms = get(cluster, "ms", "roomy", "-n", namespace)
    assert "rollout" not in ms["status"], "a rollout with room must not switch to replacement"
    strategy = get(cluster, "deployment", "roomy", "-n", namespace)["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


def _yaml(body: dict[str, object]) -> str:
    import yaml

    return yaml.safe_dump(body)
