"""The V2 API through independent real clients: tritonclient, raw stubs, health, reflection."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc

from .conftest import RunningServer
from .models import KIND_TYPES


def forward(served: RunningServer, model: str, *inputs: torch.Tensor, version: str = "1") -> object:
    """The model's own forward pass, loaded straight from the repository."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(served.repository / model / version / "model.pt"))
    with torch.inference_mode():
        return module(*inputs)


def test_server_is_live_and_reports_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    metadata = client.get_server_metadata()
    assert metadata.name == "kubemaas"
    assert metadata.version


def test_server_is_not_ready_while_one_model_is_broken(client: triton.InferenceServerClient) -> None:
    assert not client.is_server_ready()


def test_model_metadata_reports_the_signature_with_batch_dimension(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("ints")
    assert metadata.name == "ints"
    assert list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "INT64", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("doubled", "INT64", [-1, 4]),
        ("total", "INT64", [-1, 1]),
    ]


def test_unbatched_model_metadata_keeps_its_declared_shape(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("rowsum")
    assert [list(t.shape) for t in metadata.inputs] == [[-1, 3]]
    assert [list(t.shape) for t in metadata.outputs] == [[3]]


def test_highest_version_is_served(client: triton.InferenceServerClient, served: RunningServer) -> None:
    assert list(client.get_model_metadata("mlp").versions) == ["2"]
    assert client.is_model_ready("mlp", "2")
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    data = triton.InferInput("input", [2, 16], "FP32").set_data_from_numpy(x)
    result = client.infer("mlp", [data], model_version="2").as_numpy("output")
    expected = forward(served, "mlp", torch.from_numpy(x), version="2")
    np.testing.assert_allclose(result, expected.numpy(), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
    older = forward(served, "mlp", torch.from_numpy(x), version="1")
    assert not np.allclose(result, older.numpy())  # type: ignore[attr-defined]


def test_raw_fp32_inference_equals_the_models_forward_and_echoes_the_id(
    client: triton.InferenceServerClient, served: RunningServer
) -> None:
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    data = triton.InferInput("input", [5, 16], "FP32").set_data_from_numpy(x)
    result = client.infer("mlp", [data], request_id="req-42")
    assert result.get_response().id == "req-42"
    assert result.get_response().raw_output_contents  # a raw request gets a raw answer
    expected = forward(served, "mlp", torch.from_numpy(x), version="2")
    np.testing.assert_allclose(result.as_numpy("output"), expected.numpy(), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]


def test_typed_fp32_request_gets_a_typed_answer(
    stub: pb_grpc.GRPCInferenceServiceStub, served: RunningServer
) -> None:
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 16])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("output", "FP32", [3, 4])
    got = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(3, 4)
    expected = forward(served, "mlp", torch.from_numpy(x), version="2")
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined,arg-type]
    assert response.id == "typed"


def test_int64_raw_inference_with_two_outputs(client: triton.InferenceServerClient) -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    data = triton.InferInput("x", [3, 4], "INT64").set_data_from_numpy(x)
    result = client.infer("ints", [data])
    np.testing.assert_array_equal(result.as_numpy("doubled"), x * 2 + 1)
    np.testing.assert_array_equal(result.as_numpy("total"), x.sum(axis=1, keepdims=True))


def test_requested_outputs_are_the_only_ones_returned(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.int64)
    data = triton.InferInput("x", [1, 4], "INT64").set_data_from_numpy(x)
    result = client.infer("ints", [data], outputs=[triton.InferRequestedOutput("total")])
    assert [o.name for o in result.get_response().outputs] == ["total"]
    np.testing.assert_array_equal(result.as_numpy("total"), [[4]])
    assert result.as_numpy("doubled") is None


def test_int64_typed_inference(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="ints")
    request.inputs.add(name="x", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend(
        [1, -2, 2**40, 0]
    )
    response = stub.ModelInfer(request)
    by_name = {o.name: list(o.contents.int64_contents) for o in response.outputs}
    assert by_name == {"doubled": [3, -3, 2**41 + 1, 1], "total": [2**40 - 1]}


def test_bytes_raw_inference(client: triton.InferenceServerClient, served: RunningServer) -> None:
    words = ["kube", "maas", "\u00e9t\u00e9"]
    text = np.array([[word.encode()] for word in words], dtype=object)
    data = triton.InferInput("text", [3, 1], "BYTES").set_data_from_numpy(text)
    result = client.infer("text", [data])
    expected = forward(served, "text", words)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.as_numpy("length"), expected["length"].numpy())  # type: ignore[index]
    upper = expected["upper"]  # type: ignore[index]
    assert result.as_numpy("upper").reshape(-1).tolist() == [word.encode() for word in upper]
    assert upper[:2] == ["KUBE", "MAAS"]


def test_bytes_typed_inference(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(
        [b"a", b"bcd"]
    )
    response = stub.ModelInfer(request)
    by_name = {o.name: o for o in response.outputs}
    assert list(by_name["length"].contents.int64_contents) == [1, 3]
    assert list(by_name["upper"].contents.bytes_contents) == [b"A", b"BCD"]
    assert list(by_name["upper"].shape) == [2, 1]


def test_every_fixed_size_datatype_round_trips_raw(client: triton.InferenceServerClient) -> None:
    inputs = []
    expected = {}
    for datatype in KIND_TYPES:
        if datatype == "BOOL":
            array = np.array([[True, False]])
            expected[datatype] = ~array
        elif datatype == "BF16":
            continue  # numpy has no bfloat16: covered with raw bytes below
        else:
            array = np.array([[1, 2]], dtype=triton_to_np_dtype(datatype))
            expected[datatype] = array + 1
        inputs.append(
            triton.InferInput(f"in_{datatype.lower()}", [1, 2], datatype).set_data_from_numpy(array)
        )
    bf16 = triton.InferInput("in_bf16", [1, 2], "BF16")
    bf16._raw_content = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    inputs.append(bf16)
    result = client.infer("kinds", inputs)
    for datatype, want in expected.items():
        got = result.as_numpy(f"out_{datatype.lower()}")
        assert got.dtype == want.dtype, datatype
        np.testing.assert_array_equal(got, want)
    response = result.get_response()
    index = [o.name for o in response.outputs].index("out_bf16")
    raw = np.frombuffer(response.raw_output_contents[index], dtype=np.int16)
    assert torch.from_numpy(raw.copy()).view(torch.bfloat16).tolist() == [2.5, -1.0]


def test_unbatched_model_takes_variable_dimension(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for rows in (1, 4):
        x = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3)
        request = pb.ModelInferRequest(model_name="rowsum")
        request.inputs.add(name="x", datatype="FP64", shape=[rows, 3])
        request.raw_input_contents.append(x.tobytes())
        response = stub.ModelInfer(request)
        assert list(response.outputs[0].shape) == [3]
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0]), x.sum(axis=0))


def test_broken_model_is_not_ready_with_its_reason_while_others_serve(
    client: triton.InferenceServerClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert not client.is_model_ready("broken")
    assert client.is_model_ready("ints")
    request = pb.ModelInferRequest(model_name="broken")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(request)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "broken" in failure.value.details()
    assert "not ready" in failure.value.details()
    # The reason names what went wrong at load: here, a file that is not a TorchScript archive.
    assert "RuntimeError" in failure.value.details() or "zip" in failure.value.details().lower()
    with pytest.raises(InferenceServerException) as metadata_failure:
        client.get_model_metadata("broken")
    assert metadata_failure.value.status() == "StatusCode.UNAVAILABLE"


def test_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient) -> None:
    calls: tuple[Callable[[], object], ...] = (
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_metadata("mlp", "1"),
        lambda: client.is_model_ready("nope"),
    )
    for call in calls:
        with pytest.raises(InferenceServerException) as failure:
            call()
        assert failure.value.status() == "StatusCode.NOT_FOUND"


def test_health_reports_each_model_and_the_server(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="mlp")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service="broken")).status == not_serving
    # The whole server is not ready while a model of its repository failed to load.
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == not_serving
    with pytest.raises(grpc.RpcError) as failure:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_current_status(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    stream = health.Watch(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
    try:
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


@pytest.mark.parametrize(("method", "streaming"), [("Check", False), ("Watch", True)])
def test_health_answers_an_undecodable_body_invalid_argument(
    channel: grpc.Channel, method: str, streaming: bool
) -> None:
    path = f"/grpc.health.v1.Health/{method}"
    body = b"\x0a\x05ab"  # field 1 claims 5 bytes, 2 follow
    with pytest.raises(grpc.RpcError) as failure:
        if streaming:
            list(
                channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                    body, timeout=10
                )
            )
        else:
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(body, timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid grpc.health.v1.HealthCheckRequest message" in (failure.value.details() or "")
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="mlp")).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_reflection_answers_an_undecodable_body_invalid_argument(channel: grpc.Channel) -> None:
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as failure:
        list(call(iter([b"\x0a\x05ab"]), timeout=10))  # field 1 claims 5 bytes, 2 follow
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid grpc.reflection.v1alpha.ServerReflectionRequest message" in (
        failure.value.details() or ""
    )


def test_reflection_lists_the_inference_health_and_reflection_services(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {service.name for service in responses[0].list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
    (described,) = list(reflection.ServerReflectionInfo(iter([request])))
    assert described.file_descriptor_response.file_descriptor_proto  # grpcurl can describe the API


def test_metrics_endpoint_counts_requests_by_model_and_outcome(
    client: triton.InferenceServerClient, served: RunningServer
) -> None:
    import urllib.request

    data = triton.InferInput("x", [1, 4], "INT64").set_data_from_numpy(np.zeros((1, 4), dtype=np.int64))
    client.infer("ints", [data])
    with pytest.raises(InferenceServerException):
        client.infer(
            "ints", [triton.InferInput("y", [1, 4], "INT64").set_data_from_numpy(np.zeros((1, 4), np.int64))]
        )
    text = urllib.request.urlopen(served.metrics_url, timeout=10).read().decode()
    assert 'kubemaas_requests_total{model="ints",outcome="success"}' in text
    assert 'kubemaas_requests_total{model="ints",outcome="invalid_argument"}' in text
    assert 'kubemaas_inflight_requests{model="ints"} 0.0' in text
    assert 'kubemaas_model_ready{model="broken"} 0.0' in text
    for name in (
        "request_duration_seconds",
        "queue_duration_seconds",
        "compute_duration_seconds",
        "batch_size",
    ):
        assert f'kubemaas_{name}_count{{model="ints"}}' in text


def test_tritonclient_typed_contents_get_a_typed_answer(
    client: triton.InferenceServerClient, served: RunningServer
) -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 7
    data = triton.InferInput("input", [2, 16], "FP32")
    data._get_tensor().contents.fp32_contents.extend(x.reshape(-1).tolist())  # typed, no raw bytes
    result = client.infer("mlp", [data])
    assert not result.get_response().raw_output_contents
    output = result.get_output("output")
    got = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))
    expected = forward(served, "mlp", torch.from_numpy(x), version="2")
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
