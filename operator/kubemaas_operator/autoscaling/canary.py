"""Splitting a replica count between the stable and the canary revision.

`split_replicas(total, canary_percent)` keeps the canary's share as the autoscaler changes the
total. The canary gets `total * percent / 100` rounded half up, then two floors apply:

- a canary asked for (1..99 percent) always gets at least one replica, or it would never see
  traffic and could never prove itself;
- with two or more replicas the stable revision keeps at least one, so a small total never
  hands all traffic to the unproven revision.

With a single replica and 1..99 percent the two floors conflict; the canary's wins (the
rollout asked to try the new revision; the rollback deadline guards it). 0 percent is all
stable, 100 percent all canary. Both parts are non-decreasing in `total`, so scaling up never
takes a replica away from either revision.
"""

from __future__ import annotations


def split_replicas(total: int, canary_percent: int) -> tuple[int, int]:
    """(stable, canary) replicas for `total` replicas with `canary_percent` on the canary."""
    if total < 0:
        raise ValueError(f"total replicas must not be negative, got {total}")
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be between 0 and 100, got {canary_percent}")
    if canary_percent == 0 or total == 0:
        return total, 0
    if canary_percent == 100:
        return 0, total
    canary = (total * canary_percent + 50) // 100  # round half up, in integers
    canary = max(canary, 1)
    if total >= 2:
        canary = min(canary, total - 1)
    return total - canary, canary
