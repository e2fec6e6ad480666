#!/usr/bin/env node
// A small CRM integration with omnirouter over Kafka, in Node.js with kafkajs.
//
// What it does, as a CRM or an agent tool would:
//
// 1. puts an agent online: `upsert_agent` then `set_presence` on omni.commands.v1;
// 2. reads the customers' messages (omni.inbound.v1, `omni.message.received`) and the router's
//    decisions (omni.routing.v1, `omni.routing.assigned`);
// 3. when a conversation is assigned to its agent, replies to the customer on omni.outbound.v1
//    (`omni.message.send` with `agent_id`, which the router counts as the agent's response).
//
// It prints one JSON line per thing it did, and exits 0 once it has replied to --replies
// conversations, 1 if --max-seconds pass first. Against `make run`'s daemon:
//
//   make node-deps        # npm ci --prefix examples/node
//   node examples/node/crm.js --agent lan --replies 1
//   curl -X POST localhost:8080/v1/inbound/demo -H 'Authorization: Bearer demo-token' \
//     -H 'Content-Type: application/json' \
//     -d '{"contact":{"id":"cust-1","language":"vi"},"text":"Chào shop"}'
//
// The contract it follows (docs/contract.md): every value is a CloudEvent 1.0 in structured JSON
// mode, with the Kafka header `content-type: application/cloudevents+json`; every key is the
// tenant id, partitioned as the Java client does (murmur2); readers are tolerant (new event types
// and fields may appear in a .v1 topic).
'use strict';

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { Kafka, Partitioners, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');
const lz4 = require('lz4-napi');

// omnirouter's producers compress record batches with LZ4 (LZ4 frames, with block and content
// checksums); kafkajs ships only gzip, so reading its topics needs an LZ4 codec. lz4-napi comes
// with prebuilt binaries (nothing to compile) and reads every frame option.
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  compress: (encoder) => lz4.compressFrame(encoder.buffer),
  decompress: (buffer) => lz4.decompressFrame(buffer),
});

const INBOUND = 'omni.inbound.v1';
const ROUTING = 'omni.routing.v1';
const COMMANDS = 'omni.commands.v1';
const OUTBOUND = 'omni.outbound.v1';
const HEADERS = { 'content-type': 'application/cloudevents+json' };
const SOURCE = '/crm/node-example';

const USAGE = `usage: node crm.js [options]
  --bootstrap HOST:PORT[,...]  Kafka bootstrap servers (default 127.0.0.1:9092)
  --tenant ID                  (default demo)
  --agent ID                   the agent id this CRM works for (default lan)
  --skill NAME=LEVEL           repeatable (default vi=4)
  --capacity N                 conversations at once (default 3)
  --reply TEXT                 the reply text
  --replies N                  exit 0 after replying to this many conversations (default 1; 0: never)
  --max-seconds S              exit 1 if the replies are not done by then (default 120; 0: no limit)
  --group ID                   consumer group (default crm-example-TENANT-AGENT)
  --no-idempotence             plain acks=all producer: for tansu 0.6 (make run, the tests), which
                               refuses kafkajs's InitProducerId v1; keep idempotence on real Kafka`;

/** One JSON line on stdout per thing done. */
function say(did, fields) {
  process.stdout.write(JSON.stringify({ did, ...fields }) + '\n');
}

/** A CloudEvent 1.0 as omnirouter reads it: `subject` only when it is about a conversation. */
function cloudEvent(tenant, type, data, subject) {
  const event = {
    specversion: '1.0',
    id: crypto.randomUUID(),
    source: SOURCE,
    type,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    tenant,
    data,
  };
  if (subject !== undefined) event.subject = subject;
  return event;
}

function options() {
  const { values } = parseArgs({
    options: {
      bootstrap: { type: 'string', default: '127.0.0.1:9092' },
      tenant: { type: 'string', default: 'demo' },
      agent: { type: 'string', default: 'lan' },
      skill: { type: 'string', multiple: true, default: ['vi=4'] },
      capacity: { type: 'string', default: '3' },
      reply: { type: 'string', default: 'Dạ, em chào anh/chị, em kiểm tra ngay ạ.' },
      replies: { type: 'string', default: '1' },
      'max-seconds': { type: 'string', default: '120' },
      group: { type: 'string' },
      'no-idempotence': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const number = (name) => {
    const n = Number(values[name]);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: want a number, got ${values[name]}`);
    return n;
  };
  const skills = {};
  for (const s of values.skill) {
    const [name, level] = s.split('=');
    if (!name || !/^[1-5]$/.test(level ?? '')) throw new Error(`--skill: want NAME=1..5, got ${s}`);
    skills[name] = Number(level);
  }
  return {
    bootstrap: values.bootstrap.split(','),
    tenant: values.tenant,
    agent: values.agent,
    skills,
    capacity: number('capacity'),
    reply: values.reply,
    replies: number('replies'),
    maxSeconds: number('max-seconds'),
    group: values.group ?? `crm-example-${values.tenant}-${values.agent}`,
    idempotent: !values['no-idempotence'],
  };
}

class Crm {
  constructor(opts) {
    this.opts = opts;
    const kafka = new Kafka({
      clientId: `crm-example-${opts.agent}`,
      brokers: opts.bootstrap,
      // kafkajs logs to stdout by default; ours is for the JSON lines.
      logLevel: logLevel.WARN,
      logCreator: () => ({ namespace, label, log }) =>
        process.stderr.write(JSON.stringify({ level: label, namespace, ...log }) + '\n'),
    });
    this.producer = kafka.producer({
      // kafkajs's default partitioner since 2.0 is the Java client's murmur2, as omnirouter's
      // partitioning contract wants; naming it keeps it so (and silences kafkajs's warning).
      createPartitioner: Partitioners.DefaultPartitioner,
      // Every send below waits for acks -1 (all): nothing is "done" before every in-sync
      // replica has it, and the producer is idempotent (kafkajs then keeps one request in
      // flight), so a retried send is never written twice. --no-idempotence turns that off for
      // tansu 0.6 (`make run`'s broker and the tests'), which refuses kafkajs's InitProducerId
      // v1; without it a retry may write a reply twice, with the same event id, and omnirouter
      // still sends it once.
      idempotent: opts.idempotent,
    });
    // A new group starts at the beginning (fromBeginning below), so a conversation that
    // arrived before the CRM started is known when it is assigned. kafkajs commits a record's
    // offset once eachMessage has finished with it; a real CRM keeps its conversations in its
    // database, not in memory as here.
    this.consumer = kafka.consumer({ groupId: opts.group });
    this.conversations = new Map(); // conversation id -> what a reply needs (channel, recipient)
    this.assigned = new Map(); // conversation id -> the assignment event, for our agent
    this.replied = new Set(); // conversation ids answered (or being answered)
    this.replies = 0; // replies Kafka acknowledged
    this.started = null; // when our agent came online (ms since the epoch)
    this.finished = new Promise((resolve) => (this.finish = resolve));
    // A consumer that crashed for good (kafkajs restarts it after retriable errors) ends the run.
    this.crashed = new Promise((_, reject) =>
      this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
        if (!payload.restart) reject(payload.error);
      }),
    );
  }

  /** Produces `event` keyed by the tenant, waiting until Kafka acknowledged it. */
  async produce(topic, event) {
    const [meta] = await this.producer.send({
      topic,
      acks: -1,
      messages: [{ key: this.opts.tenant, value: JSON.stringify(event), headers: HEADERS }],
    });
    return meta;
  }

  async agentOnline() {
    const { tenant, agent, skills, capacity } = this.opts;
    this.started = Date.now();
    const command = (data) => this.produce(COMMANDS, cloudEvent(tenant, 'omni.command', data));
    await command({ command: 'upsert_agent', agent, skills, capacity });
    await command({ command: 'set_presence', agent, presence: 'online' });
    say('agent_online', { tenant, agent, skills, capacity });
  }

  /**
   * One record of omni.inbound.v1 or omni.routing.v1. A tolerant reader: records of other
   * tenants, of unknown types or not CloudEvents at all are skipped, unknown fields ignored.
   */
  async handle(message) {
    if (message.key?.toString() !== this.opts.tenant) return;
    let event;
    try {
      event = JSON.parse(message.value.toString());
    } catch {
      return;
    }
    if (event === null || typeof event !== 'object' || typeof event.data !== 'object' || event.data === null) {
      return;
    }
    if (event.type === 'omni.message.received') this.onMessage(event.data);
    else if (event.type === 'omni.routing.assigned') this.onAssigned(event, event.data);
    await this.replyToReady();
  }

  onMessage(data) {
    const conversation = data.conversation_id;
    const contact = data.contact ?? {};
    if (!conversation || contact.id === undefined || data.channel === undefined) return;
    this.conversations.set(conversation, { channel: data.channel, recipient: contact.id });
    say('read_message', {
      conversation_id: conversation,
      channel: data.channel,
      contact: contact.id,
      text: data.message?.text,
    });
  }

  onAssigned(event, data) {
    if (data.agent !== this.opts.agent) return;
    const conversation = data.conversation ?? event.subject;
    // An assignment from before this run (history a new consumer group reads) is not ours to
    // answer now: it may long be resolved.
    const when = Date.parse(event.time);
    if (!(when >= this.started)) {
      say('skipped_old_assignment', { conversation_id: conversation, time: event.time });
      return;
    }
    this.assigned.set(conversation, event);
    say('read_assignment', { conversation_id: conversation, agent: data.agent, queue: data.queue });
  }

  /**
   * Replies to each conversation assigned to our agent whose message we have read (the two
   * topics are read in parallel, so either may come first).
   */
  async replyToReady() {
    const { tenant, agent, reply: text } = this.opts;
    for (const conversation of this.assigned.keys()) {
      const details = this.conversations.get(conversation);
      if (details === undefined || this.replied.has(conversation)) continue;
      this.replied.add(conversation);
      const reply = cloudEvent(
        tenant,
        'omni.message.send',
        { tenant, conversation_id: conversation, ...details, text, agent_id: agent },
        conversation,
      );
      const meta = await this.produce(OUTBOUND, reply);
      this.replies += 1;
      say('replied', {
        conversation_id: conversation,
        event_id: reply.id,
        partition: meta.partition,
        offset: Number(meta.baseOffset),
      });
      if (this.opts.replies > 0 && this.replies >= this.opts.replies) this.finish();
    }
  }

  async run() {
    await this.producer.connect();
    await this.agentOnline();
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [INBOUND, ROUTING], fromBeginning: true });
    await this.consumer.run({ eachMessage: ({ message }) => this.handle(message) });
    await Promise.race([this.finished, this.crashed]);
  }

  async close() {
    await this.consumer.disconnect();
    await this.producer.disconnect();
  }
}

async function main() {
  let opts;
  try {
    opts = options();
  } catch (e) {
    console.error(`${e.message}\n${USAGE}`);
    return 2;
  }
  const crm = new Crm(opts);
  let timer;
  const timeout = new Promise((resolve) => {
    if (opts.maxSeconds > 0) timer = setTimeout(() => resolve('timeout'), opts.maxSeconds * 1000);
  });
  const stopped = new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  try {
    const outcome = await Promise.race([crm.run().then(() => 'done'), timeout, stopped]);
    if (outcome === 'timeout') {
      console.error(`timed out after ${opts.maxSeconds} s with ${crm.replies} of ${opts.replies} replies`);
      return 1;
    }
    if (outcome !== 'done') return 130;
    say('done', { replies: crm.replies });
    return 0;
  } finally {
    clearTimeout(timer);
    await crm.close();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
