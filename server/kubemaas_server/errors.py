"""Transport-neutral request errors.

The registry, the batcher and the runtime raise `InferenceError` with an `ErrorKind`; only the
servicer maps kinds onto gRPC status codes, so nothing below the transport imports grpc.

Two kinds say that a model's queue shed the request rather than that anything was wrong with
it: `QUEUE_FULL` (refused at admission) and `QUEUE_TIMEOUT` (admitted, but it waited longer
than the model's queue timeout and was never run). They carry `retry_after_s`, the batcher's
estimate of when the queue will have room again, and the metrics count them apart from the
other failures because their cure is capacity, not a fix in the client or the model.
"""

from __future__ import annotations

import enum


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
