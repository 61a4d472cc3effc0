"""The pod environment -> LaunchSettings rules: defaults only where unambiguous, flags over env,
and an error that names the setting for everything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_trainer.launch_settings import (
    DEFAULT_MASTER_PORT,
    Backend,
    LaunchConfigError,
    LaunchSettings,
    Overrides,
    PodEnv,
    check_devices,
    child_environment,
    choose_backend,
    settings_from_environment,
)

OPERATOR_ENV = {
    "KUBEMAAS_WORKERS": "3",
    "KUBEMAAS_PROCS_PER_WORKER": "2",
    "JOB_COMPLETION_INDEX": "1",
    "KUBEMAAS_MASTER_ADDR": "mnist-workers-0.mnist-workers.default.svc",
    "KUBEMAAS_MASTER_PORT": "29501",
    "KUBEMAAS_OUTPUT_DIR": "/output",
    "KUBEMAAS_CHECKPOINT_DIR": "/output/.checkpoints",
    "KUBEMAAS_RESTART_COUNT": "2",
}


def test_the_operators_environment_is_read_in_full() -> None:
    assert settings_from_environment(OPERATOR_ENV) == LaunchSettings(
        workers=3,
        procs_per_worker=2,
        node_rank=1,
        master_addr="mnist-workers-0.mnist-workers.default.svc",
        master_port=29501,
        output_dir="/output",
        checkpoint_dir="/output/.checkpoints",
        restart_count=2,
        backend=None,
    )


def test_an_empty_environment_means_one_local_worker() -> None:
    settings = settings_from_environment({})
    assert (settings.workers, settings.procs_per_worker, settings.node_rank) == (1, 1, 0)
    assert (settings.master_addr, settings.master_port) == ("127.0.0.1", DEFAULT_MASTER_PORT)
    assert settings.output_dir is None and settings.checkpoint_dir is None and settings.restart_count == 0


def test_empty_strings_count_as_unset() -> None:
    env = dict.fromkeys(OPERATOR_ENV, "")
    assert settings_from_environment(env) == settings_from_environment({})


def test_flags_override_the_environment() -> None:
    overrides = Overrides(
        workers=2, procs_per_worker=1, node_rank=0, master_addr="127.0.0.9", master_port=1234, restart_count=0
    )
    settings = settings_from_environment(OPERATOR_ENV, overrides)
    assert (settings.workers, settings.procs_per_worker, settings.node_rank) == (2, 1, 0)
    assert (settings.master_addr, settings.master_port, settings.restart_count) == ("127.0.0.9", 1234, 0)
    assert settings.output_dir == "/output"  # not overridden: still from the environment


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KUBEMAAS_WORKERS": "two"}, "KUBEMAAS_WORKERS='two' is not an integer"),
        ({"KUBEMAAS_WORKERS": "0"}, "KUBEMAAS_WORKERS must be >= 1, got 0"),
        ({"KUBEMAAS_PROCS_PER_WORKER": "-1"}, "KUBEMAAS_PROCS_PER_WORKER must be >= 1"),
        ({"KUBEMAAS_MASTER_PORT": "70000"}, "KUBEMAAS_MASTER_PORT must be a TCP port"),
        ({"KUBEMAAS_MASTER_PORT": "http"}, "KUBEMAAS_MASTER_PORT='http' is not an integer"),
        ({"KUBEMAAS_RESTART_COUNT": "-3"}, "KUBEMAAS_RESTART_COUNT must be >= 0"),
        ({"KUBEMAAS_BACKEND": "mpi"}, "KUBEMAAS_BACKEND='mpi' is not a backend"),
        ({"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX=1 is out of range for 1 worker(s)"),
        ({"KUBEMAAS_MASTER_ADDR": "pod 0"}, "contains whitespace"),
    ],
)
def test_invalid_values_are_refused_with_the_variable_named(env: dict[str, str], expected: str) -> None:
    with pytest.raises(LaunchConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        settings_from_environment(env)


def test_a_multi_worker_job_needs_the_node_rank() -> None:
    env = {"KUBEMAAS_WORKERS": "2", "KUBEMAAS_MASTER_ADDR": "w0"}
    with pytest.raises(LaunchConfigError, match="JOB_COMPLETION_INDEX is not set but the job has 2 workers"):
        settings_from_environment(env)


def test_a_multi_worker_job_needs_the_master_address() -> None:
    env = {"KUBEMAAS_WORKERS": "2", "JOB_COMPLETION_INDEX": "0"}
    with pytest.raises(LaunchConfigError, match="KUBEMAAS_MASTER_ADDR is not set"):
        settings_from_environment(env)


def test_a_bad_flag_is_named_as_the_flag() -> None:
    with pytest.raises(LaunchConfigError, match="--node-rank=5 is out of range for 3 worker"):
        settings_from_environment(OPERATOR_ENV, Overrides(node_rank=5))
    with pytest.raises(LaunchConfigError, match="--workers must be >= 1"):
        settings_from_environment({}, Overrides(workers=0))


def test_backend_follows_the_gpus_unless_asked_for() -> None:
    assert choose_backend(None, cuda_devices=0) == Backend.GLOO
    assert choose_backend(None, cuda_devices=4) == Backend.NCCL
    assert choose_backend(Backend.GLOO, cuda_devices=4) == Backend.GLOO
    assert settings_from_environment({"KUBEMAAS_BACKEND": " NCCL "}).backend == Backend.NCCL


def test_nccl_needs_a_gpu_per_local_process() -> None:
    settings = settings_from_environment({"KUBEMAAS_PROCS_PER_WORKER": "4"})
    check_devices(settings, Backend.GLOO, cuda_devices=0)
    check_devices(settings, Backend.NCCL, cuda_devices=4)
    with pytest.raises(LaunchConfigError, match="4 processes per worker with backend nccl need as many GPUs"):
        check_devices(settings, Backend.NCCL, cuda_devices=2)
    with pytest.raises(LaunchConfigError, match="sees none"):
        check_devices(settings, Backend.NCCL, cuda_devices=0)


def test_the_child_sees_the_resolved_settings_and_backend() -> None:
    settings = settings_from_environment(OPERATOR_ENV, Overrides(master_port=4000))
    env = child_environment(settings, Backend.GLOO, {"PATH": "/bin", "KUBEMAAS_MASTER_PORT": "29501"})
    assert env["PATH"] == "/bin"
    assert env[PodEnv.MASTER_PORT.value] == "4000"
    assert env[PodEnv.BACKEND.value] == "gloo"
    assert env[PodEnv.CHECKPOINT_DIR.value] == "/output/.checkpoints"
    assert all(type(key) is str for key in env)


@given(
    workers=st.integers(1, 64),
    procs=st.integers(1, 16),
    data=st.data(),
    port=st.integers(1, 65535),
    restarts=st.integers(0, 100),
)
def test_the_child_environment_parses_back_to_the_same_settings(
    workers: int, procs: int, data: st.DataObject, port: int, restarts: int
) -> None:
    settings = LaunchSettings(
        workers=workers,
        procs_per_worker=procs,
        node_rank=data.draw(st.integers(0, workers - 1)),
        master_addr="worker-0.job",
        master_port=port,
        restart_count=restarts,
        backend=Backend.GLOO,
    )
    env = child_environment(settings, Backend.GLOO, {})
    env[PodEnv.NODE_RANK.value] = str(settings.node_rank)  # Kubernetes' own variable
    assert settings_from_environment(env) == settings
