"""Build the pinned upstream binaries (etcd, Kubernetes, KWOK, helm) from Go modules.

The recipes are small Go modules under `hack/tools/<group>/` with committed go.sum files;
`hack/tools/tools.json` lists, per group, the version and the main packages. Built binaries
go to `<cache>/bin/<group>-<version>-<recipe hash>/` so a fresh clone of the same recipes
reuses them, and a changed recipe never reuses a stale build. Go's own build cache
(`~/.cache/go-build`) makes a rebuild after a recipe change incremental.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubemaas_cluster.paths import binaries_dir, source_root

Progress = Callable[[str], None]


class ToolchainMissing(RuntimeError):
    """No Go toolchain: say what to install, or how to use a cluster of one's own."""


@dataclass(frozen=True)
class ToolGroup:
    name: str
    directory: Path
    version: str
    packages: dict[str, str]
    ldflags: tuple[str, ...]
    built_as: dict[str, str]
    go_env: dict[str, str]

    def recipe_hash(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            digest.update((self.directory / name).read_bytes())
        digest.update(json.dumps([self.packages, self.ldflags], sort_keys=True).encode())
        return digest.hexdigest()[:10]

    def output_dir(self) -> Path:
        return binaries_dir() / f"{self.name}-{self.version}-{self.recipe_hash()}"

    def is_built(self) -> bool:
        out = self.output_dir()
        return all(os.access(out / binary, os.X_OK) for binary in self.packages)


def load_groups(root: Path | None = None) -> list[ToolGroup]:
    root = root or source_root()
    manifest = root / "hack" / "tools" / "tools.json"
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest} not found: `kubemaas cluster` builds its binaries from the recipes in a source "
            "checkout; run it from a clone of kubemaas (or set KUBEMAAS_SOURCE_ROOT)"
        )
    data = json.loads(manifest.read_text())
    return [
        ToolGroup(
            name=group["name"],
            directory=root / group["dir"],
            version=group["version"],
            packages=dict(group["packages"]),
            ldflags=tuple(group.get("ldflags", [])),
            built_as=dict(group.get("built_as", {})),
            go_env=dict(data.get("go", {}).get("go_env", {})),
        )
        for group in data["groups"]
    ]


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolchainMissing(
            "the Go toolchain is not installed, and the local control plane is built from Go modules.\n"
            "  Install Go 1.26 or newer (Debian: `apt-get install golang`), then run the command again;\n"
            "  or point KUBECONFIG at a cluster of your own (with Docker: `make kind-up`, see the README)."
        )
    return go


def _stream_progress(proc: subprocess.Popen[str], label: str, progress: Progress, tail: list[str]) -> None:
    assert proc.stderr is not None
    compiled = 0
    last_report = time.monotonic()
    for line in proc.stderr:
        line = line.rstrip()
        tail.append(line)
        del tail[:-40]
        if line and not line.startswith(("#", " ")) and " " not in line:
            compiled += 1
        now = time.monotonic()
        if now - last_report >= 15:
            progress(f"building {label}: {compiled} packages compiled so far (last: {line[:80]})")
            last_report = now


def build_group(group: ToolGroup, progress: Progress) -> Path:
    out = group.output_dir()
    if group.is_built():
        return out
    go = _go()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{group.name}-", dir=out.parent))
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=readonly",
        "CGO_ENABLED": "0",
        "GOWORK": "off",
        **group.go_env,
    }
    argv = [
        go,
        "build",
        "-v",
        "-trimpath",
        "-ldflags",
        " ".join(["-s", "-w", *group.ldflags]),
        "-o",
        f"{staging}/",
    ]
    argv += list(group.packages.values())
    label = f"{group.name} {group.version}"
    progress(f"building {label} ({', '.join(group.packages)}) from Go modules; a cold build takes minutes")
    started = time.monotonic()
    tail: list[str] = []
    proc = subprocess.Popen(
        argv, cwd=group.directory, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    reader = threading.Thread(target=_stream_progress, args=(proc, label, progress, tail), daemon=True)
    reader.start()
    rc = proc.wait()
    reader.join()
    if rc != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"go build of {label} failed (exit {rc}):\n" + "\n".join(tail[-25:]))
    # Go names each binary after its package directory; rename to the names the manifest uses.
    for binary, package in group.packages.items():
        built = staging / group.built_as.get(binary, package.rstrip("/").rsplit("/", 1)[-1])
        if built.name != binary:
            built.rename(staging / binary)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    progress(f"built {label} in {time.monotonic() - started:.0f}s -> {out}")
    return out


def ensure_binaries(progress: Progress | None = None) -> dict[str, Path]:
    """Build whatever is missing and return {binary name: path} for every tool."""
    report = progress or (lambda message: print(f"[kubemaas] {message}", file=sys.stderr, flush=True))
    paths: dict[str, Path] = {}
    for group in load_groups():
        out = build_group(group, report)
        paths.update({binary: out / binary for binary in group.packages})
    return paths


def find_binaries() -> dict[str, Path] | None:
    """The built binaries if every group is built, else None (never builds)."""
    paths: dict[str, Path] = {}
    for group in load_groups():
        if not group.is_built():
            return None
        paths.update({binary: group.output_dir() / binary for binary in group.packages})
    return paths
