"""The few API-server calls the operator makes itself (kopf does the watching).

Server-side apply for children (one field manager, forced: the operator owns what it sets and
nothing else), deletes, and status patches. Built on the official client's transport so
kubeconfig, in-cluster tokens and client certificates all work; calls are blocking and run in
a thread from the async handlers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import kubernetes

from kubemaas_operator.crd import API_VERSION

Manifest = dict[str, Any]

# (apiVersion, kind) -> plural; every kind here is namespaced.
PLURALS: Final[dict[tuple[str, str], str]] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("batch/v1", "Job"): "jobs",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (API_VERSION, "ModelService"): "modelservices",
    (API_VERSION, "TrainingJob"): "trainingjobs",
}


class KubeApiError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling and server trouble pass; everything else is our bug or theirs."""
        return self.status in (409, 429) or self.status >= 500


# Characters YAML may not carry raw (outside its printable set, or line breaks to YAML that a
# quoted scalar folds into spaces: NEL, LS, PS); JSON leaves them raw.
_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def apply_patch_body(manifest: Mapping[str, Any]) -> bytes:
    """`manifest` as an apply patch, which the API server reads as YAML: JSON is YAML, except
    that YAML refuses `\\u` escapes of surrogate pairs (which JSON uses for characters beyond
    the BMP), raw DEL and C1 controls, and folds raw line separators. So: UTF-8 for everything, `\\u` escapes for those."""
    text = json.dumps(manifest, ensure_ascii=False)
    return _NOT_YAML_PRINTABLE.sub(lambda m: f"\\u{ord(m[0]):04x}", text).encode()


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def load_api_client() -> kubernetes.client.ApiClient:
    """From $KUBECONFIG (or ~/.kube/config), else the pod's service account."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return kubernetes.client.ApiClient(configuration)


class KubeClient:
    def __init__(self, api: kubernetes.client.ApiClient, *, field_manager: str = "kubemaas") -> None:
        self._api = api
        self.field_manager = field_manager

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Manifest | None:
        params = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*params)
        except kubernetes.client.ApiException as err:  # raised by the transport for HTTP errors
            raise _error(err.status or 0, err.reason or "", err.body or "") from None
        response.read()
        if response.status >= 400:
            raise _error(
                response.status, response.reason or "", (response.data or b"").decode(errors="replace")
            )
        if not response.data:
            return None
        data: Manifest = json.loads(response.data)
        return data

    def apply(
        self, manifest: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> Manifest:
        """Server-side apply; forced under our own field manager unless told otherwise."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", field_manager or self.field_manager)]
        if force:
            query.append(("force", "true"))
        result = self.request(
            "PATCH",
            path,
            query=query,
            body=apply_patch_body(manifest),
            content_type="application/apply-patch+yaml",
        )
        assert result is not None
        return result

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except KubeApiError as err:
            if err.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """True when something was deleted; a child that is already gone is fine."""
        try:
            self.request(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        event_type: str = "Normal",
        component: str = "kubemaas-operator",
    ) -> None:
        """A core/v1 Event about `involved` ({apiVersion, kind, name, namespace, uid}), as
        `kubectl describe` and `kubectl events` show them."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.request("POST", resource_path("v1", "Event", namespace), body=event)


def _error(status: int, reason: str, body: str) -> KubeApiError:
    message = body
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(body).get("message", body)
    return KubeApiError(status, reason, message)
