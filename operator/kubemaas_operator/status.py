"""Pure status: the children's real state -> the ModelService's phase and conditions.

The status says WHY a ModelService is not ready, in the words of whoever knows: the
scheduler's message for an unschedulable pod (`0/4 nodes are available: 2 Insufficient
nvidia.com/gpu, ...`), the kubelet's waiting reason (ImagePullBackOff, CrashLoopBackOff), the
last termination (OOMKilled, or the server's own message when the model failed to load).

Ready is True only when every pod the Deployment wants is ready, none of the current pods is
crashing, and the rollout is complete. A pod that restarts between probes can look ready for a
moment; its restart history keeps Ready False (the KServe complaint, kserve#1859).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Body = Mapping[str, Any]

CRASH_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "InvalidImageName",
        "RunContainerError",
    }
)


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionType(enum.StrEnum):
    READY = "Ready"
    SCHEDULED = "Scheduled"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    MODEL_SOURCE = "ModelSourceReady"
    ROLLED_BACK = "RolledBack"


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    def as_status(self) -> str:
        return "Unknown" if self.status is None else str(self.status)


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str


def _conditions(obj: Body) -> dict[str, Mapping[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", []) or []}


def unschedulable(pod: Body) -> PodProblem | None:
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return PodProblem(pod["metadata"]["name"], "Unschedulable", scheduled.get("message", ""))
    return None


def crashing(pod: Body) -> PodProblem | None:
    """The first container problem of a pod: a waiting reason that means trouble, or a bad exit."""
    name = pod["metadata"]["name"]
    status = pod.get("status", {})
    if status.get("phase") == "Failed":
        return PodProblem(name, status.get("reason") or "PodFailed", status.get("message", "the pod failed"))
    for container in status.get("containerStatuses", []) or []:
        state = container.get("state", {})
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in CRASH_REASONS:
            last = (container.get("lastState") or {}).get("terminated") or {}
            detail = last.get("message") or waiting.get("message") or ""
            reason = "OOMKilled" if last.get("reason") == "OOMKilled" else waiting["reason"]
            return PodProblem(name, reason, f"container {container['name']}: {detail}".strip().rstrip(":"))
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            reason = terminated.get("reason") or "Error"
            message = terminated.get("message") or f"exited with code {terminated.get('exitCode')}"
            return PodProblem(name, "ModelLoadFailed" if "model" in message.lower() else reason, message)
        if (container.get("lastState") or {}).get("terminated", {}).get("reason") == "OOMKilled":
            return PodProblem(name, "OOMKilled", f"container {container['name']} was killed for memory")
    return None


def pod_ready(pod: Body) -> bool:
    return bool(_conditions(pod).get("Ready", {}).get("status") == "True")


def _summarize(problems: Sequence[PodProblem]) -> str:
    first = problems[0]
    more = f" (and {len(problems) - 1} more pods)" if len(problems) > 1 else ""
    return f"pod {first.pod}: {first.message}{more}"


@dataclass(frozen=True)
class ObservedState:
    """What the operator saw of one ModelService's children."""

    generation: int
    desired_replicas: int
    deployment: Body | None
    pods: Sequence[Body]
    endpoint: str
    waiting_for: str | None = None  # e.g. a TrainingJob that has not succeeded yet


@dataclass(frozen=True)
class ComputedStatus:
    phase: Phase
    replicas: int
    ready_replicas: int
    conditions: tuple[Condition, ...]


def compute_status(observed: ObservedState) -> ComputedStatus:
    if observed.waiting_for is not None:
        waiting = Condition(ConditionType.MODEL_SOURCE, False, "WaitingForTrainingJob", observed.waiting_for)
        conditions = (
            Condition(ConditionType.READY, False, "WaitingForModel", observed.waiting_for),
            waiting,
        )
        return ComputedStatus(Phase.PENDING, 0, 0, conditions)
    live_pods = [p for p in observed.pods if not p.get("metadata", {}).get("deletionTimestamp")]
    ready = sum(1 for p in live_pods if pod_ready(p))
    unsched = [p for p in (unschedulable(pod) for pod in live_pods) if p]
    crashes = [p for p in (crashing(pod) for pod in live_pods) if p]
    deployment = observed.deployment
    dep_status = (deployment or {}).get("status", {})
    dep_spec_replicas = int((deployment or {}).get("spec", {}).get("replicas", observed.desired_replicas))
    rollout_done = bool(
        deployment
        and dep_status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and dep_status.get("updatedReplicas", 0) >= dep_spec_replicas
        and dep_status.get("replicas", 0) <= dep_spec_replicas
    )

    scheduled = (
        Condition(ConditionType.SCHEDULED, False, "Unschedulable", _summarize(unsched))
        if unsched
        else Condition(ConditionType.SCHEDULED, True, "AllPodsScheduled", f"{len(live_pods)} pods scheduled")
    )
    serving = ready > 0 or observed.desired_replicas == 0
    available = Condition(
        ConditionType.AVAILABLE,
        serving,
        "MinimumReplicasAvailable" if serving else "NoReplicasAvailable",
        f"{ready}/{observed.desired_replicas} replicas ready",
    )
    progressing = (
        Condition(
            ConditionType.PROGRESSING, False, "RolloutComplete", "every replica runs the current revision"
        )
        if rollout_done
        else Condition(
            ConditionType.PROGRESSING, True, "RollingOut", _rollout_message(dep_status, dep_spec_replicas)
        )
    )
    if deployment is None:
        ready_cond = Condition(
            ConditionType.READY, False, "DeploymentMissing", "the Deployment is being created"
        )
    elif crashes:
        ready_cond = Condition(ConditionType.READY, False, crashes[0].reason, _summarize(crashes))
    elif unsched:
        ready_cond = Condition(ConditionType.READY, False, "Unschedulable", _summarize(unsched))
    elif ready < observed.desired_replicas:
        ready_cond = Condition(
            ConditionType.READY,
            False,
            "ReplicasNotReady",
            f"{ready}/{observed.desired_replicas} replicas ready",
        )
    elif not rollout_done:
        ready_cond = Condition(ConditionType.READY, False, "RollingOut", progressing.message)
    else:
        ready_cond = Condition(ConditionType.READY, True, "ModelServing", f"serving at {observed.endpoint}")

    if ready_cond.status:
        phase = Phase.READY
    elif crashes or unsched:
        phase = Phase.DEGRADED if ready > 0 else (Phase.FAILED if crashes else Phase.PENDING)
    elif ready > 0 or (deployment is not None and live_pods):
        phase = Phase.PROGRESSING
    else:
        phase = Phase.PENDING
    return ComputedStatus(
        phase=phase,
        replicas=len(live_pods),
        ready_replicas=ready,
        conditions=(ready_cond, scheduled, available, progressing),
    )


def surge_blocked_by_gpus(
    pods: Sequence[Body], *, revision: str, gpu_resource: str, now: dt.datetime, grace_seconds: float
) -> PodProblem | None:
    """A pod of the new revision that no node can take for lack of GPUs, for longer than the grace.

    Only a rollout can be blocked this way: pods of another revision must still be running,
    holding the GPUs the new pod needs (the classic single-GPU rollout deadlock).
    """
    revision_label = "kubemaas.io/revision"
    old_running = any(
        (p.get("metadata", {}).get("labels") or {}).get(revision_label) not in (None, revision) for p in pods
    )
    if not old_running:
        return None
    for pod in pods:
        meta = pod.get("metadata", {})
        if (meta.get("labels") or {}).get(revision_label) != revision:
            continue
        problem = unschedulable(pod)
        if problem is None or f"Insufficient {gpu_resource}" not in problem.message:
            continue
        created = meta.get("creationTimestamp")
        if (
            created
            and (now - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
            >= grace_seconds
        ):
            return problem
    return None


def with_replacement_rollout(computed: ComputedStatus, gpu_resource: str) -> ComputedStatus:
    """Say why this rollout replaces pods instead of surging, while it is still rolling out."""
    conditions = []
    for condition in computed.conditions:
        if condition.type is ConditionType.PROGRESSING and condition.status:
            condition = Condition(
                ConditionType.PROGRESSING,
                True,
                "ReplacingForLackOfGPUs",
                f"no node has room for a surge pod's {gpu_resource}: replacing one pod at a time "
                f"(one replica fewer until done); {condition.message}",
            )
        conditions.append(condition)
    return ComputedStatus(computed.phase, computed.replicas, computed.ready_replicas, tuple(conditions))


def _rollout_message(dep_status: Mapping[str, Any], wanted: int) -> str:
    updated = dep_status.get("updatedReplicas", 0)
    return f"{updated}/{wanted} replicas on the current revision"


def render_conditions(
    conditions: Iterable[Condition], previous: Sequence[Mapping[str, Any]], generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """Kubernetes-style conditions; lastTransitionTime moves only when the status flips."""
    before = {c.get("type"): c for c in previous}
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rendered = []
    for condition in conditions:
        old = before.get(condition.type.value)
        status = condition.as_status()
        unchanged = old is not None and old.get("status") == status
        rendered.append(
            {
                "type": condition.type.value,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old.get("lastTransitionTime", stamp) if unchanged and old else stamp,
                "observedGeneration": generation,
            }
        )
    return rendered


def status_patch(
    computed: ComputedStatus,
    *,
    observed: ObservedState,
    previous: Mapping[str, Any],
    now: dt.datetime,
    revision: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status to write; `extra` fields set to None are removed (merge-patch null)."""
    return {
        **dict(extra or {}),
        "observedGeneration": observed.generation,
        "phase": computed.phase.value,
        "replicas": computed.replicas,
        "readyReplicas": computed.ready_replicas,
        "desiredReplicas": observed.desired_replicas,
        "endpoint": observed.endpoint,
        "revision": revision,
        "conditions": render_conditions(
            computed.conditions, previous.get("conditions", []) or [], observed.generation, now
        ),
    }


def same_status(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Equal apart from timestamps: no status write (and no watch event) when nothing changed."""

    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k != "conditions" and v is not None}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions", []) or []
        ]
        return out

    return strip(new) == strip(old)
