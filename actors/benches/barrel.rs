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
//! | `COOPER_BENCH_CONC_CHUNK` | 2000 | documents per turn in the full-size (b) / (b*) session |
//! | `COOPER_BENCH_SYNC_N` | 2000 | documents for (i), (a), (i*), (b), (b*) at the same size |
//! | `COOPER_BENCH_SYNC_CHUNK` | 200 | documents per turn in that session |
//! | `COOPER_BENCH_READS` | 200000 | point reads per read measurement |
//! | `COOPER_BENCH_ONLY` | all | comma list of `sync,b,bulk` to run a subset (profiling) |
//! | `COOPER_BENCH_DIR` | system temp | where the fresh temporary directories go |
//!
//! Measurements (each on its own fresh directory and file, the actor's on a fresh barrel; every
//! commit uses `Durability::Immediate`):
//! - (i) redb directly: one ~300-byte value (the document's JSON) per transaction.
//! - (a) the actor: one writer, one `put` per document (each a commit of one).
//! - (b) the actor: 16 concurrent writers (`actix_rt::spawn`ed tasks), one `put` per document.
//! - (ii) redb directly: exactly the entries the store writes for those documents (doc info,
//!   body, feed entry, the path index keys as one run per transaction (`runs::RunWriter`),
//!   the counters and `applied_lsn`), 1000 documents per
//!   transaction; all keys and values are computed before the clock starts. After the run the
//!   store's file from (c) is compared with them (a WARNING line says when the store's write
//!   path changed and this mirror needs following).
//! - (c) the actor: `write` of 1000 `WriteOp::Edit` per call, one call at a time (the JSON
//!   is built and split into `IncomingDoc`s before the clock starts).
//! - The actor's store acknowledges a group commit when its write-ahead log record is durable
//!   (`Durability::Immediate` on the log file) and checkpoints the barrel file every second;
//!   the checkpoints' fsyncs happen inside the measured turns.
//! - reads: point reads of random ids from one thread, through `BarrelHandle::get`,
//!   `Store::get`, and redb directly on the (ii) file (with and without decoding).
//! - diagnostics, not targets: (i*) and (b*) are (ii) with 1 and 16 documents per
//!   transaction: what redb alone does with the store's entries at (a)'s and (b)'s commit
//!   sizes. For every write measurement the bytes and write calls the process made per
//!   document (`/proc/self/io`) and the CPU use are shown.
//!
//! This kind of disk's fsync rate drifts by an order of magnitude within seconds, so the
//! measurements that are compared run in one *session*: all their files are open at once and
//! they take turns over the same documents, `*_CHUNK` documents per turn, in a rotating order;
//! each one's time is the sum of its turns. Ratios are of those sums; the median of the
//! per-turn ratios is shown too. Sessions: (i) (a) (i*) (b) (b*) over `SYNC_N` documents;
//! (b) (b*) over `CONC_N`; (ii) (c) over `N`, one 1000-document transaction per turn.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::ops::Bound;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use cooper_actors::barrel::runs::{self, RunView, RunWriter};
use cooper_actors::barrel::store::{GetOptions, Store, StoreOptions, WriteOp};
use cooper_actors::barrel::{Barrel, BarrelHandle, Close};
use cooper_protocols::document::{self, IncomingDoc};
use cooper_protocols::ids::{hex, BarrelName, Rev};
use cooper_protocols::rev_tree::{RevTree, DEFAULT_REVS_LIMIT};
use cooper_protocols::{cbor, path};
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The allocator of the `cooper` binary, so that the figures are those of a node.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The store's tables, as `actors/src/barrel/store.rs` defines them.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bodies");
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");

/// The store's per-value format byte.
const FORMAT: u8 = 1;
/// Documents per transaction in (c) and (ii).
const BATCH: usize = 1000;
/// Concurrent writers in (b).
const WRITERS: usize = 16;

/// One entry of the store's changes feed (same field names, so the same CBOR).
#[derive(Debug, Serialize)]
struct FeedEntry {
    v: u8,
    id: String,
    earlier: Option<Vec<String>>,
}

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
    conc_chunk: usize,
    sync_n: usize,
    sync_chunk: usize,
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
            conc_chunk: var("COOPER_BENCH_CONC_CHUNK", 2000)?.max(WRITERS),
            sync_n: var("COOPER_BENCH_SYNC_N", 2000)?.max(1),
            sync_chunk: var("COOPER_BENCH_SYNC_CHUNK", 200)?.max(1),
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
#[derive(Debug, Clone, Copy, Default)]
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
    fn empty(label: String) -> Self {
        Self {
            label,
            count: 0,
            elapsed: Duration::ZERO,
            io: Some(Io::default()),
        }
    }

    fn add(&mut self, other: &Measure) {
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.io = match (self.io, other.io) {
            (Some(a), Some(b)) => Some(Io {
                wchar: a.wchar + b.wchar,
                syscw: a.syscw + b.syscw,
                cpu: a.cpu + b.cpu,
                main_cpu: a.main_cpu + b.main_cpu,
            }),
            _ => None,
        };
    }

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
    /// `feed` value: CBOR of the feed entry (no earlier topics for a new document).
    feed: Vec<u8>,
    /// Path index keys (one run per transaction, see `cooper_actors::barrel::runs`).
    index: Vec<Vec<u8>>,
}

impl Entries {
    fn bytes(&self) -> usize {
        // docs + bodies + feed (u64 key) + index keys
        self.id.len()
            + self.info.len()
            + self.body_key.len()
            + self.body.len()
            + 8
            + self.feed.len()
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
    let mut feed = Vec::with_capacity(48);
    ciborium::into_writer(
        &FeedEntry {
            v: FORMAT,
            id: id.to_owned(),
            earlier: Some(Vec::new()),
        },
        &mut feed,
    )
    .expect("cbor into a vec");
    let index = path::index_entries(body)
        .into_iter()
        .map(|(p, v)| path::index_key(&p, v, id))
        .collect();
    Entries {
        id: id.to_owned(),
        info,
        body_key,
        body: stored,
        feed,
        index,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// (i): one value per transaction.
fn write_single(db: &Database, values: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for (id, value) in values {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(DOCS)?
            .insert(id.as_str(), value.as_slice())?;
        txn.commit()?;
    }
    Ok(())
}

/// (ii), (i*), (b*): the store's entries for `entries`, whose first has seq `first_seq + 1`,
/// `batch` documents per transaction, with the 3 counters per transaction as the store writes.
fn write_entries(
    db: &Database,
    entries: &[Entries],
    batch: usize,
    first_seq: u64,
) -> anyhow::Result<()> {
    let mut seq = first_seq;
    for (lsn, chunk) in entries.chunks(batch).enumerate() {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut index = RunWriter::new();
        {
            let mut meta = txn.open_table(META)?;
            let mut docs = txn.open_table(DOCS)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut feed = txn.open_table(FEED)?;
            for e in chunk {
                seq += 1;
                // In the order `Writer::commit_revision` writes them.
                bodies.insert(e.body_key.as_slice(), e.body.as_slice())?;
                for k in &e.index {
                    index.put(k.clone());
                }
                feed.insert(seq, e.feed.as_slice())?;
                docs.insert(e.id.as_str(), e.info.as_slice())?;
            }
            meta.insert("update_seq", seq)?;
            meta.insert("doc_count", seq)?;
            meta.insert("deleted_count", 0)?;
            meta.insert("applied_lsn", lsn as u64 + 1)?;
        }
        index.finish(&txn)?;
        txn.commit()?;
    }
    Ok(())
}

/// `docs` dealt round-robin to `WRITERS` writers.
fn shares_of(docs: &[Value]) -> Vec<Vec<Value>> {
    let mut shares: Vec<Vec<Value>> = vec![Vec::new(); WRITERS];
    for (k, d) in docs.iter().enumerate() {
        shares[k % WRITERS].push(d.clone());
    }
    shares
}

// ---------------------------------------------------------------------------------------------
// Interleaved sessions

/// What a session measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    I,
    A,
    IStar,
    B,
    BStar,
    II,
    C,
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::I => "(i) redb direct, 1 value/txn".into(),
            Kind::A => "(a) actor, 1 writer, 1 put/write".into(),
            Kind::IStar => "(i*) redb direct, store's entries, 1 doc/txn".into(),
            Kind::B => format!("(b) actor, {WRITERS} writers, 1 put/write each"),
            Kind::BStar => format!("(b*) redb direct, store's entries, {WRITERS} docs/txn"),
            Kind::II => format!("(ii) redb direct, store's entries, {BATCH} docs/txn"),
            Kind::C => format!("(c) actor, write() of {BATCH} edits per call"),
        }
    }

    fn is_actor(self) -> bool {
        matches!(self, Kind::A | Kind::B | Kind::C)
    }
}

/// The inputs, all prepared before any clock starts.
struct Data {
    docs: Vec<Value>,
    /// (i)'s values: the id and the document's JSON.
    single: Vec<(String, Vec<u8>)>,
    split: Vec<IncomingDoc>,
    entries: Vec<Entries>,
}

enum Target {
    Raw(Database),
    Barrel {
        handle: BarrelHandle,
        store: Arc<Store>,
    },
}

/// The files of one session, open at once, and what each measured.
struct Session {
    files: BTreeMap<Kind, (tempfile::TempDir, PathBuf, Target)>,
    totals: BTreeMap<Kind, Measure>,
    turns: Vec<BTreeMap<Kind, Measure>>,
}

impl Session {
    /// Opens a fresh directory and file per kind (inside an actix system).
    fn open(kinds: &[Kind]) -> anyhow::Result<Self> {
        let mut files = BTreeMap::new();
        for &k in kinds {
            let dir = tempdir()?;
            let path = dir.path().join("bench.redb");
            let target = if k.is_actor() {
                let store = Arc::new(Store::open(&path, StoreOptions::default())?);
                let handle = Barrel::start(BarrelName::new("bench")?, store.clone(), None);
                Target::Barrel { handle, store }
            } else {
                let db = Database::create(&path)?;
                let txn = db.begin_write()?;
                txn.open_table(DOCS)?;
                if k != Kind::I {
                    txn.open_table(META)?;
                    txn.open_table(BODIES)?;
                    txn.open_table(FEED)?;
                    runs::create_tables(&txn)?;
                }
                txn.commit()?;
                Target::Raw(db)
            };
            files.insert(k, (dir, path, target));
        }
        Ok(Self {
            files,
            totals: BTreeMap::new(),
            turns: Vec::new(),
        })
    }

    fn barrel(&self, k: Kind) -> anyhow::Result<(&BarrelHandle, &Arc<Store>)> {
        match self.files.get(&k) {
            Some((_, _, Target::Barrel { handle, store })) => Ok((handle, store)),
            _ => bail!("no barrel for {k:?}"),
        }
    }

    fn raw(&self, k: Kind) -> anyhow::Result<&Database> {
        match self.files.get(&k) {
            Some((_, _, Target::Raw(db))) => Ok(db),
            _ => bail!("no database for {k:?}"),
        }
    }

    /// Documents `range` through `k`, timed.
    async fn turn(&self, k: Kind, data: &Data, range: Range<usize>) -> anyhow::Result<Measure> {
        let count = range.len();
        let first_seq = range.start as u64;
        let m = match k {
            Kind::I => {
                let db = self.raw(k)?;
                let clock = Clock::start();
                write_single(db, &data.single[range])?;
                clock.stop(k.label(), count)
            }
            Kind::IStar | Kind::BStar | Kind::II => {
                let db = self.raw(k)?;
                let batch = match k {
                    Kind::IStar => 1,
                    Kind::BStar => WRITERS,
                    _ => BATCH,
                };
                let clock = Clock::start();
                write_entries(db, &data.entries[range], batch, first_seq)?;
                clock.stop(k.label(), count)
            }
            Kind::A => {
                let (h, _) = self.barrel(k)?;
                let docs = data.docs[range].to_vec();
                let clock = Clock::start();
                for d in docs {
                    h.put(d).await?;
                }
                clock.stop(k.label(), count)
            }
            Kind::B => {
                let (h, _) = self.barrel(k)?;
                let shares = shares_of(&data.docs[range]);
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
                clock.stop(k.label(), count)
            }
            Kind::C => {
                let (h, _) = self.barrel(k)?;
                let batches: Vec<Vec<WriteOp>> = data.split[range]
                    .chunks(BATCH)
                    .map(|c| c.iter().cloned().map(WriteOp::Edit).collect())
                    .collect();
                let clock = Clock::start();
                for batch in batches {
                    for r in h.write(batch).await? {
                        r?;
                    }
                }
                clock.stop(k.label(), count)
            }
        };
        Ok(m)
    }

    /// Documents `0..n` through every kind, `chunk` at a time, taking turns in a rotating
    /// order.
    async fn run(&mut self, data: &Data, n: usize, chunk: usize) -> anyhow::Result<()> {
        let kinds: Vec<Kind> = self.files.keys().copied().collect();
        for (t, start) in (0..n).step_by(chunk).enumerate() {
            let range = start..(start + chunk).min(n);
            let mut order = kinds.clone();
            order.rotate_left(t % kinds.len());
            let mut turn = BTreeMap::new();
            for k in order {
                let m = self.turn(k, data, range.clone()).await?;
                self.totals
                    .entry(k)
                    .or_insert_with(|| Measure::empty(k.label()))
                    .add(&m);
                turn.insert(k, m);
            }
            self.turns.push(turn);
        }
        Ok(())
    }

    /// The ratio of the rates of `x` and `y` over the whole session, and the median of the
    /// per-turn ratios.
    fn ratio(&self, x: Kind, y: Kind) -> (f64, f64) {
        let total = self.totals[&x].rate() / self.totals[&y].rate();
        let per_turn = median(
            self.turns
                .iter()
                .map(|t| t[&x].rate() / t[&y].rate())
                .collect(),
        );
        (total, per_turn)
    }

    fn print(&self) {
        for (k, m) in &self.totals {
            m.print();
            let rates: Vec<f64> = self.turns.iter().map(|t| t[k].rate()).collect();
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            println!(
                "      {} turns: min {lo:.0}, median {:.0}, max {hi:.0} /s",
                rates.len(),
                median(rates.clone())
            );
        }
    }

    /// Closes the barrels (checking they hold `n` documents) and returns the file sizes and
    /// the directories, which still hold the files.
    async fn close(
        &mut self,
        n: usize,
    ) -> anyhow::Result<BTreeMap<Kind, (tempfile::TempDir, PathBuf, u64)>> {
        let mut out = BTreeMap::new();
        for (k, (dir, path, target)) in std::mem::take(&mut self.files) {
            if let Target::Barrel { handle, .. } = &target {
                let counts = handle.counts()?;
                ensure!(counts.doc_count == n as u64, "{k:?} holds {counts:?}");
                handle.addr().send(Close).await?;
            }
            drop(target);
            let size = std::fs::metadata(&path)?.len();
            out.insert(k, (dir, path, size));
        }
        Ok(out)
    }
}

fn print_sizes(files: &BTreeMap<Kind, (tempfile::TempDir, PathBuf, u64)>) {
    let sizes: Vec<String> = files
        .iter()
        .map(|(k, (_, _, size))| {
            let label = k.label();
            let short = label.split(' ').next().unwrap_or_default().to_owned();
            format!("{short} {:.1} MB", *size as f64 / (1024.0 * 1024.0))
        })
        .collect();
    println!("      file sizes: {}", sizes.join(", "));
}

/// Checks that the file the store wrote in (c) holds exactly the entries (ii) writes: the
/// same rows in the tables (ii) writes (values compared for a sample of documents), and
/// nothing in any other table.
fn check_same_entries(store_file: &Path, entries: &[Entries]) -> anyhow::Result<()> {
    let db = Database::create(store_file)?;
    let txn = db.begin_read()?;
    let mirrored = [
        "meta",
        "docs",
        "bodies",
        "feed",
        "index_runs",
        "index_run_meta",
    ];
    for t in txn.list_tables()? {
        let name = redb::TableHandle::name(&t).to_owned();
        if !mirrored.contains(&name.as_str()) {
            let rows = txn.open_untyped_table(t)?.len()?;
            ensure!(
                rows == 0,
                "the store wrote {rows} rows in table {name:?}, (ii) none"
            );
        }
    }
    let docs = txn.open_table(DOCS)?;
    let bodies = txn.open_table(BODIES)?;
    let feed = txn.open_table(FEED)?;
    let paths = RunView::open(
        txn.open_table(runs::RUN_BLOCKS)?,
        txn.open_table(runs::RUN_META)?,
    )?;
    let meta = txn.open_table(META)?;
    let n = entries.len() as u64;
    let index: u64 = entries.iter().map(|e| e.index.len() as u64).sum();
    ensure!(docs.len()? == n, "docs: {} rows, expected {n}", docs.len()?);
    ensure!(bodies.len()? == n, "bodies: {} rows", bodies.len()?);
    ensure!(feed.len()? == n, "feed: {} rows", feed.len()?);
    let live = paths
        .range(Bound::Unbounded, Bound::Unbounded, false)?
        .count() as u64;
    ensure!(live == index, "index: {live} keys, expected {index}");
    for key in ["update_seq", "doc_count"] {
        let v = meta.get(key)?.map(|g| g.value());
        ensure!(v == Some(n), "meta {key}: {v:?}, expected {n}");
    }
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
        let entry = feed.get(i as u64 + 1)?.context("feed entry missing")?;
        ensure!(
            entry.value() == e.feed.as_slice(),
            "feed entry {} differs",
            i + 1
        );
        for k in &e.index {
            let found = paths
                .range(Bound::Included(k), Bound::Included(k), false)?
                .next()
                .transpose()?;
            ensure!(found.as_ref() == Some(k), "index key missing");
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

/// Point reads of `picks`, timed; `read` returns something to keep the work from being
/// optimized away.
fn time_reads(
    label: &str,
    picks: &[usize],
    mut read: impl FnMut(usize) -> anyhow::Result<usize>,
) -> anyhow::Result<Measure> {
    let started = Instant::now();
    let mut total = 0usize;
    for &p in picks {
        total += read(p)?;
    }
    black_box(total);
    Ok(Measure {
        label: label.into(),
        count: picks.len(),
        elapsed: started.elapsed(),
        io: None,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

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
        "  sessions: (i) (a) (i*) (b) (b*) over {} docs, {} per turn; (b) (b*) over {} docs, {} \
         per turn; (ii) (c) over {} docs, {BATCH} per turn; {} point reads",
        cfg.sync_n, cfg.sync_chunk, cfg.conc_n, cfg.conc_chunk, cfg.n, cfg.reads
    );

    // Documents and everything derived from them, outside any timing.
    let docs: Vec<Value> = (0..n_docs).map(make_doc).collect();
    let json_bytes: usize = docs[..cfg.n]
        .iter()
        .map(|d| serde_json::to_vec(d).map(|v| v.len()))
        .sum::<Result<usize, _>>()?;
    let started = Instant::now();
    let split: Vec<IncomingDoc> = docs
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
    let single: Vec<(String, Vec<u8>)> = docs[..cfg.sync_n]
        .iter()
        .zip(&ids)
        .map(|(d, id)| Ok((id.clone(), serde_json::to_vec(d)?)))
        .collect::<anyhow::Result<_>>()?;

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
        "  index entries per document: {index_per_doc:.2} (avg key {:.0} B); key + value bytes \
         the store writes per document: {:.0} B",
        index_key_bytes as f64 / index_total as f64,
        entry_bytes as f64 / n
    );
    println!(
        "  CPU outside timing: split {:.2} µs/doc; store-side encoding (CBOR body, rev hash, rev \
         tree + info CBOR, index keys) {:.2} µs/doc",
        split_time.as_secs_f64() * 1e6,
        encode_time.as_secs_f64() * 1e6
    );
    let data = Data {
        docs,
        single,
        split,
        entries,
    };
    let bulk = &data.entries[..cfg.n];

    println!();
    println!(
        "  {:<58} {:>8} {:>11} {:>13} {:>8} {:>7} {:>6} {:>6}",
        "measurement (sum of its turns)",
        "count",
        "time",
        "rate",
        "KiB/doc",
        "wr/doc",
        "cpu",
        "main"
    );
    println!(
        "  (KiB/doc, wr/doc: bytes and write calls the process made per document; cpu: CPU time \
         of the process, main: of the main (actix) thread, per wall time; 200% = both cores)"
    );

    let mut checks: Vec<Check> = Vec::new();
    let mut a_rate = None;

    if cfg.runs("sync") {
        println!("  -- session: same size, {} docs --", cfg.sync_n);
        let kinds = [Kind::I, Kind::A, Kind::IStar, Kind::B, Kind::BStar];
        let (s, files) = actix_rt::System::new().block_on(async {
            let mut s = Session::open(&kinds)?;
            s.run(&data, cfg.sync_n, cfg.sync_chunk).await?;
            let files = s.close(cfg.sync_n).await?;
            Ok::<_, anyhow::Error>((s, files))
        })?;
        s.print();
        print_sizes(&files);
        drop(files);
        let (a_i, a_i_turn) = s.ratio(Kind::A, Kind::I);
        let (a_is, a_is_turn) = s.ratio(Kind::A, Kind::IStar);
        let (is_i, is_i_turn) = s.ratio(Kind::IStar, Kind::I);
        checks.push(Check {
            name: "(a) / (i)".into(),
            value: a_i,
            target: 0.80,
            note: format!(
                "median of the per-turn ratios {a_i_turn:.2}\n      \
                 diagnostic: (a) / (i*) = {a_is:.2} (per turn {a_is_turn:.2}); redb alone with \
                 the store's entries, (i*) / (i) = {is_i:.2} (per turn {is_i_turn:.2})"
            ),
        });
        let (b_a, b_a_turn) = s.ratio(Kind::B, Kind::A);
        let (bs_is, bs_is_turn) = s.ratio(Kind::BStar, Kind::IStar);
        let (b_bs, b_bs_turn) = s.ratio(Kind::B, Kind::BStar);
        checks.push(Check {
            name: format!("(b) / (a), both over {} docs", cfg.sync_n),
            value: b_a,
            target: 8.0,
            note: format!(
                "median of the per-turn ratios {b_a_turn:.2}\n      \
                 diagnostic: redb alone with the store's entries, (b*) / (i*) = {bs_is:.2} (per \
                 turn {bs_is_turn:.2}); (b) / (b*) = {b_bs:.2} (per turn {b_bs_turn:.2})"
            ),
        });
        a_rate = Some(s.totals[&Kind::A].rate());
    }

    if cfg.runs("b") {
        println!("  -- session: (b) full size, {} docs --", cfg.conc_n);
        let kinds = [Kind::B, Kind::BStar];
        let (s, files) = actix_rt::System::new().block_on(async {
            let mut s = Session::open(&kinds)?;
            s.run(&data, cfg.conc_n, cfg.conc_chunk).await?;
            let files = s.close(cfg.conc_n).await?;
            Ok::<_, anyhow::Error>((s, files))
        })?;
        s.print();
        print_sizes(&files);
        drop(files);
        let b = s.totals[&Kind::B].rate();
        let (b_bs, b_bs_turn) = s.ratio(Kind::B, Kind::BStar);
        match a_rate {
            Some(a) => checks.push(Check {
                name: format!("(b) over {} docs / (a) over {}", cfg.conc_n, cfg.sync_n),
                value: b / a,
                target: 8.0,
                note: format!(
                    "{b:.0} / {a:.0} docs/s, not interleaved, on files of different sizes\n      \
                     diagnostic: (b) / (b*) = {b_bs:.2} (per turn {b_bs_turn:.2})"
                ),
            }),
            None => println!("      (b) / (b*) = {b_bs:.2}; run `sync` too for (b) / (a)"),
        }
    }

    if cfg.runs("bulk") {
        println!("  -- session: bulk, {} docs --", cfg.n);
        let kinds = [Kind::II, Kind::C];
        let mut rng = Rng(42);
        let picks: Vec<usize> = (0..cfg.reads).map(|_| rng.below(cfg.n)).collect();
        let (s, reads, files) = actix_rt::System::new().block_on(async {
            let mut s = Session::open(&kinds)?;
            s.run(&data, cfg.n, BATCH).await?;
            let (h, store) = s.barrel(Kind::C)?;
            let opts = GetOptions::default();
            let handle_reads = time_reads(
                "reads: BarrelHandle::get, random ids, 1 thread",
                &picks,
                |p| Ok(h.get(&ids[p], &opts)?.body.len()),
            )?;
            let store_reads = time_reads("reads: Store::get, random ids, 1 thread", &picks, |p| {
                Ok(store.get(&ids[p], &opts)?.body.len())
            })?;
            let [plain, decoded] = raw_reads(s.raw(Kind::II)?, bulk, &picks)?;
            let files = s.close(cfg.n).await?;
            Ok::<_, anyhow::Error>((s, [handle_reads, store_reads, plain, decoded], files))
        })?;
        s.print();
        print_sizes(&files);
        match check_same_entries(&files[&Kind::C].1, bulk) {
            Ok(()) => {
                println!("      checked: the store's file holds exactly the entries (ii) writes")
            }
            Err(e) => println!("      WARNING: the store's file differs from (ii): {e:#}"),
        }
        drop(files);
        for r in &reads {
            r.print();
        }
        let (c_ii, c_ii_turn) = s.ratio(Kind::C, Kind::II);
        checks.push(Check {
            name: "(c) / (ii)".into(),
            value: c_ii,
            target: 0.70,
            note: format!(
                "{:.0} / {:.0} docs/s; median of the per-turn ratios {c_ii_turn:.2}",
                s.totals[&Kind::C].rate(),
                s.totals[&Kind::II].rate()
            ),
        });
        let [handle_reads, _, plain, decoded] = &reads;
        checks.push(Check {
            name: "reads/s, BarrelHandle::get, 1 thread".into(),
            value: handle_reads.rate(),
            target: 100_000.0,
            note: format!(
                "{:.0}% of redb direct without decoding, {:.0}% of redb direct + decoding",
                100.0 * handle_reads.rate() / plain.rate(),
                100.0 * handle_reads.rate() / decoded.rate()
            ),
        });
    }

    println!();
    println!("  {:<48} {:>10} {:>10}  result", "ratio", "value", "target");
    let mut summary: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &checks {
        let pass = c.value >= c.target;
        let result = if pass { "PASS" } else { "FAIL" };
        *summary.entry(result).or_default() += 1;
        let fmt = |v: f64| {
            if c.target >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "  {:<48} {:>10} {:>10}  {result}",
            c.name,
            fmt(c.value),
            format!(">= {}", fmt(c.target)),
        );
        println!("      {}", c.note);
    }
    println!("  index entries per document: {index_per_doc:.2}");
    println!("  summary: {summary:?}");
    Ok(())
}
