"""How fast the operator makes N ModelServices Ready, and how much memory it takes.

`make bench-operator` runs this: a fresh local control plane with 50 simulated nodes, the CRDs,
one `kubemaas operator` process, then for each N a fresh namespace with N ModelServices
(one replica each) applied at once. It reports the seconds until every one reports the Ready
condition and the operator's peak resident memory (VmHWM), prints a table and writes it to
docs/benchmarks-operator.md. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kubemaas_cluster.binaries import ensure_binaries
from kubemaas_cluster.controlplane import ClusterOptions, down, up
from kubemaas_cluster.nodes import NodePlan

ROOT = Path(__file__).resolve().parents[1]


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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def round_docs(namespace: str, count: int) -> list[dict[str, Any]]:
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


def ready_count(binaries: dict[str, Path], kubeconfig: Path, namespace: str) -> int:
    items = json.loads(kubectl(binaries, kubeconfig, "get", "ms", "-n", namespace, "-o", "json"))["items"]
    return sum(
        1
        for item in items
        for c in (item.get("status") or {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def run_round(binaries: dict[str, Path], kubeconfig: Path, count: int, timeout: float) -> float | None:
    namespace = f"bench-{count}"
    docs = round_docs(namespace, count)
    kubectl(binaries, kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs[:1]))
    kubectl(binaries, kubeconfig, "wait", "--for=create", "sa/default", "-n", namespace, "--timeout=60s")
    started = time.monotonic()
    kubectl(binaries, kubeconfig, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs[1:]))
    last_report = 0.0
    while time.monotonic() - started < timeout:
        ready = ready_count(binaries, kubeconfig, namespace)
        elapsed = time.monotonic() - started
        if ready == count:
            return elapsed
        if elapsed - last_report >= 10:
            say(f"N={count}: {ready}/{count} Ready after {elapsed:.0f}s")
            last_report = elapsed
        time.sleep(0.5)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    binaries = ensure_binaries(say)
    state_dir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-operator-"))
    kubeconfig = state_dir / "kubeconfig"
    operator: subprocess.Popen[bytes] | None = None
    rows: list[tuple[int, float | None, float]] = []
    try:
        nodes = NodePlan(cpu_nodes=args.nodes, gpu_nodes=0)
        up(ClusterOptions(state_dir=state_dir, kubeconfig=kubeconfig, nodes=nodes), binaries, say)
        kubectl(binaries, kubeconfig, "apply", "--server-side", "-f", str(ROOT / "manifests" / "crds"))
        kubectl(binaries, kubeconfig, "wait", "--for=condition=Established", "crd/modelservices.kubemaas.io")
        log = (state_dir / "operator.log").open("ab")
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubemaas", "operator", "--standalone"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "KUBEMAAS_LOG_LEVEL": "WARNING"},
        )
        time.sleep(3)
        for count in sizes:
            say(f"N={count}: applying {count} ModelServices")
            seconds = run_round(binaries, kubeconfig, count, args.timeout)
            rss = peak_rss_mb(operator.pid)
            rows.append((count, seconds, rss))
            say(f"N={count}: {'timed out' if seconds is None else f'{seconds:.1f}s'}, peak RSS {rss:.0f} MB")
            kubectl(binaries, kubeconfig, "delete", "namespace", f"bench-{count}", "--wait=false")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        down(state_dir)
    table = render(rows, args.nodes)
    print(table)
    if not args.no_write:
        (ROOT / "docs" / "benchmarks-operator.md").write_text(table)
    return 0


def render(rows: list[tuple[int, float | None, float]], nodes: int) -> str:
    lines = [
        "# Operator benchmark",
        "",
        "Produced by `make bench-operator` (`benchmarks/bench_operator.py`); rewritten on every run.",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}",
        f"- cluster: local control plane (Kubernetes v1.36.4, KWOK v0.8.0), {nodes} simulated nodes",
        "- load: N ModelServices (1 replica each) applied at once into a fresh namespace; one operator process",
        "- target (issue 8): 500 Ready within 120 s, operator RSS below 300 MB",
        "",
        "| ModelServices | seconds until all Ready | Ready per second | operator peak RSS (MB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for count, seconds, rss in rows:
        if seconds is None:
            lines.append(f"| {count} | timed out | - | {rss:.0f} |")
        else:
            lines.append(f"| {count} | {seconds:.1f} | {count / seconds:.1f} | {rss:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
