"""Fixtures for the trainer's in-process tests: a clean environment (no torchrun or kubemaas
variables leaking in from the shell), logging restored after tests that configure it, and a
one-process gloo group for code that synchronizes ranks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from kubemaas_trainer import distributed
from kubemaas_trainer.launch_settings import PodEnv

TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        *TORCHRUN_VARS,
        *(var.value for var in PodEnv),
        distributed.LOG_ALL_RANKS_ENV,
        "KUBEMAAS_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def process_group() -> Iterator[distributed.DistributedContext]:
    """This test process as rank 0 of a one-process gloo group."""
    ctx = distributed.init(backend="gloo", configure_logging=False)
    try:
        yield ctx
    finally:
        distributed.shutdown()
