"""Autoscaling on the local control plane (issue 4).

- metric cpu: the operator emits an autoscaling/v2 HPA the API server accepts, hands it the
  Deployment's replica count without a reset to 1, and deletes it when the ModelService goes back
  to the concurrency autoscaler.
- metric concurrency, end to end: every Ready pod of the ModelService gets a real `kubemaas
  serve` process bound to the pod's simulated IP (KWOK hands out 127.1.0.0/16), the test drives
  real gRPC load at those IPs, and the operator, scraping the servers' /metrics, scales the
  ModelService from 1 to the replicas the load needs and back to 1 after the load stops. New
  pods get their own servers as they appear; servers of pods that went away are stopped.

Every address dialled is a pod IP in 127.1.0.0/16 (gRPC and metrics) or the API server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import yaml

from kubemaas_server.model_config import DataType, ModelConfig, TensorSpec
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.repository import save_model
from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import (
    OperatorProcess,
    eventually,
    get,
    model_service,
    models_claim,
)

pytestmark = pytest.mark.integration

POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# Pod IPs are dialled directly, never through a proxy the environment may name.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
NO_PROXY_OPTIONS = [("grpc.enable_http_proxy", 0)]


def apply(cluster: LocalCluster, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def replicas_manager(deployment: dict[str, Any]) -> set[str]:
    """The field managers that own the Deployment's spec.replicas."""
    return {
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields", [])
        if "f:replicas" in (entry.get("fieldsV1", {}).get("f:spec") or {})
    }


# --- metric cpu ---------------------------------------------------------------------------


def test_metric_cpu_hands_the_deployment_to_an_hpa_and_switching_back_deletes_it(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str
) -> None:
    models_claim(cluster, namespace)
    resources = {"requests": {"cpu": "100m"}}
    apply(cluster, namespace, model_service("cpu", minReplicas=3, maxReplicas=4, resources=resources))
    eventually(
        lambda: get(cluster, "deployment", "cpu", "-n", namespace)["spec"]["replicas"] == 3,
        what="3 replicas under the concurrency autoscaler",
    )

    # One change: metric cpu with a lower floor. The HPA takes over at 3 (within its bounds,
    # and no metrics server runs here, so it has no reason to move); a Deployment that lost its
    # replicas field would drop to 1.
    patch = '{"spec":{"minReplicas":1,"autoscaling":{"metric":"cpu","target":70}}}'
    cluster.kubectl("patch", "ms", "cpu", "-n", namespace, "--type=merge", "-p", patch)
    hpa = eventually(
        lambda: get(cluster, "hpa", "-n", namespace)["items"], what="the HorizontalPodAutoscaler"
    )[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["name"] == "cpu"
    assert hpa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubemaas"
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cpu"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]

    def handed_over() -> bool:
        deployment = get(cluster, "deployment", "cpu", "-n", namespace, "--show-managed-fields")
        return "kubemaas" not in replicas_manager(deployment)

    eventually(handed_over, what="the operator to give up spec.replicas")
    # The HPA controller has looked at it (it syncs every 15 s) and the count held.
    eventually(
        lambda: get(cluster, "hpa", "cpu", "-n", namespace).get("status", {}).get("conditions"),
        timeout=60,
        what="the HPA controller to process the HPA",
    )
    assert get(cluster, "deployment", "cpu", "-n", namespace)["spec"]["replicas"] == 3
    eventually(
        lambda: get(cluster, "ms", "cpu", "-n", namespace)["status"].get("desiredReplicas") == 3,
        what="status.desiredReplicas to follow the HPA's count",
    )

    cluster.kubectl(
        "patch",
        "ms",
        "cpu",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"autoscaling":{"metric":"concurrency"}}}',
    )
    eventually(lambda: not get(cluster, "hpa", "-n", namespace)["items"], what="the HPA to be deleted")

    def owned_again() -> bool:
        deployment = get(cluster, "deployment", "cpu", "-n", namespace, "--show-managed-fields")
        return "kubemaas" in replicas_manager(deployment) and deployment["spec"]["replicas"] == 3

    eventually(owned_again, what="the operator to own spec.replicas again, at the HPA's last count")


# --- metric concurrency, end to end ---------------------------------------------------------


class Busy(torch.nn.Module):
    """A fixed ~30 ms of CPU per forward pass, whatever the batch: requests wait inside the
    server (in flight) for most of their life, so the gauge reads the number of clients."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(256, 256) / 16.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.weight
        for _ in range(40):
            y = torch.tanh(y @ self.weight)
        return x * 2.0 + y.mean()


def busy_repository(root: Path) -> Path:
    tensor = TensorSpec
    config = ModelConfig(
        "busy",
        inputs=(tensor("input", DataType.FP32, (4,)),),
        outputs=(tensor("output", DataType.FP32, (4,)),),
        max_batch_size=16,
    )
    save_model(root, config, Busy())
    return root


def infer_request() -> bytes:
    request = pb.ModelInferRequest(model_name="busy")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), dtype=np.float32).tobytes())
    return request.SerializeToString()


class PodServers:
    """Keeps one `kubemaas serve` per live pod of a ModelService, bound to the pod's IP.

    A thread lists the pods every half second: a pod with an IP gets a server; a pod that is
    gone or terminating loses it. `ready` holds the IPs whose server answers its readiness path.
    """

    def __init__(
        self, cluster: LocalCluster, namespace: str, name: str, repository: Path, logs: Path
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = f"kubemaas.io/model-service={name}"
        self.repository = repository
        self.logs = logs
        self.servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}  # pod -> (ip, process)
        self.ready: list[str] = []
        self.started: set[str] = set()  # every pod that ever got a server
        self.held: set[str] = set()  # pods whose server is kept down, as if it had crashed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-servers", daemon=True)

    def __enter__(self) -> PodServers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pod in list(self.servers):
            self._stop_server(pod)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a slow API server skips a beat, no more
                self._sync()
            self._stop.wait(0.5)

    def _sync(self) -> None:
        pods = get(self.cluster, "pods", "-n", self.namespace, "-l", self.selector)["items"]
        live = {
            p["metadata"]["name"]: p["status"]["podIP"]
            for p in pods
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
        }
        for pod in list(self.servers):
            if pod not in live or pod in self.held or self.servers[pod][1].poll() is not None:
                self._stop_server(pod)
        for pod, ip in live.items():
            if pod not in self.servers and pod not in self.held:
                self._start_server(pod, ip)
        ready = []
        for ip, _ in self.servers.values():
            url = f"http://{ip}:8002/v2/health/ready"
            with contextlib.suppress(OSError), DIRECT.open(url, timeout=1) as answer:
                if answer.status == 200:
                    ready.append(ip)
        self.ready = sorted(ready)

    def _start_server(self, pod: str, ip: str) -> None:
        assert ipaddress.ip_address(ip) in POD_NETWORK, f"pod {pod} has IP {ip}, outside 127.1.0.0/16"
        with (self.logs / f"{pod}.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubemaas",
                    "serve",
                    f"--model-repository={self.repository}",
                    f"--host={ip}",
                    "--grpc-port=8001",
                    "--metrics-port=8002",
                    "--torch-threads=1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        self.servers[pod] = (ip, process)
        self.started.add(pod)

    def _stop_server(self, pod: str) -> None:
        _, process = self.servers.pop(pod)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Load:
    """`clients` closed-loop gRPC clients, each sending to the ready servers in turn."""

    def __init__(self, servers: PodServers, clients: int) -> None:
        self.servers = servers
        self.clients = clients
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        payload = infer_request()
        channels: dict[str, grpc.aio.Channel] = {}
        turn = itertools.count()

        async def client(offset: int) -> None:
            while not self._stop.is_set():
                ready = self.servers.ready
                if not ready:
                    await asyncio.sleep(0.2)
                    continue
                ip = ready[(next(turn) + offset) % len(ready)]
                assert ipaddress.ip_address(ip) in POD_NETWORK
                if ip not in channels:
                    channels[ip] = grpc.aio.insecure_channel(f"{ip}:8001", options=NO_PROXY_OPTIONS)
                infer = channels[ip].unary_unary(METHOD)
                try:
                    await infer(payload, timeout=30)
                    self.answered += 1
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)  # a server that went away with its pod

        await asyncio.gather(*(client(i) for i in range(self.clients)))
        for channel in channels.values():
            await channel.close()


@pytest.fixture
def fast_autoscaler(
    operator: OperatorProcess, cluster: LocalCluster, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator with short autoscaler windows in place of the session's, which comes back afterwards."""
    operator.stop()
    workdir = tmp_path / "operator"
    workdir.mkdir()
    env = {
        "KUBEMAAS_AUTOSCALE_PERIOD_SECONDS": "1",
        "KUBEMAAS_AUTOSCALE_STABLE_WINDOW_SECONDS": "8",
        "KUBEMAAS_AUTOSCALE_PANIC_WINDOW_SECONDS": "2",
    }
    process = OperatorProcess(cluster, workdir, env=env)
    try:
        yield process
    finally:
        process.stop()
        print(f"\n--- autoscaling operator log tail ---\n{process.logs()[-4000:]}")
        operator.restart()


@pytest.mark.timeout(300)
def test_concurrency_autoscaler_scales_real_servers_up_under_load_and_back_down(
    fast_autoscaler: OperatorProcess, cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    models_claim(cluster, namespace)
    repository = busy_repository(tmp_path / "models")
    logs = tmp_path / "servers"
    logs.mkdir()
    # 6 clients at 2 in flight per replica need 3 replicas; maxReplicas 4 shows it stops there.
    spec = {
        "model": {"uri": "pvc://models/busy", "name": "busy"},
        "minReplicas": 1,
        "maxReplicas": 4,
        "autoscaling": {"metric": "concurrency", "target": 2, "scaleDownDelaySeconds": 10},
    }
    apply(cluster, namespace, model_service("auto", **spec))

    def scale() -> tuple[int | None, int | None]:
        status = get(cluster, "ms", "auto", "-n", namespace).get("status", {})
        deployment = get(cluster, "deployment", "auto", "-n", namespace)
        return status.get("desiredReplicas"), deployment["spec"].get("replicas")

    with PodServers(cluster, namespace, "auto", repository, logs) as servers:
        eventually(lambda: len(servers.ready) == 1, timeout=90, what="the first pod's server")
        assert scale() == (1, 1)
        with Load(servers, clients=6) as load:
            eventually(lambda: scale() == (3, 3), timeout=90, what="a scale-up to 3 replicas")
            eventually(lambda: len(servers.ready) == 3, timeout=90, what="servers for the new pods")
            # Under steady load the count holds at what the load needs: no flapping, not max.
            answered = load.answered
            time.sleep(8)
            assert scale() == (3, 3)
            assert load.answered > answered, "the load stopped flowing"
        status = get(cluster, "ms", "auto", "-n", namespace)["status"]
        assert status["scaleReason"].startswith("scale up "), status
        assert status["lastScaleTime"]
        eventually(lambda: scale() == (1, 1), timeout=90, what="a scale-down to 1 replica after the load")
        status = get(cluster, "ms", "auto", "-n", namespace)["status"]
        assert status["scaleReason"].startswith("scale down "), status
        assert len(servers.started) >= 3, "every new pod got its own server"
        eventually(lambda: len(servers.servers) == 1, timeout=60, what="servers of removed pods to stop")

        # The last server goes down while its pod stays Ready (KWOK runs no probes): the
        # autoscaler cannot measure it, says so in status without scaling, and recovers.
        def view() -> dict[str, Any]:
            return dict(get(cluster, "ms", "auto", "-n", namespace)["status"].get("autoscaler") or {})

        pod = next(iter(servers.servers))
        servers.held.add(pod)
        down = {"mode": "hold", "excluded": [f"{pod}: scrape failed"]}
        eventually(lambda: view() == down, timeout=60, what=f"status naming {pod} as not measured")
        assert scale() == (1, 1)
        servers.held.discard(pod)
        eventually(
            lambda: view() == {"mode": "stable", "excluded": []}, timeout=90, what="the view to recover"
        )

    events = get(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=auto")["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["kind"] == "ModelService"]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons, reasons
