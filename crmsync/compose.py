"""What docker-compose.yml needs that crmsync generates: the env file's secrets (`crmsync compose-env`) and the
TLS and SASL material of the compose file's SASL_SSL broker (`crmsync kafka-tls`, run by its `kafka-tls`
container in the `secure-kafka` profile).

Why generated, not written in the compose file: a password in a shared file is everybody's password. The env
file is created with mode 0600, holds fresh random values, and is never overwritten by accident (PostgreSQL
keeps the password its volume was created with: replacing it would lock the services out). docker-compose.yml
refuses to start without it (`${VAR:?…}`).
"""
from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from crmsync import tls

SECURE_BROKER = "kafka-secure:9094"
SASL_USERNAME = "crmsync"
CA_IN_CONTAINERS = "/etc/crmsync/kafka/ca.pem"  # where docker-compose.yml mounts the kafka-tls volume


class ComposeError(Exception):
    """Something the user must change; the message says what."""


def env_values(secure_kafka: bool) -> dict[str, str]:
    """Fresh secrets for every `${VAR:?}` of docker-compose.yml, and the broker settings of the chosen profile."""
    values = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),  # URL-safe: it goes into CAMPAIGN_DSN as is
        "CRMSYNC_SECRET_KEY": Fernet.generate_key().decode(),  # the accounts' key, the same in every container
        "CRMSYNC_DASHBOARD_TOKEN": secrets.token_urlsafe(32),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "KAFKA_SASL_PASSWORD": secrets.token_urlsafe(24),
        "COMPOSE_PROFILES": "secure-kafka" if secure_kafka else "plain-kafka",
    }
    if secure_kafka:
        values.update({"KAFKA_BOOTSTRAP_SERVERS": SECURE_BROKER, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                       "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": SASL_USERNAME,
                       "KAFKA_SSL_CA_LOCATION": CA_IN_CONTAINERS})
    return values


def write_env_file(path: Path, *, secure_kafka: bool, force: bool) -> list[str]:
    """Write the env file (mode 0600); returns the variable names written, never their values."""
    path = Path(path)
    if path.exists() and not force:
        raise ComposeError(f"{path} exists: its secrets are in use (PostgreSQL keeps the password its volume was "
                           "made with); pass --force to replace them anyway")
    values = env_values(secure_kafka)
    text = ("# Secrets for docker-compose.yml, written by `crmsync compose-env` — keep this file private (0600).\n"
            + "".join(f"{name}={value}\n" for name, value in values.items()))
    _write_file(path, text.encode(), 0o600)  # the file only: the project directory is not ours to narrow
    return list(values)


def kafka_tls(out_dir: Path, broker: str, username: str, password: str, *, force: bool = False) -> list[Path]:
    """The secure broker's files in `out_dir`: its PKCS#12 keystore (key + certificate for `broker`, signed by
    a new CA whose key is thrown away), the keystore and key password files the apache/kafka image reads, the
    JAAS file of its SASL PLAIN users, and `ca.pem` for the clients. Kept when present (unless `force`)."""
    if not password or any(c in password for c in '"\\\n'):
        raise ComposeError("KAFKA_SASL_PASSWORD must be set (crmsync compose-env writes it) and hold no quote, "
                           "backslash or newline")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o755)  # the clients read ca.pem from here; everything else is 0600
    names = ["ca.pem", "broker.p12", "broker_keystore_creds", "broker_key_creds", "kafka_server_jaas.conf"]
    if all((out_dir / n).exists() for n in names) and not force:
        return [out_dir / n for n in names]
    with tempfile.TemporaryDirectory() as scratch:  # the CA's key lives only here
        ca_path = tls.ensure_ca(Path(scratch))
        cert_path, key_path = tls.issue_server_cert(Path(scratch), [broker, "localhost"])
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    store_password = secrets.token_urlsafe(24)
    keystore = pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca], serialization.BestAvailableEncryption(store_password.encode()))
    jaas = ("KafkaServer {\n  org.apache.kafka.common.security.plain.PlainLoginModule required\n"
            f'  username="{username}"\n  password="{password}"\n  user_{username}="{password}";\n}};\n')
    for name, data in (("broker.p12", keystore), ("broker_keystore_creds", store_password.encode()),
                       ("broker_key_creds", store_password.encode()), ("kafka_server_jaas.conf", jaas.encode())):
        _write_file(out_dir / name, data, 0o600)
    _write_file(out_dir / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return [out_dir / n for n in names]


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`, created with `mode` (no moment with a wider one)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(temporary, mode)  # the umask may have narrowed it
    temporary.replace(path)
