"""The kopf-facing edge: watch events in, one call each into the Reconciler.

Handlers are coroutines on purpose: kopf runs plain functions in a thread pool, and the
Reconciler's tasks and wake-up events belong to the event loop.

Only event handlers are registered (no create/update/delete handlers), so kopf never writes
its own annotations, status fields or finalizers into ModelServices; the Reconciler decides
everything from the latest state (see reconciler.py).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from kubemaas_operator.builders import APP_NAME, MANAGED_BY
from kubemaas_operator.clients import KubeClient, load_api_client
from kubemaas_operator.crd import GROUP, VERSION
from kubemaas_operator.reconciler import Reconciler, trimmed
from kubemaas_operator.settings import OperatorSettings, settings_from_env
from kubemaas_operator.training_reconciler import TrainingReconciler, trimmed_job, wake_model_services

CHILD_LABELS = {MANAGED_BY: "kubemaas", APP_NAME: "model-server"}
TRAINER_LABELS = {MANAGED_BY: "kubemaas", APP_NAME: "trainer"}


@dataclass
class Runtime:
    """What the CLI configures before kopf starts and the startup handler completes."""

    settings: OperatorSettings | None = None
    reconciler: Reconciler | None = None
    training: TrainingReconciler | None = None


RUNTIME = Runtime()


def reconciler() -> Reconciler:
    assert RUNTIME.reconciler is not None, "the startup handler has not run"
    return RUNTIME.reconciler


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = RUNTIME.settings or settings_from_env()
    # kopf reports handler outcomes as Kubernetes Events; ours are one line per decision in the log.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    client = KubeClient(load_api_client(), field_manager=ours.field_manager)
    RUNTIME.reconciler = Reconciler(client, ours)
    RUNTIME.training = TrainingReconciler(
        client, ours, on_phase_change=lambda ns, name, _: wake_model_services(RUNTIME.reconciler, ns, name)
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if RUNTIME.reconciler is not None:
        await RUNTIME.reconciler.stop()
    if RUNTIME.training is not None:
        await RUNTIME.training.stop()


@kopf.on.event(GROUP, VERSION, "modelservices")
async def model_service_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_model_service(type, _plain(body))


# Index functions that store nothing in kopf's index but fill the Reconciler's child cache.
# They exist for kopf's rule that no handler runs until every indexed resource has been listed
# and each listed object indexed: so the first reconcile after a start (or a leader takeover)
# already sees every existing child, and a Ready ModelService is never written Pending for a
# moment because its Deployment and pods had not been listed yet. DELETED events skip index
# functions, so the event handlers below keep updating the cache too (idempotent).


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("Deployment", None, trimmed(body))


@kopf.index("v1", "services", labels=CHILD_LABELS)
async def service_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("Service", None, trimmed(body))


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def pdb_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("PodDisruptionBudget", None, trimmed(body))


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
async def network_policy_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("NetworkPolicy", None, trimmed(body))


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def hpa_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("HorizontalPodAutoscaler", None, trimmed(body))


@kopf.index("v1", "pods", labels=CHILD_LABELS)
async def pod_listed(body: kopf.Body, **_: Any) -> None:
    reconciler().cache.update("Pod", None, trimmed(body))


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("Deployment", type, trimmed(body))


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
async def service_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("Service", type, trimmed(body))


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def pdb_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("PodDisruptionBudget", type, trimmed(body))


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
async def network_policy_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("NetworkPolicy", type, trimmed(body))


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
async def hpa_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("HorizontalPodAutoscaler", type, trimmed(body))


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    reconciler().on_child("Pod", type, trimmed(body))


def training() -> TrainingReconciler:
    assert RUNTIME.training is not None, "the startup handler has not run"
    return RUNTIME.training


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def training_job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    training().on_training_job(type, _plain(body))


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER_LABELS)
async def training_attempt_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    training().on_child("Job", type, trimmed_job(body))


@kopf.on.event("v1", "pods", labels=TRAINER_LABELS)
async def training_pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    training().on_child("Pod", type, trimmed(body))


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A detached copy: kopf's Body is a live view that changes under a running reconcile."""
    return copy.deepcopy(dict(body))
