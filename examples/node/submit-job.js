#!/usr/bin/env node
// Submit one job to rmcs from Node.js (amqplib), with a publisher confirm.
//
//   node submit-job.js [options] ENTRYPOINT...
//
// ENTRYPOINT is the shell command the cluster runs (several words are joined with spaces).
// Prints the submission id on stdout once the broker has confirmed the message.
//
// Options: --submission-id ID, --job-id ID, --priority 0..9|HIGH|NORMAL|LOW, --cpus N, --gpus N,
// --memory GIB, --cluster NAME (preferred_cluster), --cluster-tag TAG (repeatable),
// --tag TAG (repeatable), --max-retries N, --queue-timeout S, --correlation-id ID, --print.
//
// Environment: RMCS_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
// RMCS_INTAKE_EXCHANGE (rmcs.jobs), RMCS_INTAKE_ROUTING_KEY (submit).
'use strict';

const crypto = require('node:crypto');
const amqp = require('amqplib');

const PRIORITY_NAMES = { HIGH: 9, NORMAL: 5, LOW: 1 };
const SUBMISSION_ID = /^[A-Za-z0-9._-]{1,128}$/;

function die(message) {
  console.error(`submit-job.js: ${message}`);
  process.exit(2);
}

function number(option, value) {
  if (!/^[0-9]+(\.[0-9]+)?$/.test(value)) die(`${option} wants a number, got '${value}'`);
  return Number(value);
}

function parse(argv) {
  const job = {};
  const resources = {};
  const opts = { print: false, correlationId: undefined };
  const words = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--submission-id': job.submission_id = value(); break;
      case '--job-id': job.job_id = value(); break;
      case '--priority': {
        const p = value();
        const n = PRIORITY_NAMES[p.toUpperCase()] ?? (/^[0-9]$/.test(p) ? Number(p) : undefined);
        if (n === undefined) die(`--priority wants 0..9 or HIGH/NORMAL/LOW, got '${p}'`);
        job.priority = n;
        break;
      }
      case '--cpus': resources.CPU = number(arg, value()); break;
      case '--gpus': resources.GPU = number(arg, value()); break;
      case '--memory': resources.memory = number(arg, value()); break;
      case '--cluster': job.preferred_cluster = value(); break;
      case '--cluster-tag': (job.cluster_tags ??= []).push(value()); break;
      case '--tag': (job.tags ??= []).push(value()); break;
      case '--max-retries': {
        const v = value();
        if (!/^[0-9]+$/.test(v)) die('--max-retries wants an integer');
        job.max_retries = Number(v);
        break;
      }
      case '--queue-timeout': job.queue_timeout_s = number(arg, value()); break;
      case '--correlation-id': opts.correlationId = value(); break;
      case '--print': opts.print = true; break;
      case '--': words.push(...argv.slice(i + 1)); i = argv.length; break;
      case '-h': case '--help':
        console.log('usage: node submit-job.js [--submission-id ID] [--priority P] [--cpus N] [--gpus N] '
          + '[--memory GIB] [--cluster NAME] [--cluster-tag TAG]... [--tag TAG]... [--max-retries N] '
          + '[--queue-timeout S] [--job-id ID] [--correlation-id ID] [--print] ENTRYPOINT...');
        process.exit(0);
      default:
        if (arg.startsWith('-')) die(`unknown option ${arg} (see --help)`);
        words.push(arg);
    }
  }
  if (!words.length) die('an ENTRYPOINT is required (see --help)');
  job.entrypoint = words.join(' ');
  job.submission_id ??= `sub_${crypto.randomUUID()}`;
  if (!SUBMISSION_ID.test(job.submission_id)) die('--submission-id must match [A-Za-z0-9._-]{1,128}');
  if (Object.keys(resources).length) job.resource_requirements = resources;
  // Key order for readability: id and entrypoint first.
  const { submission_id, entrypoint, ...rest } = job;
  return { job: { submission_id, entrypoint, ...rest }, opts };
}

async function main() {
  const { job, opts } = parse(process.argv.slice(2));
  const body = JSON.stringify(job);
  if (opts.print) {
    console.log(body);
    return;
  }
  const url = process.env.RMCS_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
  const exchange = process.env.RMCS_INTAKE_EXCHANGE || 'rmcs.jobs';
  const routingKey = process.env.RMCS_INTAKE_ROUTING_KEY || 'submit';

  const conn = await amqp.connect(url);
  try {
    const ch = await conn.createConfirmChannel();
    let channelError = null; // e.g. the exchange does not exist (404); also rejects the confirm
    ch.on('error', (err) => { channelError = err; });
    // mandatory: a message no queue takes (the topology is not declared) comes back; say so.
    let returned = false;
    ch.on('return', () => { returned = true; });
    ch.publish(exchange, routingKey, Buffer.from(body, 'utf8'), {
      persistent: true, // delivery_mode 2
      contentType: 'application/json',
      priority: job.priority ?? 0, // RabbitMQ orders the intake queue by this property
      messageId: job.submission_id,
      correlationId: opts.correlationId,
      mandatory: true,
    });
    try {
      await ch.waitForConfirms(); // rejects if the broker nacks the message
    } catch (err) {
      throw channelError || err;
    }
    if (returned) {
      throw new Error(`no queue is bound to ${exchange} with key ${routingKey}; `
        + 'run the daemon or rmcs-declare first');
    }
    await ch.close();
  } finally {
    await conn.close().catch(() => {});
  }
  console.log(job.submission_id);
}

main().catch((err) => {
  console.error(`submit-job.js: ${err.message}`);
  process.exit(1);
});
