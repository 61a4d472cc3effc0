"""Every example in manifests/examples/ applies and becomes Ready as its comment says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import OperatorProcess, get, models_claim

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


def test_there_are_cpu_and_gpu_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"modelservice-cpu", "modelservice-gpu"}


def test_the_local_models_volume_example_binds_its_claim(cluster: LocalCluster) -> None:
    example = EXAMPLES[0].parent / "local-models-volume.yaml"
    cluster.kubectl("apply", "-f", str(example))
    try:
        cluster.kubectl(
            "wait", "--for=jsonpath={.status.phase}=Bound", "pvc/models", "-n", "default", "--timeout=60s"
        )
    finally:
        cluster.kubectl("delete", "-f", str(example), "--wait=false", check=False)
