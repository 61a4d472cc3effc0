"""Where kubemaas keeps what is slow to make: built binaries, pip wheels, cluster state.

Everything lives under the user's cache directory (`$XDG_CACHE_HOME/kubemaas`, else
`~/.cache/kubemaas`) so a fresh clone reuses the binaries a previous clone built.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubemaas"


def binaries_dir() -> Path:
    return cache_dir() / "bin"


def clusters_dir() -> Path:
    return cache_dir() / "clusters"


def default_state_dir(name: str = "default") -> Path:
    return clusters_dir() / name


def source_root() -> Path:
    """The checkout this package runs from (the Go build recipes live in its `hack/tools`)."""
    override = os.environ.get("KUBEMAAS_SOURCE_ROOT")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2]
