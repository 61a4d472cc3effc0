"""Process-group setup: torchrun's environment read right, the backend rule, rank-aware logging,
and a script that runs without torchrun still getting a working (one-process) group."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist

from kubemaas_trainer import distributed
from kubemaas_trainer.distributed import DistributedError, placement_from_environment, resolve_backend
from kubemaas_trainer.launch_settings import Backend


def test_torchruns_environment_places_the_process() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}
    where = placement_from_environment(env)
    assert (where.rank, where.world_size, where.local_rank, where.local_world_size, where.node_rank) == (
        5,
        8,
        1,
        4,
        1,
    )
    assert where.launched


def test_without_torchrun_the_process_is_rank_0_of_1() -> None:
    where = placement_from_environment({})
    assert (where.rank, where.world_size, where.local_rank, where.launched) == (0, 1, 0, False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is out of range for WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not an integer"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK=1 is out of range"),
    ],
)
def test_a_broken_torchrun_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(DistributedError, match=message):
        placement_from_environment(env)


def test_backend_argument_then_launcher_env_then_hardware() -> None:
    assert resolve_backend(None, {}, cuda_available=False) == Backend.GLOO
    assert resolve_backend(None, {}, cuda_available=True) == Backend.NCCL
    assert resolve_backend(None, {"KUBEMAAS_BACKEND": "gloo"}, cuda_available=True) == Backend.GLOO
    assert resolve_backend("gloo", {"KUBEMAAS_BACKEND": "nccl"}, cuda_available=True) == Backend.GLOO


def test_nccl_without_cuda_is_refused_with_the_fix() -> None:
    with pytest.raises(DistributedError, match="KUBEMAAS_BACKEND=gloo to train on CPU"):
        resolve_backend(None, {"KUBEMAAS_BACKEND": "nccl"}, cuda_available=False)
    with pytest.raises(DistributedError, match="not a backend"):
        resolve_backend("smoke-signals", {}, cuda_available=False)


def test_a_plain_python_run_gets_a_one_process_group() -> None:
    with distributed.session(configure_logging=False) as ctx:
        assert dist.is_initialized()
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
        assert ctx.backend == Backend.GLOO and ctx.device == torch.device("cpu")
        # DDP and collectives work with no torchrun around
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
        model(torch.ones(2, 3)).sum().backward()
        distributed.barrier()
        assert distributed.broadcast_from_main({"step": 7}) == {"step": 7}
    assert not dist.is_initialized()


def test_the_group_is_left_even_when_training_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), distributed.session(configure_logging=False):
        raise RuntimeError("boom")
    assert not dist.is_initialized()
    distributed.shutdown()  # a second shutdown is harmless


def test_restart_count_comes_from_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEMAAS_RESTART_COUNT", "3")
    with distributed.session(configure_logging=False) as ctx:
        assert ctx.restart_count == 3


def test_helpers_work_outside_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.broadcast_from_main(41) == 41
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (3, 4, False)


def emit_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    log = logging.getLogger("kubemaas.test")
    log.info("info line")
    log.warning("warning line")
    return capsys.readouterr().err.splitlines()


def test_only_rank_0_logs_info_and_every_line_names_its_rank(capsys: pytest.CaptureFixture[str]) -> None:
    distributed.setup_rank_logging(0)
    lines = emit_lines(capsys)
    assert len(lines) == 2 and all("rank=0" in line for line in lines)

    distributed.setup_rank_logging(1)
    (line,) = emit_lines(capsys)
    assert "warning line" in line and "rank=1" in line


def test_every_rank_can_be_made_to_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBEMAAS_LOG_ALL_RANKS", "1")
    distributed.setup_rank_logging(2)
    assert len(emit_lines(capsys)) == 2
    monkeypatch.setenv("KUBEMAAS_LOG_LEVEL", "ERROR")
    distributed.setup_rank_logging(0)
    assert emit_lines(capsys) == []


def test_an_explicit_rank_field_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    from kubemaas.logs import kv

    distributed.setup_rank_logging(0)
    logging.getLogger("kubemaas.test").info("peer failed", extra=kv(rank=5))
    err = capsys.readouterr().err
    assert "rank=5" in err and "rank=0" not in err
