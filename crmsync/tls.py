"""A local certificate authority for crmsync's CRM sandboxes.

The sandboxes speak HTTPS only, because real CRM clients (simple-salesforce, the Dataverse SDKs...) refuse or
rewrite plain-HTTP URLs. Rather than disabling verification in every client, crmsync keeps one small CA per
state directory: trust its `ca.pem` once (``REQUESTS_CA_BUNDLE=.../ca.pem`` or ``session.verify``) and every
sandbox certificate it issues is trusted too.

Keys are EC P-256 (instant to generate) and written with mode 0600. Generation holds an exclusive file lock, so
two sandboxes starting at the same moment cannot each create a different CA in the same directory.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server-key.pem"
DEFAULT_NAMES = ("localhost", "127.0.0.1")
_CA_DAYS = 3650
_SERVER_DAYS = 397  # the longest lifetime browsers and strict TLS stacks accept for a leaf certificate


def ensure_ca(state_dir: Path) -> Path:
    """Return the path of `state_dir/ca.pem`, creating the CA (certificate + 0600 key) the first time."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    cert_path = state_dir / CA_CERT_NAME
    with _locked(state_dir):
        if cert_path.exists() and (state_dir / CA_KEY_NAME).exists():
            return cert_path
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crmsync sandboxes"),
            x509.NameAttribute(NameOID.COMMON_NAME, "crmsync local sandbox CA"),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(state_dir / CA_KEY_NAME, _key_pem(key))
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path


def issue_server_cert(state_dir: Path, names: list[str], *, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Issue a fresh server certificate signed by `state_dir`'s CA; return (cert_path, key_path).

    The certificate covers localhost, 127.0.0.1 and every name in `names` (IP literals become IP SANs, the rest
    DNS SANs), so a sandbox can also answer for e.g. `login.salesforce.com` behind a hosts-file override.
    Files land in `out_dir` (default `state_dir`); they are re-issued on every call, which is cheap and means
    a changed name list never leaves a stale certificate behind.
    """
    state_dir = Path(state_dir)
    out_dir = Path(out_dir) if out_dir is not None else state_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert_path = ensure_ca(state_dir)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key((state_dir / CA_KEY_NAME).read_bytes(), password=None)
    all_names = list(dict.fromkeys([*DEFAULT_NAMES, *[n for n in names if n]]))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in all_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / SERVER_CERT_NAME, out_dir / SERVER_KEY_NAME
    _write_private(key_path, _key_pem(key))
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, mode=0o600)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write via a temp file + rename so a reader never sees half a PEM; the mode is set before any byte lands."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; make it exact
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _locked(directory: Path) -> Any:
    from crmsync import private

    return private.exclusive_lock(directory / ".ca.lock")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
