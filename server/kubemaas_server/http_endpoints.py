"""The plain HTTP port of the model server (`--metrics-port`): Prometheus metrics and the KServe
V2 HTTP health endpoints, on a small stdlib `ThreadingHTTPServer` in daemon threads.

    GET /metrics                                     the Prometheus exposition
    GET /v2/health/live                              200 while the process serves
    GET /v2/health/ready                             200 when the server is ready, else 503
    GET /v2/models/{name}[/versions/{version}]/ready 200 ready, 503 not ready, 404 no such model

Why a second, plaintext port carries health as well as metrics: the gRPC port may speak TLS,
and kubelet's `grpc:` probes speak plaintext only, so they cannot probe it; `httpGet` probes can
probe this port, which stays plain HTTP whatever the gRPC port does. Prometheus inside the
cluster scrapes it as before.

This module is transport only. It knows nothing of gRPC, models or batching: readiness comes
in as callables, which the server wires to the very state the gRPC ServerReady, ModelReady and
grpc.health answers come from, so the HTTP answers turn 503 the moment a graceful shutdown
starts. The callables run in this server's threads; they only read flags and must not block.

Health answers have empty bodies (the V2 protocol says the status code is the answer); a 404
names what was not found in one line of text. Request bodies are never read. Requests are not
logged; a handler that fails logs the exception and answers 500.
"""

from __future__ import annotations

import gzip
import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from kubemaas.logs import kv
from kubemaas_server.errors import ErrorKind, InferenceError

log = logging.getLogger(__name__)

ServerReadiness: TypeAlias = Callable[[], bool]
# (model name, version; "" for the served one) -> ready. Raises InferenceError NOT_FOUND for a
# model or version the server does not have.
ModelReadiness: TypeAlias = Callable[[str, str], bool]
Answer: TypeAlias = tuple[HTTPStatus, list[tuple[str, str]], bytes]  # status, headers, body

METRICS_PATH = "/metrics"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
MODELS_PREFIX = "/v2/models/"

# A client that opens a connection and sends nothing holds one thread only this long.
REQUEST_TIMEOUT_S = 10.0


class HttpEndpoints:
    """Serves the metrics registry and the health answers on one plain HTTP port."""

    def __init__(
        self, registry: CollectorRegistry, *, server_ready: ServerReadiness, model_ready: ModelReadiness
    ) -> None:
        self._registry = registry
        self._server_ready = server_ready
        self._model_ready = model_ready
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Binds `host:port` (0 picks a free port), serves in a daemon thread, returns the port."""
        self._http = _HttpServer(host, port, self)
        self._thread = threading.Thread(target=self._http.serve_forever, name="kubemaas-http", daemon=True)
        self._thread.start()
        return int(self._http.server_address[1])

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def answer(self, path: str, query: str = "", *, accept: str = "", accept_encoding: str = "") -> Answer:
        """Status, headers and body for a GET of `path` (HEAD sends the same, less the body)."""
        if path == METRICS_PATH:
            return self._metrics(query, accept=accept, accept_encoding=accept_encoding)
        if path == LIVE_PATH:
            return HTTPStatus.OK, [], b""
        if path == READY_PATH:
            return _health(self._server_ready()), [], b""
        if path.startswith(MODELS_PREFIX):
            parts = path[len(MODELS_PREFIX) :].split("/")
            # {name}/ready or {name}/versions/{version}/ready; names and versions are percent-decoded.
            version: str | None = None
            if len(parts) == 2 and parts[1] == "ready":
                version = ""
            elif len(parts) == 4 and parts[1] == "versions" and parts[3] == "ready" and parts[2]:
                version = unquote(parts[2])
            if version is not None and parts[0]:
                try:
                    return _health(self._model_ready(unquote(parts[0]), version)), [], b""
                except InferenceError as error:
                    if error.kind != ErrorKind.NOT_FOUND:
                        raise
                    return _not_found(error.message)
        return _not_found(f"no endpoint at {path}")

    def _metrics(self, query: str, *, accept: str, accept_encoding: str) -> Answer:
        # What prometheus_client's own server does: the format the Accept header asks for
        # (OpenMetrics or text), `name[]` selects metrics, gzip when the client accepts it.
        encoder, content_type = choose_encoder(accept)
        names = parse_qs(query).get("name[]")
        registry = self._registry.restricted_registry(names) if names else self._registry
        body = encoder(registry)
        response_headers = [("Content-Type", content_type)]
        if gzip_accepted(accept_encoding):
            body = gzip.compress(body)
            response_headers.append(("Content-Encoding", "gzip"))
        return HTTPStatus.OK, response_headers, body


def _health(ready: bool) -> HTTPStatus:
    return HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE


def _not_found(message: str) -> Answer:
    return HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain; charset=utf-8")], f"{message}\n".encode()


class _HttpServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for IPv4 and IPv6 hosts alike, without reverse DNS at bind."""

    def __init__(self, host: str, port: int, endpoints: HttpEndpoints) -> None:
        self.endpoints = endpoints
        # The address family follows the host (`::` binds IPv6), as prometheus_client's server did.
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        super().__init__((str(address[0]), port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which can stall on a pod's DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that hung up or went silent (a
        # probe's timeout) is no error of ours, anything else is logged once as one.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.exception("http connection failed", extra=kv(client=client_address[0]))


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def version_string(self) -> str:
        return "kubemaas"  # the `Server` header; the stdlib's names the Python version

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        endpoints = cast(_HttpServer, self.server).endpoints
        try:
            status, headers, content = endpoints.answer(
                url.path,
                url.query,
                accept=self.headers.get("Accept", ""),
                accept_encoding=self.headers.get("Accept-Encoding", ""),
            )
        except Exception:  # a failing collector or readiness callable costs one answer, not the thread
            log.exception("http endpoint failed", extra=kv(path=url.path))
            status, headers, content = HTTPStatus.INTERNAL_SERVER_ERROR, [], b""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: probes and scrapes arrive every few seconds; no line per request."""
