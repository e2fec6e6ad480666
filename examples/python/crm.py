#!/usr/bin/env python3
"""A small CRM integration with omnirouter over Kafka, in Python with confluent-kafka.

What it does, as a CRM or an agent tool would:

1. puts an agent online: `upsert_agent` then `set_presence` on omni.commands.v1;
2. reads the customers' messages (omni.inbound.v1, `omni.message.received`) and the router's
   decisions (omni.routing.v1, `omni.routing.assigned`);
3. when a conversation is assigned to its agent, replies to the customer on omni.outbound.v1
   (`omni.message.send` with `agent_id`, which the router counts as the agent's response).

It prints one JSON line per thing it did, and exits 0 once it has replied to --replies
conversations, 1 if --max-seconds pass first. Against `make run`'s daemon:

    .venv/bin/python examples/python/crm.py --agent lan --replies 1
    curl -X POST localhost:8080/v1/inbound/demo -H 'Authorization: Bearer demo-token' \\
      -H 'Content-Type: application/json' \\
      -d '{"contact":{"id":"cust-1","language":"vi"},"text":"Chào shop"}'

The contract it follows (docs/contract.md): every value is a CloudEvent 1.0 in structured JSON
mode, with the Kafka header `content-type: application/cloudevents+json`; every key is the
tenant id, partitioned as the Java client does (murmur2); readers are tolerant (new event types
and fields may appear in a .v1 topic).
"""
import argparse
import json
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaException, Producer

INBOUND = "omni.inbound.v1"
ROUTING = "omni.routing.v1"
COMMANDS = "omni.commands.v1"
OUTBOUND = "omni.outbound.v1"
HEADERS = [("content-type", b"application/cloudevents+json")]
SOURCE = "/crm/python-example"


def say(did, **fields):
    """One JSON line on stdout per thing done."""
    print(json.dumps({"did": did, **fields}, ensure_ascii=False), flush=True)


def now_rfc3339():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value):
    """An RFC 3339 time as a UTC datetime (None if it is not one). omnirouter may write up to
    nine fractional digits; datetime keeps six."""
    try:
        value = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
        return datetime.fromisoformat(value)
    except (AttributeError, TypeError, ValueError):
        return None


def cloud_event(tenant, event_type, data, subject=None):
    """A CloudEvent 1.0 as omnirouter reads it: `subject` only when it is about a conversation."""
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCE,
        "type": event_type,
        "time": now_rfc3339(),
        "datacontenttype": "application/json",
        "tenant": tenant,
        "data": data,
    }
    if subject is not None:
        event["subject"] = subject
    return event


class Crm:
    def __init__(self, args):
        self.args = args
        self.producer = Producer({
            "bootstrap.servers": args.bootstrap,
            "client.id": f"crm-example-{args.agent}",
            # Where a key goes: the Java client's murmur2, as omnirouter's partitioning contract
            # says. librdkafka's default (consistent_random, CRC32) would put the tenant's
            # records on another partition than the router's own.
            "partitioner": "murmur2_random",
            # Nothing is "done" before every in-sync replica has it; retries never duplicate.
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        })
        self.consumer = Consumer({
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            # A new group starts at the beginning, so a conversation that arrived before the
            # CRM started is known when it is assigned. Offsets are committed as it goes; a
            # real CRM keeps its conversations in its database, not in memory as here.
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        })
        self.conversations = {}  # conversation id -> what a reply needs (channel, recipient)
        self.assigned = {}  # conversation id -> the assignment event, for our agent
        self.replied = set()  # conversation ids answered (or being answered)
        self.replies = 0  # replies Kafka acknowledged
        self.started = None  # when our agent came online

    def produce(self, topic, event, on_delivery=None):
        self.producer.produce(
            topic,
            key=self.args.tenant.encode(),
            value=json.dumps(event, ensure_ascii=False).encode(),
            headers=HEADERS,
            on_delivery=on_delivery,
        )

    def send_command(self, command):
        """A command on omni.commands.v1, waiting until Kafka acknowledged it."""
        failed = []

        def report(err, _msg):
            if err is not None:
                failed.append(str(err))

        self.produce(COMMANDS, cloud_event(self.args.tenant, "omni.command", command), report)
        if self.producer.flush(30) or failed:
            raise KafkaException(f"command {command['command']} not acknowledged: {failed}")

    def agent_online(self):
        self.started = datetime.now(timezone.utc)
        skills = dict(self.args.skill)
        self.send_command({"command": "upsert_agent", "agent": self.args.agent,
                           "skills": skills, "capacity": self.args.capacity})
        self.send_command({"command": "set_presence", "agent": self.args.agent,
                           "presence": "online"})
        say("agent_online", tenant=self.args.tenant, agent=self.args.agent, skills=skills,
            capacity=self.args.capacity)

    def handle(self, msg):
        """One record of omni.inbound.v1 or omni.routing.v1. A tolerant reader: records of other
        tenants, of unknown types or not CloudEvents at all are skipped, unknown fields ignored."""
        if msg.key() != self.args.tenant.encode():
            return
        try:
            event = json.loads(msg.value())
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return
        data = event["data"]
        if event.get("type") == "omni.message.received":
            self.on_message(data)
        elif event.get("type") == "omni.routing.assigned":
            self.on_assigned(event, data)
        self.reply_to_ready()

    def on_message(self, data):
        conversation = data.get("conversation_id")
        contact = data.get("contact") or {}
        if not conversation or "id" not in contact or "channel" not in data:
            return
        self.conversations[conversation] = {"channel": data["channel"], "recipient": contact["id"]}
        say("read_message", conversation_id=conversation, channel=data["channel"],
            contact=contact["id"], text=(data.get("message") or {}).get("text"))

    def on_assigned(self, event, data):
        if data.get("agent") != self.args.agent:
            return
        conversation = data.get("conversation") or event.get("subject")
        # An assignment from before this run (history a new consumer group reads) is not ours
        # to answer now: it may long be resolved.
        when = parse_time(event.get("time"))
        if when is None or when < self.started:
            say("skipped_old_assignment", conversation_id=conversation, time=event.get("time"))
            return
        self.assigned[conversation] = event
        say("read_assignment", conversation_id=conversation, agent=data["agent"],
            queue=data.get("queue"))

    def reply_to_ready(self):
        """Replies to each conversation assigned to our agent whose message we have read (the
        two topics are read in parallel, so either may come first)."""
        for conversation in list(self.assigned):
            details = self.conversations.get(conversation)
            if details is None or conversation in self.replied:
                continue
            self.replied.add(conversation)
            reply = cloud_event(self.args.tenant, "omni.message.send", {
                "tenant": self.args.tenant,
                "conversation_id": conversation,
                "channel": details["channel"],
                "recipient": details["recipient"],
                "text": self.args.reply,
                "agent_id": self.args.agent,
            }, subject=conversation)
            self.produce(OUTBOUND, reply, self.delivered(conversation, reply["id"]))

    def delivered(self, conversation, event_id):
        def report(err, msg):
            if err is not None:
                raise KafkaException(f"reply to {conversation} not acknowledged: {err}")
            self.replies += 1
            say("replied", conversation_id=conversation, event_id=event_id,
                partition=msg.partition(), offset=msg.offset())
        return report

    def run(self):
        deadline = time.monotonic() + self.args.max_seconds if self.args.max_seconds else None
        self.agent_online()
        self.consumer.subscribe([INBOUND, ROUTING])
        try:
            while self.args.replies == 0 or self.replies < self.args.replies:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"timed out after {self.args.max_seconds} s with {self.replies} of "
                          f"{self.args.replies} replies", file=sys.stderr)
                    return 1
                msg = self.consumer.poll(0.2)
                self.producer.poll(0)  # runs the delivery reports
                if msg is None:
                    continue
                if msg.error():
                    print(f"kafka: {msg.error()}", file=sys.stderr)
                    continue
                self.handle(msg)
        finally:
            self.producer.flush(30)
            self.consumer.close()
        say("done", replies=self.replies)
        return 0


def skill(text):
    name, _, level = text.partition("=")
    if not name or not level.isdigit() or not 1 <= int(level) <= 5:
        raise argparse.ArgumentTypeError(f"want NAME=1..5, got {text!r}")
    return name, int(level)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    ap.add_argument("--tenant", default="demo")
    ap.add_argument("--agent", default="lan", help="the agent id this CRM works for")
    ap.add_argument("--skill", type=skill, action="append",
                    help="NAME=LEVEL, repeatable (default vi=4)")
    ap.add_argument("--capacity", type=int, default=3, help="conversations at once")
    ap.add_argument("--reply", default="Dạ, em chào anh/chị, em kiểm tra ngay ạ.",
                    help="the reply text")
    ap.add_argument("--replies", type=int, default=1,
                    help="exit 0 after replying to this many conversations (0: never)")
    ap.add_argument("--max-seconds", type=float, default=120,
                    help="exit 1 if the replies are not done by then (0: no limit)")
    ap.add_argument("--group", help="consumer group (default crm-example-TENANT-AGENT)")
    args = ap.parse_args()
    args.skill = args.skill or [("vi", 4)]
    args.group = args.group or f"crm-example-{args.tenant}-{args.agent}"
    try:
        return Crm(args).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
