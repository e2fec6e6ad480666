"""tansu 0.6 (SQLite storage): a produce with a producer epoch the broker never issued kills it.

When an idempotent librdkafka producer times a record out, it bumps its producer epoch itself
(KIP-360: "the idempotent producer can bump its own epoch") and sends the next records with
it. Apache Kafka accepts the higher epoch. tansu's SQLite engine looks the epoch up, finds no
row, and panics in its storage task ("more or less than one row",
`Delegate::idempotent_message_check`); from then on every request that needs storage fails,
so even a brand-new producer cannot produce until tansu is restarted.

The broker is stalled with SIGSTOP (as a frozen host or a long pause would) while one record
is sent, so that record times out; then it is resumed and the same producer sends again.

Usage (the broker's pid is needed to stall it):
  tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine sqlite://tansu.db &
  .venv/bin/python tests/tansu/epoch_bump.py 127.0.0.1:9092 $!
Exit status 0 when the broker behaves as Apache Kafka does, 1 when a fresh producer's record
fails after the bumped-epoch produce.
"""

import os
import signal
import sys
import uuid

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, broker_pid = sys.argv[1], int(sys.argv[2])
topic = f"epoch-bump-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()


def produce(producer, value, wait):
    """Sends one record; the delivery error, or None once the broker acknowledged it."""
    outcome = []
    producer.produce(topic, value=value, partition=0, on_delivery=lambda e, _m: outcome.append(e))
    producer.flush(wait)
    return outcome[0] if outcome else KafkaError(KafkaError._TIMED_OUT, "no delivery report")


idempotent = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "message.timeout.ms": 3000,
        "request.timeout.ms": 2000,
        "log_level": 3,
    }
)
assert produce(idempotent, b"before the stall", 10) is None, "the broker is not healthy"

os.kill(broker_pid, signal.SIGSTOP)
try:
    timed_out = produce(idempotent, b"times out: the producer bumps its epoch", 10)
finally:
    os.kill(broker_pid, signal.SIGCONT)
print(f"record sent while the broker was stalled: {timed_out}")

after = produce(idempotent, b"sent with the bumped epoch", 15)
print(f"same producer, after the broker resumed: {after or 'acknowledged'}")

fresh = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 3})
later = produce(fresh, b"a new producer id", 15)
print(f"a fresh producer afterwards: {later or 'acknowledged'}")
sys.exit(0 if after is None and later is None else 1)
