"""A discrete-time simulation of the concurrency autoscaler against a load trace.

One tick is one second. At each tick the trace sets the demand (in-flight requests). Every
`decide_every_seconds` the autoscaler runs: each ready pod reports an equal share of the demand
(a Service spreads requests over ready endpoints; requests beyond capacity queue inside the
servers and still count as in flight), each starting pod reports "not ready", and `decide`
returns the count. New pods become ready `startup_seconds` after they are created; scaling down
removes not-yet-ready pods first, then the youngest (as a ReplicaSet does), at once.

What it reports, per trace:

- replica-seconds used: pods that exist (starting or ready) summed over ticks, since a starting
  pod already holds its node and GPU;
- ideal replica-seconds: `ceil(demand / target)` clamped to the bounds, each tick, i.e. a clairvoyant
  autoscaler whose pods start instantly;
- shortfall: the share of ticks where demand exceeded ready capacity (ready pods x target);
- scale events: rounds that changed the replica count.

Demand does not react to capacity here (no retries, no clients giving up), which is the
pessimistic reading for shortfall: a real burst partly drains into queues.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kubemaas_operator.autoscaling.decision import AutoscalingSpec, Decision, PodSample, decide
from kubemaas_operator.autoscaling.traces import Trace, standard_traces
from kubemaas_operator.autoscaling.windows import WindowState


@dataclass(frozen=True, slots=True)
class Tick:
    """The world after tick `at`: demand, pods existing and ready, and the round's decision."""

    at: int
    demand: float
    replicas: int
    ready: int
    decision: Decision | None


@dataclass(frozen=True, slots=True)
class SimulationResult:
    trace: str
    spec: AutoscalingSpec
    ticks: tuple[Tick, ...]
    replica_seconds: int
    ideal_replica_seconds: int
    shortfall_seconds: int
    scale_events: int

    @property
    def ratio(self) -> float:
        """Replica-seconds used over ideal: 1.0 is a clairvoyant autoscaler, more is waste."""
        return self.replica_seconds / self.ideal_replica_seconds

    @property
    def shortfall_share(self) -> float:
        """Share of ticks where demand exceeded ready capacity."""
        return self.shortfall_seconds / len(self.ticks)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return tuple(tick.decision for tick in self.ticks if tick.decision is not None)


@dataclass(slots=True)
class _Pod:
    name: str
    ready_at: int


def simulate(
    trace: Trace,
    spec: AutoscalingSpec,
    *,
    startup_seconds: int = 5,
    decide_every_seconds: int = 2,
) -> SimulationResult:
    """Runs `trace` through `decide`; `spec.current_replicas` is ignored (the pods are counted).

    The run starts in steady state: as many ready pods as the first second's demand needs, and
    a fresh window state (as after an operator restart).
    """
    if startup_seconds < 0 or decide_every_seconds < 1:
        raise ValueError("need startup_seconds >= 0 and decide_every_seconds >= 1")
    created = 0

    def new_pod(ready_at: int) -> _Pod:
        nonlocal created
        created += 1
        return _Pod(f"pod-{created}", ready_at)

    pods = [new_pod(-startup_seconds) for _ in range(spec.replicas_for(trace.demand[0]))]
    state = WindowState()
    ticks: list[Tick] = []
    used = ideal = short = events = 0
    for t, demand in enumerate(trace.demand):
        decision = None
        if t % decide_every_seconds == 0:
            decision = decide(
                state,
                _samples(pods, demand, t),
                dataclasses.replace(spec, current_replicas=len(pods)),
                float(t),
            )
            state = decision.state
            if decision.changed:
                events += 1
                pods = _resize(pods, decision.replicas, t, startup_seconds, new_pod)
        ready = sum(1 for pod in pods if pod.ready_at <= t)
        used += len(pods)
        ideal += _ideal_replicas(spec, demand)
        if demand > ready * spec.target:
            short += 1
        ticks.append(Tick(t, demand, len(pods), ready, decision))
    return SimulationResult(trace.name, spec, tuple(ticks), used, ideal, short, events)


def _ideal_replicas(spec: AutoscalingSpec, demand: float) -> int:
    """ceil(demand / target) within the bounds: no headroom, whatever `target_utilization` says."""
    return spec.clamp(math.ceil(demand / spec.target - 1e-9))


def _samples(pods: Sequence[_Pod], demand: float, now: int) -> list[PodSample]:
    ready = [pod for pod in pods if pod.ready_at <= now]
    share = demand / len(ready) if ready else 0.0
    return [
        PodSample(pod.name, True, share) if pod.ready_at <= now else PodSample(pod.name, False, None)
        for pod in pods
    ]


def _resize(
    pods: list[_Pod], replicas: int, now: int, startup: int, new_pod: Callable[[int], _Pod]
) -> list[_Pod]:
    if replicas >= len(pods):
        return [*pods, *(new_pod(now + startup) for _ in range(replicas - len(pods)))]
    # A ReplicaSet removes unready pods before ready ones, and younger before older.
    doomed = sorted(pods, key=lambda pod: (pod.ready_at <= now, -pod.ready_at))[: len(pods) - replicas]
    return [pod for pod in pods if pod not in doomed]


# The benchmark (`make bench-autoscaling`, docs/autoscaling.md): target 8 in-flight per replica,
# 1..20 replicas, the CRD's defaults otherwise (windows 60 s / 6 s, panic at 2x, 60 s delay).
BENCHMARK_TARGET = 8.0
CRD_DEFAULT_DELAY = 60.0


def benchmark_spec(
    *, scale_down_delay_seconds: float = CRD_DEFAULT_DELAY, target_utilization: float = 1.0
) -> AutoscalingSpec:
    return AutoscalingSpec(
        target=BENCHMARK_TARGET,
        current_replicas=1,
        min_replicas=1,
        max_replicas=20,
        scale_down_delay_seconds=scale_down_delay_seconds,
        target_utilization=target_utilization,
    )


@dataclass(frozen=True, slots=True)
class BenchmarkTable:
    title: str
    results: tuple[SimulationResult, ...]


def run_benchmark() -> tuple[BenchmarkTable, ...]:
    """Every trace at the CRD default delay and at 300 s; the spike across delays; headroom."""
    traces = standard_traces()
    spike = next(trace for trace in traces if trace.name == "spike")
    return (
        BenchmarkTable(
            "Every trace, scaleDownDelaySeconds 60 (the CRD default) and 300",
            tuple(
                simulate(trace, benchmark_spec(scale_down_delay_seconds=delay))
                for delay in (CRD_DEFAULT_DELAY, 300.0)
                for trace in traces
            ),
        ),
        BenchmarkTable(
            "The spike trace across scale-down delays",
            tuple(
                simulate(spike, benchmark_spec(scale_down_delay_seconds=delay))
                for delay in (0.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0)
            ),
        ),
        BenchmarkTable(
            "Headroom: target utilization 0.9 (scale up at 90% of target), scaleDownDelaySeconds 60",
            tuple(
                simulate(
                    trace, benchmark_spec(scale_down_delay_seconds=CRD_DEFAULT_DELAY, target_utilization=0.9)
                )
                for trace in traces
            ),
        ),
    )


def render_table(results: Sequence[SimulationResult]) -> str:
    """One Markdown table: a row per simulation."""
    lines = [
        "| trace | scale-down delay | utilization | replica-seconds used | ideal | used / ideal "
        "| shortfall (share of time) | scale events |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result.trace} | {result.spec.scale_down_delay_seconds:g} s "
            f"| {result.spec.target_utilization:g} | {result.replica_seconds} "
            f"| {result.ideal_replica_seconds} | {result.ratio:.2f}x | {result.shortfall_share:.1%} "
            f"| {result.scale_events} |"
        )
    return "\n".join(lines) + "\n"


def render_tables(tables: Iterable[BenchmarkTable]) -> str:
    """The generated block of docs/autoscaling.md."""
    return "\n".join(f"#### {table.title}\n\n{render_table(table.results)}" for table in tables)
