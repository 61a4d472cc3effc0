"""`kubemaas operator`: run the kopf operator against $KUBECONFIG (or the pod's account)."""

from __future__ import annotations

import argparse
import logging
import os

from kubemaas.logs import setup_logging
from kubemaas_operator.settings import OperatorSettings, settings_from_env


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubemaas operator", description=__doc__)
    p.add_argument(
        "--namespace", action="append", default=[], help="watch this namespace (repeatable); default all"
    )
    p.add_argument(
        "--default-image", help="server image when a ModelService names none (env KUBEMAAS_DEFAULT_IMAGE)"
    )
    p.add_argument("--gpu-resource", help="GPU extended resource name (env KUBEMAAS_GPU_RESOURCE)")
    p.add_argument(
        "--dev-allow-file-uris", action="store_true", help="allow file:// model URIs (dev clusters only)"
    )
    p.add_argument(
        "--gpu-surge-grace-seconds",
        type=float,
        help="how long a surge pod may wait for GPUs before a rollout replaces pods one at a time (default 15)",
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering: the only operator instance")
    peering.add_argument("--peering", metavar="NAME", help="kopf peering object for more than one replica")
    p.add_argument(
        "--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://127.0.0.1:8080/healthz"
    )
    p.add_argument("--verbose", action="store_true", help="kopf's own INFO logs too")
    return p


def resolve_settings(args: argparse.Namespace, env: dict[str, str]) -> OperatorSettings:
    base = settings_from_env(env)
    return OperatorSettings(
        default_image=args.default_image or base.default_image,
        gpu_resource=args.gpu_resource or base.gpu_resource,
        namespaces=tuple(args.namespace) or base.namespaces,
        allow_file_uris=args.dev_allow_file_uris or base.allow_file_uris,
        field_manager=base.field_manager,
        gpu_surge_grace_seconds=(
            args.gpu_surge_grace_seconds
            if args.gpu_surge_grace_seconds is not None
            else base.gpu_surge_grace_seconds
        ),
    )


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = resolve_settings(args, dict(os.environ))
    setup_logging("INFO")
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    import kopf

    from kubemaas_operator import handlers

    handlers.RUNTIME.settings = settings
    kopf.run(
        standalone=args.standalone,
        peering_name=args.peering,
        namespaces=list(settings.namespaces),
        clusterwide=not settings.namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0
