"""`kafka.compression` chooses how every producer compresses its batches; each codec offered round-trips through
the embedded broker (Tansu) as it does through Apache Kafka, keys and values intact."""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from crmsync import config, kafka


@pytest.mark.parametrize("codec", ["lz4", "zstd", "snappy", "gzip", "none"])
def test_every_codec_round_trips_through_the_broker(endpoints, codec):
    topic = f"test-compression-{codec}-{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(endpoints.bootstrap_servers, [topic], partitions=2)
    sent = {f"key-{i}".encode(): (f"value {i} " * 40).encode() for i in range(500)}
    kafka.use_compression(config.KafkaSettings(compression=codec))
    try:
        producer = kafka.producer(endpoints.bootstrap_servers)
    finally:
        kafka.use_compression(config.KafkaSettings())
    for key, value in sent.items():
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": endpoints.bootstrap_servers, "group.id": topic})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])  # no group join: quick
    got: dict[bytes, bytes] = {}
    try:
        for _ in range(60):
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                got[message.key()] = message.value()
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent
