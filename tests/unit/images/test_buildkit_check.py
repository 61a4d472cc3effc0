"""BuildKit itself reads the Dockerfiles: they parse, `docker build --check` has nothing to say,
and BuildKit sees the same stages as dockerlint.

No Docker engine runs here, but BuildKit's Dockerfile frontend is a Go library: images/check
wraps its parser and build checks in a small command, built once (Go module proxy, the Go
toolchain on the machine, as for the local control plane) into the user's cache directory.
Without a new enough Go the tests skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubemaas_cluster.paths import binaries_dir
from tests.unit.images import dockerlint
from tests.unit.images.test_dockerfiles import CUDA_GOOD, GOOD, IMAGES, IMAGES_DIR, ROOT

CHECK_DIR = ROOT / "images" / "check"
RECIPE = ("go.mod", "go.sum", "main.go")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.fixture(scope="module")
def buildkit_check() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the Go toolchain to build images/check (BuildKit's Dockerfile checks)")
    reported = subprocess.run([go, "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout
    have = re.fullmatch(r"go(\d+\.\d+(?:\.\d+)?)\S*\s*", reported)
    match = re.search(r"^go (\S+)$", (CHECK_DIR / "go.mod").read_text(), re.MULTILINE)
    assert match, "images/check/go.mod names no Go version"
    if have is None or _version(have.group(1)) < _version(match.group(1)):
        pytest.skip(f"images/check needs Go >= {match.group(1)}, this machine has {reported.strip()}")
    recipe = hashlib.sha256(reported.encode())
    for name in RECIPE:
        recipe.update((CHECK_DIR / name).read_bytes())
    binary = binaries_dir() / f"buildkit-check-{recipe.hexdigest()[:16]}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
        env = {
            **os.environ,
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=readonly",
            "GOWORK": "off",
            "CGO_ENABLED": "0",
        }
        built = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."],
            cwd=CHECK_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert built.returncode == 0, built.stderr
        partial.replace(binary)
    return binary


def run_check(binary: Path, *files: Path) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run([str(binary), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def stages_seen_by_dockerlint(text: str) -> list[dict[str, Any]]:
    return [
        {"name": stage.name or "", "base": stage.base, "commands": len(stage.instructions)}
        for stage in dockerlint.parse(text).stages
    ]


def test_buildkit_parses_every_image_and_its_checks_find_nothing(buildkit_check: Path) -> None:
    files = [IMAGES_DIR / name for name in sorted(IMAGES)]
    status, reports = run_check(buildkit_check, *files)
    assert [(r["file"], r.get("error"), r["warnings"]) for r in reports] == [
        (str(f), None, []) for f in files
    ]
    assert status == 0


def test_buildkit_sees_the_stages_dockerlint_sees(buildkit_check: Path, tmp_path: Path) -> None:
    samples = {name: (IMAGES_DIR / name).read_text() for name in IMAGES} | {
        "good": GOOD,
        "cuda-good": CUDA_GOOD,
    }
    for name, text in samples.items():
        path = tmp_path / name.replace("/", "_")
        path.write_text(text)
        _, (report,) = run_check(buildkit_check, path)
        assert report["stages"] == stages_seen_by_dockerlint(text), name


def test_the_clean_examples_of_the_linter_tests_are_clean_for_buildkit_too(
    buildkit_check: Path, tmp_path: Path
) -> None:
    (tmp_path / "good").write_text(GOOD)
    (tmp_path / "cuda-good").write_text(CUDA_GOOD)
    status, reports = run_check(buildkit_check, tmp_path / "good", tmp_path / "cuda-good")
    assert [r["warnings"] for r in reports] == [[], []]
    assert status == 0


def test_the_buildkit_checks_do_report_what_is_wrong(buildkit_check: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11.15-slim-bookworm as builder\n"
        "FROM builder\n"
        "ENV CACHE=$UNDEFINED_THING\n"
        "ENTRYPOINT kubemaas\n"
    )
    status, (report,) = run_check(buildkit_check, bad)
    assert status == 1
    assert [(w["rule"], w["line"]) for w in report["warnings"]] == [
        ("FromAsCasing", 1),
        ("UndefinedVar", 3),
        ("JSONArgsRecommended", 4),
    ]
    broken = tmp_path / "broken"
    broken.write_text("FROM python:3.11.15-slim-bookworm\nCOPY --from=nowhere-stage-or-image\n")
    status, (report,) = run_check(buildkit_check, broken)
    assert status == 1 and report["error"]
