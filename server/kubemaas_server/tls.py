"""TLS and mutual TLS for the gRPC port of `kubemaas serve`.

The server's certificate and key, and optionally a client CA, are PEM files (in a pod: a
mounted `kubernetes.io/tls` Secret). They are read and checked once, at start, before any model
loads: gRPC itself accepts any bytes and only fails later, at every handshake, with an error
that names neither the file nor the cause. So a missing, unreadable or non-PEM file, an
encrypted key, or a key that does not belong to the certificate stops the server at once with
a `TlsConfigError` naming the file. Files are not watched: a restart picks up rotated ones.

With a client CA the server asks every client for a certificate and refuses the handshake
unless one signed by that CA comes (`require_client_auth=True`): mutual TLS.

Key bytes never appear in a repr, a log line or an error message; paths do.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)


class TlsConfigError(ValueError):
    """A TLS file cannot serve: the message names the file and what is wrong with it."""


class TlsMode(enum.StrEnum):
    OFF = "off"  # plaintext gRPC
    TLS = "tls"  # the server proves itself; clients stay anonymous
    MUTUAL = "mtls"  # clients must also present a certificate signed by the client CA


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the PEM files are: the server's certificate (chain) and key, and the client CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mutual TLS


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Checked PEM material, ready to become gRPC server credentials."""

    files: TlsFiles
    # The bytes stay out of every repr: the key above all; the rest would swamp ServerOptions'.
    cert_chain: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)
    subject: str  # of the server's own certificate, for the log
    not_after: dt.datetime  # UTC

    @property
    def mode(self) -> TlsMode:
        return TlsMode.MUTUAL if self.client_ca is not None else TlsMode.TLS

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.not_after < (now or dt.datetime.now(dt.UTC))

    def log_fields(self) -> dict[str, str]:
        """What the log may say about the TLS setup: paths, subject, expiry, never key material."""
        fields = {"tls_cert": str(self.files.cert), "tls_key": str(self.files.key)}
        if self.files.client_ca is not None:
            fields["tls_client_ca"] = str(self.files.client_ca)
        return fields | {"tls_subject": self.subject, "tls_not_after": self.not_after.isoformat()}

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def load_server_tls(files: TlsFiles) -> ServerTls:
    """Reads and checks the files; raises `TlsConfigError` naming the first file that cannot serve."""
    cert_pem = _read(files.cert, "server certificate")
    chain = _certificates(cert_pem, files.cert, "server certificate")
    key_pem = _read(files.key, "server key")
    key = _private_key(key_pem, files.key)
    # The key must belong to the first certificate of the chain (the server's own, the CA
    # certificates follow it); comparing the public halves works for RSA, EC and EdDSA alike.
    if _public_bytes(key.public_key()) != _public_bytes(chain[0].public_key()):
        raise TlsConfigError(
            f"server key {files.key} does not match the certificate {files.cert}"
            " (its first certificate must be the server's own)"
        )
    client_ca: bytes | None = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "client CA")
        _certificates(client_ca, files.client_ca, "client CA")
    return ServerTls(
        files=files,
        cert_chain=cert_pem,
        key=key_pem,
        client_ca=client_ca,
        subject=chain[0].subject.rfc4514_string(),
        not_after=chain[0].not_valid_after_utc,
    )


def _read(path: Path, role: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{role} {path}: cannot read it ({error.strerror or error})") from None
    if not data.strip():
        raise TlsConfigError(f"{role} {path}: the file is empty")
    return data


def _certificates(data: bytes, path: Path, role: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{role} {path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    return certificates


def _private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    # `from None` throughout: the file is secret, and no message or traceback may quote it.
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying the key needs a password
        raise TlsConfigError(f"server key {path}: the key is encrypted; give it unencrypted") from None
    except ValueError:
        raise TlsConfigError(
            f"server key {path}: not a PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    except UnsupportedAlgorithm:
        raise TlsConfigError(f"server key {path}: a key type this server cannot use") from None


def _public_bytes(public_key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
