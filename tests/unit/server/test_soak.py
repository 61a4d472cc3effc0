"""`kubemaas serve` as a real process holds its memory and file descriptors flat under a long
mix of valid and malformed requests from several clients that keep reconnecting.

The soak itself is `benchmarks/soak_server.py` (what `make soak` runs at 100,000 requests): here
it runs at KUBEMAAS_SOAK_REQUESTS requests (20,000 by default, about 30 s on two shared cores)
and prints its summary as JSON, which this test holds to the bounds below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SOAK = ROOT / "benchmarks" / "soak_server.py"
REQUESTS = int(os.environ.get("KUBEMAAS_SOAK_REQUESTS", "20000"))
# Growth allowed between the baseline mark (20 % of the requests, after warm-up) and the end.
MAX_RSS_GROWTH_MIB = 20
MAX_FD_GROWTH = 10


def run_soak() -> dict[str, Any]:
    command = [
        sys.executable, str(SOAK), "--requests", str(REQUESTS), "--json", "--no-write",
        "--max-rss-growth-mib", str(MAX_RSS_GROWTH_MIB), "--max-fd-growth", str(MAX_FD_GROWTH),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    assert lines, f"the soak printed nothing (exit {result.returncode}):\n{result.stderr[-4000:]}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def test_server_memory_and_descriptors_stay_flat_under_a_long_mixed_load() -> None:
    summary = run_soak()
    curve = [(done, round(rss / 1024, 1), fds) for done, rss, fds in summary["curve"]]
    where = f"(requests answered, RSS MiB, open FDs): {curve}"

    assert summary["requests"] == REQUESTS
    assert summary["unexpected_count"] == 0, summary["unexpected"]
    # Every kind of request in the mix was sent and answered.
    assert all(sum(codes.values()) > 0 for codes in summary["by_kind"].values()), summary["by_kind"]
    assert summary["answers"].get("OK", 0) > REQUESTS // 3, summary["answers"]
    assert summary["reconnects"] > 0

    rss, fds = summary["rss_kib"], summary["fds"]
    assert rss["end"] - rss["baseline"] <= MAX_RSS_GROWTH_MIB * 1024, where
    assert fds["end"] - fds["baseline"] <= MAX_FD_GROWTH, where
    # Once the clients have gone, no descriptor of theirs stays open.
    assert fds["after"] - fds["start"] <= MAX_FD_GROWTH, (fds, where)
    assert summary["failures"] == []
