"""Pure status for a TrainingJob: the current attempt's Job and pods -> phase and conditions.

Phases: Pending (waiting for room for the whole group, or for its pods to start), Running
(every worker runs), Restarting (an attempt failed and the next one is not running yet),
Succeeded (every index completed), Failed (a worker failed with no restarts left, or the
deadline passed). The status says which worker failed and why, in the kubelet's words, and
what the gang check found missing while the group waits.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubemaas_operator.status import crashing, unschedulable

Body = Mapping[str, Any]

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# Job failures that a new attempt would only repeat.
FINAL_JOB_REASONS = frozenset({"DeadlineExceeded"})


class TrainingPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL = frozenset({TrainingPhase.SUCCEEDED, TrainingPhase.FAILED})


class TrainingConditionType(enum.StrEnum):
    ADMITTED = "Admitted"  # the gang fits and the Job may create its pods
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class TrainingCondition:
    type: TrainingConditionType
    status: bool | None
    reason: str
    message: str = ""


@dataclass(frozen=True)
class WorkerFailure:
    worker: int | None  # completion index; None when the Job failed as a whole
    reason: str
    message: str
    retryable: bool = True

    def describe(self) -> str:
        who = f"worker {self.worker}" if self.worker is not None else "the job"
        return (
            f"{who} failed: {self.reason}: {self.message}" if self.message else f"{who} failed: {self.reason}"
        )


@dataclass(frozen=True)
class AttemptState:
    """What the operator saw of the current attempt."""

    restarts: int
    max_restarts: int
    workers: int
    job: Body | None
    pods: Sequence[Body]
    waiting_for_room: str | None = None  # the gang check's shortfall while the Job is suspended


@dataclass(frozen=True)
class TrainingComputed:
    phase: TrainingPhase
    conditions: tuple[TrainingCondition, ...]
    failure: WorkerFailure | None = None


def _job_conditions(job: Body | None) -> dict[str, Mapping[str, Any]]:
    return {
        c["type"]: c
        for c in ((job or {}).get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }


def worker_index(pod: Body) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(
        COMPLETION_INDEX
    )
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def pod_failure(pod: Body) -> tuple[str, str]:
    """(reason, message) of a failed worker: its container's own exit first (what the training
    script said, OOMKilled, the exit code), the pod-level reason (Evicted, DeadlineExceeded) next."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            detail = f"exit code {terminated.get('exitCode')}"
            if terminated.get("message"):
                detail += f": {str(terminated['message']).strip()[-500:]}"
            return terminated.get("reason") or "Error", detail
    problem = crashing(pod)
    if problem is not None:
        return problem.reason, problem.message
    status = pod.get("status") or {}
    return status.get("reason") or "PodFailed", status.get("message") or "the pod failed"


def attempt_failure(job: Body | None, pods: Sequence[Body]) -> WorkerFailure | None:
    """The first failed worker (lowest index), else the Job's own failure, else None.

    A failed pod is enough: with backoffLimit 0 the Job fails because of it anyway, and acting
    on the pod saves the Job controller's round trip.
    """
    failed = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda pod: (worker_index(pod) is None, worker_index(pod) or 0))
    for pod in failed:
        reason, message = pod_failure(pod)
        return WorkerFailure(worker_index(pod), reason, f"pod {pod['metadata']['name']}: {message}")
    conditions = _job_conditions(job)
    for kind in ("Failed", "FailureTarget"):
        condition = conditions.get(kind)
        if condition is not None:
            reason = condition.get("reason") or "JobFailed"
            return WorkerFailure(
                None, reason, condition.get("message") or "", retryable=reason not in FINAL_JOB_REASONS
            )
    return None


def compute_training_status(state: AttemptState) -> TrainingComputed:
    job = state.job
    job_status = (job or {}).get("status") or {}
    live = [p for p in state.pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    failure = attempt_failure(job, state.pods)
    if failure is not None:
        if failure.retryable and state.restarts < state.max_restarts:
            message = (
                f"{failure.describe()}; restarting the group "
                f"(restart {state.restarts + 1} of {state.max_restarts})"
            )
            return TrainingComputed(
                TrainingPhase.RESTARTING,
                (
                    TrainingCondition(TrainingConditionType.RUNNING, False, "Restarting", message),
                    TrainingCondition(TrainingConditionType.FAILED, False, "Restarting", message),
                ),
                failure,
            )
        tail = (
            ""
            if not failure.retryable
            else f"; no restarts left ({state.restarts} of {state.max_restarts} used)"
        )
        message = failure.describe() + tail
        return TrainingComputed(
            TrainingPhase.FAILED,
            (
                TrainingCondition(TrainingConditionType.RUNNING, False, failure.reason, message),
                TrainingCondition(TrainingConditionType.SUCCEEDED, False, failure.reason, message),
                TrainingCondition(TrainingConditionType.FAILED, True, failure.reason, message),
            ),
            failure,
        )
    succeeded = int(job_status.get("succeeded") or 0)
    if "Complete" in _job_conditions(job) or (job is not None and succeeded >= state.workers):
        message = f"all {state.workers} workers completed"
        return TrainingComputed(
            TrainingPhase.SUCCEEDED,
            (
                TrainingCondition(TrainingConditionType.RUNNING, False, "Completed", message),
                TrainingCondition(TrainingConditionType.SUCCEEDED, True, "Completed", message),
                TrainingCondition(TrainingConditionType.FAILED, False, "Completed", message),
            ),
        )
    waiting_phase = TrainingPhase.RESTARTING if state.restarts > 0 else TrainingPhase.PENDING
    not_failed = TrainingCondition(TrainingConditionType.FAILED, False, "NoFailure")
    if state.waiting_for_room is not None:
        message = f"waiting for room for the whole group: {state.waiting_for_room}"
        return TrainingComputed(
            waiting_phase,
            (
                TrainingCondition(TrainingConditionType.ADMITTED, False, "InsufficientResources", message),
                TrainingCondition(TrainingConditionType.RUNNING, False, "NotAdmitted", message),
                not_failed,
            ),
        )
    admitted = TrainingCondition(
        TrainingConditionType.ADMITTED, True, "GroupFits", f"room for all {state.workers} workers"
    )
    if job is None:
        return TrainingComputed(
            waiting_phase,
            (
                admitted,
                TrainingCondition(
                    TrainingConditionType.RUNNING, False, "Creating", "the Job is being created"
                ),
                not_failed,
            ),
        )
    running = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
    if len(running) >= state.workers:
        return TrainingComputed(
            TrainingPhase.RUNNING,
            (
                admitted,
                TrainingCondition(
                    TrainingConditionType.RUNNING,
                    True,
                    "AllWorkersRunning",
                    f"{len(running)} workers running",
                ),
                not_failed,
            ),
        )
    stuck = [problem for problem in (unschedulable(p) for p in live) if problem]
    if stuck:
        reason, message = "Unschedulable", f"pod {stuck[0].pod}: {stuck[0].message}"
    else:
        reason, message = "WorkersStarting", f"{len(running)}/{state.workers} workers running"
    return TrainingComputed(
        waiting_phase,
        (admitted, TrainingCondition(TrainingConditionType.RUNNING, False, reason, message), not_failed),
    )


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_training_conditions(
    conditions: Iterable[TrainingCondition],
    previous: Sequence[Mapping[str, Any]],
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Kubernetes-style conditions; lastTransitionTime moves only when the status flips.
    Conditions the new state does not mention keep their last value."""
    before = {c.get("type"): c for c in previous}
    stamp = _stamp(now)
    rendered: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in before.items() if k}
    for condition in conditions:
        old = before.get(condition.type.value)
        status = "Unknown" if condition.status is None else str(condition.status)
        unchanged = old is not None and old.get("status") == status
        rendered[condition.type.value] = {
            "type": condition.type.value,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": old.get("lastTransitionTime", stamp) if unchanged and old else stamp,
            "observedGeneration": generation,
        }
    order = [t.value for t in TrainingConditionType]
    return sorted(
        rendered.values(), key=lambda c: order.index(c["type"]) if c["type"] in order else len(order)
    )


def training_status_patch(
    computed: TrainingComputed,
    state: AttemptState,
    *,
    generation: int,
    job_name: str,
    output_uri: str | None,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> dict[str, Any]:
    job_status = (state.job or {}).get("status") or {}
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": computed.phase.value,
        "restarts": state.restarts,
        "job": job_name,
        "workers": {
            "active": int(job_status.get("active") or 0),
            "succeeded": int(job_status.get("succeeded") or 0),
            "failed": int(job_status.get("failed") or 0),
        },
        "conditions": render_training_conditions(
            computed.conditions, previous.get("conditions") or [], generation, now
        ),
    }
    start = previous.get("startTime") or job_status.get("startTime")
    if start:
        patch["startTime"] = start
    if computed.phase in TERMINAL:
        patch["completionTime"] = (
            previous.get("completionTime") or job_status.get("completionTime") or _stamp(now)
        )
    if computed.failure is not None and computed.phase is TrainingPhase.FAILED:
        patch["message"] = computed.failure.describe()
    if computed.phase is TrainingPhase.SUCCEEDED and output_uri:
        patch["output"] = {"uri": output_uri}
    return patch
