"""Transport-neutral request errors.

The registry, the batcher and the runtime raise `InferenceError` with an `ErrorKind`; only the
servicer maps kinds onto gRPC status codes, so nothing below the transport imports grpc.

Two kinds say that a model's queue shed the request rather than that anything was wrong with
it: `QUEUE_FULL` (refused at admission) and `QUEUE_TIMEOUT` (admitted, but it waited longer
than the model's queue timeout and was never run). They carry `retry_after_s`, the batcher's
estimate of when the queue will have room again, and the metrics count them apart from the
other failures because their cure is capacity, not a fix in the client or the model.

Messages name what the client sent, but never echo it whole: `quoted` and `shape_text` cut a
client's strings and shapes to a few dozen characters. A status message travels in an HTTP/2
trailer, and gRPC clients drop trailers above 8 KiB (16 KiB at the latest) and report their own
RESOURCE_EXHAUSTED ("Stream removed") instead, so an echoed 10 000-character model name would
cost the caller the server's actual answer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

# How much of a client's string or shape an error message repeats.
MAX_QUOTED_CHARS: Final = 64
MAX_SHOWN_DIMS: Final = 8


class ErrorKind(enum.Enum):
    """How a request failed; the value is the request's `outcome` label in the metrics."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    INTERNAL = "internal"
    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"


class InferenceError(Exception):
    """A request failed; `kind` says how, the message says why in terms the caller can act on.

    `retry_after_s`, when set, is how long the caller should wait before sending the request
    again (the servicer passes it on as trailing metadata)."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


def quoted(value: str) -> str:
    """A client-supplied string for an error message: `repr`-quoted, and cut to
    MAX_QUOTED_CHARS characters with its full length noted when it is longer."""
    if len(value) <= MAX_QUOTED_CHARS:
        return repr(value)
    return f"{value[:MAX_QUOTED_CHARS]!r}... ({len(value)} characters)"


def shape_text(shape: Sequence[int]) -> str:
    """A client-supplied shape for an error message: `[1, 16]`, or its first MAX_SHOWN_DIMS
    dimensions and the count when it has more."""
    if len(shape) <= MAX_SHOWN_DIMS:
        return str(list(shape))
    shown = ", ".join(str(dim) for dim in shape[:MAX_SHOWN_DIMS])
    return f"[{shown}, ...] ({len(shape)} dimensions)"
