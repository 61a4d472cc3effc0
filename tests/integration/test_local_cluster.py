"""The local control plane is a real one: real controllers, real scheduler, KWOK nodes."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any

import pytest
import yaml

from kubemaas_cluster.simulation import SIM_COMPLETE_ANNOTATION
from tests.integration.conftest import LocalCluster

pytestmark = pytest.mark.integration

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def apply(cluster: LocalCluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def pod(name: str, *, gpus: int = 0, tolerate_gpu: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "example.invalid/app:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {"containers": [container]}
    if tolerate_gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_nodes_are_the_four_default_nodes_and_ready(cluster: LocalCluster) -> None:
    nodes = get_json(cluster, "nodes")["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert sorted(by_name) == ["kwok-cpu-0", "kwok-cpu-1", "kwok-gpu-0", "kwok-gpu-1"]
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        for address in node["status"].get("addresses", []):
            if address["type"] == "InternalIP":
                assert ipaddress.ip_address(address["address"]) in LOOPBACK
    gpu = by_name["kwok-gpu-0"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]


def test_deployment_pods_are_created_bound_and_running(cluster: LocalCluster, namespace: str) -> None:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }
    apply(cluster, namespace, deployment)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3
    for item in pods:
        # Created by the ReplicaSet controller, bound by the scheduler, run by KWOK.
        assert item["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert item["spec"]["nodeName"].startswith("kwok-cpu-"), "CPU pods must not land on tainted GPU nodes"
        assert item["status"]["phase"] == "Running"
        assert ipaddress.ip_address(item["status"]["podIP"]) in LOOPBACK
    events = get_json(cluster, "events", "-n", namespace, "--field-selector", "reason=Scheduled")["items"]
    assert any(
        e.get("reportingComponent") == "default-scheduler"
        or e.get("source", {}).get("component") == "default-scheduler"
        for e in events
    )


def test_gpu_pod_with_toleration_lands_only_on_a_gpu_node(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, pod("gpu2", gpus=2, tolerate_gpu=True))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/gpu2", "-n", namespace, "--timeout=60s")
    item = get_json(cluster, "pod", "gpu2", "-n", namespace)
    assert item["spec"]["nodeName"].startswith("kwok-gpu-")


def test_pod_asking_for_more_gpus_than_any_node_stays_pending_with_the_scheduler_reason(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, namespace, pod("gpu16", gpus=16, tolerate_gpu=True))

    def unschedulable() -> dict[str, Any] | None:
        item = get_json(cluster, "pod", "gpu16", "-n", namespace)
        for condition in item["status"].get("conditions", []):
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return dict(condition)
        return None

    condition = wait_for(unschedulable, what="PodScheduled=False")
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert get_json(cluster, "pod", "gpu16", "-n", namespace)["status"]["phase"] == "Pending"


def test_crd_with_a_cel_rule_refuses_a_bad_object_with_the_rule_message(cluster: LocalCluster) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ranges.celtest.kubemaas.io"},
        "spec": {
            "group": "celtest.kubemaas.io",
            "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd/ranges.celtest.kubemaas.io", "--timeout=30s")
    good = {
        "apiVersion": "celtest.kubemaas.io/v1",
        "kind": "Range",
        "metadata": {"name": "ok"},
        "spec": {"min": 1, "max": 2},
    }
    bad = {**good, "metadata": {"name": "bad"}, "spec": {"min": 5, "max": 2}}
    wait_for(
        lambda: cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(good), check=False).returncode == 0,
        what="CRD served",
    )
    refused = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0
    assert "min must not exceed max" in refused.stderr
    cluster.kubectl("delete", "crd", "ranges.celtest.kubemaas.io", "--wait=false")


def test_service_accounts_get_tokens(cluster: LocalCluster, namespace: str) -> None:
    token = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    assert token.count(".") == 2  # a signed JWT
    review = cluster.kubectl(
        "create",
        "-f",
        "-",
        "-o",
        "json",
        input=yaml.safe_dump(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        ),
    )
    status = json.loads(review.stdout)["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:default"


def test_hostpath_persistent_volume_binds_to_a_claim(cluster: LocalCluster, namespace: str) -> None:
    pv_name = f"pv-{namespace}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": f"/tmp/kubemaas-pv/{namespace}"},
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pv))
    apply(cluster, namespace, pvc)
    try:
        wait_for(
            lambda: get_json(cluster, "pvc", "models", "-n", namespace)["status"].get("phase") == "Bound",
            what="claim Bound",
        )
        assert get_json(cluster, "pvc", "models", "-n", namespace)["spec"]["volumeName"] == pv_name
    finally:
        cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)


def test_simulated_job_pod_can_succeed_and_the_job_completes(cluster: LocalCluster, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {SIM_COMPLETE_ANNOTATION: "true"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example.invalid/job:1"}],
                },
            },
        },
    }
    apply(cluster, namespace, job)
    cluster.kubectl("wait", "--for=condition=Complete", "job/once", "-n", namespace, "--timeout=90s")
    assert get_json(cluster, "job", "once", "-n", namespace)["status"]["succeeded"] == 2
