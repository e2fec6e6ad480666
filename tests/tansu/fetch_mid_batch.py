"""tansu 0.6: a fetch from an offset inside a record batch skips the rest of that batch.

Produces eight records in one batch (one produce request), then reads the partition from
offset 2 (as a consumer group whose committed offset is 2 does). Apache Kafka returns the
whole batch and the client drops the records before 2: the first record read is offset 2.
tansu returns the next batch: the first record read is offset 8, records 2..7 are never seen.

Usage: .venv/bin/python tests/tansu/fetch_mid_batch.py 127.0.0.1:9092
Exit status 0 when the broker behaves as Apache Kafka does, 1 when it skips.
"""

import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
topic = f"mid-batch-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()

# One batch: everything queued before the flush goes out in one produce request.
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000})
for i in range(8):
    producer.produce(topic, key=b"k", value=f"first batch {i}".encode(), partition=0)
producer.flush(10)
for i in range(8, 12):
    producer.produce(topic, key=b"k", value=f"second batch {i}".encode(), partition=0)
producer.flush(10)

consumer = Consumer(
    {"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "enable.auto.commit": False}
)
consumer.assign([TopicPartition(topic, 0, 2)])
first = None
while first is None:
    m = consumer.poll(10)
    if m is None:
        break
    if m.error() is None:
        first = m.offset()
consumer.close()
print(f"asked for offset 2, first record read: {first}")
sys.exit(0 if first == 2 else 1)
