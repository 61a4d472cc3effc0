"""Start and stop the control-plane processes by pid, and nothing else.

Each process gets its own session (so closing the terminal that ran `cluster up` leaves the
cluster running) and its own log file. A stop is by recorded pid, and only after checking
that the pid still runs the executable we started: pids are recycled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    exe: str
    log: str
    # The command line and environment it started with, so it can be started again the same way.
    argv: tuple[str, ...] = ()
    env: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            exe=str(data["exe"]),
            log=str(data["log"]),
            argv=tuple(str(a) for a in data.get("argv") or ()),
            env=data.get("env"),
        )


def start_process(
    name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None
) -> ProcessRecord:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return ProcessRecord(
        name=name,
        pid=proc.pid,
        exe=str(Path(argv[0]).resolve()),
        log=str(log_path),
        argv=tuple(argv),
        env=env,
    )


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_running(record: ProcessRecord) -> bool:
    """True when `record.pid` is alive (not a zombie) and still runs `record.exe`."""
    _reap(record.pid)
    proc = Path(f"/proc/{record.pid}")
    try:
        stat = (proc / "stat").read_text()
        exe = os.readlink(proc / "exe")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return False
    return exe.removesuffix(" (deleted)") == record.exe


def stop_process(record: ProcessRecord, *, grace_seconds: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after the grace period; a pid that is no longer ours is left alone."""
    if not is_running(record):
        return
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not is_running(record):
            return
        time.sleep(0.05)
    if is_running(record):
        os.kill(record.pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while is_running(record) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
