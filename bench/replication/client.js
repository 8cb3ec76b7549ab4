#!/usr/bin/env node
// Client for bench/replication/run.sh (Node's standard library, plus PouchDB for `pouch`).
//
//   node client.js freeport                    print a free TCP port on 127.0.0.1
//   node client.js bulk URL N BATCH            POST N documents (_id doc-%06d, 0..N-1) to the
//                                              _bulk_docs URL in bodies of BATCH, one at a
//                                              time; bodies are built before the clock starts
//   node client.js post URL JSON               POST JSON to URL and time the answer (a one-shot
//                                              replication answers when it is done)
//   node client.js verify DBURL N              check a CouchDB-style database (Cooper
//                                              /couch/<db>, pouchdb-server /<db>): doc_count
//                                              is N and a few documents have the bytes sent
//   node client.js pouch N NAME=URL...         PouchDB in this process (memory adapter):
//                                              bulkDocs N documents (not timed), then time
//                                              db.replicate.to(URL) for each target in turn,
//                                              after an untimed warm-up of 200 documents to
//                                              URL's server (its database <db>-warm)
//   node client.js proxy PORT TARGET LOG       an HTTP proxy to TARGET that logs method,
//                                              path, status, bytes and milliseconds of each
//                                              request (diagnosis only, never in a timed run)
//
// Results are `RESULT key=value ...` lines on stdout.
'use strict';

const http = require('http');
const net = require('net');
const fs = require('fs');

// The document shape of bench/client.js and bench/wrk.lua: ~300 bytes of nested JSON.
const FIRST = ['Ann', 'Bob', 'Chloe', 'Dmitri', 'Eve', 'Farid', 'Grace', 'Hiro'];
const LAST = ['Martin', 'Dubois', 'Smith', 'Okafor', 'Tanaka', 'Novak', 'Rossi', 'Kim'];
const CITIES = ['Paris', 'Lyon', 'Berlin', 'Lagos', 'Osaka', 'Prague', 'Milan', 'Seoul'];
const TAGS = ['alpha', 'beta', 'gamma', 'delta', 'omega', 'sigma', 'kappa', 'zeta'];
const WORDS = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'elit', 'sed', 'magna'];

const pick = (list, n) => list[n % list.length];
const pad = (n, w) => String(n).padStart(w, '0');
const docId = (i) => `doc-${pad(i, 6)}`;

function body(i) {
  const f = pick(FIRST, i);
  const l = pick(LAST, i * 7 + 3);
  return (
    `{"_id":"${docId(i)}",` +
    `"kind":"bench","name":"${f} ${l}","email":"${f.toLowerCase()}.${l.toLowerCase()}${i}@example.org",` +
    `"age":${18 + (i % 70)},"active":${i % 2 === 0},` +
    `"address":{"street":"${1 + (i % 200)} rue ${pick(WORDS, i)}","city":"${pick(CITIES, i * 3)}","zip":"${pad((i * 7919) % 100000, 5)}"},` +
    `"tags":["${pick(TAGS, i)}","${pick(TAGS, i + 1)}","${pick(TAGS, i + 2)}"],` +
    `"scores":[${i % 100},${i % 100}.${i % 10},${(i * 13) % 100}],` +
    `"profile":{"bio":"${[0, 1, 2, 3, 5, 6].map((k) => pick(WORDS, i + k)).join(' ')}","since":${2000 + (i % 25)}}}`
  );
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(url, method, payload, headers = {}) {
  return new Promise((resolve, reject) => {
    const h = { Accept: 'application/json', ...headers };
    if (payload !== undefined) {
      h['Content-Type'] = 'application/json';
      h['Content-Length'] = Buffer.byteLength(payload);
    }
    const req = http.request(url, { method, headers: h, agent }, (res) => {
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

const secsSince = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;

async function bulk(url, n, batch) {
  const bodies = [];
  for (let start = 0; start < n; start += batch) {
    const docs = [];
    for (let i = start; i < Math.min(n, start + batch); i++) docs.push(body(i));
    bodies.push(Buffer.from(`{"docs":[${docs.join(',')}]}`));
  }
  let acked = 0;
  let failed = 0;
  let sample = '';
  const t0 = process.hrtime.bigint();
  for (const payload of bodies) {
    const res = await request(url, 'POST', payload);
    if (res.status !== 201 && res.status !== 200) {
      throw new Error(`POST ${url}: ${res.status} ${res.body.slice(0, 300)}`);
    }
    for (const r of JSON.parse(res.body)) {
      if (r.ok === true || (r.rev && !r.error)) acked += 1;
      else {
        failed += 1;
        sample = JSON.stringify(r).slice(0, 200);
      }
    }
  }
  const secs = secsSince(t0);
  const bytes = bodies.reduce((s, b) => s + b.length, 0);
  console.log(
    `RESULT docs=${n} acked=${acked} failed=${failed} secs=${secs.toFixed(3)} ` +
      `docs_per_s=${(acked / secs).toFixed(1)} avg_doc_bytes=${Math.round(bytes / n)}`,
  );
  if (failed) throw new Error(`${failed} documents refused, e.g. ${sample}`);
}

async function post(url, json) {
  const t0 = process.hrtime.bigint();
  const res = await request(url, 'POST', json);
  const secs = secsSince(t0);
  console.log(`BODY ${res.body.replace(/\n/g, ' ').trim()}`);
  console.log(`RESULT status=${res.status} secs=${secs.toFixed(3)}`);
  if (res.status < 200 || res.status >= 300) throw new Error(`POST ${url}: ${res.status} ${res.body.slice(0, 500)}`);
}

async function verify(dbUrl, n) {
  const info = await request(dbUrl, 'GET');
  if (info.status !== 200) throw new Error(`GET ${dbUrl}: ${info.status} ${info.body.slice(0, 300)}`);
  const docCount = JSON.parse(info.body).doc_count;
  let checked = 0;
  let mismatched = 0;
  const strip = (o) => {
    const c = { ...o };
    for (const k of Object.keys(c)) if (k.startsWith('_') && k !== '_id') delete c[k];
    return JSON.stringify(c, Object.keys(c).sort());
  };
  for (const i of [0, 1, Math.floor(n / 2), n - 2, n - 1]) {
    const res = await request(`${dbUrl}/${docId(i)}`, 'GET');
    checked += 1;
    const want = strip(JSON.parse(body(i)));
    if (res.status !== 200 || strip(JSON.parse(res.body)) !== want) {
      mismatched += 1;
      console.error(`mismatch at ${docId(i)}: ${res.status} ${res.body.slice(0, 300)}`);
    }
  }
  console.log(`RESULT doc_count=${docCount} checked=${checked} mismatched=${mismatched}`);
}

async function pouch(n, targets) {
  const PouchDB = require('pouchdb').plugin(require('pouchdb-adapter-memory'));
  const db = new PouchDB(`bench-src-${n}`, { adapter: 'memory' });
  const t0 = process.hrtime.bigint();
  for (let start = 0; start < n; start += 1000) {
    const docs = [];
    for (let i = start; i < Math.min(n, start + 1000); i++) docs.push(JSON.parse(body(i)));
    const res = await db.bulkDocs(docs);
    const bad = res.filter((r) => r.error);
    if (bad.length) throw new Error(`PouchDB bulkDocs refused ${bad.length}: ${JSON.stringify(bad[0])}`);
  }
  const info = await db.info();
  if (info.doc_count !== n) throw new Error(`PouchDB holds ${info.doc_count} documents, not ${n}`);
  console.error(`[pouch] preloaded ${n} documents in memory in ${secsSince(t0).toFixed(2)} s`);
  for (const t of targets) {
    const eq = t.indexOf('=');
    const name = t.slice(0, eq);
    const url = t.slice(eq + 1);
    // Warm-up: the same code paths (PouchDB's replicator, the HTTP client, the server's
    // routes) on a small database, so that the timed run is not the first one.
    const warm = new PouchDB(`bench-warm-${n}-${name}`, { adapter: 'memory' });
    const wdocs = [];
    for (let i = 0; i < 200; i++) wdocs.push(JSON.parse(body(i)));
    await warm.bulkDocs(wdocs);
    await warm.replicate.to(`${url}-warm`);
    await warm.destroy();
    const t1 = process.hrtime.bigint();
    const r = await db.replicate.to(url);
    const secs = secsSince(t1);
    console.log(
      `RESULT target=${name} ok=${r.ok} status=${r.status} docs_read=${r.docs_read} ` +
        `docs_written=${r.docs_written} doc_write_failures=${r.doc_write_failures} secs=${secs.toFixed(3)}`,
    );
    if (!r.ok || r.doc_write_failures) throw new Error(`replication to ${url}: ${JSON.stringify(r).slice(0, 500)}`);
  }
  await db.destroy();
}

function proxy(port, target, logFile) {
  const out = fs.createWriteStream(logFile);
  const t = new URL(target);
  const upstream = new http.Agent({ keepAlive: true });
  http
    .createServer((req, res) => {
      const t0 = process.hrtime.bigint();
      let inBytes = 0;
      let outBytes = 0;
      const p = http.request(
        { host: t.hostname, port: t.port, path: req.url, method: req.method, headers: req.headers, agent: upstream },
        (pr) => {
          res.writeHead(pr.statusCode, pr.headers);
          pr.on('data', (c) => {
            outBytes += c.length;
            res.write(c);
          });
          pr.on('end', () => {
            res.end();
            const ms = Number(process.hrtime.bigint() - t0) / 1e6;
            out.write(`${Date.now()} ${req.method} ${req.url} ${pr.statusCode} in=${inBytes} out=${outBytes} ms=${ms.toFixed(2)}\n`);
          });
        },
      );
      p.on('error', (e) => {
        res.writeHead(502);
        res.end(String(e));
      });
      req.on('data', (c) => {
        inBytes += c.length;
        p.write(c);
      });
      req.on('end', () => p.end());
    })
    .listen(Number(port), '127.0.0.1');
}

function freeport() {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => {
    console.log(s.address().port);
    s.close();
  });
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  switch (cmd) {
    case 'freeport':
      return freeport();
    case 'bulk':
      return bulk(args[0], Number(args[1]), Number(args[2]));
    case 'post':
      return post(args[0], args[1]);
    case 'verify':
      return verify(args[0], Number(args[1]));
    case 'pouch':
      return pouch(Number(args[0]), args.slice(1));
    case 'proxy':
      return proxy(args[0], args[1], args[2]);
    default:
      throw new Error(`unknown command ${cmd}`);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
