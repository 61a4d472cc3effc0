from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_operator.clients import apply_patch_body


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
