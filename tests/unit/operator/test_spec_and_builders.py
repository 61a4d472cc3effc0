from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator.builders import (
    ResolvedModel,
    build_children,
    build_deployment,
    pod_template,
    revision_of,
)
from kubemaas_operator.settings import OperatorSettings, settings_from_env
from kubemaas_operator.spec import ModelUri, SpecError, UriScheme, parse_model_service

SETTINGS = OperatorSettings(default_image="example.invalid/server:1")


def body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "mlp", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": {"model": {"uri": "pvc://models/mlp"}, **spec},
    }


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://models/mlp", ModelUri(UriScheme.PVC, "models", "mlp")),
        ("pvc://models", ModelUri(UriScheme.PVC, "models", "")),
        ("pvc://models/a/b/", ModelUri(UriScheme.PVC, "models", "a/b")),
        ("trainingjob://mnist", ModelUri(UriScheme.TRAINING_JOB, "mnist", "")),
        ("file:///srv/models/mlp", ModelUri(UriScheme.FILE, "/srv/models/mlp", "")),
    ],
)
def test_model_uris_parse_into_scheme_target_and_path(uri: str, expected: ModelUri) -> None:
    assert ModelUri.parse(uri) == expected


@pytest.mark.parametrize(
    "uri", ["ftp://x", "models/mlp", "pvc://", "pvc://claim/../etc", "file:///a/../../etc"]
)
def test_bad_model_uris_are_refused_with_a_reason(uri: str) -> None:
    with pytest.raises(SpecError):
        ModelUri.parse(uri)


def test_file_uris_need_the_development_flag() -> None:
    with pytest.raises(SpecError, match="dev-allow-file-uris"):
        parse_model_service(body(model={"uri": "file:///srv/m"}), SETTINGS)
    allowed = OperatorSettings(allow_file_uris=True)
    assert parse_model_service(body(model={"uri": "file:///srv/m"}), allowed).uri.scheme is UriScheme.FILE


def test_gpu_count_becomes_a_limit_toleration_and_product_selector() -> None:
    spec = parse_model_service(body(gpu={"count": 2, "product": "NVIDIA-H100-80GB-HBM3"}), SETTINGS)
    pod = pod_template(spec)["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_scheduling_fields_merge_on_top_of_what_gpus_imply() -> None:
    spec = parse_model_service(
        body(
            gpu={"count": 1, "product": "A"},
            scheduling={
                "nodeSelector": {"nvidia.com/gpu.product": "B", "zone": "z1"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                ],
                "priorityClassName": "serving",
            },
        ),
        SETTINGS,
    )
    pod = pod_template(spec)["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "B", "zone": "z1"}
    assert len(pod["tolerations"]) == 2
    assert pod["priorityClassName"] == "serving"


def test_the_gpu_resource_name_comes_from_the_spec_or_the_operator_settings() -> None:
    amd = OperatorSettings(gpu_resource="amd.com/gpu")
    spec = parse_model_service(body(gpu={"count": 1}), amd)
    assert pod_template(spec)["spec"]["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_user_resources_pass_through_next_to_the_gpu_limit() -> None:
    spec = parse_model_service(
        body(gpu={"count": 1}, resources={"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}}), SETTINGS
    )
    resources = pod_template(spec)["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}}


def test_pvc_model_mounts_its_folder_read_only_under_the_repository() -> None:
    spec = parse_model_service(body(model={"uri": "pvc://models/exports/mlp", "name": "mlp-v2"}), SETTINGS)
    pod = pod_template(spec)["spec"]
    mount = pod["containers"][0]["volumeMounts"][0]
    assert mount == {
        "name": "model",
        "mountPath": "/models/mlp-v2",
        "readOnly": True,
        "subPath": "exports/mlp",
    }
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_pods_run_non_root_read_only_without_privilege_escalation() -> None:
    pod = pod_template(parse_model_service(body(), SETTINGS))["spec"]
    container = pod["containers"][0]["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_child_is_labelled_and_owned_by_the_model_service() -> None:
    spec = parse_model_service(body(), SETTINGS)
    for child in build_children(spec, replicas=3):
        meta = child["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubemaas"
        assert meta["labels"]["kubemaas.io/model-service"] == "mlp"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "kubemaas.io/v1alpha1",
                "kind": "ModelService",
                "name": "mlp",
                "uid": "u-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_a_pdb_exists_only_with_more_than_one_replica() -> None:
    spec = parse_model_service(body(), SETTINGS)
    assert [c["kind"] for c in build_children(spec, replicas=1)] == ["Deployment", "Service", "NetworkPolicy"]
    assert [c["kind"] for c in build_children(spec, replicas=2)] == [
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ]


def test_the_network_policy_admits_only_the_ports_the_server_listens_on() -> None:
    spec = parse_model_service(body(), SETTINGS)
    children = {c["kind"]: c for c in build_children(spec, replicas=1)}
    policy = children["NetworkPolicy"]["spec"]
    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert policy["podSelector"]["matchLabels"] == children["Service"]["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress"]
    allowed = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert sorted(allowed) == sorted(p["name"] for p in container["ports"]) == ["grpc", "metrics"]
    assert all("from" not in rule for rule in policy["ingress"])


def test_rollouts_surge_with_zero_unavailable() -> None:
    deployment = build_deployment(parse_model_service(body(), SETTINGS), replicas=2)
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_revision_changes_with_the_model_or_image_and_only_then() -> None:
    base = pod_template(parse_model_service(body(), SETTINGS))
    same = pod_template(parse_model_service(body(minReplicas=3), SETTINGS))
    other_model = pod_template(parse_model_service(body(model={"uri": "pvc://models/mlp2"}), SETTINGS))
    other_image = pod_template(parse_model_service(body(image="example.invalid/server:2"), SETTINGS))
    assert revision_of(base) == revision_of(same)
    assert len({revision_of(base), revision_of(other_model), revision_of(other_image)}) == 3


def test_settings_come_from_the_environment() -> None:
    settings = settings_from_env(
        {
            "KUBEMAAS_DEFAULT_IMAGE": "img:1",
            "KUBEMAAS_NAMESPACES": "a, b",
            "KUBEMAAS_DEV_ALLOW_FILE_URIS": "true",
        }
    )
    assert (settings.default_image, settings.namespaces, settings.allow_file_uris) == (
        "img:1",
        ("a", "b"),
        True,
    )


def test_a_replacing_rollout_trades_one_replica_for_no_surge() -> None:
    deployment = build_deployment(parse_model_service(body(), SETTINGS), replicas=2, replace=True)
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_a_canary_deployment_has_its_own_name_and_track_but_the_service_selects_both() -> None:
    from kubemaas_operator.builders import build_canary_deployment, build_service

    spec = parse_model_service(body(image="example.invalid/server:2"), SETTINGS)
    canary = build_canary_deployment(spec, replicas=1)
    stable = build_deployment(spec, replicas=3)
    assert canary["metadata"]["name"] == "mlp-canary"
    assert canary["spec"]["selector"]["matchLabels"]["kubemaas.io/track"] == "canary"
    assert "kubemaas.io/track" not in stable["spec"]["selector"]["matchLabels"]
    service_selector = build_service(spec)["spec"]["selector"]
    for deployment in (canary, stable):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service_selector.items() <= labels.items()


def test_tls_mounts_the_secret_and_passes_its_files_to_the_server() -> None:
    plain = pod_template(parse_model_service(body(), SETTINGS))["spec"]
    tls = pod_template(parse_model_service(body(tls={"secretName": "mlp-cert"}), SETTINGS))["spec"]
    mutual = pod_template(
        parse_model_service(body(tls={"secretName": "mlp-cert", "clientAuth": True}), SETTINGS)
    )["spec"]
    assert not any(a.startswith("--tls") for a in plain["containers"][0]["args"])
    args = tls["containers"][0]["args"]
    assert "--tls-cert=/etc/kubemaas/tls/tls.crt" in args and "--tls-key=/etc/kubemaas/tls/tls.key" in args
    assert not any(a.startswith("--tls-client-ca") for a in args)
    assert "--tls-client-ca=/etc/kubemaas/tls/ca.crt" in mutual["containers"][0]["args"]
    secret = next(v for v in tls["volumes"] if v["name"] == "tls")["secret"]
    assert secret == {"secretName": "mlp-cert", "defaultMode": 0o440}
    mount = next(m for m in tls["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/kubemaas/tls", "readOnly": True}
    # fsGroup makes the key readable by the server's group, and the server runs in that group.
    assert tls["securityContext"]["fsGroup"] == tls["securityContext"]["runAsGroup"]


def test_probes_use_http_health_on_the_metrics_port_which_tls_leaves_plain() -> None:
    container = pod_template(parse_model_service(body(tls={"secretName": "c"}), SETTINGS))["spec"][
        "containers"
    ][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "metrics"
    assert "grpc" not in container["readinessProbe"]


def test_turning_tls_on_is_a_new_revision() -> None:
    plain = revision_of(pod_template(parse_model_service(body(), SETTINGS)))
    tls = revision_of(pod_template(parse_model_service(body(tls={"secretName": "c"}), SETTINGS)))
    assert plain != tls


def test_a_new_successful_training_run_is_a_new_revision_of_the_model_service_serving_it() -> None:
    spec = parse_model_service(body(model={"uri": "trainingjob://mnist"}), SETTINGS)
    first = pod_template(spec, ResolvedModel("pvc://models/mnist", "uid-1/2026-11-30T01:00:00Z"))
    again = pod_template(spec, ResolvedModel("pvc://models/mnist", "uid-1/2026-11-30T01:00:00Z"))
    rerun = pod_template(spec, ResolvedModel("pvc://models/mnist", "uid-2/2026-11-30T02:00:00Z"))
    assert revision_of(first) == revision_of(again) != revision_of(rerun)
    mount = first["spec"]["containers"][0]["volumeMounts"][0]
    assert (mount["subPath"], first["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]) == (
        "mnist",
        "models",
    )


def test_spec_batching_reaches_the_server_as_flags() -> None:
    args = pod_template(
        parse_model_service(body(batching={"maxBatchSize": 8, "maxQueueDelayMs": 5}), SETTINGS)
    )["spec"]["containers"][0]["args"]
    assert {"--max-batch-size=8", "--max-queue-delay-ms=5"} <= set(args)
    defaults = pod_template(parse_model_service(body(), SETTINGS))["spec"]["containers"][0]["args"]
    assert {"--max-batch-size=32", "--max-queue-delay-ms=2"} <= set(defaults)
