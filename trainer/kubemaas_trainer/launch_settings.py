"""The training pod's environment, parsed and validated once, without importing torch.

The operator runs every worker pod of a TrainingJob as one index of an Indexed Job and tells it
where it stands through environment variables (`PodEnv`). `kubemaas train` turns them into
`LaunchSettings`, lets command-line flags override any of them (for running by hand), and hands
the result to torchrun. Everything here is a pure function of a mapping, so the rules are
unit-tested without processes; the operator can import `PodEnv` for the variable names without
pulling in torch.

Defaults exist only where they are unambiguous: a single-worker job needs no node rank (it is 0)
and no master address (it is this pod, 127.0.0.1). A multi-worker job without
`JOB_COMPLETION_INDEX` or `KUBEMAAS_MASTER_ADDR` is refused, because guessing would start two
rank-0 nodes or dial a master that does not exist, and either hangs until the rendezvous times out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MASTER_PORT = 29500
SINGLE_NODE_MASTER_ADDR = "127.0.0.1"


class PodEnv(enum.StrEnum):
    """Environment variables of a training pod: set by the operator, read by `kubemaas train`."""

    WORKERS = "KUBEMAAS_WORKERS"
    PROCS_PER_WORKER = "KUBEMAAS_PROCS_PER_WORKER"
    # Set by Kubernetes itself in every pod of an Indexed Job.
    NODE_RANK = "JOB_COMPLETION_INDEX"
    MASTER_ADDR = "KUBEMAAS_MASTER_ADDR"
    MASTER_PORT = "KUBEMAAS_MASTER_PORT"
    OUTPUT_DIR = "KUBEMAAS_OUTPUT_DIR"
    CHECKPOINT_DIR = "KUBEMAAS_CHECKPOINT_DIR"
    RESTART_COUNT = "KUBEMAAS_RESTART_COUNT"
    # Exported by the launcher for the training script; may be preset to force a backend.
    BACKEND = "KUBEMAAS_BACKEND"


class Backend(enum.StrEnum):
    """torch.distributed backends we launch with."""

    NCCL = "nccl"
    GLOO = "gloo"


class LaunchConfigError(ValueError):
    """The pod environment or the flags do not describe a launchable job; the message says which
    setting is wrong and how to fix it."""


@dataclass(frozen=True, slots=True)
class Overrides:
    """Values given as `kubemaas train` flags; `None` means "take it from the environment"."""

    workers: int | None = None
    procs_per_worker: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    output_dir: str | None = None
    checkpoint_dir: str | None = None
    restart_count: int | None = None
    backend: Backend | None = None


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """Where this pod stands in the job. `backend` is what was asked for (None: choose by GPUs)."""

    workers: int
    procs_per_worker: int
    node_rank: int
    master_addr: str
    master_port: int
    output_dir: str | None = None
    checkpoint_dir: str | None = None
    restart_count: int = 0
    backend: Backend | None = None

    @property
    def world_size(self) -> int:
        return self.workers * self.procs_per_worker


def _raw(env: Mapping[str, str], var: PodEnv) -> str | None:
    # Kubernetes renders an unset optional field as an empty string just as often as it leaves
    # the variable out; both mean "not given".
    value = env.get(var.value, "").strip()
    return value or None


def _int_setting(
    env: Mapping[str, str], var: PodEnv, flag: str, override: int | None, *, minimum: int
) -> int | None:
    if override is not None:
        source, value = flag, override
    else:
        raw = _raw(env, var)
        if raw is None:
            return None
        source = var.value
        try:
            value = int(raw)
        except ValueError:
            raise LaunchConfigError(f"{source}={raw!r} is not an integer") from None
    if value < minimum:
        raise LaunchConfigError(f"{source} must be >= {minimum}, got {value}")
    return value


def _str_setting(env: Mapping[str, str], var: PodEnv, override: str | None) -> str | None:
    if override is not None:
        return override.strip() or None
    return _raw(env, var)


def parse_backend(value: str, *, source: str) -> Backend:
    try:
        return Backend(value.strip().lower())
    except ValueError:
        allowed = ", ".join(b.value for b in Backend)
        raise LaunchConfigError(f"{source}={value!r} is not a backend (one of {allowed})") from None


def settings_from_environment(env: Mapping[str, str], overrides: Overrides | None = None) -> LaunchSettings:
    """Reads the pod environment, applies flag overrides, and checks the result is consistent."""
    overrides = overrides or Overrides()
    workers = _int_setting(env, PodEnv.WORKERS, "--workers", overrides.workers, minimum=1) or 1
    procs = (
        _int_setting(
            env, PodEnv.PROCS_PER_WORKER, "--procs-per-worker", overrides.procs_per_worker, minimum=1
        )
        or 1
    )

    node_rank = _int_setting(env, PodEnv.NODE_RANK, "--node-rank", overrides.node_rank, minimum=0)
    if node_rank is None:
        if workers > 1:
            raise LaunchConfigError(
                f"{PodEnv.NODE_RANK.value} is not set but the job has {workers} workers: each pod needs its "
                "node rank (the operator runs workers as an Indexed Job, which sets it); "
                "pass --node-rank when launching by hand"
            )
        node_rank = 0
    if node_rank >= workers:
        source = "--node-rank" if overrides.node_rank is not None else PodEnv.NODE_RANK.value
        raise LaunchConfigError(
            f"{source}={node_rank} is out of range for {workers} worker(s) (0..{workers - 1})"
        )

    master_addr = _str_setting(env, PodEnv.MASTER_ADDR, overrides.master_addr)
    if master_addr is None:
        if workers > 1:
            raise LaunchConfigError(
                f"{PodEnv.MASTER_ADDR.value} is not set but the job has {workers} workers: it must name "
                "worker 0 (its stable DNS name under the job's headless Service); "
                "pass --master-addr when launching by hand"
            )
        master_addr = SINGLE_NODE_MASTER_ADDR
    if any(ch.isspace() for ch in master_addr):
        raise LaunchConfigError(f"master address {master_addr!r} contains whitespace")

    master_port = _int_setting(env, PodEnv.MASTER_PORT, "--master-port", overrides.master_port, minimum=1)
    if master_port is None:
        master_port = DEFAULT_MASTER_PORT
    if master_port > 65535:
        source = "--master-port" if overrides.master_port is not None else PodEnv.MASTER_PORT.value
        raise LaunchConfigError(f"{source} must be a TCP port (1..65535), got {master_port}")

    restarts = _int_setting(env, PodEnv.RESTART_COUNT, "--restart-count", overrides.restart_count, minimum=0)

    backend = overrides.backend
    if backend is None:
        raw_backend = _raw(env, PodEnv.BACKEND)
        backend = None if raw_backend is None else parse_backend(raw_backend, source=PodEnv.BACKEND.value)

    return LaunchSettings(
        workers=workers,
        procs_per_worker=procs,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        output_dir=_str_setting(env, PodEnv.OUTPUT_DIR, overrides.output_dir),
        checkpoint_dir=_str_setting(env, PodEnv.CHECKPOINT_DIR, overrides.checkpoint_dir),
        restart_count=restarts or 0,
        backend=backend,
    )


def choose_backend(requested: Backend | None, *, cuda_devices: int) -> Backend:
    """nccl when this pod sees a GPU, gloo otherwise, unless one was asked for explicitly."""
    if requested is not None:
        return requested
    return Backend.NCCL if cuda_devices > 0 else Backend.GLOO


def check_devices(settings: LaunchSettings, backend: Backend, *, cuda_devices: int) -> None:
    """nccl needs one GPU per local process: two ranks on one device fail inside NCCL with an
    error that does not say why, so refuse before starting anything."""
    if backend != Backend.NCCL:
        return
    if cuda_devices == 0:
        raise LaunchConfigError("backend nccl needs a GPU but this pod sees none; use gloo or request GPUs")
    if settings.procs_per_worker > cuda_devices:
        raise LaunchConfigError(
            f"{settings.procs_per_worker} processes per worker with backend nccl need as many GPUs, "
            f"but this pod sees {cuda_devices}"
        )


def child_environment(settings: LaunchSettings, backend: Backend, base: Mapping[str, str]) -> dict[str, str]:
    """The environment torchrun and the training script run with: the pod's, plus the resolved
    settings, so a value given as a flag is what the script sees too."""
    env = dict(base)
    env[PodEnv.WORKERS.value] = str(settings.workers)
    env[PodEnv.PROCS_PER_WORKER.value] = str(settings.procs_per_worker)
    env[PodEnv.MASTER_ADDR.value] = settings.master_addr
    env[PodEnv.MASTER_PORT.value] = str(settings.master_port)
    env[PodEnv.RESTART_COUNT.value] = str(settings.restart_count)
    env[PodEnv.BACKEND.value] = backend.value
    if settings.output_dir is not None:
        env[PodEnv.OUTPUT_DIR.value] = settings.output_dir
    if settings.checkpoint_dir is not None:
        env[PodEnv.CHECKPOINT_DIR.value] = settings.checkpoint_dir
    return env
