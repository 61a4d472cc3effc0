"""The operator outlives its control plane: kube-apiserver and etcd stop and start again under
it, it reconnects and resumes its watches, and whatever changed afterwards converges, for
ModelServices and TrainingJobs alike, without the operator process ever exiting."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from kubemaas_cluster.controlplane import start_component, stop_component
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

OUTAGE_SECONDS = 4.0


def training_job(name: str) -> dict[str, object]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"image": "kubemaas-trainer:test", "command": ["python", "/app/train.py"], "workers": 2},
    }


def outage(cluster: LocalCluster, component: str) -> float:
    """Stop `component`, wait, start it again; seconds until the API server answers again."""
    assert cluster.state_dir is not None
    stop_component(cluster.state_dir, component)
    time.sleep(OUTAGE_SECONDS)
    started = time.monotonic()
    start_component(cluster.state_dir, component)
    eventually(
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0,
        timeout=120,
        what=f"the API server ready after {component} came back",
    )
    return time.monotonic() - started


def converged(cluster: LocalCluster, namespace: str, name: str, replicas: int) -> bool:
    ms = get(cluster, "ms", name, "-n", namespace)
    status = ms.get("status") or {}
    return (
        status.get("observedGeneration") == ms["metadata"]["generation"]
        and condition(ms, "Ready").get("status") == "True"
        and status.get("readyReplicas") == replicas
        and get(cluster, "deployment", name, "-n", namespace)["spec"]["replicas"] == replicas
    )


def finish_workers(cluster: LocalCluster, namespace: str, job: str) -> None:
    def running() -> list[str]:
        pods = get(cluster, "pods", "-n", namespace, "-l", f"kubemaas.io/training-job={job}")["items"]
        names = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
        return names if len(names) == 2 else []

    for pod in eventually(running, timeout=90, what=f"the workers of {job} running"):
        cluster.kubectl("annotate", "pod", pod, "-n", namespace, "kubemaas.io/sim-complete=true")


def test_api_server_and_etcd_restarts_under_the_operator_then_everything_converges(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    if cluster.state_dir is None:
        pytest.skip("KUBEMAAS_TEST_CLUSTER=existing: this test stops control-plane processes it does not own")
    models_claim(cluster, namespace)
    apply = lambda *objs: cluster.kubectl(  # noqa: E731
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(list(objs))
    )
    apply(model_service("steady"), training_job("tj-before"))
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/steady", "-n", namespace, "--timeout=90s", timeout=100
    )

    # 1. kube-apiserver goes away and comes back: every watch of the operator breaks.
    api_back = outage(cluster, "kube-apiserver")
    patch = json.dumps({"spec": {"minReplicas": 2}})
    cluster.kubectl("patch", "ms", "steady", "-n", namespace, "--type=merge", "-p", patch)
    apply(model_service("after-api"), training_job("tj-after"))
    eventually(lambda: converged(cluster, namespace, "steady", 2), timeout=120, what="steady at 2 replicas")
    eventually(lambda: converged(cluster, namespace, "after-api", 1), timeout=120, what="after-api Ready")
    for job in ("tj-before", "tj-after"):
        finish_workers(cluster, namespace, job)
        cluster.kubectl(
            "wait", "--for=condition=Succeeded", f"tj/{job}", "-n", namespace, "--timeout=90s", timeout=100
        )

    # 2. etcd goes away and comes back: the API server answers errors, then recovers.
    etcd_back = outage(cluster, "etcd")
    patch = json.dumps({"spec": {"minReplicas": 1, "maxReplicas": 1}})
    cluster.kubectl("patch", "ms", "steady", "-n", namespace, "--type=merge", "-p", patch)
    cluster.kubectl("delete", "ms", "after-api", "-n", namespace)
    eventually(
        lambda: converged(cluster, namespace, "steady", 1), timeout=120, what="steady back at 1 replica"
    )
    eventually(
        lambda: (
            not get(cluster, "deployments", "-n", namespace, "-l", "kubemaas.io/model-service=after-api")[
                "items"
            ]
        ),
        timeout=120,
        what="after-api's children collected",
    )
    print(
        f"\nAPI ready {api_back:.1f}s after kube-apiserver restarted, {etcd_back:.1f}s after etcd restarted"
    )

    assert operator.proc.poll() is None, "the operator exited during the outages"
    log = operator.logs()
    assert "Traceback" not in log, log[-3000:]
