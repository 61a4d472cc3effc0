"""Hypothesis-generated ModelService and TrainingJob specs against the real API server.

Each spec is either refused by the API server (server-side dry-run create) with a message that
names the field, or accepted; an accepted one, as the API server defaulted it, goes through the
operator's own pure pipeline (parse, then build the children) without an exception other than
a SpecError (which the operator reports in status), and every child it builds is accepted by
the API server too (server-side dry-run apply). So a user can never write a CR that the API
server takes and the operator then cannot turn into objects.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kubemaas_operator.builders import ResolvedModel, build_children
from kubemaas_operator.clients import KubeApiError, KubeClient, apply_patch_body, resource_path
from kubemaas_operator.crd import API_VERSION
from kubemaas_operator.reconciler import desired_replicas
from kubemaas_operator.settings import OperatorSettings
from kubemaas_operator.spec import SpecError, parse_model_service
from kubemaas_operator.training_builders import build_job, build_worker_service
from kubemaas_operator.training_spec import parse_training_job
from tests.integration.conftest import LocalCluster

pytestmark = pytest.mark.integration

NAMESPACE = "fuzz"
SETTINGS = OperatorSettings(
    default_image="kubemaas-server:test", default_trainer_image="kubemaas-trainer:test"
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

# Strings a user might type, and strings nobody should: spaces, slashes, dots, unicode, long.
words = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=20)
nasty = st.text(min_size=0, max_size=80)
# Mostly plausible values, so that most specs get past the API server and reach the builders.
some_text = st.one_of(words, words, words, nasty)
ints = st.one_of(st.integers(0, 8), st.integers(1, 40), st.integers(-3, 40), st.integers(-(2**40), 2**40))
quantity = st.one_of(
    st.sampled_from(["1", "500m", "2Gi", "0", "1.5", "100Mi", "-1", "abc", "1e3", "", "2 Gi"]),
    st.integers(-5, 64),
)
uris = st.one_of(
    st.builds(lambda c, p: f"pvc://{c}/{p}", words, words),
    st.builds(lambda c: f"pvc://{c}", words),
    st.builds(lambda n: f"trainingjob://{n}", words),
    st.builds(lambda p: f"file:///{p}", words),
    st.sampled_from(["pvc://", "pvc:///abs", "pvc://claim/../../etc", "s3://bucket/x", "trainingjob://", ""]),
    nasty,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.nothing(), strategy)


def resources() -> st.SearchStrategy[dict[str, Any]]:
    amounts = st.dictionaries(
        st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "bad key!"]), quantity, max_size=3
    )
    return st.fixed_dictionaries({}, optional={"requests": amounts, "limits": amounts})


def gpu() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"count": ints},
        optional={
            "product": st.one_of(st.just("NVIDIA-H100-80GB-HBM3"), some_text),
            "resource": st.one_of(st.just("nvidia.com/gpu"), st.just("amd.com/gpu"), some_text),
        },
    )


def scheduling() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "nodeSelector": st.dictionaries(st.one_of(words, some_text), some_text, max_size=2),
            "priorityClassName": some_text,
        },
    )


model_service_specs = st.fixed_dictionaries(
    {"model": st.fixed_dictionaries({"uri": uris}, optional={"name": some_text})},
    optional={
        "image": st.one_of(st.just("kubemaas-server:v2"), some_text),
        "minReplicas": ints,
        "maxReplicas": ints,
        "autoscaling": st.fixed_dictionaries(
            {},
            optional={
                "metric": st.one_of(st.sampled_from(["concurrency", "cpu"]), some_text),
                "target": ints,
                "scaleDownDelaySeconds": ints,
            },
        ),
        "gpu": gpu(),
        "resources": resources(),
        "batching": st.fixed_dictionaries({}, optional={"maxBatchSize": ints, "maxQueueDelayMs": ints}),
        "rollout": st.fixed_dictionaries(
            {}, optional={"canaryPercent": ints, "progressDeadlineSeconds": ints}
        ),
        "scheduling": scheduling(),
    },
)

training_job_specs = st.fixed_dictionaries(
    {"command": st.lists(some_text, min_size=0, max_size=3)},
    optional={
        "image": st.one_of(st.just("kubemaas-trainer:v2"), some_text),
        "workers": ints,
        "procsPerWorker": ints,
        "gpu": gpu(),
        "resources": resources(),
        "maxRestarts": ints,
        "output": st.fixed_dictionaries({"pvc": some_text}, optional={"path": st.one_of(words, some_text)}),
        "scheduling": scheduling(),
        "activeDeadlineSeconds": ints,
        "ttlSecondsAfterFinished": ints,
        "queue": some_text,
    },
)


@pytest.fixture(scope="module")
def client(operator_installed: LocalCluster) -> Iterator[KubeClient]:
    operator_installed.kubectl("create", "namespace", NAMESPACE, check=False)
    operator_installed.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", NAMESPACE, "--timeout=60s"
    )
    api = operator_installed.api_client()
    yield KubeClient(api, field_manager="fuzz")
    api.close()


def dry_run_create(client: KubeClient, kind: str, spec: dict[str, Any]) -> dict[str, Any] | KubeApiError:
    body = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": "fuzzed", "namespace": NAMESPACE},
        "spec": spec,
    }
    try:
        created = client.request(
            "POST",
            resource_path(API_VERSION, kind, NAMESPACE),
            query=[("dryRun", "All"), ("fieldValidation", "Strict")],
            body=body,
        )
    except KubeApiError as err:
        return err
    assert created is not None
    # A dry run assigns no uid; the operator needs one for ownerReferences.
    created["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    created["metadata"].setdefault("generation", 1)
    return created


def assert_readable_refusal(err: KubeApiError, spec: dict[str, Any]) -> None:
    assert err.status in (400, 422), f"unexpected {err} for {spec}"
    message = json.loads(err.message).get("message", "") if err.message.startswith("{") else err.message
    assert "spec" in message, f"the refusal does not name the field: {message}"


def assert_children_accepted(
    client: KubeClient, children: list[dict[str, Any]], spec: dict[str, Any]
) -> None:
    for child in children:
        meta = child["metadata"]
        try:
            client.request(
                "PATCH",
                resource_path(child["apiVersion"], child["kind"], meta["namespace"], meta["name"]),
                query=[("fieldManager", "fuzz"), ("force", "true"), ("dryRun", "All")],
                body=apply_patch_body(child),
                content_type="application/apply-patch+yaml",
            )
        except KubeApiError as err:
            raise AssertionError(
                f"the API server took the spec but refused the operator's {child['kind']}: {err}\nspec: {spec}"
            ) from None


def model_service_children(created: dict[str, Any]) -> list[dict[str, Any]]:
    parsed = parse_model_service(created, SETTINGS)
    resolved = (
        None
        if parsed.uri.scheme != "trainingjob"
        else ResolvedModel(f"pvc://models/{parsed.uri.target}", "uid/2026-01-01T00:00:00Z")
    )
    return build_children(parsed, desired_replicas(parsed, {}), resolved)


def training_job_children(created: dict[str, Any]) -> list[dict[str, Any]]:
    parsed = parse_training_job(created, SETTINGS)
    return [build_worker_service(parsed), build_job(parsed, 0, suspend=True)]


def check(
    client: KubeClient,
    kind: str,
    spec: dict[str, Any],
    children: Callable[[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    created = dry_run_create(client, kind, spec)
    if isinstance(created, KubeApiError):
        assert_readable_refusal(created, spec)
        event("refused by the API server")
        return
    event("accepted: children built and dry-run applied")
    try:
        built = children(created)
    except SpecError:
        return  # reported in status as Failed/InvalidSpec, with this message
    assert_children_accepted(client, built, spec)


@FUZZ
@given(spec=model_service_specs)
def test_model_service_specs_are_refused_readably_or_become_valid_children(
    client: KubeClient, spec: dict[str, Any]
) -> None:
    check(client, "ModelService", spec, model_service_children)


@FUZZ
@given(spec=training_job_specs)
def test_training_job_specs_are_refused_readably_or_become_valid_children(
    client: KubeClient, spec: dict[str, Any]
) -> None:
    check(client, "TrainingJob", spec, training_job_children)
