from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubemaas_operator.crd import render
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import SpecError
from kubemaas_operator.training_builders import build_job, build_worker_service, fits, pod_requests
from kubemaas_operator.training_spec import TrainingJobSpec, parse_training_job

SETTINGS = OperatorSettings(default_image="server:test", default_trainer_image="kubemaas:test")


def job_spec(**spec: Any) -> TrainingJobSpec:
    body = {
        "metadata": {"name": "mnist", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"command": ["python", "/app/train.py"], "workers": 2, **spec},
    }
    return parse_training_job(body, SETTINGS)


def env(job: dict[str, Any]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_crd_has_short_name_status_and_printer_columns() -> None:
    crd = yaml.safe_load(render("trainingjob.yaml"))
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["tj"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Workers", "Restarts", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["maxRestarts"]["default"] == 3


def test_procs_per_worker_defaults_to_the_gpu_count_and_output_path_to_the_name() -> None:
    spec = job_spec(gpu={"count": 4}, output={"pvc": "models"})
    assert spec.procs_per_worker == 4
    assert spec.output is not None and spec.output.uri == "pvc://models/mnist"
    assert job_spec().procs_per_worker == 1
    assert spec.image == "kubemaas:test"


def test_an_output_path_that_climbs_out_of_the_claim_is_refused() -> None:
    with pytest.raises(SpecError, match=r"\.\."):
        job_spec(output={"pvc": "models", "path": "a/../../etc"})


def test_the_worker_service_is_headless_on_the_rendezvous_port() -> None:
    service = build_worker_service(job_spec())
    assert service["metadata"]["name"] == "mnist-workers"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "trainer",
        "kubemaas.io/training-job": "mnist",
    }
    assert service["spec"]["ports"][0]["port"] == 29500


def test_each_attempt_is_an_indexed_job_that_fails_on_the_first_failed_worker() -> None:
    job = build_job(job_spec(activeDeadlineSeconds=600, ttlSecondsAfterFinished=60), 2, suspend=True)
    assert job["metadata"]["name"] == "mnist-r2"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0
    assert spec["suspend"] is True
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 60
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "mnist-workers"
    assert pod["containers"][0]["args"] == ["train", "--", "python", "/app/train.py"]


def test_workers_learn_the_group_from_their_environment() -> None:
    job = build_job(
        job_spec(procsPerWorker=2, output={"pvc": "models", "path": "runs/mnist"}), 1, suspend=False
    )
    assert env(job) == {
        "KUBEMAAS_WORKERS": "2",
        "KUBEMAAS_PROCS_PER_WORKER": "2",
        "KUBEMAAS_MASTER_ADDR": "mnist-r1-0.mnist-workers",
        "KUBEMAAS_MASTER_PORT": "29500",
        "KUBEMAAS_RESTART_COUNT": "1",
        "KUBEMAAS_OUTPUT_DIR": "/output/runs/mnist",
        "KUBEMAAS_CHECKPOINT_DIR": "/output/runs/mnist/.checkpoints",
    }
    pod = job["spec"]["template"]["spec"]
    assert {"name": "output", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]
    assert {"name": "output", "mountPath": "/output"} in pod["containers"][0]["volumeMounts"]


def test_gpus_become_limits_a_toleration_and_a_product_selector() -> None:
    job = build_job(job_spec(gpu={"count": 8, "product": "NVIDIA-H100-80GB-HBM3"}), 0, suspend=False)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_every_child_is_labelled_and_owned_by_the_training_job() -> None:
    spec = job_spec()
    for child in (build_worker_service(spec), build_job(spec, 0, suspend=False)):
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kubemaas"
        assert labels["app.kubernetes.io/name"] == "trainer"
        assert labels["kubemaas.io/training-job"] == "mnist"
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "TrainingJob",
            "mnist",
            "u-1",
            True,
        )
    template_labels = build_job(spec, 0, suspend=False)["spec"]["template"]["metadata"]["labels"]
    assert template_labels["kubemaas.io/training-job"] == "mnist"


def test_a_queue_is_named_on_the_job_for_kueue() -> None:
    job = build_job(job_spec(queue="team-a"), 0, suspend=True)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


# --- gang placement -------------------------------------------------------------------------------


def gpu_node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def cpu_node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "spec": {},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi"}},
    }


def bound_pod(node: str, gpus: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


def worker_pod(gpus: int) -> dict[str, Any]:
    job = build_job(job_spec(gpu={"count": gpus}), 0, suspend=True)
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


NODES = [cpu_node("cpu-0"), gpu_node("gpu-0"), gpu_node("gpu-1")]


def test_a_group_fits_when_every_worker_has_a_node() -> None:
    assert fits(2, worker_pod(4), NODES, []).fits
    assert fits(4, worker_pod(4), NODES, []).fits
    assert fits(2, worker_pod(8), NODES, []).fits


def test_no_worker_may_need_more_than_one_node_has() -> None:
    result = fits(2, worker_pod(16), NODES, [])
    assert not result.fits
    assert result.message.startswith("needs 2 pods x 16 nvidia.com/gpu; largest free on a node: 8")


def test_pods_bound_to_a_node_use_its_room_until_they_finish() -> None:
    busy = [bound_pod("gpu-0", 6), bound_pod("gpu-1", 6)]
    result = fits(2, worker_pod(4), NODES, busy)
    assert not result.fits
    assert "largest free on a node: 2" in result.message
    done = [bound_pod("gpu-0", 6, phase="Succeeded"), bound_pod("gpu-1", 6, phase="Failed")]
    assert fits(2, worker_pod(4), NODES, done).fits


def test_room_split_across_nodes_counts_whole_pods_only() -> None:
    # 4 + 4 GPUs free in total, but a worker needs 6 on one node.
    busy = [bound_pod("gpu-0", 4), bound_pod("gpu-1", 4)]
    assert not fits(1, worker_pod(6), NODES, busy).fits


def test_tainted_nodes_need_a_toleration_and_selectors_must_match() -> None:
    cpu_worker = build_job(job_spec(resources={"requests": {"cpu": "20"}}), 0, suspend=True)
    pod = cpu_worker["spec"]["template"]["spec"]
    # Only cpu-0 takes an untolerating pod, and it has room for one 20-CPU worker.
    assert fits(1, pod, NODES, []).fits
    assert not fits(2, pod, NODES, []).fits
    other_product = worker_pod(1) | {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"}}
    result = fits(1, other_product, NODES, [])
    assert not result.fits
    assert "no node matches" in result.message


def test_requests_add_up_across_containers_and_limits_stand_in_for_requests() -> None:
    pod = {
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "2"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "4"}}}],
    }
    requests = pod_requests(pod)
    assert requests["cpu"] == 4
    assert requests["memory"] == 1024**3
    assert requests["nvidia.com/gpu"] == 2


def test_pods_admitted_but_not_yet_bound_hold_their_room() -> None:
    unbound = [
        {"spec": {"containers": worker_pod(8)["containers"], "tolerations": worker_pod(8)["tolerations"]}}
        for _ in range(2)
    ]
    assert fits(2, worker_pod(8), NODES, []).fits
    result = fits(2, worker_pod(8), NODES, unbound)
    assert not result.fits
    assert "largest free on a node: 0" in result.message
