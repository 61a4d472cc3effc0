"""TrainingJobs against a real control plane: the operator's Jobs, gang admission, group
restarts and the hand-off to a ModelService, with KWOK deciding how each worker ends."""

from __future__ import annotations

from typing import Any

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


def training_job(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": "kubemaas-trainer:test", "command": ["python", "/app/train.py"], **spec}
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def pods_of(cluster: LocalCluster, namespace: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(cluster, "pods", "-n", namespace, "-l", f"job-name={job}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def running(cluster: LocalCluster, namespace: str, job: str, count: int) -> list[dict[str, Any]]:
    pods = [p for p in pods_of(cluster, namespace, job) if p["status"].get("phase") == "Running"]
    return pods if len(pods) == count else []


def tj_status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(cluster, "trainingjob", name, "-n", namespace).get("status", {})
    return status


def annotate(cluster: LocalCluster, namespace: str, pod: dict[str, Any], annotation: str) -> None:
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, annotation, "--overwrite")


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env", [])}


def test_gpu_workers_get_a_headless_service_and_an_indexed_job_then_serve_the_output(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    models_claim(cluster, namespace)
    apply(
        cluster,
        namespace,
        training_job("mnist", workers=2, gpu={"count": 4}, output={"pvc": "models", "path": "mnist"}),
    )

    service = eventually(lambda: get(cluster, "service", "mnist-workers", "-n", namespace), what="Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "trainer",
        "kubemaas.io/training-job": "mnist",
    }
    assert [p["port"] for p in service["spec"]["ports"]] == [29500]

    job = eventually(lambda: get(cluster, "job", "mnist-r0", "-n", namespace), what="Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == "mnist-workers"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"

    pods = eventually(lambda: running(cluster, namespace, "mnist-r0", 2), what="2 running workers")
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
        container = pod["spec"]["containers"][0]
        assert container["args"] == ["train", "--", "python", "/app/train.py"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        env = env_of(pod)
        assert env["KUBEMAAS_WORKERS"] == "2"
        assert env["KUBEMAAS_PROCS_PER_WORKER"] == "4"
        assert env["KUBEMAAS_MASTER_ADDR"] == "mnist-r0-0.mnist-workers"
        assert env["KUBEMAAS_OUTPUT_DIR"] == "/output/mnist"
        assert env["KUBEMAAS_CHECKPOINT_DIR"] == "/output/mnist/.checkpoints"
        assert env["KUBEMAAS_RESTART_COUNT"] == "0"
    eventually(lambda: tj_status(cluster, namespace, "mnist").get("phase") == "Running", what="Running")

    apply(cluster, namespace, model_service("served", model={"uri": "trainingjob://mnist"}))
    for pod in pods:
        annotate(cluster, namespace, pod, "kubemaas.io/sim-complete=true")
    status = eventually(
        lambda: (s := tj_status(cluster, namespace, "mnist")).get("phase") == "Succeeded" and s,
        what="Succeeded",
    )
    assert status["output"] == {"uri": "pvc://models/mnist"}
    assert status["workers"]["succeeded"] == 2
    assert status["completionTime"]
    # Woken by the TrainingJob, not by its 120 s resync.
    eventually(
        lambda: (
            condition(get(cluster, "modelservice", "served", "-n", namespace), "Ready").get("status")
            == "True"
        ),
        timeout=45,
        what="ModelService serving the training output Ready",
    )

    # A later successful run of the same TrainingJob rolls the ModelService forward to it.
    def served_run() -> str:
        template = get(cluster, "deployment", "served", "-n", namespace)["spec"]["template"]
        return env_of(template)["KUBEMAAS_MODEL_RUN"]

    first_run = served_run()
    cluster.kubectl("delete", "trainingjob", "mnist", "-n", namespace)
    apply(
        cluster,
        namespace,
        training_job("mnist", workers=2, gpu={"count": 4}, output={"pvc": "models", "path": "mnist"}),
    )
    for pod in eventually(
        lambda: running(cluster, namespace, "mnist-r0", 2), what="the second run's workers"
    ):
        annotate(cluster, namespace, pod, "kubemaas.io/sim-complete=true")
    eventually(lambda: served_run() != first_run, timeout=60, what="the servers rolled to the second run")
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/served", "-n", namespace, "--timeout=60s", timeout=70
    )


def test_a_group_that_cannot_fit_never_starts_a_pod_and_says_why(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, training_job("huge", workers=2, gpu={"count": 16}))
    admitted = eventually(
        lambda: (
            condition(get(cluster, "trainingjob", "huge", "-n", namespace), "Admitted").get("status")
            == "False"
            and condition(get(cluster, "trainingjob", "huge", "-n", namespace), "Admitted")
        ),
        what="Admitted=False",
    )
    assert admitted["reason"] == "InsufficientResources"
    assert "needs 2 pods x 16 nvidia.com/gpu; largest free on a node: " in admitted["message"]
    assert tj_status(cluster, namespace, "huge")["phase"] == "Pending"
    assert get(cluster, "job", "huge-r0", "-n", namespace)["spec"]["suspend"] is True
    assert pods_of(cluster, namespace, "huge-r0") == []


def test_a_failed_worker_restarts_the_whole_group(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, training_job("flaky", workers=2))
    pods = eventually(lambda: running(cluster, namespace, "flaky-r0", 2), what="2 running workers")
    worker_1 = next(
        p for p in pods if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
    )
    annotate(cluster, namespace, worker_1, "kubemaas.io/sim-fail=true")

    restarted = eventually(
        lambda: running(cluster, namespace, "flaky-r1", 2), what="the next attempt running"
    )
    assert {env_of(p)["KUBEMAAS_RESTART_COUNT"] for p in restarted} == {"1"}
    assert {env_of(p)["KUBEMAAS_MASTER_ADDR"] for p in restarted} == {"flaky-r1-0.flaky-workers"}
    status = eventually(
        lambda: (s := tj_status(cluster, namespace, "flaky")).get("phase") == "Running" and s,
        what="Running again",
    )
    assert status["restarts"] == 1
    eventually(
        lambda: cluster.kubectl("get", "job", "flaky-r0", "-n", namespace, check=False).returncode != 0,
        what="the failed attempt deleted",
    )


def test_with_no_restarts_left_a_failure_ends_the_job_failed(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, training_job("once", workers=1, maxRestarts=0))
    (pod,) = eventually(lambda: running(cluster, namespace, "once-r0", 1), what="the worker running")
    annotate(cluster, namespace, pod, "kubemaas.io/sim-fail=true")
    status = eventually(
        lambda: (s := tj_status(cluster, namespace, "once")).get("phase") == "Failed" and s, what="Failed"
    )
    failed = condition({"status": status}, "Failed")
    assert failed["status"] == "True"
    assert "worker 0 failed" in failed["message"]
    assert "no restarts left" in failed["message"]
    assert status["restarts"] == 0
    assert cluster.kubectl("get", "job", "once-r1", "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "workers must be at least 1"),
        ("procsPerWorker", 0, "procsPerWorker must be at least 1"),
        ("maxRestarts", -1, "maxRestarts must not be negative"),
        ("output", {"pvc": "models", "path": "../../etc"}, "output.path must not contain '..' path segments"),
        ("resources", {"requests": {"nvidia.com/gpu": 1}}, "cannot be overcommitted"),
    ],
)
def test_bad_training_jobs_are_refused_with_the_rule_message(
    operator_installed: LocalCluster, namespace: str, field: str, value: object, message: str
) -> None:
    result = operator_installed.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(training_job("bad", **{field: value})),
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
