"""TLS and SuperNode-authentication material for a Flower deployment, made with `cryptography` (a Flower
dependency), so a hospital needs neither openssl nor ssh-keygen: the federation CA and SuperLink certificate, the
operators' client certificates (for the control proxy), SuperNode keys and the publisher's bundle-signing key.

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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
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


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise ConfigError(f"--days {days}: a certificate must be valid for at least one day")
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def _ca(common_name: str, start: dt.datetime, end: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
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
    return ca_key, ca


def make_superlink_certs(out: Path, hosts: list[str], days: int = 825, name: str = "fracfl") -> dict[str, Path]:
    """A CA and a SuperLink server certificate for `hosts` (plus loopback); returns the files written."""
    start, end = _validity(days)
    ca_key, ca = _ca(f"{name} federation CA", start, end)
    ca_name = ca.subject
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


def _plain_name(name: str) -> None:
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use a plain file name such as the site's name, e.g. site_a")


def make_node_key(out: Path, name: str) -> dict[str, Path]:
    """A SuperNode's authentication key pair in the OpenSSH format Flower reads (NIST P-384)."""
    _plain_name(name)
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


def make_operator_cert(ca_dir: Path, name: str, days: int = 365) -> dict[str, Path]:
    """A client certificate for one `flwr` operator, signed by the operator CA in `ca_dir` (created on first use:
    `operator-ca.pem` for the control proxy, `operator-ca.key` to keep offline). The certificate's common name is
    the operator's name, which the proxy logs for every Control API call."""
    _plain_name(name)
    start, end = _validity(days)
    ca_pem, ca_key_pem = ca_dir / "operator-ca.pem", ca_dir / "operator-ca.key"
    written: dict[str, Path] = {}
    if not ca_pem.exists() and not ca_key_pem.exists():
        ca_key, ca = _ca("fracfl operator CA", *_validity(max(days, 3650)))
        pem = serialization.Encoding.PEM
        written = _write({"ca": (ca_pem, ca.public_bytes(pem), False), "ca_key": (ca_key_pem, _pem_key(ca_key), True)})
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_pem.read_bytes(), None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ca_dir}: cannot read operator-ca.pem and operator-ca.key ({e})") from e
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_key_pem}: not an EC private key")
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(loaded.public_key()), critical=False)
        .sign(loaded, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return written | _write(
        {
            "cert": (ca_dir / f"{name}.pem", cert.public_bytes(pem), False),
            "key": (ca_dir / f"{name}.key", _pem_key(key), True),
        }
    )


def make_publisher_key(out: Path, name: str) -> dict[str, Path]:
    """The Ed25519 key pair that signs approved app bundles (`fracfl deploy sign-fab`): the private half stays with
    the publisher, the public half (OpenSSH format) goes to every site's `publishers/` folder."""
    _plain_name(name)
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(
        {
            "key": (out / f"{name}.key", _pem_key(key), True),
            "pub": (out / f"{name}.pub", public + f" {name}\n".encode(), False),
        }
    )
