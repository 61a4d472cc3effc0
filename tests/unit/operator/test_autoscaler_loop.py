"""The concurrency autoscaler wired into the operator: scrape ready pods only, by IP only, call
`decide`, hand changed counts to the reconciler (which applies and reports them); metric cpu
becomes an HPA that owns the Deployment's replicas, and going back deletes it.

The API server and the pods are fakes here; tests/integration/operator/test_autoscaling.py runs
the same against a real control plane and real servers.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Mapping
from typing import Any, cast

import pytest

from kubemaas_operator.autoscaler_loop import (
    MAX_METRICS_BYTES,
    AutoscalerView,
    ConcurrencyAutoscaler,
    MetricsFetcher,
    ScaleRecord,
    Target,
    metrics_url,
    sample_pods,
)
from kubemaas_operator.autoscaling import MetricsError, PodSample, in_flight_from_metrics
from kubemaas_operator.builders import build_children, build_hpa
from kubemaas_operator.clients import KubeApiError, KubeClient
from kubemaas_operator.reconciler import HPA_HANDOVER_MANAGER, Reconciler, hpa_replicas
from kubemaas_operator.settings import OperatorSettings, settings_from_env
from kubemaas_operator.spec import AutoscalingMetric, ModelServiceSpec, parse_model_service

SETTINGS = OperatorSettings(
    autoscale_period_seconds=0.01, autoscale_stable_window_seconds=10, autoscale_panic_window_seconds=4
)
KEY = ("ml", "mlp")


def body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "mlp", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": {"uri": "pvc://models/mlp"}, "maxReplicas": 10, **spec},
    }


def pod(name: str, ip: str | None, *, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "labels": {"kubemaas.io/model-service": "mlp"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip is not None:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def page(in_flight: float, model: str = "mlp") -> str:
    return (
        "# HELP kubemaas_inflight_requests In-flight requests.\n"
        "# TYPE kubemaas_inflight_requests gauge\n"
        f'kubemaas_inflight_requests{{model="{model}"}} {in_flight}\n'
    )


class Pages:
    """A fake /metrics per pod IP; records every address it was asked to dial."""

    def __init__(self, pages: dict[str, float | Exception]) -> None:
        self.pages = pages
        self.dialled: list[str] = []

    async def __call__(self, pod_ip: str) -> str:
        metrics_url(pod_ip)  # the real fetcher's refusal of anything but an IP
        self.dialled.append(pod_ip)
        value = self.pages[pod_ip]
        if isinstance(value, Exception):
            raise value
        return page(value)


def test_the_scrape_url_is_the_pod_ip_and_never_a_name() -> None:
    assert metrics_url("127.1.0.7") == "http://127.1.0.7:8002/metrics"
    assert metrics_url("fd00::7") == "http://[fd00::7]:8002/metrics"
    for bad in ("", "example.com", "127.1.0.7:80", "http://127.1.0.7", "127.1.0.7/x"):
        with pytest.raises(ValueError):
            metrics_url(bad)


def test_only_ready_pods_are_scraped_and_failures_are_recorded_not_guessed() -> None:
    pages = Pages({"127.1.0.1": 5, "127.1.0.2": OSError("connection refused"), "127.1.0.3": 7})
    pods = [
        pod("a", "127.1.0.1"),
        pod("b", "127.1.0.2"),
        pod("c", "127.1.0.3", ready=False),
        pod("d", "127.1.0.3", terminating=True),
        pod("e", None),
        pod("f", "example.com"),
    ]
    samples = asyncio.run(sample_pods(pods, "mlp", pages))
    assert samples == [
        PodSample("a", True, 5.0),
        PodSample("b", True, None),
        PodSample("c", False, None),
        PodSample("d", False, None),
        PodSample("e", True, None),
        PodSample("f", True, None),
    ]
    assert sorted(pages.dialled) == ["127.1.0.1", "127.1.0.2"]


def test_a_page_without_the_models_series_is_a_failed_scrape() -> None:
    async def other_model(_: str) -> str:
        return page(3, model="other")

    assert asyncio.run(sample_pods([pod("a", "127.1.0.1")], "mlp", other_model)) == [
        PodSample("a", True, None)
    ]


class Rounds:
    """An autoscaler over one ModelService whose pods and clock the test moves."""

    def __init__(self, spec: ModelServiceSpec, pods: list[dict[str, Any]], pages: Pages) -> None:
        self.spec = spec
        self.pods = pods
        self.current = spec.min_replicas
        self.now = 0.0
        self.records: list[ScaleRecord] = []
        self.views: list[AutoscalerView] = []
        self.events: list[tuple[str, str]] = []

        async def post_event(_: ModelServiceSpec, reason: str, message: str) -> None:
            self.events.append((reason, message))

        self.autoscaler = ConcurrencyAutoscaler(
            SETTINGS,
            target=lambda key: Target(self.spec, self.current, self.pods),
            scaled=self.scaled,
            post_event=post_event,
            observed=lambda key, view: self.views.append(view),
            fetch=pages,
            clock=lambda: self.now,
        )

    def scaled(self, key: tuple[str, str], record: ScaleRecord) -> None:
        self.records.append(record)
        self.current = record.replicas

    def run(self, seconds: float) -> None:
        async def go() -> None:
            end = self.now + seconds
            while self.now < end:
                await self.autoscaler.run_round(KEY)
                self.now += 2

        asyncio.run(go())


def test_a_burst_scales_up_at_once_and_is_reported_with_the_pods_left_out() -> None:
    spec = parse_model_service(body(autoscaling={"target": 8, "scaleDownDelaySeconds": 4}), SETTINGS)
    pages = Pages({"127.1.0.1": 40.0})
    rounds = Rounds(spec, [pod("a", "127.1.0.1"), pod("b", "127.1.0.2", ready=False)], pages)
    rounds.run(2)
    assert [r.replicas for r in rounds.records] == [5]
    record = rounds.records[0]
    assert record.mode == "panic"
    assert record.excluded == ("b: not ready",)
    assert record.reason.startswith("scale up 1 -> 5: ") and "left out 1 not ready" in record.reason
    assert record.status_fields()["autoscaler"] == {"mode": "panic", "excluded": ["b: not ready"]}
    assert rounds.events == [("ScaledUp", record.reason)]
    assert pages.dialled == ["127.1.0.1"], "the unready pod was dialled"


def test_without_load_it_scales_back_down_after_the_windows_and_the_delay() -> None:
    spec = parse_model_service(body(autoscaling={"target": 8, "scaleDownDelaySeconds": 4}), SETTINGS)
    pages = Pages({"127.1.0.1": 40.0})
    rounds = Rounds(spec, [pod("a", "127.1.0.1")], pages)
    rounds.run(2)
    pages.pages["127.1.0.1"] = 0.0
    rounds.run(120)
    assert rounds.current == 1
    assert rounds.events[0][0] == "ScaledUp"
    assert {reason for reason, _ in rounds.events[1:]} == {"ScaledDown"}


def test_a_pod_left_out_shows_in_status_without_a_scale_and_only_when_the_view_changes() -> None:
    spec = parse_model_service(body(autoscaling={"target": 8}), SETTINGS)
    pages = Pages({"127.1.0.1": 4.0, "127.1.0.2": 4.0})
    rounds = Rounds(spec, [pod("a", "127.1.0.1"), pod("b", "127.1.0.2")], pages)
    rounds.current = 2
    rounds.run(10)  # five rounds, one view: nothing to report after the first
    assert rounds.views == [AutoscalerView("stable", ())]
    pages.pages["127.1.0.2"] = OSError("connection refused")
    rounds.run(10)
    pages.pages["127.1.0.2"] = 4.0
    rounds.run(10)
    assert rounds.views == [
        AutoscalerView("stable", ()),
        AutoscalerView("stable", ("b: scrape failed",)),
        AutoscalerView("stable", ()),
    ]
    assert rounds.records == [] and rounds.current == 2  # 8 in flight over 2 pods: no scale
    assert AutoscalerView("stable", ("b: scrape failed",)).status_fields() == {
        "autoscaler": {"mode": "stable", "excluded": ["b: scrape failed"]}
    }


def test_no_measurement_holds_the_count() -> None:
    spec = parse_model_service(body(), SETTINGS)
    rounds = Rounds(spec, [pod("a", "127.1.0.1")], Pages({"127.1.0.1": TimeoutError()}))
    rounds.current = 3
    rounds.run(20)
    assert rounds.records == [] and rounds.current == 3


def test_the_loop_runs_only_in_concurrency_mode() -> None:
    async def go() -> tuple[bool, bool]:
        pages = Pages({})
        autoscaler = ConcurrencyAutoscaler(
            SETTINGS,
            target=lambda key: None,
            scaled=lambda key, record: None,
            post_event=lambda *args: asyncio.sleep(0),
            fetch=pages,
        )
        autoscaler.track(KEY, parse_model_service(body(autoscaling={"metric": "cpu"}), SETTINGS))
        cpu = KEY in autoscaler._tasks
        autoscaler.track(KEY, parse_model_service(body(), SETTINGS))
        concurrency = KEY in autoscaler._tasks
        await autoscaler.stop()
        return cpu, concurrency

    assert asyncio.run(go()) == (False, True)


def test_settings_shorten_the_period_and_windows_for_tests() -> None:
    assert (
        OperatorSettings().autoscale_period_seconds,
        OperatorSettings().autoscale_stable_window_seconds,
        OperatorSettings().autoscale_panic_window_seconds,
    ) == (2.0, 60.0, 6.0)
    settings = settings_from_env(
        {
            "KUBEMAAS_AUTOSCALE_PERIOD_SECONDS": "0.5",
            "KUBEMAAS_AUTOSCALE_STABLE_WINDOW_SECONDS": "12",
            "KUBEMAAS_AUTOSCALE_PANIC_WINDOW_SECONDS": "3",
        }
    )
    assert (
        settings.autoscale_period_seconds,
        settings.autoscale_stable_window_seconds,
        settings.autoscale_panic_window_seconds,
    ) == (0.5, 12.0, 3.0)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="KUBEMAAS_AUTOSCALE_PERIOD_SECONDS"):
            settings_from_env({"KUBEMAAS_AUTOSCALE_PERIOD_SECONDS": bad})


# --- metric cpu: an HPA -------------------------------------------------------------------


def test_metric_cpu_emits_an_hpa_on_the_deployment_and_leaves_it_the_replicas() -> None:
    spec = parse_model_service(
        body(minReplicas=2, maxReplicas=6, autoscaling={"metric": "cpu", "target": 70}), SETTINGS
    )
    assert spec.autoscaling_metric is AutoscalingMetric.CPU
    children = {c["kind"]: c for c in build_children(spec, replicas=2)}
    assert "replicas" not in children["Deployment"]["spec"]
    hpa = children["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["name"] == "mlp"
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlp"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    assert (
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60
    )  # the default scaleDownDelaySeconds


def test_the_hpa_never_asks_for_zero_replicas_or_an_overlong_window() -> None:
    spec = parse_model_service(
        body(minReplicas=0, autoscaling={"metric": "cpu", "scaleDownDelaySeconds": 86400}), SETTINGS
    )
    hpa = build_hpa(spec)
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 3600


def test_concurrency_mode_sets_replicas_and_emits_no_hpa() -> None:
    spec = parse_model_service(body(), SETTINGS)
    children = {c["kind"]: c for c in build_children(spec, replicas=3)}
    assert children["Deployment"]["spec"]["replicas"] == 3
    assert "HorizontalPodAutoscaler" not in children


def test_in_cpu_mode_the_desired_count_is_the_hpas_within_bounds() -> None:
    spec = parse_model_service(body(minReplicas=2, maxReplicas=5, autoscaling={"metric": "cpu"}), SETTINGS)
    assert hpa_replicas(spec, None) == 2
    assert hpa_replicas(spec, {"spec": {"replicas": 4}}) == 4
    assert hpa_replicas(spec, {"spec": {"replicas": 9}}) == 5


# --- the reconciler applies what the autoscaler decided -------------------------------------


class RecordingClient:
    def __init__(self) -> None:
        self.applied: list[tuple[dict[str, Any], str | None, bool]] = []
        self.deleted: list[tuple[str, str]] = []
        self.statuses: list[Mapping[str, Any]] = []
        self.conflict_on_handover = False

    def apply(
        self, manifest: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> dict[str, Any]:
        if field_manager == HPA_HANDOVER_MANAGER and self.conflict_on_handover:
            raise KubeApiError(409, "Conflict", "replicas are the HPA's")
        self.applied.append((copy.deepcopy(dict(manifest)), field_manager, force))
        result = copy.deepcopy(dict(manifest))
        result["metadata"].update(generation=1, resourceVersion="1")
        return result

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.statuses.append(status)

    def get(self, *args: str) -> None:
        return None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append((kind, name))
        return True

    def deployments(self) -> list[dict[str, Any]]:
        return [m for m, manager, _ in self.applied if m["kind"] == "Deployment" and manager is None]


def reconcile(client: RecordingClient, *steps: Any) -> Reconciler:
    """Runs `steps` (callables of the reconciler) each followed by one reconcile of KEY."""

    async def go() -> Reconciler:
        loop = Reconciler(cast(KubeClient, client), SETTINGS)
        try:
            for step in steps:
                step(loop)
                await loop.reconcile(KEY, force=True)
        finally:
            await loop.stop()
        return loop

    return asyncio.run(go())


def record(replicas: int) -> ScaleRecord:
    return ScaleRecord(replicas, "2026-01-01T00:00:00Z", f"scale up 1 -> {replicas}: test", "stable", ())


def test_a_scale_decision_reaches_the_deployment_and_the_status() -> None:
    client = RecordingClient()

    def scale(loop: Reconciler) -> None:
        loop.bodies[KEY] = body()
        loop.scaled[KEY] = record(3)

    reconcile(client, scale)
    assert client.deployments()[-1]["spec"]["replicas"] == 3
    status = client.statuses[-1]
    assert status["desiredReplicas"] == 3
    assert status["lastScaleTime"] == "2026-01-01T00:00:00Z"
    assert status["scaleReason"] == "scale up 1 -> 3: test"
    assert status["autoscaler"] == {"mode": "stable", "excluded": []}


def test_a_view_without_a_scale_updates_status_and_keeps_the_last_scale() -> None:
    client = RecordingClient()

    def scale(loop: Reconciler) -> None:
        loop.bodies[KEY] = body()
        loop.scaled[KEY] = record(3)

    def pod_fails(loop: Reconciler) -> None:
        loop.on_observed(KEY, AutoscalerView("stable", ("mlp-1: scrape failed",)))

    def scales_again(loop: Reconciler) -> None:
        loop.on_scaled(KEY, record(4))

    reconcile(client, scale, pod_fails, scales_again)
    after_scale, after_view, after_rescale = client.statuses[0], client.statuses[1], client.statuses[2]
    assert after_view["autoscaler"] == {"mode": "stable", "excluded": ["mlp-1: scrape failed"]}
    assert (after_view["desiredReplicas"], after_view["lastScaleTime"]) == (3, "2026-01-01T00:00:00Z")
    assert after_view["scaleReason"] == after_scale["scaleReason"]
    # A later scale carries the view of its own round.
    assert after_rescale["desiredReplicas"] == 4
    assert after_rescale["autoscaler"] == {"mode": "stable", "excluded": []}


def test_a_canary_keeps_its_share_as_the_autoscaler_scales() -> None:
    client = RecordingClient()
    stable_spec = {"model": {"uri": "pvc://models/mlp"}, "maxReplicas": 10}
    canary = body(model={"uri": "pvc://models/mlp2"}, rollout={"canaryPercent": 25})
    canary["status"] = {"stable": {"revision": "old", "spec": stable_spec}}

    def scale_to(n: int) -> Any:
        def step(loop: Reconciler) -> None:
            loop.bodies[KEY] = canary
            loop.scaled[KEY] = record(n)

        return step

    reconcile(client, scale_to(4), scale_to(8))
    by_name: dict[str, list[int]] = {}
    for deployment in client.deployments():
        by_name.setdefault(deployment["metadata"]["name"], []).append(deployment["spec"]["replicas"])
    assert by_name == {"mlp": [3, 6], "mlp-canary": [1, 2]}


def cache_deployment(loop: Reconciler, *, replicas: int) -> None:
    """The operator's watch has seen the ModelService's Deployment at `replicas`."""
    labels = {"kubemaas.io/model-service": "mlp"}
    deployment = {
        "metadata": {"name": "mlp", "namespace": "ml", "labels": labels},
        "spec": {"replicas": replicas},
    }
    loop.cache.update("Deployment", None, deployment)


def test_switching_to_cpu_hands_replicas_to_the_hpa_and_back_deletes_it() -> None:
    client = RecordingClient()

    def cpu(loop: Reconciler) -> None:
        loop.bodies[KEY] = body(autoscaling={"metric": "cpu"}, maxReplicas=6)
        cache_deployment(loop, replicas=3)

    def concurrency(loop: Reconciler) -> None:
        loop.bodies[KEY] = {**body(), "status": {"desiredReplicas": 3}}
        loop.cache.update(
            "HorizontalPodAutoscaler",
            None,
            {"metadata": {"name": "mlp", "namespace": "ml", "labels": {"kubemaas.io/model-service": "mlp"}}},
        )

    reconcile(client, cpu, concurrency)
    handover = [(m, force) for m, manager, force in client.applied if manager == HPA_HANDOVER_MANAGER]
    assert handover == [
        (
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "mlp", "namespace": "ml"},
                "spec": {"replicas": 3},
            },
            False,
        )
    ]
    first, second = client.deployments()
    assert "replicas" not in first["spec"]
    assert second["spec"]["replicas"] == 3
    assert client.statuses[0]["desiredReplicas"] == 3
    assert ("HorizontalPodAutoscaler", "mlp") in client.deleted


def test_a_handover_conflict_means_the_hpa_already_owns_the_count() -> None:
    client = RecordingClient()
    client.conflict_on_handover = True

    def cpu(loop: Reconciler) -> None:
        loop.bodies[KEY] = body(autoscaling={"metric": "cpu"})
        cache_deployment(loop, replicas=2)

    reconcile(client, cpu)
    assert "replicas" not in client.deployments()[-1]["spec"]
    assert "HorizontalPodAutoscaler" in [m["kind"] for m, _, _ in client.applied]


def test_the_handover_happens_once_not_at_every_apply() -> None:
    client = RecordingClient()

    def cpu(loop: Reconciler) -> None:
        loop.bodies[KEY] = body(autoscaling={"metric": "cpu"})
        cache_deployment(loop, replicas=2)

    reconcile(client, cpu, cpu, cpu)
    assert [manager for _, manager, _ in client.applied].count(HPA_HANDOVER_MANAGER) == 1
    assert len(client.deployments()) == 3


# --- the real fetcher, against a tiny HTTP server on a loopback address ------------------------


def serve_once_per_connection(answer: bytes, *, delay: float = 0.0) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client gave up first: the point of the slow case
        finally:
            writer.close()

    return handle


def http(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def fetch_from(answer: bytes, *, delay: float = 0.0, timeout: float = 1.0) -> str | Exception:
    """What MetricsFetcher makes of `answer`, served on a random 127.99.x.y:8002."""
    ip = f"127.99.{random.randrange(1, 255)}.{random.randrange(1, 255)}"

    async def go() -> str | Exception:
        server = await asyncio.start_server(serve_once_per_connection(answer, delay=delay), ip, 8002)
        fetcher = MetricsFetcher(timeout_seconds=timeout)
        try:
            return await fetcher(ip)
        except Exception as err:
            return err
        finally:
            await fetcher.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(go())


def test_the_fetcher_reads_a_metrics_page_from_the_pod_ip() -> None:
    assert in_flight_from_metrics(str(fetch_from(http("200 OK", page(3).encode()))), "mlp") == 3.0


def test_the_fetcher_refuses_errors_slow_pods_and_oversized_pages() -> None:
    assert isinstance(fetch_from(http("500 Internal Server Error", b"no")), MetricsError)
    assert isinstance(fetch_from(http("200 OK", page(1).encode()), delay=1.0, timeout=0.2), TimeoutError)
    huge = b"#" * (MAX_METRICS_BYTES + 10)
    assert isinstance(fetch_from(http("200 OK", huge)), MetricsError)
