"""Checkpoints that survive a worker being killed at any instant, and resume from them.

    store = checkpoint.CheckpointStore()           # $KUBEMAAS_CHECKPOINT_DIR, newest 3 kept
    latest = store.load_latest()                   # None on a fresh start
    start = latest.step if latest else 0
    ...
    store.save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})

Layout: `<dir>/step-0000000042.pt`, one file per saved step (a torch.save archive holding the
step and the state). The rules that make resume after a crash correct:

- Atomic: rank 0 writes a dot-named temporary file in the same folder, flushes and fsyncs it,
  then `os.replace`s it onto the final name and fsyncs the folder. A reader sees a complete
  checkpoint or none; a crash leaves at most a temporary file, which readers never match and
  the next save removes.
- One writer: only rank 0 writes (DistributedDataParallel keeps every rank's model identical),
  and `save` returns on every rank only after the file is durable, so no rank runs ahead of a
  checkpoint it may later need.
- One answer: in `load_latest`, rank 0 picks the step and broadcasts it; every rank then reads
  that file. Ranks never resume from different steps even if a directory listing is stale.
  Every worker must therefore see the same folder: on Kubernetes, a ReadWriteMany volume.
- Safe to read: files load with `torch.load(weights_only=True)` by default, which restores
  tensors and plain containers and refuses arbitrary pickled objects.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from kubemaas.logs import kv
from kubemaas_trainer.distributed import barrier, broadcast_from_main, is_main, world_size
from kubemaas_trainer.launch_settings import PodEnv

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT: Final = "kubemaas-checkpoint/1"
_CHECKPOINT_NAME: Final = re.compile(r"step-(\d+)\.pt")
_TEMP_NAME: Final = re.compile(r"\.step-\d+\.pt\.tmp-\d+")

Location = str | torch.device | None


class CheckpointError(RuntimeError):
    """No usable checkpoint directory, or a checkpoint file that cannot be what we wrote."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: int
    state: dict[str, Any]
    path: Path


def checkpoint_path(directory: Path, step: int) -> Path:
    # Zero-padded so a plain `ls` lists checkpoints in step order.
    return directory / f"step-{step:010d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `directory`, oldest step first; temporaries and strangers ignored."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for path in entries:
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        # Only the exact name `checkpoint_path` gives (step-99.pt is not step 99's file), so the
        # step read from a listing always leads back to the same file.
        if match and path.name == checkpoint_path(directory, int(match.group(1))).name and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def fsync_directory(directory: Path) -> None:
    """Makes a rename inside `directory` durable (the new name survives a power loss)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """torch.save to a temporary sibling, fsync, rename onto `path`, fsync the folder."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as stream:
            torch.save(dict(payload), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


class CheckpointStore:
    """Saves and finds checkpoints in one folder; every rank makes one with the same arguments."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, keep: int | None = 3) -> None:
        if directory is None:
            env_dir = os.environ.get(PodEnv.CHECKPOINT_DIR.value, "").strip()
            if not env_dir:
                raise CheckpointError(
                    f"no checkpoint directory: pass one or set {PodEnv.CHECKPOINT_DIR.value} "
                    "(the operator sets it to a volume every worker mounts)"
                )
            directory = env_dir
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None to keep every checkpoint), got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, as this process sees the folder."""
        return [step for step, _ in list_checkpoints(self.directory)]

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Rank 0 writes `state` as the checkpoint of `step`; every rank returns once it is durable.

        Call it on every rank (it synchronizes them). Steps are expected to increase: rotation
        keeps the `keep` highest steps, and the one just written is never removed.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        path = checkpoint_path(self.directory, step)
        if is_main():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            payload = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "world_size": world_size(),
                "state": dict(state),
            }
            write_atomically(path, payload)
            removed = self._rotate(keep_path=path)
            log.info("checkpoint saved", extra=kv(step=step, path=path, removed=len(removed)))
        barrier()
        return path

    def load_latest(self, *, map_location: Location = "cpu", weights_only: bool = True) -> Checkpoint | None:
        """The newest checkpoint, the same one on every rank, or None when there is none yet.

        Call it on every rank. Tensors load onto `map_location` (CPU by default: load_state_dict
        copies them to the model's device).
        """
        barrier()  # a save still in flight on rank 0 finishes before anyone looks
        step = broadcast_from_main(self.latest_step() if is_main() else None)
        if step is None:
            log.info("no checkpoint to resume from", extra=kv(directory=self.directory))
            return None
        checkpoint = self.load(step, map_location=map_location, weights_only=weights_only)
        log.info("resuming from checkpoint", extra=kv(step=step, path=checkpoint.path))
        return checkpoint

    def load(self, step: int, *, map_location: Location = "cpu", weights_only: bool = True) -> Checkpoint:
        """The checkpoint of one `step`, read by this process alone."""
        path = checkpoint_path(self.directory, step)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint of step {step} is not visible at {path} on this worker: rank 0 found it, "
                "so the checkpoint directory is not shared; mount the same volume on every worker"
            )
        try:
            payload = torch.load(path, map_location=map_location, weights_only=weights_only)
        except Exception as error:
            raise CheckpointError(f"{path}: cannot load checkpoint: {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a kubemaas checkpoint (format {CHECKPOINT_FORMAT})")
        if payload.get("step") != step or not isinstance(payload.get("state"), dict):
            raise CheckpointError(f"{path}: damaged checkpoint (step or state missing)")
        return Checkpoint(step=step, state=payload["state"], path=path)

    def _rotate(self, *, keep_path: Path) -> list[Path]:
        if self.keep is None:
            return []
        existing = list_checkpoints(self.directory)
        removed = []
        for _, path in existing[: max(0, len(existing) - self.keep)]:
            if path != keep_path:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _remove_stale_temporaries(self) -> None:
        # Only rank 0 ever writes here, so any temporary file is left over from a writer that
        # was killed mid-save.
        for path in self.directory.iterdir():
            if _TEMP_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
