"""TLS and SuperNode-authentication material for a Flower deployment, made with `cryptography` (a Flower
dependency), so a hospital needs neither openssl nor ssh-keygen.

The coordinator keeps `ca.key` offline: it is only needed to issue a new SuperLink certificate. Each site makes
its own SuperNode key pair on its own machine and sends only the public half to the coordinator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError

LOOPBACK = ("localhost", "127.0.0.1")  # the SuperLink's own ServerApp processes reach it on loopback


def _write(files: dict[str, tuple[Path, bytes, bool]]) -> dict[str, Path]:
    """Write (path, data, secret) entries, all or none: an existing file is never overwritten."""
    taken = [str(path) for path, _, _ in files.values() if path.exists()]
    if taken:
        raise ConfigError(
            f"{', '.join(taken)} exist(s); remove them or choose another folder (keys are never overwritten)"
        )
    for path, data, secret in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)  # private from birth
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return {what: path for what, (path, _, _) in files.items()}


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_superlink_certs(out: Path, hosts: list[str], days: int = 825, name: str = "fracfl") -> dict[str, Path]:
    """A CA and a SuperLink server certificate for `hosts` (plus loopback); returns the files written."""
    if days < 1:
        raise ConfigError(f"--days {days}: a certificate must be valid for at least one day")
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    names = list(dict.fromkeys([*hosts, *LOOPBACK]))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return _write(
        {
            "ca": (out / "ca.pem", ca.public_bytes(pem), False),
            "ca_key": (out / "ca.key", _pem_key(ca_key), True),
            "cert": (out / "superlink.pem", cert.public_bytes(pem), False),
            "key": (out / "superlink.key", _pem_key(key), True),
        }
    )


def make_node_key(out: Path, name: str) -> dict[str, Path]:
    """A SuperNode's authentication key pair in the OpenSSH format Flower reads (NIST P-384)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use a plain file name such as the site's name, e.g. site_a")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(
        {
            "key": (out / f"{name}.key", private, True),
            "pub": (out / f"{name}.pub", public + f" {name}\n".encode(), False),
        }
    )
