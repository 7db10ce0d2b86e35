"""Shared test infrastructure: one real broker and one real PostgreSQL for the whole session.

Uses the embedded defaults under a temporary state dir, or the broker / database named by
KAFKA_BOOTSTRAP_SERVERS / CAMPAIGN_DSN. Each test that needs a Campaign database gets a fresh one, and a
unique Campaign name, so topics and replication slots never collide between tests.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
import yaml

from crmsync import config, infra, kafka, pg
from crmsync.envelope import Change, changes_from_message


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    """Outside pytest's basetemp: another pytest session on the machine resets that tree to mode 0700, and the
    embedded PostgreSQL (running as its own user) would lose access to its data directory."""
    path = Path(tempfile.mkdtemp(prefix="crmsync-test-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_state_dir() -> Iterator[Path]:
    """A state dir of the test's own (its own embedded servers), outside pytest's basetemp as `state_dir` is, and
    removed afterwards (the tests that made one by hand left one in /tmp per run)."""
    path = Path(tempfile.mkdtemp(prefix="crmsync-test-own-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def endpoints(state_dir: Path) -> Iterator[infra.Endpoints]:
    settings = config.load(environ={**__import__("os").environ, "CRMSYNC_STATE_DIR": str(state_dir)})
    found = infra.up(settings)
    yield found
    infra.down(settings)


def _server_dsn(dsn: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=database)


@pytest.fixture
def campaign_db(endpoints: infra.Endpoints) -> Iterator[tuple[str, str]]:
    """A fresh, migrated Campaign database: (dsn, campaign name used in topic names)."""
    dsn, name = pg.fresh_database(endpoints.campaign_dsn, "t")
    yield dsn, name
    with psycopg.connect(_server_dsn(endpoints.campaign_dsn, "postgres"), autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict], Path]:
    def write(data: dict) -> Path:
        path = tmp_path / "crmsync.yaml"
        path.write_text(yaml.safe_dump(data))
        return path
    return write


def consume_changes(bootstrap: str, topic_names: list[str], until: Callable[[list[Change]], bool],
                    timeout: float = 60) -> list[Change]:
    """Read Change envelopes from the start of `topic_names` until `until(seen)` holds or time runs out."""
    consumer = kafka.consumer(bootstrap, f"test-{uuid.uuid4().hex}")
    consumer.subscribe(topic_names)
    seen: list[Change] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(seen):
            for message in consumer.consume(5000, 0.2):
                if message.error() is None:
                    seen.extend(changes_from_message(message.value()))
    finally:
        consumer.close()
    return seen
