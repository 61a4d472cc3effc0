"""The concurrency autoscaler's decision: window state + pod samples + spec -> replicas and why.

`decide` is pure (no clock, no I/O: `now` comes in, the new window state goes out inside the
`Decision`), so every rule below is unit-tested and simulated without a cluster. The operator
calls it once per round (every couple of seconds) with one `PodSample` per pod of the
ModelService and writes `Decision.replicas` to the Deployment and `Decision.reason` to status.

The rules, in the order they apply:

1. Measure, never guess. A pod that is not ready, or whose `/metrics` scrape failed, is left out
   and named in `Decision.excluded`. The measured total is the sum over the rest; a failed scrape
   is not filled in with an average of the others. If no pod could be measured the count is held
   (mode HOLD) and the scale-down clock restarts.
2. Demand. `replicas = ceil(total_in_flight / (target * target_utilization))`, clamped to
   `[max(minReplicas, 1), maxReplicas]`. `target_utilization` is 1.0 unless a caller asks for
   headroom (0.8 scales up when replicas run 80% full). The floor is at least 1 because this
   autoscaler learns demand from the pods themselves: with zero pods there is nothing to scrape
   and no request buffer (Knative's activator) to wake it, so it could never scale up again.
3. Stable window (default 60 s): the mean of the measured totals over the window gives the
   stable count. Scaling up to it happens at once.
4. Panic window (default 6 s): when the short-window mean is at least `panic_threshold` (2.0)
   times the current capacity (ready pods x target), the round panics and may scale up to the
   panic count if that is higher than the stable one. The panic window never scales down. Panic
   mode lasts one stable window past the last panicking round; during it nothing scales down.
5. Scale-down happens only after `scale_down_delay_seconds` of sustained lower demand: every
   round within the delay wanted fewer replicas than now run, and the history covers the whole
   delay. A round wants fewer only when fewer would still carry 10% more than the stable demand
   (`scale_down_tolerance`, as the HPA's tolerance): a load that sits on a replica boundary
   would otherwise go down and straight back up once per delay. The new count is the largest
   wanted within the delay, and one step never removes more than `max_scale_down_fraction`
   (half) of the replicas (at least one, so it makes progress). While a ready pod's scrape
   failed the measured total is only a lower bound, so no scale-down.
6. Bounds win: a count outside `[floor, maxReplicas]` (say after the user lowered maxReplicas)
   moves inside at once, whatever the windows say.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from kubemaas_operator.autoscaling.windows import WindowState

if TYPE_CHECKING:
    from kubemaas_operator.spec import ModelServiceSpec

# Floating-point sums of in-flight gauges (40.000000000000007 / 8) must not round a count up.
_CEIL_TOLERANCE = 1e-9


class Mode(enum.Enum):
    """How a decision was made; `Decision.reason` says the rest."""

    STABLE = "stable"  # from the stable window (scaling up, holding, or scaling down)
    PANIC = "panic"  # panic mode: scaled up from the panic window, or holding because of it
    HOLD = "hold"  # nothing could be measured: the count is held (or only moved into bounds)


class PodSample(NamedTuple):
    """One pod at one round. `in_flight` is None when the scrape of its `/metrics` failed."""

    pod: str
    ready: bool
    in_flight: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalingSpec:
    """The knobs of one ModelService's autoscaler, plus the replica count it runs now.

    `current_replicas` is the Deployment's `spec.replicas` as read this round (what the last
    decision asked for), not the ready count: capacity comes from the ready pods in the samples.
    """

    target: float
    current_replicas: int
    min_replicas: int = 1
    max_replicas: int = 4
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 6.0
    panic_threshold: float = 2.0
    scale_down_delay_seconds: float = 60.0
    max_scale_down_fraction: float = 0.5
    scale_down_tolerance: float = 0.1
    target_utilization: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.target > 0:
            problems.append(f"target must be positive, got {self.target}")
        if self.current_replicas < 0:
            problems.append(f"current_replicas must not be negative, got {self.current_replicas}")
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            problems.append(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got {self.min_replicas}..{self.max_replicas}"
            )
        if not 0 < self.panic_window_seconds <= self.stable_window_seconds:
            problems.append(
                f"need 0 < panic_window_seconds <= stable_window_seconds, "
                f"got {self.panic_window_seconds} and {self.stable_window_seconds}"
            )
        if not self.panic_threshold >= 1:
            problems.append(f"panic_threshold must be at least 1, got {self.panic_threshold}")
        if not self.scale_down_delay_seconds >= 0:
            problems.append(
                f"scale_down_delay_seconds must not be negative, got {self.scale_down_delay_seconds}"
            )
        if not 0 < self.max_scale_down_fraction <= 1:
            problems.append(f"max_scale_down_fraction must be in (0, 1], got {self.max_scale_down_fraction}")
        if not 0 <= self.scale_down_tolerance < 1:
            problems.append(f"scale_down_tolerance must be in [0, 1), got {self.scale_down_tolerance}")
        if not 0 < self.target_utilization <= 1:
            problems.append(f"target_utilization must be in (0, 1], got {self.target_utilization}")
        if problems:
            raise ValueError("invalid autoscaling spec: " + "; ".join(problems))

    @classmethod
    def from_model_service(cls, spec: ModelServiceSpec, *, current_replicas: int) -> AutoscalingSpec:
        """The CRD's fields (`autoscaling.target`, `scaleDownDelaySeconds`, min/max replicas)."""
        return cls(
            target=float(spec.autoscaling_target),
            current_replicas=current_replicas,
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            scale_down_delay_seconds=float(spec.scale_down_delay_seconds),
        )

    @property
    def floor(self) -> int:
        """The fewest replicas this autoscaler runs: minReplicas, but never zero (rule 2)."""
        return max(self.min_replicas, 1)

    def clamp(self, replicas: int) -> int:
        return max(self.floor, min(self.max_replicas, replicas))

    def replicas_for(self, in_flight: float) -> int:
        """ceil(in_flight / (target * utilization)) within the bounds."""
        per_replica = self.target * self.target_utilization
        return self.clamp(math.ceil(in_flight / per_replica - _CEIL_TOLERANCE))

    def replicas_to_keep(self, in_flight: float) -> int:
        """The count a scale-down may go to: enough for the demand plus the tolerance (rule 5)."""
        return self.replicas_for(in_flight * (1 + self.scale_down_tolerance))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one round: what to set, why, and the state to pass to the next round."""

    replicas: int
    previous_replicas: int
    mode: Mode
    reason: str
    state: WindowState
    excluded: tuple[str, ...] = ()
    ready_replicas: int = 0
    stable_in_flight: float | None = None
    panic_in_flight: float | None = None

    @property
    def changed(self) -> bool:
        """True when the Deployment's replica count must change (an Event is worth emitting)."""
        return self.replicas != self.previous_replicas


def decide(state: WindowState, samples: Sequence[PodSample], spec: AutoscalingSpec, now: float) -> Decision:
    """One autoscaler round; see the module docstring for the rules in order."""
    current = spec.current_replicas
    excluded: list[str] = []
    measured: list[float] = []
    ready = unmeasured_ready = not_ready = 0
    for sample in samples:
        if not sample.ready:
            not_ready += 1
            excluded.append(f"{sample.pod}: not ready")
            continue
        ready += 1
        if sample.in_flight is None:
            unmeasured_ready += 1
            excluded.append(f"{sample.pod}: scrape failed")
            continue
        measured.append(sample.in_flight)
    left_out = _left_out(not_ready, unmeasured_ready)

    if not measured:
        state = state.forget_wanted()
        replicas = spec.clamp(current)
        why = "no pods to measure" if not samples else f"no pod could be measured ({left_out})"
        if replicas != current:
            reason = f"{_verb(current, replicas)}: {_bounds_reason(spec, current)}; {why}"
        else:
            reason = f"hold {current}: {why}"
        return Decision(replicas, current, Mode.HOLD, reason, state, tuple(excluded), ready)

    total = sum(measured)
    state = state.observe(now, total, keep_seconds=max(spec.stable_window_seconds, spec.panic_window_seconds))
    stable = state.average(now, spec.stable_window_seconds)
    panic = state.average(now, spec.panic_window_seconds)
    assert stable is not None and panic is not None  # this round's observation is in both windows
    stable_want = spec.replicas_for(stable)
    panic_want = spec.replicas_for(panic)
    capacity = ready * spec.target
    panicking = panic >= spec.panic_threshold * capacity
    panic_until = now + spec.stable_window_seconds if panicking else state.panic_until
    if panic_until is not None and now >= panic_until:
        panic_until = None
    state = state.with_panic_until(panic_until)
    in_panic = panic_until is not None

    # The panic window only ever raises the count, and only in a panicking round.
    from_panic = panicking and panic_want > stable_want
    want = panic_want if from_panic else stable_want
    mode = Mode.PANIC if in_panic else Mode.STABLE
    # What the scale-down clock sees: a round only counts as lower demand beyond the tolerance.
    keep = max(want, spec.replicas_to_keep(stable))
    state = state.want(now, keep, delay_seconds=spec.scale_down_delay_seconds)

    def decision(replicas: int, reason: str) -> Decision:
        suffix = f"; left out {left_out}" if left_out else ""
        return Decision(
            replicas, current, mode, reason + suffix, state, tuple(excluded), ready, stable, panic
        )

    stable_says = f"demand {stable:.1f} in-flight over {spec.stable_window_seconds:g}s needs {stable_want}"
    if want > current:
        if from_panic:
            return decision(
                want,
                f"scale up {current} -> {want}: panic, demand {panic:.1f} in-flight over "
                f"{spec.panic_window_seconds:g}s >= {spec.panic_threshold:g}x capacity {capacity:g}",
            )
        return decision(want, f"scale up {current} -> {want}: {stable_says}")
    if want == current:
        if from_panic:
            return decision(
                current,
                f"hold {current}: panic, demand {panic:.1f} in-flight over "
                f"{spec.panic_window_seconds:g}s needs {panic_want}",
            )
        return decision(current, f"hold {current}: {stable_says}")

    # Below: the windows want fewer replicas than run now.
    if current > spec.max_replicas:
        return decision(
            spec.max_replicas, f"{_verb(current, spec.max_replicas)}: {_bounds_reason(spec, current)}"
        )
    if in_panic:
        assert panic_until is not None
        return decision(
            current,
            f"hold {current}: panic mode for {panic_until - now:.0f}s more, no scale-down; {stable_says}",
        )
    if unmeasured_ready:
        return decision(
            current,
            f"hold {current}: {stable_says}, but {unmeasured_ready} ready pod(s) went unmeasured; "
            "no scale-down on a partial count",
        )
    if keep >= current:
        return decision(
            current,
            f"hold {current}: {stable_says}; {spec.scale_down_tolerance:.0%} more would need {keep} "
            "(scale-down tolerance)",
        )
    delay = spec.scale_down_delay_seconds
    highest = state.max_wanted(now, delay)
    assert highest is not None and state.wanted_since is not None  # this round's want is recorded
    if highest >= current or now - state.wanted_since < delay:
        lower_for = state.lower_for(now, current)
        return decision(
            current,
            f"hold {current}: {stable_says}; scale-down waits {delay:g}s of lower demand "
            f"({lower_for:.0f}s so far)",
        )
    most_removed = max(1, math.floor(current * spec.max_scale_down_fraction + _CEIL_TOLERANCE))
    replicas = max(highest, current - most_removed)
    reason = f"scale down {current} -> {replicas}: {stable_says}"
    if delay > 0:
        reason += f"; no round in the last {delay:g}s wanted more than {highest}"
    if replicas > highest:
        reason += f"; at most {spec.max_scale_down_fraction:.0%} removed per step"
    return decision(replicas, reason)


def _verb(current: int, replicas: int) -> str:
    if replicas > current:
        return f"scale up {current} -> {replicas}"
    return f"scale down {current} -> {replicas}"


def _bounds_reason(spec: AutoscalingSpec, current: int) -> str:
    """Why a count outside the bounds moves: the bound it crossed."""
    if current > spec.max_replicas:
        return f"maxReplicas is {spec.max_replicas}"
    if spec.min_replicas < 1:
        return "concurrency autoscaling keeps at least 1 replica"
    return f"minReplicas is {spec.min_replicas}"


def _left_out(not_ready: int, scrape_failed: int) -> str:
    parts = []
    if not_ready:
        parts.append(f"{not_ready} not ready")
    if scrape_failed:
        parts.append(f"{scrape_failed} scrape failed")
    return ", ".join(parts)
