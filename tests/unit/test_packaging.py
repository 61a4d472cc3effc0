"""The prefixed import packages ship in a wheel and import from a fresh environment."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["kubemaas", "kubemaas_server", "kubemaas_operator", "kubemaas_trainer", "kubemaas_cluster"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("kubemaas-*.whl")
    return built


def test_wheel_holds_every_prefixed_package_and_nothing_named_operator_or_server(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if "/" in name and not name.startswith("kubemaas-")}
    assert top_level == set(PACKAGES)
    assert "kubemaas_cluster/assets/kwok.yaml" in names


def test_wheel_imports_from_a_fresh_virtual_environment(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    code = "import " + ", ".join(PACKAGES) + "; import kubemaas_cluster.nodes; print('ok')"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr
    version = subprocess.run(
        [str(env_dir / "bin" / "kubemaas"), "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert version.returncode == 0, version.stderr
