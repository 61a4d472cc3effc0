"""TLS and mutual TLS on the gRPC port, proven with real certificates and real clients.

Every certificate is made here, at test time, with `cryptography`: a CA, a server certificate
for 127.0.0.1/localhost, a client certificate from that CA, and a second, unrelated CA with a
client certificate of its own. The servers run in-process as in conftest (and once as the real
`kubemaas serve` process), bound to 127.0.0.1, and every client connects to 127.0.0.1 alone.
Each channel keeps a subchannel pool of its own, so every client makes its own handshake rather
than riding on a connection an earlier client opened.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubemaas_server import cli
from kubemaas_server.proto import grpc_service_pb2 as pb
from kubemaas_server.proto import grpc_service_pb2_grpc as pb_grpc
from kubemaas_server.tls import TlsConfigError, TlsFiles, TlsMode, load_server_tls
from tests.certs import Authority, Issued

from .conftest import RunningServer, http_get, start_server, stop_server
from .models import build_busy_repository
from .test_shutdown import free_port

RPC_TIMEOUT_S = 10.0
# A fresh connection per channel: otherwise grpc shares one between channels of equal settings.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    other_ca: Authority  # unrelated to the server
    other_client: Issued  # issued by other_ca

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(cert=self.server.cert, key=self.server.key)

    @property
    def mutual(self) -> TlsFiles:
        return TlsFiles(cert=self.server.cert, key=self.server.key, client_ca=self.ca.cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "ca")
    other_ca = Authority(directory, "other-ca")
    return Pki(
        ca=ca,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        other_ca=other_ca,
        other_client=other_ca.issue("other-client", server=False),
    )


# --- servers and clients ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busy_repository(tmp_path_factory.mktemp("busy-repository"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, busy_repository: Path) -> Iterator[RunningServer]:
    running = start_server(busy_repository, tls=load_server_tls(pki.tls), torch_threads=1)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, busy_repository: Path) -> Iterator[RunningServer]:
    running = start_server(busy_repository, tls=load_server_tls(pki.mutual), torch_threads=1)
    yield running
    stop_server(running)


def credentials(trust: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=trust.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def server_ready(channel: grpc.Channel) -> bool:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready)


def echo(channel: grpc.Channel, value: float) -> float:
    """One ModelInfer on `busy`, whose output equals its input."""
    request = pb.ModelInferRequest(model_name="busy", id="tls")
    request.inputs.add(name="rounds", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[value]], dtype=np.float32).tobytes())
    response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=RPC_TIMEOUT_S)
    assert response.id == "tls"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("out", "FP32", [1, 1])]
    return float(np.frombuffer(response.raw_output_contents[0], dtype=np.float32)[0])


def assert_serves(target: str, creds: grpc.ChannelCredentials) -> None:
    with grpc.secure_channel(target, creds, options=OWN_CONNECTION) as channel:
        assert server_ready(channel)
        assert echo(channel, 3.0) == 3.0


def assert_refused(target: str, creds: grpc.ChannelCredentials | None) -> None:
    """No connection comes up (creds None: a plaintext client), so the call fails UNAVAILABLE."""
    if creds is None:
        channel = grpc.insecure_channel(target, options=OWN_CONNECTION)
    else:
        channel = grpc.secure_channel(target, creds, options=OWN_CONNECTION)
    with channel, pytest.raises(grpc.RpcError) as caught:
        server_ready(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value


# --- TLS --------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_gets_ready_and_a_correct_inference(
    tls_server: RunningServer, pki: Pki
) -> None:
    with grpc.secure_channel(tls_server.target, credentials(pki.ca), options=OWN_CONNECTION) as channel:
        assert server_ready(channel)
        assert echo(channel, 7.5) == 7.5
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_with_ssl_reaches_the_tls_server(tls_server: RunningServer, pki: Pki) -> None:
    with triton.InferenceServerClient(
        tls_server.target, ssl=True, root_certificates=str(pki.ca.cert)
    ) as client:
        assert client.is_server_ready()
        x = np.array([[2.0], [5.0]], dtype=np.float32)
        data = triton.InferInput("rounds", [2, 1], "FP32").set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("busy", [data]).as_numpy("out"), x)


def test_tls_server_refuses_a_client_that_trusts_another_ca(tls_server: RunningServer, pki: Pki) -> None:
    assert_refused(tls_server.target, credentials(pki.other_ca))
    assert_serves(tls_server.target, credentials(pki.ca))


def test_tls_server_refuses_a_plaintext_client(tls_server: RunningServer, pki: Pki) -> None:
    assert_refused(tls_server.target, None)
    assert_serves(tls_server.target, credentials(pki.ca))


def test_tls_server_without_client_ca_accepts_a_client_certificate_too(
    tls_server: RunningServer, pki: Pki
) -> None:
    assert_serves(tls_server.target, credentials(pki.ca, pki.other_client))


def test_metrics_port_stays_plain_http_beside_tls(tls_server: RunningServer) -> None:
    with urllib.request.urlopen(tls_server.metrics_url, timeout=5) as response:
        assert b"kubemaas_model_ready" in response.read()
    # What kubelet's httpGet probes ask, since its grpc probes cannot speak TLS.
    assert http_get(tls_server.server.metrics_port, "/v2/health/ready").status == 200


# --- mutual TLS -------------------------------------------------------------------------------


def test_mtls_client_with_a_ca_signed_certificate_is_served(mtls_server: RunningServer, pki: Pki) -> None:
    assert_serves(mtls_server.target, credentials(pki.ca, pki.client))


def test_tritonclient_with_a_client_certificate_reaches_the_mtls_server(
    mtls_server: RunningServer, pki: Pki
) -> None:
    with triton.InferenceServerClient(
        mtls_server.target,
        ssl=True,
        root_certificates=str(pki.ca.cert),
        private_key=str(pki.client.key),
        certificate_chain=str(pki.client.cert),
    ) as client:
        assert client.is_server_ready()
        x = np.array([[4.0]], dtype=np.float32)
        data = triton.InferInput("rounds", [1, 1], "FP32").set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("busy", [data]).as_numpy("out"), x)


def test_mtls_server_refuses_a_client_without_a_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    assert_refused(mtls_server.target, credentials(pki.ca))
    assert_serves(mtls_server.target, credentials(pki.ca, pki.client))


def test_mtls_server_refuses_a_client_certificate_from_another_ca(
    mtls_server: RunningServer, pki: Pki
) -> None:
    assert_refused(mtls_server.target, credentials(pki.ca, pki.other_client))
    assert_serves(mtls_server.target, credentials(pki.ca, pki.client))


def test_mtls_server_refuses_plaintext_and_untrusting_clients(mtls_server: RunningServer, pki: Pki) -> None:
    assert_refused(mtls_server.target, None)
    assert_refused(mtls_server.target, credentials(pki.other_ca, pki.client))
    assert_serves(mtls_server.target, credentials(pki.ca, pki.client))


def test_mtls_server_keeps_serving_through_a_run_of_refused_handshakes(
    mtls_server: RunningServer, pki: Pki
) -> None:
    for _ in range(5):
        assert_refused(mtls_server.target, credentials(pki.ca))
        assert_refused(mtls_server.target, credentials(pki.ca, pki.other_client))
    assert_serves(mtls_server.target, credentials(pki.ca, pki.client))


# --- loading the files ------------------------------------------------------------------------


def test_loader_reports_the_mode_and_keeps_the_key_out_of_its_repr(pki: Pki) -> None:
    tls = load_server_tls(pki.tls)
    mutual = load_server_tls(pki.mutual)
    assert (tls.mode, mutual.mode) == (TlsMode.TLS, TlsMode.MUTUAL)
    assert tls.subject == "CN=localhost"
    assert not tls.expired()
    assert tls.expired(now=tls.not_after + dt.timedelta(seconds=1))
    key_pem = pki.server.key.read_bytes()
    for loaded in (tls, mutual):
        assert loaded.key == key_pem
        assert_no_key_material(repr(loaded), pki.server.key)
        assert_no_key_material(str(loaded.log_fields()), pki.server.key)
    assert mutual.log_fields()["tls_client_ca"] == str(pki.ca.cert)


def test_loader_accepts_a_certificate_file_with_its_chain(pki: Pki, tmp_path: Path) -> None:
    chain = tmp_path / "chain.crt"
    chain.write_bytes(pki.server.cert.read_bytes() + pki.ca.cert.read_bytes())
    loaded = load_server_tls(TlsFiles(cert=chain, key=pki.server.key))
    assert loaded.cert_chain == chain.read_bytes()


def key_body(path: Path) -> list[str]:
    """The base64 lines of a PEM key: none may reach a message."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def assert_no_key_material(text: str, key: Path) -> None:
    for line in key_body(key):
        assert line not in text


@dataclass(frozen=True)
class Files:
    """Good and bad files for the loader's error cases."""

    pki: Pki
    missing: Path
    directory: Path
    empty: Path
    garbage: Path
    encrypted: Path


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> Files:
    empty = tmp_path / "empty.pem"
    empty.write_text("\n")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return Files(pki, tmp_path / "missing.pem", tmp_path, empty, garbage, encrypted)


# Each case: the files given, and how the message must start (it names the file and the problem).
BadCase: TypeAlias = Callable[[Files], tuple[TlsFiles, str]]
BAD_CASES: dict[str, BadCase] = {
    "missing cert": lambda f: (
        TlsFiles(f.missing, f.pki.server.key),
        f"server certificate {f.missing}: cannot read it (No such file or directory)",
    ),
    "cert is a directory": lambda f: (
        TlsFiles(f.directory, f.pki.server.key),
        f"server certificate {f.directory}: cannot read it (Is a directory)",
    ),
    "empty cert": lambda f: (
        TlsFiles(f.empty, f.pki.server.key),
        f"server certificate {f.empty}: the file is empty",
    ),
    "cert not PEM": lambda f: (
        TlsFiles(f.garbage, f.pki.server.key),
        f"server certificate {f.garbage}: not a PEM certificate",
    ),
    "key file given as cert": lambda f: (
        TlsFiles(f.pki.server.key, f.pki.server.key),
        f"server certificate {f.pki.server.key}: not a PEM certificate",
    ),
    "missing key": lambda f: (
        TlsFiles(f.pki.server.cert, f.missing),
        f"server key {f.missing}: cannot read it (No such file or directory)",
    ),
    "key not PEM": lambda f: (
        TlsFiles(f.pki.server.cert, f.garbage),
        f"server key {f.garbage}: not a PEM private key",
    ),
    "cert file given as key": lambda f: (
        TlsFiles(f.pki.server.cert, f.pki.server.cert),
        f"server key {f.pki.server.cert}: not a PEM private key",
    ),
    "encrypted key": lambda f: (
        TlsFiles(f.pki.server.cert, f.encrypted),
        f"server key {f.encrypted}: the key is encrypted",
    ),
    "key of another certificate": lambda f: (
        TlsFiles(f.pki.server.cert, f.pki.client.key),
        f"server key {f.pki.client.key} does not match the certificate {f.pki.server.cert}",
    ),
    "missing client CA": lambda f: (
        TlsFiles(f.pki.server.cert, f.pki.server.key, f.missing),
        f"client CA {f.missing}: cannot read it (No such file or directory)",
    ),
    "client CA not PEM": lambda f: (
        TlsFiles(f.pki.server.cert, f.pki.server.key, f.garbage),
        f"client CA {f.garbage}: not a PEM certificate",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES.values()), ids=list(BAD_CASES))
def test_loader_names_the_file_and_the_problem(case: BadCase, files: Files) -> None:
    tls_files, expected = case(files)
    with pytest.raises(TlsConfigError) as caught:
        load_server_tls(tls_files)
    message = str(caught.value)
    assert message.startswith(expected), message
    error = caught.value  # no exception of cryptography, which might quote the file, rides along
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    for key in (files.pki.server.key, files.pki.client.key):
        assert_no_key_material(message, key)


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--tls-cert", "server.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "server.key"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.crt"], "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"),
        (["--tls-client-ca", "ca.crt", "--tls-key", "k"], "--tls-cert and --tls-key go together"),
    ],
)
def test_half_a_tls_configuration_is_a_usage_error(
    flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--model-repository", str(tmp_path), *flags])
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


def test_tls_flags_become_tls_files() -> None:
    parser = cli.build_parser()
    plain = parser.parse_args(["--model-repository", "r"])
    assert cli.tls_files(parser, plain) is None
    args = parser.parse_args(
        ["--model-repository", "r", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]
    )
    assert cli.tls_files(parser, args) == TlsFiles(Path("c.pem"), Path("k.pem"), Path("ca.pem"))


def test_serve_with_a_bad_tls_file_exits_2_naming_the_file(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "tls.key"
    argv = [
        "--model-repository",
        str(tmp_path),
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(missing),
    ]
    assert cli.main(argv) == 2
    assert (
        capsys.readouterr().err
        == f"kubemaas serve: server key {missing}: cannot read it (No such file or directory)\n"
    )


def test_kubemaas_serve_process_speaks_mutual_tls(pki: Pki, busy_repository: Path) -> None:
    """The flags reach the port: the real command, its log line, and no key material in its output."""
    port = free_port()
    command = [
        sys.executable, "-m", "kubemaas", "serve", "--model-repository", str(busy_repository),
        "--grpc-port", str(port), "--metrics-port", "-1", "--torch-threads", "1", "--grace-seconds", "5",
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca.cert),
    ]  # fmt: skip
    env = {**os.environ, "KUBEMAAS_LOG_LEVEL": "INFO"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with grpc.secure_channel(target, credentials(pki.ca, pki.client)) as channel:
            while True:
                assert child.poll() is None, child.stdout.read() if child.stdout else ""
                try:
                    if server_ready(channel):
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
            assert echo(channel, 1.0) == 1.0
        assert_refused(target, credentials(pki.ca))
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, output
    serving = next(line for line in output.splitlines() if "msg=serving" in line)
    assert "tls=mtls" in serving
    assert f"tls_client_ca={pki.ca.cert}" in serving
    assert_no_key_material(output, pki.server.key)
