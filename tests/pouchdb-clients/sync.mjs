// A real PouchDB (memory adapter) that tests/pouchdb.rs drives against a Cooper node.
//
//   node sync.mjs <remote database URL, e.g. http://127.0.0.1:PORT/couch/db>
//
// Reads one JSON command a line on stdin, runs it, and prints one JSON line for it on stdout
// (in order), so the Rust test can check the node between steps. Commands:
//   {"op":"put","doc":{...}}                 local.put → {"ok","id","rev"}
//   {"op":"remove","id","rev"}               local.remove → {"ok","id","rev"}
//   {"op":"get","id","opts":{...}}           local.get → {"doc"} or {"error","status"}
//   {"op":"push"|"pull"|"sync"}              one-shot replication → {"ok","result"}
//   {"op":"live_start"}                      db.sync(remote, {live, retry}) → {"ok"}
//   {"op":"wait","id","rev"}                 until the local winner of id is rev → {"ok","ms"}
//   {"op":"live_stop"}                       cancels the live sync, waits for it to end
//   {"op":"dump"}                            every document with all its leaves → {"docs"}
//   {"op":"exit"}                            ends the script
// A command that fails unexpectedly ends the script with a message on stderr and exit code 1.

import { createInterface } from 'node:readline';
import PouchDB from 'pouchdb';
import memory from 'pouchdb-adapter-memory';

PouchDB.plugin(memory);

const [remoteUrl] = process.argv.slice(2);
if (!remoteUrl) {
  console.error('usage: node sync.mjs <remote database URL>');
  process.exit(2);
}

const local = new PouchDB(`local-${process.pid}`, { adapter: 'memory' });
const remote = new PouchDB(remoteUrl, { skip_setup: true });

function out(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

function fail(what, err) {
  console.error(`sync.mjs: ${what} failed: ${err && (err.stack || JSON.stringify(err))}`);
  process.exit(1);
}

// The parts of a replication result worth checking (dates and the like left out).
function summary(r) {
  const pick = (x) =>
    x && {
      ok: x.ok,
      status: x.status,
      docs_read: x.docs_read,
      docs_written: x.docs_written,
      doc_write_failures: x.doc_write_failures,
      errors: (x.errors || []).map((e) => String(e && (e.message || e.reason || e))),
    };
  return r.push || r.pull ? { push: pick(r.push), pull: pick(r.pull) } : pick(r);
}

// Wakes a waiter whenever the local database changes (no polling with timers).
function watcher(db) {
  let dirty = false;
  let wake = null;
  const feed = db.changes({ since: 'now', live: true });
  feed.on('change', () => {
    dirty = true;
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  });
  feed.on('error', (err) => fail('the local changes feed', err));
  return {
    reset() {
      dirty = false;
    },
    next() {
      return dirty ? Promise.resolve() : new Promise((resolve) => (wake = resolve));
    },
    cancel() {
      feed.cancel();
    },
  };
}

async function winner(id) {
  try {
    return (await local.get(id))._rev;
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

// Every document (deleted ones included) with all its leaves, as open_revs=all gives them.
async function dump() {
  const changes = await local.changes({ style: 'all_docs', since: 0 });
  const docs = {};
  for (const row of changes.results) {
    const leaves = await local.get(row.id, { open_revs: 'all', revs: true, attachments: true });
    docs[row.id] = leaves;
  }
  return docs;
}

let live = null;
let liveEnded = null;
const liveEvents = [];

async function run(cmd) {
  switch (cmd.op) {
    case 'put': {
      const r = await local.put(cmd.doc);
      return { ok: true, id: r.id, rev: r.rev };
    }
    case 'remove': {
      const r = await local.remove(cmd.id, cmd.rev);
      return { ok: true, id: r.id, rev: r.rev };
    }
    case 'get': {
      try {
        return { doc: await local.get(cmd.id, cmd.opts || {}) };
      } catch (err) {
        return { error: err.name || String(err), status: err.status };
      }
    }
    case 'push':
      return { ok: true, result: summary(await local.replicate.to(remote)) };
    case 'pull':
      return { ok: true, result: summary(await local.replicate.from(remote)) };
    case 'sync':
      return { ok: true, result: summary(await local.sync(remote)) };
    case 'live_start': {
      if (live) throw new Error('a live sync is already running');
      live = local.sync(remote, { live: true, retry: true });
      for (const ev of ['active', 'paused', 'denied']) {
        live.on(ev, (info) => {
          liveEvents.push(ev);
          // `paused` with an error is a failed attempt that `retry` repeats: worth a line.
          if (ev !== 'active' && info) console.error(`sync.mjs: live sync ${ev}:`, info);
        });
      }
      liveEnded = new Promise((resolve, reject) => {
        live.on('complete', resolve);
        live.on('error', reject);
      });
      liveEnded.catch(() => {});
      return { ok: true };
    }
    case 'wait': {
      const start = Date.now();
      const w = watcher(local);
      try {
        for (;;) {
          w.reset();
          if ((await winner(cmd.id)) === cmd.rev) break;
          await w.next();
        }
      } finally {
        w.cancel();
      }
      return { ok: true, ms: Date.now() - start };
    }
    case 'live_stop': {
      if (!live) throw new Error('no live sync is running');
      live.cancel();
      const result = await liveEnded;
      live = null;
      return { ok: true, result: summary(result), events: [...new Set(liveEvents)] };
    }
    case 'dump':
      return { docs: await dump() };
    case 'exit':
      return { ok: true };
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd)}`);
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    fail(`parsing the command ${line}`, err);
  }
  let answer;
  try {
    answer = await run(cmd);
  } catch (err) {
    fail(JSON.stringify(cmd), err);
  }
  out({ op: cmd.op, ...answer });
  if (cmd.op === 'exit') break;
}
if (live) live.cancel();
await local.destroy();
process.exit(0);
