"""Operator settings, from flags first and the environment second.

| flag | environment | default |
| --- | --- | --- |
| `--default-image` | `KUBEMAAS_DEFAULT_IMAGE` | `ghcr.io/kubemaas/server:0.1.0` |
| `--default-trainer-image` | `KUBEMAAS_DEFAULT_TRAINER_IMAGE` | `ghcr.io/kubemaas/trainer:0.1.0` |
| `--gpu-resource` | `KUBEMAAS_GPU_RESOURCE` | `nvidia.com/gpu` |
| `--namespace NS` (repeatable) | `KUBEMAAS_NAMESPACES` (comma-separated) | all namespaces |
| `--dev-allow-file-uris` | `KUBEMAAS_DEV_ALLOW_FILE_URIS=1` | off |
| `--field-manager` | `KUBEMAAS_FIELD_MANAGER` | `kubemaas` |
| `--gpu-surge-grace-seconds` | `KUBEMAAS_GPU_SURGE_GRACE_SECONDS` | 15 |

Process-level settings (leader election) live in cli.py: `--standalone` / `KUBEMAAS_STANDALONE`,
`--lease-name` / `KUBEMAAS_LEASE_NAME`, `--lease-namespace` / `KUBEMAAS_LEASE_NAMESPACE`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/kubemaas/server:0.1.0"
DEFAULT_TRAINER_IMAGE = "ghcr.io/kubemaas/trainer:0.1.0"


@dataclass(frozen=True)
class OperatorSettings:
    default_image: str = DEFAULT_IMAGE
    # TrainingJobs that name no image; the trainer image carries torchrun and examples/.
    default_trainer_image: str = DEFAULT_TRAINER_IMAGE
    gpu_resource: str = "nvidia.com/gpu"
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    allow_file_uris: bool = False
    field_manager: str = "kubemaas"
    # Seconds a surge pod may stay unschedulable for lack of GPUs before the rollout switches
    # to replacing pods one at a time.
    gpu_surge_grace_seconds: float = 15.0


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def settings_from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    env = os.environ if env is None else env
    namespaces = tuple(ns.strip() for ns in env.get("KUBEMAAS_NAMESPACES", "").split(",") if ns.strip())
    return OperatorSettings(
        default_image=env.get("KUBEMAAS_DEFAULT_IMAGE") or DEFAULT_IMAGE,
        default_trainer_image=env.get("KUBEMAAS_DEFAULT_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
        gpu_resource=env.get("KUBEMAAS_GPU_RESOURCE") or "nvidia.com/gpu",
        namespaces=namespaces,
        allow_file_uris=truthy(env.get("KUBEMAAS_DEV_ALLOW_FILE_URIS")),
        field_manager=env.get("KUBEMAAS_FIELD_MANAGER") or "kubemaas",
        gpu_surge_grace_seconds=float(env.get("KUBEMAAS_GPU_SURGE_GRACE_SECONDS") or 15.0),
    )
