from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_operator.autoscaling import AutoscalingSpec, Decision, Mode, PodSample, WindowState, decide
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import parse_model_service


def spec(current: int, **overrides: Any) -> AutoscalingSpec:
    fields: dict[str, Any] = {"target": 8.0, "min_replicas": 1, "max_replicas": 20}
    fields.update(overrides)
    return AutoscalingSpec(current_replicas=current, **fields)


def pods(*in_flight: float | None, ready: bool = True) -> list[PodSample]:
    return [PodSample(f"pod-{i}", ready, value) for i, value in enumerate(in_flight)]


def even(replicas: int, total: float) -> list[PodSample]:
    return pods(*([total / replicas] * replicas))


def run(
    rounds: list[tuple[float, float]], current: int, state: WindowState | None = None, **overrides: Any
) -> Decision:
    """Rounds of (time, total in-flight) over `current` ready pods, folding state and count."""
    decision = None
    state = state or WindowState()
    for now, total in rounds:
        decision = decide(state, even(current, total), spec(current, **overrides), now)
        state, current = decision.state, decision.replicas
    assert decision is not None
    return decision


def test_replicas_are_the_ceiling_of_total_in_flight_over_target() -> None:
    decision = decide(WindowState(), pods(10, 10, 10), spec(3), now=0.0)
    assert decision.replicas == math.ceil(30 / 8) == 4
    assert decision.mode is Mode.STABLE
    assert decision.reason == "scale up 3 -> 4: demand 30.0 in-flight over 60s needs 4"
    assert decision.changed


def test_replicas_stay_within_min_and_max() -> None:
    assert decide(WindowState(), pods(400), spec(1, max_replicas=5), now=0.0).replicas == 5
    assert decide(WindowState(), pods(0, 0, 0), spec(3, min_replicas=3), now=0.0).replicas == 3


def test_min_replicas_zero_still_keeps_one_replica() -> None:
    decision = decide(WindowState(), [], spec(0, min_replicas=0), now=0.0)
    assert decision.replicas == 1
    assert decision.reason.startswith("scale up 0 -> 1: concurrency autoscaling keeps at least 1 replica")


def test_a_count_above_max_replicas_moves_down_at_once() -> None:
    decision = decide(WindowState(), pods(8, 8, 8, 8, 8, 8), spec(6, max_replicas=4), now=0.0)
    assert decision.replicas == 4
    assert decision.reason == "scale down 6 -> 4: maxReplicas is 4"


def test_the_stable_window_averages_the_rounds_inside_it() -> None:
    # 60 s of 16 in-flight, then 30 s of 40: the 60 s mean is 28 (ready pods keep capacity high
    # enough that the panic threshold is never reached).
    rounds = [(float(t), 16.0) for t in range(0, 60, 2)] + [(float(t), 40.0) for t in range(60, 90, 2)]
    decision = run(rounds, current=10)
    assert decision.stable_in_flight == pytest.approx((15 * 16 + 15 * 40) / 30)
    assert decision.panic_in_flight == pytest.approx(40.0)


def test_panic_needs_short_window_demand_at_least_twice_capacity() -> None:
    # Two ready pods: capacity 16. 31 in flight is below 2x: stable mode scales to 4.
    below = decide(WindowState(), even(2, 31), spec(2), now=0.0)
    assert below.mode is Mode.STABLE and below.replicas == 4
    at = decide(WindowState(), even(2, 32), spec(2), now=0.0)
    assert at.mode is Mode.PANIC and at.replicas == 4


def test_panic_scales_up_past_the_lagging_stable_window_and_says_why() -> None:
    calm = [(float(t), 16.0) for t in range(0, 60, 2)]
    first = run([*calm, (60.0, 100.0)], current=2)
    # Panic window at 60 s: rounds 56, 58, 60 -> (16 + 16 + 100) / 3 = 44 >= 2 x 16, 6 replicas;
    # the stable window (29 rounds of 16, one of 100) still asks for 3.
    assert first.reason == "scale up 2 -> 6: panic, demand 44.0 in-flight over 6s >= 2x capacity 16"
    assert first.stable_in_flight == pytest.approx(18.8)
    # Next round: 6 ready pods (capacity 48) and a 72 panic mean: no new panic, but panic mode
    # holds the count although the stable window asks for 3.
    second = run([*calm, (60.0, 100.0), (62.0, 100.0)], current=2)
    assert second.mode is Mode.PANIC and second.replicas == 6


def test_a_stable_scale_up_during_panic_mode_gives_the_stable_reason() -> None:
    burst = decide(WindowState(), even(2, 40), spec(2), now=0.0)
    assert burst.mode is Mode.PANIC and burst.replicas == 5
    # Then 60 in flight: no burst for 5 ready pods (capacity 40), but the 60 s mean climbs.
    state, current, scale_ups = burst.state, 5, []
    for t in range(2, 32, 2):
        decision = decide(state, even(current, 60), spec(current), float(t))
        if decision.changed:
            scale_ups.append(decision)
        state, current = decision.state, decision.replicas
    assert scale_ups and all(d.mode is Mode.PANIC for d in scale_ups)  # inside panic mode
    assert all("over 60s needs" in d.reason and "capacity" not in d.reason for d in scale_ups)
    assert current == 8


def test_the_panic_window_never_scales_down_and_blocks_scale_down_for_a_stable_window() -> None:
    state = decide(WindowState(), even(2, 100), spec(2, scale_down_delay_seconds=0), now=0.0).state
    assert state.panic_until == 60.0
    # Demand vanishes: with no delay the stable window alone would scale down, but panic holds.
    quiet = decide(state, even(13, 1), spec(13, scale_down_delay_seconds=0), now=10.0)
    assert quiet.mode is Mode.PANIC
    assert quiet.replicas == 13
    assert quiet.reason.startswith("hold 13: panic mode for 50s more, no scale-down")
    after = decide(quiet.state, even(13, 1), spec(13, scale_down_delay_seconds=0), now=60.0)
    assert after.mode is Mode.STABLE and after.replicas < 13


def test_scale_down_waits_for_the_delay_of_sustained_lower_demand() -> None:
    state, current = WindowState(), 4
    history: list[tuple[float, int, str]] = []
    for t in range(0, 122, 2):
        decision = decide(state, even(current, 8), spec(current, scale_down_delay_seconds=100), float(t))
        state, current = decision.state, decision.replicas
        history.append((t, current, decision.reason))
    first_down = next(t for t, replicas, _ in history if replicas < 4)
    assert first_down == 100
    assert history[10][2] == (
        "hold 4: demand 8.0 in-flight over 60s needs 1; scale-down waits 100s of lower demand (20s so far)"
    )


def test_scale_down_goes_to_the_most_wanted_within_the_delay() -> None:
    # 6 in flight wants 1 replica; one round of 60 at 50 s lifts the 60 s mean to 7.8, within the
    # 10% tolerance of needing 2, until it leaves the stable window at 110 s.
    state, current, changes = WindowState(), 4, []
    for t in range(0, 240, 2):
        total = 60.0 if t == 50 else 6.0
        decision = decide(state, even(current, total), spec(current, scale_down_delay_seconds=100), float(t))
        if decision.changed:
            changes.append((t, decision.replicas))
        state, current = decision.state, decision.replicas
    # 100 s after the start every round wanted at most 2: down to 2, not 1. Down to 1 only once
    # the last round wanting 2 (108 s) is more than the delay ago.
    assert changes == [(100, 2), (210, 1)]


def test_scale_down_never_removes_more_than_half_per_step() -> None:
    state, current, counts = WindowState(), 20, [20]
    for t in range(0, 40, 2):
        decision = decide(state, even(current, 1), spec(current, scale_down_delay_seconds=0), float(t))
        state, current = decision.state, decision.replicas
        counts.append(current)
    assert counts[:6] == [20, 10, 5, 3, 2, 1]
    first = decide(WindowState(), even(20, 1), spec(20, scale_down_delay_seconds=0), 0.0)
    assert first.reason == (
        "scale down 20 -> 10: demand 1.0 in-flight over 60s needs 1; at most 50% removed per step"
    )


def test_pods_not_ready_or_unscraped_are_left_out_and_recorded() -> None:
    samples = [
        PodSample("pod-a", False, 5.0),
        PodSample("pod-b", True, None),
        PodSample("pod-c", True, 12.0),
        PodSample("pod-d", True, 12.0),
    ]
    decision = decide(WindowState(), samples, spec(4), now=0.0)
    assert decision.excluded == ("pod-a: not ready", "pod-b: scrape failed")
    assert decision.stable_in_flight == 24.0  # the measured pods only: nothing filled in
    assert decision.ready_replicas == 3
    assert decision.reason.endswith("; left out 1 not ready, 1 scrape failed")


def test_a_failed_scrape_of_a_ready_pod_blocks_scale_down() -> None:
    samples = [PodSample("pod-0", True, 1.0), PodSample("pod-1", True, None), PodSample("pod-2", True, 1.0)]
    decision = decide(WindowState(), samples, spec(3, scale_down_delay_seconds=0), now=0.0)
    assert decision.replicas == 3
    assert "1 ready pod(s) went unmeasured; no scale-down on a partial count" in decision.reason


def test_no_measurable_pod_holds_the_count_with_a_reason() -> None:
    samples = [PodSample("pod-a", False, None), PodSample("pod-b", True, None)]
    decision = decide(WindowState(), samples, spec(2), now=0.0)
    assert decision.mode is Mode.HOLD
    assert decision.replicas == 2 and not decision.changed
    assert decision.reason == "hold 2: no pod could be measured (1 not ready, 1 scrape failed)"
    assert decision.excluded == ("pod-a: not ready", "pod-b: scrape failed")
    assert decide(WindowState(), [], spec(2), now=0.0).reason == "hold 2: no pods to measure"


def test_a_round_with_no_measurement_restarts_the_scale_down_clock() -> None:
    state = WindowState()
    for t in range(0, 100, 2):
        state = decide(state, even(4, 8), spec(4, scale_down_delay_seconds=100), float(t)).state
    state = decide(state, pods(None, None, None, None), spec(4, scale_down_delay_seconds=100), 100.0).state
    later = decide(state, even(4, 8), spec(4, scale_down_delay_seconds=100), 102.0)
    assert later.replicas == 4
    assert "(0s so far)" in later.reason


def test_decide_is_a_pure_function_of_its_inputs() -> None:
    state = run([(float(t), 20.0 + t) for t in range(0, 40, 2)], current=3)
    samples, current = even(3, 70), spec(3)
    assert decide(state.state, samples, current, 40.0) == decide(state.state, samples, current, 40.0)


def test_from_model_service_reads_the_crd_fields() -> None:
    body = {
        "metadata": {"name": "mlp", "namespace": "default"},
        "spec": {
            "model": {"uri": "pvc://models/mlp"},
            "minReplicas": 2,
            "maxReplicas": 9,
            "autoscaling": {"metric": "concurrency", "target": 4, "scaleDownDelaySeconds": 120},
        },
    }
    model_service = parse_model_service(body, OperatorSettings())
    derived = AutoscalingSpec.from_model_service(model_service, current_replicas=3)
    assert derived == AutoscalingSpec(
        target=4.0, current_replicas=3, min_replicas=2, max_replicas=9, scale_down_delay_seconds=120.0
    )
    assert (derived.stable_window_seconds, derived.panic_window_seconds, derived.panic_threshold) == (
        60,
        6,
        2,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target": 0}, "target must be positive"),
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas <= max_replicas"),
        ({"panic_window_seconds": 90}, "panic_window_seconds <= stable_window_seconds"),
        ({"panic_threshold": 0.5}, "panic_threshold must be at least 1"),
        ({"max_scale_down_fraction": 0}, "max_scale_down_fraction must be in (0, 1]"),
        ({"target_utilization": 1.5}, "target_utilization must be in (0, 1]"),
    ],
)
def test_a_bad_spec_is_refused_with_a_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        spec(1, **overrides)


def test_headroom_scales_up_before_replicas_run_full() -> None:
    decision = decide(WindowState(), even(2, 15), spec(2, target_utilization=0.8), now=0.0)
    assert decision.replicas == math.ceil(15 / 6.4) == 3


rounds_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=500, allow_nan=False),  # total in flight
        st.integers(min_value=0, max_value=3),  # pods left out this round
        st.integers(min_value=1, max_value=30),  # seconds to the next round
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(rounds=rounds_strategy, delay=st.sampled_from([0.0, 10.0, 60.0]), minimum=st.integers(0, 3))
def test_every_decision_respects_bounds_halving_and_panic(
    rounds: list[tuple[float, int, int]], delay: float, minimum: int
) -> None:
    state, current, now = WindowState(), max(minimum, 1), 0.0
    for total, left_out, gap in rounds:
        measured = max(current - left_out, 0)
        samples = [*even(measured, total)] if measured else []
        samples += [PodSample(f"starting-{i}", False, None) for i in range(current - measured)]
        current_spec = spec(current, min_replicas=minimum, max_replicas=12, scale_down_delay_seconds=delay)
        decision = decide(state, samples, current_spec, now)
        assert max(minimum, 1) <= decision.replicas <= 12
        if decision.replicas < current:
            assert current - decision.replicas <= max(1, current // 2)
            assert decision.mode is not Mode.PANIC
        if not measured:
            assert decision.mode is Mode.HOLD
        assert len(decision.excluded) == current - measured
        state, current, now = decision.state, decision.replicas, now + gap


def test_decisions_can_be_replayed_from_a_copied_state() -> None:
    first = run([(float(t), 50.0) for t in range(0, 20, 2)], current=2)
    copied = dataclasses.replace(first.state)
    assert decide(copied, even(7, 50), spec(7), 20.0) == decide(first.state, even(7, 50), spec(7), 20.0)


def test_scale_down_keeps_room_for_ten_percent_more_demand() -> None:
    # 39 in flight needs 5 of 8 (40 capacity) but 10% more (42.9) would need 6: 6 stay.
    held = run([(float(t), 39.0) for t in range(0, 200, 2)], 6, scale_down_delay_seconds=0)
    assert held.replicas == 6
    assert held.reason == (
        "hold 6: demand 39.0 in-flight over 60s needs 5; 10% more would need 6 (scale-down tolerance)"
    )
    # 36 in flight: 39.6 still fits 5, so the step happens.
    lowered = run([(float(t), 36.0) for t in range(0, 200, 2)], 6, scale_down_delay_seconds=0)
    assert lowered.replicas == 5
    # Without the tolerance the same load steps down, which is what made boundary loads flap.
    untolerant = run(
        [(float(t), 39.0) for t in range(0, 200, 2)], 6, scale_down_delay_seconds=0, scale_down_tolerance=0
    )
    assert untolerant.replicas == 5


def test_the_tolerance_never_delays_a_scale_up() -> None:
    decision = decide(WindowState(), even(5, 40.5), spec(5, scale_down_tolerance=0.5), now=0.0)
    assert decision.replicas == 6
