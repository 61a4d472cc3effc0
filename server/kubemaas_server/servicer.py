"""The gRPC edge: `inference.GRPCInferenceService` on grpc.aio.

Thin on purpose. It converts protobuf tensors to numpy arrays (raw contents with
`np.frombuffer`, no copy; typed contents field by field), hands them to the model's batch queue,
and writes the outputs back in the form the request used: raw when the request was raw, typed
when it was typed (raw again for FP16/BF16 outputs, which have no typed form). There is no
intermediate request object model. Errors below this layer are `InferenceError`s; this is the
only place that turns them into gRPC status codes.

A request the model's queue shed (`QUEUE_FULL`, `QUEUE_TIMEOUT`) ends UNAVAILABLE: gRPC's
"transient, retry with a backoff", the code gRPC retry policies list as retryable, and the one
Triton answers for a full queue (RESOURCE_EXHAUSTED here already means a message too large, which
no retry cures). The batcher's retry hint goes out as trailing metadata twice: `retry-after-ms`
for people and client code, and `grpc-retry-pushback-ms`, which gRPC's own retry machinery (a
service config `retryPolicy`) obeys as the delay before its next attempt.

Requests are decoded here too (`add_inference_service`), not by the generated registration:
grpc answers a body that does not parse as its message with UNKNOWN ("Unexpected DecodeError"),
which reads as a server bug; a request that is not a valid message is the caller's error,
INVALID_ARGUMENT. Status messages are capped in bytes, because gRPC clients drop an oversized
trailer and report their own RESOURCE_EXHAUSTED instead of the server's answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.message import DecodeError

from kubemaas.logs import kv
from kubemaas_server.errors import ErrorKind, InferenceError, quoted
from kubemaas_server.metrics import UNKNOWN_MODEL, ServerMetrics
from kubemaas_server.model_config import DataType
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc
from kubemaas_server.repository import BoundInput, ModelRegistry, ServedModel
from kubemaas_server.tensor_codec import decode_raw, decode_typed, encode_raw, encode_typed, has_typed_form

log = logging.getLogger(__name__)

STATUS_CODES: Final[dict[ErrorKind, grpc.StatusCode]] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.QUEUE_FULL: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.QUEUE_TIMEOUT: grpc.StatusCode.UNAVAILABLE,
}
RETRY_AFTER_KEY: Final = "retry-after-ms"
RETRY_PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"  # gRPC retry design A6, "server pushback"

# The longest status message sent, in UTF-8 bytes. gRPC percent-encodes it into the
# `grpc-message` trailer (up to 3 bytes per byte), and clients refuse trailers above 8 KiB by
# default; 2000 bytes stays below that with room for the other trailers.
MAX_STATUS_MESSAGE_BYTES: Final = 2000

PLATFORM = "pytorch_torchscript"
SERVICE: Final = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
OutputTensor = pb.ModelInferResponse.InferOutputTensor


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What a method receives instead of its request message when the body did not parse."""

    message_type: str
    reason: str

    def error(self) -> InferenceError:
        return InferenceError(
            ErrorKind.INVALID_ARGUMENT,
            f"the request is not a valid {self.message_type} message: {self.reason}",
        )


def request_decoder(message_class: Any) -> Callable[[bytes], Any]:
    """The request deserializer of one method: the message, or an `UndecodableRequest`."""
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return UndecodableRequest(name, str(error) or "it does not parse")

    return decode


def add_inference_service(servicer: InferenceServicer, server: Any) -> None:
    """Registers `servicer` on a grpc.aio server as the generated
    `add_GRPCInferenceServiceServicer_to_server` does, but with `request_decoder`s, so every method sees
    an undecodable body as an `UndecodableRequest` and answers it INVALID_ARGUMENT."""
    handlers = {}
    for method in SERVICE.methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request_decoder(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _invalid(message: str) -> InferenceError:
    return InferenceError(ErrorKind.INVALID_ARGUMENT, message)


def status_message(message: str) -> str:
    """`message`, cut to MAX_STATUS_MESSAGE_BYTES of UTF-8 (on a character boundary)."""
    encoded = message.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    return encoded[: MAX_STATUS_MESSAGE_BYTES - 4].decode("utf-8", errors="ignore") + " ..."


def retry_metadata(error: InferenceError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries an error's retry hint, in whole milliseconds."""
    if error.retry_after_s is None:
        return ()
    milliseconds = str(max(1, math.ceil(error.retry_after_s * 1000.0)))
    return ((RETRY_AFTER_KEY, milliseconds), (RETRY_PUSHBACK_KEY, milliseconds))


async def abort_with(context: Any, error: InferenceError) -> NoReturn:
    """Ends the RPC with the error's status; grpc.aio's `abort` always raises."""
    await context.abort(
        STATUS_CODES[error.kind], status_message(error.message), trailing_metadata=retry_metadata(error)
    )
    raise AssertionError("context.abort returned")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics, *, name: str, version: str) -> None:
        self._registry = registry
        self._metrics = metrics
        self._name = name
        self._version = version
        self.draining = False

    @property
    def ready(self) -> bool:
        """ServerReady, health `""` and the HTTP `/v2/health/ready`: every model loaded, not draining."""
        return not self.draining and self._registry.all_ready

    def model_ready(self, name: str, version: str = "") -> bool:
        """ModelReady and the HTTP model ready path; raises InferenceError NOT_FOUND for an
        unknown model or version."""
        model = self._registry.get(name)
        model.check_version(version)
        return model.ready and not self.draining

    async def ServerLive(self, request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        return pb.ServerMetadataResponse(name=self._name, version=self._version, extensions=[])

    async def ModelReady(self, request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        try:
            ready = self.model_ready(request.name, request.version)
        except InferenceError as error:
            await abort_with(context, error)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        try:
            model = self._registry.get(request.name)
            model.check_version(request.version)
            config, _queue = model.require_ready()
        except InferenceError as error:
            await abort_with(context, error)
        tensor_metadata = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=PLATFORM,
            inputs=[tensor_metadata(name=s.name, datatype=s.datatype.value, shape=config.reported_shape(s)) for s in config.inputs],
            outputs=[tensor_metadata(name=s.name, datatype=s.datatype.value, shape=config.reported_shape(s)) for s in config.outputs],
        )  # fmt: skip

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        if isinstance(request, UndecodableRequest):
            self._metrics.count_failure(UNKNOWN_MODEL, ErrorKind.INVALID_ARGUMENT.value)
            await abort_with(context, request.error())
        model = self._registry.models.get(request.model_name)
        if model is None:
            self._metrics.count_failure(UNKNOWN_MODEL, "not_found")
            await abort_with(
                context,
                InferenceError(
                    ErrorKind.NOT_FOUND,
                    f"model {quoted(request.model_name)} is not in this server's repository",
                ),
            )
        metrics = self._metrics.for_model(model.name)
        metrics.inflight.inc()
        failure: InferenceError | None = None
        try:
            response = await self._infer(model, request)
        except InferenceError as error:
            failure = error
        except Exception as error:  # a bug of ours must cost one request, never the server
            log.exception("unexpected error in ModelInfer", extra=kv(model=model.name))
            failure = InferenceError(ErrorKind.INTERNAL, f"{type(error).__name__}: {error}")
        finally:
            metrics.inflight.dec()
        if failure is not None:
            self._metrics.count_failure(model.name, failure.kind.value)
            await abort_with(context, failure)
        metrics.success.inc()
        metrics.request_duration.observe(time.perf_counter() - started)
        return response

    async def _infer(self, model: ServedModel, request: Any) -> Any:
        model.check_version(request.model_version)
        config, queue = model.require_ready()
        if self.draining:
            raise InferenceError(ErrorKind.UNAVAILABLE, "server is shutting down")
        tensors = request.inputs
        raw_contents = request.raw_input_contents
        raw = len(raw_contents) > 0
        if raw and len(raw_contents) != len(tensors):
            raise _invalid(
                f"raw_input_contents has {len(raw_contents)} entries for {len(tensors)} inputs; "
                "send one entry per input or use typed contents for all"
            )
        arrays: list[Any] = [None] * len(config.inputs)
        key: list[tuple[int, ...]] = [()] * len(config.inputs)
        rows = -1
        for position, tensor in enumerate(tensors):
            bound = model.inputs.get(tensor.name)
            if bound is None:
                raise _invalid(
                    f"unknown input {quoted(tensor.name)}; model {model.name!r} takes {list(model.inputs)}"
                )
            if arrays[bound.index] is not None:
                raise _invalid(f"input {tensor.name!r} given twice")
            shape = tuple(tensor.shape)
            tensor_rows = model.check_shape(bound.spec, tensor.datatype, shape)
            if rows == -1:
                rows = tensor_rows
            elif tensor_rows != rows:
                raise _invalid(f"input {tensor.name!r} has {tensor_rows} rows, an earlier input has {rows}")
            if raw:
                if tensor.HasField("contents"):
                    raise _invalid(f"input {tensor.name!r}: typed contents and raw_input_contents both given")
                arrays[bound.index] = decode_raw(
                    tensor.name, bound.spec.datatype, shape, raw_contents[position]
                )
            else:
                arrays[bound.index] = decode_typed(tensor.name, bound.spec.datatype, shape, tensor.contents)
            key[bound.index] = shape[1:] if config.batched else shape
        if len(tensors) != len(config.inputs):
            missing = [spec.name for spec, array in zip(config.inputs, arrays, strict=True) if array is None]
            raise _invalid(f"missing input(s) {missing}; model {model.name!r} takes {list(model.inputs)}")

        selected = list(model.outputs.values())
        if request.outputs:
            wanted: list[BoundInput] = []
            for requested in request.outputs:
                bound_output = model.outputs.get(requested.name)
                if bound_output is None:
                    raise _invalid(
                        f"unknown output {quoted(requested.name)}; model {model.name!r} returns "
                        f"{list(model.outputs)}"
                    )
                # A repeated output would be answered once per mention: refused, as a repeated
                # input is, so a request of a few bytes cannot ask for a response of megabytes.
                if bound_output in wanted:
                    raise _invalid(f"output {requested.name!r} requested twice")
                wanted.append(bound_output)
            selected = wanted

        results = await queue.submit(arrays, rows, tuple(key))

        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        typed = not raw and all(has_typed_form(bound.spec.datatype) for bound in selected)
        if typed:
            for bound in selected:
                array = results[bound.index]
                out = response.outputs.add(
                    name=bound.spec.name, datatype=bound.spec.datatype.value, shape=array.shape
                )
                encode_typed(bound.spec.datatype, array, out.contents)
        else:
            outputs = []
            contents = []
            for bound in selected:
                array = results[bound.index]
                spec = bound.spec
                outputs.append(OutputTensor(name=spec.name, datatype=spec.datatype.value, shape=array.shape))
                contents.append(
                    array.tobytes() if spec.datatype != DataType.BYTES else encode_raw(spec.datatype, array)
                )
            response.outputs.extend(outputs)
            response.raw_output_contents.extend(contents)
        return response
