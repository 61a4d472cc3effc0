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
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final, NoReturn

import grpc

from kubemaas.logs import kv
from kubemaas_server.errors import ErrorKind, InferenceError
from kubemaas_server.metrics import UNKNOWN_MODEL, ServerMetrics
from kubemaas_server.model_config import DataType
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc
from kubemaas_server.repository import ModelRegistry, ServedModel
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

PLATFORM = "pytorch_torchscript"
OutputTensor = pb.ModelInferResponse.InferOutputTensor


def _invalid(message: str) -> InferenceError:
    return InferenceError(ErrorKind.INVALID_ARGUMENT, message)


def retry_metadata(error: InferenceError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries an error's retry hint, in whole milliseconds."""
    if error.retry_after_s is None:
        return ()
    milliseconds = str(max(1, math.ceil(error.retry_after_s * 1000.0)))
    return ((RETRY_AFTER_KEY, milliseconds), (RETRY_PUSHBACK_KEY, milliseconds))


async def _abort(context: Any, error: InferenceError) -> NoReturn:
    """Ends the RPC with the error's status; grpc.aio's `abort` always raises."""
    await context.abort(STATUS_CODES[error.kind], error.message, trailing_metadata=retry_metadata(error))
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
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=self._name, version=self._version, extensions=[])

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            ready = self.model_ready(request.name, request.version)
        except InferenceError as error:
            await _abort(context, error)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            model = self._registry.get(request.name)
            model.check_version(request.version)
            config, _queue = model.require_ready()
        except InferenceError as error:
            await _abort(context, error)
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
        model = self._registry.models.get(request.model_name)
        if model is None:
            self._metrics.count_failure(UNKNOWN_MODEL, "not_found")
            await _abort(
                context,
                InferenceError(
                    ErrorKind.NOT_FOUND, f"model {request.model_name!r} is not in this server's repository"
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
            await _abort(context, failure)
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
                    f"unknown input {tensor.name!r}; model {model.name!r} takes {list(model.inputs)}"
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
            wanted = []
            for requested in request.outputs:
                bound_output = model.outputs.get(requested.name)
                if bound_output is None:
                    raise _invalid(
                        f"unknown output {requested.name!r}; model {model.name!r} returns {list(model.outputs)}"
                    )
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
