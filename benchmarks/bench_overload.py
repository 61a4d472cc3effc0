"""`make bench-overload`: what `kubemaas serve` does past saturation.

One model with a fixed service time per forward pass (a chain of 128x128 matmuls whose length is
calibrated here to `--pass-ms`, independent of the batch's rows), max_batch_size 4 and the
default queue bound, served by `kubemaas serve --torch-threads 1` in its own process:

  1. capacity: the closed-loop throughput of `benchmarks/server/loadgen.py` with 4 clients per
     batch slot, enough to keep every pass full without filling the queue;
  2. a ramp of open-loop load (`benchmarks/server/openloop.py`, Poisson arrivals) from 0.5x to
     4x that capacity, each step warmed up and then measured on its own.

The table shows, per step, the rate offered, the rate admitted and answered, the share shed
(UNAVAILABLE with a retry hint), the latency of the admitted requests and the median hint. It is
printed and written as the "Past saturation" section of docs/benchmarks-server.md (the rest of
that file belongs to `make bench-server`, which keeps this section when it rewrites its own).

    python benchmarks/bench_overload.py [--duration 8] [--pass-ms 40] [--max-queue-size N] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_server import Server, free_port, serve_command
from pages import replace_section

from kubemaas_server.model_config import (
    DataType,
    Device,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    default_max_queue_size,
)
from kubemaas_server.repository import save_model

ROOT = Path(__file__).resolve().parents[1]
OPENLOOP = ROOT / "benchmarks" / "server" / "openloop.py"
# Capacity is measured by the Python closed-loop client, the same stack as the open-loop one.
LOADGEN = ROOT / "benchmarks" / "server" / "loadgen.py"
DOC = ROOT / "docs" / "benchmarks-server.md"
SECTION = "## Past saturation"
MODEL = "fixed"
FEATURES = 16
MAX_BATCH = 4
LOAD_STEPS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # multiples of the measured capacity


class FixedPass(torch.nn.Module):
    """Returns its input; spends `rounds` matmuls on a fixed 128x128 matrix first, so a pass
    costs the same whatever its batch size, as a compute-bound model at a fixed batch would."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds
        self.weight = torch.nn.Parameter(torch.randn(128, 128) / 12.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.weight
        for _ in range(self.rounds):
            y = torch.tanh(y @ self.weight)
        return x + 0.0 * y.sum()


@dataclass
class Step:
    load: float
    offered_rps: float
    admitted_rps: float
    shed_fraction: float
    p50_ms: float
    p99_ms: float
    hint_p50_ms: float
    errors: int


def log(message: str) -> None:
    print(f"[bench-overload] {message}", file=sys.stderr, flush=True)


def pass_seconds(rounds: int) -> float:
    """The median of a few forward passes of `FixedPass(rounds)` in this process, one thread."""
    module = FixedPass(rounds).eval()
    batch = torch.zeros(MAX_BATCH, FEATURES)
    times = []
    with torch.inference_mode():
        for _ in range(7):
            started = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def calibrate(pass_ms: float) -> tuple[int, float]:
    """Rounds for a pass of about `pass_ms` on this machine now, and the pass time measured."""
    torch.set_num_threads(1)
    probe = 200
    rounds = max(1, round(probe * pass_ms / 1000.0 / max(pass_seconds(probe), 1e-6)))
    return rounds, pass_seconds(rounds)


def build_repository(root: Path, rounds: int, max_queue_size: int | None) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        MODEL,
        inputs=(TensorSpec("input", DataType.FP32, (FEATURES,)),),
        outputs=(TensorSpec("output", DataType.FP32, (FEATURES,)),),
        max_batch_size=MAX_BATCH,
        dynamic_batching=DynamicBatching(max_queue_size=max_queue_size),
        device=Device.CPU,
    )
    save_model(root, config, FixedPass(rounds))


def closed_loop_capacity(target: str, duration: float) -> float:
    command = [
        sys.executable, str(LOADGEN), "--target", target, "--model", MODEL,
        "--features", str(FEATURES), "--outputs", str(FEATURES), "--concurrency", str(4 * MAX_BATCH),
        "--duration", str(duration), "--warmup", "1",
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["errors"]:
        raise RuntimeError(f"{measured['errors']} errors while measuring capacity: {measured}")
    return float(measured["throughput"])


def open_loop(target: str, rate: float, duration: float, load: float) -> Step:
    command = [
        sys.executable, str(OPENLOOP), "--target", target, "--model", MODEL,
        "--features", str(FEATURES), "--outputs", str(FEATURES), "--rate", f"{rate:.3f}",
        "--duration", str(duration), "--warmup", "1",
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    log(f"{load:g}x: {json.dumps(measured)}")
    return Step(
        load,
        measured["offered_rps"],
        measured["admitted_rps"],
        measured["shed_fraction"],
        measured["p50_ms"],
        measured["p99_ms"],
        measured["hint_p50_ms"],
        int(measured["errors"]),
    )


def table(steps: list[Step]) -> str:
    lines = [
        "| offered load | offered (req/s) | admitted (req/s) | shed | p50 admitted (ms) | p99 admitted (ms) | retry hint p50 (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in steps:
        hint = "-" if step.hint_p50_ms != step.hint_p50_ms else f"{step.hint_p50_ms:,.0f}"  # NaN: none shed
        lines.append(
            f"| {step.load:g}x | {step.offered_rps:,.0f} | {step.admitted_rps:,.0f} | "
            f"{100 * step.shed_fraction:.1f}% | {step.p50_ms:,.1f} | {step.p99_ms:,.1f} | {hint} |"
        )
    return "\n".join(lines)


def section(
    steps: list[Step],
    *,
    args: argparse.Namespace,
    pass_s: float,
    capacity: float,
    queue_size: int,
    load: tuple[float, float],
) -> str:
    today = datetime.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    default = "the default, max(128, 16 x max_batch_size)" if args.max_queue_size is None else "set"
    return f"""{SECTION}

Produced by `make bench-overload` (`benchmarks/bench_overload.py`); this section is rewritten on
every run of it and kept by `make bench-server`.

- date: {today}
- machine: {os.cpu_count()} cores ({cpu}), shared with other jobs (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}
- model: a fixed-cost pass of {1000 * pass_s:.0f} ms in-process (matmul chain, same cost at any batch size), max_batch_size {MAX_BATCH}, `max_queue_size` {queue_size} ({default}), no queue timeout; `kubemaas serve --torch-threads 1`
- capacity: {capacity:,.0f} req/s, the closed-loop throughput of {4 * MAX_BATCH} clients (`benchmarks/server/loadgen.py`); the ramp offers multiples of it
- load: open loop (`benchmarks/server/openloop.py`), Poisson arrivals of single-sample requests over one gRPC channel from a separate process, {args.duration:g} s measured after 1 s warm-up per step; "offered" is the rate actually sent, "shed" the share answered UNAVAILABLE with a `retry-after-ms` hint
- the queue bound predicts the longest wait of an admitted request at saturation: {queue_size} requests / {capacity:,.0f} req/s = {1000 * queue_size / capacity:,.0f} ms, plus its own pass

{table(steps)}

Reading the numbers: past 1x the server admits about what it can serve and refuses the rest
at once, so the latency of admitted requests levels off near the queue bound's prediction
instead of growing with the load and with the length of the run, as it would behind an
unbounded queue. The retry hint is the queue's drain time at the measured rate, which is why it
tracks the admitted latency. A refusal is cheap but not free: it still crosses Python gRPC and
the event loop, so at high multiples the admitted rate sags below the closed-loop capacity (the
load generator, the event loop and the model thread share {os.cpu_count()} cores here, with other
jobs). A tighter latency budget needs a smaller `max_queue_size` (budget x throughput), not a
faster refusal. Absolute numbers move between runs on this machine.
"""


def write_section(text: str) -> None:
    """Replaces this benchmark's section of the server benchmark page (or appends it)."""
    replace_section(DOC, SECTION, text, new_page="# Model server benchmark\n")
    log(f"wrote the {SECTION!r} section of {DOC}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load step")
    parser.add_argument("--pass-ms", type=float, default=40.0, help="service time of one forward pass")
    parser.add_argument("--max-queue-size", type=int, default=None, help="model.yaml's; default: the default")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kubemaas-bench-overload-"))
    server: Server | None = None
    try:
        rounds, pass_s = calibrate(args.pass_ms)
        log(f"{rounds} rounds per pass: {1000 * pass_s:.1f} ms in-process")
        build_repository(work / "repository", rounds, args.max_queue_size)
        queue_size = args.max_queue_size or default_max_queue_size(MAX_BATCH)
        port = free_port()
        command = serve_command(work / "repository", port)
        env = dict(os.environ, KUBEMAAS_LOG_LEVEL="WARNING")
        server = Server("kubemaas", command, f"127.0.0.1:{port}", env, work / "kubemaas.log")
        server.start()
        load_before = os.getloadavg()[0]
        capacity = closed_loop_capacity(server.target, min(args.duration, 5.0))
        log(f"capacity {capacity:.0f} req/s (closed loop, {4 * MAX_BATCH} clients)")
        steps = [open_loop(server.target, load * capacity, args.duration, load) for load in LOAD_STEPS]
        print(table(steps))
        errors = sum(step.errors for step in steps)
        if errors:
            raise RuntimeError(f"{errors} requests failed other than by shedding; see {work}")
        if not args.no_write:
            write_section(
                section(
                    steps,
                    args=args,
                    pass_s=pass_s,
                    capacity=capacity,
                    queue_size=queue_size,
                    load=(load_before, os.getloadavg()[0]),
                )
            )
    except Exception:
        log(f"failed; the server log is kept in {work}")
        raise
    finally:
        if server is not None:
            server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
