"""A checkpoint writer SIGKILLed in the middle of writing: what it leaves behind never passes for
a checkpoint, and the newest complete one still loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kubemaas_trainer.checkpoint import CheckpointStore

pytestmark = pytest.mark.timeout(180)

SIZE = 8 * 1024 * 1024
# Each checkpoint holds SIZE floats all equal to its step: large enough that a write takes a
# while, so a kill lands inside one.
WRITER = f"""
import sys, torch
from kubemaas_trainer.checkpoint import CheckpointStore
store = CheckpointStore(sys.argv[1], keep=2)
weights = torch.empty({SIZE})
step = 0
while True:
    step += 1
    weights.fill_(step)
    store.save(step, {{"weights": weights, "step_again": step}})
"""


def kill_writer_mid_write(directory: Path) -> list[str]:
    """Runs the writer until a second checkpoint is being written, SIGKILLs it, and returns the
    temporary files left behind (empty if the write finished before the signal landed)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert writer.poll() is None, writer.stderr.read().decode() if writer.stderr else ""
            assert time.monotonic() < deadline, "the writer never got past its first checkpoint"
            names = os.listdir(directory) if directory.exists() else []
            if any(".tmp-" in name for name in names) and any(name.startswith("step-") for name in names):
                os.kill(writer.pid, signal.SIGKILL)
                break
        writer.wait()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    return [name for name in os.listdir(directory) if ".tmp-" in name]


def test_a_writer_killed_mid_write_leaves_the_last_complete_checkpoint(tmp_path: Path) -> None:
    for attempt in range(3):
        directory = tmp_path / f"attempt-{attempt}"
        leftovers = kill_writer_mid_write(directory)
        if leftovers:
            break
    assert leftovers, "never caught the writer mid-write"

    store = CheckpointStore(directory, keep=2)
    steps = store.steps()
    assert steps, "no complete checkpoint survived"
    for step in steps:  # every visible checkpoint is whole
        loaded = store.load(step)
        assert loaded.state["step_again"] == step
        assert torch.equal(loaded.state["weights"], torch.full((SIZE,), float(step)))
    latest = store.load_latest()
    assert latest is not None and latest.step == steps[-1]

    store.save(steps[-1] + 1, {"resumed": True})  # the next save clears what the killed writer left
    assert not [name for name in os.listdir(directory) if ".tmp-" in name]
