"""`kubemaas train`: the torchrun command line built from the pod environment, and the CLI edge
(dry run, errors, the exec) with the exec itself replaced by a recorder."""

from __future__ import annotations

import os
import shlex
import sys
from typing import NoReturn

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubemaas_trainer import launcher
from kubemaas_trainer.launch_settings import LaunchConfigError, LaunchSettings
from kubemaas_trainer.launcher import script_arguments, torchrun_argv

PY = "/opt/venv/bin/python"
SETTINGS = LaunchSettings(
    workers=2, procs_per_worker=4, node_rank=1, master_addr="job-workers-0.job-workers", master_port=29500
)


def test_torchrun_gets_the_pods_place_in_the_job() -> None:
    assert torchrun_argv(SETTINGS, ["python", "train.py", "--lr", "0.1"], python=PY) == [
        PY,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=1",
        "--master-addr=job-workers-0.job-workers",
        "--master-port=29500",
        "--rdzv-backend=static",
        "--max-restarts=0",
        "train.py",
        "--lr",
        "0.1",
    ]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python", "train.py", "--epochs", "3"], ["train.py", "--epochs", "3"]),
        (["python3", "/app/train.py"], ["/app/train.py"]),
        (["python3.11", "train.py"], ["train.py"]),
        ([PY, "train.py", "-v"], ["train.py", "-v"]),
        (["python", "-m", "pkg.train", "--lr", "1"], ["--module", "pkg.train", "--lr", "1"]),
        # interpreter options torchrun would drop: run the command as given
        (["python", "-u", "train.py"], ["--no-python", "python", "-u", "train.py"]),
        (["python", "-c", "print(1)"], ["--no-python", "python", "-c", "print(1)"]),
        # an interpreter named by a path other than torchrun's own: respected
        (["/usr/bin/python3", "train.py"], ["--no-python", "/usr/bin/python3", "train.py"]),
        (["bash", "-c", "echo hi"], ["--no-python", "bash", "-c", "echo hi"]),
        (["./train.sh"], ["--no-python", "./train.sh"]),
        (["python"], ["--no-python", "python"]),
        (["pythonic", "x.py"], ["--no-python", "pythonic", "x.py"]),
    ],
)
def test_python_commands_become_torchrun_scripts_and_others_run_verbatim(
    command: list[str], expected: list[str]
) -> None:
    assert script_arguments(command, python=PY) == expected


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(LaunchConfigError, match="no training command given"):
        script_arguments([], python=PY)


@given(st.lists(st.text(min_size=1), min_size=1))
def test_a_non_python_command_reaches_the_worker_unchanged(command: list[str]) -> None:
    result = script_arguments(["/bin/sh", *command], python=PY)
    assert result == ["--no-python", "/bin/sh", *command]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = launcher.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_prints_the_command_with_the_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(launcher, "visible_cuda_devices", lambda: 0)
    monkeypatch.setenv("KUBEMAAS_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("KUBEMAAS_MASTER_ADDR", "w-0.w")
    code, out, _ = run_main(
        ["--dry-run", "--procs-per-worker", "3", "--", "python", "train.py", "--dry-run"], capsys
    )
    assert code == 0
    words = shlex.split(out)
    assert words[0] == "KUBEMAAS_BACKEND=gloo"
    assert words[2:4] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in words and "--node-rank=1" in words and "--master-addr=w-0.w" in words
    assert words[-2:] == ["train.py", "--dry-run"]  # after --, it belongs to the script


def test_nccl_is_chosen_when_the_pod_sees_gpus(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(launcher, "visible_cuda_devices", lambda: 2)
    code, out, _ = run_main(["--dry-run", "--procs-per-worker", "2", "--", "python", "t.py"], capsys)
    assert code == 0 and out.startswith("KUBEMAAS_BACKEND=nccl ")
    code, _, err = run_main(["--dry-run", "--procs-per-worker", "3", "--", "python", "t.py"], capsys)
    assert code == 2 and "need as many GPUs, but this pod sees 2" in err


def test_forcing_gloo_skips_the_gpu_probe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_probe() -> NoReturn:
        raise AssertionError("probed the GPUs although gloo was asked for")

    monkeypatch.setattr(launcher, "visible_cuda_devices", no_probe)
    code, out, _ = run_main(["--dry-run", "--backend", "gloo", "--", "python", "t.py"], capsys)
    assert code == 0 and out.startswith("KUBEMAAS_BACKEND=gloo ")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["--", "python", "t.py"],
            {"KUBEMAAS_WORKERS": "2", "KUBEMAAS_MASTER_ADDR": "w0"},
            "JOB_COMPLETION_INDEX is not set",
        ),
        (["--", "python", "t.py"], {"KUBEMAAS_WORKERS": "x"}, "KUBEMAAS_WORKERS='x' is not an integer"),
        (["--dry-run"], {}, "no training command given"),
        (["--"], {}, "no training command given"),
        (["python", "t.py"], {}, "unexpected argument(s) python t.py: put the training command after --"),
    ],
)
def test_configuration_errors_exit_2_with_the_reason(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(launcher, "visible_cuda_devices", lambda: 0)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert message in err
    assert out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "--procs-per-worker" in out and "KUBEMAAS_WORKERS" in out


def test_main_execs_torchrun_with_the_child_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    class Executed(Exception):
        pass

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> NoReturn:
        calls.append((path, argv, env))
        raise Executed

    monkeypatch.setattr(launcher, "visible_cuda_devices", lambda: 0)
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setenv("KUBEMAAS_RESTART_COUNT", "1")
    with pytest.raises(Executed):
        launcher.main(["--checkpoint-dir", "/ckpt", "--", "python", "train.py"])
    ((path, argv, env),) = calls
    assert path == argv[0] == sys.executable
    assert argv[-1] == "train.py"
    assert env["KUBEMAAS_BACKEND"] == "gloo"
    assert env["KUBEMAAS_CHECKPOINT_DIR"] == "/ckpt"
    assert env["KUBEMAAS_RESTART_COUNT"] == "1"
    assert "launching torchrun" in capsys.readouterr().err


def test_an_interpreter_that_cannot_run_exits_127(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_execve(path: str, argv: list[str], env: dict[str, str]) -> NoReturn:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(launcher, "visible_cuda_devices", lambda: 0)
    monkeypatch.setattr(os, "execve", failing_execve)
    code, _, err = run_main(["--", "python", "train.py"], capsys)
    assert code == 127 and "No such file or directory" in err


def test_the_gpu_probe_answers_without_a_driver() -> None:
    assert launcher.visible_cuda_devices() >= 0
