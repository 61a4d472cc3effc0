"""Structured, quiet-by-default logging shared by every kubemaas process.

One line per decision, `key=value` pairs, level from `KUBEMAAS_LOG_LEVEL` (default WARNING for
CLIs that print their own progress, INFO for long-running daemons that ask for it).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


class KeyValueFormatter(logging.Formatter):
    """Renders `ts level logger msg k=v ...`; extra fields come from `extra={"kv": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "kv", {}) or {}
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{key}={_quote(str(value))}" for key, value in fields.items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(value: str) -> str:
    if value and not any(ch in value for ch in ' "=\n'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(default_level: str = "WARNING") -> None:
    level = os.environ.get("KUBEMAAS_LOG_LEVEL", default_level).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def kv(**fields: Any) -> dict[str, dict[str, Any]]:
    """`log.info("scaled", extra=kv(model=name, replicas=3))`."""
    return {"kv": fields}
