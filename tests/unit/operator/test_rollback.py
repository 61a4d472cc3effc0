from __future__ import annotations

import datetime as dt
from typing import Any

from kubemaas_operator.rollback import choose_revision

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
STABLE = {"revision": "r1", "spec": {"image": "server:1"}}


def pod(revision: str, *, ready: bool = True, waiting: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if waiting:
        status["containerStatuses"] = [
            {"name": "server", "state": {"waiting": {"reason": waiting, "message": "back-off"}}}
        ]
    return {
        "metadata": {"name": f"p-{revision}", "labels": {"kubemaas.io/revision": revision}},
        "status": status,
    }


def choose(pods: list[dict[str, Any]], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "current": "r2",
        "stable": STABLE,
        "rolled_back": None,
        "pods": pods,
        "progressing_since": NOW,
        "deadline_seconds": 600,
        "now": NOW + dt.timedelta(seconds=30),
    }
    return choose_revision(**{**args, **kw})


def test_a_crashing_new_revision_is_rolled_back_naming_the_cause() -> None:
    choice = choose([pod("r1"), pod("r1"), pod("r2", ready=False, waiting="CrashLoopBackOff")])
    assert choice.use_stable
    assert choice.rolled_back is not None
    assert (choice.rolled_back["revision"], choice.rolled_back["to"], choice.rolled_back["reason"]) == (
        "r2",
        "r1",
        "CrashLoopBackOff",
    )


def test_a_healthy_rollout_in_progress_is_left_alone() -> None:
    choice = choose([pod("r1"), pod("r2", ready=False)])
    assert not choice.use_stable and choice.rolled_back is None


def test_a_new_revision_not_ready_past_the_deadline_is_rolled_back() -> None:
    choice = choose([pod("r1"), pod("r2", ready=False)], now=NOW + dt.timedelta(seconds=601))
    assert choice.use_stable
    assert choice.rolled_back is not None and choice.rolled_back["reason"] == "ProgressDeadlineExceeded"


def test_a_rollback_holds_until_the_spec_moves_to_another_revision() -> None:
    record = {"revision": "r2", "to": "r1", "reason": "CrashLoopBackOff", "message": "..."}
    assert choose([pod("r1")], rolled_back=record).use_stable
    assert not choose([pod("r1")], current="r3", rolled_back=record).use_stable


def test_without_a_stable_revision_there_is_nothing_to_roll_back_to() -> None:
    assert not choose([pod("r2", ready=False, waiting="CrashLoopBackOff")], stable=None).use_stable
