"""kill -9 of the writer process in the middle of 10,000 commands: after a restart every command has been
applied exactly once in effect (right row count, right final values, one link per row, nothing rejected)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from crmsync import kafka, process, topics
from crmsync.envelope import record_key
from crmsync.infra import Endpoints
from tests.campaign_writer.conftest import Commands, contact, rows
from tests.waiting import wait_for

CONTACTS = 2_000
# Each round writes a different column, so a lost command leaves a hole: a later command cannot cover for it.
COLUMNS = ("email", "first_name", "last_name", "job_title", "city")  # 5 rounds x 2,000 contacts = 10,000


def _value(column: str, n: int) -> str:
    return f"{column}-{n}"


def _commands(commands: Commands) -> list:
    """Round r: every contact's r-th command. Every fifth contact is deleted in the last round."""
    out = []
    for round_, column in enumerate(COLUMNS):
        for n in range(CONTACTS):
            match = contact(f"003K{n:06d}")
            if round_ == len(COLUMNS) - 1 and n % 5 == 0:
                out.append(commands.delete("recipients", match=match))
            else:
                out.append(commands.upsert("recipients", match=match, **{column: _value(column, n)}))
    return out


def _spawn(endpoints: Endpoints, dsn: str, cfg: Path, state: Path, log: Path) -> subprocess.Popen:
    env = process.service_env(Endpoints(endpoints.bootstrap_servers, dsn), {"CRMSYNC_STATE_DIR": str(state)})
    return subprocess.Popen([sys.executable, "-m", "services.campaign_writer", "--config", str(cfg),
                             "--tables", "recipients"], env=env, cwd=Path(__file__).resolve().parents[2],
                            stdin=subprocess.DEVNULL, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _caught_up(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    """True when the writer's group has committed, in every partition, past the last command produced there.
    (`ends` comes from the producer's delivery reports: the embedded broker's watermarks are not reliable.)"""
    from confluent_kafka import TopicPartition

    probe = kafka.consumer(bootstrap, group)  # not subscribed: it only reads the group's committed offsets
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in committed)
    finally:
        probe.close()


def test_kill_9_in_the_middle_of_10000_commands(endpoints, campaign_db, commands, tmp_path):
    dsn, name = campaign_db
    topic = topics.apply("campaign", name, "recipients")
    kafka.ensure_topics(endpoints.bootstrap_servers, [topic])
    cfg = tmp_path / "crmsync.yaml"
    cfg.write_text(yaml.safe_dump({"campaign": {"name": name}}))
    log = tmp_path / "writer.log"
    writer = _spawn(endpoints, dsn, cfg, tmp_path, log)
    all_commands = _commands(commands)

    ends: dict[int, int] = {}  # partition -> offset after the last command produced there

    def delivered(err, message) -> None:
        tracker(err, message)
        if err is None:
            ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    tracker = kafka.DeliveryTracker()

    def produce_steadily() -> None:  # about 2,500 commands a second, keyed by record like the streams
        producer = kafka.producer(endpoints.bootstrap_servers)
        for start in range(0, len(all_commands), 250):
            for command in all_commands[start:start + 250]:
                producer.produce(topic, value=command.to_json(), key=record_key(command.match),
                                 on_delivery=delivered)
            producer.flush(10)
            time.sleep(0.1)
        kafka.flush_all(producer, tracker)

    producing = threading.Thread(target=produce_steadily)
    try:
        producing.start()
        # kill once the second round is under way
        wait_for(lambda: rows(dsn, "SELECT count(first_name) FROM recipients")[0][0] >= 300, 90,
                 "the writer to apply part of the stream")
        assert producing.is_alive(), "the kill must happen while commands are still arriving"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        landed_at_kill = rows(dsn, "SELECT count(city) FROM recipients")[0][0]
        producing.join()
        writer = _spawn(endpoints, dsn, cfg, tmp_path, log)
        survivors = CONTACTS - CONTACTS // 5

        assert tracker.acked == len(all_commands)
        wait_for(lambda: _caught_up(endpoints.bootstrap_servers, f"crmsync-writer-campaign-{name}", topic, ends), 180,
                 f"the writer to consume and commit all {len(all_commands)} commands")
    finally:
        process.stop(writer)
    assert writer.returncode == 0, "SIGTERM must end the writer cleanly"
    assert landed_at_kill < survivors
    expected = {n for n in range(CONTACTS) if n % 5}
    found = rows(dsn, f"SELECT crm_id, {', '.join(COLUMNS)} FROM recipients")
    assert len(found) == survivors and {int(r[0][4:]) for r in found} == expected
    wrong = [r for r in found if r[1:] != tuple(_value(c, int(r[0][4:])) for c in COLUMNS)]
    assert not wrong, f"{len(wrong)} rows miss a command's effect, e.g. {wrong[:3]}"
    assert rows(dsn, "SELECT count(*) FROM recipients WHERE crm_id IN (SELECT '003K' || lpad(g::text, 6, '0') "
                     "FROM generate_series(0, %s, 5) g)", (CONTACTS - 1,)) == [(0,)]
    assert rows(dsn, "SELECT count(*) FROM crmsync.identity_links l JOIN recipients r "
                     "ON r.id = l.campaign_key AND r.crm_id = l.crm_id") == [(survivors,)]
    assert rows(dsn, "SELECT count(*) FROM crmsync.identity_links") == [(survivors,)]
    assert rows(dsn, "SELECT count(*) FROM crmsync.rejects") == [(0,)]
