"""Automatic rollback: which revision's pods should run now (pure).

The last revision that was Ready is kept in `status.stable` (its revision hash and its spec).
A newer revision whose pods crash (CrashLoopBackOff, a failed model load, OOMKilled, an image
that cannot be pulled) or that is not ready within `rollout.progressDeadlineSeconds` is rolled
back: the children go back to the stable spec, and `status.rolledBack` names the bad revision
and the cause. The spec keeps what the user wrote; the rollback holds until the spec changes
to yet another revision. With surge rollouts (maxUnavailable 0) the stable pods are never
taken down while this happens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubemaas_operator.builders import REVISION_LABEL
from kubemaas_operator.status import crashing, pod_ready

Body = Mapping[str, Any]


@dataclass(frozen=True)
class RevisionChoice:
    use_stable: bool
    rolled_back: dict[str, Any] | None  # the record for status.rolledBack, when it applies


def _revision(pod: Body) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    value = labels.get(REVISION_LABEL)
    return str(value) if value is not None else None


def choose_revision(
    *,
    current: str,
    stable: Mapping[str, Any] | None,
    rolled_back: Mapping[str, Any] | None,
    pods: Sequence[Body],
    progressing_since: dt.datetime | None,
    deadline_seconds: int,
    now: dt.datetime,
) -> RevisionChoice:
    if rolled_back and rolled_back.get("revision") == current:
        return RevisionChoice(True, dict(rolled_back))
    if not stable or stable.get("revision") == current:
        return RevisionChoice(False, None)
    new_pods = [
        p for p in pods if _revision(p) == current and not p.get("metadata", {}).get("deletionTimestamp")
    ]
    for pod in new_pods:
        problem = crashing(pod)
        if problem is not None:
            return RevisionChoice(
                True,
                {
                    "revision": current,
                    "to": stable.get("revision"),
                    "reason": problem.reason,
                    "message": f"revision {current} rolled back to {stable.get('revision')}: pod {problem.pod}: {problem.message}",
                },
            )
    overdue = progressing_since is not None and (now - progressing_since).total_seconds() > deadline_seconds
    if overdue and (not new_pods or not all(pod_ready(p) for p in new_pods)):
        return RevisionChoice(
            True,
            {
                "revision": current,
                "to": stable.get("revision"),
                "reason": "ProgressDeadlineExceeded",
                "message": f"revision {current} was not ready within {deadline_seconds}s; rolled back to {stable.get('revision')}",
            },
        )
    return RevisionChoice(False, None)
