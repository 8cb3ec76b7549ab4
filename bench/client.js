#!/usr/bin/env node
// Small HTTP client for bench/http.sh (Node's standard library only).
//
//   node bench/client.js freeport                  print a free TCP port on 127.0.0.1
//   node bench/client.js body I                    print document I (the shape wrk.lua sends)
//   node bench/client.js bulk URL BATCHES SIZE     POST BATCHES bodies of SIZE documents
//                                                  (_id doc-%06d, 0..BATCHES*SIZE-1) to URL,
//                                                  one at a time; bodies are built before the
//                                                  clock starts
//   node bench/client.js count URL                 page through a Cooper query URL (with
//                                                  limit=) following `next`; count its docs
//
// Results are one `RESULT key=value ...` line on stdout.
'use strict';

const http = require('http');
const net = require('net');

const FIRST = ['Ann', 'Bob', 'Chloe', 'Dmitri', 'Eve', 'Farid', 'Grace', 'Hiro'];
const LAST = ['Martin', 'Dubois', 'Smith', 'Okafor', 'Tanaka', 'Novak', 'Rossi', 'Kim'];
const CITIES = ['Paris', 'Lyon', 'Berlin', 'Lagos', 'Osaka', 'Prague', 'Milan', 'Seoul'];
const TAGS = ['alpha', 'beta', 'gamma', 'delta', 'omega', 'sigma', 'kappa', 'zeta'];
const WORDS = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'elit', 'sed', 'magna'];

const pick = (list, n) => list[n % list.length];
const pad = (n, w) => String(n).padStart(w, '0');

// The same shape and bytes as body() in bench/wrk.lua (keep the two in step), with an
// optional leading `_id` (_bulk_docs needs it; a PUT has it in the URL).
function body(i, id) {
  const f = pick(FIRST, i);
  const l = pick(LAST, i * 7 + 3);
  const head = id === undefined ? '{' : `{"_id":"${id}",`;
  return (
    head +
    `"kind":"bench","name":"${f} ${l}","email":"${f.toLowerCase()}.${l.toLowerCase()}${i}@example.org",` +
    `"age":${18 + (i % 70)},"active":${i % 2 === 0},` +
    `"address":{"street":"${1 + (i % 200)} rue ${pick(WORDS, i)}","city":"${pick(CITIES, i * 3)}","zip":"${pad((i * 7919) % 100000, 5)}"},` +
    `"tags":["${pick(TAGS, i)}","${pick(TAGS, i + 1)}","${pick(TAGS, i + 2)}"],` +
    `"scores":[${i % 100},${i % 100}.${i % 10},${(i * 13) % 100}],` +
    `"profile":{"bio":"${[0, 1, 2, 3, 5, 6].map((k) => pick(WORDS, i + k)).join(' ')}","since":${2000 + (i % 25)}}}`
  );
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(url, method, payload) {
  return new Promise((resolve, reject) => {
    const headers = {};
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

async function bulk(url, batches, size) {
  const bodies = [];
  for (let b = 0; b < batches; b++) {
    const docs = [];
    for (let k = 0; k < size; k++) {
      const i = b * size + k;
      docs.push(body(i, `doc-${pad(i, 6)}`));
    }
    bodies.push(Buffer.from(`{"docs":[${docs.join(',')}]}`));
  }
  let acked = 0;
  let failed = 0;
  let badStatus = 0;
  let sample = '';
  const times = [];
  const started = process.hrtime.bigint();
  for (const payload of bodies) {
    const t0 = process.hrtime.bigint();
    const res = await request(url, 'POST', payload);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (res.status !== 201 && res.status !== 200) {
      badStatus += 1;
      sample = `${res.status} ${res.body.slice(0, 200)}`;
      continue;
    }
    for (const r of JSON.parse(res.body)) {
      if (r.ok === true || (r.rev && !r.error)) acked += 1;
      else {
        failed += 1;
        sample = JSON.stringify(r).slice(0, 200);
      }
    }
  }
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  const bytes = bodies.reduce((n, b) => n + b.length, 0);
  // Mean request time of the first and the last tenth of the batches: does it grow with size?
  const k = Math.max(1, Math.floor(times.length / 10));
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  console.log(
    `RESULT docs=${batches * size} acked=${acked} failed=${failed} bad_status=${badStatus} ` +
      `secs=${secs.toFixed(3)} docs_per_s=${(acked / secs).toFixed(1)} avg_doc_bytes=${Math.round(bytes / (batches * size))} ` +
      `first_ms=${mean(times.slice(0, k)).toFixed(1)} last_ms=${mean(times.slice(-k)).toFixed(1)}`,
  );
  if (sample) console.log(`BAD_SAMPLE ${sample.replace(/\n/g, ' ')}`);
}

async function count(url) {
  const ids = new Set();
  let rows = 0;
  let pages = 0;
  let next = null;
  const started = process.hrtime.bigint();
  do {
    const u = next === null ? url : `${url}&cursor=${encodeURIComponent(next)}`;
    const res = await request(u, 'GET');
    if (res.status !== 200) throw new Error(`GET ${u}: ${res.status} ${res.body.slice(0, 300)}`);
    const page = JSON.parse(res.body);
    pages += 1;
    for (const d of page.docs) {
      rows += 1;
      ids.add(d._id);
    }
    next = page.next ?? null;
  } while (next !== null);
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`RESULT rows=${rows} unique=${ids.size} pages=${pages} secs=${secs.toFixed(3)}`);
}

function freeport() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1', () => {
    const { port } = srv.address();
    srv.close(() => console.log(port));
  });
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  switch (cmd) {
    case 'freeport':
      return freeport();
    case 'body':
      return console.log(body(Number(args[0] ?? 0)));
    case 'bulk':
      return bulk(args[0], Number(args[1]), Number(args[2]));
    case 'count':
      return count(args[0]);
    default:
      throw new Error(`unknown command ${cmd}; see the top of bench/client.js`);
  }
}

main().then(
  () => agent.destroy(),
  (e) => {
    console.error(`client.js: ${e.stack || e}`);
    process.exit(1);
  },
);
