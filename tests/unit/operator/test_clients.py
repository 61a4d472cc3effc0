from __future__ import annotations

import json
from typing import Any, cast

import kubernetes
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_operator.clients import KubeClient, apply_patch_body


@given(st.text())
def test_apply_patch_bodies_read_back_the_same_as_json_and_as_yaml(value: str) -> None:
    manifest = {"metadata": {"name": "x", "annotations": {"note": value}}, "spec": {"args": [value]}}
    body = apply_patch_body(manifest)
    assert json.loads(body) == manifest
    assert yaml.safe_load(body.decode()) == manifest


def test_characters_beyond_the_bmp_and_controls_survive_as_yaml() -> None:
    manifest = {"args": ["\U00010000", "\x7f", "\x85", "\u2028", "\ufffe", "tab\tand\nnewline"]}
    body = apply_patch_body(manifest)
    assert b"\\ud800" not in body  # no surrogate pair escapes, which YAML refuses
    assert yaml.safe_load(body.decode()) == manifest


class Recorder(KubeClient):
    """A KubeClient whose transport records the request instead of sending it."""

    def __init__(self) -> None:
        super().__init__(cast(kubernetes.client.ApiClient, None))
        self.calls: list[tuple[str, str, list[tuple[str, str]], Any]] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        self.calls.append((method, path, query or [], body))
        return {"metadata": {}}


def test_a_scale_event_is_a_core_event_about_the_model_service() -> None:
    client = Recorder()
    involved = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "ModelService",
        "name": "mlp",
        "namespace": "ml",
        "uid": "u",
    }
    client.post_event(involved, reason="ScaledUp", message="scale up 1 -> 3: ...")
    [(method, path, _, event)] = client.calls
    assert (method, path) == ("POST", "/api/v1/namespaces/ml/events")
    assert event["involvedObject"] == involved
    assert (event["reason"], event["type"], event["message"]) == (
        "ScaledUp",
        "Normal",
        "scale up 1 -> 3: ...",
    )
    assert event["metadata"] == {"generateName": "mlp.", "namespace": "ml"}


def test_an_apply_can_use_another_field_manager_without_force() -> None:
    client = Recorder()
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ml"}}
    client.apply(manifest)
    client.apply(manifest, field_manager="handover", force=False)
    assert [query for _, _, query, _ in client.calls] == [
        [("fieldManager", "kubemaas"), ("force", "true")],
        [("fieldManager", "handover")],
    ]
