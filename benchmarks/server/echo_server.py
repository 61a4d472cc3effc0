"""The transport's ceiling: a grpc.aio server that answers every ModelInfer with a canned
10-float response, without looking at the request or running anything.

`benchmarks/bench_server.py` drives it with the same load as the real servers. Its throughput at
64 clients is what Python gRPC alone (this server plus the load generator, on this machine) can
turn over; no Python server can beat it, and with 64 closed-loop clients the gap between two
full batches can be no shorter than 64 requests at that rate.

    python benchmarks/server/echo_server.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from kubemaas_server.proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


async def serve(port: int) -> None:
    answer = pb.ModelInferResponse(model_name="echo", model_version="1")
    answer.outputs.add(name="output", datatype="FP32", shape=[1, 10])
    answer.raw_output_contents.append(bytes(40))
    canned = answer.SerializeToString()
    ready = pb.ServerReadyResponse(ready=True).SerializeToString()

    async def infer(request: bytes, context: Any) -> bytes:
        return canned

    async def server_ready(request: bytes, context: Any) -> bytes:
        return ready

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ServerReady": grpc.unary_unary_rpc_method_handler(server_ready),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
