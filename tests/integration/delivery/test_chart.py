"""The Helm chart and the kustomize manifests, with the pinned helm and kubectl binaries.

Rendering checks need only the binaries; install, upgrade and uninstall run against the local
control plane. KWOK runs no containers, so the chart's operator pod is simulated: the operator
runs here as a process with the chart's ServiceAccount token and the settings the chart gives
its container, and proves the chart's RBAC and Lease are enough to serve a model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_cluster.binaries import ensure_binaries
from kubemaas_cluster.kubeconfig import with_token_user, write_kubeconfig
from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import condition, get, model_service, models_claim

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "kubemaas"
RELEASE = "kmchart"
RELEASE_NS = "kmchart-system"
WATCHED = "kmchart-models"


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    return ensure_binaries(lambda message: print(f"[binaries] {message}", file=sys.stderr))


def helm(binaries: dict[str, Path], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Helm keeps its cache and config under HOME; a throwaway location keeps runs independent.
    home = ROOT / ".pytest_cache" / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(binaries["helm"]), *args], capture_output=True, text=True, timeout=180, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def on_release(
    cluster: LocalCluster, command: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`helm COMMAND RELEASE ...` against the test cluster, in the release's namespace."""
    return helm(
        cluster.binaries,
        command,
        RELEASE,
        *args,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-n",
        RELEASE_NS,
        check=check,
    )


def render(binaries: dict[str, Path], *values: str, release: str = RELEASE) -> list[dict[str, Any]]:
    out = helm(binaries, "template", release, str(CHART), "-n", RELEASE_NS, "--include-crds", *values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kustomize(binaries: dict[str, Path], overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(binaries["kubectl"]), "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Rules as (group, resource, verb, resourceName) grants: equal sets grant the same."""
    grants = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        grants.add((group, resource, verb, name))
    return grants


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# --- rendering ---------------------------------------------------------------------------------


def test_helm_lint_passes_strict(binaries: dict[str, Path]) -> None:
    result = helm(binaries, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_chart_and_kustomize_agree_on_crds_and_rbac(binaries: dict[str, Path]) -> None:
    # Released as `kubemaas`, the chart's names are the base's: kubemaas-operator.
    chart = render(binaries, release="kubemaas")
    for overlay in ("dev", "production"):
        base = kustomize(binaries, overlay)
        chart_crds = {d["metadata"]["name"]: d["spec"] for d in of_kind(chart, "CustomResourceDefinition")}
        base_crds = {d["metadata"]["name"]: d["spec"] for d in of_kind(base, "CustomResourceDefinition")}
        assert chart_crds == base_crds and set(chart_crds) == {
            "modelservices.kubemaas.io",
            "trainingjobs.kubemaas.io",
        }
        assert rule_set(one(chart, "ClusterRole")["rules"]) == rule_set(one(base, "ClusterRole")["rules"])
        assert rule_set(one(chart, "Role")["rules"]) == rule_set(one(base, "Role")["rules"])


def test_chart_defaults_run_one_locked_down_operator(binaries: dict[str, Path]) -> None:
    docs = render(binaries)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert not of_kind(docs, "PodDisruptionBudget") and not of_kind(docs, "ServiceMonitor")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/kubemaas/operator:0.1.0"
    assert container["args"][0] == "operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert env_of(deployment)["KUBEMAAS_LEASE_NAME"] == f"{RELEASE}-operator"
    assert "KUBEMAAS_NAMESPACES" not in env_of(deployment)
    lease_role = one(docs, "Role")
    assert ("coordination.k8s.io", "leases", "update", f"{RELEASE}-operator") in rule_set(lease_role["rules"])


def test_chart_values_shape_the_operator(binaries: dict[str, Path]) -> None:
    docs = render(
        binaries,
        "--set",
        "replicaCount=2",
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "defaultServerImage=registry.example/server:2",
        "--set",
        "logLevel=INFO",
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    env = env_of(deployment)
    assert env["KUBEMAAS_NAMESPACES"] == "team-a,team-b"
    assert env["KUBEMAAS_DEFAULT_IMAGE"] == "registry.example/server:2"
    assert env["KUBEMAAS_LOG_LEVEL"] == "INFO"
    # Watching named namespaces: namespaced grants move into a Role in each of them; only
    # reads of nodes, CRDs and namespaces stay cluster-wide.
    cluster_role = rule_set(one(docs, "ClusterRole")["rules"])
    assert {resource for _, resource, _, _ in cluster_role} == {
        "nodes",
        "customresourcedefinitions",
        "namespaces",
        "pods",
    }
    assert {verb for _, _, verb, _ in cluster_role} <= {"get", "list", "watch"}
    roles = {
        d["metadata"]["namespace"]: d
        for d in of_kind(docs, "Role")
        if d["metadata"]["namespace"] != RELEASE_NS
    }
    assert set(roles) == {"team-a", "team-b"}
    assert ("apps", "deployments", "patch", "*") in rule_set(roles["team-a"]["rules"])
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "model-server"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("replicaCount=zero", "replicaCount"),
        ("logLevel=LOUD", "logLevel"),
        ("replicsCount=2", "replicsCount"),
        ("watchNamespaces={Bad_NS}", "watchNamespaces"),
    ],
)
def test_values_schema_refuses_bad_values_by_name(
    binaries: dict[str, Path], value: str, complaint: str
) -> None:
    result = helm(binaries, "template", RELEASE, str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_production_overlay_runs_two_spread_replicas_with_a_budget(binaries: dict[str, Path]) -> None:
    docs = kustomize(binaries, "production")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    dev = one(kustomize(binaries, "dev"), "Deployment")
    assert dev["spec"]["template"]["spec"]["containers"][0]["image"] == "kubemaas-operator:dev"
    assert env_of(dev)["KUBEMAAS_DEV_ALLOW_FILE_URIS"] == "1"


# --- against the local control plane ----------------------------------------------------------


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster.kubectl("create", "namespace", WATCHED, check=False)
    on_release(
        cluster,
        "install",
        str(CHART),
        "--create-namespace",
        "--set",
        f"watchNamespaces={{{WATCHED}}}",
        "--wait",
        "--timeout",
        "2m",
    )
    yield cluster
    on_release(cluster, "uninstall", check=False)


@pytest.mark.integration
def test_helm_install_brings_the_operator_up_and_its_permissions_serve_a_model(
    installed: LocalCluster, tmp_path: Path
) -> None:
    cluster = installed
    deployment = get(cluster, "deployment", f"{RELEASE}-operator", "-n", RELEASE_NS)
    assert deployment["status"].get("availableReplicas") == 1
    for crd in ("modelservices.kubemaas.io", "trainingjobs.kubemaas.io"):
        established = get(cluster, "crd", crd)
        assert condition(established, "Established")["status"] == "True"

    # The operator as the chart runs it: the chart's token, the container's settings, and the
    # Lease (no --standalone), with a field manager of its own to tell its writes apart.
    token = cluster.kubectl("create", "token", f"{RELEASE}-operator", "-n", RELEASE_NS).stdout.strip()
    kubeconfig = tmp_path / "chart-operator.kubeconfig"
    write_kubeconfig(kubeconfig, with_token_user(cluster.kubeconfig.read_text(), user="chart", token=token))
    env = {
        **os.environ,
        **env_of(deployment),
        "POD_NAMESPACE": RELEASE_NS,
        "KUBECONFIG": str(kubeconfig),
        "KUBEMAAS_FIELD_MANAGER": "kubemaas-chart",
        "KUBEMAAS_LOG_LEVEL": "INFO",
    }
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubemaas", "operator"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        models_claim(cluster, WATCHED)
        cluster.kubectl("apply", "-n", WATCHED, "-f", "-", input=json.dumps(model_service("charted")))
        cluster.kubectl(
            "wait", "--for=condition=Ready", "ms/charted", "-n", WATCHED, "--timeout=90s", timeout=100
        )
        children = get(cluster, "deployment", "charted", "-n", WATCHED, "--show-managed-fields")
        managers = {entry["manager"] for entry in children["metadata"]["managedFields"]}
        assert "kubemaas-chart" in managers
        lease = get(cluster, "lease", f"{RELEASE}-operator", "-n", RELEASE_NS)
        assert lease["spec"]["holderIdentity"], "the chart's operator never took its Lease"
        # Outside the watched namespaces the chart grants nothing, so the operator sees nothing.
        forbidden = cluster.kubectl(
            "--kubeconfig", str(kubeconfig), "get", "deployments", "-n", "default", check=False
        )
        assert forbidden.returncode != 0 and "forbidden" in forbidden.stderr
        assert process.poll() is None, log_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        print(f"--- chart operator log tail ---\n{log_path.read_text(errors='replace')[-3000:]}")
        cluster.kubectl("delete", "ms", "charted", "-n", WATCHED, "--wait=false", check=False)


@pytest.mark.integration
def test_helm_upgrade_then_uninstall(installed: LocalCluster) -> None:
    cluster = installed
    on_release(
        cluster,
        "upgrade",
        str(CHART),
        "--reuse-values",
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "2m",
    )
    deployment = get(cluster, "deployment", f"{RELEASE}-operator", "-n", RELEASE_NS)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("availableReplicas") == 2
    assert get(cluster, "pdb", f"{RELEASE}-operator", "-n", RELEASE_NS)["spec"]["minAvailable"] == 1
    history = on_release(cluster, "history")
    assert "deployed" in history.stdout.splitlines()[-1]

    on_release(cluster, "uninstall", "--wait")
    gone = cluster.kubectl("get", "deployment,pdb,sa", "-n", RELEASE_NS, "-o", "name").stdout
    assert f"{RELEASE}-operator" not in gone
    assert cluster.kubectl("get", "clusterrole", f"{RELEASE}-operator", check=False).returncode != 0
    # Helm never deletes CRDs from crds/ (that would delete every user's ModelServices).
    assert get(cluster, "crd", "modelservices.kubemaas.io")["metadata"]["name"]


@pytest.mark.integration
def test_kustomize_dev_overlay_applies_server_side_and_reapplies_without_churn(cluster: LocalCluster) -> None:
    overlay = str(ROOT / "manifests" / "overlays" / "dev")
    cluster.kubectl("apply", "--server-side", "-k", overlay)
    try:
        cluster.kubectl(
            "rollout",
            "status",
            "deployment/kubemaas-operator",
            "-n",
            "kubemaas-system",
            "--timeout=90s",
            timeout=100,
        )
        before = get(cluster, "deployment", "kubemaas-operator", "-n", "kubemaas-system")["metadata"]
        cluster.kubectl("apply", "--server-side", "-k", overlay)
        after = get(cluster, "deployment", "kubemaas-operator", "-n", "kubemaas-system")["metadata"]
        assert after["generation"] == before["generation"] == 1
    finally:
        # Only the Deployment: the CRDs and RBAC are shared with the other tests of the session.
        cluster.kubectl("delete", "deployment", "kubemaas-operator", "-n", "kubemaas-system", check=False)
