"""No Docker engine runs here: the compose file is checked for what would break a real `docker compose up`."""
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
    assert set(crmsync) - set(workers) == {"dashboard"}  # checked with Prometheus and Grafana in tests/dashboard
    assert all(s["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" for s in crmsync.values())
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT [\"crmsync\"]") == 1
