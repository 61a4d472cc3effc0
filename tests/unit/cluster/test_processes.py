from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from kubemaas_cluster.processes import ProcessRecord, is_running, start_process, stop_process


def wait_for_output(log: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(0.02)


def test_started_process_runs_logs_and_stops_by_pid(tmp_path: Path) -> None:
    record = start_process(
        "echo",
        [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"],
        tmp_path / "p.log",
    )
    try:
        assert is_running(record)
        wait_for_output(tmp_path / "p.log", "hello")
    finally:
        stop_process(record, grace_seconds=5)
    assert not is_running(record)
    assert "hello" in (tmp_path / "p.log").read_text()


def test_a_recycled_pid_running_another_program_is_never_signalled(tmp_path: Path) -> None:
    sleeper = shutil.which("sleep")
    assert sleeper
    record = start_process("sleep", [sleeper, "30"], tmp_path / "s.log")
    try:
        impostor = replace(record, exe="/usr/bin/not-what-we-started")
        assert not is_running(impostor)
        stop_process(impostor)
        assert is_running(record), "a pid whose executable differs from the record must be left alone"
    finally:
        stop_process(record)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    record = start_process("stubborn", [sys.executable, "-c", code], tmp_path / "x.log")
    wait_for_output(tmp_path / "x.log", "up")
    stop_process(record, grace_seconds=0.5)
    assert not is_running(record)


def test_records_round_trip_through_json() -> None:
    record = ProcessRecord(name="etcd", pid=42, exe="/bin/etcd", log="/tmp/etcd.log")
    assert ProcessRecord.from_json(record.to_json()) == record
