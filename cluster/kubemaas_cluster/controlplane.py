"""Bring a local Kubernetes control plane up and down.

Real upstream components, one process each: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and KWOK simulating the nodes and the pod lifecycle (no kubelet, no
containers). Every listener binds 127.0.0.1 on a free port; simulated node and pod IPs come
from 127.0.0.0/8 and Service IPs from a loopback range too, so nothing can dial outside it.
State (pids, ports, logs, certificates, etcd data) lives in one directory; `down` stops the
recorded pids and removes that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kubemaas_cluster.kubeconfig import render_kubeconfig, write_kubeconfig
from kubemaas_cluster.nodes import NodePlan, build_nodes
from kubemaas_cluster.pki import ClusterPki, Pair, create_pki
from kubemaas_cluster.processes import ProcessRecord, is_running, start_process, stop_process

Progress = Callable[[str], None]

LOOPBACK = "127.0.0.1"
POD_CIDR = "127.1.0.0/16"
SERVICE_CIDR = "127.2.0.0/16"
SERVICE_IP = "127.2.0.1"  # the first address: the `kubernetes` Service
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterOptions:
    state_dir: Path
    kubeconfig: Path
    nodes: NodePlan = field(default_factory=NodePlan)
    ready_timeout_seconds: float = 120.0


@dataclass(frozen=True)
class ClusterState:
    server: str
    kubeconfig: Path
    processes: tuple[ProcessRecord, ...]
    kubeconfig_content: str

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "kubeconfig_content": self.kubeconfig_content,
            "processes": [p.to_json() for p in self.processes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        return cls(
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            kubeconfig_content=data["kubeconfig_content"],
            processes=tuple(ProcessRecord.from_json(p) for p in data["processes"]),
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def read_state(state_dir: Path) -> ClusterState | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return ClusterState.from_json(json.loads(path.read_text()))


def _write_state(state_dir: Path, state: ClusterState) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2))
    tmp.replace(state_dir / STATE_FILE)


def _wait(what: str, check: Callable[[], bool], timeout: float, record: ProcessRecord | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if record is not None and not is_running(record):
            raise ClusterError(
                f"{record.name} exited while waiting for {what}; log:\n{_tail(Path(record.log))}"
            )
        time.sleep(0.2)
    log = f"; log:\n{_tail(Path(record.log))}" if record else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{log}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def _client_context(pki: ClusterPki, client: Pair) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(client.cert), str(client.key))
    return context


def kubectl(binaries: dict[str, Path], kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries["kubectl"]), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def kwok_config_path() -> Path:
    return Path(str(resources.files("kubemaas_cluster") / "assets" / "kwok.yaml"))


def up(options: ClusterOptions, binaries: dict[str, Path], progress: Progress) -> ClusterState:
    """Start a fresh control plane; an existing healthy one under the same state dir is reused."""
    existing = read_state(options.state_dir)
    if existing is not None:
        if all(is_running(p) for p in existing.processes):
            progress(f"cluster already running at {existing.server}")
            return existing
        progress("found a half-running cluster; stopping it first")
        down(options.state_dir)
    state_dir = options.state_dir
    shutil.rmtree(state_dir, ignore_errors=True)
    (state_dir / "logs").mkdir(parents=True)
    started_at = time.monotonic()
    records: list[ProcessRecord] = []

    def launch(name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        record = start_process(name, argv, state_dir / "logs" / f"{name}.log", env=env)
        records.append(record)
        # Persist after every start so `down` can clean up even if `up` dies half-way.
        _write_state(
            state_dir,
            ClusterState(
                server="", kubeconfig=options.kubeconfig, processes=tuple(records), kubeconfig_content=""
            ),
        )
        return record

    try:
        return _start_all(options, binaries, progress, launch, records, started_at)
    except BaseException:
        for record in reversed(records):
            stop_process(record, grace_seconds=3)
        raise


def _start_all(
    options: ClusterOptions,
    binaries: dict[str, Path],
    progress: Progress,
    launch: Callable[..., ProcessRecord],
    records: list[ProcessRecord],
    started_at: float,
) -> ClusterState:
    state_dir = options.state_dir
    pki = create_pki(state_dir / "pki", service_ip=SERVICE_IP)
    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
    server = f"https://{LOOPBACK}:{api_port}"

    progress("starting etcd")
    etcd = launch(
        "etcd",
        [
            str(binaries["etcd"]),
            "--name=kubemaas",
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls=http://{LOOPBACK}:{etcd_port}",
            f"--advertise-client-urls=http://{LOOPBACK}:{etcd_port}",
            f"--listen-peer-urls=http://{LOOPBACK}:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://{LOOPBACK}:{etcd_peer_port}",
            f"--initial-cluster=kubemaas=http://{LOOPBACK}:{etcd_peer_port}",
            # A throwaway dev cluster: durability buys nothing, fsync costs seconds per test.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    _wait("etcd health", lambda: _http_ok(f"http://{LOOPBACK}:{etcd_port}/health"), 30, etcd)

    progress("starting kube-apiserver")
    apiserver = launch(
        "kube-apiserver",
        [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers=http://{LOOPBACK}:{etcd_port}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The `kubernetes` Service would get a loopback endpoint, which Endpoints validation
            # refuses; nothing in-cluster needs to reach the API server through it here.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=0",
        ],
    )
    admin_context = _client_context(pki, pki.admin)
    _wait("kube-apiserver /readyz", lambda: _http_ok(f"{server}/readyz", admin_context), 90, apiserver)

    admin_kubeconfig = render_kubeconfig(
        server=server, ca=pki.ca.cert, client=pki.admin, user="kubemaas-admin"
    )
    write_kubeconfig(options.kubeconfig, admin_kubeconfig)
    component_configs: dict[str, Path] = {}
    for name, pair, user in (
        ("controller-manager", pki.controller_manager, "system:kube-controller-manager"),
        ("scheduler", pki.scheduler, "system:kube-scheduler"),
        ("kwok", pki.kwok, "kwok-controller"),
    ):
        path = state_dir / f"{name}.kubeconfig"
        write_kubeconfig(path, render_kubeconfig(server=server, ca=pki.ca.cert, client=pair, user=user))
        component_configs[name] = path

    progress("starting kube-controller-manager, kube-scheduler and kwok")
    cm_config = component_configs["controller-manager"]
    launch(
        "kube-controller-manager",
        [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={cm_config}",
            f"--authentication-kubeconfig={cm_config}",
            f"--authorization-kubeconfig={cm_config}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            "--leader-elect=false",
            "--controllers=*",
            # The default 20 requests/s throttles every controller together; a dev cluster
            # creating hundreds of pods at once should measure its operators, not this.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        ],
    )
    sched_config = component_configs["scheduler"]
    launch(
        "kube-scheduler",
        [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={free_port()}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    launch(
        "kwok",
        [
            str(binaries["kwok"]),
            f"--kubeconfig={component_configs['kwok']}",
            f"--config={kwok_config_path()}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--node-ip={LOOPBACK}",
            f"--cidr={POD_CIDR}",
            f"--server-address={LOOPBACK}:{free_port()}",
        ],
        # Without its own workdir kwok also loads ~/.kwok/kwok.yaml, stages and all.
        env={**os.environ, "KWOK_WORKDIR": str(state_dir / "kwok")},
    )

    progress(f"creating {options.nodes.cpu_nodes} CPU and {options.nodes.gpu_nodes} GPU nodes")
    kc = options.kubeconfig
    node_docs = build_nodes(options.nodes)
    if node_docs:
        kubectl(binaries, kc, "apply", "-f", "-", stdin=yaml.safe_dump_all(node_docs))
        kubectl(
            binaries,
            kc,
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            f"--timeout={options.ready_timeout_seconds:.0f}s",
        )
    # The service-account controller creating `default` proves the controller-manager works.
    _wait(
        "the default ServiceAccount (controller-manager)",
        lambda: _succeeds(binaries, kc, "get", "serviceaccount", "default", "-n", "default"),
        options.ready_timeout_seconds,
    )
    state = ClusterState(
        server=server,
        kubeconfig=options.kubeconfig,
        processes=tuple(records),
        kubeconfig_content=admin_kubeconfig,
    )
    _write_state(state_dir, state)
    progress(f"cluster ready at {server} in {time.monotonic() - started_at:.1f}s")
    return state


def _succeeds(binaries: dict[str, Path], kubeconfig: Path, *args: str) -> bool:
    try:
        kubectl(binaries, kubeconfig, *args)
    except ClusterError:
        return False
    return True


def down(state_dir: Path) -> list[ProcessRecord]:
    """Stop every recorded process (newest first) and remove the state; returns what was stopped."""
    state = read_state(state_dir)
    stopped: list[ProcessRecord] = []
    if state is not None:
        for record in reversed(state.processes):
            if is_running(record):
                stop_process(record)
                stopped.append(record)
        # Remove the kubeconfig only if it is still the one we wrote: never a user's own file.
        kubeconfig = state.kubeconfig
        if (
            state.kubeconfig_content
            and kubeconfig.exists()
            and kubeconfig.read_text() == state.kubeconfig_content
        ):
            kubeconfig.unlink()
    shutil.rmtree(state_dir, ignore_errors=True)
    return stopped


def stop_component(state_dir: Path, name: str) -> ProcessRecord:
    """Stop one process of a running cluster (fault injection): SIGTERM, as an outage would."""
    state = read_state(state_dir)
    record = next((p for p in state.processes if p.name == name), None) if state else None
    if record is None:
        raise ClusterError(f"no process named {name} in the cluster at {state_dir}")
    stop_process(record)
    return record


def start_component(state_dir: Path, name: str) -> ProcessRecord:
    """Start a stopped process again with its recorded command line; its data is where it was."""
    state = read_state(state_dir)
    if state is None:
        raise ClusterError(f"no cluster at {state_dir}")
    old = next((p for p in state.processes if p.name == name), None)
    if old is None or not old.argv:
        raise ClusterError(f"no restartable process named {name} in the cluster at {state_dir}")
    if is_running(old):
        return old
    new = start_process(name, list(old.argv), Path(old.log), env=old.env)
    processes = tuple(new if p.name == name else p for p in state.processes)
    _write_state(state_dir, ClusterState(state.server, state.kubeconfig, processes, state.kubeconfig_content))
    return new


def status(state_dir: Path) -> dict[str, Any]:
    state = read_state(state_dir)
    if state is None:
        return {"running": False, "processes": {}}
    procs = {p.name: {"pid": p.pid, "running": is_running(p)} for p in state.processes}
    return {
        "running": bool(procs) and all(p["running"] for p in procs.values()),
        "server": state.server,
        "kubeconfig": str(state.kubeconfig),
        "processes": procs,
    }
