"""The concurrency autoscaler's I/O shell: scrape the pods, call the pure `decide`, pass the count on.

`kubemaas_operator.autoscaling` holds the rules as pure functions; this module runs them. For
each ModelService with `autoscaling.metric: concurrency` it keeps one asyncio task and the
window state (in memory: a restarted operator starts with empty windows, as the rules expect).
Every period (KUBEMAAS_AUTOSCALE_PERIOD_SECONDS, 2 s) a round:

1. takes the ModelService's pods from the reconciler's child cache (no API call);
2. scrapes `http://<status.podIP>:8002/metrics` of every ready pod at once, with a short
   timeout. It dials pod IPs and nothing else: an address that is not a literal IP is not
   dialled, and the pod is recorded as "scrape failed";
3. reads `kubemaas_inflight_requests{model=...}` with the exposition parser and calls `decide`;
4. when the count changes, hands a `ScaleRecord` to the reconciler (which applies it to the
   Deployments, canary split included, and writes it to status: it is the only writer of the
   ModelService's status, so a scale decision never races a status write) and posts an Event.

Pods that are not ready or whose scrape failed are left out and named in the decision; no
number is made up for them (rule 1 of docs/autoscaling.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import aiohttp

from kubemaas.logs import kv
from kubemaas_operator.autoscaling import (
    AutoscalingSpec,
    Decision,
    MetricsError,
    PodSample,
    WindowState,
    decide,
    in_flight_from_metrics,
)
from kubemaas_operator.builders import METRICS_PORT
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import AutoscalingMetric, ModelServiceSpec

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, ModelService name)
Body = Mapping[str, Any]

SCRAPE_TIMEOUT_SECONDS = 1.0
# A /metrics page is a few kilobytes; anything far larger is not our server.
MAX_METRICS_BYTES = 1 << 20

Fetch = Callable[[str], Awaitable[str]]  # pod IP -> /metrics text; raises on any failure


@dataclass(frozen=True, slots=True)
class ScaleRecord:
    """A scale decision as the ModelService's status shows it."""

    replicas: int
    time: str  # RFC 3339, UTC
    reason: str
    mode: str
    excluded: tuple[str, ...]

    def status_fields(self) -> dict[str, Any]:
        return {
            "desiredReplicas": self.replicas,
            "lastScaleTime": self.time,
            "scaleReason": self.reason,
            **AutoscalerView(self.mode, self.excluded).status_fields(),
        }


class AutoscalerView(NamedTuple):
    """How the latest round decided and which pods it left out: `status.autoscaler`.

    It is reported whenever it changes, scale or no scale, so a pod whose scrape starts failing
    shows up in status within a round; the numbers of each round are not, so an unchanged view
    costs no status write.
    """

    mode: str
    excluded: tuple[str, ...]

    def status_fields(self) -> dict[str, Any]:
        return {"autoscaler": {"mode": self.mode, "excluded": list(self.excluded)}}


@dataclass(frozen=True, slots=True)
class Target:
    """What a round needs to know of one ModelService, read from the reconciler each round."""

    spec: ModelServiceSpec
    current_replicas: int
    pods: Sequence[Body]


def pod_ready(pod: Body) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False  # terminating: it is leaving, whatever its probe says
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def metrics_url(pod_ip: str) -> str:
    """The pod's metrics URL; refuses anything but a literal IP address (never a host name)."""
    address = ipaddress.ip_address(pod_ip)  # ValueError for names, URLs, empty strings
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{METRICS_PORT}/metrics"


def autoscaling_spec(target: Target, settings: OperatorSettings) -> AutoscalingSpec:
    return replace(
        AutoscalingSpec.from_model_service(target.spec, current_replicas=target.current_replicas),
        stable_window_seconds=settings.autoscale_stable_window_seconds,
        panic_window_seconds=min(
            settings.autoscale_panic_window_seconds, settings.autoscale_stable_window_seconds
        ),
    )


async def sample_pods(pods: Sequence[Body], model: str, fetch: Fetch) -> list[PodSample]:
    """One sample per pod: ready pods scraped concurrently; a failure is `in_flight=None`."""

    async def sample(pod: Body) -> PodSample:
        name = str(pod.get("metadata", {}).get("name", "?"))
        if not pod_ready(pod):
            return PodSample(name, False, None)
        try:
            text = await fetch(str(pod.get("status", {}).get("podIP") or ""))
            return PodSample(name, True, in_flight_from_metrics(text, model))
        except (MetricsError, ValueError, OSError, TimeoutError, aiohttp.ClientError) as err:
            log.debug("scrape failed", extra=kv(pod=name, error=str(err)[:200]))
            return PodSample(name, True, None)

    return list(await asyncio.gather(*(sample(pod) for pod in pods)))


class MetricsFetcher:
    """GETs a pod's /metrics over one shared HTTP session (no proxies: `trust_env` is off)."""

    def __init__(self, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, pod_ip: str) -> str:
        url = metrics_url(pod_ip)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise MetricsError(f"GET {url} answered {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_METRICS_BYTES:
                    raise MetricsError(f"GET {url} answered more than {MAX_METRICS_BYTES} bytes")
            return body.decode("utf-8", errors="replace")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ConcurrencyAutoscaler:
    """One scrape-and-decide task per ModelService in concurrency mode.

    `target(key)` gives the round its inputs (None once the ModelService is gone), `scaled(key,
    record)` takes a changed count, `post_event(spec, reason, message)` reports it, and
    `observed(key, view)` takes a changed `AutoscalerView` when the count stays. Tests drive
    `run_round` directly with a fake `fetch` and `clock`.
    """

    def __init__(
        self,
        settings: OperatorSettings,
        *,
        target: Callable[[Key], Target | None],
        scaled: Callable[[Key, ScaleRecord], None],
        post_event: Callable[[ModelServiceSpec, str, str], Awaitable[None]],
        observed: Callable[[Key, AutoscalerView], None] | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._target = target
        self._scaled = scaled
        self._post_event = post_event
        self._observed = observed
        self._fetcher: MetricsFetcher | None = None  # ours to close
        if fetch is None:
            self._fetcher = fetch = MetricsFetcher()
        self._fetch: Fetch = fetch
        self._clock = clock
        self.states: dict[Key, WindowState] = {}
        self.views: dict[Key, AutoscalerView] = {}  # the last view reported per ModelService
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    def track(self, key: Key, spec: ModelServiceSpec) -> None:
        """Runs the loop for `key` while its metric is concurrency; stops it otherwise."""
        if spec.autoscaling_metric is AutoscalingMetric.CONCURRENCY:
            task = self._tasks.get(key)
            if task is None or task.done():
                self._tasks[key] = asyncio.create_task(self._loop(key), name=f"autoscale/{key[0]}/{key[1]}")
        else:
            self.forget(key)

    def forget(self, key: Key) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.states.pop(key, None)
        self.views.pop(key, None)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._fetcher is not None:
            await self._fetcher.close()

    async def _loop(self, key: Key) -> None:
        period = self.settings.autoscale_period_seconds
        while True:
            started = self._clock()
            try:
                if not await self.run_round(key):
                    break
            except asyncio.CancelledError:
                raise
            except Exception as err:  # one bad round must not end autoscaling for good
                log.warning(
                    "autoscaler round failed", extra=kv(namespace=key[0], name=key[1], error=str(err)[:300])
                )
            await asyncio.sleep(max(0.0, period - (self._clock() - started)))
        self._tasks.pop(key, None)
        self.states.pop(key, None)
        self.views.pop(key, None)

    async def run_round(self, key: Key) -> Decision | None:
        """One round; None when the ModelService is gone or no longer autoscaled by concurrency."""
        target = self._target(key)
        if target is None or target.spec.autoscaling_metric is not AutoscalingMetric.CONCURRENCY:
            return None
        spec = autoscaling_spec(target, self.settings)
        samples = await sample_pods(target.pods, target.spec.model_name, self._fetch)
        decision = decide(self.states.get(key, WindowState()), samples, spec, self._clock())
        self.states[key] = decision.state
        view = AutoscalerView(decision.mode.value, tuple(sorted(decision.excluded)))
        reported, self.views[key] = self.views.get(key), view
        if not decision.changed:
            if view != reported and self._observed is not None:
                self._observed(key, view)
            return decision
        record = ScaleRecord(
            replicas=decision.replicas,
            time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            reason=decision.reason,
            mode=view.mode,
            excluded=view.excluded,
        )
        log.info(
            "autoscaled",
            extra=kv(
                namespace=key[0],
                name=key[1],
                replicas=decision.replicas,
                was=decision.previous_replicas,
                reason=decision.reason,
            ),
        )
        self._scaled(key, record)
        event_reason = "ScaledUp" if decision.replicas > decision.previous_replicas else "ScaledDown"
        try:
            await self._post_event(target.spec, event_reason, decision.reason)
        except Exception as err:  # the Event is a report; the scale already happened
            log.warning(
                "could not post the scale event",
                extra=kv(namespace=key[0], name=key[1], error=str(err)[:300]),
            )
        return decision
