"""ModelService end to end on the local control plane, with the operator running as a process."""

from __future__ import annotations

import functools

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


def apply(cluster: LocalCluster, namespace: str, body: dict[str, object]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def wait_ready(cluster: LocalCluster, namespace: str, name: str, timeout: int = 90) -> None:
    cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"ms/{name}",
        "-n",
        namespace,
        f"--timeout={timeout}s",
        timeout=timeout + 10,
    )


def test_gpu_model_service_gets_deployment_service_pdb_on_gpu_nodes_and_becomes_ready(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    apply(cluster, namespace, model_service("llm", gpu={"count": 2}, minReplicas=2, maxReplicas=3))
    wait_ready(cluster, namespace, "llm")

    deployment = get(cluster, "deployment", "llm", "-n", namespace)
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "kubemaas"
    assert labels["kubemaas.io/model-service"] == "llm"
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelService", "llm", True)
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v2/health/ready", "metrics")
    assert container["args"][0] == "serve"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    service = get(cluster, "service", "llm", "-n", namespace)
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc_port["port"], grpc_port["appProtocol"]) == (8001, "grpc")
    assert get(cluster, "pdb", "llm", "-n", namespace)["spec"]["maxUnavailable"] == 1

    pods = get(cluster, "pods", "-n", namespace, "-l", "kubemaas.io/model-service=llm")["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("kwok-gpu-") for p in pods)

    ms = get(cluster, "ms", "llm", "-n", namespace)
    assert ms["status"]["phase"] == "Ready"
    assert ms["status"]["readyReplicas"] == 2
    assert ms["status"]["endpoint"] == f"llm.{namespace}.svc:8001"
    assert ms["status"]["observedGeneration"] == ms["metadata"]["generation"]
    table = cluster.kubectl("get", "ms", "llm", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "READY", "REPLICAS", "MODEL", "GPUS", "ENDPOINT", "AGE"]
    assert "pvc://models/mlp" in table and "Ready" in table


def test_too_many_gpus_reports_the_scheduler_message_then_recovers_when_lowered(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    apply(cluster, namespace, model_service("big", gpu={"count": 16}))

    def unscheduled() -> dict[str, object]:
        ms = get(cluster, "ms", "big", "-n", namespace)
        scheduled = condition(ms, "Scheduled")
        return ms if scheduled.get("status") == "False" else {}

    ms = eventually(unscheduled, what="Scheduled=False")
    scheduled = condition(ms, "Scheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert ms["status"]["phase"] != "Ready"
    assert condition(ms, "Ready")["status"] == "False"

    cluster.kubectl(
        "patch", "ms", "big", "-n", namespace, "--type=merge", "-p", '{"spec":{"gpu":{"count":4}}}'
    )
    wait_ready(cluster, namespace, "big")
    assert condition(get(cluster, "ms", "big", "-n", namespace), "Scheduled")["status"] == "True"


def test_children_deleted_or_edited_by_hand_are_restored_and_deleting_the_service_collects_them(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    apply(cluster, namespace, model_service("drift", minReplicas=2))
    wait_ready(cluster, namespace, "drift")
    first_uid = get(cluster, "deployment", "drift", "-n", namespace)["metadata"]["uid"]

    cluster.kubectl("delete", "deployment", "drift", "-n", namespace)
    recreated = eventually(
        lambda: (
            (d := get(cluster, "deployments", "-n", namespace)["items"])
            and d[0]["metadata"]["uid"] != first_uid
            and d[0]
        ),
        what="the Deployment recreated",
    )
    assert recreated["metadata"]["name"] == "drift"

    cluster.kubectl("scale", "deployment", "drift", "-n", namespace, "--replicas=5")
    eventually(
        lambda: get(cluster, "deployment", "drift", "-n", namespace)["spec"]["replicas"] == 2,
        what="replicas restored",
    )

    cluster.kubectl("delete", "service", "drift", "-n", namespace)
    eventually(
        lambda: cluster.kubectl("get", "service", "drift", "-n", namespace, check=False).returncode == 0,
        what="Service restored",
    )

    policy = get(cluster, "networkpolicy", "drift", "-n", namespace)["spec"]
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == ["grpc", "metrics"]
    cluster.kubectl("delete", "networkpolicy", "drift", "-n", namespace)
    eventually(
        lambda: (
            cluster.kubectl("get", "networkpolicy", "drift", "-n", namespace, check=False).returncode == 0
        ),
        what="NetworkPolicy restored",
    )

    cluster.kubectl("delete", "ms", "drift", "-n", namespace)

    def collected(kind: str) -> bool:
        return not get(cluster, kind, "-n", namespace, "-l", "kubemaas.io/model-service=drift")["items"]

    for kind in ("deployment", "service", "pdb", "networkpolicy"):
        eventually(functools.partial(collected, kind), what=f"{kind} garbage-collected")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas must not exceed maxReplicas"),
        ({"rollout": {"canaryPercent": 150}}, "rollout.canaryPercent must be between 0 and 100"),
        ({"model": {"uri": "ftp://x"}}, "model.uri must start with pvc://, trainingjob:// or file://"),
        ({"model": {"uri": "pvc://claim/../../etc"}}, "model.uri must not contain '..' path segments"),
        ({"gpu": {"count": 0}}, "gpu.count must be at least 1 when gpu is set"),
    ],
)
def test_bad_model_services_are_refused_by_the_api_server_with_the_rule_message(
    operator_installed: LocalCluster, namespace: str, spec: dict[str, object], message: str
) -> None:
    result = operator_installed.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(model_service("bad", **spec)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_file_uri_without_the_development_flag_fails_in_status_and_creates_nothing(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, namespace, model_service("local", model={"uri": "file:///srv/models/mlp"}))
    ms = eventually(
        lambda: (
            (m := get(cluster, "ms", "local", "-n", namespace)).get("status", {}).get("phase") == "Failed"
            and m
        ),
        what="phase Failed",
    )
    ready = condition(ms, "Ready")
    assert ready["reason"] == "InvalidSpec" and "--dev-allow-file-uris" in ready["message"]
    assert not get(cluster, "deployments", "-n", namespace)["items"]
