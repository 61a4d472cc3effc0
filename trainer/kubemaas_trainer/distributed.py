"""Process-group setup for training scripts started by `kubemaas train` (torchrun).

    from kubemaas_trainer import distributed

    with distributed.session() as ctx:        # init_process_group from torchrun's environment
        model = Net().to(ctx.device)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        ...

torchrun gives each process RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK and the
rendezvous store; the launcher adds KUBEMAAS_BACKEND (nccl with GPUs, gloo without). `init`
reads them, joins the process group, and picks the process's device by LOCAL_RANK.

The same script also runs without torchrun (`python train.py`): `init` then forms a
one-process group on an in-memory store, so DistributedDataParallel, barriers and broadcasts
work unchanged and nothing needs an `if distributed:` branch.

The small helpers at the end (`rank`, `barrier`, `broadcast_from_main`) work whether or not a
group is initialized; checkpoint and export use them to let rank 0 write while the others wait.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, TypeVar

import torch
import torch.distributed as dist

from kubemaas.logs import kv, setup_logging
from kubemaas_trainer.launch_settings import Backend, LaunchConfigError, PodEnv, parse_backend

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = timedelta(minutes=30)
# Set to 1/true to let every rank log at INFO, not only rank 0.
LOG_ALL_RANKS_ENV: Final = "KUBEMAAS_LOG_ALL_RANKS"

T = TypeVar("T")


class DistributedError(RuntimeError):
    """The process cannot join its group as configured; the message says what to change."""


@dataclass(frozen=True, slots=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    backend: Backend
    device: torch.device
    # Whole-group restarts by the operator so far (KUBEMAAS_RESTART_COUNT); 0 on the first run.
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and exports."""
        return self.rank == 0


@dataclass(frozen=True, slots=True)
class Placement:
    """What torchrun told this process; `launched` is False for a plain `python train.py`."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    launched: bool


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not an integer") from None


def placement_from_environment(env: Mapping[str, str]) -> Placement:
    """Where torchrun put this process; a process not started by torchrun is rank 0 of 1."""
    launched = bool(env.get("WORLD_SIZE", "").strip())
    world_size = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    local_world_size = _int_env(env, "LOCAL_WORLD_SIZE", 1)
    node_rank = _int_env(env, "GROUP_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is out of range for WORLD_SIZE={world_size}")
    if local_world_size < 1 or not 0 <= local_rank < local_world_size:
        raise DistributedError(
            f"LOCAL_RANK={local_rank} is out of range for LOCAL_WORLD_SIZE={local_world_size}"
        )
    return Placement(rank, world_size, local_rank, local_world_size, node_rank, launched)


def resolve_backend(
    requested: Backend | str | None, env: Mapping[str, str], *, cuda_available: bool
) -> Backend:
    """An explicit argument wins, then KUBEMAAS_BACKEND (set by the launcher), then the
    hardware: nccl when CUDA is usable, gloo otherwise."""
    if isinstance(requested, Backend):
        backend = requested
    elif requested is not None:
        backend = _checked_backend(requested, "backend")
    elif env.get(PodEnv.BACKEND.value, "").strip():
        backend = _checked_backend(env[PodEnv.BACKEND.value], PodEnv.BACKEND.value)
    else:
        backend = Backend.NCCL if cuda_available else Backend.GLOO
    if backend == Backend.NCCL and not cuda_available:
        raise DistributedError(
            "backend nccl needs CUDA, which this process cannot use (no GPU visible, or torch was built "
            f"without CUDA); set {PodEnv.BACKEND.value}=gloo to train on CPU"
        )
    return backend


def _checked_backend(value: str, source: str) -> Backend:
    try:
        return parse_backend(value, source=source)
    except LaunchConfigError as error:
        raise DistributedError(str(error)) from None


class _RankFilter(logging.Filter):
    """Adds `rank=N` to every record, so interleaved pod logs say which process spoke."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "kv", None) or {}
        if "rank" not in fields:
            record.kv = {"rank": self.rank, **fields}
        return True


def setup_rank_logging(rank: int, *, all_ranks: bool | None = None) -> None:
    """kubemaas key=value logging where only rank 0 logs INFO by default.

    Every rank would otherwise print the same epoch line N times. Other ranks still log
    warnings and errors, which are rank-specific. KUBEMAAS_LOG_LEVEL sets rank 0's level
    (default INFO); KUBEMAAS_LOG_ALL_RANKS=1 (or `all_ranks=True`) gives every rank that level.
    """
    if all_ranks is None:
        all_ranks = os.environ.get(LOG_ALL_RANKS_ENV, "").strip().lower() in ("1", "true", "yes")
    setup_logging("INFO")
    root = logging.getLogger()
    if rank != 0 and not all_ranks:
        root.setLevel(max(root.level, logging.WARNING))
    for handler in root.handlers:
        handler.addFilter(_RankFilter(rank))


def _select_device(backend: Backend, local_rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        if backend == Backend.NCCL:
            raise DistributedError(
                f"LOCAL_RANK={local_rank} has no GPU of its own: this process sees {count} device(s); "
                "run at most one process per GPU"
            )
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def init(
    *,
    backend: Backend | str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    configure_logging: bool = True,
) -> DistributedContext:
    """Joins this process's group (once) and returns its place in the job.

    `timeout` bounds every collective: a peer that died mid-step surfaces as an error after it,
    at the latest, instead of a hang.
    """
    env = os.environ
    where = placement_from_environment(env)
    if configure_logging:
        setup_rank_logging(where.rank)
    chosen = resolve_backend(backend, env, cuda_available=torch.cuda.is_available())
    device = _select_device(chosen, where.local_rank)
    if not dist.is_initialized():
        options: dict[str, object] = {}
        if chosen == Backend.NCCL:
            options["device_id"] = device  # eager NCCL init: a bad GPU fails here, not at the first step
        if where.launched:
            dist.init_process_group(
                backend=chosen.value,
                init_method="env://",
                timeout=timeout,
                **options,  # type: ignore[arg-type]
            )
        else:
            dist.init_process_group(
                backend=chosen.value,
                store=dist.HashStore(),  # type: ignore[attr-defined]
                rank=0,
                world_size=1,
                timeout=timeout,
                **options,  # type: ignore[arg-type]
            )
    ctx = DistributedContext(
        rank=where.rank,
        world_size=where.world_size,
        local_rank=where.local_rank,
        local_world_size=where.local_world_size,
        node_rank=where.node_rank,
        backend=chosen,
        device=device,
        restart_count=_int_env(env, PodEnv.RESTART_COUNT.value, 0),
    )
    log.info(
        "process group ready",
        extra=kv(
            world_size=ctx.world_size,
            node_rank=ctx.node_rank,
            local_rank=ctx.local_rank,
            backend=ctx.backend.value,
            device=str(ctx.device),
            restart_count=ctx.restart_count,
        ),
    )
    return ctx


def shutdown() -> None:
    """Leaves the process group; safe to call when none was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(
    *,
    backend: Backend | str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    configure_logging: bool = True,
) -> Iterator[DistributedContext]:
    """`init` on entry, `shutdown` on exit, also when training raises."""
    ctx = init(backend=backend, timeout=timeout, configure_logging=configure_logging)
    try:
        yield ctx
    finally:
        shutdown()


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the group when joined, else from torchrun's RANK."""
    if _grouped():
        return dist.get_rank()
    return _int_env(os.environ, "RANK", 0)


def world_size() -> int:
    if _grouped():
        return dist.get_world_size()
    return _int_env(os.environ, "WORLD_SIZE", 1)


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Waits for every rank; a no-op outside a process group."""
    if _grouped() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (pickled; for small control values, not tensors).

    Outside a process group every process keeps its own value.
    """
    if not _grouped() or dist.get_world_size() == 1:
        return value
    holder: list[object] = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[return-value]
