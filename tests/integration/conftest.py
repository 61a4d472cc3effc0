"""The local control plane for integration tests: started once per pytest session.

By default every run gets its own fresh cluster (own state directory, own free ports), so a
developer's `kubemaas cluster up` and parallel runs never collide. Set
`KUBEMAAS_TEST_CLUSTER=existing` to run against the cluster `$KUBECONFIG` points at instead
(kind, or a real one with KWOK installed); that is opt-in so a stray KUBECONFIG never lets a
test suite loose on a production cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest

from kubemaas_cluster.binaries import ensure_binaries
from kubemaas_cluster.controlplane import ClusterOptions, down, up
from kubemaas_cluster.nodes import NodePlan


@dataclass(frozen=True)
class LocalCluster:
    kubeconfig: Path
    binaries: dict[str, Path]
    state_dir: Path | None  # None when the cluster is not ours to stop

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries["kubectl"]), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (operator, CLI) that should talk to this cluster."""
        path = f"{self.binaries['kubectl'].parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}


def _progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if os.environ.get("KUBEMAAS_TEST_CLUSTER") == "existing":
        kubeconfig = Path(os.environ["KUBECONFIG"])
        kubectl = shutil.which("kubectl")
        assert kubectl, "KUBEMAAS_TEST_CLUSTER=existing needs kubectl on PATH"
        binaries = {"kubectl": Path(kubectl)}
        if helm := shutil.which("helm"):
            binaries["helm"] = Path(helm)
        yield LocalCluster(kubeconfig=kubeconfig, binaries=binaries, state_dir=None)
        return
    binaries = ensure_binaries(_progress)
    state_dir = tmp_path_factory.mktemp("cluster")
    options = ClusterOptions(state_dir=state_dir, kubeconfig=state_dir / "kubeconfig", nodes=NodePlan())
    state = up(options, binaries, _progress)
    try:
        yield LocalCluster(kubeconfig=state.kubeconfig, binaries=binaries, state_dir=state_dir)
    finally:
        down(state_dir)


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # The service-account controller must have created `default` before pods can be admitted.
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
