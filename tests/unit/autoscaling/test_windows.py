from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_operator.autoscaling import WindowState


def test_averages_cover_observations_strictly_inside_the_window() -> None:
    state = WindowState()
    for t, value in [(0.0, 10.0), (2.0, 20.0), (4.0, 30.0), (6.0, 40.0)]:
        state = state.observe(t, value, keep_seconds=60)
    assert state.average(6.0, 6.0) == 30.0  # 2, 4 and 6; the one at 0 is exactly 6 s old
    assert state.average(6.0, 60.0) == 25.0
    assert WindowState().average(0.0, 60.0) is None


def test_observations_older_than_the_longest_window_are_forgotten() -> None:
    state = WindowState()
    for t in range(0, 200, 2):
        state = state.observe(float(t), 1.0, keep_seconds=60)
    assert len(state.observations) == 30
    assert state.observations[0].at == 140.0


def test_the_wanted_queue_stays_short_whatever_the_delay() -> None:
    state = WindowState()
    for t in range(0, 86400, 2):
        state = state.want(float(t), 5 if t % 600 else 7, delay_seconds=86400)
    assert len(state.wanted) <= 2


def test_lower_for_counts_from_the_last_round_that_wanted_as_many() -> None:
    state = WindowState()
    for t, replicas in [(0.0, 4), (10.0, 6), (20.0, 3), (30.0, 2)]:
        state = state.want(t, replicas, delay_seconds=100)
    assert state.lower_for(40.0, 6) == 30.0
    assert state.lower_for(40.0, 7) == 40.0  # nothing wanted 7: the whole recorded history
    assert state.lower_for(40.0, 3) == 20.0
    assert state.forget_wanted().lower_for(40.0, 3) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    wanted=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 10)), min_size=1, max_size=80),
    delay=st.sampled_from([0.0, 5.0, 20.0, 60.0]),
)
def test_max_wanted_matches_a_brute_force_maximum(wanted: list[tuple[int, int]], delay: float) -> None:
    state, now, history = WindowState(), 0.0, []
    for gap, replicas in wanted:
        now += gap
        state = state.want(now, replicas, delay_seconds=delay)
        history.append((now, replicas))
        expected = max(r for at, r in history if at >= now - delay)
        assert state.max_wanted(now, delay) == expected
