"""`kubemaas cluster up|status|down` as a user runs it, and the loopback-only network rule."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kubemaas_cluster.controlplane import read_state
from kubemaas_cluster.processes import is_running
from tests.integration.conftest import LocalCluster

pytestmark = pytest.mark.integration

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"


def _decode(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1]), int(port, 16)
    # /proc/net/tcp6 stores the address as four host-order 32-bit words.
    words = struct.unpack("<4I", raw)
    address = ipaddress.IPv6Address(struct.pack(">4I", *words))
    return (address.ipv4_mapped or address), int(port, 16)


def sockets_of(pid: int) -> list[tuple[str, str, str]]:
    """(state, local, remote) of every TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((fields[3], fields[1], fields[2]))
    return found


def test_every_control_plane_socket_is_on_loopback(cluster: LocalCluster) -> None:
    if cluster.state_dir is None:
        pytest.skip("running against an existing cluster: its processes are not ours to inspect")
    state = read_state(cluster.state_dir)
    assert state is not None
    listeners = 0
    for record in state.processes:
        for tcp_state, local, remote in sockets_of(record.pid):
            local_ip, _ = _decode(local)
            remote_ip, _ = _decode(remote)
            if tcp_state == TCP_LISTEN:
                listeners += 1
                assert local_ip in LOOPBACK, f"{record.name} listens on {local_ip}"
            if tcp_state == TCP_ESTABLISHED:
                assert remote_ip in LOOPBACK, f"{record.name} is connected to {remote_ip}"
    # etcd (client+peer), apiserver, controller-manager, scheduler, kwok at least.
    assert listeners >= 6


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubemaas", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cluster_up_prints_kubeconfig_nodes_are_ready_and_down_leaves_no_process(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # `cluster` is requested so the binaries are built (and reported) before this test times its own cluster.
    state_dir = tmp_path / "state"
    up = run_cli("up", "--state-dir", str(state_dir), "--kubeconfig", str(tmp_path / "kubeconfig"))
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={tmp_path / 'kubeconfig'}" in up.stdout
        nodes = subprocess.run(
            [str(cluster.binaries["kubectl"]), "get", "nodes", "-o", "json"],
            env={**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig")},
            capture_output=True,
            text=True,
            check=True,
        )
        items = json.loads(nodes.stdout)["items"]
        assert len(items) == 4
        for node in items:
            ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
            assert ready == "True"
        status = json.loads(run_cli("status", "--state-dir", str(state_dir)).stdout)
        assert status["running"] is True
        assert set(status["processes"]) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        state = read_state(state_dir)
        assert state is not None
    finally:
        down = run_cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    for record in state.processes:
        assert not is_running(record), f"{record.name} (pid {record.pid}) survived `cluster down`"
    assert not state_dir.exists()
    assert not (tmp_path / "kubeconfig").exists()


def test_cluster_down_never_removes_a_kubeconfig_it_did_not_write(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    mine = tmp_path / "config"
    mine.write_text("apiVersion: v1\nkind: Config\n")
    state = {"server": "", "kubeconfig": str(mine), "kubeconfig_content": "something else", "processes": []}
    (state_dir / "cluster.json").write_text(json.dumps(state))
    assert run_cli("down", "--state-dir", str(state_dir)).returncode == 0
    assert mine.read_text() == "apiVersion: v1\nkind: Config\n"
