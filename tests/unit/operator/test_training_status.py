from __future__ import annotations

import datetime as dt
from typing import Any

from kubemaas_operator.training_status import (
    AttemptState,
    TrainingConditionType,
    TrainingPhase,
    attempt_failure,
    compute_training_status,
    render_training_conditions,
    training_status_patch,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def pod(index: int, phase: str = "Running", *, exit_code: int = 0, message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if phase == "Failed":
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}},
            }
        ]
    return {
        "metadata": {
            "name": f"mnist-r0-{index}-abcde",
            "labels": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": status,
    }


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "mnist-r0"}, "spec": {"suspend": False}, "status": status}


def state(**overrides: Any) -> AttemptState:
    values: dict[str, Any] = {
        "restarts": 0,
        "max_restarts": 3,
        "workers": 2,
        "job": job(active=2),
        "pods": [pod(0), pod(1)],
    }
    values.update(overrides)
    return AttemptState(**values)


def conditions(computed: Any) -> dict[str, Any]:
    return {c.type: c for c in computed.conditions}


def test_every_worker_running_is_running() -> None:
    computed = compute_training_status(state())
    assert computed.phase is TrainingPhase.RUNNING
    assert conditions(computed)[TrainingConditionType.RUNNING].status is True


def test_a_group_without_room_is_pending_and_says_what_is_missing() -> None:
    shortfall = "needs 2 pods x 16 nvidia.com/gpu; largest free on a node: 8"
    computed = compute_training_status(state(job=job(), pods=[], waiting_for_room=shortfall))
    assert computed.phase is TrainingPhase.PENDING
    admitted = conditions(computed)[TrainingConditionType.ADMITTED]
    assert (admitted.status, admitted.reason) == (False, "InsufficientResources")
    assert shortfall in admitted.message


def test_workers_not_yet_running_are_pending_with_the_scheduler_message() -> None:
    stuck = pod(1, "Pending")
    stuck["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available",
        }
    ]
    computed = compute_training_status(state(pods=[pod(0), stuck]))
    assert computed.phase is TrainingPhase.PENDING
    running = conditions(computed)[TrainingConditionType.RUNNING]
    assert running.reason == "Unschedulable"
    assert "0/4 nodes are available" in running.message


def test_a_failed_worker_with_restarts_left_restarts_the_group() -> None:
    pods = [pod(0), pod(1, "Failed", exit_code=1, message="CUDA out of memory")]
    computed = compute_training_status(state(pods=pods, restarts=1))
    assert computed.phase is TrainingPhase.RESTARTING
    assert computed.failure is not None and computed.failure.worker == 1
    assert "restart 2 of 3" in conditions(computed)[TrainingConditionType.RUNNING].message


def test_a_failed_worker_with_no_restarts_left_fails_naming_the_worker_and_reason() -> None:
    pods = [pod(0, "Failed", exit_code=3, message="loss is NaN"), pod(1)]
    computed = compute_training_status(state(pods=pods, restarts=3))
    assert computed.phase is TrainingPhase.FAILED
    failed = conditions(computed)[TrainingConditionType.FAILED]
    assert failed.status is True
    assert failed.message.startswith("worker 0 failed: Error: pod mnist-r0-0-abcde: exit code 3: loss is NaN")
    assert "no restarts left (3 of 3 used)" in failed.message


def test_an_evicted_worker_is_named_with_the_pod_reason() -> None:
    evicted = pod(0)
    evicted["status"] = {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}
    failure = attempt_failure(job(), [evicted])
    assert failure is not None
    assert (failure.reason, failure.message) == ("Evicted", "pod mnist-r0-0-abcde: node low on memory")


def test_the_lowest_failed_index_is_the_one_named() -> None:
    pods = [pod(3, "Failed", exit_code=1), pod(1, "Failed", exit_code=1)]
    failure = attempt_failure(job(), pods)
    assert failure is not None and failure.worker == 1


def test_a_passed_deadline_fails_at_once_without_a_restart() -> None:
    deadline = job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
    computed = compute_training_status(state(job=deadline, pods=[]))
    assert computed.phase is TrainingPhase.FAILED
    assert conditions(computed)[TrainingConditionType.FAILED].reason == "DeadlineExceeded"


def test_a_job_failed_by_the_job_controller_restarts_too() -> None:
    failed = job(conditions=[{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}])
    assert compute_training_status(state(job=failed, pods=[])).phase is TrainingPhase.RESTARTING


def test_a_complete_job_succeeds_and_publishes_the_output_uri() -> None:
    done = job(
        succeeded=2,
        startTime="2026-01-01T11:00:00Z",
        completionTime="2026-01-01T11:30:00Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    observed = state(job=done, pods=[pod(0, "Succeeded"), pod(1, "Succeeded")])
    computed = compute_training_status(observed)
    assert computed.phase is TrainingPhase.SUCCEEDED
    patch = training_status_patch(
        computed,
        observed,
        generation=1,
        job_name="mnist-r0",
        output_uri="pvc://models/mnist",
        previous={},
        now=NOW,
    )
    assert patch["output"] == {"uri": "pvc://models/mnist"}
    assert patch["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert patch["startTime"] == "2026-01-01T11:00:00Z"
    assert patch["completionTime"] == "2026-01-01T11:30:00Z"
    assert patch["restarts"] == 0


def test_no_output_uri_before_success() -> None:
    observed = state()
    patch = training_status_patch(
        compute_training_status(observed),
        observed,
        generation=1,
        job_name="mnist-r0",
        output_uri="pvc://models/mnist",
        previous={},
        now=NOW,
    )
    assert "output" not in patch
    assert patch["phase"] == "Running"


def test_condition_times_move_only_when_the_status_flips() -> None:
    computed = compute_training_status(state())
    earlier = render_training_conditions(computed.conditions, [], 1, NOW - dt.timedelta(hours=1))
    again = render_training_conditions(computed.conditions, earlier, 1, NOW)
    assert [c["lastTransitionTime"] for c in again] == [c["lastTransitionTime"] for c in earlier]
    assert [c["type"] for c in again] == ["Admitted", "Running", "Failed"]
