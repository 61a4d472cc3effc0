"""Certificates and keys for the local control plane.

The API server only serves TLS and authenticates components by client certificate, exactly
like a kubeadm cluster: one CA signs the serving certificate (valid for 127.0.0.1 and the
in-cluster names) and one client certificate per component, whose subject maps to the
bootstrap RBAC roles (`system:kube-scheduler`, `system:kube-controller-manager`,
`system:masters` for the admin). ECDSA P-256 keeps generation instant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    ca: Pair
    apiserver: Pair
    admin: Pair
    controller_manager: Pair
    scheduler: Pair
    kwok: Pair
    service_account_key: Path
    service_account_pub: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def issue(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> Pair:
    key = _key()
    usage = (
        [ExtendedKeyUsageOID.SERVER_AUTH]
        if (server_names or server_ips)
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if server_names or server_ips:
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def new_authority(
    directory: Path, stem: str, common_name: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Pair]:
    """A self-signed CA, written to `directory/stem.{crt,key}`; its key issues with `issue`."""
    key = _key()
    subject = name(common_name)
    cert = (
        _builder(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return key, cert, pair


def create_pki(directory: Path, *, service_ip: str) -> ClusterPki:
    """Create every key and certificate the control plane needs under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca = new_authority(directory, "ca", "kubemaas-local-ca")

    in_cluster = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    apiserver = issue(
        directory,
        "apiserver",
        ca_key,
        ca_cert,
        name("kube-apiserver"),
        server_names=("localhost", *in_cluster),
        server_ips=("127.0.0.1", service_ip),
    )
    sa_key = _key()
    sa_key_path = directory / "sa.key"
    _write_key(sa_key, sa_key_path)
    sa_pub_path = directory / "sa.pub"
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPki(
        ca=ca,
        apiserver=apiserver,
        admin=issue(directory, "admin", ca_key, ca_cert, name("kubemaas-admin", "system:masters")),
        controller_manager=issue(
            directory, "controller-manager", ca_key, ca_cert, name("system:kube-controller-manager")
        ),
        scheduler=issue(directory, "scheduler", ca_key, ca_cert, name("system:kube-scheduler")),
        kwok=issue(directory, "kwok", ca_key, ca_cert, name("kwok-controller", "system:masters")),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )
