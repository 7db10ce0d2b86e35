"""crmsync's consumers wait long on an idle fetch, and still get a new message at once: the broker answers a
fetch as soon as data is there (long polling), so the wait costs no latency, only fewer idle fetches."""
from __future__ import annotations

import time
import uuid

from crmsync import kafka


def test_a_message_reaches_a_waiting_consumer_long_before_its_fetch_wait_ends(endpoints) -> None:
    names = [f"test-latency-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    kafka.ensure_topics(endpoints.bootstrap_servers, names, partitions=4)
    consumer = kafka.consumer(endpoints.bootstrap_servers, names[0])
    wait = kafka.FETCH_WAIT_MS / 1000
    producer = kafka.producer(endpoints.bootstrap_servers)
    consumer.subscribe(names)
    latencies = []
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no partitions assigned"
            consumer.poll(0.1)
        for _ in range(5):  # the first fetches go out, then they wait at the broker
            consumer.poll(0.1)
        for n in range(10):
            time.sleep(0.15)  # inside an idle fetch's wait
            sent = time.monotonic()
            producer.produce(names[n % 3], value=b"x", key=str(n).encode())
            producer.flush(10)
            while (message := consumer.poll(5)) is None or message.error():
                assert time.monotonic() - sent < 10, "the message never came"
            latencies.append(time.monotonic() - sent)
    finally:
        consumer.close()
    assert wait >= 0.5
    assert max(latencies) < wait / 2, f"a message waited for the fetch wait: {latencies}"

