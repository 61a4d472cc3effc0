"""One level-triggered reconcile loop per TrainingJob (the ModelService loop's pattern).

kopf delivers watch events (handlers.py); this module keeps the latest body of every
TrainingJob and a cache of its Jobs and worker pods, and runs one asyncio task per TrainingJob
that wakes on any change: parse -> headless Service -> the current attempt's Job (created
suspended until the whole group fits) -> status (pure) -> act on a failed attempt.

A failed attempt is replaced as a whole: the restart count is written to status first, then
the failed Job is deleted and the next one (`NAME-r<n+1>`) created. Status is the record, so an
operator restarted at any point continues with the right attempt and deletes any other.
A finished TrainingJob (Succeeded or Failed) is left alone: its Job may be garbage-collected by
ttlSecondsAfterFinished without a new one being started.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubemaas.logs import kv
from kubemaas_operator.clients import KubeApiError, KubeClient
from kubemaas_operator.crd import API_VERSION
from kubemaas_operator.reconciler import ChildRejected, Reconciler, trimmed
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import SpecError
from kubemaas_operator.status import same_status
from kubemaas_operator.training_builders import (
    TRAINING_JOB_LABEL,
    Fit,
    build_job,
    build_worker_service,
    fits,
    job_name,
)
from kubemaas_operator.training_spec import TrainingJobSpec, parse_training_job
from kubemaas_operator.training_status import (
    TERMINAL,
    AttemptState,
    TrainingComputed,
    TrainingCondition,
    TrainingConditionType,
    TrainingPhase,
    compute_training_status,
    training_status_patch,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, TrainingJob name)
Body = Mapping[str, Any]

RESYNC_SECONDS = 120.0
# How often a group that does not fit looks again (node and pod changes elsewhere send us nothing).
ROOM_RECHECK_SECONDS = 3.0
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
JOB_NAME_LABEL = "job-name"


# The Job controller labels each pod with its Job's uid; a Job name can be used again.
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


def trimmed_job(body: Body) -> dict[str, Any]:
    """A Job as the cache keeps it: reconciler.trimmed, whether it is suspended, and its owner."""
    out = trimmed(body)
    out["spec"] = {"suspend": bool((body.get("spec") or {}).get("suspend"))}
    owners = (body.get("metadata") or {}).get("ownerReferences") or []
    out["metadata"]["owner"] = next((o.get("uid") for o in owners if o.get("controller")), None)
    return out


def owned_by(job: Body, spec: TrainingJobSpec) -> bool:
    """A Job of this TrainingJob, not of an earlier one of the same name still being collected."""
    return bool(job["metadata"].get("owner") == spec.uid)


@dataclass
class TrainingCache:
    jobs: dict[Key, dict[str, Body]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Body]] = field(default_factory=dict)

    def update(self, kind: str, event_type: str | None, body: Body) -> Key | None:
        meta = body.get("metadata", {})
        owner = (meta.get("labels") or {}).get(TRAINING_JOB_LABEL)
        if not owner:
            return None
        key = (meta["namespace"], owner)
        bucket = (self.jobs if kind == "Job" else self.pods).setdefault(key, {})
        if event_type == "DELETED":
            bucket.pop(meta["name"], None)
        else:
            bucket[meta["name"]] = body
        return key


PhaseListener = Callable[[str, str, str], None]  # (namespace, name, phase)


class TrainingReconciler:
    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        *,
        on_phase_change: PhaseListener | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.cache = TrainingCache()
        self.bodies: dict[Key, Body] = {}
        self.on_phase_change = on_phase_change
        # The highest restart count this process has written: a watch event older than our own
        # status write must not send us back to an attempt we already replaced.
        self._restarts: dict[Key, int] = {}
        self._services: set[Key] = set()
        self._admission = asyncio.Lock()
        self._wakes: dict[Key, asyncio.Event] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    # --- events in -------------------------------------------------------------------------

    def on_training_job(self, event_type: str | None, body: Body) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event_type == "DELETED":
            self.bodies.pop(key, None)
            self._restarts.pop(key, None)
            self._services.discard(key)
            task = self._tasks.pop(key, None)
            if task:
                task.cancel()
            self._wakes.pop(key, None)
            return
        self.bodies[key] = body
        self.wake(key)
        if key not in self._tasks or self._tasks[key].done():
            self._tasks[key] = asyncio.create_task(self._loop(key), name=f"training/{key[0]}/{key[1]}")

    def on_child(self, kind: str, event_type: str | None, body: Body) -> None:
        key = self.cache.update(kind, event_type, body)
        if key is not None and key in self.bodies:
            self.wake(key)

    def wake(self, key: Key) -> None:
        self._wakes.setdefault(key, asyncio.Event()).set()

    async def stop(self) -> None:
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
                    "training reconcile failed; retrying",
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
        previous = body.get("status") or {}
        if previous.get("phase") in TERMINAL:
            return
        generation = int(body["metadata"].get("generation", 0))
        try:
            spec = parse_training_job(body, self.settings)
        except (SpecError, KeyError, ValueError) as err:
            await self._fail(body, generation, "InvalidSpec", str(err))
            return
        try:
            await self._reconcile(key, body, spec, previous, generation, force=force)
        except ChildRejected as err:
            # Retrying cannot help (the spec must change); the status says why.
            await self._fail(body, generation, "ChildRejected", str(err))

    async def _fail(self, body: Body, generation: int, reason: str, message: str) -> None:
        invalid = TrainingComputed(
            TrainingPhase.FAILED, (TrainingCondition(TrainingConditionType.FAILED, True, reason, message),)
        )
        state = AttemptState(0, 0, 0, None, ())
        await self._write_status(body, invalid, state, generation=generation, job="", output_uri=None)

    async def _reconcile(
        self,
        key: Key,
        body: Body,
        spec: TrainingJobSpec,
        previous: Mapping[str, Any],
        generation: int,
        *,
        force: bool,
    ) -> None:
        restarts = max(int(previous.get("restarts") or 0), self._restarts.get(key, 0))
        current = job_name(spec, restarts)

        if force or key not in self._services:
            await self._apply_child(build_worker_service(spec))
            self._services.add(key)
        await self._delete_other_attempts(key, spec, current)

        job = self.cache.jobs.get(key, {}).get(current)
        waiting: str | None = None
        if job is not None and not owned_by(job, spec):
            # A TrainingJob deleted and created again: applying now would adopt the old run's
            # finished Job. Its deletion (ours or the garbage collector's) wakes us.
            waiting = f"the previous TrainingJob {spec.name}'s Job {current} is being deleted"
            job = None
        elif job is None or (job.get("spec") or {}).get("suspend"):
            waiting = await self._admit(key, spec, restarts, exists=job is not None)
            job = self.cache.jobs.get(key, {}).get(current)
        job_uid = job["metadata"].get("uid") if job is not None else None
        pods = [
            pod
            for pod in self.cache.pods.get(key, {}).values()
            if (labels := pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == current
            and labels.get(CONTROLLER_UID_LABEL, job_uid) == job_uid
        ]
        state = AttemptState(restarts, spec.max_restarts, spec.workers, job, pods, waiting)
        computed = compute_training_status(state)
        output_uri = spec.output.uri if spec.output else None

        if computed.phase is TrainingPhase.RESTARTING and computed.failure is not None:
            # Record the next attempt before touching the failed one: a crash in between resumes there.
            following = job_name(spec, restarts + 1)
            self._restarts[key] = restarts + 1
            next_state = AttemptState(restarts + 1, spec.max_restarts, spec.workers, job, pods, None)
            await self._write_status(
                body, computed, next_state, generation=generation, job=following, output_uri=output_uri
            )
            log.warning(
                "attempt failed; restarting the group",
                extra=kv(
                    namespace=key[0],
                    name=key[1],
                    failed=current,
                    next=following,
                    restart=restarts + 1,
                    reason=computed.failure.describe()[:300],
                ),
            )
            await asyncio.to_thread(self.client.delete, "batch/v1", "Job", spec.namespace, current)
            self.wake(key)
            return
        await self._write_status(
            body, computed, state, generation=generation, job=current, output_uri=output_uri
        )

    async def _delete_other_attempts(self, key: Key, spec: TrainingJobSpec, current: str) -> None:
        for name, job in list(self.cache.jobs.get(key, {}).items()):
            if (name == current and owned_by(job, spec)) or job["metadata"].get("deletionTimestamp"):
                continue
            if await asyncio.to_thread(self.client.delete, "batch/v1", "Job", spec.namespace, name):
                log.info("deleted a previous attempt", extra=kv(namespace=key[0], name=key[1], job=name))

    async def _admit(self, key: Key, spec: TrainingJobSpec, restarts: int, *, exists: bool) -> str | None:
        """Create or unsuspend the attempt's Job when the whole group fits; else the shortfall.

        With a queue named, admission is the queue controller's (Kueue flips `suspend`): the Job
        is created suspended once and never touched again.
        """
        if spec.queue:
            if not exists:
                await self._apply_job(key, build_job(spec, restarts, suspend=True))
            return None
        # One admission at a time: two groups must not both count the same free GPUs.
        async with self._admission:
            fit = await self._fits(spec, restarts)
            if fit.fits or not exists:
                await self._apply_job(key, build_job(spec, restarts, suspend=not fit.fits))
                log.info(
                    "group admitted" if fit.fits else "group waits for room",
                    extra=kv(namespace=key[0], name=key[1], job=job_name(spec, restarts), detail=fit.message),
                )
        if fit.fits:
            return None
        asyncio.get_running_loop().call_later(ROOM_RECHECK_SECONDS, self.wake, key)
        return fit.message

    async def _fits(self, spec: TrainingJobSpec, restarts: int) -> Fit:
        pod_spec = build_job(spec, restarts, suspend=True)["spec"]["template"]["spec"]
        nodes = await asyncio.to_thread(self.client.request, "GET", "/api/v1/nodes")
        pods = await asyncio.to_thread(
            self.client.request,
            "GET",
            "/api/v1/pods",
            query=[("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed")],
        )
        return fits(spec.workers, pod_spec, (nodes or {}).get("items", []), (pods or {}).get("items", []))

    async def _apply_job(self, key: Key, manifest: dict[str, Any]) -> None:
        result = await self._apply_child(manifest)
        self.cache.update("Job", "MODIFIED", trimmed_job(result))

    async def _apply_child(self, manifest: dict[str, Any]) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self.client.apply, manifest)
        except KubeApiError as err:
            if err.status in (400, 422):
                raise ChildRejected(manifest["kind"], manifest["metadata"]["name"], err) from err
            raise

    async def _write_status(
        self,
        body: Body,
        computed: TrainingComputed,
        state: AttemptState,
        *,
        generation: int,
        job: str,
        output_uri: str | None,
    ) -> None:
        meta = body["metadata"]
        previous = body.get("status") or {}
        patch = training_status_patch(
            computed,
            state,
            generation=generation,
            job_name=job,
            output_uri=output_uri,
            previous=previous,
            now=dt.datetime.now(dt.UTC),
        )
        if same_status(patch, previous):
            return
        await asyncio.to_thread(
            self.client.patch_status, API_VERSION, "TrainingJob", meta["namespace"], meta["name"], patch
        )
        key = (meta["namespace"], meta["name"])
        if key in self.bodies:
            # Our own write, until the watch event brings the server's copy.
            self.bodies[key] = {**body, "status": {**previous, **patch}}
        if patch.get("phase") != previous.get("phase"):
            log.info(
                "training phase changed",
                extra=kv(namespace=key[0], name=key[1], phase=patch["phase"], was=previous.get("phase")),
            )
            if self.on_phase_change is not None:
                self.on_phase_change(key[0], key[1], str(patch["phase"]))


def wake_model_services(reconciler: Reconciler | None, namespace: str, training_job: str) -> None:
    """Wake the ModelServices that serve this TrainingJob's output, so they see it succeed now
    rather than at their next resync."""
    if reconciler is None:
        return
    target = f"trainingjob://{training_job}"
    for key, body in list(reconciler.bodies.items()):
        uri = str(((body.get("spec") or {}).get("model") or {}).get("uri", ""))
        if key[0] == namespace and (uri == target or uri.startswith(target + "/")):
            reconciler.wake(key)
