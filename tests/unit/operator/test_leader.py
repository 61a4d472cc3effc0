"""Leader election on a Lease: one leader, takeover only after silence, races have one winner."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from typing import Any

import pytest

from kubemaas_operator.clients import KubeApiError, KubeClient
from kubemaas_operator.leader import (
    LeaseElector,
    LeaseTiming,
    Move,
    claimed_lease,
    next_move,
    released_lease,
)

TIMING = LeaseTiming(duration_seconds=15, renew_deadline_seconds=10, retry_seconds=2)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


class FakeApiServer(KubeClient):
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubeApiError(503, "Service Unavailable", "apiserver is down")
        return copy.deepcopy(self.lease)

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        if self.down:
            raise KubeApiError(503, "Service Unavailable", "apiserver is down")
        body = copy.deepcopy(kwargs["body"])
        if method == "POST":
            if self.lease is not None:
                raise KubeApiError(409, "Conflict", "leases.coordination.k8s.io already exists")
        elif method == "PUT":
            assert self.lease is not None
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                raise KubeApiError(409, "Conflict", "the object has been modified")
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.lease = body
        return copy.deepcopy(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeApiServer, identity: str, clock: Clock) -> LeaseElector:
    return LeaseElector(
        api,
        namespace="kubemaas-system",
        name="kubemaas-operator",
        identity=identity,
        timing=TIMING,
        clock=clock,
    )


def test_the_first_replica_creates_the_lease_and_leads() -> None:
    api, clock = FakeApiServer(), Clock()
    assert elector(api, "a", clock).try_once()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "a"
    assert api.lease["spec"]["leaseDurationSeconds"] == 15
    assert api.lease["spec"]["leaseTransitions"] == 0


def test_a_second_replica_stands_by_while_the_leader_renews() -> None:
    api, clock = FakeApiServer(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_once()
    for _ in range(20):  # 40 s of renewals: b never sees the Lease unchanged for 15 s
        clock.now += 2
        assert a.try_once()
        assert not b.try_once()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "a"


def test_a_standby_takes_over_only_after_the_lease_went_unrenewed_for_its_duration() -> None:
    api, clock = FakeApiServer(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_once()
    assert not b.try_once()  # b starts watching the Lease now
    clock.now += 14
    assert not b.try_once()
    clock.now += 1
    assert b.try_once()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1


def test_expiry_is_judged_on_the_standbys_clock_not_the_holders_renew_time() -> None:
    lease = claimed_lease(
        None, namespace="ns", name="l", identity="a", duration=15, now=NOW - dt.timedelta(days=1)
    )
    lease["metadata"]["resourceVersion"] = "7"
    # A renewTime a day old means nothing by itself: the holder's clock may be off.
    assert next_move(lease, identity="b", unchanged_for=3, default_duration=15) is Move.WAIT
    assert next_move(lease, identity="b", unchanged_for=15, default_duration=15) is Move.TAKE
    assert next_move(lease, identity="a", unchanged_for=99, default_duration=15) is Move.RENEW
    assert next_move(None, identity="b", unchanged_for=0, default_duration=15) is Move.TAKE


def test_of_two_standbys_racing_for_an_expired_lease_exactly_one_wins() -> None:
    api, clock = FakeApiServer(), Clock()
    a, b, c = elector(api, "a", clock), elector(api, "b", clock), elector(api, "c", clock)
    assert a.try_once()
    b._read()
    c._read()
    clock.now += 20
    # Both read the same expired Lease; the second write carries a stale resourceVersion.
    lease_b, lease_c = b._read(), c._read()
    assert next_move(lease_b, identity="b", unchanged_for=20, default_duration=15) is Move.TAKE
    assert next_move(lease_c, identity="c", unchanged_for=20, default_duration=15) is Move.TAKE
    assert b.try_once()
    assert not c.try_once()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "b"


def test_a_released_lease_is_taken_at_once() -> None:
    api, clock = FakeApiServer(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_once()
    assert not b.try_once()
    a.release()
    assert api.lease is not None and "holderIdentity" not in api.lease["spec"]
    assert b.try_once()


def test_released_lease_keeps_the_resource_version_it_read() -> None:
    lease = {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "42"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 3},
    }
    released = released_lease(lease, now=NOW)
    assert released["metadata"]["resourceVersion"] == "42"
    assert released["spec"]["leaseTransitions"] == 3
    assert released["spec"]["leaseDurationSeconds"] == 1


def test_a_leader_that_cannot_renew_past_the_deadline_stops_leading() -> None:
    api, clock = FakeApiServer(), Clock()
    a = elector(api, "a", clock)
    assert a.try_once()
    api.down = True
    lost = threading.Event()
    rounds = 0

    class Ticking(threading.Event):
        """`stop` whose waits advance the fake clock instead of sleeping."""

        def wait(self, timeout: float | None = None) -> bool:
            nonlocal rounds
            rounds += 1
            clock.now += timeout or 0
            return rounds > 100

    a.keep(lost.set, Ticking())
    assert lost.is_set() and a.lost
    assert clock.now - 1000.0 == pytest.approx(10, abs=2)  # at the renew deadline, not before


def test_a_leader_that_finds_another_holder_stops_at_once() -> None:
    api, clock = FakeApiServer(), Clock()
    a = elector(api, "a", clock)
    assert a.try_once()
    assert api.lease is not None
    api.lease["spec"]["holderIdentity"] = "intruder"
    lost = threading.Event()

    class OneTick(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            return lost.is_set()

    a.keep(lost.set, OneTick())
    assert lost.is_set()


def test_lease_timing_must_stop_the_leader_before_a_standby_may_start() -> None:
    with pytest.raises(ValueError):
        LeaseTiming(duration_seconds=10, renew_deadline_seconds=10, retry_seconds=2)


def test_the_lease_location_comes_from_flags_then_environment_then_the_pods_namespace() -> None:
    from kubemaas_operator.cli import lease_location, parser

    assert lease_location(parser().parse_args([]), {}) == ("kubemaas-system", "kubemaas-operator")
    assert lease_location(parser().parse_args([]), {"POD_NAMESPACE": "ops"}) == ("ops", "kubemaas-operator")
    env = {"POD_NAMESPACE": "ops", "KUBEMAAS_LEASE_NAMESPACE": "ha", "KUBEMAAS_LEASE_NAME": "l"}
    assert lease_location(parser().parse_args([]), env) == ("ha", "l")
    args = parser().parse_args(["--lease-namespace", "x", "--lease-name", "y"])
    assert lease_location(args, env) == ("x", "y")
