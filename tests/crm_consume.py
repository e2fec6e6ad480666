#!/usr/bin/env python3
"""A minimal external "CRM" consumer of omnirouter's topics, using confluent-kafka.

Reads CloudEvents from a topic and prints one JSON line per record:
{"key": <tenant>, "partition": N, "offset": N, "event": <CloudEvent>}.
Checks each value is a structured-mode CloudEvent 1.0 and exits non-zero otherwise.

    python tests/crm_consume.py --bootstrap 127.0.0.1:9092 --topic omni.inbound.v1 --count 1
"""
import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer

# `subject` (the conversation) is there on every event about a conversation, not on all
# (a tick, an agent's presence): not required here.
REQUIRED = ("specversion", "id", "source", "type", "time", "datacontenttype", "data")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="omni.inbound.v1")
    ap.add_argument("--group", default=f"crm-example-{uuid.uuid4()}")
    ap.add_argument("--count", type=int, default=1, help="stop after this many records (0 = forever)")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 20,
    })
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while args.count == 0 or seen < args.count:
            if args.count and time.monotonic() > deadline:
                print(f"timed out after {seen} of {args.count} records", file=sys.stderr)
                return 1
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                print(f"kafka error: {msg.error()}", file=sys.stderr)
                continue
            event = json.loads(msg.value())
            missing = [k for k in REQUIRED if k not in event]
            if missing or event.get("specversion") != "1.0":
                print(f"not a CloudEvent 1.0 (missing {missing}): {event}", file=sys.stderr)
                return 2
            key = msg.key().decode() if msg.key() else None
            print(json.dumps({"key": key, "partition": msg.partition(), "offset": msg.offset(),
                              "event": event}, ensure_ascii=False), flush=True)
            consumer.commit(msg, asynchronous=False)
            seen += 1
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
