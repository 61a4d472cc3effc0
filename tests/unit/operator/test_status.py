from __future__ import annotations

import datetime as dt
from typing import Any

from kubemaas_operator.status import (
    ObservedState,
    Phase,
    compute_status,
    render_conditions,
    same_status,
    status_patch,
    surge_blocked_by_gpus,
    with_replacement_rollout,
)

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def pod(
    name: str,
    *,
    ready: bool = True,
    scheduled: dict[str, str] | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if scheduled:
        conditions.append({"type": "PodScheduled", "status": "False", **scheduled})
    status: dict[str, Any] = {"phase": "Running" if ready else "Pending", "conditions": conditions}
    if container:
        status["containerStatuses"] = [{"name": "server", **container}]
    return {"metadata": {"name": name}, "status": status}


def deployment(replicas: int, *, updated: int | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "mlp", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def observe(pods: list[dict[str, Any]], desired: int = 2, dep: dict[str, Any] | None = None) -> ObservedState:
    return ObservedState(
        generation=4,
        desired_replicas=desired,
        deployment=dep or deployment(desired),
        pods=pods,
        endpoint="mlp.ml.svc:8001",
    )


def by_type(conditions: Any) -> dict[str, Any]:
    return {c.type.value: c for c in conditions}


def test_all_pods_ready_and_rolled_out_is_ready() -> None:
    status = compute_status(observe([pod("a"), pod("b")]))
    assert status.phase is Phase.READY
    assert by_type(status.conditions)["Ready"].status is True


def test_unschedulable_pods_carry_the_scheduler_message() -> None:
    message = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint."
    status = compute_status(
        observe([pod("a", ready=False, scheduled={"reason": "Unschedulable", "message": message})], desired=1)
    )
    conditions = by_type(status.conditions)
    assert conditions["Scheduled"].status is False
    assert conditions["Scheduled"].reason == "Unschedulable"
    assert message in conditions["Scheduled"].message
    assert conditions["Ready"].status is False
    assert status.phase is Phase.PENDING


def test_ready_is_never_true_while_a_pod_crash_loops_even_if_it_reports_ready() -> None:
    crashing = pod(
        "b",
        ready=True,
        container={
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {
                "terminated": {"exitCode": 1, "reason": "Error", "message": "model 'mlp' failed to load"}
            },
        },
    )
    status = compute_status(observe([pod("a"), crashing]))
    ready = by_type(status.conditions)["Ready"]
    assert ready.status is False
    assert ready.reason == "CrashLoopBackOff"
    assert "model 'mlp' failed to load" in ready.message
    assert status.phase is Phase.DEGRADED


def test_oom_kills_and_image_pull_failures_are_named() -> None:
    oom = pod(
        "a",
        ready=False,
        container={
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        },
    )
    assert by_type(compute_status(observe([oom], desired=1)).conditions)["Ready"].reason == "OOMKilled"
    pull = pod(
        "a",
        ready=False,
        container={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}},
    )
    status = compute_status(observe([pull], desired=1))
    assert by_type(status.conditions)["Ready"].reason == "ImagePullBackOff"
    assert status.phase is Phase.FAILED


def test_an_unfinished_rollout_is_progressing_not_ready() -> None:
    status = compute_status(observe([pod("a"), pod("b")], dep=deployment(2, updated=1)))
    conditions = by_type(status.conditions)
    assert conditions["Progressing"].status is True
    assert conditions["Ready"].status is False
    assert status.phase is Phase.PROGRESSING


def test_waiting_for_a_training_job_says_so() -> None:
    observed = ObservedState(
        generation=1,
        desired_replicas=1,
        deployment=None,
        pods=[],
        endpoint="",
        waiting_for="TrainingJob mnist has not succeeded yet",
    )
    status = compute_status(observed)
    assert status.phase is Phase.PENDING
    assert by_type(status.conditions)["ModelSourceReady"].reason == "WaitingForTrainingJob"


def test_transition_time_moves_only_when_the_status_flips() -> None:
    status = compute_status(observe([pod("a"), pod("b")]))
    first = render_conditions(status.conditions, [], 4, NOW)
    later = NOW + dt.timedelta(minutes=5)
    again = render_conditions(status.conditions, first, 4, later)
    assert [c["lastTransitionTime"] for c in again] == [c["lastTransitionTime"] for c in first]
    flipped = compute_status(observe([pod("a"), pod("b", ready=False)]))
    changed = {c["type"]: c for c in render_conditions(flipped.conditions, first, 5, later)}
    assert changed["Ready"]["lastTransitionTime"] == "2026-11-22T12:05:00Z"
    assert changed["Ready"]["observedGeneration"] == 5


def test_an_unchanged_status_is_not_rewritten() -> None:
    observed = observe([pod("a"), pod("b")])
    computed = compute_status(observed)
    first = status_patch(computed, observed=observed, previous={}, now=NOW, revision="r1")
    second = status_patch(
        computed, observed=observed, previous=first, now=NOW + dt.timedelta(hours=1), revision="r1"
    )
    assert same_status(second, first)
    assert not same_status({**second, "readyReplicas": 1}, first)


def gpu_pod(
    name: str,
    revision: str,
    *,
    pending_for: float,
    message: str = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
) -> dict[str, Any]:
    created = (NOW - dt.timedelta(seconds=pending_for)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pending = pod(name, ready=False, scheduled={"reason": "Unschedulable", "message": message})
    pending["metadata"].update({"labels": {"kubemaas.io/revision": revision}, "creationTimestamp": created})
    return pending


def running(name: str, revision: str) -> dict[str, Any]:
    item = pod(name)
    item["metadata"]["labels"] = {"kubemaas.io/revision": revision}
    return item


def test_a_surge_pod_starved_of_gpus_past_the_grace_blocks_the_rollout() -> None:
    pods = [running("old-1", "r1"), running("old-2", "r1"), gpu_pod("new-1", "r2", pending_for=20)]
    problem = surge_blocked_by_gpus(
        pods, revision="r2", gpu_resource="nvidia.com/gpu", now=NOW, grace_seconds=15
    )
    assert problem is not None and "Insufficient nvidia.com/gpu" in problem.message


def test_a_surge_pod_within_its_grace_or_starved_of_something_else_does_not() -> None:
    young = [running("old-1", "r1"), gpu_pod("new-1", "r2", pending_for=5)]
    assert (
        surge_blocked_by_gpus(young, revision="r2", gpu_resource="nvidia.com/gpu", now=NOW, grace_seconds=15)
        is None
    )
    cpu = [
        running("old-1", "r1"),
        gpu_pod("new-1", "r2", pending_for=60, message="0/4 nodes are available: 4 Insufficient cpu."),
    ]
    assert (
        surge_blocked_by_gpus(cpu, revision="r2", gpu_resource="nvidia.com/gpu", now=NOW, grace_seconds=15)
        is None
    )


def test_a_first_rollout_without_old_pods_is_never_switched_to_replacement() -> None:
    pods = [gpu_pod("new-1", "r2", pending_for=60)]
    assert (
        surge_blocked_by_gpus(pods, revision="r2", gpu_resource="nvidia.com/gpu", now=NOW, grace_seconds=15)
        is None
    )


def test_a_replacing_rollout_says_so_while_it_progresses() -> None:
    computed = compute_status(observe([pod("a"), pod("b")], dep=deployment(2, updated=1)))
    replaced = by_type(with_replacement_rollout(computed, "nvidia.com/gpu").conditions)["Progressing"]
    assert replaced.reason == "ReplacingForLackOfGPUs"
    assert "nvidia.com/gpu" in replaced.message
