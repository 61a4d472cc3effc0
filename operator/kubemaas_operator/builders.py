"""Pure builders: a parsed ModelService -> the child manifests the operator applies.

Nothing here talks to the API server. Every child carries the design's labels and an
ownerReference to the ModelService, so deleting the ModelService garbage-collects it, and the
whole set is applied with server-side apply under one field manager, so a GitOps tool applying
the ModelService never fights the operator over the children.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubemaas_operator.crd import API_VERSION
from kubemaas_operator.spec import AutoscalingMetric, ModelServiceSpec, UriScheme

Manifest = dict[str, Any]

GRPC_PORT = 8001
METRICS_PORT = 8002
MODEL_ROOT = "/models"
TLS_ROOT = "/etc/kubemaas/tls"
SERVER_UID = 65532

MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "app.kubernetes.io/name"
MODEL_SERVICE_LABEL = "kubemaas.io/model-service"
REVISION_LABEL = "kubemaas.io/revision"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def selector_labels(spec: ModelServiceSpec) -> dict[str, str]:
    return {APP_NAME: "model-server", MODEL_SERVICE_LABEL: spec.name}


def child_labels(spec: ModelServiceSpec) -> dict[str, str]:
    return {MANAGED_BY: "kubemaas", **selector_labels(spec)}


def owner_reference(spec: ModelServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelService",
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(spec: ModelServiceSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": child_labels(spec),
        "ownerReferences": [owner_reference(spec)],
    }


@dataclass(frozen=True)
class ResolvedModel:
    """A trainingjob:// model, resolved: the job's output folder, and which run wrote it."""

    uri: str  # pvc://CLAIM/PATH
    # Differs for every successful run (the job's uid and completion time): a new run is a new
    # pod template, so the servers roll forward to the version it exported.
    run: str = ""


def model_volume(
    spec: ModelServiceSpec, resolved: ResolvedModel | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) for the model; `resolved` is a TrainingJob's output inside its claim.

    The server's repository is MODEL_ROOT; the model's own folder (model.yaml + versions) is
    mounted at MODEL_ROOT/<model name>, so pvc://claim/path points at that folder.
    """
    uri = spec.uri
    mount: dict[str, Any] = {
        "name": "model",
        "mountPath": f"{MODEL_ROOT}/{spec.model_name}",
        "readOnly": True,
    }
    if uri.scheme is UriScheme.FILE:
        return {"name": "model", "hostPath": {"path": uri.target, "type": "Directory"}}, mount
    if uri.scheme is UriScheme.PVC:
        claim, path = uri.target, uri.path
    else:
        if resolved is None:
            raise ValueError("a trainingjob:// model needs the TrainingJob's output resolved first")
        claim, _, path = resolved.uri.removeprefix("pvc://").partition("/")
    if path:
        mount["subPath"] = path
    return {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}, mount


def container_resources(spec: ModelServiceSpec) -> dict[str, Any]:
    resources = {key: dict(value) for key, value in spec.resources.items() if isinstance(value, dict)}
    if spec.gpu is not None:
        # Extended resources are limits-only; Kubernetes copies the limit to the request.
        resources.setdefault("limits", {})[spec.gpu.resource] = str(spec.gpu.count)
        resources.get("requests", {}).pop(spec.gpu.resource, None)
    return resources


def pod_scheduling(spec: ModelServiceSpec) -> dict[str, Any]:
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


def pod_template(spec: ModelServiceSpec, resolved: ResolvedModel | None = None) -> dict[str, Any]:
    volume, mount = model_volume(spec, resolved)
    # HTTP on the metrics port, not kubelet's gRPC probe: that one cannot speak TLS. The server
    # answers these paths from the same state as gRPC health (ready: every model loaded, not
    # draining).
    ready = {"httpGet": {"path": "/v2/health/ready", "port": "metrics"}}
    live = {"httpGet": {"path": "/v2/health/live", "port": "metrics"}}
    container: dict[str, Any] = {
        "name": "server",
        "image": spec.image,
        "args": [
            "serve",
            f"--model-repository={MODEL_ROOT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            # Inside the pod's own network namespace: the pod IP is what the Service reaches.
            "--host=0.0.0.0",
            # spec.batching over the model's model.yaml: a cap on rows per pass, and the wait.
            f"--max-batch-size={spec.max_batch_size}",
            f"--max-queue-delay-ms={spec.max_queue_delay_ms}",
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**live, "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 3},
        # The port opens once the models are loaded: up to 5 minutes for a large one.
        "startupProbe": {**live, "periodSeconds": 2, "failureThreshold": 150},
        "resources": container_resources(spec),
        "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resolved is not None and resolved.run:
        container["env"] = [{"name": "KUBEMAAS_MODEL_RUN", "value": resolved.run}]
    volumes = [volume, {"name": "tmp", "emptyDir": {}}]
    if spec.tls is not None:
        container["args"] += [f"--tls-cert={TLS_ROOT}/tls.crt", f"--tls-key={TLS_ROOT}/tls.key"]
        if spec.tls.client_auth:
            container["args"].append(f"--tls-client-ca={TLS_ROOT}/ca.crt")
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_ROOT, "readOnly": True})
        # Readable by the server's group only (fsGroup), never by other users of the node.
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls.secret_name, "defaultMode": 0o440}})
    pod_spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "fsGroup": SERVER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        **pod_scheduling(spec),
    }
    template = {"metadata": {"labels": child_labels(spec)}, "spec": pod_spec}
    template["metadata"]["labels"][REVISION_LABEL] = revision_of(template)
    return template


def revision_of(template: dict[str, Any]) -> str:
    """A short, stable hash of what makes pods of one revision differ from another's."""
    digest = hashlib.sha256(json.dumps(template["spec"], sort_keys=True).encode()).hexdigest()
    return digest[:10]


SURGE = {"maxSurge": 1, "maxUnavailable": 0}
# When no node has room for one more GPU pod, surging deadlocks: replace one pod at a time.
REPLACE = {"maxSurge": 0, "maxUnavailable": 1}


def build_deployment(
    spec: ModelServiceSpec,
    replicas: int | None,
    resolved: ResolvedModel | None = None,
    *,
    replace: bool = False,
) -> Manifest:
    """`replicas=None` leaves `spec.replicas` out, so the operator's field manager does not own
    it: a HorizontalPodAutoscaler does (metric cpu)."""
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "selector": {"matchLabels": selector_labels(spec)},
            # Surge first: a new pod must be ready before an old one goes (zero unavailable).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": dict(REPLACE if replace else SURGE)},
            "progressDeadlineSeconds": spec.progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            "template": pod_template(spec, resolved),
        },
    }
    if replicas is not None:
        deployment["spec"]["replicas"] = replicas
    return deployment


def replicas_handover(deployment: Manifest, replicas: int) -> Manifest:
    """The apply that hands `spec.replicas` over to a HorizontalPodAutoscaler.

    With server-side apply, a field its only manager stops applying is removed: dropping
    `replicas` from our Deployment would reset it to 1 until the HPA noticed. So, before our
    first apply without it, a second field manager applies just the current count (the
    Kubernetes docs' "transferring ownership" recipe); it keeps the value until the HPA's
    controller writes its own.
    """
    meta = deployment["metadata"]
    return {
        "apiVersion": deployment["apiVersion"],
        "kind": deployment["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": replicas},
    }


# The longest scale-down stabilization window autoscaling/v2 accepts.
HPA_MAX_STABILIZATION_SECONDS = 3600


def build_hpa(spec: ModelServiceSpec) -> Manifest:
    """metric cpu: a standard HPA on the Deployment, `target` as average CPU utilization percent.

    Utilization is relative to the pods' CPU requests, so `resources.requests.cpu` must be set
    for the HPA to act. `scaleDownDelaySeconds` becomes the scale-down stabilization window
    (at most an hour there). The HPA cannot scale to zero without a feature gate: its floor is 1.
    """
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": max(spec.min_replicas, 1),
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": spec.autoscaling_target},
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": min(
                        spec.scale_down_delay_seconds, HPA_MAX_STABILIZATION_SECONDS
                    )
                }
            },
        },
    }


TRACK_LABEL = "kubemaas.io/track"


def canary_name(spec: ModelServiceSpec) -> str:
    return f"{spec.name}-canary"


def build_canary_deployment(
    spec: ModelServiceSpec, replicas: int, resolved: ResolvedModel | None = None
) -> Manifest:
    """The new revision next to the stable Deployment, behind the same Service.

    Its selector adds a track label, so the two Deployments never claim each other's pods
    (the stable Deployment's own selector is immutable and stays as it was created).
    """
    deployment = build_deployment(spec, replicas, resolved)
    deployment["metadata"]["name"] = canary_name(spec)
    deployment["metadata"]["labels"][TRACK_LABEL] = "canary"
    deployment["spec"]["selector"]["matchLabels"][TRACK_LABEL] = "canary"
    deployment["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] = "canary"
    return deployment


def build_service(spec: ModelServiceSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_pdb(spec: ModelServiceSpec) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, spec.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def build_network_policy(spec: ModelServiceSpec) -> Manifest:
    """Only the gRPC and metrics ports of the server pods are reachable; nothing else is open.

    Named ports follow the container's ports, so a policy never lags a port change. Egress is
    left alone: a server dials nothing, but a cluster's DNS or storage may need to reach it.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"port": "grpc", "protocol": "TCP"},
                        {"port": "metrics", "protocol": "TCP"},
                    ]
                }
            ],
        },
    }


def endpoint(spec: ModelServiceSpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc:{GRPC_PORT}"


def build_children(
    spec: ModelServiceSpec, replicas: int, resolved: ResolvedModel | None = None, *, replace: bool = False
) -> list[Manifest]:
    """Every child the ModelService should have now; a PDB only when more than one replica runs.

    With metric cpu an HPA owns the Deployment's replica count (`replicas` then only decides
    the PDB); with concurrency the operator sets it.
    """
    hpa = spec.autoscaling_metric is AutoscalingMetric.CPU
    children = [
        build_deployment(spec, None if hpa else replicas, resolved, replace=replace),
        build_service(spec),
        build_network_policy(spec),
    ]
    if hpa:
        children.append(build_hpa(spec))
    if replicas > 1:
        children.append(build_pdb(spec))
    return children
