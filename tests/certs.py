"""Real certificates for tests, made at test time by the cluster's own PKI code: a CA per test
that needs one, issuing server certificates for 127.0.0.1/localhost and client certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubemaas_cluster.pki import issue, name, new_authority


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA that writes its certificate, and the certificates it issues, into one folder."""

    def __init__(self, directory: Path, ca_name: str) -> None:
        self.directory = directory
        self.name = ca_name
        self.key, self.certificate, pair = new_authority(directory, ca_name, ca_name)
        self.cert = pair.cert

    def issue(self, stem: str, *, server: bool) -> Issued:
        subject = name("localhost" if server else stem)
        pair = issue(
            self.directory,
            stem,
            self.key,
            self.certificate,
            subject,
            server_names=("localhost",) if server else (),
            server_ips=("127.0.0.1",) if server else (),
        )
        return Issued(pair.cert, pair.key)
