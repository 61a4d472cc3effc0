"""`kubemaas train -- <command ...>`: the entry point of every training pod.

The operator starts each worker pod of a TrainingJob with this command. It reads where the pod
stands in the job from the environment (see `launch_settings.PodEnv`), picks the backend (nccl
when the pod sees a GPU, gloo otherwise) and replaces itself with torchrun:

    python -m torch.distributed.run --nnodes=W --nproc-per-node=P --node-rank=R
        --master-addr=ADDR --master-port=PORT --rdzv-backend=static --max-restarts=0 <script ...>

torchrun then starts P processes with RANK, LOCAL_RANK, WORLD_SIZE, ... set, which
`kubemaas_trainer.distributed.init` reads. Static rendezvous matches what Kubernetes gives us: a
fixed number of pods, each knowing its index. torchrun's own restarts stay off because a restart
must involve every node (a lone node restarting waits for peers that are still in the failed
round); the operator restarts the whole group instead and counts it in KUBEMAAS_RESTART_COUNT.

Building the command is pure (`torchrun_argv`); `main` is the thin edge that execs it. Exec,
not a child process, so the kubelet's SIGTERM reaches torchrun, which forwards it to the workers,
and the pod's exit code is torchrun's.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence

from kubemaas.logs import kv, setup_logging
from kubemaas_trainer.launch_settings import (
    Backend,
    LaunchConfigError,
    LaunchSettings,
    Overrides,
    PodEnv,
    check_devices,
    child_environment,
    choose_backend,
    parse_backend,
    settings_from_environment,
)

log = logging.getLogger(__name__)

PROG = "kubemaas train"
USAGE = f"{PROG} [options] -- <command ...>"
# `python`, `python3`, `python3.11`: names that mean "a Python interpreter".
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?")


def script_arguments(command: Sequence[str], *, python: str = sys.executable) -> list[str]:
    """The part of the torchrun command line that names what each worker runs.

    torchrun runs Python scripts with its own interpreter (`python` below), so `python train.py
    --lr 0.1` becomes `train.py --lr 0.1` and `python -m pkg.train` becomes `--module pkg.train`.
    That holds when the command names Python by a bare name (looked up on PATH; in a training
    image that is the interpreter kubemaas is installed in) or by the very path torchrun runs
    with. Anything else runs verbatim with `--no-python`: a shell script, a different
    interpreter given by path, or Python with interpreter options (`python -u train.py`),
    which torchrun's own Python invocation would not pass on.
    """
    if not command:
        raise LaunchConfigError(f"no training command given: {USAGE}")
    head, rest = command[0], list(command[1:])
    is_our_python = ("/" not in head and _PYTHON_NAME.fullmatch(head) is not None) or os.path.normpath(
        head
    ) == os.path.normpath(python)
    if is_our_python and rest:
        if rest[0] == "-m" and len(rest) > 1:
            return ["--module", *rest[1:]]
        if not rest[0].startswith("-"):
            return rest
    return ["--no-python", *command]


def torchrun_argv(
    settings: LaunchSettings, command: Sequence[str], *, python: str = sys.executable
) -> list[str]:
    """The full argv that starts torchrun for this pod (argv[0] is the interpreter)."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={settings.workers}",
        f"--nproc-per-node={settings.procs_per_worker}",
        f"--node-rank={settings.node_rank}",
        f"--master-addr={settings.master_addr}",
        f"--master-port={settings.master_port}",
        "--rdzv-backend=static",
        "--max-restarts=0",
        *script_arguments(command, python=python),
    ]


def visible_cuda_devices() -> int:
    """How many GPUs this pod can use, asked of the NVIDIA driver directly.

    Importing torch only to call `torch.cuda.is_available()` would add seconds to every pod
    start before torchrun imports it again; the driver answers in milliseconds and honours
    CUDA_VISIBLE_DEVICES the same way. No driver library means no GPU.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if driver.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=USAGE,
        description=(
            "Run a training command under torchrun with this pod's place in the job, read from the "
            "environment the kubemaas operator sets. Flags override the environment."
        ),
    )
    add = parser.add_argument
    add("--workers", type=int, help=f"number of worker pods (nnodes); env {PodEnv.WORKERS.value}, default 1")
    add(
        "--procs-per-worker",
        type=int,
        help=f"processes per pod (nproc-per-node); env {PodEnv.PROCS_PER_WORKER.value}, default 1",
    )
    add("--node-rank", type=int, help=f"this pod's index; env {PodEnv.NODE_RANK.value}")
    add("--master-addr", help=f"address of worker 0; env {PodEnv.MASTER_ADDR.value}")
    add(
        "--master-port",
        type=int,
        help=f"rendezvous port on worker 0; env {PodEnv.MASTER_PORT.value}, default 29500",
    )
    add("--output-dir", help=f"where the script exports its model; env {PodEnv.OUTPUT_DIR.value}")
    add("--checkpoint-dir", help=f"where checkpoints go; env {PodEnv.CHECKPOINT_DIR.value}")
    add(
        "--restart-count", type=int, help=f"group restart number; env {PodEnv.RESTART_COUNT.value}, default 0"
    )
    add(
        "--backend",
        choices=[b.value for b in Backend],
        help=f"torch.distributed backend; env {PodEnv.BACKEND.value}, default nccl with GPUs, gloo without",
    )
    add("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Launcher options before the first `--`, the training command after it."""
    args = list(argv)
    if "--" in args:
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, []


def main(argv: list[str]) -> int:
    options, command = split_command(argv)
    parser = build_parser()
    try:
        args, unexpected = parser.parse_known_args(options)
    except SystemExit as exit_:  # --help, or a malformed flag (argparse has printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    if unexpected:
        parser.print_usage(sys.stderr)
        print(
            f"{PROG}: error: unexpected argument(s) {shlex.join(unexpected)}: put the training command after --",
            file=sys.stderr,
        )
        return 2
    setup_logging("INFO")
    try:
        overrides = Overrides(
            workers=args.workers,
            procs_per_worker=args.procs_per_worker,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            output_dir=args.output_dir,
            checkpoint_dir=args.checkpoint_dir,
            restart_count=args.restart_count,
            backend=None if args.backend is None else parse_backend(args.backend, source="--backend"),
        )
        settings = settings_from_environment(os.environ, overrides)
        cuda_devices = 0 if settings.backend == Backend.GLOO else visible_cuda_devices()
        backend = choose_backend(settings.backend, cuda_devices=cuda_devices)
        check_devices(settings, backend, cuda_devices=cuda_devices)
        torchrun = torchrun_argv(settings, command)
    except LaunchConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    env = child_environment(settings, backend, os.environ)
    if args.dry_run:
        print(shlex.join([f"{PodEnv.BACKEND.value}={backend.value}", *torchrun]))
        return 0
    log.info(
        "launching torchrun",
        extra=kv(
            workers=settings.workers,
            procs_per_worker=settings.procs_per_worker,
            node_rank=settings.node_rank,
            master=f"{settings.master_addr}:{settings.master_port}",
            backend=backend.value,
            restart_count=settings.restart_count,
            command=shlex.join(command),
        ),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(torchrun[0], torchrun, env)
    except OSError as error:
        print(f"{PROG}: error: cannot run {torchrun[0]}: {error.strerror or error}", file=sys.stderr)
        return 127
