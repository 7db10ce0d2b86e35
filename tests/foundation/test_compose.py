"""No Docker engine runs here: the compose file is checked for what would break a real `docker compose up`, and
for what would expose it: ports on every interface, shared default passwords, anonymous access."""
import re
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from crmsync.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_service_on_kafka_and_logical_postgres():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    crmsync = {name: s for name, s in services.items() if s.get("image") == "crmsync:latest"}
    workers = {name: s for name, s in crmsync.items() if s["command"][0] == "service"}
    assert {s["command"][1] for s in workers.values()} == set(SERVICES)
    assert set(crmsync) - set(workers) == {"dashboard", "kafka-tls"}  # the dashboard: see tests/dashboard
    assert all(s["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
               for s in crmsync.values() if "profiles" not in s)
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT [\"crmsync\"]") == 1


# -- nothing published beyond this machine, no shared default password ------------------------------------------
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")  # ${VAR:?message}: compose refuses to start without VAR


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_published_ports_are_bound_to_loopback():
    published = {name: s["ports"] for name, s in _compose()["services"].items() if s.get("ports")}
    assert {"kafka", "postgres", "dashboard", "prometheus", "grafana"} <= set(published)
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)


def test_passwords_come_from_the_env_file_and_are_required():
    services = _compose()["services"]
    postgres = services["postgres"]["environment"]
    assert REQUIRED.fullmatch(postgres["POSTGRES_PASSWORD"]).group(1) == "POSTGRES_PASSWORD"
    crmsync = {name: s for name, s in services.items() if s.get("image") == "crmsync:latest" and "profiles" not in s}
    for name, service in crmsync.items():
        env = service["environment"]
        assert "${POSTGRES_PASSWORD" in env["CAMPAIGN_DSN"] and "crmsync:crmsync@" not in env["CAMPAIGN_DSN"], name
        assert REQUIRED.fullmatch(env["CRMSYNC_SECRET_KEY"]), name  # one key for every container, not its own
    assert REQUIRED.fullmatch(services["dashboard"]["environment"]["CRMSYNC_DASHBOARD_TOKEN"])
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert REQUIRED.fullmatch(grafana["GF_SECURITY_ADMIN_PASSWORD"])
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: crmsync" not in text and "GF_AUTH_ANONYMOUS_ENABLED: \"true\"" not in text


def test_the_secure_kafka_profile_speaks_sasl_ssl():
    services = _compose()["services"]
    secure = services["kafka-secure"]
    assert secure["profiles"] == ["secure-kafka"] and services["kafka-tls"]["profiles"] == ["secure-kafka"]
    env = secure["environment"]
    assert env["KAFKA_ADVERTISED_LISTENERS"].startswith("SASL_SSL://kafka-secure:")
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "SASL_SSL" and env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert "PLAINTEXT" not in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace("CONTROLLER:PLAINTEXT", "")
    assert "ports" not in secure  # reachable from the compose network only
    assert services["kafka-tls"]["command"][0] == "kafka-tls"
    worker = services["capture"]["environment"]
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                 "KAFKA_SSL_CA_LOCATION"):
        assert name in worker, name  # the same containers, pointed at the secure broker by the env file


def test_compose_env_writes_every_required_secret(tmp_path):
    env_file = tmp_path / ".env"
    run = lambda *extra: subprocess.run([sys.executable, "-m", "crmsync", "compose-env", "--file", str(env_file), *extra],
                                        capture_output=True, text=True, timeout=60)  # noqa: E731
    first = run()
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))
    required = set(REQUIRED.findall((ROOT / "docker-compose.yml").read_text()))
    assert required and required <= set(values), required - set(values)
    assert all(len(values[name]) >= 24 for name in required if name != "COMPOSE_PROFILES")
    for value in values.values():
        assert value not in first.stdout + first.stderr or len(value) < 16  # written, not printed
    again = run()
    assert again.returncode != 0 and "exists" in again.stdout + again.stderr  # secrets are not silently replaced
    assert run("--force", "--secure-kafka").returncode == 0
    secure = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))
    assert secure["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and secure["COMPOSE_PROFILES"] == "secure-kafka"
    assert secure["POSTGRES_PASSWORD"] != values["POSTGRES_PASSWORD"]
