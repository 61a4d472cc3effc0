"""The proto under protos/ is the single source of truth: the committed generated code matches
it, and it is wire-compatible with the V2 protocol as tritonclient (an independent
implementation) defines it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.grpc.service_pb2 as triton_pb

from kubemaas_server import protogen
from kubemaas_server.proto import grpc_service_pb2 as pb

GENERATED = Path(protogen.__file__).parent / "proto"


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    written = protogen.generate(protogen.DEFAULT_PROTO_DIR, tmp_path)
    assert written
    for path in written:
        committed = GENERATED / path.name
        assert committed.exists(), f"{path.name} is not committed; run `make protos`"
        assert committed.read_text() == path.read_text(), f"{path.name} is stale; run `make protos`"


def test_generated_code_imports_from_the_package_and_keeps_a_private_descriptor_pool() -> None:
    grpc_module = (GENERATED / "grpc_service_pb2_grpc.py").read_text()
    assert "from kubemaas_server.proto import grpc_service_pb2" in grpc_module
    assert "\nimport grpc_service_pb2" not in grpc_module
    # tritonclient registers the same protocol in the default pool; both import in one process.
    assert triton_pb.ModelInferRequest.DESCRIPTOR.file.pool is not pb.DESCRIPTOR.pool


def fields(descriptor: object) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}  # type: ignore[attr-defined]


MESSAGES = [
    "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
    "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse",
    "ModelMetadataRequest", "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse",
    "InferParameter", "InferTensorContents",
]  # fmt: skip


@pytest.mark.parametrize("name", MESSAGES)
def test_message_matches_the_protocol_field_for_field(name: str) -> None:
    ours = pb.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_pb.DESCRIPTOR.message_types_by_name[name]
    assert ours.full_name == theirs.full_name == f"inference.{name}"
    assert fields(ours) == fields(theirs)
    for nested in ours.nested_types:
        assert fields(nested) == fields(theirs.nested_types_by_name[nested.name]), nested.full_name
    assert [o.name for o in ours.oneofs] == [o.name for o in theirs.oneofs]


def test_service_has_the_protocol_methods_with_their_types() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    assert {m.name for m in ours.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    }  # fmt: skip


def test_a_request_serialized_by_tritonclient_parses_identically_here() -> None:
    request = triton_pb.ModelInferRequest(model_name="m", model_version="3", id="x")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    tensor.parameters["p"].int64_param = 7
    request.outputs.add(name="out")
    request.raw_input_contents.append(b"\x00" * 24)
    request.parameters["q"].double_param = 0.5
    ours = pb.ModelInferRequest.FromString(request.SerializeToString())
    assert ours.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)
    assert ours.inputs[0].parameters["p"].int64_param == 7
    assert ours.parameters["q"].double_param == 0.5
