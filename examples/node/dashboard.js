#!/usr/bin/env node
// Watch rmcs events from Node.js (amqplib): one line per event.
//
//   node dashboard.js [--count N] [--json] [PATTERN...]
//
// Binds an exclusive, auto-deleted queue to the event exchange with each PATTERN (default job.#).
// Routing keys are job.<state>.<cluster> (cluster "_" before placement),
// cluster.<up|degraded|down>.<cluster> and control.stop / control.stop.answer, so for example
//   job.#                every job event          job.failed.#       every failure
//   job.*.gpu_cluster    one cluster's jobs       cluster.#          cluster health
// Events are at-least-once; a redelivered job event (same submission id, state and attempt) is
// printed once. --count N exits after N printed events; --json prints each event body as is.
// Prints "listening ..." on stderr once the queue is bound.
//
// Environment: RMCS_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
// RMCS_EVENTS_EXCHANGE (rmcs.events).
'use strict';

const amqp = require('amqplib');

function die(message) {
  console.error(`dashboard.js: ${message}`);
  process.exit(2);
}

function parse(argv) {
  const opts = { count: Infinity, json: false, patterns: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--count') {
      const v = argv[++i];
      if (!/^[1-9][0-9]*$/.test(v ?? '')) die('--count wants a positive integer');
      opts.count = Number(v);
    } else if (arg === '--json') {
      opts.json = true;
    } else if (arg === '-h' || arg === '--help') {
      console.log('usage: node dashboard.js [--count N] [--json] [PATTERN...]   (default pattern job.#)');
      process.exit(0);
    } else if (arg.startsWith('-')) {
      die(`unknown option ${arg} (see --help)`);
    } else {
      opts.patterns.push(arg);
    }
  }
  if (!opts.patterns.length) opts.patterns.push('job.#');
  return opts;
}

const show = (v) => (v === null || v === undefined ? '-' : String(v));

function format(key, e) {
  if (e.state !== undefined) { // a job event
    let line = `${show(e.ts)} ${key} ${e.state} ${e.submission_id} cluster=${show(e.cluster)} attempt=${show(e.attempt)}`;
    if (e.tags && e.tags.length) line += ` tags=${e.tags.join(',')}`;
    if (e.final) line += ' final';
    if (e.message) line += ` - ${e.message}`;
    return line;
  }
  if (e.health !== undefined) { // cluster health
    return `${show(e.ts)} ${key} ${e.cluster} health=${e.health}${e.message ? ` - ${e.message}` : ''}`;
  }
  if (e.outcome !== undefined) { // control.stop.answer
    return `${key} ${e.submission_id} outcome=${e.outcome}${e.message ? ` - ${e.message}` : ''}`;
  }
  if (key === 'control.stop') {
    return `${key} ${show(e.submission_id)} reason=${show(e.reason)}`;
  }
  return `${key} ${JSON.stringify(e)}`;
}

async function main() {
  const opts = parse(process.argv.slice(2));
  const url = process.env.RMCS_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
  const exchange = process.env.RMCS_EVENTS_EXCHANGE || 'rmcs.events';

  const conn = await amqp.connect(url);
  const ch = await conn.createChannel();
  // Same declaration as the daemon's (idempotent), so the dashboard may start first.
  await ch.assertExchange(exchange, 'topic', { durable: true });
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  for (const pattern of opts.patterns) await ch.bindQueue(queue, exchange, pattern);
  await ch.prefetch(100);

  let printed = 0;
  let closing = false;
  const seen = new Set();
  const close = async (code) => {
    if (closing) return;
    closing = true;
    await conn.close().catch(() => {});
    process.exit(code);
  };
  process.on('SIGINT', () => close(0));
  process.on('SIGTERM', () => close(0));
  conn.on('error', (err) => { console.error(`dashboard.js: ${err.message}`); });
  conn.on('close', () => { if (!closing) { console.error('dashboard.js: connection closed'); process.exit(1); } });

  await ch.consume(queue, (msg) => {
    if (msg === null || closing) return; // consumer cancelled by the broker, or done
    ch.ack(msg);
    const key = msg.fields.routingKey;
    let event;
    try {
      event = JSON.parse(msg.content.toString('utf8'));
    } catch {
      event = { unparsed: msg.content.toString('utf8') };
    }
    if (event.state !== undefined) { // at-least-once: print each (job, state, attempt) once
      const id = `${event.submission_id}\u0000${event.state}\u0000${event.attempt}`;
      if (seen.has(id)) return;
      seen.add(id);
    }
    process.stdout.write(`${opts.json ? JSON.stringify(event) : format(key, event)}\n`);
    if (++printed >= opts.count) {
      // Let stdout drain before exiting (it may be a pipe).
      process.stdout.write('', () => close(0));
    }
  });
  console.error(`dashboard.js: listening on ${exchange} for ${opts.patterns.join(' ')}`);
}

main().catch((err) => {
  console.error(`dashboard.js: ${err.message}`);
  process.exit(1);
});
