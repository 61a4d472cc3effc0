"""A TrainingJob as the operator sees it: parsed once into immutable values.

The CRD has applied defaults and validated ranges (workers >= 1, procsPerWorker >= 1,
maxRestarts >= 0); parsing resolves what the schema cannot: the image and GPU resource from the
operator's settings, procsPerWorker from gpu.count, and the output path (default: the job's name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import GpuSpec, Scheduling, SpecError


@dataclass(frozen=True)
class OutputSpec:
    pvc: str
    path: str  # inside the claim, never empty, no leading slash

    @property
    def uri(self) -> str:
        return f"pvc://{self.pvc}/{self.path}"


@dataclass(frozen=True)
class TrainingJobSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    image: str
    command: tuple[str, ...]
    workers: int
    procs_per_worker: int
    gpu: GpuSpec | None
    resources: Mapping[str, Any]
    max_restarts: int
    output: OutputSpec | None
    scheduling: Scheduling
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    queue: str | None = None


def parse_training_job(body: Mapping[str, Any], settings: OperatorSettings) -> TrainingJobSpec:
    meta = body["metadata"]
    spec = body.get("spec") or {}
    command = tuple(str(part) for part in spec.get("command") or ())
    if not command:
        raise SpecError("spec.command must name the training program, e.g. [python, /app/train.py]")
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
    output_raw = spec.get("output")
    output = None
    if output_raw:
        path = str(output_raw.get("path") or meta["name"]).strip("/")
        if ".." in path.split("/"):
            raise SpecError(f"output.path {path!r} must not contain '..'")
        output = OutputSpec(pvc=str(output_raw["pvc"]), path=path)
    sched = spec.get("scheduling") or {}
    deadline = spec.get("activeDeadlineSeconds")
    ttl = spec.get("ttlSecondsAfterFinished")
    return TrainingJobSpec(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 0)),
        image=spec.get("image") or settings.default_trainer_image,
        command=command,
        workers=int(spec.get("workers", 1)),
        # One process per GPU is what torchrun with nccl wants; CPU jobs run one by default.
        procs_per_worker=int(spec.get("procsPerWorker") or (gpu.count if gpu else 1)),
        gpu=gpu,
        resources=spec.get("resources") or {},
        max_restarts=int(spec.get("maxRestarts", 3)),
        output=output,
        scheduling=Scheduling(
            node_selector=dict(sched.get("nodeSelector") or {}),
            tolerations=tuple(sched.get("tolerations") or ()),
            affinity=sched.get("affinity") or None,
            priority_class_name=sched.get("priorityClassName") or None,
        ),
        active_deadline_seconds=int(deadline) if deadline is not None else None,
        ttl_seconds_after_finished=int(ttl) if ttl is not None else None,
        queue=spec.get("queue") or None,
    )
