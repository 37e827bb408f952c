"""Certificates made in the test, as a site's PKI would issue them: a CA, a server certificate for 127.0.0.1 and
localhost, client certificates, and a second CA nobody trusts (``cryptography``; EC P-256, SHA-256)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files."""

    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class Pki:
    """What a TLS test needs: ``ca`` (PEM bundle) issued ``server``, ``client``; ``rogue`` is a client certificate
    from ``rogue_ca``, which nobody trusts."""

    ca: Path
    server: Issued
    client: Issued
    rogue_ca: Path
    rogue: Issued


class _Authority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, common_name: str, folder: Path, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(folder / f"{common_name}.crt", folder / f"{common_name}.key")
        issued.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.private_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return issued

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def make_pki(folder: Path) -> Pki:
    """A fresh CA with a server and a client certificate, and a rogue CA with a client certificate, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue_ca = _Authority("predictd test CA"), _Authority("rogue CA")
    return Pki(
        ca=ca.write(folder / "ca.pem"),
        server=ca.issue("predictd-server", folder, server=True),
        client=ca.issue("MODALITY1", folder, server=False),
        rogue_ca=rogue_ca.write(folder / "rogue-ca.pem"),
        rogue=rogue_ca.issue("intruder", folder, server=False),
    )
