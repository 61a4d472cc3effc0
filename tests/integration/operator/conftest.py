"""The operator as a user runs it: a `kubemaas operator` process whose only credentials are a
ServiceAccount token bound to the shipped ClusterRole, so a missing RBAC verb fails a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_cluster.kubeconfig import with_token_user, write_kubeconfig
from tests.integration.conftest import LocalCluster

ROOT = Path(__file__).resolve().parents[3]


def token_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    token = cluster.kubectl(
        "create", "token", "kubemaas-operator", "-n", "kubemaas-system", "--duration=2h"
    ).stdout.strip()
    write_kubeconfig(
        path, with_token_user(cluster.kubeconfig.read_text(), user="kubemaas-operator", token=token)
    )
    return path


class OperatorProcess:
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *extra: str,
        standalone: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.log = workdir / "operator.log"
        # Without --standalone the process elects a leader on the shipped Lease first.
        self.extra = ("--standalone", *extra) if standalone else extra
        kubeconfig = token_kubeconfig(cluster, workdir / "operator.kubeconfig")
        # A short GPU surge grace keeps the rollout tests quick; the default is 15 s.
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBEMAAS_LOG_LEVEL": "INFO",
            "KUBEMAAS_GPU_SURGE_GRACE_SECONDS": "3",
            **(env or {}),
        }
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "kubemaas", "operator", *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def restart(self) -> None:
        """Start a fresh process (after `stop`), as a Deployment would after a crash."""
        assert self.proc.poll() is not None, "stop the running operator first"
        self.proc = self._spawn()

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def operator_installed(cluster: LocalCluster) -> LocalCluster:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "base" / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/modelservices.kubemaas.io", "--timeout=60s")
    cluster.kubectl("create", "namespace", "kubemaas-system", check=False)
    cluster.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / "rbac"))
    cluster.kubectl(
        "wait", "--for=create", "serviceaccount/kubemaas-operator", "-n", "kubemaas-system", "--timeout=30s"
    )
    return cluster


@pytest.fixture(scope="session")
def operator(
    operator_installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_installed, tmp_path_factory.mktemp("operator"))
    yield process
    process.stop()
    print(f"\n--- operator log tail ---\n{process.logs()[-3000:]}")


def get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def eventually(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as err:
            last = err
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def models_claim(cluster: LocalCluster, namespace: str) -> None:
    """A hostPath PV bound to a `models` claim, as a real cluster's storage would provide."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"models-{namespace}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": f"/tmp/kubemaas-pv/{namespace}"},
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))


def model_service(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"uri": "pvc://models/mlp"}, "image": "kubemaas-server:test", **spec}
    return {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": body,
    }
