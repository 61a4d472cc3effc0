"""Kubeconfig files for the admin user and each control-plane component."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from kubemaas_cluster.pki import Pair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render_kubeconfig(
    *, server: str, ca: Path, client: Pair, user: str, context: str = "kubemaas-local"
) -> str:
    """A self-contained kubeconfig (certificates embedded) so it stays valid wherever it is copied."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": context, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)},
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": user, "namespace": "default"}}
        ],
        "current-context": context,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_kubeconfig(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(content)
    tmp.chmod(0o600)
    tmp.replace(path)


def with_token_user(kubeconfig: str, *, user: str, token: str) -> str:
    """The same cluster as `kubeconfig`, reached as `user` with a bearer token (a ServiceAccount's)."""
    admin = yaml.safe_load(kubeconfig)
    cluster = admin["clusters"][0]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": user,
    }
    return yaml.safe_dump(doc, sort_keys=False)
