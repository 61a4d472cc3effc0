"""`kubemaas train` as the real console script: it execs torchrun, which gives every process its
rank and the launcher's backend, and the pod's exit code is the job's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .pods import kubemaas_command, launch_pods, pod_environment, wait_for_pods

pytestmark = pytest.mark.timeout(180)

SHOW_PLACEMENT = (
    'echo "placement rank=$RANK/$WORLD_SIZE local=$LOCAL_RANK node=$GROUP_RANK backend=$KUBEMAAS_BACKEND"'
)


def test_every_process_of_every_pod_gets_its_rank(tmp_path: Path) -> None:
    pods = launch_pods(
        ["sh", "-c", SHOW_PLACEMENT],
        workers=2,
        procs_per_worker=2,
        output=tmp_path / "out",
        checkpoints=tmp_path / "ckpt",
        logs=tmp_path / "logs",
    )
    assert wait_for_pods(pods, timeout=150) == [0, 0]
    lines = sorted(
        line.strip()
        for pod in pods
        for line in pod.output().splitlines()
        if line.strip().startswith("placement")
    )
    assert lines == [
        "placement rank=0/4 local=0 node=0 backend=gloo",
        "placement rank=1/4 local=1 node=0 backend=gloo",
        "placement rank=2/4 local=0 node=1 backend=gloo",
        "placement rank=3/4 local=1 node=1 backend=gloo",
    ]


def test_a_failing_command_fails_the_pod(tmp_path: Path) -> None:
    env = pod_environment(
        workers=1,
        procs_per_worker=1,
        node_rank=0,
        port=0,
        output=tmp_path,
        checkpoints=tmp_path,
        restart_count=0,
    )
    env["KUBEMAAS_MASTER_PORT"] = "29599"
    done = subprocess.run(
        [*kubemaas_command(), "train", "--", "sh", "-c", "exit 3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode != 0
    assert "exitcode  : 3" in done.stderr
