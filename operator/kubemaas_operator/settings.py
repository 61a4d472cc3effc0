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
| | `KUBEMAAS_AUTOSCALE_PERIOD_SECONDS` | 2 |
| | `KUBEMAAS_AUTOSCALE_STABLE_WINDOW_SECONDS` | 60 |
| | `KUBEMAAS_AUTOSCALE_PANIC_WINDOW_SECONDS` | 6 |

The autoscaler's period and windows are not in the CRD (docs/autoscaling.md explains the
defaults); the environment overrides them so tests can watch a whole scale-up and scale-down
in seconds instead of minutes.

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
    # The concurrency autoscaler: one scrape-and-decide round per period, per ModelService.
    autoscale_period_seconds: float = 2.0
    autoscale_stable_window_seconds: float = 60.0
    autoscale_panic_window_seconds: float = 6.0


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
        autoscale_period_seconds=_positive(env, "KUBEMAAS_AUTOSCALE_PERIOD_SECONDS", 2.0),
        autoscale_stable_window_seconds=_positive(env, "KUBEMAAS_AUTOSCALE_STABLE_WINDOW_SECONDS", 60.0),
        autoscale_panic_window_seconds=_positive(env, "KUBEMAAS_AUTOSCALE_PANIC_WINDOW_SECONDS", 6.0),
    )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds from `name`, or `default` when unset; a bad value is refused."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value
