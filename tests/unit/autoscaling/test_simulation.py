from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from kubemaas_operator.autoscaling.decision import AutoscalingSpec
from kubemaas_operator.autoscaling.simulation import (
    SimulationResult,
    benchmark_spec,
    render_tables,
    run_benchmark,
    simulate,
)
from kubemaas_operator.autoscaling.traces import (
    Trace,
    noisy_constant_trace,
    spike_trace,
    standard_traces,
    step_trace,
)
from kubemaas_operator.crd import model_service_crd

ROOT = Path(__file__).resolve().parents[3]
BEGIN, END = "<!-- bench-autoscaling:begin -->", "<!-- bench-autoscaling:end -->"


def changes(result: SimulationResult, *, after: int = 0) -> list[tuple[int, int, int]]:
    """(tick, from, to) for every round that changed the count at or after `after`."""
    return [
        (tick.at, tick.decision.previous_replicas, tick.decision.replicas)
        for tick in result.ticks
        if tick.decision is not None and tick.decision.changed and tick.at >= after
    ]


@pytest.mark.parametrize("delay", [0.0, 60.0, 300.0])
@pytest.mark.parametrize(("level", "seed"), [(40.0, 4), (40.0, 11), (36.0, 4), (52.0, 7)])
def test_a_noisy_constant_load_does_not_flap(level: float, seed: int, delay: float) -> None:
    # Even with no scale-down delay: the 10% scale-down tolerance is what holds a boundary load.
    trace = noisy_constant_trace(level=level, noise=0.2, seed=seed)
    result = simulate(trace, benchmark_spec(scale_down_delay_seconds=delay))
    # After the first stable window has filled, at most one correction and no oscillation.
    settled = changes(result, after=60)
    assert len(settled) <= 2, settled
    assert all(new > old for _, old, new in settled)


def test_a_10x_spike_reaches_the_needed_replicas_within_the_panic_window() -> None:
    spec = benchmark_spec()
    result = simulate(spike_trace(), spec, startup_seconds=5, decide_every_seconds=2)
    start, needed = 600, math.ceil(100 / spec.target)
    asked = next(tick.at for tick in result.ticks if tick.at >= start and tick.replicas >= needed)
    assert asked - start <= spec.panic_window_seconds
    served = next(tick.at for tick in result.ticks if tick.at >= start and tick.ready >= needed)
    assert served - start <= spec.panic_window_seconds + 5 + 2  # + startup + one decision period
    assert all(
        tick.decision.mode.value == "panic" for tick in result.ticks[start : start + 6] if tick.decision
    )


def test_the_spike_trace_meets_its_targets_at_the_crd_default_delay() -> None:
    schema = model_service_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    crd_default = schema["properties"]["spec"]["properties"]["autoscaling"]["properties"][
        "scaleDownDelaySeconds"
    ]
    assert benchmark_spec().scale_down_delay_seconds == crd_default["default"]
    result = simulate(spike_trace(), benchmark_spec())
    assert result.shortfall_share < 0.05
    assert result.ratio <= 1.3


def test_scale_down_waits_the_delay_after_demand_drops() -> None:
    for delay in (60.0, 300.0):
        result = simulate(step_trace(), benchmark_spec(scale_down_delay_seconds=delay))
        downs = [at for at, old, new in changes(result) if new < old]
        # Demand drops at 1200 s; the stable window needs most of 60 s to see it, then the delay.
        assert downs and min(downs) >= 1200 + delay
        assert min(downs) <= 1200 + 60 + delay


def test_no_step_ever_removes_more_than_half_the_replicas() -> None:
    for delay in (0.0, 60.0, 300.0):
        for trace in standard_traces():
            for at, old, new in changes(simulate(trace, benchmark_spec(scale_down_delay_seconds=delay))):
                assert old - new <= old // 2 or new > old, (trace.name, delay, at, old, new)


def test_min_and_max_replicas_hold_even_when_demand_goes_beyond_them() -> None:
    demand = tuple(0.0 if t < 300 else 1000.0 if t < 900 else 0.0 for t in range(1500))
    spec = AutoscalingSpec(
        target=8, current_replicas=1, min_replicas=3, max_replicas=6, scale_down_delay_seconds=60
    )
    result = simulate(Trace("beyond", "0 -> 1000 -> 0", demand), spec)
    assert {tick.replicas for tick in result.ticks} <= set(range(3, 7))
    assert max(tick.replicas for tick in result.ticks) == 6
    assert result.ticks[-1].replicas == 3


def test_starting_pods_are_left_out_of_the_measurement_and_recorded() -> None:
    result = simulate(spike_trace(), benchmark_spec(), startup_seconds=5)
    during = [tick.decision for tick in result.ticks[602:608] if tick.decision is not None]
    assert during and all(decision.excluded for decision in during)
    assert all(entry.endswith(": not ready") for decision in during for entry in decision.excluded)
    assert "left out 3 not ready" in during[0].reason


def test_replica_seconds_count_starting_pods_and_ideal_ignores_headroom() -> None:
    flat = Trace("flat", "16 in flight", (16.0,) * 100)
    result = simulate(flat, benchmark_spec())
    assert result.replica_seconds == result.ideal_replica_seconds == 200
    headroom = simulate(flat, dataclasses.replace(benchmark_spec(), target_utilization=0.5))
    assert headroom.ideal_replica_seconds == 200 < headroom.replica_seconds


def test_docs_table_is_the_benchmark_output() -> None:
    doc = (ROOT / "docs" / "autoscaling.md").read_text()
    assert BEGIN in doc and END in doc
    committed = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert committed == render_tables(run_benchmark()).strip(), (
        "docs/autoscaling.md is stale: run `make bench-autoscaling`"
    )
