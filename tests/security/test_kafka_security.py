"""Kafka clients take TLS and SASL from the configuration (a real Kafka is not left on PLAINTEXT), the password
is a secret like any other, and the material for the compose file's SASL_SSL broker is generated correctly."""
from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from crmsync import config, kafka, tls

SASL_PASSWORD = "Kafka-Sasl-Pw-8c1f0e"


def _secure(tmp_path: Path) -> config.Settings:
    ca = tls.ensure_ca(tmp_path)  # a real CA: librdkafka reads it when the client is made
    (tmp_path / "empty.yaml").write_text("{}\n")
    return config.load(environ={"KAFKA_BOOTSTRAP_SERVERS": "kafka-secure:9094", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "crmsync",
                                "KAFKA_SASL_PASSWORD": SASL_PASSWORD, "KAFKA_SSL_CA_LOCATION": str(ca),
                                "CRMSYNC_CONFIG": str(tmp_path / "empty.yaml")})


def test_clients_carry_the_security_settings(tmp_path: Path) -> None:
    settings = _secure(tmp_path)
    kafka.use_security(settings.kafka)
    try:
        built = kafka.client_config("kafka-secure:9094", {"group.id": "g"})
        assert built["security.protocol"] == "SASL_SSL" and built["sasl.mechanism"] == "SCRAM-SHA-512"
        assert built["sasl.username"] == "crmsync" and built["sasl.password"] == SASL_PASSWORD
        assert built["ssl.ca.location"] == str(tmp_path / "ca.pem") and built["group.id"] == "g"
        assert "ssl.endpoint.identification.algorithm" not in built  # librdkafka's default (https) stays on
        Producer(built)  # librdkafka accepts every property name and value
    finally:
        kafka.use_security(config.KafkaSettings())
    assert "security.protocol" not in kafka.client_config("localhost:9092")


def test_the_sasl_password_is_masked_like_every_secret(tmp_path: Path) -> None:
    settings = _secure(tmp_path)
    assert SASL_PASSWORD not in settings.model_dump_json() + repr(settings)


@pytest.mark.parametrize("kafka_yaml, expected", [
    ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs sasl_mechanism, sasl_username and sasl_password"),
    ({"sasl_username": "u", "sasl_password": "p", "sasl_mechanism": "PLAIN"}, "sasl_* settings need"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"},
     "clear text"),
    ({"security_protocol": "PLAINTEXT", "ssl_ca_location": "/ca.pem"}, "ssl_* settings need"),
    ({"security_protocol": "TLS"}, "security_protocol"),
])
def test_incomplete_or_unsafe_security_settings_are_refused(tmp_path: Path, kafka_yaml: dict, expected: str) -> None:
    path = tmp_path / "crmsync.yaml"
    path.write_text(json.dumps({"kafka": kafka_yaml}))
    with pytest.raises(config.ConfigError, match=re.escape(expected)):
        config.load(path, environ={})


def test_kafka_tls_makes_what_the_secure_broker_needs(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    result = subprocess.run([sys.executable, "-m", "crmsync", "kafka-tls", str(out), "--broker", "kafka-secure"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "KAFKA_SASL_USERNAME": "crmsync",
                                 "KAFKA_SASL_PASSWORD": SASL_PASSWORD})
    assert result.returncode == 0, result.stderr
    assert SASL_PASSWORD not in result.stdout + result.stderr
    password = (out / "broker_keystore_creds").read_text()
    assert password == (out / "broker_key_creds").read_text() and len(password) >= 24
    key, cert, _ = pkcs12.load_key_and_certificates((out / "broker.p12").read_bytes(), password.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "kafka-secure" in names and key is not None
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    jaas = (out / "kafka_server_jaas.conf").read_text()
    assert f'user_crmsync="{SASL_PASSWORD}"' in jaas and "PlainLoginModule required" in jaas
    for name in ("broker.p12", "broker_keystore_creds", "broker_key_creds", "kafka_server_jaas.conf"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((out / "ca.pem").stat().st_mode) == 0o644  # public: the clients mount it
    assert not (out / "ca-key.pem").exists()  # the CA key does not stay next to what the broker reads
