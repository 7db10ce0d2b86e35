"""Configuration errors that say what to fix; embedded infrastructure that never starts twice."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from crmsync import config, infra, topics
from crmsync.envelope import ApplyCommand, Change, Reject


@pytest.mark.parametrize("text, expected", [
    ("kafka:\n  partitons: 3\n", r"crmsync.yaml: kafka.partitons: unknown key"),
    ("kafka:\n  partitions: many\n", r"crmsync.yaml: kafka.partitions: Input should be a valid integer.*'many'"),
    ("campaign:\n  dsn: mysql://x\n", r"crmsync.yaml: campaign.dsn: expected a PostgreSQL DSN"),
    ("accounts:\n  sf:\n    type: salesforce\n    login_url: http://login.salesforce.com\n    username: u\n    password: p\n",
     r"crmsync.yaml: accounts.sf.login_url: must be an https:// URL"),
    ("accounts:\n  sf:\n    type: salesforce\n    username: u\n", r"crmsync.yaml: accounts.sf.password: Field required"),
    ("accounts:\n  sf:\n    type: hubspot\n", r"crmsync.yaml: accounts.sf.type: unknown account type 'hubspot' \(one of: dynamics, (memory, )?oracle, salesforce\)"),
    ("accounts:\n  sf:\n    username: u\n", r"crmsync.yaml: accounts.sf: missing 'type:' \(one of: dynamics, (memory, )?oracle, salesforce\)"),
    ("kafka: [\n", r"crmsync.yaml: line 2, column 1: not valid YAML"),
    ("- just\n- a list\n", r"crmsync.yaml: expected a mapping of settings at the top level"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "crmsync.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=expected):
        config.load(path, environ={})


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path):
    path = tmp_path / "crmsync.yaml"
    path.write_text("kafka:\n  partitions: 0\n")
    result = subprocess.run([sys.executable, "-m", "crmsync", "--config", str(path), "config"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "kafka.partitions: Input should be greater than or equal to 1" in result.stdout


def test_environment_overrides_file(tmp_path: Path):
    path = tmp_path / "crmsync.yaml"
    path.write_text("kafka:\n  bootstrap_servers: file:9092\ncampaign:\n  dsn: postgresql://file/db\n")
    settings = config.load(path, environ={"KAFKA_BOOTSTRAP_SERVERS": "env:9092", "CAMPAIGN_DSN": "postgresql://env/db"})
    assert settings.kafka.bootstrap_servers == "env:9092" and settings.campaign.dsn == "postgresql://env/db"
    assert not settings.uses_embedded_broker and not settings.uses_embedded_postgres


def test_secrets_are_masked_when_settings_are_printed(tmp_path: Path):
    path = tmp_path / "crmsync.yaml"
    path.write_text("accounts:\n  sf:\n    type: salesforce\n    username: u@example.com\n    password: hunter2\n    security_token: TOK123\n")
    settings = config.load(path, environ={})
    dumped = settings.model_dump_json() + repr(settings)
    assert "hunter2" not in dumped and "TOK123" not in dumped and "u@example.com" in dumped


def test_starting_twice_reuses_the_running_servers(tmp_path: Path):
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(tmp_path / "state")})
    try:
        with ThreadPoolExecutor(3) as pool:  # concurrent starts, as when several services boot together
            found = list(pool.map(lambda _: infra.up(settings), range(3)))
        assert len({(f.bootstrap_servers, f.campaign_dsn) for f in found}) == 1
        status = infra.status(settings)
        again = subprocess.run([sys.executable, "-m", "crmsync", "infra", "up"], capture_output=True, text=True,
                               env={**__import__("os").environ, "CRMSYNC_STATE_DIR": str(tmp_path / "state")})
        assert again.returncode == 0, again.stderr
        assert infra.status(settings)["broker"]["pid"] == status["broker"]["pid"]
        assert infra.status(settings)["postgres"]["pid"] == status["postgres"]["pid"]
        tansu = subprocess.run(["pgrep", "-f", f"127.0.0.1:{status['broker']['port']}"], capture_output=True, text=True)
        assert len(tansu.stdout.split()) == 1
    finally:
        assert infra.down(settings) == {"broker": True, "postgres": True}
    assert infra.status(settings) == {"broker": None, "postgres": None}


def test_a_live_broker_whose_port_does_not_answer_yet_is_waited_for_not_replaced(tmp_path: Path):
    """Every service finds the embedded broker through broker.json. When the recorded broker's port did not
    answer at once (busy, under load), a service started a second broker, which took over broker.json: the
    run's services split between two brokers, and `infra down` stopped only the second one. A recorded broker
    whose process lives is now waited for. (Its port is played here by a socket that opens a second later.)"""
    import contextlib
    import json
    import os
    import signal
    import socket
    import threading
    import time

    state = tmp_path / "state"
    broker = infra.EmbeddedBroker(state)
    first = broker.start()
    late = socket.socket()
    late.bind(("127.0.0.1", 0))
    port = late.getsockname()[1]
    record = state / "broker" / "broker.json"
    record.write_text(json.dumps({**first, "port": port, "bootstrap_servers": f"127.0.0.1:{port}"}))
    opener = threading.Timer(1.0, late.listen)
    opener.start()
    started = time.monotonic()
    try:
        again = broker.start()
        waited = time.monotonic() - started
    finally:
        opener.join()
        late.close()
        now = json.loads(record.read_text())
        for pid in {first["pid"], now["pid"]}:  # this process's children: stopped, then reaped (no zombie left)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    assert again["pid"] == first["pid"] and now["pid"] == first["pid"], "a second broker was started"
    assert waited >= 0.9


def test_a_state_dir_too_deep_for_a_unix_socket_still_starts_postgres(tmp_path: Path):
    """A socket address holds 107 bytes: PostgreSQL refused to start at all when its socket, put in the state
    dir, had a longer path (a CI workspace, pytest-xdist's tmp dirs). It then listens on loopback TCP only."""
    deep = tmp_path / ("d" * 60) / "state"
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(deep)})
    assert infra.EmbeddedPostgres(deep).socket_dir is None
    assert infra.EmbeddedPostgres(tmp_path / "s").socket_dir == tmp_path / "s" / "postgres" / "sockets"
    try:
        found = infra.up(settings)
        with psycopg.connect(found.campaign_dsn) as conn:
            assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == ""
    finally:
        assert infra.down(settings) == {"broker": True, "postgres": True}


def test_a_failed_start_says_why_and_leaves_no_server_running(tmp_path: Path):
    """PostgreSQL refusing to start (here: a setting it cannot read) is a clear error with the server's reason
    and its log's path, and the broker this same `up` had started is stopped again."""
    settings = config.load(environ={"CRMSYNC_STATE_DIR": str(tmp_path / "state")})
    infra.up(settings)
    infra.down(settings)
    conf = infra.EmbeddedPostgres(tmp_path / "state").data / "postgresql.auto.conf"
    conf.write_text(conf.read_text() + "shared_buffers = 'lots'\n")
    with pytest.raises(RuntimeError) as refused:
        infra.up(settings)
    said = str(refused.value)
    assert said.startswith("the embedded PostgreSQL did not start: ") and "postgres.log" in said
    assert "configuration file" in said and "contains errors" in said, said
    assert infra.status(settings) == {"broker": None, "postgres": None}


def test_topic_names_follow_one_rule():
    assert topics.changes("crm", "Sales EU", "Contact") == "crmsync.crm.sales_eu.contact"
    assert topics.changes("campaign", "campaign", "recipients") == "crmsync.campaign.campaign.recipients"
    assert topics.apply("crm", "sf", "Contact") == "crmsync.apply.crm.sf.contact"
    assert topics.rejects("campaign", "campaign") == "crmsync.rejects.campaign.campaign"
    assert topics.parse("crmsync.apply.crm.sf.contact") == {"kind": "apply", "side": "crm", "target": "sf", "object": "contact"}
    with pytest.raises(ValueError):
        topics.changes("erp", "x", "y")


def test_envelopes_round_trip_and_refuse_other_versions():
    change = Change(id="c1", side="crm", source="sf", object="Contact", op="u", key={"Id": "003"},
                    after={"Email": "a@b.c"}, position={"modstamp": "2026-01-01T00:00:00.000+0000", "id": "003"})
    assert Change.from_json(change.to_json()) == change
    command = ApplyCommand(id="a1", side="campaign", target="campaign", object="recipients", action="upsert",
                           key=None, values={"email": "a@b.c"}, cause="c1", match={"email": "a@b.c"})
    assert ApplyCommand.from_json(command.to_json()) == command
    reject = Reject(id="r1", stage="writer", side="crm", target="sf", object="Contact", reason="bad email",
                    error_code="FIELD_CUSTOM_VALIDATION_EXCEPTION", record={"Email": "x"})
    assert Reject.from_json(reject.to_json()) == reject
    with pytest.raises(ValueError, match="schema version 2"):
        Change.from_json(change.to_json().replace(b'"v":1', b'"v":2'))
    with pytest.raises(ValueError, match="op must be one of"):
        Change(id="x", side="crm", source="s", object="o", op="x", key={}, after=None, position={})


def test_a_service_serves_prometheus_metrics(tmp_path: Path, endpoints):
    """`crmsync service capture --metrics-port N` exposes its metrics over HTTP (what Prometheus scrapes)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from crmsync import pg

    dsn, name = pg.fresh_database(endpoints.campaign_dsn, "m")
    config_file = tmp_path / "crmsync.yaml"
    config_file.write_text(f"campaign:\n  name: {name}\n  slot_name: slot_{name}\n  publication: pub_{name}\n"
                           "  heartbeat_seconds: 0.5\n")
    env = {**__import__("os").environ, "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers, "CAMPAIGN_DSN": dsn}
    child = subprocess.Popen([sys.executable, "-m", "crmsync", "--config", str(config_file), "service", "capture",
                              "--metrics-port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 60, ""
        sample = f'crmsync_capture_slot_lag_bytes{{slot="slot_{name}"}}'  # a value, not just the declaration
        while time.monotonic() < deadline and sample not in body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert sample in body and "crmsync_capture_commit_to_ack_seconds" in body
    finally:
        child.terminate()
        child.wait(30)
        with psycopg.connect(psycopg.conninfo.make_conninfo(endpoints.campaign_dsn, dbname="postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (f"slot_{name}",))


def test_consumers_wait_briefly_on_an_idle_fetch_from_the_embedded_broker_and_longer_from_kafka(tmp_path: Path):
    """The embedded broker does not answer every waiting fetch as soon as data comes, so its consumers' fetches
    wait 100 ms at most (a hop's latency); Apache Kafka does, and there 500 ms only saves idle fetches. The
    services `crmsync run` starts see the embedded broker as a configured address: its tuning is written for
    them. `kafka.fetch_wait_ms` wins over both."""
    from crmsync import kafka, run

    def tuned(environ: dict, path: Path | None = None) -> int:
        try:
            return kafka.tune_groups(config.load(path, environ=environ)).config("g")["fetch.wait.max.ms"]
        finally:
            kafka.tune_groups(config.load(environ={}))

    embedded = {"CRMSYNC_STATE_DIR": str(tmp_path)}
    assert tuned(embedded) == 100
    assert tuned({**embedded, "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}) == 500
    explicit = tmp_path / "crmsync.yaml"
    explicit.write_text("kafka:\n  bootstrap_servers: kafka:9092\n  fetch_wait_ms: 250\n")
    assert tuned({}, explicit) == 250
    services = run.write_effective_config(config.load(environ=embedded), infra.Endpoints(
        bootstrap_servers="127.0.0.1:9092", campaign_dsn="postgresql://u@127.0.0.1:5432/campaign"),
        tmp_path / "run" / "crmsync.yaml")
    assert tuned({}, services) == 100
