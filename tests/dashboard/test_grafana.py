"""No Docker engine here: the observability half of docker-compose.yml is checked for what would break a real
`docker compose up` — commands the CLI does not have, metrics no service exports, ports that do not line up."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import typer
import yaml
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from crmsync.cli import app

ROOT = Path(__file__).resolve().parents[2]
# every module that defines metrics; each runs in some container (the dashboard exports the consumer lag)
METRIC_MODULES = ("services.capture.service", "streams.app", "services.campaign_writer.service",
                  "services.salesforce.poller", "services.salesforce.writer", "services.salesforce.client",
                  "crmsync.rejects", "crmsync.observability", "crmsync.dashboard.sampler")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "summary": ("_sum", "_count", "")}


def load(path: str) -> dict:
    text = (ROOT / path).read_text()
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")["services"]


def crmsync_containers(compose: dict) -> dict:
    return {name: s for name, s in compose.items() if s.get("image") == "crmsync:latest"}


def exported_series() -> set[str]:
    """Sample names the services' registries can expose (from the metric definitions, children or not)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {family.name + suffix for family in REGISTRY.collect() if family.name.startswith("crmsync_")
            for suffix in SUFFIXES.get(family.type, ("",))}


def queried_series(dashboard: dict) -> set[str]:
    return {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bcrmsync_[a-z_]+", target["expr"])}


def test_every_container_command_exists_in_the_cli(compose):
    runner = CliRunner()
    for name, service in crmsync_containers(compose).items():
        result = runner.invoke(app, [*service["command"], "--help"])  # its options parse, the command exists
        assert result.exit_code == 0, (name, service["command"], result.output)
    assert {"dashboard", "prometheus", "grafana"} <= set(compose)


def test_every_metric_the_grafana_dashboard_queries_is_exported():
    dashboard = load("deploy/grafana/dashboards/crmsync.json")
    queried, exported = queried_series(dashboard), exported_series()
    assert queried and queried <= exported, sorted(queried - exported)
    expected = {"crmsync_consumer_lag_messages", "crmsync_consumer_lag_seconds", "crmsync_consumer_group_status",
                "crmsync_consumer_group_eta_seconds", "crmsync_apply_freshness_last_seconds",
                "crmsync_crm_api_usage", "crmsync_crm_api_limit", "crmsync_capture_slot_lag_bytes",
                "crmsync_salesforce_poller_cursor_age_seconds", "crmsync_streams_conflicts_total",
                "crmsync_crm_api_retries_total", "crmsync_writer_rejects_total", "crmsync_rejects_retried_total"}
    assert expected <= queried, sorted(expected - queried)  # the views the issue asks for are all there


def test_grafana_dashboard_structure_and_provisioning(compose):
    dashboard = load("deploy/grafana/dashboards/crmsync.json")
    assert dashboard["uid"] and dashboard["panels"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    datasource = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in dashboard["panels"])
    provider = load("deploy/grafana/provisioning/dashboards/crmsync.yml")["providers"][0]
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert urlparse(datasource["url"]).hostname == "prometheus"
    assert f"{urlparse(datasource['url']).port}:" in compose["prometheus"]["ports"][0]


def test_ports_match_between_compose_prometheus_and_the_services(compose):
    config = load("deploy/prometheus/prometheus.yml")
    mounted = compose["prometheus"]["volumes"][0].split(":")
    assert mounted[0] == "./deploy/prometheus/prometheus.yml" and mounted[1] == "/etc/prometheus/prometheus.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    discovery = jobs["crmsync"]["dns_sd_configs"][0]
    workers = {name: s for name, s in crmsync_containers(compose).items() if s["command"][0] == "service"}
    assert set(discovery["names"]) == set(workers)  # every service scraped, every replica (DNS A records)
    options = {p.name: p for p in typer.main.get_command(app).commands["service"].params}
    assert options["metrics_port"].envvar == "CRMSYNC_METRICS_PORT"  # the services read what compose sets
    assert options["metrics_host"].envvar == "CRMSYNC_METRICS_HOST"
    assert all(int(s["environment"]["CRMSYNC_METRICS_PORT"]) == discovery["port"] for s in workers.values())
    assert all(s["environment"]["CRMSYNC_METRICS_HOST"] == "0.0.0.0" for s in workers.values())

    board = compose["dashboard"]
    port = int(board["command"][board["command"].index("--port") + 1])
    assert jobs["crmsync-dashboard"]["static_configs"][0]["targets"] == [f"dashboard:{port}"]
    assert board["ports"] == [f"127.0.0.1:{port}:{port}"]  # published on loopback only
    targets = dict(item.split("=", 1) for item in board["environment"]["CRMSYNC_METRICS_TARGETS"].split(","))
    assert set(targets) == set(workers)
    for name, url in targets.items():
        parsed = urlparse(url)
        assert parsed.hostname == name and parsed.port == discovery["port"] and parsed.path == "/metrics"
    long_running = {name: s for name, s in crmsync_containers(compose).items() if s.get("restart")}
    assert set(crmsync_containers(compose)) - set(long_running) == {"kafka-tls"}  # one-shot: makes certificates
    for service in long_running.values():  # the health check asks the port the service serves
        probe = " ".join(service["healthcheck"]["test"])
        expected = port if service is board else discovery["port"]
        assert f"127.0.0.1:{expected}/readyz" in probe
