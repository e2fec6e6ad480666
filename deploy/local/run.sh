#!/usr/bin/env bash
# Local trial run (`make run`): a durable tansu broker on 127.0.0.1:9092 with its data in .run/,
# and omnirouter with config/default.toml in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${TANSU:?}" "${OMNIROUTER:?}" "${PYTHON:=python3}"
PORT=9092
mkdir -p .run/kafka
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "port $PORT is in use: is another broker or 'make run' running?" >&2
  exit 1
fi
# tansu resolves the SQLite path relative to its working directory.
( cd .run/kafka && exec "$TANSU" broker --listener-url tcp://127.0.0.1:$PORT \
    --advertised-listener-url tcp://127.0.0.1:$PORT --storage-engine 'sqlite://tansu.db' \
    >> ../tansu.log 2>&1 ) &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; wait $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

cat <<MSG

  Kafka (tansu):  127.0.0.1:$PORT   (data in .run/kafka, log in .run/tansu.log)
  omnirouter:     http://127.0.0.1:8080

  Send a message:
    curl -i -X POST http://127.0.0.1:8080/v1/inbound/demo \\
      -H 'Authorization: Bearer demo-token' -H 'Content-Type: application/json' \\
      -d '{"contact":{"id":"cust-1","name":"Nguyễn Văn An"},"text":"Xin chào!","client_message_id":"m-1"}'
  Read it back as a CRM would:
    $PYTHON tests/crm_consume.py --bootstrap 127.0.0.1:$PORT --topic omni.inbound.v1 --count 1
  Metrics:    curl http://127.0.0.1:8080/metrics
  Readiness:  curl http://127.0.0.1:8080/readyz

MSG
"$OMNIROUTER" --config config/default.toml run
