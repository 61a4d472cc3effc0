"""Pure builders for a TrainingJob: the headless Service, the Indexed Job of one attempt, and
the gang check that decides when that Job may start.

Each attempt (the first run and every group restart) is its own Job, `NAME-r<restart>`: pods of
a failed attempt never share a DNS name, a completion index or a Job status with the next one,
and KUBEMAAS_RESTART_COUNT tells the training script to resume from its checkpoints. Pod 0 of
an attempt is reachable at `NAME-r<restart>-0.NAME-workers` (an Indexed Job's pod hostname is
`<job name>-<index>`; the pod template's subdomain names the headless Service).

Gang placement: the Job is created suspended (no pods) and unsuspended only when the cluster
has room for every worker at once (`fits`), so a partial group never sits on GPUs waiting for
the rest. The check is the scheduler's arithmetic in small: node allocatable minus the requests
of the pods already bound there, on the nodes the pods could land on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from kubemaas_operator.builders import APP_NAME, GPU_PRODUCT_LABEL, GPU_TAINT_KEY, MANAGED_BY
from kubemaas_operator.crd import API_VERSION
from kubemaas_operator.training_spec import TrainingJobSpec
from kubemaas_trainer.launch_settings import DEFAULT_MASTER_PORT, PodEnv

Manifest = dict[str, Any]

TRAINING_JOB_LABEL = "kubemaas.io/training-job"
RESTART_LABEL = "kubemaas.io/restart"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
OUTPUT_ROOT = "/output"
CHECKPOINTS = ".checkpoints"
TRAINER_UID = 65532


def selector_labels(spec: TrainingJobSpec) -> dict[str, str]:
    return {APP_NAME: "trainer", TRAINING_JOB_LABEL: spec.name}


def child_labels(spec: TrainingJobSpec) -> dict[str, str]:
    return {MANAGED_BY: "kubemaas", **selector_labels(spec)}


def owner_reference(spec: TrainingJobSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def service_name(spec: TrainingJobSpec) -> str:
    return f"{spec.name}-workers"


def job_name(spec: TrainingJobSpec, restart: int) -> str:
    return f"{spec.name}-r{restart}"


def master_address(spec: TrainingJobSpec, restart: int) -> str:
    return f"{job_name(spec, restart)}-0.{service_name(spec)}"


def _metadata(spec: TrainingJobSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": child_labels(spec),
        "ownerReferences": [owner_reference(spec)],
    }


def build_worker_service(spec: TrainingJobSpec) -> Manifest:
    """Headless: no virtual IP, only the per-pod DNS records torch.distributed dials."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, service_name(spec)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(spec),
            # Workers resolve each other before they are ready (the rendezvous makes them ready).
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": DEFAULT_MASTER_PORT, "protocol": "TCP"}],
        },
    }


def worker_resources(spec: TrainingJobSpec) -> dict[str, Any]:
    resources = {key: dict(value) for key, value in spec.resources.items() if isinstance(value, dict)}
    if spec.gpu is not None:
        # Extended resources are limits-only; Kubernetes copies the limit to the request.
        resources.setdefault("limits", {})[spec.gpu.resource] = str(spec.gpu.count)
        resources.get("requests", {}).pop(spec.gpu.resource, None)
    return resources


def worker_scheduling(spec: TrainingJobSpec) -> dict[str, Any]:
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if spec.gpu is not None:
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
        if spec.gpu.product:
            node_selector[GPU_PRODUCT_LABEL] = spec.gpu.product
    node_selector.update(spec.scheduling.node_selector)
    tolerations += [dict(t) for t in spec.scheduling.tolerations if dict(t) not in tolerations]
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.scheduling.affinity:
        out["affinity"] = dict(spec.scheduling.affinity)
    if spec.scheduling.priority_class_name:
        out["priorityClassName"] = spec.scheduling.priority_class_name
    return out


def worker_env(spec: TrainingJobSpec, restart: int) -> list[dict[str, str]]:
    """PodEnv for `kubemaas train`; JOB_COMPLETION_INDEX comes from the Indexed Job itself."""
    env = {
        PodEnv.WORKERS: str(spec.workers),
        PodEnv.PROCS_PER_WORKER: str(spec.procs_per_worker),
        PodEnv.MASTER_ADDR: master_address(spec, restart),
        PodEnv.MASTER_PORT: str(DEFAULT_MASTER_PORT),
        PodEnv.RESTART_COUNT: str(restart),
    }
    if spec.output is not None:
        env[PodEnv.OUTPUT_DIR] = f"{OUTPUT_ROOT}/{spec.output.path}"
        env[PodEnv.CHECKPOINT_DIR] = f"{OUTPUT_ROOT}/{spec.output.path}/{CHECKPOINTS}"
    return [{"name": var.value, "value": value} for var, value in env.items()]


def build_job(spec: TrainingJobSpec, restart: int, *, suspend: bool) -> Manifest:
    """One attempt: an Indexed Job whose first failed pod fails the whole Job at once
    (backoffLimit 0), because a torch.distributed group cannot continue without a member; the
    reconciler then replaces the Job as a whole (the next attempt)."""
    labels = {**child_labels(spec), RESTART_LABEL: str(restart)}
    job_labels = dict(labels)
    if spec.queue:
        job_labels[QUEUE_LABEL] = spec.queue
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.output is not None:
        mounts.append({"name": "output", "mountPath": OUTPUT_ROOT})
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc}})
    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image,
        "args": ["train", "--", *spec.command],
        "env": worker_env(spec, restart),
        "ports": [{"name": "rendezvous", "containerPort": DEFAULT_MASTER_PORT, "protocol": "TCP"}],
        "resources": worker_resources(spec),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service_name(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        **worker_scheduling(spec),
    }
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.workers,
        "parallelism": spec.workers,
        "backoffLimit": 0,
        "suspend": suspend,
        "manualSelector": False,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    metadata = _metadata(spec, job_name(spec, restart))
    metadata["labels"] = job_labels
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


# --- gang placement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    fits: bool
    message: str


def _quantity(value: Any) -> Decimal:
    return Decimal(parse_quantity(value))


def pod_requests(pod_spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves for a pod: the sum of its containers' requests (a limit
    stands in for a missing request), or its largest init container's, whichever is more."""

    def of(container: Mapping[str, Any]) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: _quantity(value) for name, value in merged.items()}

    total: dict[str, Decimal] = {}
    for container in pod_spec.get("containers") or []:
        for name, amount in of(container).items():
            total[name] = total.get(name, Decimal(0)) + amount
    for container in pod_spec.get("initContainers") or []:
        for name, amount in of(container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    return total


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("key") and toleration.get("key") != taint.get("key"):
            continue
        if not toleration.get("key") and toleration.get("operator") != "Exists":
            continue
        if toleration.get("operator") == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def eligible(node: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> bool:
    """Could the scheduler consider this node at all: ready, schedulable, selector matches, taints
    tolerated. (Affinity is left to the scheduler; the check errs towards "fits".)"""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    if conditions.get("Ready") not in (None, "True"):
        return False
    labels = meta.get("labels") or {}
    if any(labels.get(key) != value for key, value in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(
        _tolerates(tolerations, taint)
        for taint in spec.get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def free_resources(node: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> dict[str, Decimal]:
    name = (node.get("metadata") or {}).get("name")
    free = {
        resource: _quantity(value)
        for resource, value in ((node.get("status") or {}).get("allocatable") or {}).items()
    }
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") != name:
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for resource, amount in pod_requests(pod.get("spec") or {}).items():
            free[resource] = free.get(resource, Decimal(0)) - amount
    return free


def _fmt(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount == amount.to_integral_value() else str(amount)


def _reserve(
    requests: Mapping[str, Decimal],
    pod_spec: Mapping[str, Any],
    nodes: Sequence[Mapping[str, Any]],
    free_all: dict[Any, dict[str, Decimal]],
) -> None:
    for node in nodes:
        free = free_all[(node.get("metadata") or {}).get("name")]
        if eligible(node, pod_spec) and all(free.get(r, Decimal(0)) >= a for r, a in requests.items()):
            for resource, amount in requests.items():
                free[resource] = free.get(resource, Decimal(0)) - amount
            return


def fits(
    workers: int,
    pod_spec: Mapping[str, Any],
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> Fit:
    """Whether `workers` pods like `pod_spec` can all be placed now, packing nodes greedily.

    `pods` are the cluster's pods: those bound to a node count against it; those not bound yet
    (a group admitted a moment ago, which the scheduler has not placed) are set aside first, on
    the first node they fit, so two groups never count the same free GPUs. The message names
    the shortfall in the words a user asks about: which resource, how much, and the most any
    one node has free.
    """
    wanted = {resource: amount for resource, amount in pod_requests(pod_spec).items() if amount > 0}
    candidates = [node for node in nodes if eligible(node, pod_spec)]
    if not candidates:
        return Fit(False, f"needs {workers} pods; no node matches their node selector and tolerations")
    free_all = {(node.get("metadata") or {}).get("name"): free_resources(node, pods) for node in nodes}
    for pod in pods:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") or spec.get("schedulingGates"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        _reserve(pod_requests(spec), spec, nodes, free_all)
    free_by_node = [free_all[(node.get("metadata") or {}).get("name")] for node in candidates]
    room = 0
    for free in free_by_node:
        room += min(
            (int(free.get(resource, Decimal(0)) // amount) for resource, amount in wanted.items()),
            default=workers,
        )
    if room >= workers:
        return Fit(True, f"room for {workers} pods on {len(candidates)} eligible nodes")
    # Name the resource that limits most: the one with the fewest pods' worth free anywhere.
    scarcest = min(
        wanted,
        key=lambda resource: sum(
            max(int(free.get(resource, Decimal(0)) // wanted[resource]), 0) for free in free_by_node
        ),
    )
    largest = max(max(free.get(scarcest, Decimal(0)), Decimal(0)) for free in free_by_node)
    return Fit(
        False,
        f"needs {workers} pods x {_fmt(wanted[scarcest])} {scarcest}; "
        f"largest free on a node: {_fmt(largest)} (room for {room} of {workers} pods)",
    )
