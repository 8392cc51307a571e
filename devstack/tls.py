"""The devstack CA (trustme), a server certificate for 127.0.0.1/localhost, and the combined bundle.

``REQUESTS_CA_BUNDLE`` *replaces* the trust store of requests/azure-core/MSAL, so the bundle we
export is certifi's public roots plus our CA: public hosts would still verify.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert_chain: Path
    server_key: Path
    bundle: Path


def create_tls(directory: Path) -> TlsFiles:
    """Create a fresh CA and server certificate under ``directory`` and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="dvbridge devstack")
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_cert_chain=directory / "server-chain.pem",
        server_key=directory / "server-key.pem",
        bundle=directory / "ca-bundle.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    files.server_key.chmod(0o600)
    with files.server_cert_chain.open("wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    public_roots = Path(certifi.where()).read_bytes()
    files.bundle.write_bytes(public_roots.rstrip(b"\n") + b"\n" + ca.cert_pem.bytes())
    return files
