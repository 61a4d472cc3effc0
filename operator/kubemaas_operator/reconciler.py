"""One level-triggered reconcile loop per ModelService.

kopf delivers watch events (handlers.py); this module keeps the latest body of every
ModelService and a cache of their children, and runs one asyncio task per ModelService that
wakes on any change to it or its children (and every RESYNC_SECONDS as a backstop):
parse -> build children (pure) -> apply what drifted -> compute status (pure) -> write status
only when it changed. No kopf change-handlers means no kopf annotations or finalizers on the
user's object: a GitOps tool applying the same ModelService sees nothing of ours in it, and
deleting it never waits for the operator.

The concurrency autoscaler (autoscaler_loop.py) hands its decisions in here (`on_scaled`):
this loop is the only writer of a ModelService's status, so a scale decision and a status
write never overwrite each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemaas.logs import kv
from kubemaas_operator.autoscaler_loop import AutoscalerView, ConcurrencyAutoscaler, ScaleRecord, Target
from kubemaas_operator.autoscaling import split_replicas
from kubemaas_operator.builders import (
    MODEL_SERVICE_LABEL,
    Manifest,
    ResolvedModel,
    build_canary_deployment,
    build_children,
    build_hpa,
    build_pdb,
    endpoint,
    pod_template,
    replicas_handover,
    revision_of,
)
from kubemaas_operator.clients import KubeApiError, KubeClient
from kubemaas_operator.crd import API_VERSION
from kubemaas_operator.rollback import choose_revision
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import (
    AutoscalingMetric,
    ModelServiceSpec,
    SpecError,
    UriScheme,
    parse_model_service,
)
from kubemaas_operator.status import (
    ComputedStatus,
    Condition,
    ConditionType,
    ObservedState,
    Phase,
    compute_status,
    same_status,
    status_patch,
    surge_blocked_by_gpus,
    with_replacement_rollout,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, ModelService name)
Body = Mapping[str, Any]

RESYNC_SECONDS = 120.0
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# The field manager that holds a Deployment's replica count while it passes to an HPA.
HPA_HANDOVER_MANAGER = "kubemaas-handover-to-hpa"
# Status fields of the last scale decision, kept as they are by every status write.
SCALE_FIELDS = ("lastScaleTime", "scaleReason", "autoscaler")


@dataclass
class ChildCache:
    """The children kopf has shown us, by owner; trimmed to what reconciling needs."""

    deployments: dict[Key, dict[str, Body]] = field(default_factory=dict)
    services: dict[Key, dict[str, Body]] = field(default_factory=dict)
    pdbs: dict[Key, dict[str, Body]] = field(default_factory=dict)
    network_policies: dict[Key, dict[str, Body]] = field(default_factory=dict)
    hpas: dict[Key, dict[str, Body]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Body]] = field(default_factory=dict)

    def table(self, kind: str) -> dict[Key, dict[str, Body]]:
        return {
            "Deployment": self.deployments,
            "Service": self.services,
            "PodDisruptionBudget": self.pdbs,
            "NetworkPolicy": self.network_policies,
            "HorizontalPodAutoscaler": self.hpas,
            "Pod": self.pods,
        }[kind]

    def update(self, kind: str, event_type: str | None, body: Body) -> Key | None:
        meta = body.get("metadata", {})
        owner = (meta.get("labels") or {}).get(MODEL_SERVICE_LABEL)
        if not owner:
            return None
        key = (meta["namespace"], owner)
        bucket = self.table(kind).setdefault(key, {})
        if event_type == "DELETED":
            bucket.pop(meta["name"], None)
        else:
            bucket[meta["name"]] = body
        return key


def version_marker(obj: Body) -> str:
    """What changes when someone edits the object's spec: generation, or resourceVersion without one."""
    meta = obj.get("metadata", {})
    return str(meta.get("generation") or meta.get("resourceVersion") or "")


@dataclass
class Applied:
    generation: int
    markers: dict[tuple[str, str], str]  # (kind, name) -> version marker after our apply
    mode: tuple[bool, str] = (False, "")  # (replacing instead of surging, revision served)
    replicas: int | None = None  # the desired count the children were built for


class Reconciler:
    def __init__(self, client: KubeClient, settings: OperatorSettings) -> None:
        self.client = client
        self.settings = settings
        self.cache = ChildCache()
        self.bodies: dict[Key, Body] = {}
        self.applied: dict[Key, Applied] = {}
        self._wakes: dict[Key, asyncio.Event] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        # The concurrency autoscaler's latest decision per ModelService; it wins over the
        # (possibly older) status in `bodies` until the ModelService is deleted or leaves
        # concurrency mode. After a restart status.desiredReplicas carries it.
        self.scaled: dict[Key, ScaleRecord] = {}
        # Its view since that decision, when it changed without a scale (a pod's scrape failing).
        self.views: dict[Key, AutoscalerView] = {}
        # Deployments whose replica count this process has handed to an HPA (metric cpu).
        self._handed_over: set[tuple[str, str]] = set()
        self.autoscaler = ConcurrencyAutoscaler(
            settings,
            target=self.autoscale_target,
            scaled=self.on_scaled,
            post_event=self._post_scale_event,
            observed=self.on_observed,
        )

    # --- events in -------------------------------------------------------------------------

    def on_model_service(self, event_type: str | None, body: Body) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.bodies.pop(key, None)
            self.applied.pop(key, None)
            task = self._tasks.pop(key, None)
            if task:
                task.cancel()
            self._wakes.pop(key, None)
            self.scaled.pop(key, None)
            self.views.pop(key, None)
            self.autoscaler.forget(key)
            self._handed_over.discard(key)
            return
        self.bodies[key] = body
        self.wake(key)
        if key not in self._tasks or self._tasks[key].done():
            self._tasks[key] = asyncio.create_task(self._loop(key), name=f"reconcile/{key[0]}/{key[1]}")

    def on_child(self, kind: str, event_type: str | None, body: Body) -> None:
        key = self.cache.update(kind, event_type, body)
        if key is not None and key in self.bodies:
            self.wake(key)

    def wake(self, key: Key) -> None:
        self._wakes.setdefault(key, asyncio.Event()).set()

    def on_scaled(self, key: Key, record: ScaleRecord) -> None:
        """The autoscaler changed the count: apply it and write it to status."""
        if key in self.bodies:
            self.scaled[key] = record
            self.views.pop(key, None)  # the record carries the view of its own round
            self.wake(key)

    def on_observed(self, key: Key, view: AutoscalerView) -> None:
        """The autoscaler's view changed without a scale: write it to status."""
        if key in self.bodies:
            self.views[key] = view
            self.wake(key)

    def autoscale_target(self, key: Key) -> Target | None:
        """The autoscaler's inputs for one round: spec, the count asked for now, the pods."""
        body = self.bodies.get(key)
        if body is None:
            return None
        try:
            spec = parse_model_service(body, self.settings)
        except (SpecError, KeyError, ValueError):
            return None
        return Target(
            spec=spec,
            current_replicas=desired_replicas(spec, self._status(key, body)),
            pods=list(self.cache.pods.get(key, {}).values()),
        )

    def _status(self, key: Key, body: Body) -> dict[str, Any]:
        """The ModelService's status with the autoscaler's latest decision on top."""
        status = dict(body.get("status") or {})
        record = self.scaled.get(key)
        if record is not None:
            status.update(record.status_fields())
        view = self.views.get(key)
        if view is not None:
            status.update(view.status_fields())
        return status

    async def _post_scale_event(self, spec: ModelServiceSpec, reason: str, message: str) -> None:
        involved = {
            "apiVersion": API_VERSION,
            "kind": "ModelService",
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": spec.uid,
        }
        await asyncio.to_thread(self.client.post_event, involved, reason=reason, message=message)

    async def stop(self) -> None:
        await self.autoscaler.stop()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # --- the loop --------------------------------------------------------------------------

    async def _loop(self, key: Key) -> None:
        failures = 0
        force = True
        wake = self._wakes.setdefault(key, asyncio.Event())
        while key in self.bodies:
            wake.clear()
            try:
                await self.reconcile(key, force=force)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                retryable = isinstance(err, KubeApiError) and err.retryable
                log.log(
                    logging.INFO if retryable else logging.WARNING,
                    "reconcile failed; retrying",
                    extra=kv(namespace=key[0], name=key[1], error=str(err)[:300], retry_in=delay),
                )
                await asyncio.sleep(delay)
                wake.set()
                continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=RESYNC_SECONDS)
                force = False
            except TimeoutError:
                force = True

    async def reconcile(self, key: Key, *, force: bool = False) -> None:
        body = self.bodies.get(key)
        if body is None:
            return
        try:
            spec = parse_model_service(body, self.settings)
        except (SpecError, KeyError, ValueError) as err:
            await self._write_status(body, _invalid_spec(str(err)), desired=0, revision="")
            return
        resolved, waiting = await self._model_source(spec)
        self.autoscaler.track(key, spec)
        if spec.autoscaling_metric is AutoscalingMetric.CPU:
            self.scaled.pop(key, None)  # the HPA decides now; status follows the Deployment
            self.views.pop(key, None)
            desired = hpa_replicas(spec, self.cache.deployments.get(key, {}).get(spec.name))
        else:
            desired = desired_replicas(spec, self._status(key, body))
        scaling = spec  # autoscaling and bounds are not part of a revision: always the user's
        revision = ""
        previous = body.get("status") or {}
        rollout = dict(previous.get("rollout") or {})
        replace = False
        pods = list(self.cache.pods.get(key, {}).values())
        extra: dict[str, Any] = {name: self._status(key, body).get(name) for name in SCALE_FIELDS}
        rolled_back: dict[str, Any] | None = None
        now = dt.datetime.now(dt.UTC)
        if waiting is None:
            wanted = revision_of(pod_template(spec, resolved))
            stable = previous.get("stable")
            progressing = previous.get("progressing") or {}
            since = _parse_time(progressing.get("since")) if progressing.get("revision") == wanted else None
            choice = choose_revision(
                current=wanted,
                stable=stable,
                rolled_back=previous.get("rolledBack"),
                pods=pods,
                progressing_since=since,
                deadline_seconds=spec.progress_deadline_seconds,
                now=now,
            )
            rolled_back = choice.rolled_back
            extra["rolledBack"] = rolled_back
            if choice.use_stable and stable:
                if previous.get("rolledBack") != rolled_back:
                    log.warning("rolled back", extra=kv(namespace=key[0], name=key[1], **(rolled_back or {})))
                spec = parse_model_service({**body, "spec": stable["spec"]}, self.settings)
                resolved, _ = await self._model_source(spec)
                extra["progressing"] = None
            elif stable and stable.get("revision") != wanted:
                extra["progressing"] = {"revision": wanted, "since": _stamp(since or now)}
                # A pod that never becomes ready sends no event at the deadline: look again then.
                asyncio.get_running_loop().call_later(spec.progress_deadline_seconds + 1, self.wake, key)
            else:
                extra["progressing"] = None
            canary_record = previous.get("canary") or {}
            canary: Manifest | None = None
            canary_replicas = 0
            if not choice.use_stable and stable and stable.get("revision") != wanted:
                if 1 <= spec.canary_percent <= 99:
                    # The new revision runs beside the stable one with its share of the replicas.
                    canary_replicas = split_replicas(desired, spec.canary_percent)[1]
                    canary = build_canary_deployment(spec, canary_replicas, resolved)
                    extra["canary"] = {
                        "revision": wanted,
                        "percent": spec.canary_percent,
                        "replicas": canary_replicas,
                    }
                    spec = parse_model_service({**body, "spec": stable["spec"]}, self.settings)
                    resolved, _ = await self._model_source(spec)
                elif spec.canary_percent == 0 and canary_record.get("revision") == wanted:
                    rolled_back = {
                        "revision": wanted,
                        "to": stable.get("revision"),
                        "reason": "CanaryRolledBack",
                        "message": f"canaryPercent set to 0: revision {wanted} rolled back to {stable.get('revision')}",
                    }
                    extra["rolledBack"] = rolled_back
                    spec = parse_model_service({**body, "spec": stable["spec"]}, self.settings)
                    resolved, _ = await self._model_source(spec)
            if canary is None:
                extra["canary"] = None
            revision = revision_of(pod_template(spec, resolved))
            replace = rollout.get("replaceRevision") == revision
            if not replace and spec.gpu is not None:
                blocked = surge_blocked_by_gpus(
                    pods,
                    revision=revision,
                    gpu_resource=spec.gpu.resource,
                    now=dt.datetime.now(dt.UTC),
                    grace_seconds=self.settings.gpu_surge_grace_seconds,
                )
                if blocked is not None:
                    replace = True
                    rollout = {
                        "replaceRevision": revision,
                        "reason": "ReplacingForLackOfGPUs",
                        "message": blocked.message,
                    }
                    log.info(
                        "surge pod cannot be placed for lack of GPUs; replacing pods one at a time",
                        extra=kv(namespace=key[0], name=key[1], revision=revision, scheduler=blocked.message),
                    )
            spec = with_scaling_of(spec, scaling)
            children = build_children(spec, desired - canary_replicas, resolved, replace=replace)
            if canary is not None:
                children.append(canary)
            if force or self._drifted(key, spec, children, (replace, revision), desired):
                try:
                    await self._apply(key, spec, children, (replace, revision), desired)
                except ChildRejected as err:
                    # Retrying cannot help: the spec must change. Say so where the user looks.
                    log.warning(
                        "child refused", extra=kv(namespace=key[0], name=key[1], error=str(err)[:300])
                    )
                    failed = _invalid_spec(str(err), reason="ChildRejected")
                    await self._write_status(body, failed, desired=desired, revision=revision)
                    return
        observed = ObservedState(
            generation=spec.generation,
            desired_replicas=desired,
            deployment=self.cache.deployments.get(key, {}).get(spec.name),
            pods=pods,
            endpoint=endpoint(spec),
            waiting_for=waiting,
        )
        computed = compute_status(observed)
        if not replace and spec.gpu is not None and computed.phase in (Phase.DEGRADED, Phase.PENDING):
            # An unschedulable surge pod sends no more events: look again once its grace is over.
            asyncio.get_running_loop().call_later(self.settings.gpu_surge_grace_seconds + 0.5, self.wake, key)
        if replace and spec.gpu is not None:
            computed = with_replacement_rollout(computed, spec.gpu.resource)
        if rolled_back is not None:
            computed = with_rollback(computed, rolled_back)
        elif computed.phase is Phase.READY and waiting is None and extra.get("canary") is None:
            # Only the user's own spec, fully rolled out, becomes the revision to fall back to.
            extra["stable"] = {"revision": revision, "spec": body.get("spec") or {}}
        if rollout:
            extra["rollout"] = rollout
        await self._write_status(
            body, computed, desired=desired, revision=revision, observed=observed, extra=extra
        )

    async def _model_source(self, spec: ModelServiceSpec) -> tuple[ResolvedModel | None, str | None]:
        """(resolved output, None) or (None, why we wait) for trainingjob:// models."""
        if spec.uri.scheme is not UriScheme.TRAINING_JOB:
            return None, None
        job = await asyncio.to_thread(
            self.client.get, API_VERSION, "TrainingJob", spec.namespace, spec.uri.target
        )
        if job is None:
            return None, f"TrainingJob {spec.uri.target} does not exist (yet)"
        status = job.get("status") or {}
        output = (status.get("output") or {}).get("uri")
        if status.get("phase") != "Succeeded" or not output:
            return (
                None,
                f"TrainingJob {spec.uri.target} has not succeeded yet (phase {status.get('phase', 'Pending')})",
            )
        run = f"{job['metadata'].get('uid', '')}/{status.get('completionTime', '')}"
        return ResolvedModel(output, run), None

    def _drifted(
        self,
        key: Key,
        spec: ModelServiceSpec,
        children: list[dict[str, Any]],
        mode: tuple[bool, str],
        replicas: int,
    ) -> bool:
        applied = self.applied.get(key)
        if (
            applied is None
            or applied.generation != spec.generation
            or applied.mode != mode
            or applied.replicas != replicas
        ):
            return True
        for child in children:
            cached = self.cache.table(child["kind"]).get(key, {}).get(child["metadata"]["name"])
            if cached is None:
                return True
            if version_marker(cached) != applied.markers.get((child["kind"], child["metadata"]["name"])):
                return True
        return False

    async def _apply(
        self,
        key: Key,
        spec: ModelServiceSpec,
        children: list[dict[str, Any]],
        mode: tuple[bool, str],
        replicas: int,
    ) -> None:
        markers: dict[tuple[str, str], str] = {}
        for child in children:
            if child["kind"] == "Deployment":
                if "replicas" not in child["spec"]:
                    await self._hand_replicas_over(key, child)
                else:
                    self._handed_over.discard((spec.namespace, child["metadata"]["name"]))
            try:
                result = await asyncio.to_thread(self.client.apply, child)
            except KubeApiError as err:
                if err.status in (400, 422):
                    raise ChildRejected(child["kind"], child["metadata"]["name"], err) from err
                raise
            markers[(child["kind"], child["metadata"]["name"])] = version_marker(result)
        if not any(c["kind"] == "PodDisruptionBudget" for c in children) and self.cache.pdbs.get(key):
            pdb = build_pdb(spec)
            await asyncio.to_thread(
                self.client.delete,
                "policy/v1",
                "PodDisruptionBudget",
                spec.namespace,
                pdb["metadata"]["name"],
            )
        if not any(c["kind"] == "HorizontalPodAutoscaler" for c in children) and self.cache.hpas.get(key):
            # Back to the concurrency autoscaler: the HPA must not fight it over the count.
            hpa = build_hpa(spec)
            await asyncio.to_thread(
                self.client.delete,
                hpa["apiVersion"],
                hpa["kind"],
                spec.namespace,
                hpa["metadata"]["name"],
            )
        wanted = {c["metadata"]["name"] for c in children if c["kind"] == "Deployment"}
        for name in list(self.cache.deployments.get(key, {})):
            if name not in wanted:  # a canary that was promoted or rolled back
                await asyncio.to_thread(self.client.delete, "apps/v1", "Deployment", spec.namespace, name)
        self.applied[key] = Applied(generation=spec.generation, markers=markers, mode=mode, replicas=replicas)
        log.info("applied children", extra=kv(namespace=key[0], name=key[1], children=len(children)))

    async def _hand_replicas_over(self, key: Key, deployment: Manifest) -> None:
        """Before our apply leaves `spec.replicas` out, another field manager holds its value
        (see builders.replicas_handover). Not forced: if the HPA changed the count since our
        cache saw it, the conflict means the HPA already owns it, which is the goal. Once per
        Deployment and process: later applies would only repeat it with a count that may lag
        the HPA's."""
        name = deployment["metadata"]["name"]
        if (key[0], name) in self._handed_over:
            return
        cached = self.cache.deployments.get(key, {}).get(name)
        current = ((cached or {}).get("spec") or {}).get("replicas")
        if isinstance(current, int):  # else a new Deployment: the HPA raises it to minReplicas
            try:
                await asyncio.to_thread(
                    self.client.apply,
                    replicas_handover(deployment, current),
                    field_manager=HPA_HANDOVER_MANAGER,
                    force=False,
                )
            except KubeApiError as err:
                if err.status != 409:
                    raise
        self._handed_over.add((key[0], name))

    async def _write_status(
        self,
        body: Body,
        computed: ComputedStatus,
        *,
        desired: int,
        revision: str,
        observed: ObservedState | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        meta = body["metadata"]
        previous = body.get("status") or {}
        observed = observed or ObservedState(
            generation=int(meta.get("generation", 0)),
            desired_replicas=desired,
            deployment=None,
            pods=[],
            endpoint="",
        )
        patch = status_patch(
            computed,
            observed=observed,
            previous=previous,
            now=dt.datetime.now(dt.UTC),
            revision=revision,
            extra=extra,
        )
        if same_status(patch, previous):
            return
        await asyncio.to_thread(
            self.client.patch_status, API_VERSION, "ModelService", meta["namespace"], meta["name"], patch
        )
        if patch.get("phase") != previous.get("phase"):
            log.info(
                "phase changed",
                extra=kv(
                    namespace=meta["namespace"],
                    name=meta["name"],
                    phase=patch["phase"],
                    was=previous.get("phase"),
                ),
            )


def desired_replicas(spec: ModelServiceSpec, status: Mapping[str, Any]) -> int:
    """The autoscaler's last decision (kept in status) within the spec's bounds; else minReplicas."""
    wanted = status.get("desiredReplicas")
    if not isinstance(wanted, int):
        wanted = spec.min_replicas
    return max(spec.min_replicas, min(spec.max_replicas, wanted))


def hpa_replicas(spec: ModelServiceSpec, deployment: Body | None) -> int:
    """metric cpu: the count the HPA set on the Deployment, within the bounds; else the floor."""
    current = ((deployment or {}).get("spec") or {}).get("replicas")
    floor = max(spec.min_replicas, 1)
    if not isinstance(current, int):
        return floor
    return max(floor, min(spec.max_replicas, current))


def with_scaling_of(spec: ModelServiceSpec, user: ModelServiceSpec) -> ModelServiceSpec:
    """`spec` (maybe the stable revision's, during a canary or after a rollback) with the
    user's current autoscaling and bounds, which no revision carries."""
    return dataclasses.replace(
        spec,
        min_replicas=user.min_replicas,
        max_replicas=user.max_replicas,
        autoscaling_metric=user.autoscaling_metric,
        autoscaling_target=user.autoscaling_target,
        scale_down_delay_seconds=user.scale_down_delay_seconds,
    )


def _invalid_spec(message: str, reason: str = "InvalidSpec") -> ComputedStatus:
    return ComputedStatus(
        phase=Phase.FAILED,
        replicas=0,
        ready_replicas=0,
        conditions=(Condition(ConditionType.READY, False, reason, message),),
    )


class ChildRejected(Exception):
    """The API server refused a child as invalid: a spec the CRD schema could not catch."""

    def __init__(self, kind: str, name: str, err: KubeApiError) -> None:
        try:
            detail = str(json.loads(err.message).get("message") or err.message)
        except (ValueError, AttributeError):
            detail = err.message
        super().__init__(f"the API server refused {kind} {name}: {detail}")


def trimmed(body: Body) -> dict[str, Any]:
    """Keep what reconciling and status need; drop managedFields and the pod spec bulk."""
    meta = body.get("metadata", {})
    out: dict[str, Any] = {
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "labels",
                "generation",
                "resourceVersion",
                "deletionTimestamp",
                "creationTimestamp",
            )
            if k in meta
        },
        "status": dict(body.get("status") or {}),
    }
    spec = body.get("spec") or {}
    if "replicas" in spec:
        out["spec"] = {"replicas": spec["replicas"]}
    if "nodeName" in spec:
        out.setdefault("spec", {})["nodeName"] = spec["nodeName"]
    return out


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def with_rollback(computed: ComputedStatus, record: Mapping[str, Any]) -> ComputedStatus:
    condition = Condition(
        ConditionType.ROLLED_BACK,
        True,
        str(record.get("reason", "RolledBack")),
        str(record.get("message", "")),
    )
    return ComputedStatus(
        computed.phase, computed.replicas, computed.ready_replicas, (*computed.conditions, condition)
    )
