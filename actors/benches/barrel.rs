//! Write and read throughput of the `Barrel` actor against redb doing the same writes
//! directly (DESIGN §8). A plain `fn main` (harness = false): every figure is measured in the
//! same run and reported as a ratio.
//!
//! Run with `cargo bench -p cooper-actors --bench barrel`. Tunables (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `COOPER_BENCH_N` | 100000 | documents for (c), (ii) and the read set |
//! | `COOPER_BENCH_CONC_N` | `COOPER_BENCH_N` | documents for the full-size (b) and (b*) |
//! | `COOPER_BENCH_SYNC_N` | 2000 | documents per measurement of an interleaved round |
//! | `COOPER_BENCH_SYNC_ROUNDS` | 3 | interleaved rounds before the full-size (b) (one more after) |
//! | `COOPER_BENCH_READS` | 200000 | point reads per read measurement |
//! | `COOPER_BENCH_ONLY` | all | comma list of `sync,b,bulk,reads` to run a subset (profiling) |
//! | `COOPER_BENCH_DIR` | system temp | where the fresh temporary directories go |
//!
//! Measurements (each on a fresh directory and, for the actor, a fresh barrel):
//! - (i) redb directly: one ~300-byte value (the document's JSON) per transaction.
//! - (a) the actor: one writer, one `put` per document (each a commit of one).
//! - (b) the actor: 16 concurrent writers (`actix_rt::spawn`ed tasks), one `put` per document;
//!   once per round over `COOPER_BENCH_SYNC_N` documents and once over `COOPER_BENCH_CONC_N`.
//! - (ii) redb directly: exactly the entries the store writes for those documents (doc info,
//!   body, change, path index entries, 3 counters per transaction), 1000 documents per
//!   transaction; all keys and values are computed before the clock starts. Run before and
//!   after (c); (c) is compared with their mean.
//! - (c) the actor: `write` of 1000 `WriteOp::Edit` per call, one call at a time (the JSON
//!   is built and split into `IncomingDoc`s before the clock starts).
//! - reads: point reads of random ids from one thread, through `BarrelHandle::get`,
//!   `Store::get`, and redb directly on the (ii) file (with and without decoding).
//! - diagnostics, not targets: (i*) and (b*) are (ii) with 1 and 16 documents per
//!   transaction: what redb alone does with the store's entries at (a)'s and (b)'s commit
//!   sizes. For every write measurement the bytes and write calls the process made per
//!   document are shown (`/proc/self/io`).
//!
//! Every commit uses `Durability::Immediate`. Commits are fsync-bound and this kind of
//! disk's rate drifts over minutes, so (i), (a), (i*), (b), (b*) run in interleaved rounds
//! (the last one in reverse order) and ratios are taken within a round, then the median.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cooper_actors::barrel::store::{GetOptions, Store, StoreOptions, WriteOp};
use cooper_actors::barrel::{Barrel, BarrelHandle, Close};
use cooper_protocols::ids::{hex, BarrelName, Rev};
use cooper_protocols::rev_tree::{RevTree, DEFAULT_REVS_LIMIT};
use cooper_protocols::{cbor, document, path};
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

// The store's tables, as `actors/src/barrel/store.rs` defines them.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bodies");
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
const PATHS: TableDefinition<&[u8], ()> = TableDefinition::new("paths");

/// The store's per-value format byte.
const FORMAT: u8 = 1;
/// Documents per transaction in (c) and (ii).
const BATCH: usize = 1000;
/// Concurrent writers in (b).
const WRITERS: usize = 16;

/// What the store keeps in `docs` per document (same field names, so the same CBOR).
#[derive(Debug, Serialize, Deserialize)]
struct DocInfo {
    v: u8,
    tree: RevTree,
    seq: u64,
}

// ---------------------------------------------------------------------------------------------
// Configuration and small helpers

#[derive(Debug)]
struct Config {
    n: usize,
    conc_n: usize,
    sync_n: usize,
    sync_rounds: usize,
    reads: usize,
    only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        fn var(name: &str, default: usize) -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
                Err(_) => Ok(default),
            }
        }
        let n = var("COOPER_BENCH_N", 100_000)?.max(BATCH);
        Ok(Self {
            n,
            conc_n: var("COOPER_BENCH_CONC_N", n)?.max(WRITERS),
            sync_n: var("COOPER_BENCH_SYNC_N", 2000)?.max(1),
            sync_rounds: var("COOPER_BENCH_SYNC_ROUNDS", 3)?.max(1),
            reads: var("COOPER_BENCH_READS", 200_000)?.max(1),
            only: std::env::var("COOPER_BENCH_ONLY")
                .ok()
                .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect()),
        })
    }

    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
}

fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    Ok(match std::env::var_os("COOPER_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    })
}

/// splitmix64: a tiny deterministic generator.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Bytes and write calls the whole process handed to the kernel (`/proc/self/io`), and CPU
/// time of the process and of its main thread (the actix thread), in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Io {
    wchar: u64,
    syscw: u64,
    cpu: u64,
    main_cpu: u64,
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// utime + stime of a `/proc/.../stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // After the command name (in parentheses) come state (field 3) ... utime (14), stime (15).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn io_now() -> Option<Io> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    let pid = std::process::id();
    let main = std::fs::read_to_string(format!("/proc/self/task/{pid}/stat")).ok()?;
    Some(Io {
        wchar: field("wchar:")?,
        syscw: field("syscw:")?,
        cpu: cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?,
        main_cpu: cpu_ticks(&main)?,
    })
}

/// A running measurement: wall time and, for writes, what was written meanwhile.
#[derive(Debug)]
struct Clock {
    io: Option<Io>,
    started: Instant,
}

impl Clock {
    fn start() -> Self {
        let io = io_now();
        Self {
            io,
            started: Instant::now(),
        }
    }

    fn stop(&self, label: impl Into<String>, count: usize) -> Measure {
        let elapsed = self.started.elapsed();
        let io = match (self.io, io_now()) {
            (Some(a), Some(b)) => Some(Io {
                wchar: b.wchar.saturating_sub(a.wchar),
                syscw: b.syscw.saturating_sub(a.syscw),
                cpu: b.cpu.saturating_sub(a.cpu),
                main_cpu: b.main_cpu.saturating_sub(a.main_cpu),
            }),
            _ => None,
        };
        Measure {
            label: label.into(),
            count,
            elapsed,
            io,
        }
    }
}

/// One measurement: how many operations in how long (and, for writes, bytes written).
#[derive(Debug, Clone)]
struct Measure {
    label: String,
    count: usize,
    elapsed: Duration,
    io: Option<Io>,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let io = self.io.map_or_else(String::new, |io| {
            let n = self.count as f64;
            let ticks = self.elapsed.as_secs_f64() * TICKS / 100.0;
            format!(
                " {:>8.1} {:>7.1} {:>5.0}% {:>5.0}%",
                io.wchar as f64 / n / 1024.0,
                io.syscw as f64 / n,
                io.cpu as f64 / ticks,
                io.main_cpu as f64 / ticks
            )
        });
        println!(
            "  {:<58} {:>8} {:>9.3} s {:>10.0} /s{io}",
            self.label,
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

const FIRST: [&str; 16] = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Donald",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "John",
    "Katherine",
    "Leslie",
    "Margaret",
    "Niklaus",
    "Radia",
    "Tony",
];
const LAST: [&str; 16] = [
    "Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen", "Hopper", "Lamarr",
    "Backus", "Johnson", "Lamport", "Hamilton", "Wirth", "Perlman", "Hoare",
];
const CITIES: [&str; 12] = [
    "Lyon", "Nantes", "Lille", "Rennes", "Grenoble", "Dijon", "Angers", "Nimes", "Brest", "Tours",
    "Metz", "Caen",
];
const TAGS: [&str; 20] = [
    "admin", "beta", "customer", "dev", "early", "east", "gold", "green", "internal", "legacy",
    "mobile", "north", "ops", "partner", "premium", "red", "south", "trial", "vip", "west",
];
const WORDS: [&str; 24] = [
    "builds",
    "databases",
    "distributed",
    "enjoys",
    "hiking",
    "keeps",
    "loves",
    "maps",
    "music",
    "offline",
    "old",
    "peer",
    "replication",
    "rivers",
    "small",
    "systems",
    "teaches",
    "trains",
    "writes",
    "quiet",
    "careful",
    "tools",
    "bread",
    "chess",
];

/// A document id shaped like the store's generated ones: 32 lowercase hex characters, in an
/// order unrelated to insertion order.
fn doc_id(i: usize) -> String {
    let mut r = Rng(i as u64 ^ 0xC00B_E12D_0C5E_ED00);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&r.next().to_be_bytes());
    bytes[8..].copy_from_slice(&r.next().to_be_bytes());
    hex(&bytes)
}

/// Document `i`: about 300 bytes of nested JSON, with its `_id`.
fn make_doc(i: usize) -> Value {
    let mut r = Rng((i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let (first, last) = (r.pick(&FIRST), r.pick(&LAST));
    let mut tags: Vec<&str> = Vec::with_capacity(3);
    while tags.len() < 3 {
        let t = r.pick(&TAGS);
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let bio: Vec<&str> = (0..6).map(|_| r.pick(&WORDS)).collect();
    json!({
        "_id": doc_id(i),
        "type": "user",
        "name": format!("{first} {last}"),
        "email": format!("{}.{}{}@example.org", first.to_lowercase(), last.to_lowercase(), i),
        "age": 18 + r.below(70),
        "active": r.next() & 1 == 0,
        "address": {
            "street": format!("{} rue {}", 1 + r.below(200), r.pick(&WORDS)),
            "city": r.pick(&CITIES),
            "zip": format!("{:05}", r.below(100_000)),
        },
        "tags": tags,
        "scores": [r.below(100), r.below(1000) as f64 / 10.0, r.below(100)],
        "profile": {
            "bio": bio.join(" "),
            "since": 2000 + r.below(25),
        },
    })
}

/// Exactly what the store writes for one new document (see `Writer::commit_revision`).
#[derive(Debug)]
struct Entries {
    id: String,
    /// `docs` value: CBOR of the doc info (one revision, seq `i + 1`).
    info: Vec<u8>,
    /// `bodies` key: id ‖ rev pos (8 bytes BE) ‖ rev hash (16 bytes).
    body_key: Vec<u8>,
    /// `bodies` value: format, flags, u32 attachments length (0), canonical CBOR body.
    body: Vec<u8>,
    /// `paths` keys.
    index: Vec<Vec<u8>>,
}

impl Entries {
    fn bytes(&self) -> usize {
        // docs + bodies + changes (u64 + id) + paths
        self.id.len() * 2
            + self.info.len()
            + self.body_key.len()
            + self.body.len()
            + 8
            + self.index.iter().map(Vec::len).sum::<usize>()
    }
}

fn entries_of(i: usize, body: &Map<String, Value>, id: &str) -> Entries {
    let mut body_cbor = Vec::with_capacity(256);
    cbor::encode_object(body, true, &mut body_cbor);
    let rev: Rev = cbor::next_rev(false, None, &body_cbor, &[]);
    let mut tree = RevTree::new();
    tree.merge_path(&[rev], false);
    tree.stem(DEFAULT_REVS_LIMIT);
    let mut info = Vec::with_capacity(96);
    ciborium::into_writer(
        &DocInfo {
            v: FORMAT,
            tree,
            seq: i as u64 + 1,
        },
        &mut info,
    )
    .expect("cbor into a vec");
    let mut body_key = Vec::with_capacity(id.len() + 24);
    body_key.extend_from_slice(id.as_bytes());
    body_key.extend_from_slice(&rev.pos.to_be_bytes());
    body_key.extend_from_slice(&rev.hash);
    let mut stored = Vec::with_capacity(6 + body_cbor.len());
    stored.extend_from_slice(&[FORMAT, 0, 0, 0, 0, 0]);
    stored.extend_from_slice(&body_cbor);
    let index = path::index_entries(body)
        .into_iter()
        .map(|(p, v)| path::index_key(&p, v, id))
        .collect();
    Entries {
        id: id.to_owned(),
        info,
        body_key,
        body: stored,
        index,
    }
}

// ---------------------------------------------------------------------------------------------
// redb directly

/// (i): one value per transaction, each committed with `Durability::Immediate`.
fn raw_single(dir: &Path, values: &[(String, Vec<u8>)], label: String) -> anyhow::Result<Measure> {
    let db = Database::create(dir.join("raw.redb"))?;
    {
        let txn = db.begin_write()?;
        txn.open_table(DOCS)?;
        txn.commit()?;
    }
    let clock = Clock::start();
    for (id, value) in values {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(DOCS)?
            .insert(id.as_str(), value.as_slice())?;
        txn.commit()?;
    }
    Ok(clock.stop(label, values.len()))
}

/// (ii): the store's entries for every document, `batch` documents per transaction.
fn raw_bulk(
    path: &Path,
    entries: &[Entries],
    batch: usize,
    label: String,
) -> anyhow::Result<(Database, Measure)> {
    let db = Database::create(path)?;
    {
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(DOCS)?;
        txn.open_table(BODIES)?;
        txn.open_table(CHANGES)?;
        txn.open_table(PATHS)?;
        txn.commit()?;
    }
    let clock = Clock::start();
    let mut seq = 0u64;
    for chunk in entries.chunks(batch) {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let mut docs = txn.open_table(DOCS)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut changes = txn.open_table(CHANGES)?;
            let mut paths = txn.open_table(PATHS)?;
            for e in chunk {
                seq += 1;
                bodies.insert(e.body_key.as_slice(), e.body.as_slice())?;
                for k in &e.index {
                    paths.insert(k.as_slice(), ())?;
                }
                changes.insert(seq, e.id.as_str())?;
                docs.insert(e.id.as_str(), e.info.as_slice())?;
            }
            meta.insert("update_seq", seq)?;
            meta.insert("doc_count", seq)?;
            meta.insert("deleted_count", 0)?;
        }
        txn.commit()?;
    }
    let m = clock.stop(label, entries.len());
    Ok((db, m))
}

// ---------------------------------------------------------------------------------------------
// Through the actor

fn start_barrel(dir: &Path) -> anyhow::Result<(BarrelHandle, Arc<Store>)> {
    let store = Arc::new(Store::open(
        &dir.join("bench.redb"),
        StoreOptions::default(),
    )?);
    let handle = Barrel::start(BarrelName::new("bench")?, store.clone(), None);
    Ok((handle, store))
}

async fn close(handle: &BarrelHandle) -> anyhow::Result<()> {
    handle.addr().send(Close).await?;
    Ok(())
}

/// (a): one writer, one `put` per document.
fn actor_single(docs: Vec<Value>, label: String) -> anyhow::Result<Measure> {
    let dir = tempdir()?;
    actix_rt::System::new().block_on(async move {
        let (h, _store) = start_barrel(dir.path())?;
        let count = docs.len();
        let clock = Clock::start();
        for d in docs {
            h.put(d).await?;
        }
        let m = clock.stop(label, count);
        ensure!(h.counts()?.doc_count == count as u64, "(a) lost documents");
        close(&h).await?;
        Ok(m)
    })
}

/// (b): `WRITERS` tasks, each putting its share one document at a time.
fn actor_concurrent(shares: Vec<Vec<Value>>, label: String) -> anyhow::Result<(Measure, u64)> {
    let dir = tempdir()?;
    actix_rt::System::new().block_on(async move {
        let (h, _store) = start_barrel(dir.path())?;
        let count: usize = shares.iter().map(Vec::len).sum();
        let clock = Clock::start();
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let h = h.clone();
                actix_rt::spawn(async move {
                    for d in share {
                        h.put(d).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let m = clock.stop(label, count);
        let counts = h.counts()?;
        ensure!(counts.doc_count == count as u64, "(b) lost documents");
        close(&h).await?;
        Ok((m, counts.size_bytes))
    })
}

struct BulkRun {
    write: Measure,
    handle_reads: Measure,
    store_reads: Measure,
    size_bytes: u64,
}

/// (c): `write` calls of `BATCH` edits, one at a time; then point reads on the same barrel.
/// The store file is left in `dir` (closed) for checking.
fn actor_bulk(
    dir: &Path,
    batches: Vec<Vec<WriteOp>>,
    ids: &[String],
    picks: &[usize],
) -> anyhow::Result<BulkRun> {
    actix_rt::System::new().block_on(async move {
        let (h, store) = start_barrel(dir)?;
        let count: usize = batches.iter().map(Vec::len).sum();
        let clock = Clock::start();
        for batch in batches {
            for r in h.write(batch).await? {
                r?;
            }
        }
        let write = clock.stop(
            format!("(c) actor, write() of {BATCH} edits per call"),
            count,
        );
        let counts = h.counts()?;
        ensure!(counts.doc_count == count as u64, "(c) lost documents");

        let opts = GetOptions::default();
        let started = Instant::now();
        let mut members = 0usize;
        for &p in picks {
            members += h.get(&ids[p], &opts)?.body.len();
        }
        let handle_reads = Measure {
            label: "reads: BarrelHandle::get, random ids, 1 thread".into(),
            count: picks.len(),
            elapsed: started.elapsed(),
            io: None,
        };
        black_box(members);
        let started = Instant::now();
        for &p in picks {
            members += store.get(&ids[p], &opts)?.body.len();
        }
        let store_reads = Measure {
            label: "reads: Store::get, random ids, 1 thread".into(),
            count: picks.len(),
            elapsed: started.elapsed(),
            io: None,
        };
        black_box(members);
        close(&h).await?;
        Ok(BulkRun {
            write,
            handle_reads,
            store_reads,
            size_bytes: counts.size_bytes,
        })
    })
}

/// Checks that the file the store wrote in (c) holds exactly the entries (ii) writes.
fn check_same_entries(store_file: &Path, entries: &[Entries]) -> anyhow::Result<()> {
    let db = Database::create(store_file)?;
    let txn = db.begin_read()?;
    let docs = txn.open_table(DOCS)?;
    let bodies = txn.open_table(BODIES)?;
    let changes = txn.open_table(CHANGES)?;
    let paths = txn.open_table(PATHS)?;
    let n = entries.len() as u64;
    let index: u64 = entries.iter().map(|e| e.index.len() as u64).sum();
    ensure!(docs.len()? == n, "docs: {} rows, expected {n}", docs.len()?);
    ensure!(bodies.len()? == n, "bodies: {} rows", bodies.len()?);
    ensure!(changes.len()? == n, "changes: {} rows", changes.len()?);
    ensure!(
        paths.len()? == index,
        "paths: {} rows, expected {index}",
        paths.len()?
    );
    for (i, e) in entries.iter().enumerate().step_by(97) {
        let info = docs.get(e.id.as_str())?.context("doc info missing")?;
        ensure!(
            info.value() == e.info.as_slice(),
            "doc info of {} differs",
            e.id
        );
        let body = bodies.get(e.body_key.as_slice())?.context("body missing")?;
        ensure!(
            body.value() == e.body.as_slice(),
            "body of {} differs",
            e.id
        );
        let change = changes.get(i as u64 + 1)?.context("change missing")?;
        ensure!(change.value() == e.id, "change {} differs", i + 1);
        for k in &e.index {
            ensure!(paths.get(k.as_slice())?.is_some(), "index key missing");
        }
    }
    Ok(())
}

/// Point reads straight from redb on the (ii) file: doc info and body, copied out; and the
/// same followed by the decoding `Store::get` does (doc info CBOR, body CBOR to JSON).
fn raw_reads(db: &Database, entries: &[Entries], picks: &[usize]) -> anyhow::Result<[Measure; 2]> {
    let mut total = 0usize;
    let started = Instant::now();
    for &p in picks {
        let e = &entries[p];
        let txn = db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        let info = docs
            .get(e.id.as_str())?
            .context("missing")?
            .value()
            .to_vec();
        let body = bodies
            .get(e.body_key.as_slice())?
            .context("missing")?
            .value()
            .to_vec();
        total += info.len() + body.len();
    }
    let plain = Measure {
        label: "reads: redb direct on (ii) file, info + body, no decode".into(),
        count: picks.len(),
        elapsed: started.elapsed(),
        io: None,
    };
    let started = Instant::now();
    for &p in picks {
        let e = &entries[p];
        let txn = db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        let info: DocInfo =
            ciborium::from_reader(docs.get(e.id.as_str())?.context("missing")?.value())?;
        let winner = info.tree.winner().context("empty tree")?;
        let mut key = Vec::with_capacity(e.id.len() + 24);
        key.extend_from_slice(e.id.as_bytes());
        key.extend_from_slice(&winner.rev.pos.to_be_bytes());
        key.extend_from_slice(&winner.rev.hash);
        let raw = bodies.get(key.as_slice())?.context("missing")?;
        let body = cbor::decode_value(&raw.value()[6..], 128)?;
        total += body.as_object().map_or(0, Map::len);
    }
    let decoded = Measure {
        label: "reads: redb direct + decode info & body (Store::get's work)".into(),
        count: picks.len(),
        elapsed: started.elapsed(),
        io: None,
    };
    black_box(total);
    Ok([plain, decoded])
}

// ---------------------------------------------------------------------------------------------
// The run

/// The fsync-bound measurements of one interleaved round, all over `COOPER_BENCH_SYNC_N`
/// documents on fresh files.
struct Round {
    /// (i): redb, one ~300-byte value per transaction.
    i: Measure,
    /// (a): the actor, one writer.
    a: Measure,
    /// (i*): redb, the store's entries for one document per transaction.
    i_star: Measure,
    /// (b) at the same count as (a).
    b: Measure,
    /// (b*): redb, the store's entries for `WRITERS` documents per transaction.
    b_star: Measure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    I,
    A,
    IStar,
    B,
    BStar,
}

/// `docs` dealt round-robin to `WRITERS` writers.
fn shares_of(docs: &[Value]) -> Vec<Vec<Value>> {
    let mut shares: Vec<Vec<Value>> = vec![Vec::new(); WRITERS];
    for (k, d) in docs.iter().enumerate() {
        shares[k % WRITERS].push(d.clone());
    }
    shares
}

struct Check {
    name: String,
    value: f64,
    target: f64,
    note: String,
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let n_docs = cfg.n.max(cfg.conc_n).max(cfg.sync_n);
    println!("Cooper barrel benchmark (DESIGN §8)");
    println!(
        "  counts: rounds of (i) (a) (i*) (b) (b*) over {} docs each, {} rounds + 1 after the \
         full-size (b) and (b*) over {} docs; (ii) and (c) {} docs; {} reads",
        cfg.sync_n, cfg.sync_rounds, cfg.conc_n, cfg.n, cfg.reads
    );

    // Documents and everything derived from them, outside any timing.
    let docs: Vec<Value> = (0..n_docs).map(make_doc).collect();
    let json_bytes: usize = docs
        .iter()
        .take(cfg.n)
        .map(|d| serde_json::to_vec(d).map(|v| v.len()))
        .sum::<Result<usize, _>>()?;
    let started = Instant::now();
    let split: Vec<document::IncomingDoc> = docs
        .iter()
        .map(|d| document::split(d.clone()))
        .collect::<Result<_, _>>()?;
    let split_time = started.elapsed() / docs.len() as u32;
    let ids: Vec<String> = split
        .iter()
        .map(|d| d.id.clone().context("every document has an _id"))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let entries: Vec<Entries> = split
        .iter()
        .enumerate()
        .map(|(i, d)| entries_of(i, &d.body, &ids[i]))
        .collect();
    let encode_time = started.elapsed() / docs.len() as u32;
    let bulk = &entries[..cfg.n];
    let n = cfg.n as f64;
    let index_total: usize = bulk.iter().map(|e| e.index.len()).sum();
    let index_key_bytes: usize = bulk.iter().flat_map(|e| e.index.iter().map(Vec::len)).sum();
    let body_bytes: usize = bulk.iter().map(|e| e.body.len()).sum();
    let info_bytes: usize = bulk.iter().map(|e| e.info.len()).sum();
    let entry_bytes: usize = bulk.iter().map(Entries::bytes).sum();
    let index_per_doc = index_total as f64 / n;
    println!(
        "  documents: avg JSON {:.0} B (with _id), avg stored body {:.0} B, avg doc info {:.0} B",
        json_bytes as f64 / n,
        body_bytes as f64 / n,
        info_bytes as f64 / n
    );
    println!(
        "  index entries per document: {index_per_doc:.2} (avg key {:.0} B); avg key+value bytes written per document: {:.0} B",
        index_key_bytes as f64 / index_total as f64,
        entry_bytes as f64 / n
    );
    println!(
        "  CPU outside timing: split {:.2} µs/doc; store-side encoding (CBOR body, rev hash, rev tree + info CBOR, index keys) {:.2} µs/doc",
        split_time.as_secs_f64() * 1e6,
        encode_time.as_secs_f64() * 1e6
    );
    println!();
    println!(
        "  {:<58} {:>8} {:>11} {:>13} {:>8} {:>7} {:>6} {:>6}",
        "measurement", "count", "time", "rate", "KiB/doc", "wr/doc", "cpu", "main"
    );
    println!(
        "  (KiB/doc, wr/doc: bytes and write calls the process made per document; cpu: CPU time \
         of the process, main: of the main (actix) thread, per wall time; 200% = both cores)"
    );

    let mut checks: Vec<Check> = Vec::new();

    // Fsync-bound: rounds of (i), (a), (i*) interleaved, then (b) and its physical reference
    // (b*), then one more round.
    if cfg.runs("sync") || cfg.runs("b") {
        let single_values: Vec<(String, Vec<u8>)> = docs[..cfg.sync_n]
            .iter()
            .map(|d| {
                let id = d["_id"].as_str().unwrap_or_default().to_owned();
                (id, serde_json::to_vec(d).unwrap_or_default())
            })
            .collect();
        let mut rounds: Vec<Round> = Vec::new();
        let mut round = |r: usize, reverse: bool| -> anyhow::Result<()> {
            let mut kinds = [Kind::I, Kind::A, Kind::IStar, Kind::B, Kind::BStar];
            if reverse {
                kinds.reverse();
            }
            let mut out: BTreeMap<Kind, Measure> = BTreeMap::new();
            for kind in kinds {
                let m = match kind {
                    Kind::I => {
                        let dir = tempdir()?;
                        let label = format!("(i) redb direct, 1 value/txn, round {r}");
                        raw_single(dir.path(), &single_values, label)?
                    }
                    Kind::A => actor_single(
                        docs[..cfg.sync_n].to_vec(),
                        format!("(a) actor, 1 writer, 1 put/write, round {r}"),
                    )?,
                    Kind::IStar | Kind::BStar => {
                        let dir = tempdir()?;
                        let (batch, label) = if kind == Kind::IStar {
                            (
                                1,
                                format!("(i*) redb direct, store's entries, 1 doc/txn, round {r}"),
                            )
                        } else {
                            (
                                WRITERS,
                                format!(
                                    "(b*) redb direct, store's entries, {WRITERS} docs/txn, round {r}"
                                ),
                            )
                        };
                        let path = dir.path().join("raw.redb");
                        raw_bulk(&path, &entries[..cfg.sync_n], batch, label)?.1
                    }
                    Kind::B => {
                        actor_concurrent(
                            shares_of(&docs[..cfg.sync_n]),
                            format!("(b) actor, {WRITERS} writers, 1 put/write each, round {r}"),
                        )?
                        .0
                    }
                };
                m.print();
                out.insert(kind, m);
            }
            let mut take = |k| out.remove(&k).context("measured");
            rounds.push(Round {
                i: take(Kind::I)?,
                a: take(Kind::A)?,
                i_star: take(Kind::IStar)?,
                b: take(Kind::B)?,
                b_star: take(Kind::BStar)?,
            });
            Ok(())
        };
        if cfg.runs("sync") {
            for r in 1..=cfg.sync_rounds {
                round(r, false)?;
            }
        }
        let mut b_runs = None;
        if cfg.runs("b") {
            let (b, size) = actor_concurrent(
                shares_of(&docs[..cfg.conc_n]),
                format!("(b) actor, {WRITERS} writers, 1 put/write each"),
            )?;
            b.print();
            let dir = tempdir()?;
            let (db, b_star) = raw_bulk(
                &dir.path().join("raw.redb"),
                &entries[..cfg.conc_n],
                WRITERS,
                format!("(b*) redb direct, store's entries, {WRITERS} docs/txn"),
            )?;
            b_star.print();
            let raw_size = std::fs::metadata(dir.path().join("raw.redb"))?.len();
            drop(db);
            println!(
                "      file sizes: (b) {:.1} MB, (b*) {:.1} MB",
                size as f64 / (1024.0 * 1024.0),
                raw_size as f64 / (1024.0 * 1024.0)
            );
            b_runs = Some((b, b_star));
        }
        if cfg.runs("sync") {
            round(cfg.sync_rounds + 1, true)?;
        }

        if !rounds.is_empty() {
            let ratios = |f: &dyn Fn(&Round) -> f64| -> (f64, String) {
                let v: Vec<f64> = rounds.iter().map(f).collect();
                let listed: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
                (median(v), listed.join(", "))
            };
            let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
            let med_i = med(&|r| r.i.rate());
            let med_a = med(&|r| r.a.rate());
            let (a_i, a_i_list) = ratios(&|r| r.a.rate() / r.i.rate());
            let (a_is, a_is_list) = ratios(&|r| r.a.rate() / r.i_star.rate());
            let (is_i, _) = ratios(&|r| r.i_star.rate() / r.i.rate());
            checks.push(Check {
                name: "(a) / (i), median of adjacent pairs".into(),
                value: a_i,
                target: 0.80,
                note: format!(
                    "pairs [{a_i_list}]; ratio of medians {:.2} ({med_a:.0} / {med_i:.0} writes/s)\n      \
                     diagnostic: (a) / (i*) [{a_is_list}], median {a_is:.2}; \
                     redb alone (i*) / (i) = {is_i:.2}",
                    med_a / med_i,
                ),
            });
            let (b_a, b_a_list) = ratios(&|r| r.b.rate() / r.a.rate());
            let (bs_is, bs_is_list) = ratios(&|r| r.b_star.rate() / r.i_star.rate());
            let (b_bs, _) = ratios(&|r| r.b.rate() / r.b_star.rate());
            let n = cfg.sync_n;
            checks.push(Check {
                name: format!("(b) / (a), both over {n} docs, adjacent"),
                value: b_a,
                target: 8.0,
                note: format!(
                    "rounds [{b_a_list}]\n      \
                     diagnostic: redb alone (b*) / (i*) = [{bs_is_list}], median {bs_is:.2}; \
                     (b) / (b*) = {b_bs:.2}"
                ),
            });
            if let Some((b, b_star)) = &b_runs {
                let k = cfg.sync_rounds;
                let around = (rounds[k - 1].a.rate() + rounds[k].a.rate()) / 2.0;
                checks.push(Check {
                    name: format!("(b) over {} docs / median (a)", cfg.conc_n),
                    value: b.rate() / med_a,
                    target: 8.0,
                    note: format!(
                        "{:.0} / {med_a:.0} docs/s; against the two (a) around (b): {:.2}\n      \
                         diagnostic: (b) / (b*) over {} docs = {:.2}",
                        b.rate(),
                        b.rate() / around,
                        cfg.conc_n,
                        b.rate() / b_star.rate(),
                    ),
                });
            }
        } else if b_runs.is_some() {
            println!("      (b) alone: run `sync` too for the (b) / (a) ratio");
        }
    }

    // Bulk: (ii), (c), (ii) again, then reads.
    if cfg.runs("bulk") || cfg.runs("reads") {
        let (ii_dir, ii_path) = {
            let d = tempdir()?;
            let p = d.path().join("raw.redb");
            (d, p)
        };
        let (_, ii1) = raw_bulk(
            &ii_path,
            bulk,
            BATCH,
            format!("(ii) redb direct, store's entries, {BATCH} docs/txn"),
        )?;
        ii1.print();
        let ii_size = std::fs::metadata(&ii_path)?.len();
        drop(ii_dir);

        let c_dir = tempdir()?;
        let batches: Vec<Vec<WriteOp>> = split[..cfg.n]
            .chunks(BATCH)
            .map(|c| c.iter().cloned().map(WriteOp::Edit).collect())
            .collect();
        drop(split);
        let mut rng = Rng(42);
        let picks: Vec<usize> = (0..cfg.reads).map(|_| rng.below(cfg.n)).collect();
        let c = actor_bulk(c_dir.path(), batches, &ids, &picks)?;
        c.write.print();
        println!(
            "      file sizes: (c) {:.1} MB, (ii) {:.1} MB",
            c.size_bytes as f64 / (1024.0 * 1024.0),
            ii_size as f64 / (1024.0 * 1024.0)
        );
        let store_file = c_dir.path().join("bench.redb");
        match check_same_entries(&store_file, bulk) {
            Ok(()) => {
                println!("      checked: the store's file holds exactly the entries (ii) writes")
            }
            Err(e) => println!("      WARNING: the store's file differs from (ii): {e:#}"),
        }
        drop(c_dir);

        let ii_dir2 = tempdir()?;
        let (ii_db, ii2) = raw_bulk(
            &ii_dir2.path().join("raw.redb"),
            bulk,
            BATCH,
            format!("(ii) redb direct, store's entries, {BATCH} docs/txn (again)"),
        )?;
        ii2.print();
        let ii_rate = (ii1.rate() + ii2.rate()) / 2.0;
        if cfg.runs("bulk") {
            checks.push(Check {
                name: "(c) / (ii), (ii) = mean of the runs around (c)".into(),
                value: c.write.rate() / ii_rate,
                target: 0.70,
                note: format!("{:.0} / {:.0} docs/s", c.write.rate(), ii_rate),
            });
        }

        c.handle_reads.print();
        c.store_reads.print();
        let [plain, decoded] = raw_reads(&ii_db, bulk, &picks)?;
        plain.print();
        decoded.print();
        drop(ii_db);
        drop(ii_dir2);
        checks.push(Check {
            name: "reads/s, BarrelHandle::get, 1 thread".into(),
            value: c.handle_reads.rate(),
            target: 100_000.0,
            note: format!(
                "{:.0}% of redb direct without decoding, {:.0}% of redb direct + decoding",
                100.0 * c.handle_reads.rate() / plain.rate(),
                100.0 * c.handle_reads.rate() / decoded.rate()
            ),
        });
    }

    println!();
    println!("  {:<48} {:>10} {:>10}  result", "ratio", "value", "target");
    let mut summary: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &checks {
        let pass = c.value >= c.target;
        *summary
            .entry(if pass { "PASS" } else { "FAIL" })
            .or_default() += 1;
        let fmt = |v: f64| {
            if c.target >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "  {:<48} {:>10} {:>10}  {}",
            c.name,
            fmt(c.value),
            format!(">= {}", fmt(c.target)),
            if pass { "PASS" } else { "FAIL" }
        );
        println!("      {}", c.note);
    }
    println!("  index entries per document: {index_per_doc:.2}");
    println!("  summary: {summary:?}");
    Ok(())
}
