"""Leader election on a `coordination.k8s.io/v1` Lease: more than one operator replica is safe.

Only the replica holding the Lease runs kopf at all. A standby waits for the Lease before it
starts watching; the leader renews it every few seconds, and a leader that could not renew for
`renew_deadline_seconds` stops leading (the process exits and its Deployment restarts it as a
standby) before any standby may take over, which needs `duration_seconds` of silence.

Why not kopf's peering: kopf pauses every operator that sees a peer of the same priority (so
two equal replicas both stop), and a paused kopf stops delivering events but not the
reconciler's own timers, which would then act on a stale cache. Kubernetes' own controllers
use a Lease for this; we follow client-go's rules:

- expiry is judged on the standby's own clock: the Lease counts as expired once its
  resourceVersion has not changed for `leaseDurationSeconds` since this replica first saw it,
  so clock skew between replicas does not matter;
- every write carries the resourceVersion it read, so of two standbys racing for an expired
  Lease exactly one wins (the other gets 409 Conflict and keeps waiting);
- a leader that stops cleanly releases the Lease (no holder), so a standby takes over at once.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubemaas.logs import kv
from kubemaas_operator.clients import KubeApiError, KubeClient, resource_path

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
DEFAULT_LEASE_NAME = "kubemaas-operator"
DEFAULT_LEASE_NAMESPACE = "kubemaas-system"

Lease = Mapping[str, Any]


@dataclass(frozen=True)
class LeaseTiming:
    # A standby takes over after the Lease went unrenewed this long (by its own clock).
    duration_seconds: int = 15
    # The leader gives up leading when it could not renew for this long; shorter than the
    # duration, so it has stopped before anyone else may start.
    renew_deadline_seconds: float = 10.0
    # Time between attempts, for the leader's renewals and the standby's checks alike.
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.duration_seconds:
            raise ValueError("lease timing needs 0 < retry < renew deadline < duration")


class Move(enum.StrEnum):
    TAKE = "take"  # create the Lease, take over an expired or released one
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # someone else's and still alive


def holder_of(lease: Lease | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def next_move(lease: Lease | None, *, identity: str, unchanged_for: float, default_duration: int) -> Move:
    """What this replica should do about the Lease it just read.

    `unchanged_for` is how long (by this replica's clock) the Lease has had the resourceVersion
    it has now; the holder's renewTime is never compared with our clock.
    """
    if lease is None:
        return Move.TAKE
    holder = holder_of(lease)
    if holder == identity:
        return Move.RENEW
    if not holder:
        return Move.TAKE
    duration = int((lease.get("spec") or {}).get("leaseDurationSeconds") or default_duration)
    return Move.TAKE if unchanged_for >= duration else Move.WAIT


def micro_time(moment: dt.datetime) -> str:
    """A MicroTime as the API server writes it."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_lease(
    lease: Lease | None, *, namespace: str, name: str, identity: str, duration: int, now: dt.datetime
) -> dict[str, Any]:
    """The Lease that makes `identity` the holder: created, renewed or taken over.

    It carries the resourceVersion that was read, so the write fails if anyone else wrote since.
    """
    spec = dict((lease or {}).get("spec") or {})
    renewing = spec.get("holderIdentity") == identity
    stamp = micro_time(now)
    transitions = int(spec.get("leaseTransitions") or 0)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease is not None:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": duration,
            "acquireTime": spec.get("acquireTime") if renewing else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions if renewing or lease is None else transitions + 1,
        },
    }


def released_lease(lease: Lease, *, now: dt.datetime) -> dict[str, Any]:
    """The Lease with no holder, so a standby need not wait out the duration."""
    spec = dict(lease.get("spec") or {})
    spec.pop("holderIdentity", None)
    spec["leaseDurationSeconds"] = 1
    spec["renewTime"] = micro_time(now)
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": lease["metadata"]["name"],
            "namespace": lease["metadata"]["namespace"],
            "resourceVersion": lease["metadata"]["resourceVersion"],
        },
        "spec": spec,
    }


def default_identity() -> str:
    """The pod's name when the Deployment passes it in (POD_NAME), else host, pid and a nonce."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaseElector:
    """Blocking calls; `acquire` runs before kopf starts, `keep` in a thread beside it."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str | None = None,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timing = timing or LeaseTiming()
        self._clock = clock
        self._seen_version = ""
        self._seen_at = clock()
        self._renewed_at: float | None = None
        self._lease: Lease | None = None
        self.lost = False

    @property
    def path(self) -> str:
        return resource_path(LEASE_API_VERSION, "Lease", self.namespace, self.name)

    def _read(self) -> Lease | None:
        lease = self.client.get(LEASE_API_VERSION, "Lease", self.namespace, self.name)
        version = str((lease or {}).get("metadata", {}).get("resourceVersion", ""))
        if version != self._seen_version:
            self._seen_version, self._seen_at = version, self._clock()
        return lease

    def try_once(self) -> bool:
        """One round: read the Lease, and create, renew or take it over when that is our move.

        True when this replica holds the Lease afterwards.
        """
        lease = self._read()
        move = next_move(
            lease,
            identity=self.identity,
            unchanged_for=self._clock() - self._seen_at,
            default_duration=self.timing.duration_seconds,
        )
        if move is Move.WAIT:
            self._lease = lease
            return False
        body = claimed_lease(
            lease,
            namespace=self.namespace,
            name=self.name,
            identity=self.identity,
            duration=self.timing.duration_seconds,
            now=dt.datetime.now(dt.UTC),
        )
        try:
            if lease is None:
                written = self.client.request("POST", self.path.rsplit("/", 1)[0], body=body)
            else:
                written = self.client.request("PUT", self.path, body=body)
        except KubeApiError as err:
            if err.status == 409:  # someone else wrote first: read again next round
                return False
            raise
        self._lease = written
        self._renewed_at = self._clock()
        if move is Move.TAKE:
            log.info(
                "leading",
                extra=kv(lease=f"{self.namespace}/{self.name}", identity=self.identity, was=holder_of(lease)),
            )
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait until this replica holds the Lease (True), or `stop` is set (False)."""
        stop = stop or threading.Event()
        waiting_for = ""
        while not stop.is_set():
            try:
                if self.try_once():
                    return True
            except KubeApiError as err:
                log.warning("lease check failed", extra=kv(error=str(err)[:300]))
            holder = holder_of(self._lease)
            if holder and holder != waiting_for:
                waiting_for = holder
                log.info(
                    "standing by",
                    extra=kv(lease=f"{self.namespace}/{self.name}", leader=holder, identity=self.identity),
                )
            stop.wait(self.timing.retry_seconds)
        return False

    def keep(self, on_lost: Callable[[], None], stop: threading.Event) -> None:
        """Renew until `stop` is set; call `on_lost` once renewing failed past the deadline."""
        while not stop.wait(self.timing.retry_seconds):
            try:
                if self.try_once():
                    continue
            except Exception as err:  # any failure to renew counts against the deadline
                log.warning("lease renewal failed", extra=kv(error=str(err)[:300]))
            since = self._clock() - (self._renewed_at if self._renewed_at is not None else self._seen_at)
            if (
                holder_of(self._lease) not in ("", self.identity)
                or since >= self.timing.renew_deadline_seconds
            ):
                self.lost = True
                log.error(
                    "lost the lease; stopping",
                    extra=kv(lease=f"{self.namespace}/{self.name}", leader=holder_of(self._lease)),
                )
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up on a clean exit so a standby takes over at once."""
        if self.lost:
            return
        try:
            lease = self.client.get(LEASE_API_VERSION, "Lease", self.namespace, self.name)
            if lease is None or holder_of(lease) != self.identity:
                return
            self.client.request("PUT", self.path, body=released_lease(lease, now=dt.datetime.now(dt.UTC)))
            log.info("released the lease", extra=kv(lease=f"{self.namespace}/{self.name}"))
        except KubeApiError as err:
            log.warning("could not release the lease", extra=kv(error=str(err)[:300]))
