"""tansu 0.6 quirk, reproduced with a plain Kafka client (confluent-kafka).

Two members share a 4-partition topic (eager `range` assignment). One is killed with
SIGKILL and a replacement joins at once, before the dead member's session (6 s) expires:
the rebalance still counts the dead member and hands it partitions. When its session then
expires, Apache Kafka starts a new rebalance (the survivors' heartbeats get
REBALANCE_IN_PROGRESS) and the dead member's partitions are reassigned; tansu 0.6 moves the
group back to "forming" with the same generation, the survivors' heartbeats succeed, nobody
rejoins, and those partitions stay assigned to nobody.

Which survivor's heartbeat notices the expiry decides it (the one that does is told to rejoin,
the other is not), so the script tries four times.

Usage: python session_expiry.py BOOTSTRAP
Prints, per try, the partitions the live members hold 15 s after the dead member's session
expired; exits 1 if some try left partitions held by nobody (tansu 0.6 did in 2 of 4 tries
here), 0 if every try ended with all held (Apache Kafka).
"""
import json, os, signal, subprocess, sys, time

from confluent_kafka.admin import AdminClient, NewTopic

MEMBER = r'''
import json, sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
              "partition.assignment.strategy": "range", "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500})
c.subscribe([sys.argv[3]])
while True:
    c.poll(0.2)
    print(json.dumps(sorted(tp.partition for tp in c.assignment())), flush=True)
'''

def start(bootstrap, group, topic):
    return subprocess.Popen([sys.executable, "-c", MEMBER, bootstrap, group, topic],
                            stdout=subprocess.PIPE, text=True)

def held(member, seconds):
    """The member's assignment after reading its reports for `seconds`."""
    last, end = [], time.time() + seconds
    while time.time() < end:
        line = member.stdout.readline()
        if line:
            last = json.loads(line)
    return last

def attempt(bootstrap, n):
    topic, group = f"expiry-{os.getpid()}-{n}", f"expiry-{os.getpid()}-{n}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        f.result()
    a, b = start(bootstrap, group, topic), start(bootstrap, group, topic)
    time.sleep(8)  # let the two-member group form
    a.send_signal(signal.SIGKILL)
    replacement = start(bootstrap, group, topic)
    # The dead member's session expires after 6 s; give the group 15 s more.
    got = set(held(b, 21)) | set(held(replacement, 1))
    for m in (b, replacement):
        m.kill()
    print(f"try {n}: partitions held by live members: {sorted(got)} of [0, 1, 2, 3]")
    return got == {0, 1, 2, 3}

def main():
    results = [attempt(sys.argv[1], n) for n in range(4)]
    sys.exit(0 if all(results) else 1)

main()
