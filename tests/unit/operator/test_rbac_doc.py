"""docs/operator.md explains every grant of the shipped role, and grants nothing it does not explain."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def shipped_grants() -> set[tuple[str, str, str]]:
    grants = set()
    for doc in yaml.safe_load_all((ROOT / "manifests" / "base" / "rbac" / "operator.yaml").read_text()):
        for rule in (doc or {}).get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.add((group or "(core)", resource, verb))
    return grants


def documented_grants() -> set[tuple[str, str, str]]:
    text = (ROOT / "docs" / "operator.md").read_text()
    table = text.split("### Why each grant", 1)[1].split("\n## ", 1)[0]
    grants = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("group", "---"):
            continue
        resources = re.sub(r"\(.*?\)", "", cells[1])
        for group in cells[0].split(", "):
            for resource in resources.split(","):
                for verb in cells[2].split(", "):
                    grants.add((group.strip(), resource.strip(), verb.strip()))
    return grants


def test_every_grant_is_explained_and_every_explanation_is_granted() -> None:
    assert shipped_grants() == documented_grants()
