"""How fast the operator makes N ModelServices Ready, where the time goes, and its memory.

`make bench-operator` runs this: a fresh local control plane with 50 simulated nodes, the CRDs,
one `kubemaas operator` process, then for each N a fresh namespace with one bound `models`
claim and N ModelServices (one replica each) applied at once. Watches on the ModelServices,
their Deployments and their pods time every object, so each round says not only how long
until every ModelService reported Ready but which stage took it:

- children: until every ModelService has its Deployment (the operator's first pass);
- pods Ready: until every server pod is Ready (the cluster's controllers, scheduler, KWOK);
- status lag: per ModelService, its Ready condition's arrival minus its pod's readiness
  (the operator noticing and writing status).

CPU seconds of the operator and of the control plane over the round, and the operator's peak
resident memory (VmHWM), come from /proc. The table goes to stdout and to
docs/benchmarks-operator.md. A benchmark, not a test: nothing here asserts. Everything runs on
this machine's cores, so a busy machine shows in the figures: the load average before each
round is recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import kubernetes
import yaml

from kubemaas_cluster.binaries import ensure_binaries, load_groups
from kubemaas_cluster.controlplane import ClusterOptions, ClusterState, down, up
from kubemaas_cluster.nodes import NodePlan

ROOT = Path(__file__).resolve().parents[1]
GROUP_PATH = "/apis/kubemaas.io/v1alpha1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Concurrent creators: one `kubectl apply` of N documents sends them one after another, which on
# two busy cores takes longer than the operator needs for them; a GitOps tool or a script in a
# loop would do the same, but the benchmark is about the operator, so the load arrives at once.
CREATORS = 8
OPERATOR_CHILDREN = ("deployments", "services", "poddisruptionbudgets")


def say(message: str) -> None:
    print(f"[bench-operator] {message}", file=sys.stderr, flush=True)


def kubectl(binaries: dict[str, Path], kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries["kubectl"]), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()[:500]}")
    return result.stdout


# --- /proc ---------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes; a process that is gone counts as zero."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


# --- watching ------------------------------------------------------------------------------


def condition_true(type_: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)

    return check


@dataclass
class Timeline:
    """When each object was first seen, and first Ready, by one watch on a namespace's objects.

    `key` names the ModelService an object belongs to, so pods and Deployments line up with
    their owners. Events are read as raw JSON lines: the client's typed models would cost the
    benchmark more CPU than the operator it measures.
    """

    api: kubernetes.client.ApiClient
    path: str
    key: Callable[[dict[str, Any]], str | None]
    is_ready: Callable[[dict[str, Any]], bool]
    label_selector: str = ""
    seen: dict[str, float] = field(default_factory=dict)
    became_ready: dict[str, float] = field(default_factory=dict)
    _response: Any = None

    def start(self) -> None:
        """Returns once the watch is established, so nothing created afterwards is missed."""
        query = [("watch", "true"), ("timeoutSeconds", "1800")]
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        params = self.api.param_serialize(
            method="GET",
            resource_path=self.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        self._response = self.api.call_api(*params).response
        threading.Thread(target=self._read, daemon=True, name=f"watch {self.path}").start()

    def _read(self) -> None:
        try:
            for line in self._lines():
                event = json.loads(line)
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                name = self.key(event["object"])
                if name is None:
                    continue
                now = time.monotonic()
                self.seen.setdefault(name, now)
                if self.is_ready(event["object"]):
                    self.became_ready.setdefault(name, now)
        except Exception:  # the round is over and the connection was closed under us
            return

    def _lines(self) -> Iterator[bytes]:
        pending = b""
        for chunk in self._response.stream(65536, decode_content=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from (line for line in lines if line.strip())

    def stop(self) -> None:
        if self._response is not None:
            self._response.shutdown()
            self._response.release_conn()


def by_name(obj: dict[str, Any]) -> str | None:
    name: str | None = obj.get("metadata", {}).get("name")
    return name


def by_owner(obj: dict[str, Any]) -> str | None:
    owner: str | None = (obj.get("metadata", {}).get("labels") or {}).get("kubemaas.io/model-service")
    return owner


# --- one round -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    count: int
    load_before: float
    applied_s: float  # until the last apply returned: every ModelService exists
    children_s: float | None  # until every ModelService had its Deployment
    pods_ready_s: float | None  # until every server pod was Ready
    all_ready_s: float | None  # until every ModelService reported Ready
    apply_lag: tuple[float | None, float | None]  # p50, p95: ModelService seen -> its Deployment seen
    status_lag: tuple[float | None, float | None]  # p50, p95: pod Ready -> ModelService Ready
    requests_per_service: float  # the operator's writes (applies, status patches, deletes) per ModelService
    operator_cpu_s: float
    cluster_cpu_s: float
    peak_rss_mb: float


def round_docs(namespace: str, count: int) -> list[dict[str, Any]]:
    """The namespace with a `models` claim bound to a volume of its own, then the ModelServices."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"models-{namespace}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "hostPath": {"path": f"/tmp/kubemaas-bench/{namespace}"},
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
            },
        },
    ]
    docs += [
        {
            "apiVersion": "kubemaas.io/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": f"m{i}", "namespace": namespace},
            "spec": {
                "model": {"uri": f"pvc://models/m{i}"},
                "image": "kubemaas-server:bench",
                "minReplicas": 1,
            },
        }
        for i in range(count)
    ]
    return docs


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def lag_percentiles(before: dict[str, float], after: dict[str, float]) -> tuple[float | None, float | None]:
    lags = [after[name] - before[name] for name in after if name in before]
    return percentile(lags, 0.50), percentile(lags, 0.95)


def last_of(times: dict[str, float], count: int, started: float) -> float | None:
    return max(times.values()) - started if len(times) >= count else None


@dataclass(frozen=True)
class Bench:
    binaries: dict[str, Path]
    kubeconfig: Path
    api: kubernetes.client.ApiClient
    operator_pid: int
    cluster_pids: list[int]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return kubectl(self.binaries, self.kubeconfig, *args, stdin=stdin)

    def request(
        self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: str | None = None
    ) -> bytes:
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "*/*"}
            | ({} if body is None else {"Content-Type": "application/apply-patch+yaml"}),
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*params)
        data: bytes = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return data

    def apply(self, doc: dict[str, Any]) -> None:
        """Server-side apply of one ModelService, as `kubectl apply --server-side` sends it."""
        meta = doc["metadata"]
        self.request(
            "PATCH",
            f"{GROUP_PATH}/namespaces/{meta['namespace']}/modelservices/{meta['name']}",
            query=[("fieldManager", "bench-operator")],
            body=json.dumps(doc),
        )

    def operator_writes(self) -> float:
        """Writes to the kinds only the operator writes, from the API server's own request counter.

        Children are written with APPLY and status with PATCH by nobody else here (the
        controllers write Deployment status with UPDATE; the benchmark applies ModelServices,
        never their status).
        """
        total = 0.0
        for line in self.request("GET", "/metrics").decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(",")
            )
            verb, resource = labels.get("verb", ""), labels.get("resource", "").strip('"')
            subresource = labels.get("subresource", '""').strip('"')
            operator_write = (
                (verb == '"APPLY"' and resource in OPERATOR_CHILDREN)
                or (verb == '"DELETE"' and resource in OPERATOR_CHILDREN)
                or (verb == '"PATCH"' and resource == "modelservices" and subresource == "status")
            )
            if operator_write:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def run_round(self, count: int, timeout: float) -> Round:
        namespace = f"bench-{count}"
        docs = round_docs(namespace, count)
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs[:3]))
        self.kubectl("wait", "--for=create", "sa/default", "-n", namespace, "--timeout=60s")
        services = Timeline(
            self.api, f"{GROUP_PATH}/namespaces/{namespace}/modelservices", by_name, condition_true("Ready")
        )
        deployments = Timeline(
            self.api,
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            by_owner,
            condition_true("Available"),
        )
        pods = Timeline(
            self.api,
            f"/api/v1/namespaces/{namespace}/pods",
            by_owner,
            condition_true("Ready"),
            label_selector="app.kubernetes.io/name=model-server",
        )
        for timeline in (services, deployments, pods):
            timeline.start()
        load_before = os.getloadavg()[0]
        writes = self.operator_writes()
        operator_cpu = cpu_seconds([self.operator_pid])
        cluster_cpu = cpu_seconds(self.cluster_pids)
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(CREATORS) as pool:
                list(pool.map(self.apply, docs[3:]))
            applied = time.monotonic() - started
            last_report = 0.0
            while len(services.became_ready) < count and time.monotonic() - started < timeout:
                elapsed = time.monotonic() - started
                if elapsed - last_report >= 10:
                    say(
                        f"N={count}: {elapsed:.0f}s: {len(deployments.seen)} Deployments, "
                        f"{len(pods.became_ready)} pods Ready, {len(services.became_ready)} ModelServices Ready"
                    )
                    last_report = elapsed
                time.sleep(0.2)
        finally:
            for timeline in (services, deployments, pods):
                timeline.stop()
        return Round(
            count=count,
            load_before=load_before,
            applied_s=applied,
            children_s=last_of(deployments.seen, count, started),
            pods_ready_s=last_of(pods.became_ready, count, started),
            all_ready_s=last_of(services.became_ready, count, started),
            apply_lag=lag_percentiles(services.seen, deployments.seen),
            status_lag=lag_percentiles(pods.became_ready, services.became_ready),
            requests_per_service=(self.operator_writes() - writes) / count,
            operator_cpu_s=cpu_seconds([self.operator_pid]) - operator_cpu,
            cluster_cpu_s=cpu_seconds(self.cluster_pids) - cluster_cpu,
            peak_rss_mb=peak_rss_mb(self.operator_pid),
        )

    def clean_up(self, count: int) -> None:
        """Delete the round's namespace and wait, so its garbage collection does not run into the next."""
        self.kubectl("delete", "namespace", f"bench-{count}", "--wait=true", "--timeout=240s")


# --- the run -------------------------------------------------------------------------------


def stop_on_sigterm() -> None:
    """SIGTERM (a CI runner cancelling, `kill`) unwinds like Ctrl-C, so the cluster comes down."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def api_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    # Three long watches plus the creators, each on a connection of its own.
    configuration.connection_pool_maxsize = CREATORS + 4
    return kubernetes.client.ApiClient(configuration)


def start_operator(kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kubemaas", "operator", "--standalone"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "KUBEMAAS_LOG_LEVEL": "WARNING"},
        )


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    if operator.poll() is None:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()


def wait_for_operator(binaries: dict[str, Path], kubeconfig: Path, operator: subprocess.Popen[bytes]) -> None:
    """Ready once a probe ModelService reports a phase: the operator's watches are up."""
    namespace, *_, probe = round_docs("bench-probe", 1)
    kubectl(binaries, kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([namespace, probe]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.returncode}")
        body = json.loads(kubectl(binaries, kubeconfig, "get", "ms", "m0", "-n", "bench-probe", "-o", "json"))
        if (body.get("status") or {}).get("phase"):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("the operator did not write a status within 60 s")
    kubectl(binaries, kubeconfig, "delete", "namespace", "bench-probe", "--wait=true", "--timeout=120s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,500", help="comma-separated N, one round each")
    parser.add_argument("--nodes", type=int, default=50, help="simulated CPU nodes")
    parser.add_argument(
        "--timeout", type=float, default=300, help="give up on a round after this many seconds"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--operator-log", type=Path, help="keep the operator's log here (default: removed with the cluster)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    stop_on_sigterm()
    binaries = ensure_binaries(say)
    state_dir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-operator-"))
    kubeconfig = state_dir / "kubeconfig"
    operator: subprocess.Popen[bytes] | None = None
    rows: list[Round] = []
    try:
        nodes = NodePlan(cpu_nodes=args.nodes, gpu_nodes=0)
        state: ClusterState = up(
            ClusterOptions(state_dir=state_dir, kubeconfig=kubeconfig, nodes=nodes), binaries, say
        )
        kubectl(
            binaries, kubeconfig, "apply", "--server-side", "-f", str(ROOT / "manifests" / "base" / "crds")
        )
        kubectl(binaries, kubeconfig, "wait", "--for=condition=Established", "crd/modelservices.kubemaas.io")
        operator = start_operator(kubeconfig, args.operator_log or state_dir / "operator.log")
        wait_for_operator(binaries, kubeconfig, operator)
        bench = Bench(
            binaries=binaries,
            kubeconfig=kubeconfig,
            api=api_client(kubeconfig),
            operator_pid=operator.pid,
            cluster_pids=[p.pid for p in state.processes],
        )
        for index, count in enumerate(sizes):
            say(f"N={count}: applying {count} ModelServices")
            row = bench.run_round(count, args.timeout)
            rows.append(row)
            say(
                f"N={count}: {'timed out' if row.all_ready_s is None else f'all Ready in {row.all_ready_s:.1f}s'}, "
                f"operator CPU {row.operator_cpu_s:.1f}s, peak RSS {row.peak_rss_mb:.0f} MB"
            )
            if index < len(sizes) - 1:
                bench.clean_up(count)
    except KeyboardInterrupt:
        say("interrupted; taking the cluster down")
        return 130
    finally:
        try:
            if operator is not None:
                stop_operator(operator)
        finally:
            down(state_dir)
            say("cluster down")
    table = render(rows, args.nodes)
    print(table)
    if not args.no_write:
        (ROOT / "docs" / "benchmarks-operator.md").write_text(table)
    return 0


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def pair(values: tuple[float | None, float | None]) -> str:
    return " / ".join(seconds(v) for v in values)


def render(rows: list[Round], nodes: int) -> str:
    pins = {group.name: group.version for group in load_groups(ROOT)}
    lines = [
        "# Operator benchmark",
        "",
        "Produced by `make bench-operator` (`benchmarks/bench_operator.py`); rewritten on every run.",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"kopf {version('kopf')}, kubernetes client {version('kubernetes')}",
        f"- cluster: local control plane (Kubernetes {pins['kubernetes']}, etcd {pins['etcd']}, "
        f"KWOK {pins['kwok']}) with {nodes} simulated nodes, on the same cores as the operator",
        f"- load: N ModelServices (1 replica each) applied at once (server-side apply, {CREATORS} at a time)"
        " into a fresh namespace; one operator process",
        "- target (issue 8): 500 Ready within 120 s, operator peak RSS below 300 MB",
        "",
        "| ModelServices | all Ready (s) | Ready/s | operator peak RSS (MB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rate = "-" if row.all_ready_s is None else f"{row.count / row.all_ready_s:.1f}"
        all_ready = "timed out" if row.all_ready_s is None else f"{row.all_ready_s:.1f}"
        lines.append(f"| {row.count} | {all_ready} | {rate} | {row.peak_rss_mb:.0f} |")
    lines += [
        "",
        "Where the time went. Stages are seconds from the first apply until the last object got",
        "there: ModelServices created, Deployments created by the operator, server pods Ready",
        "(controllers, scheduler, KWOK), ModelServices Ready. Lags are per ModelService, p50/p95:",
        "*apply lag* from the ModelService's first watch event to its Deployment's, *status lag*",
        "from its pod's readiness to its own Ready condition. Writes are the operator's applies,",
        "deletes and status patches per ModelService, counted by the API server. CPU seconds are",
        "over the round; the machine has 2 s of CPU per second.",
        "",
        "| N | load avg before | created | Deployments | pods Ready | all Ready "
        "| apply lag | status lag | writes per ModelService | operator CPU (s) | control plane CPU (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.count} | {row.load_before:.1f} | {row.applied_s:.1f} | {seconds(row.children_s)} "
            f"| {seconds(row.pods_ready_s)} | {seconds(row.all_ready_s)} | {pair(row.apply_lag)} "
            f"| {pair(row.status_lag)} | {row.requests_per_service:.1f} | {row.operator_cpu_s:.1f} "
            f"| {row.cluster_cpu_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
