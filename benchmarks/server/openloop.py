"""Open-loop load generator for V2 gRPC servers; runs in a process of its own.

    python benchmarks/server/openloop.py --target 127.0.0.1:8001 --model fixed --features 16 \
        --outputs 16 --rate 400 --duration 8 --warmup 1

Unlike `loadgen.py` (closed loop: each client waits for its answer), requests leave at the
offered rate whatever the server does, as independent users would send them: Poisson arrivals
(exponential gaps, fixed seed) of single-sample ModelInfer requests over one grpc.aio channel.
That is the load under which a server can be past saturation at all; a closed loop slows down
with the server and never offers more than it can take.

Every request sent in the measured window is followed to its end. Answers are checked for size;
UNAVAILABLE answers that carry a `retry-after-ms` hint count as shed; anything else is an error.
Prints one JSON line: the rate actually sent (the generator may fall behind on a busy machine),
admitted and shed counts, latency percentiles of the admitted requests and the median hint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
import numpy as np

from kubemaas_server.proto import grpc_service_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
RETRY_AFTER_KEY = "retry-after-ms"


def build_request(model: str, features: int, input_name: str) -> bytes:
    data = np.random.default_rng(0).standard_normal((1, features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, features])
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, float]:
    payload = build_request(args.model, args.features, args.input_name)
    expected = args.outputs * 4
    rng = np.random.default_rng(args.seed)
    latencies: list[float] = []
    hints: list[float] = []
    counts = {"sent": 0, "admitted": 0, "shed": 0, "errors": 0}
    async with grpc.aio.insecure_channel(args.target) as channel:
        infer = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def one(measured: bool) -> None:
            sent = time.perf_counter()
            try:
                raw = await infer(payload, timeout=args.deadline)
            except grpc.aio.AioRpcError as error:
                trailing = dict(error.trailing_metadata() or ())
                hint = trailing.get(RETRY_AFTER_KEY)
                if error.code() == grpc.StatusCode.UNAVAILABLE and hint is not None:
                    if measured:
                        counts["shed"] += 1
                        hints.append(float(hint))
                elif measured:
                    counts["errors"] += 1
                return
            done = time.perf_counter()
            response = pb.ModelInferResponse.FromString(raw)
            if len(response.raw_output_contents[0]) != expected:
                raise RuntimeError(f"unexpected response: {response}")
            if measured:
                counts["admitted"] += 1
                latencies.append(done - sent)

        tasks: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        measure_from = started + args.warmup
        stop_at = measure_from + args.duration
        due = started
        while True:
            due += float(rng.exponential(1.0 / args.rate))
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = due >= measure_from
            if measured:
                counts["sent"] += 1
            task = asyncio.create_task(one(measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sending_took = time.perf_counter() - measure_from
        if tasks:
            await asyncio.gather(*tasks)
    values = [latency * 1000.0 for latency in latencies]
    return {
        **counts,
        "offered_rps": counts["sent"] / max(sending_took, args.duration),
        "admitted_rps": counts["admitted"] / args.duration,
        "shed_fraction": counts["shed"] / counts["sent"] if counts["sent"] else 0.0,
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "hint_p50_ms": percentile(hints, 50),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--outputs", type=int, default=16)
    parser.add_argument("--rate", type=float, required=True, help="offered requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds sent at the rate first, not counted"
    )
    parser.add_argument("--deadline", type=float, default=30.0, help="client deadline per request (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
