"""`kubemaas serve`: serve a model repository over the Open Inference Protocol (gRPC).

kubemaas serve --model-repository DIR [--grpc-port 8001] [--metrics-port 8002] [--host 127.0.0.1]
               [--max-message-bytes N] [--device auto|cpu|cuda] [--torch-threads N]
               [--grace-seconds S] [--no-warm-up] [--max-batch-size N] [--max-queue-delay-ms MS]
               [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

Without the --tls-* flags the gRPC port is plaintext. The TLS files are checked before any
model loads, so a bad one fails the command at once, naming the file. The metrics port, which
also answers the V2 HTTP health paths for kubelet's probes, is plain HTTP either way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kubemaas.logs import setup_logging
from kubemaas_server.model_config import BatchingOverride, Device
from kubemaas_server.tls import TlsConfigError, TlsFiles, load_server_tls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubemaas serve", description="Serve a model repository over the Open Inference Protocol (gRPC)."
    )
    parser.add_argument("--model-repository", type=Path, required=True, help="folder of <model>/model.yaml")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="plain HTTP port: Prometheus /metrics and the V2 health paths /v2/health/{live,ready} (-1: off)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest request or response; larger ones get RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--device", choices=[d.value for d in Device], default=None, help="override every model's device"
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--grace-seconds", type=float, default=10.0, help="on SIGTERM, how long in-flight requests may take"
    )
    parser.add_argument("--no-warm-up", action="store_true", help="skip the warm-up forward pass at load")
    parser.add_argument(
        "--max-batch-size",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="cap the rows merged into one forward pass for every batched model (0: no merging); "
        "requests stay valid up to the model's own max_batch_size",
    )
    parser.add_argument(
        "--max-queue-delay-ms",
        type=_non_negative_float,
        default=None,
        metavar="MS",
        help="every model's dynamic_batching.max_queue_delay_ms",
    )
    tls = parser.add_argument_group(
        "TLS", "the gRPC port only; the metrics port stays plain HTTP for Prometheus and kubelet probes"
    )
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate (chain), PEM")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key, PEM, unencrypted")
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: refuse clients without a certificate signed by this CA",
    )
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TlsFiles | None:
    """The TLS flags as one value; None for plaintext. Half a configuration is a usage error."""
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both for TLS, or neither for plaintext")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
    if args.tls_cert is None:
        return None
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    files = tls_files(parser, args)
    if not args.model_repository.is_dir():
        print(f"kubemaas serve: model repository {args.model_repository} is not a directory", file=sys.stderr)
        return 2
    try:
        tls = load_server_tls(files) if files is not None else None
    except TlsConfigError as error:
        print(f"kubemaas serve: {error}", file=sys.stderr)
        return 2
    setup_logging("INFO")
    from kubemaas_server.model_server import ServerOptions, serve

    options = ServerOptions(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_message_bytes=args.max_message_bytes,
        device=Device(args.device) if args.device else None,
        torch_threads=args.torch_threads,
        grace_seconds=args.grace_seconds,
        warm_up=not args.no_warm_up,
        batching=BatchingOverride(args.max_batch_size, args.max_queue_delay_ms),
        tls=tls,
    )
    try:
        asyncio.run(serve(options))
    except OSError as error:  # a port already taken, most often
        print(f"kubemaas serve: {error}", file=sys.stderr)
        return 1
    return 0
