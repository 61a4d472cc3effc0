"""`kubemaas operator`: run the kopf operator against $KUBECONFIG (or the pod's account).

Unless `--standalone`, the process first waits to hold the leader Lease (leader.py), so any
number of replicas may run and exactly one reconciles; losing the Lease ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import threading

from kubemaas.logs import kv, setup_logging
from kubemaas_operator.leader import DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE, LeaseElector
from kubemaas_operator.settings import OperatorSettings, settings_from_env, truthy

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubemaas operator", description=__doc__)
    p.add_argument(
        "--namespace", action="append", default=[], help="watch this namespace (repeatable); default all"
    )
    p.add_argument(
        "--default-image", help="server image when a ModelService names none (env KUBEMAAS_DEFAULT_IMAGE)"
    )
    p.add_argument(
        "--default-trainer-image",
        help="trainer image when a TrainingJob names none (env KUBEMAAS_DEFAULT_TRAINER_IMAGE)",
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
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no leader election: the only operator instance (tests, dev); env KUBEMAAS_STANDALONE=1",
    )
    p.add_argument(
        "--lease-name",
        help=f"Lease the replicas elect a leader with (env KUBEMAAS_LEASE_NAME, default {DEFAULT_LEASE_NAME})",
    )
    p.add_argument(
        "--lease-namespace",
        help="namespace of that Lease (env KUBEMAAS_LEASE_NAMESPACE, else POD_NAMESPACE, "
        f"else {DEFAULT_LEASE_NAMESPACE})",
    )
    p.add_argument(
        "--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://127.0.0.1:8080/healthz"
    )
    p.add_argument("--verbose", action="store_true", help="kopf's own INFO logs too")
    return p


def resolve_settings(args: argparse.Namespace, env: dict[str, str]) -> OperatorSettings:
    base = settings_from_env(env)
    # replace(): settings that have no flag (the autoscaler's period and windows) keep the env's.
    return dataclasses.replace(
        base,
        default_image=args.default_image or base.default_image,
        default_trainer_image=args.default_trainer_image or base.default_trainer_image,
        gpu_resource=args.gpu_resource or base.gpu_resource,
        namespaces=tuple(args.namespace) or base.namespaces,
        allow_file_uris=args.dev_allow_file_uris or base.allow_file_uris,
        gpu_surge_grace_seconds=(
            args.gpu_surge_grace_seconds
            if args.gpu_surge_grace_seconds is not None
            else base.gpu_surge_grace_seconds
        ),
    )


def lease_location(args: argparse.Namespace, env: dict[str, str]) -> tuple[str, str]:
    """(namespace, name) of the leader Lease: flags, then the environment, then defaults."""
    namespace = (
        args.lease_namespace
        or env.get("KUBEMAAS_LEASE_NAMESPACE")
        or env.get("POD_NAMESPACE")
        or DEFAULT_LEASE_NAMESPACE
    )
    return namespace, args.lease_name or env.get("KUBEMAAS_LEASE_NAME") or DEFAULT_LEASE_NAME


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    env = dict(os.environ)
    settings = resolve_settings(args, env)
    setup_logging("INFO")
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    from kubemaas_operator import handlers
    from kubemaas_operator.clients import KubeClient, load_api_client

    elector: LeaseElector | None = None
    if not (args.standalone or truthy(env.get("KUBEMAAS_STANDALONE"))):
        namespace, name = lease_location(args, env)
        elector = LeaseElector(KubeClient(load_api_client()), namespace=namespace, name=name)
        elector.acquire()

    handlers.RUNTIME.settings = settings
    try:
        asyncio.run(_operate(settings, args.liveness, elector))
    finally:
        if elector is not None:
            elector.release()
    return 1 if elector is not None and elector.lost else 0


async def _operate(settings: OperatorSettings, liveness: str | None, elector: LeaseElector | None) -> None:
    """kopf, stopped by a signal or by losing the Lease.

    The stop flag is an asyncio.Event set from the renewing thread: kopf waits for a
    threading.Event or a concurrent Future in an executor thread, which nothing releases after
    a SIGTERM, and the process would then never exit.
    """
    import kopf

    stop = asyncio.Event()
    renewing = threading.Event()
    if elector is not None:
        lost = functools.partial(_stop_leading, asyncio.get_running_loop(), stop, elector)
        threading.Thread(target=elector.keep, args=(lost, renewing), name="lease", daemon=True).start()
    try:
        await kopf.operator(
            standalone=True,
            namespaces=list(settings.namespaces),
            clusterwide=not settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop,
        )
    finally:
        renewing.set()


def _stop_leading(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, elector: LeaseElector) -> None:
    """Stop kopf now; if it has not stopped before a standby may take over, end the process."""
    loop.call_soon_threadsafe(stop.set)
    grace = elector.timing.duration_seconds - elector.timing.renew_deadline_seconds - 1

    def hard_exit() -> None:
        log.error("still running after losing the lease; exiting", extra=kv(grace_seconds=grace))
        os._exit(1)

    timer = threading.Timer(max(grace, 0.5), hard_exit)
    timer.daemon = True
    timer.start()
