"""tansu 0.6: a fetch waiting for data is not answered when data arrives, only at its max wait.

A consumer reads the end of an empty partition with fetch.wait.max.ms=1000 and
fetch.min.bytes=1, so its fetches wait at the broker. Then one record is produced every
~300 ms, and each record's delay from its produce acknowledgement to its arrival at the
consumer is measured. Apache Kafka answers a waiting fetch as soon as min.bytes are there
(the fetch "purgatory"): the delay is a few milliseconds whatever the max wait. tansu answers
it only when the max wait runs out: the delay is spread over the whole wait (median ~500 ms
here), so every consumer's latency is about its fetch.wait.max.ms, and a short max wait costs
the broker a fetch per consumer and partition every few milliseconds even when idle.

Usage: .venv/bin/python tests/tansu/fetch_wait.py 127.0.0.1:9092
Exit status 0 when the broker behaves as Apache Kafka does (median delay < 100 ms), 1 when not.
"""

import statistics
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": f"g-{topic}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 1000,
        "fetch.min.bytes": 1,
    }
)
consumer.assign([TopicPartition(topic, 0, 0)])
consumer.poll(2)  # connected, fetching, nothing there yet

producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
acked = {}


def on_ack(err, msg):
    if err is None:
        acked[msg.value()] = time.monotonic()


delays = []
for i in range(10):
    value = f"record {i}".encode()
    producer.produce(topic, value=value, partition=0, on_delivery=on_ack)
    producer.flush(10)
    m = consumer.poll(5)
    arrived = time.monotonic()
    if m is None or m.error() is not None or m.value() not in acked:
        print(f"record {i} not read within 5 s")
        sys.exit(1)
    delays.append((arrived - acked[m.value()]) * 1000)
    time.sleep(0.3 + 0.037 * i)  # not in step with the broker's waits
consumer.close()
median = statistics.median(delays)
print(f"fetch.wait.max.ms=1000: produce ack -> consumed, median {median:.0f} ms, "
      f"max {max(delays):.0f} ms ({', '.join(f'{d:.0f}' for d in delays)})")
sys.exit(0 if median < 100 else 1)
