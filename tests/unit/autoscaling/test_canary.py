from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_operator.autoscaling import split_replicas


@pytest.mark.parametrize(
    ("total", "percent", "expected"),
    [
        (10, 0, (10, 0)),
        (10, 100, (0, 10)),
        (10, 10, (9, 1)),
        (10, 25, (7, 3)),  # 2.5 rounds half up
        (4, 50, (2, 2)),
        (20, 5, (19, 1)),
        (3, 1, (2, 1)),  # 0.03 rounds to 0: the canary still gets one
        (3, 99, (1, 2)),  # 2.97 rounds to 3: the stable revision still keeps one
        (2, 50, (1, 1)),
        (1, 50, (0, 1)),  # one replica and a canary asked for: the canary's floor wins
        (0, 50, (0, 0)),
    ],
)
def test_split_examples(total: int, percent: int, expected: tuple[int, int]) -> None:
    assert split_replicas(total, percent) == expected


@pytest.mark.parametrize(("total", "percent"), [(-1, 10), (4, -1), (4, 101)])
def test_out_of_range_arguments_are_refused(total: int, percent: int) -> None:
    with pytest.raises(ValueError):
        split_replicas(total, percent)


@given(total=st.integers(0, 500), percent=st.integers(0, 100))
def test_split_invariants(total: int, percent: int) -> None:
    stable, canary = split_replicas(total, percent)
    assert stable + canary == total and stable >= 0 and canary >= 0
    if 1 <= percent <= 99 and total >= 1:
        assert canary >= 1
    if 1 <= percent <= 99 and total >= 2:
        assert stable >= 1
    if 1 <= percent <= 99 and total >= 2 and 1 <= total * percent / 100 <= total - 1:
        assert abs(canary - total * percent / 100) <= 0.5  # the share holds to within rounding


@given(total=st.integers(0, 500), percent=st.integers(0, 100))
def test_scaling_up_never_takes_a_replica_from_either_revision(total: int, percent: int) -> None:
    stable, canary = split_replicas(total, percent)
    bigger_stable, bigger_canary = split_replicas(total + 1, percent)
    assert bigger_stable >= stable and bigger_canary >= canary
