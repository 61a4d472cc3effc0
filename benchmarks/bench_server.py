"""`make bench-server`: kubemaas serve against MLServer 1.7 and the in-process limit.

In one invocation on one machine, for two models (a small MLP 256-1024-1024-10, overhead-bound,
and a wide MLP 256-4096-4096-10, compute-bound), all with torch threads 1:

  (a) the in-process forward pass at batch 64, the limit any server can approach;
  (b) `kubemaas serve` (dynamic batching, max_batch_size 64);
  (c) MLServer 1.7.1 with adaptive batching (max_batch_size 64, max_batch_time 5 ms,
      parallel_workers 0), serving the same TorchScript file through a small custom runtime.

Each server gets the same closed-loop load from `benchmarks/server/loadgen_go` (Go, grpc-go), a
separate process: 1 and 64 concurrent clients sending single-sample requests over gRPC for a
fixed time. The load generator is compiled so that on a small machine it takes as little CPU as
possible from the server it measures (a Python client costs about as much per request as a
Python server); it is built with the Go toolchain on first use and cached under the user's cache
directory, keyed by its source. The table (throughput, p50, p99, ratios) is printed and written
to docs/benchmarks-server.md.

MLServer's dependencies clash with ours (grpcio, protobuf), so it lives in its own virtualenv
under the user's cache directory, created on the first run. That venv borrows torch from ours
through a .pth line appended to its search path (its own packages come first), instead of a
second multi-gigabyte download of the same torch build.

    python benchmarks/bench_server.py [--duration 10] [--warmup 2] [--no-mlserver] [--no-write]
    python benchmarks/bench_server.py --build-loadgen     # build the load generator, print its path
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
from server.loadgen import build_request

from kubemaas_server.model_config import DataType, Device, DynamicBatching, ModelConfig, TensorSpec
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.repository import save_model

ROOT = Path(__file__).resolve().parents[1]


MLSERVER_VERSION = "1.7.1"
ECHO = "gRPC echo, no model (transport ceiling)"
MAX_BATCH = 64
CONCURRENCY = (1, 64)
MODELS = {"small": [256, 1024, 1024, 10], "wide": [256, 4096, 4096, 10]}
LOADGEN_SOURCE = ROOT / "benchmarks" / "server" / "loadgen_go"
DOC = ROOT / "docs" / "benchmarks-server.md"
# kubemaas holds a free model back for at most this long while a batch fills (and never more
# than half a forward pass: see kubemaas_server.batcher). MLServer's window is 5 ms.
KUBEMAAS_MAX_QUEUE_DELAY_MS = 20.0


class Mlp(torch.nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


@dataclass
class Row:
    model: str
    system: str
    clients: str
    throughput: float
    p50_ms: float
    p99_ms: float
    round: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[bench-server] {message}", file=sys.stderr, flush=True)


def build_repository(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    files = {}
    for name, sizes in MODELS.items():
        config = ModelConfig(
            name,
            inputs=(TensorSpec("input", DataType.FP32, (sizes[0],)),),
            outputs=(TensorSpec("output", DataType.FP32, (sizes[-1],)),),
            max_batch_size=MAX_BATCH,
            dynamic_batching=DynamicBatching(max_queue_delay_ms=KUBEMAAS_MAX_QUEUE_DELAY_MS),
            device=Device.CPU,
        )
        files[name] = save_model(root, config, Mlp(sizes))
    return files


def in_process_limit(model_file: Path, duration: float) -> Row:
    torch.set_num_threads(1)
    module = torch.jit.load(str(model_file)).eval()
    batch = torch.randn(MAX_BATCH, 256)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            module(batch)
        stop = time.perf_counter() + duration
        while time.perf_counter() < stop:
            started = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - started)
    values = np.array(times) * 1000.0
    return Row(
        model_file.parent.parent.name,
        "in-process forward, batch 64",
        "-",
        MAX_BATCH * len(times) / sum(times),
        float(np.percentile(values, 50)),
        float(np.percentile(values, 99)),
    )


def wait_ready(
    target: str, process: subprocess.Popen[bytes], timeout: float = 180.0, *, models: Sequence[str] = ()
) -> None:
    """Until ServerReady, or, given `models`, until each of them is ready (for a repository
    that holds a model meant to fail, where ServerReady stays false)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        server_ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        model_ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready")
            try:
                if models:
                    if all(model_ready(pb.ModelReadyRequest(name=name), timeout=2).ready for name in models):
                        return
                elif server_ready(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not ready after {timeout} s")


def serve_command(repository: Path, port: int, *extra: str) -> list[str]:
    """`kubemaas serve` as every benchmark runs it: one torch thread, no metrics port."""
    return [
        sys.executable, "-m", "kubemaas", "serve", "--model-repository", str(repository),
        "--grpc-port", str(port), "--metrics-port", "-1", "--torch-threads", "1", *extra,
    ]  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def loadgen_binary() -> Path:
    """The Go load generator, built once per version of its source into the user's cache."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((LOADGEN_SOURCE / name).read_bytes())
    binary = cache_dir() / "bin" / f"loadgen-{digest.hexdigest()[:12]}"
    if binary.exists():
        return binary
    log(f"building the Go load generator into {binary} (first run only, about a minute)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + ".partial")
    subprocess.run(
        ["go", "build", "-buildvcs=false", "-trimpath", "-o", str(partial), "."],
        cwd=LOADGEN_SOURCE,
        check=True,
    )
    partial.replace(binary)
    return binary


def request_file(directory: Path, model: str) -> Path:
    """One serialized single-sample ModelInfer request (raw FP32 [1, features]) for `model`."""
    path = directory / f"request-{model}.bin"
    path.write_bytes(build_request(model, MODELS[model][0], "input"))
    return path


def load(target: str, model: str, clients: int, args: argparse.Namespace) -> dict[str, float]:
    command = [
        str(args.loadgen), "-target", target, "-request", str(args.requests[model]),
        "-output-bytes", str(4 * MODELS[model][-1]), "-concurrency", str(clients),
        "-duration", str(args.duration), "-warmup", str(args.warmup),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {result.returncode}): {result.stderr.strip()}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far: how much CPU time the host took from this VM."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(value) for value in fields[:8]]  # user .. steal; guest time is inside user
    return values[7], sum(values)


@dataclass
class Server:
    name: str
    command: list[str]
    target: str
    env: dict[str, str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("wb") as output:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        wait_ready(self.target, self.process)
        log(f"{self.name} ready at {self.target}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def measure(server: Server, model: str, clients: int, args: argparse.Namespace) -> Row:
    result = load(server.target, model, clients, args)
    log(f"{server.name} {model} clients={clients}: {json.dumps(result)}")
    if result["errors"]:
        raise RuntimeError(f"{server.name} answered {result['errors']} requests with errors")
    return Row(model, server.name, str(clients), result["throughput"], result["p50_ms"], result["p99_ms"])


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (model, system, clients): the median of each column over the repeats."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.system, row.clients), []).append(row)
    return [
        Row(
            model,
            system,
            clients,
            float(np.median([r.throughput for r in group])),
            float(np.median([r.p50_ms for r in group])),
            float(np.median([r.p99_ms for r in group])),
        )
        for (model, system, clients), group in groups.items()
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubemaas"


def mlserver_venv() -> Path:
    """Creates (once) the MLServer virtualenv; returns its folder."""
    venv = cache_dir() / "bench-venv-mlserver"
    mlserver = venv / "bin" / "mlserver"
    stamp = venv / f".installed-{MLSERVER_VERSION}"
    if not stamp.exists():
        log(f"creating {venv} with mlserver=={MLSERVER_VERSION} (first run only)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                f"mlserver=={MLSERVER_VERSION}",
            ],
            check=True,
        )
        stamp.touch()
    # torch comes from our own venv, after everything MLServer's venv has.
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "kubemaas-borrowed-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if not mlserver.exists():
        raise FileNotFoundError(f"{mlserver} is missing; delete {venv} and run again")
    return venv


def mlserver_repository(root: Path, files: dict[str, Path], ports: dict[str, int]) -> Path:
    repo = root / "mlserver"
    repo.mkdir()
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "parallel_workers": 0,
        "load_models_at_startup": True,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, model_file in files.items():
        folder = repo / name
        folder.mkdir()
        model_settings = {
            "name": name,
            "implementation": "mlserver_torchscript.TorchScriptModel",
            "max_batch_size": MAX_BATCH,
            "max_batch_time": 0.005,
            "parameters": {"uri": str(model_file)},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return repo


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def table(rows: list[Row]) -> str:
    lines = [
        "| model | system | clients | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.system} | {row.clients} | {row.throughput:,.0f} | "
            f"{row.p50_ms:.2f} | {row.p99_ms:.2f} |"
        )
    return "\n".join(lines)


def limit_shares(samples: list[Row]) -> dict[str, float]:
    """kubemaas at 64 clients over the in-process limit, per model: the median over rounds of
    each round's ratio, because the limit is measured right before its round's cells and the
    machine's background load changes between rounds."""
    shares: dict[str, float] = {}
    for model in MODELS:
        ratios_by_round = []
        for limit in (r for r in samples if r.model == model and r.system.startswith("in-process")):
            ours = next(
                (
                    r
                    for r in samples
                    if r.model == model
                    and r.system == "kubemaas"
                    and r.clients == "64"
                    and r.round == limit.round
                ),
                None,
            )
            if ours is not None:
                ratios_by_round.append(ours.throughput / limit.throughput)
        if ratios_by_round:
            shares[model] = float(np.median(ratios_by_round))
    return shares


def closed_loop_bound(rows: list[Row], model: str) -> float | None:
    """The best throughput 64 closed-loop clients can see with full batches of 64: one forward
    pass (the in-process p50) plus 64 requests turned over at the echo server's rate."""
    limit = find(rows, model, "in-process", "-")
    echo = find(rows, model, ECHO, str(MAX_BATCH))
    if limit is None or echo is None or echo.throughput <= 0:
        return None
    return MAX_BATCH / (limit.p50_ms / 1000.0 + MAX_BATCH / echo.throughput)


def ratios(rows: list[Row], shares: dict[str, float]) -> str:
    lines = [
        "| model | clients | kubemaas / in-process limit | kubemaas / closed-loop bound | kubemaas / MLServer throughput | p99 kubemaas vs MLServer (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in MODELS:
        for clients in map(str, CONCURRENCY):
            ours = find(rows, model, "kubemaas", clients)
            theirs = find(rows, model, "MLServer", clients)
            if ours is None:
                continue
            vs_limit = f"{100 * shares[model]:.0f}%" if model in shares and clients == "64" else "-"
            bound = closed_loop_bound(rows, model) if clients == "64" else None
            vs_bound = f"{100 * ours.throughput / bound:.0f}%" if bound else "-"
            vs_ml = ratio(ours.throughput, theirs.throughput) if theirs else "n/a"
            p99 = f"{ours.p99_ms:.1f} vs {theirs.p99_ms:.1f}" if theirs else "n/a"
            lines.append(f"| {model} | {clients} | {vs_limit} | {vs_bound} | {vs_ml} | {p99} |")
    return "\n".join(lines)


def find(rows: list[Row], model: str, system: str, clients: str) -> Row | None:
    return next(
        (r for r in rows if r.model == model and r.system.startswith(system) and r.clients == clients), None
    )


def targets(rows: list[Row], shares: dict[str, float]) -> str:
    """The issue's acceptance targets, checked against this run."""
    lines = ["| target | measured | met |", "| --- | --- | :---: |"]

    def check(label: str, measured: str, met: bool) -> None:
        lines.append(f"| {label} | {measured} | {'yes' if met else 'no'} |")

    wide, wide_ml = find(rows, "wide", "kubemaas", "64"), find(rows, "wide", "MLServer", "64")
    small, small_ml = find(rows, "small", "kubemaas", "64"), find(rows, "small", "MLServer", "64")
    lone = find(rows, "small", "kubemaas", "1")
    if "wide" in shares:
        share = shares["wide"]
        check("wide MLP, 64 clients: >= 85% of the in-process limit", f"{100 * share:.0f}%", share >= 0.85)
    if wide and wide_ml:
        factor = wide.throughput / wide_ml.throughput
        check("wide MLP, 64 clients: >= 4x MLServer throughput", f"{factor:.2f}x", factor >= 4)
        check(
            "wide MLP, 64 clients: lower p99 than MLServer",
            f"{wide.p99_ms:.1f} vs {wide_ml.p99_ms:.1f} ms",
            wide.p99_ms < wide_ml.p99_ms,
        )
    if small and small_ml:
        factor = small.throughput / small_ml.throughput
        check("small MLP, 64 clients: >= 2x MLServer throughput", f"{factor:.2f}x", factor >= 2)
        check(
            "small MLP, 64 clients: lower p99 than MLServer",
            f"{small.p99_ms:.1f} vs {small_ml.p99_ms:.1f} ms",
            small.p99_ms < small_ml.p99_ms,
        )
    if lone:
        check("small MLP, 1 client: p50 below 1.5 ms", f"{lone.p50_ms:.2f} ms", lone.p50_ms < 1.5)
    return "\n".join(lines)


def write_doc(
    rows: list[Row],
    shares: dict[str, float],
    args: argparse.Namespace,
    load: tuple[float, float],
    stolen: float,
) -> None:
    today = datetime.date.today().isoformat()
    echo = find(rows, "wide", ECHO, str(MAX_BATCH))
    transport = (
        f"{echo.throughput:,.0f} requests a second at 64 clients ({1e6 / echo.throughput:.0f} us each)"
        if echo and echo.throughput > 0
        else "(not measured)"
    )
    bound, limit = closed_loop_bound(rows, "wide"), find(rows, "wide", "in-process", "-")
    bound_share = f"{bound / limit.throughput:.0%}" if bound and limit and limit.throughput else "n/a"
    cpu = platform.processor() or platform.machine()
    text = f"""# Model server benchmark

Produced by `make bench-server` (`benchmarks/bench_server.py`); rewritten on every run.

- date: {today}
- machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, torch threads 1 everywhere
- load: closed loop, single-sample FP32 requests over gRPC from a separate process, `benchmarks/server/loadgen_go` (Go, grpc-go, one connection; each answer's output size checked), {args.duration:g} s measured after {args.warmup:g} s warm-up per cell; all servers up at once, cells interleaved, {args.repeat} rounds, medians shown
- kubemaas: `kubemaas serve --torch-threads 1`, max_batch_size 64, max_queue_delay_ms {KUBEMAAS_MAX_QUEUE_DELAY_MS:g}
- MLServer {MLSERVER_VERSION}: adaptive batching max_batch_size 64, max_batch_time 5 ms, parallel_workers 0, custom TorchScript runtime (`benchmarks/server/mlserver_torchscript.py`)
- transport ceiling: `benchmarks/server/echo_server.py`, a grpc.aio server answering a canned response, same load; the closed-loop bound is 64 / (in-process batch-64 p50 + 64 / echo throughput), the most 64 closed-loop clients can get with full batches
- in-process limit: the same TorchScript file called at batch 64 in one thread (latency columns: one batch), measured before each round; "share of the limit" is the median of each round's kubemaas / limit ratio

{table(rows)}

{ratios(rows, shares)}

Targets of issue 3, checked against this run:

{targets(rows, shares)}

Reading the numbers: this machine has {os.cpu_count()} virtual cores on a shared host, which took
{stolen:.0%} of their CPU time during the run (steal time in /proc/stat); the 1-minute load average
was {load[0]:.1f} at the start and {load[1]:.1f} at the end. Every wake-up of a thread waits for a
core, which inflates latencies and the gap between a batch's answers and the next batch's
requests; the cells interleave so that all systems see the same conditions, but absolute numbers
move by tens of percent between runs. With 64 closed-loop clients and max_batch_size 64, no
server can overlap a full batch's compute with the next batch's arrival: each cycle is at least
a forward pass plus 64 requests through Python gRPC. The echo rows measure that rate: a grpc.aio
server that does nothing turns over {transport} here, and the load generator is compiled, so that
is the server side's own cost per request. The closed-loop bound column compares kubemaas with
that best case; the share of the in-process limit cannot exceed the bound's own share
({bound_share}, wide MLP), whatever a Python gRPC server does.
"""
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text + kept_sections())
    log(f"wrote {DOC}")


def kept_sections() -> str:
    """The `## ` sections other benchmarks (bench_overload.py) wrote into the page: this
    benchmark owns the text above the first of them and leaves them as they are."""
    current = DOC.read_text() if DOC.exists() else ""
    start = current.find("\n## ")
    return "" if start == -1 else "\n" + current[start + 1 :].rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds over every cell; the table shows medians"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each cell")
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer (no venv needed)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument(
        "--build-loadgen", action="store_true", help="build the load generator, print its path, exit"
    )
    args = parser.parse_args()
    args.loadgen = loadgen_binary()
    if args.build_loadgen:
        print(args.loadgen)
        return 0

    work = Path(tempfile.mkdtemp(prefix="kubemaas-bench-"))
    servers: list[Server] = []
    try:
        files = build_repository(work / "repository")
        args.requests = {model: request_file(work, model) for model in MODELS}
        port = free_port()
        kubemaas = serve_command(work / "repository", port)
        env = dict(os.environ, KUBEMAAS_LOG_LEVEL="WARNING")
        servers.append(Server("kubemaas", kubemaas, f"127.0.0.1:{port}", env, work / "kubemaas.log"))
        if not args.no_mlserver:
            venv = mlserver_venv()
            ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
            repo = mlserver_repository(work, files, ports)
            ml_env = {
                key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
            }
            ml_env["PYTHONPATH"] = str(ROOT / "benchmarks" / "server")
            ml_env["OMP_NUM_THREADS"] = "1"
            command = [str(venv / "bin" / "mlserver"), "start", str(repo)]
            servers.append(
                Server(
                    f"MLServer {MLSERVER_VERSION}",
                    command,
                    f"127.0.0.1:{ports['grpc']}",
                    ml_env,
                    work / "mlserver.log",
                )
            )
        echo_port = free_port()
        echo = Server(
            ECHO,
            [
                sys.executable,
                str(ROOT / "benchmarks" / "server" / "echo_server.py"),
                "--port",
                str(echo_port),
            ],
            f"127.0.0.1:{echo_port}",
            env,
            work / "echo.log",
        )
        servers.append(echo)
        # Every server stays up (idle ones cost nothing) and the cells interleave, so a change in
        # the machine's background load hits every system alike instead of one of them.
        for server in servers:
            server.start()
        load_before = os.getloadavg()[0]
        cpu_before = cpu_times()
        samples: list[Row] = []
        for repeat in range(args.repeat):
            log(f"round {repeat + 1} of {args.repeat}")
            for model in MODELS:
                limit = in_process_limit(files[model], min(args.duration, 5.0))
                log(f"in-process {model}: {limit.throughput:.0f} samples/s")
                limit.round = repeat
                samples.append(limit)
                for clients in CONCURRENCY:
                    for server in servers:
                        cell = measure(server, model, clients, args)
                        cell.round = repeat
                        samples.append(cell)
        rows = median_rows(samples)
        shares = limit_shares(samples)
        order = {name: i for i, name in enumerate(MODELS)}
        rank = {"kubemaas": 0, ECHO: 2}
        rows.sort(key=lambda r: (order[r.model], r.clients != "-", r.clients, rank.get(r.system, 1)))
        print(table(rows))
        print()
        print(ratios(rows, shares))
        print()
        print(targets(rows, shares))
        steal, total = (after - before for after, before in zip(cpu_times(), cpu_before, strict=True))
        stolen = steal / total if total else 0.0
        log(f"CPU time stolen by the host during the run: {stolen:.1%}")
        if not args.no_write:
            write_doc(rows, shares, args, (load_before, os.getloadavg()[0]), stolen)
    except Exception:
        log(f"failed; server logs are kept in {work}")
        raise
    finally:
        for server in servers:
            server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
