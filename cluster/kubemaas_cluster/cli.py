"""`kubemaas cluster build|up|down|status`: the local control plane for dev, demo and tests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubemaas_cluster.binaries import ToolchainMissing, ensure_binaries
from kubemaas_cluster.controlplane import ClusterError, ClusterOptions, down, status, up
from kubemaas_cluster.nodes import NodePlan
from kubemaas_cluster.paths import default_state_dir


def _progress(message: str) -> None:
    print(f"[kubemaas] {message}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubemaas cluster", description=__doc__)
    p.add_argument("action", choices=["build", "up", "down", "status"])
    p.add_argument("--name", default="default", help="cluster name; each has its own state directory")
    p.add_argument("--state-dir", type=Path, help="default: <cache>/kubemaas/clusters/<name>")
    p.add_argument(
        "--kubeconfig",
        type=Path,
        help="where `up` writes the admin kubeconfig (default: <state-dir>/kubeconfig)",
    )
    p.add_argument("--cpu-nodes", type=int, default=2)
    p.add_argument("--gpu-nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-product", default="NVIDIA-H100-80GB-HBM3")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    state_dir: Path = args.state_dir or default_state_dir(args.name)
    kubeconfig: Path = (args.kubeconfig or state_dir / "kubeconfig").absolute()
    try:
        if args.action == "build":
            for name, path in sorted(ensure_binaries(_progress).items()):
                print(f"{name}\t{path}")
            return 0
        if args.action == "up":
            plan = NodePlan(
                cpu_nodes=args.cpu_nodes,
                gpu_nodes=args.gpu_nodes,
                gpus_per_node=args.gpus_per_node,
                gpu_product=args.gpu_product,
            )
            binaries = ensure_binaries(_progress)
            state = up(
                ClusterOptions(state_dir=state_dir, kubeconfig=kubeconfig, nodes=plan), binaries, _progress
            )
            print(f"export KUBECONFIG={state.kubeconfig}")
            print(
                f"export PATH={binaries['kubectl'].parent}:$PATH  # kubectl {binaries['kubectl'].parent.name}"
            )
            return 0
        if args.action == "down":
            stopped = down(state_dir)
            _progress(f"stopped {len(stopped)} processes: {', '.join(p.name for p in stopped) or 'none'}")
            return 0
        print(json.dumps(status(state_dir), indent=2))
        return 0
    except (ToolchainMissing, ClusterError, FileNotFoundError) as err:
        print(f"kubemaas cluster {args.action}: {err}", file=sys.stderr)
        return 1
