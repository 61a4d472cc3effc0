from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubemaas_cluster.kubeconfig import render_kubeconfig
from kubemaas_cluster.pki import create_pki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_certificate_covers_loopback_and_in_cluster_names(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, service_ip="127.2.0.1")
    cert = load(pki.apiserver.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.2.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_every_certificate_is_signed_by_the_cluster_ca(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, service_ip="127.2.0.1")
    ca = load(pki.ca.cert)
    for pair in (pki.apiserver, pki.admin, pki.controller_manager, pki.scheduler, pki.kwok):
        load(pair.cert).verify_directly_issued_by(ca)


def test_client_subjects_map_to_bootstrap_rbac_identities(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, service_ip="127.2.0.1")

    def subject(path: Path, oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in load(path).subject.get_attributes_for_oid(oid)]

    assert subject(pki.admin.cert, NameOID.ORGANIZATION_NAME) == ["system:masters"]
    assert subject(pki.scheduler.cert, NameOID.COMMON_NAME) == ["system:kube-scheduler"]
    assert subject(pki.controller_manager.cert, NameOID.COMMON_NAME) == ["system:kube-controller-manager"]


def test_private_keys_are_readable_only_by_the_owner(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, service_ip="127.2.0.1")
    for key in (pki.ca.key, pki.admin.key, pki.service_account_key):
        assert key.stat().st_mode & 0o077 == 0


def test_kubeconfig_embeds_credentials_and_points_at_the_server(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, service_ip="127.2.0.1")
    doc = yaml.safe_load(
        render_kubeconfig(server="https://127.0.0.1:6443", ca=pki.ca.cert, client=pki.admin, user="me")
    )
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert doc["users"][0]["user"]["client-key-data"]
    assert doc["current-context"] == doc["contexts"][0]["name"]


def test_a_token_kubeconfig_keeps_the_cluster_and_drops_the_admin_credentials(tmp_path: Path) -> None:
    from kubemaas_cluster.kubeconfig import with_token_user

    pki = create_pki(tmp_path, service_ip="127.2.0.1")
    admin = render_kubeconfig(server="https://127.0.0.1:6443", ca=pki.ca.cert, client=pki.admin, user="admin")
    doc = yaml.safe_load(with_token_user(admin, user="kubemaas-operator", token="abc.def.ghi"))
    assert doc["clusters"] == yaml.safe_load(admin)["clusters"]
    assert doc["users"] == [{"name": "kubemaas-operator", "user": {"token": "abc.def.ghi"}}]
    assert "client-key-data" not in str(doc)
