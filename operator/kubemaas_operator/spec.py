"""A ModelService as the operator sees it: parsed once into immutable values.

The API server has already applied the CRD's defaults and validation, so parsing here only
turns the dict into typed values and resolves what the schema cannot (the model URI into a
volume, defaults that come from the operator's settings).
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemaas_operator.settings import OperatorSettings


class UriScheme(enum.StrEnum):
    PVC = "pvc"
    TRAINING_JOB = "trainingjob"
    FILE = "file"


class AutoscalingMetric(enum.StrEnum):
    CONCURRENCY = "concurrency"  # the operator's own autoscaler (autoscaler_loop.py)
    CPU = "cpu"  # a HorizontalPodAutoscaler owns the Deployment's replicas


class SpecError(ValueError):
    """The spec passed the CRD but cannot be served (e.g. file:// without the dev flag)."""


@dataclass(frozen=True)
class ModelUri:
    scheme: UriScheme
    target: str  # claim name, TrainingJob name, or host path
    path: str  # inside the claim ("" for its root)

    @classmethod
    def parse(cls, uri: str) -> ModelUri:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            raise SpecError(f"model.uri {uri!r} has no scheme; use pvc://, trainingjob:// or file://")
        try:
            kind = UriScheme(scheme)
        except ValueError:
            raise SpecError(f"model.uri scheme {scheme!r} is not one of pvc, trainingjob, file") from None
        if ".." in rest.split("/"):
            raise SpecError(f"model.uri {uri!r} must not contain '..'")
        if kind is UriScheme.FILE:
            return cls(kind, posixpath.normpath("/" + rest.lstrip("/")), "")
        target, _, path = rest.partition("/")
        if not target:
            raise SpecError(f"model.uri {uri!r} names no {kind.value} target")
        return cls(kind, target, path.strip("/"))


@dataclass(frozen=True)
class GpuSpec:
    count: int
    resource: str
    product: str | None


@dataclass(frozen=True)
class Scheduling:
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None


@dataclass(frozen=True)
class TlsSpec:
    secret_name: str  # a kubernetes.io/tls Secret: tls.crt, tls.key (and ca.crt for client_auth)
    client_auth: bool = False


@dataclass(frozen=True)
class ModelServiceSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    model_name: str
    uri: ModelUri
    image: str
    min_replicas: int
    max_replicas: int
    gpu: GpuSpec | None
    resources: Mapping[str, Any]
    max_batch_size: int
    max_queue_delay_ms: int
    canary_percent: int
    progress_deadline_seconds: int
    scheduling: Scheduling
    autoscaling_metric: AutoscalingMetric = AutoscalingMetric.CONCURRENCY
    autoscaling_target: int = 8
    scale_down_delay_seconds: int = 60
    tls: TlsSpec | None = None


def parse_model_service(body: Mapping[str, Any], settings: OperatorSettings) -> ModelServiceSpec:
    meta = body["metadata"]
    spec = body.get("spec", {})
    model = spec["model"]
    uri = ModelUri.parse(model["uri"])
    if uri.scheme is UriScheme.FILE and not settings.allow_file_uris:
        raise SpecError(
            "file:// model URIs are for development clusters; start the operator with --dev-allow-file-uris"
        )
    gpu_raw = spec.get("gpu")
    gpu = (
        GpuSpec(
            count=int(gpu_raw["count"]),
            resource=gpu_raw.get("resource") or settings.gpu_resource,
            product=gpu_raw.get("product") or None,
        )
        if gpu_raw
        else None
    )
    sched = spec.get("scheduling") or {}
    autoscaling = spec.get("autoscaling") or {}
    batching = spec.get("batching") or {}
    rollout = spec.get("rollout") or {}
    tls_raw = spec.get("tls")
    tls = TlsSpec(str(tls_raw["secretName"]), bool(tls_raw.get("clientAuth", False))) if tls_raw else None
    return ModelServiceSpec(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 0)),
        model_name=model.get("name") or meta["name"],
        uri=uri,
        image=spec.get("image") or settings.default_image,
        min_replicas=int(spec.get("minReplicas", 1)),
        max_replicas=int(spec.get("maxReplicas", 4)),
        gpu=gpu,
        resources=spec.get("resources") or {},
        max_batch_size=int(batching.get("maxBatchSize", 32)),
        max_queue_delay_ms=int(batching.get("maxQueueDelayMs", 2)),
        canary_percent=int(rollout.get("canaryPercent", 0)),
        progress_deadline_seconds=int(rollout.get("progressDeadlineSeconds", 600)),
        tls=tls,
        scheduling=Scheduling(
            node_selector=dict(sched.get("nodeSelector") or {}),
            tolerations=tuple(sched.get("tolerations") or ()),
            affinity=sched.get("affinity") or None,
            priority_class_name=sched.get("priorityClassName") or None,
        ),
        autoscaling_metric=AutoscalingMetric(autoscaling.get("metric", "concurrency")),
        autoscaling_target=int(autoscaling.get("target", 8)),
        scale_down_delay_seconds=int(autoscaling.get("scaleDownDelaySeconds", 60)),
    )
