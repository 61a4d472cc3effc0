from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubemaas_cluster import binaries
from kubemaas_cluster.binaries import ToolchainMissing, load_groups


def write_recipes(root: Path) -> None:
    group_dir = root / "hack" / "tools" / "demo"
    group_dir.mkdir(parents=True)
    (group_dir / "go.mod").write_text("module example.com/demo\n")
    (group_dir / "go.sum").write_text("")
    manifest = {
        "groups": [
            {
                "name": "demo",
                "dir": "hack/tools/demo",
                "version": "v1.2.3",
                "packages": {"demo": "example.com/demo/cmd/demo"},
            }
        ]
    }
    (root / "hack" / "tools" / "tools.json").write_text(json.dumps(manifest))


def test_groups_come_from_the_committed_manifest() -> None:
    groups = {g.name: g for g in load_groups()}
    assert {"kubernetes", "etcd", "kwok", "helm"} <= set(groups)
    assert {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"} <= set(
        groups["kubernetes"].packages
    )
    for group in groups.values():
        assert (group.directory / "go.sum").exists(), f"{group.name} must pin its modules with a go.sum"


def test_a_changed_recipe_gets_a_new_output_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_recipes(tmp_path)
    (group,) = load_groups(tmp_path)
    before = group.output_dir()
    (tmp_path / "hack" / "tools" / "demo" / "go.sum").write_text("example.com/x v1.0.0 h1:abc=\n")
    assert group.output_dir() != before
    assert str(before).startswith(str(tmp_path / "cache" / "kubemaas" / "bin" / "demo-v1.2.3-"))


def test_missing_go_says_what_to_install_or_how_to_use_an_own_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    write_recipes(tmp_path)
    (group,) = load_groups(tmp_path)
    with pytest.raises(ToolchainMissing) as err:
        binaries.build_group(group, progress=lambda _: None)
    assert "Go" in str(err.value) and "KUBECONFIG" in str(err.value)
