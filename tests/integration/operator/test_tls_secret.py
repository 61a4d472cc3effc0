"""A ModelService served over mutual TLS from a kubernetes.io/tls Secret, with real certificates.

The operator mounts the Secret and points the server at its files; it never reads the Secret
itself (its RBAC has no verb on secrets), and nothing of the Secret reaches its log.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.certs import Authority
from tests.integration.conftest import LocalCluster
from tests.integration.operator.conftest import OperatorProcess, get, model_service, models_claim

pytestmark = pytest.mark.integration


def tls_secret(name: str, ca: Authority) -> tuple[dict[str, Any], list[bytes]]:
    issued = ca.issue(name, server=True)
    files = {
        "tls.crt": issued.cert.read_bytes(),
        "tls.key": issued.key.read_bytes(),
        "ca.crt": ca.cert.read_bytes(),
    }
    data = {key: base64.b64encode(value).decode() for key, value in files.items()}
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name},
        "data": data,
    }
    key_pem = files["tls.key"]
    # What must never be logged: the key, as PEM, its base64 body, and the Secret's data value.
    body = b"".join(line for line in key_pem.splitlines() if not line.startswith(b"-----"))
    return secret, [key_pem, body[:40], data["tls.key"].encode()[:40]]


def test_mutual_tls_from_a_secret_is_mounted_and_never_logged(
    operator: OperatorProcess, cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    models_claim(cluster, namespace)
    secret, never_logged = tls_secret("mlp-tls", Authority(tmp_path, "ca"))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    ms = model_service("secure", tls={"secretName": "mlp-tls", "clientAuth": True})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(ms))
    cluster.kubectl(
        "wait", "--for=condition=Ready", "ms/secure", "-n", namespace, "--timeout=90s", timeout=100
    )

    pod = get(cluster, "deployment", "secure", "-n", namespace)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert {
        "--tls-cert=/etc/kubemaas/tls/tls.crt",
        "--tls-key=/etc/kubemaas/tls/tls.key",
        "--tls-client-ca=/etc/kubemaas/tls/ca.crt",
    } <= set(args)
    assert {"name": "tls", "secret": {"secretName": "mlp-tls", "defaultMode": 0o440}} in pod["volumes"]
    # The simulated pods run and are Ready on the same mount: the Secret resolved for the kubelet.
    assert get(cluster, "ms", "secure", "-n", namespace)["status"]["readyReplicas"] == 1

    # The operator's own account cannot read Secrets at all.
    can_i = cluster.kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        namespace,
        "--as=system:serviceaccount:kubemaas-system:kubemaas-operator",
        check=False,
    )
    assert can_i.stdout.strip() == "no"
    log = operator.logs().encode()
    assert b"secure" in log, "the scenario left no trace in the operator log"
    for material in never_logged:
        assert material not in log
