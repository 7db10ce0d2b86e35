"""/metrics, /healthz and /readyz of a service, without a broker: readiness follows its checks."""
from __future__ import annotations

import socket

import httpx

from crmsync import observability


def test_readiness_follows_the_checks_and_liveness_does_not():
    readiness = observability.Readiness(cache_seconds=0)
    server = observability.serve("test-service", 0, readiness=readiness)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert httpx.get(f"{base}/readyz").status_code == 503  # no check registered yet: still starting
        broken = {"down": True}

        def database() -> None:
            if broken["down"]:
                raise ConnectionError("connection refused")

        readiness.add("database", database)
        answer = httpx.get(f"{base}/readyz")
        assert answer.status_code == 503
        assert answer.json()["checks"] == {"database": "ConnectionError: connection refused"}
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"  # alive all the same: no restart loop
        broken["down"] = False
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "service": "test-service",
                                                      "checks": {"database": "ok"}}
        assert 'crmsync_service_up{service="test-service"} 1.0' in httpx.get(f"{base}/metrics").text
    finally:
        server.shutdown()


def test_checks_are_cached_so_probes_do_not_hammer_the_broker():
    calls = []
    readiness = observability.Readiness(cache_seconds=60)
    readiness.add("broker", lambda: calls.append(1))
    for _ in range(5):
        assert readiness.evaluate() == {"broker": "ok"}
    assert len(calls) == 1


def test_a_taken_port_does_not_stop_the_service():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert observability.serve("test-service", taken.getsockname()[1]) is None


def test_freshness_is_measured_from_the_source_time():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=timezone.utc)
    assert observability.source_age("2026-01-01T12:00:00Z", now) == 10.0
    assert observability.source_age("2026-01-01T12:00:00.000+0000", now) == 10.0  # Salesforce's form
    assert observability.source_age(None, now) is None and observability.source_age("soon", now) is None


def test_freshness_is_labelled_with_the_mapping_and_direction():
    from prometheus_client import REGISTRY

    from crmsync import config
    from crmsync.defaults import default_mappings

    settings = config.Settings.model_validate({
        "accounts": {"sf": {"type": "salesforce", "username": "u", "password": "p"}},
        "mappings": [m.model_dump() for m in default_mappings("sf")]})
    observability.know_mappings(settings)
    try:
        assert observability.mapping_labels("writer-campaign", "recipients") == ("contacts", "crm→campaign")
        assert observability.mapping_labels("writer-crm", "Opportunity") == ("purchases", "campaign→crm")
        assert observability.mapping_labels("writer-crm", "Lead") == ("Lead", "campaign→crm")  # unmapped
        observability.observe_freshness("writer-crm", "Account", ["2000-01-01T00:00:00Z"])
        labels = {"writer": "writer-crm", "table": "Account", "mapping": "accounts", "direction": "campaign→crm"}
        assert REGISTRY.get_sample_value("crmsync_apply_freshness_last_seconds", labels) > 365 * 86400
    finally:
        observability.know_mappings(config.Settings())
