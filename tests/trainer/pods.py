"""Training "pods" as local processes: each is `kubemaas train -- <command>` with the environment
the operator gives a worker pod of an Indexed Job, all on 127.0.0.1 with worker 0 as master.

Several pods on one machine is what a multi-node job looks like to torchrun with static
rendezvous: separate agents, each with its node rank, meeting at the master's port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_regressor.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubemaas_command() -> list[str]:
    """The installed console script, as a pod runs it; `python -m kubemaas` if there is none."""
    script = Path(sys.executable).with_name("kubemaas")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kubemaas"]


def pod_environment(
    *,
    workers: int,
    procs_per_worker: int,
    node_rank: int,
    port: int,
    output: Path,
    checkpoints: Path,
    restart_count: int,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KUBEMAAS_WORKERS": str(workers),
            "KUBEMAAS_PROCS_PER_WORKER": str(procs_per_worker),
            "JOB_COMPLETION_INDEX": str(node_rank),
            "KUBEMAAS_MASTER_ADDR": "127.0.0.1",
            "KUBEMAAS_MASTER_PORT": str(port),
            "KUBEMAAS_OUTPUT_DIR": str(output),
            "KUBEMAAS_CHECKPOINT_DIR": str(checkpoints),
            "KUBEMAAS_RESTART_COUNT": str(restart_count),
            "KUBEMAAS_LOG_LEVEL": "INFO",
            # gloo would otherwise bind the address the hostname resolves to; keep every
            # connection on loopback.
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Pod:
    node_rank: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Training processes torchrun started for this pod (children of the launcher's pid)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid:
                pids.append(int(entry.name))
        return pids

    def kill(self) -> None:
        """SIGKILL the pod's whole process group (launcher and workers)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def launch_pods(
    command: Sequence[str],
    *,
    workers: int,
    procs_per_worker: int = 1,
    output: Path,
    checkpoints: Path,
    logs: Path,
    restart_count: int = 0,
) -> list[Pod]:
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    pods = []
    for node_rank in range(workers):
        log = logs / f"pod-{node_rank}-restart-{restart_count}.log"
        env = pod_environment(
            workers=workers,
            procs_per_worker=procs_per_worker,
            node_rank=node_rank,
            port=port,
            output=output,
            checkpoints=checkpoints,
            restart_count=restart_count,
        )
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                [*kubemaas_command(), "train", "--", *command],
                cwd=REPO,
                env=env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown can kill the whole tree
            )
        pods.append(Pod(node_rank, process, log))
    return pods


def wait_for_pods(pods: Sequence[Pod], *, timeout: float) -> list[int]:
    """Exit codes of every pod; kills them all and fails with their logs after `timeout`."""
    deadline = time.monotonic() + timeout
    codes = []
    for pod in pods:
        try:
            codes.append(pod.process.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in pods:
                other.kill()
            logs = "\n".join(f"--- pod {p.node_rank} ---\n{p.output()[-4000:]}" for p in pods)
            raise AssertionError(f"pods still running after {timeout}s\n{logs}") from None
    return codes


def describe(pods: Sequence[Pod]) -> str:
    return "\n".join(
        f"--- pod {p.node_rank} (exit {p.process.returncode}) ---\n{p.output()[-4000:]}" for p in pods
    )


def kill_pods(pods: Sequence[Pod]) -> None:
    for pod in pods:
        pod.kill()
