"""Every example in manifests/examples/ applies and becomes Ready as its comment says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import (
    OperatorProcess,
    condition,
    eventually,
    get,
    models_claim,
)

pytestmark = pytest.mark.integration

EXAMPLES = sorted(
    (Path(__file__).resolve().parents[3] / "manifests" / "examples").glob("modelservice-*.yaml")
)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_model_service_becomes_ready(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str, example: Path
) -> None:
    models_claim(cluster, namespace)
    name = (
        cluster.kubectl("apply", "-n", namespace, "-f", str(example), "-o", "name")
        .stdout.strip()
        .split("/")[-1]
    )
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"ms/{name}", "-n", namespace, "--timeout=90s", timeout=100
    )
    before = settled(cluster, namespace, name)
    # Re-applying the same example is a no-op: GitOps tools see no churn.
    cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    ms = get(cluster, "ms", name, "-n", namespace)
    assert ms["metadata"]["generation"] == 1
    after = get(cluster, "deployment", name, "-n", namespace)["metadata"]
    assert (after["generation"], after["resourceVersion"]) == (
        before["generation"],
        before["resourceVersion"],
    )


def settled(cluster: LocalCluster, namespace: str, name: str) -> dict[str, object]:
    """The Deployment's metadata once controllers have stopped writing its status."""
    previous = get(cluster, "deployment", name, "-n", namespace)["metadata"]
    for _ in range(20):
        time.sleep(1.5)
        current = get(cluster, "deployment", name, "-n", namespace)["metadata"]
        if current["resourceVersion"] == previous["resourceVersion"]:
            return dict(current)
        previous = current
    raise AssertionError(f"deployment {name} never settled")


def test_there_are_cpu_gpu_and_canary_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"modelservice-cpu", "modelservice-gpu", "modelservice-canary"}


def test_the_canary_example_sends_a_change_to_a_quarter_of_the_replicas(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    example = EXAMPLES[0].parent / "modelservice-canary.yaml"
    cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/mlp-canary", "-n", namespace, "--timeout=90s", timeout=100
    )
    eventually(
        lambda: get(cluster, "ms", "mlp-canary", "-n", namespace)["status"].get("stable"),
        what="the stable revision recorded",
    )
    patch = '{"spec":{"model":{"uri":"pvc://models/mlp-v2"}}}'
    cluster.kubectl("patch", "ms", "mlp-canary", "-n", namespace, "--type=merge", "-p", patch)
    canary = eventually(
        lambda: get(cluster, "ms", "mlp-canary", "-n", namespace).get("status", {}).get("canary"),
        timeout=60,
        what="status.canary",
    )
    assert canary["percent"] == 25

    def split() -> tuple[int, int]:
        stable = get(cluster, "deployment", "mlp-canary", "-n", namespace)["spec"]["replicas"]
        new = get(cluster, "deployment", "mlp-canary-canary", "-n", namespace)["spec"]["replicas"]
        return stable, new

    eventually(lambda: split() == (3, 1), timeout=60, what="3 stable and 1 canary replicas")


def finish_workers(cluster: LocalCluster, namespace: str, training_job: str, workers: int) -> None:
    """The simulated workers run until told how they end; tell them they finished."""

    def running() -> list[str]:
        pods = get(cluster, "pods", "-n", namespace, "-l", f"kubemaas.io/training-job={training_job}")
        names = [p["metadata"]["name"] for p in pods["items"] if p["status"].get("phase") == "Running"]
        return names if len(names) == workers else []

    for pod in eventually(running, timeout=60, what=f"{workers} running workers of {training_job}"):
        cluster.kubectl("annotate", "pod", pod, "-n", namespace, "kubemaas.io/sim-complete=true")


def test_the_training_job_example_runs_its_workers_to_success_without_churn(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    example = str(EXAMPLES[0].parent / "trainingjob.yaml")
    cluster.kubectl("apply", "-n", namespace, "-f", example)
    finish_workers(cluster, namespace, "regressor", workers=2)
    cluster.kubectl(
        "wait", "--for=condition=Succeeded", "tj/regressor", "-n", namespace, "--timeout=60s", timeout=70
    )
    job = get(cluster, "trainingjob", "regressor", "-n", namespace)
    assert job["status"]["phase"] == "Succeeded"
    children = get(cluster, "jobs", "-n", namespace, "-l", "kubemaas.io/training-job=regressor")["items"]
    before = {j["metadata"]["name"]: j["metadata"]["resourceVersion"] for j in children}
    cluster.kubectl("apply", "-n", namespace, "-f", example)
    assert get(cluster, "trainingjob", "regressor", "-n", namespace)["metadata"]["generation"] == 1
    children = get(cluster, "jobs", "-n", namespace, "-l", "kubemaas.io/training-job=regressor")["items"]
    assert {j["metadata"]["name"]: j["metadata"]["resourceVersion"] for j in children} == before


def test_the_train_to_serve_example_waits_for_training_then_serves(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES[0].parent / "train-to-serve.yaml"))
    waiting = eventually(
        lambda: condition(get(cluster, "ms", "forecast", "-n", namespace), "ModelSourceReady"),
        timeout=60,
        what="ModelSourceReady on ms/forecast",
    )
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForTrainingJob")
    assert get(cluster, "ms", "forecast", "-n", namespace)["status"]["phase"] == "Pending"
    finish_workers(cluster, namespace, "forecast", workers=2)
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/forecast", "-n", namespace, "--timeout=90s", timeout=100
    )
    served = get(cluster, "deployment", "forecast", "-n", namespace)["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in served["volumes"] if "persistentVolumeClaim" in v
    ]
    assert claims == ["models"]


def test_the_local_models_volume_example_binds_its_claim(cluster: LocalCluster) -> None:
    example = EXAMPLES[0].parent / "local-models-volume.yaml"
    cluster.kubectl("apply", "-f", str(example))
    try:
        cluster.kubectl(
            "wait", "--for=jsonpath={.status.phase}=Bound", "pvc/models", "-n", "default", "--timeout=60s"
        )
    finally:
        cluster.kubectl("delete", "-f", str(example), "--wait=false", check=False)
