"""Closed-loop load generator for V2 gRPC servers; runs in a process of its own.

    python benchmarks/server/loadgen.py --target 127.0.0.1:8001 --model small --features 256 \
        --concurrency 64 --duration 10 --warmup 2

Each of `concurrency` clients sends one single-sample ModelInfer request (raw FP32 [1, features]),
waits for the answer, and sends the next. All clients share one grpc.aio channel and one event
loop. The request is serialized once; each response is parsed and its output size checked, so
a server that answers garbage fails the run. Prints one JSON line: throughput and latency
percentiles of the measured window (the warm-up is discarded).
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


def build_request(model: str, features: int, input_name: str) -> bytes:
    data = np.random.default_rng(0).standard_normal((1, features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, features])
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def run(args: argparse.Namespace) -> dict[str, float]:
    payload = build_request(args.model, args.features, args.input_name)
    async with grpc.aio.insecure_channel(args.target) as channel:
        infer = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        expected = args.outputs * 4
        latencies: list[float] = []
        errors = 0
        start_measure = time.perf_counter() + args.warmup
        stop_at = start_measure + args.duration

        async def client() -> None:
            nonlocal errors
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                try:
                    raw = await infer(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                done = time.perf_counter()
                response = pb.ModelInferResponse.FromString(raw)
                # Either encoding is a valid answer: raw bytes or typed FP32 contents.
                if response.raw_output_contents:
                    size = len(response.raw_output_contents[0])
                else:
                    size = 4 * len(response.outputs[0].contents.fp32_contents)
                if size != expected:
                    raise RuntimeError(f"unexpected response: {response}")
                if sent >= start_measure and done <= stop_at:
                    latencies.append(done - sent)

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
    values = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput": len(latencies) / args.duration,
        "p50_ms": float(np.percentile(values, 50)) if len(values) else float("nan"),
        "p99_ms": float(np.percentile(values, 99)) if len(values) else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--outputs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
