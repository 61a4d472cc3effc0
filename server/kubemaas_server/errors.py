"""Transport-neutral request errors.

The registry, the batcher and the runtime raise `InferenceError` with an `ErrorKind`; only the
servicer maps kinds onto gRPC status codes, so nothing below the transport imports grpc.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    INTERNAL = "internal"


class InferenceError(Exception):
    """A request failed; `kind` says how, the message says why in terms the caller can act on."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
