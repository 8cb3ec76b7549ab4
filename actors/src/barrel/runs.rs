//! LSM index runs: sorted, immutable runs of `(key, op)` stored as packed blocks in redb.
//!
//! The path index changes ~20 keys per document, scattered over the whole key space; kept in
//! one redb table, every commit would copy a leaf page per key. Here a write transaction's
//! index changes instead become one new small *run* (sorted puts and deletes, packed into
//! blocks of about [`BLOCK_BYTES`]) appended at the end of the [`RUN_BLOCKS`] table, and runs
//! are merged in the background of later commits (size-tiered compaction, [`FANOUT`] runs per
//! level). Reads merge the runs on the fly: for a key present in several runs the newest run
//! decides, and deletes hide the key.
//!
//! Layout:
//!
//! - [`RUN_BLOCKS`]: `run id (u64 BE) ‖ first key of the block` → block. A block is a sequence
//!   of entries `op: u8 (0 = delete, 1 = put) ‖ key length: u16 BE ‖ key`, sorted by key,
//!   strictly ascending within a run.
//! - [`RUN_META`]: run id → format byte, level (u8), entries (u64 BE), bytes (u64 BE).
//!
//! A higher run id is a newer run. A transaction's run enters at the level of its size,
//! `⌊log_FANOUT(entries)⌋` (so a bulk load's large runs are merged with runs of their size,
//! not with each small run that follows). Invariant: taken by increasing id, the levels of
//! the runs are non-increasing (older runs have higher-or-equal levels; a larger new run is
//! merged at once with the smaller runs before it), and every level holds at most
//! `FANOUT - 1` runs after a commit. A level-`L + 1` run is only made by merging all runs of
//! level `L`, at a moment when no run of a lower level exists; so the runs of the lowest
//! populated level are always the newest runs, and the merge's output, given a new highest id,
//! keeps the recency order correct. Every merge takes a *suffix* of the runs (the newest ones),
//! so recency stays correct even for files that break the invariant (which
//! [`RunWriter::finish`] repairs).

use std::cmp::Ordering;
use std::ops::{Bound, Range};

use redb::{AccessGuard, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::BarrelError;

/// `index_runs`: run id (u64 big-endian) ‖ first key of the block → block of entries.
pub const RUN_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_runs");
/// `index_run_meta`: run id → [`RunInfo`] (format byte, level, entries, bytes).
pub const RUN_META: TableDefinition<u64, &[u8]> = TableDefinition::new("index_run_meta");

/// Target size of a block: a block is closed before an entry would take it past this (a
/// block with a single entry may be larger). With its redb key a block then fits one 4 KiB
/// page: larger blocks take the next page size up (8 KiB blocks filled 16 KiB pages, and
/// doubled the file).
pub const BLOCK_BYTES: usize = 3900;
/// Runs per level that trigger a merge of the level into one run of the next level.
pub const FANOUT: usize = 8;
/// Longest key a run stores.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Format byte of [`RUN_META`] values.
const META_FORMAT: u8 = 1;
/// Length of a [`RUN_META`] value: format, level, entries, bytes.
const META_LEN: usize = 1 + 1 + 8 + 8;
/// Op byte of a delete (tombstone).
const OP_DELETE: u8 = 0;
/// Op byte of a put.
const OP_PUT: u8 = 1;
/// Op byte and key length before each key of a block.
const ENTRY_HEADER: usize = 3;
/// Length of the run id prefix of a block key.
const ID_LEN: usize = 8;

type Blocks<'t> = Table<'t, &'static [u8], &'static [u8]>;
type Meta<'t> = Table<'t, u64, &'static [u8]>;

/// What [`RUN_META`] records of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    /// The run's id; higher is newer.
    pub id: u64,
    /// Its level: 0 for a transaction's run, `L + 1` for a merge of level `L`.
    pub level: u8,
    /// Entries (puts and deletes).
    pub entries: u64,
    /// Total size of its blocks.
    pub bytes: u64,
}

impl RunInfo {
    fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0; META_LEN];
        out[0] = META_FORMAT;
        out[1] = self.level;
        out[2..10].copy_from_slice(&self.entries.to_be_bytes());
        out[10..18].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }

    fn decode(id: u64, raw: &[u8]) -> Result<Self, BarrelError> {
        let bad = || BarrelError::corrupt(format!("index run {id}: undecodable metadata"));
        if raw.len() != META_LEN || raw[0] != META_FORMAT {
            return Err(bad());
        }
        let u64_at = |at: usize| -> Result<u64, BarrelError> {
            let bytes: [u8; 8] = raw[at..at + 8].try_into().map_err(|_| bad())?;
            Ok(u64::from_be_bytes(bytes))
        };
        Ok(Self {
            id,
            level: raw[1],
            entries: u64_at(2)?,
            bytes: u64_at(10)?,
        })
    }
}

/// Creates both tables if missing, so read transactions can open them.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), BarrelError> {
    txn.open_table(RUN_BLOCKS)?;
    txn.open_table(RUN_META)?;
    Ok(())
}

/// The runs recorded in `meta`, oldest (lowest id) first.
pub fn list_runs<M: ReadableTable<u64, &'static [u8]>>(
    meta: &M,
) -> Result<Vec<RunInfo>, BarrelError> {
    let mut runs = Vec::new();
    for entry in meta.iter()? {
        let (id, raw) = entry?;
        runs.push(RunInfo::decode(id.value(), raw.value())?);
    }
    Ok(runs)
}

/// `id ‖ first`: the key of a block of run `id` starting at `first`.
fn block_key(id: u64, first: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(ID_LEN + first.len());
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(first);
    key
}

/// The upper bound of the block keys of run `id`.
fn run_end(id: u64) -> Bound<Vec<u8>> {
    match id.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The id for a new run: above every recorded run and every stored block (so blocks left
/// without metadata can never leak into a new run).
fn next_run_id(blocks: &Blocks<'_>, runs: &[RunInfo]) -> Result<u64, BarrelError> {
    let mut top = runs.last().map_or(0, |r| r.id);
    if let Some((key, _)) = blocks.last()? {
        let prefix: [u8; ID_LEN] = key
            .value()
            .get(..ID_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| BarrelError::corrupt("index run block key without a run id"))?;
        top = top.max(u64::from_be_bytes(prefix));
    }
    top.checked_add(1)
        .ok_or_else(|| BarrelError::corrupt("index run ids exhausted"))
}

// ---------------------------------------------------------------------------------------------
// Blocks

/// One decoded entry of a block: where its key lies in the block, and its op.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    end: usize,
    live: bool,
}

/// Decodes `block`, whose redb key ends with `first`, into `out`; checks that every entry is
/// whole, its op known, its keys strictly ascending and its first key `first`.
fn decode_block(first: &[u8], block: &[u8], out: &mut Vec<Entry>) -> Result<(), BarrelError> {
    let bad = |why: &str| BarrelError::corrupt(format!("index run block: {why}"));
    out.clear();
    let mut at = 0;
    while at < block.len() {
        let header = block
            .get(at..at + ENTRY_HEADER)
            .ok_or_else(|| bad("truncated entry"))?;
        let live = match header[0] {
            OP_PUT => true,
            OP_DELETE => false,
            _ => return Err(bad("unknown op")),
        };
        let start = at + ENTRY_HEADER;
        let end = start + usize::from(u16::from_be_bytes([header[1], header[2]]));
        let key = block.get(start..end).ok_or_else(|| bad("truncated key"))?;
        match out.last() {
            Some(prev) if block[prev.start..prev.end] >= *key => {
                return Err(bad("keys out of order"))
            }
            None if key != first => return Err(bad("first key differs from the block key")),
            _ => {}
        }
        out.push(Entry { start, end, live });
        at = end;
    }
    if out.is_empty() {
        return Err(bad("empty block"));
    }
    Ok(())
}

/// Bounds and direction of a scan.
#[derive(Debug, Clone)]
struct Bounds {
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    desc: bool,
}

impl Bounds {
    const ALL: Self = Self {
        lo: Bound::Unbounded,
        hi: Bound::Unbounded,
        desc: false,
    };

    fn above_lo(&self, key: &[u8]) -> bool {
        match &self.lo {
            Bound::Included(lo) => key >= lo.as_slice(),
            Bound::Excluded(lo) => key > lo.as_slice(),
            Bound::Unbounded => true,
        }
    }

    fn below_hi(&self, key: &[u8]) -> bool {
        match &self.hi {
            Bound::Included(hi) => key <= hi.as_slice(),
            Bound::Excluded(hi) => key < hi.as_slice(),
            Bound::Unbounded => true,
        }
    }

    fn is_empty(&self) -> bool {
        match (&self.lo, &self.hi) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        }
    }
}

/// The decoded current block of a cursor and the entries of it still to visit.
#[derive(Debug, Default)]
struct Decoded {
    entries: Vec<Entry>,
    /// Entries within the bounds not visited yet: ascending scans move `start` up, descending
    /// ones `end` down.
    todo: Range<usize>,
}

impl Decoded {
    fn load(&mut self, first: &[u8], block: &[u8], bounds: &Bounds) -> Result<(), BarrelError> {
        decode_block(first, block, &mut self.entries)?;
        let key = |e: &Entry| &block[e.start..e.end];
        let start = self.entries.partition_point(|e| !bounds.above_lo(key(e)));
        let end = self.entries.partition_point(|e| bounds.below_hi(key(e)));
        self.todo = start..end.max(start);
        Ok(())
    }

    /// The entry at the cursor, if any is left in this block.
    fn current(&self, desc: bool) -> Option<Entry> {
        if self.todo.is_empty() {
            return None;
        }
        let i = if desc {
            self.todo.end - 1
        } else {
            self.todo.start
        };
        self.entries.get(i).copied()
    }

    fn step(&mut self, desc: bool) {
        if self.todo.is_empty() {
            return;
        }
        if desc {
            self.todo.end -= 1;
        } else {
            self.todo.start += 1;
        }
    }

    /// Whether this block reached past the bounds in scan direction: no later block can hold
    /// a key within them.
    fn past_bounds(&self, desc: bool) -> bool {
        if desc {
            self.todo.start > 0
        } else {
            self.todo.end < self.entries.len()
        }
    }
}

/// A sorted stream of `(key, live)` with a rank: among equal keys the highest rank (the
/// newest run) wins.
trait Source {
    fn rank(&self) -> usize;
    fn head(&self) -> Option<(&[u8], bool)>;
}

/// The head that comes first in scan order among `sources`; among equal keys, that of the
/// newest source.
fn pick<S: Source>(sources: &[S], desc: bool) -> Option<(&[u8], bool)> {
    let mut best: Option<(&[u8], bool, usize)> = None;
    for s in sources {
        let Some((key, live)) = s.head() else {
            continue;
        };
        let better = match best {
            None => true,
            Some((bk, _, rank)) => match key.cmp(bk) {
                Ordering::Equal => s.rank() > rank,
                Ordering::Less => !desc,
                Ordering::Greater => desc,
            },
        };
        if better {
            best = Some((key, live, s.rank()));
        }
    }
    best.map(|(key, live, _)| (key, live))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes one run, block by block, from entries pushed in strictly ascending key order.
#[derive(Debug)]
struct RunBuilder {
    id: u64,
    /// The open block.
    buf: Vec<u8>,
    /// Where the last key of `buf` lies in it.
    last: Range<usize>,
    /// The last key of the previous block.
    prev_last: Vec<u8>,
    entries: u64,
    bytes: u64,
}

impl RunBuilder {
    fn new(id: u64) -> Self {
        Self {
            id,
            buf: Vec::with_capacity(BLOCK_BYTES),
            last: 0..0,
            prev_last: Vec::new(),
            entries: 0,
            bytes: 0,
        }
    }

    fn push(&mut self, blocks: &mut Blocks<'_>, key: &[u8], live: bool) -> Result<(), BarrelError> {
        let len = u16::try_from(key.len()).map_err(|_| {
            BarrelError::BadRequest(format!(
                "index key of {} bytes; at most {MAX_KEY_LEN} are indexed",
                key.len()
            ))
        })?;
        if self.entries > 0 {
            let prev = if self.buf.is_empty() {
                self.prev_last.as_slice()
            } else {
                &self.buf[self.last.clone()]
            };
            if key <= prev {
                return Err(BarrelError::corrupt("index run keys out of order"));
            }
        }
        if !self.buf.is_empty() && self.buf.len() + ENTRY_HEADER + key.len() > BLOCK_BYTES {
            self.flush(blocks)?;
        }
        self.buf.push(if live { OP_PUT } else { OP_DELETE });
        self.buf.extend_from_slice(&len.to_be_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(key);
        self.last = start..self.buf.len();
        self.entries += 1;
        Ok(())
    }

    fn flush(&mut self, blocks: &mut Blocks<'_>) -> Result<(), BarrelError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let first_len = usize::from(u16::from_be_bytes([self.buf[1], self.buf[2]]));
        let key = block_key(self.id, &self.buf[ENTRY_HEADER..ENTRY_HEADER + first_len]);
        blocks.insert(key.as_slice(), self.buf.as_slice())?;
        self.bytes += self.buf.len() as u64;
        self.prev_last.clear();
        self.prev_last
            .extend_from_slice(&self.buf[self.last.clone()]);
        self.buf.clear();
        Ok(())
    }

    /// Writes the last block and the run's metadata; a run without entries is not recorded.
    fn finish(
        mut self,
        blocks: &mut Blocks<'_>,
        meta: &mut Meta<'_>,
        level: u8,
    ) -> Result<Option<RunInfo>, BarrelError> {
        self.flush(blocks)?;
        if self.entries == 0 {
            return Ok(None);
        }
        let info = RunInfo {
            id: self.id,
            level,
            entries: self.entries,
            bytes: self.bytes,
        };
        meta.insert(self.id, info.encode().as_slice())?;
        Ok(Some(info))
    }
}

/// Collects the index changes of one write transaction.
#[derive(Debug, Default)]
pub struct RunWriter {
    /// (key, live: `true` = put, `false` = delete) in arrival order; the last op on a key
    /// wins. Sorted once at the end (cheaper than a map kept sorted on every insert).
    ops: Vec<(Vec<u8>, bool)>,
}

impl RunWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` to the index.
    pub fn put(&mut self, key: Vec<u8>) {
        self.ops.push((key, true));
    }

    /// Removes `key` from the index.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, false));
    }

    /// Whether no op was collected.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of ops collected (a key with several ops counts each).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The ops sorted by key, the last op of each key only.
    fn sorted(mut self) -> Vec<(Vec<u8>, bool)> {
        // Stable: ops on one key stay in arrival order, so the last one is the last of its run.
        self.ops.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Vec<u8>, bool)> = Vec::with_capacity(self.ops.len());
        for op in self.ops {
            match out.last_mut() {
                Some(last) if last.0 == op.0 => *last = op,
                _ => out.push(op),
            }
        }
        out
    }

    /// Writes the collected ops as a new level-0 run (id = highest existing id + 1), then
    /// compacts. Does nothing when empty. Opens [`RUN_BLOCKS`] and [`RUN_META`] itself, so
    /// neither may be open in `txn`; see [`RunWriter::finish_in`] otherwise.
    pub fn finish(self, txn: &WriteTransaction) -> Result<(), BarrelError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut blocks = txn.open_table(RUN_BLOCKS)?;
        let mut meta = txn.open_table(RUN_META)?;
        self.finish_in(&mut blocks, &mut meta)
    }

    /// [`RunWriter::finish`] on tables the caller opened.
    pub fn finish_in(
        self,
        blocks: &mut Table<'_, &'static [u8], &'static [u8]>,
        meta: &mut Table<'_, u64, &'static [u8]>,
    ) -> Result<(), BarrelError> {
        if self.is_empty() {
            return Ok(());
        }
        let runs = list_runs(meta)?;
        let mut run = RunBuilder::new(next_run_id(blocks, &runs)?);
        // With no older run a delete has nothing to hide.
        let keep_deletes = !runs.is_empty();
        for (key, live) in self.sorted() {
            if live || keep_deletes {
                run.push(blocks, &key, live)?;
            }
        }
        // A run enters at the level of its size, as if compaction had built it: a bulk
        // load's large runs are then merged with runs of their size, not with every small
        // commit's run that follows them.
        let level = level_of(run.entries);
        run.finish(blocks, meta, level)?;
        compact(blocks, meta)
    }
}

/// Replaces every run by one holding `keys` (sorted strictly ascending, all live): for
/// migrations and rebuilds. The run's level is `⌊log_FANOUT(entries)⌋`, as if compaction had
/// built it from single-entry runs, so that later commits do not merge it again soon.
pub fn rebuild(
    txn: &WriteTransaction,
    keys: impl Iterator<Item = Result<Vec<u8>, BarrelError>>,
) -> Result<(), BarrelError> {
    txn.delete_table(RUN_BLOCKS)?;
    txn.delete_table(RUN_META)?;
    let mut blocks = txn.open_table(RUN_BLOCKS)?;
    let mut meta = txn.open_table(RUN_META)?;
    let mut run = RunBuilder::new(1);
    for key in keys {
        run.push(&mut blocks, &key?, true)?;
    }
    let level = level_of(run.entries);
    run.finish(&mut blocks, &mut meta, level)?;
    Ok(())
}

/// The level of a run of `entries` entries: `⌊log_FANOUT(entries)⌋`, the level compaction
/// would have built it at from single-entry runs.
fn level_of(entries: u64) -> u8 {
    u8::try_from(entries.max(1).ilog(FANOUT as u64)).unwrap_or(u8::MAX)
}

/// The next merge to make among `runs` (oldest first), if any: the index of the oldest input
/// (the inputs are that run and every newer one) and the output's level.
fn next_merge(runs: &[RunInfo]) -> Option<(usize, u8)> {
    // Repair a broken invariant (a newer run on a higher level than an older one: a large
    // transaction's run after small ones) in one merge: from the oldest run below a newer
    // run's level, at the highest level merged.
    let mut newer_max = None;
    let mut first = None;
    for (i, r) in runs.iter().enumerate().rev() {
        if newer_max.is_some_and(|m| r.level < m) {
            first = Some(i);
        }
        newer_max = newer_max.max(Some(r.level));
    }
    if let Some(i) = first {
        let level = runs[i..].iter().map(|r| r.level).max().unwrap_or(0);
        return Some((i, level));
    }
    // Levels are non-increasing: walk the groups of equal level from the newest.
    let mut end = runs.len();
    while end > 0 {
        let level = runs[end - 1].level;
        let start = runs[..end]
            .iter()
            .rposition(|r| r.level != level)
            .map_or(0, |i| i + 1);
        if end - start >= FANOUT {
            return Some((start, level.saturating_add(1)));
        }
        end = start;
    }
    None
}

/// Merges until [`next_merge`] finds nothing to do. Every merge replaces at least two runs by
/// at most one, so this terminates whatever the starting state.
fn compact(blocks: &mut Blocks<'_>, meta: &mut Meta<'_>) -> Result<(), BarrelError> {
    loop {
        let runs = list_runs(meta)?;
        let Some((start, level)) = next_merge(&runs) else {
            return Ok(());
        };
        merge(blocks, meta, &runs, start, level)?;
    }
}

/// Merges `runs[start..]` (the newest runs) into one new run of `level` with a new highest
/// id, streaming: one block per input in memory. Deletes are dropped when no older run
/// remains for them to hide anything in.
fn merge(
    blocks: &mut Blocks<'_>,
    meta: &mut Meta<'_>,
    runs: &[RunInfo],
    start: usize,
    level: u8,
) -> Result<(), BarrelError> {
    let inputs = &runs[start..];
    let Some(oldest) = inputs.first() else {
        return Ok(());
    };
    let keep_deletes = start > 0;
    let id = next_run_id(blocks, runs)?;
    let mut sources = Vec::with_capacity(inputs.len());
    for (rank, run) in inputs.iter().enumerate() {
        let mut input = MergeInput::new(rank, run.id);
        input.settle(blocks)?;
        sources.push(input);
    }
    sources.retain(|s| !s.done);
    let mut out = RunBuilder::new(id);
    let mut key = Vec::new();
    while let Some((k, live)) = pick(&sources, false) {
        key.clear();
        key.extend_from_slice(k);
        if live || keep_deletes {
            out.push(blocks, &key, live)?;
        }
        for s in &mut sources {
            if s.head().is_some_and(|(k, _)| k == key.as_slice()) {
                s.decoded.step(false);
                s.settle(blocks)?;
            }
        }
        sources.retain(|s| !s.done);
    }
    out.finish(blocks, meta, level)?;
    // The inputs are every run from `oldest` up to the new one (and any stray blocks between).
    let (from, to) = (oldest.id.to_be_bytes(), id.to_be_bytes());
    blocks.retain_in::<&[u8], _>(
        (Bound::Included(&from[..]), Bound::Excluded(&to[..])),
        |_, _| false,
    )?;
    for run in inputs {
        meta.remove(run.id)?;
    }
    Ok(())
}

/// One input of a merge: reads its run a block at a time, copying each block, since the table
/// is written between reads.
#[derive(Debug)]
struct MergeInput {
    rank: usize,
    run: u64,
    /// Key of the current block; `None` before the first.
    block_key: Option<Vec<u8>>,
    block: Vec<u8>,
    decoded: Decoded,
    done: bool,
}

impl MergeInput {
    fn new(rank: usize, run: u64) -> Self {
        Self {
            rank,
            run,
            block_key: None,
            block: Vec::new(),
            decoded: Decoded::default(),
            done: false,
        }
    }

    /// Loads blocks until one has an entry left or the run ends.
    fn settle(&mut self, blocks: &Blocks<'_>) -> Result<(), BarrelError> {
        while !self.done && self.decoded.todo.is_empty() {
            let prefix = self.run.to_be_bytes();
            let lower = match &self.block_key {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(&prefix[..]),
            };
            let end = run_end(self.run);
            let next = blocks.range::<&[u8]>((lower, as_slice(&end)))?.next();
            match next {
                None => self.done = true,
                Some(entry) => {
                    let (k, v) = entry?;
                    let k = k.value().to_vec();
                    let first = k
                        .get(ID_LEN..)
                        .ok_or_else(|| BarrelError::corrupt("index run block key too short"))?;
                    self.block.clear();
                    self.block.extend_from_slice(v.value());
                    self.decoded.load(first, &self.block, &Bounds::ALL)?;
                    self.block_key = Some(k);
                }
            }
        }
        Ok(())
    }
}

impl Source for MergeInput {
    fn rank(&self) -> usize {
        self.rank
    }

    fn head(&self) -> Option<(&[u8], bool)> {
        let e = self.decoded.current(false)?;
        Some((&self.block[e.start..e.end], e.live))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A read view: the runs of one transaction (read or write), over its [`RUN_BLOCKS`] table.
#[derive(Debug)]
pub struct RunView<B> {
    blocks: B,
    /// Oldest first.
    runs: Vec<RunInfo>,
}

impl<B: ReadableTable<&'static [u8], &'static [u8]>> RunView<B> {
    /// A view of the runs listed in `meta`, read from `blocks` (both of one transaction).
    pub fn open<M: ReadableTable<u64, &'static [u8]>>(
        blocks: B,
        meta: M,
    ) -> Result<Self, BarrelError> {
        Ok(Self {
            runs: list_runs(&meta)?,
            blocks,
        })
    }

    /// Number of runs.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The runs, oldest first.
    pub fn run_infos(&self) -> &[RunInfo] {
        &self.runs
    }

    /// Live keys within `lo..hi`, ascending or descending, merged across runs: for a key in
    /// several runs the newest run decides, deleted keys are skipped, each key comes once.
    ///
    /// Costs two B-tree seeks per run ascending (the block holding `lo`, then the scan), one
    /// descending; then one block decode per block visited.
    pub fn range(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        desc: bool,
    ) -> Result<impl Iterator<Item = Result<Vec<u8>, BarrelError>> + '_, BarrelError> {
        let bounds = Bounds {
            lo: lo.map(<[u8]>::to_vec),
            hi: hi.map(<[u8]>::to_vec),
            desc,
        };
        let mut cursors = Vec::new();
        if !bounds.is_empty() {
            for (rank, run) in self.runs.iter().enumerate() {
                let mut cursor = self.cursor(rank, run.id, &bounds)?;
                cursor.settle(&bounds)?;
                if !cursor.done {
                    cursors.push(cursor);
                }
            }
        }
        Ok(Merge {
            cursors,
            bounds,
            failed: false,
        })
    }

    /// A cursor over the blocks of run `id` that may hold keys within `bounds`.
    fn cursor(&self, rank: usize, id: u64, bounds: &Bounds) -> Result<RunCursor<'_>, BarrelError> {
        let prefix = id.to_be_bytes();
        // Blocks starting past `hi` hold nothing within the bounds.
        let upper = match &bounds.hi {
            Bound::Included(h) => Bound::Included(block_key(id, h)),
            Bound::Excluded(h) => Bound::Excluded(block_key(id, h)),
            Bound::Unbounded => run_end(id),
        };
        // Ascending, start at the last block starting at or before `lo` (keys ≥ `lo` may
        // follow its first one); descending scans stop by themselves once below `lo`.
        let lower = match &bounds.lo {
            Bound::Included(l) | Bound::Excluded(l) if !bounds.desc => {
                let probe = block_key(id, l);
                let found = self
                    .blocks
                    .range::<&[u8]>((Bound::Included(&prefix[..]), Bound::Included(&probe[..])))?
                    .next_back()
                    .transpose()?;
                match found {
                    Some((k, _)) => k.value().to_vec(),
                    None => prefix.to_vec(),
                }
            }
            _ => prefix.to_vec(),
        };
        let blocks = self
            .blocks
            .range::<&[u8]>((Bound::Included(lower.as_slice()), as_slice(&upper)))?;
        Ok(RunCursor {
            rank,
            desc: bounds.desc,
            blocks,
            block: None,
            decoded: Decoded::default(),
            done: false,
        })
    }
}

/// Reads one run of a [`RunView`] within bounds, a block at a time.
struct RunCursor<'a> {
    rank: usize,
    desc: bool,
    /// The blocks still to read, in key order (consumed from the back when descending).
    blocks: redb::Range<'a, &'static [u8], &'static [u8]>,
    block: Option<AccessGuard<'a, &'static [u8]>>,
    decoded: Decoded,
    done: bool,
}

impl RunCursor<'_> {
    /// Loads blocks until one has an entry within the bounds left, or none can.
    fn settle(&mut self, bounds: &Bounds) -> Result<(), BarrelError> {
        while !self.done && self.decoded.todo.is_empty() {
            if self.block.is_some() && self.decoded.past_bounds(bounds.desc) {
                self.done = true;
                break;
            }
            let next = if bounds.desc {
                self.blocks.next_back()
            } else {
                self.blocks.next()
            };
            match next {
                None => self.done = true,
                Some(entry) => {
                    let (k, v) = entry?;
                    let first = k
                        .value()
                        .get(ID_LEN..)
                        .ok_or_else(|| BarrelError::corrupt("index run block key too short"))?;
                    self.decoded.load(first, v.value(), bounds)?;
                    self.block = Some(v);
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, bounds: &Bounds) -> Result<(), BarrelError> {
        self.decoded.step(bounds.desc);
        self.settle(bounds)
    }
}

impl Source for RunCursor<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn head(&self) -> Option<(&[u8], bool)> {
        if self.done {
            return None;
        }
        let e = self.decoded.current(self.desc)?;
        let block = self.block.as_ref()?.value();
        Some((block.get(e.start..e.end)?, e.live))
    }
}

/// The merged scan of a [`RunView::range`].
struct Merge<'a> {
    cursors: Vec<RunCursor<'a>>,
    bounds: Bounds,
    failed: bool,
}

impl Merge<'_> {
    fn step(&mut self) -> Result<Option<Vec<u8>>, BarrelError> {
        let desc = self.bounds.desc;
        loop {
            let picked = pick(&self.cursors, desc).map(|(k, live)| (k.to_vec(), live));
            let Some((key, live)) = picked else {
                return Ok(None);
            };
            for c in &mut self.cursors {
                if c.head().is_some_and(|(k, _)| k == key.as_slice()) {
                    c.advance(&self.bounds)?;
                }
            }
            self.cursors.retain(|c| !c.done);
            if live {
                return Ok(Some(key));
            }
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Vec<u8>, BarrelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(key) => key.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use redb::{Database, Durability, ReadableDatabase};

    use super::*;

    type Model = BTreeSet<Vec<u8>>;
    type OwnedBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

    struct TestDb {
        db: Database,
        _dir: tempfile::TempDir,
    }

    fn test_db() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("runs.redb")).unwrap();
        let t = TestDb { db, _dir: dir };
        t.write(create_tables).unwrap();
        t
    }

    impl TestDb {
        fn write(
            &self,
            f: impl FnOnce(&WriteTransaction) -> Result<(), BarrelError>,
        ) -> Result<(), BarrelError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        }

        /// Applies `ops` through a [`RunWriter`] and to `model`.
        fn apply(&self, ops: &[(Vec<u8>, bool)], model: &mut Model) -> Result<(), BarrelError> {
            let mut w = RunWriter::new();
            for (k, live) in ops {
                if *live {
                    w.put(k.clone());
                    model.insert(k.clone());
                } else {
                    w.delete(k.clone());
                    model.remove(k);
                }
            }
            self.write(|txn| w.finish(txn))
        }

        fn scan(&self, b: &OwnedBounds, desc: bool) -> Result<Vec<Vec<u8>>, BarrelError> {
            let txn = self.db.begin_read()?;
            let view = RunView::open(txn.open_table(RUN_BLOCKS)?, txn.open_table(RUN_META)?)?;
            let keys = view.range(as_slice(&b.0), as_slice(&b.1), desc)?.collect();
            keys
        }

        fn runs(&self) -> Vec<RunInfo> {
            let txn = self.db.begin_read().unwrap();
            list_runs(&txn.open_table(RUN_META).unwrap()).unwrap()
        }

        /// Checks every direction of `bounds` and the whole range against `model`.
        fn check(&self, model: &Model, bounds: &[OwnedBounds]) {
            let all = (Bound::Unbounded, Bound::Unbounded);
            for b in bounds.iter().chain([&all]) {
                for desc in [false, true] {
                    let got = self.scan(b, desc).unwrap();
                    assert_eq!(got, expected(model, b, desc), "bounds {b:?}, desc {desc}");
                }
            }
        }
    }

    /// The model's keys within `b`, by plain filtering.
    fn expected(model: &Model, b: &OwnedBounds, desc: bool) -> Vec<Vec<u8>> {
        let within = |k: &Vec<u8>| {
            let lo = match &b.0 {
                Bound::Included(l) => k >= l,
                Bound::Excluded(l) => k > l,
                Bound::Unbounded => true,
            };
            let hi = match &b.1 {
                Bound::Included(h) => k <= h,
                Bound::Excluded(h) => k < h,
                Bound::Unbounded => true,
            };
            lo && hi
        };
        let mut out: Vec<Vec<u8>> = model.iter().filter(|k| within(k)).cloned().collect();
        if desc {
            out.reverse();
        }
        out
    }

    /// Ids strictly increasing, levels non-increasing, fewer than [`FANOUT`] runs per level.
    fn check_shape(runs: &[RunInfo]) {
        for w in runs.windows(2) {
            assert!(w[0].id < w[1].id, "ids out of order: {runs:?}");
            assert!(w[0].level >= w[1].level, "levels increase: {runs:?}");
        }
        let mut per_level = std::collections::BTreeMap::new();
        for r in runs {
            *per_level.entry(r.level).or_insert(0) += 1;
        }
        assert!(
            per_level.values().all(|&n| n < FANOUT),
            "a level is full: {runs:?}"
        );
    }

    const KEYS: u8 = 60;

    /// Key `i`: even keys are short, each a prefix of the next odd key, which is long (up to
    /// 700 bytes), so that merged runs span several blocks.
    fn key(i: u8) -> Vec<u8> {
        let mut k = format!("k{:02}", i / 2).into_bytes();
        if i % 2 == 1 {
            let pad = usize::from(i) * 53 % 700 + 1;
            k.extend(std::iter::repeat_n(b'x' + i % 3, pad));
        }
        k
    }

    fn bound_key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0..KEYS).prop_map(key),
            (0..KEYS).prop_map(|i| {
                let mut k = key(i);
                k.push(0);
                k
            }),
            (0..KEYS).prop_map(|i| key(i)[..2].to_vec()),
            proptest::collection::vec(any::<u8>(), 0..3),
        ]
    }

    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            1 => Just(Bound::Unbounded),
            3 => bound_key().prop_map(Bound::Included),
            3 => bound_key().prop_map(Bound::Excluded),
        ]
    }

    fn txn() -> impl Strategy<Value = (Vec<(u8, bool)>, Vec<OwnedBounds>)> {
        (
            proptest::collection::vec((0..KEYS, any::<bool>()), 1..12),
            proptest::collection::vec((bound(), bound()), 3),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn runs_match_a_model(txns in proptest::collection::vec(txn(), 1..200)) {
            let db = test_db();
            let mut model = Model::new();
            for (ops, bounds) in &txns {
                let ops: Vec<(Vec<u8>, bool)> = ops.iter().map(|(i, live)| (key(*i), *live)).collect();
                db.apply(&ops, &mut model).unwrap();
                check_shape(&db.runs());
                db.check(&model, bounds);
            }
        }
    }

    /// A small deterministic generator for the longer tests.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn many_transactions_reach_several_levels() {
        let db = test_db();
        let mut model = Model::new();
        let mut rng = Lcg(7);
        let mut top = 0;
        for _ in 0..700 {
            let ops: Vec<(Vec<u8>, bool)> = (0..1 + rng.next(6))
                .map(|_| (key(rng.next(u64::from(KEYS)) as u8), rng.next(3) > 0))
                .collect();
            db.apply(&ops, &mut model).unwrap();
            let runs = db.runs();
            check_shape(&runs);
            top = top.max(runs.iter().map(|r| r.level).max().unwrap_or(0));
        }
        assert!(top >= 3, "reached level {top}");
        let b = (Bound::Included(key(10)), Bound::Excluded(key(41)));
        db.check(&model, &[b]);
    }

    #[test]
    fn runs_enter_at_the_level_of_their_size() {
        let db = test_db();
        let mut model = Model::new();
        for i in 0..3u8 {
            db.apply(&[(vec![b'a', i], true)], &mut model).unwrap();
        }
        // A large transaction after small ones: one merge of them all, at its level.
        let big: Vec<(Vec<u8>, bool)> = (0..600u16)
            .map(|i| (format!("b{i:04}").into_bytes(), true))
            .collect();
        db.apply(&big, &mut model).unwrap();
        let runs = db.runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].level, 3, "⌊log8(603)⌋");
        let large = runs[0];
        // Small transactions after it do not rewrite it.
        for i in 0..FANOUT as u8 - 1 {
            db.apply(&[(vec![b'c', i], true)], &mut model).unwrap();
        }
        let runs = db.runs();
        check_shape(&runs);
        assert_eq!(runs[0], large);
        assert_eq!(runs.len(), FANOUT);
        db.check(&model, &[]);
    }

    fn rebuild_key(i: u64) -> Vec<u8> {
        format!("r{i:06}-{}", "p".repeat(20)).into_bytes()
    }

    #[test]
    fn rebuild_then_edits() {
        let db = test_db();
        let mut model: Model = (0..5000).map(|i| rebuild_key(i * 2)).collect();
        // Runs left from before are replaced.
        db.apply(&[(b"old".to_vec(), true)], &mut Model::new())
            .unwrap();
        db.write(|txn| rebuild(txn, model.clone().into_iter().map(Ok)))
            .unwrap();
        let runs = db.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].entries, 5000);
        assert_eq!(runs[0].level, 4, "⌊log8(5000)⌋");
        assert!(runs[0].bytes > 10 * BLOCK_BYTES as u64);
        let bounds = [
            (
                Bound::Included(rebuild_key(1234)),
                Bound::Excluded(rebuild_key(2345)),
            ),
            (
                Bound::Excluded(rebuild_key(1234)),
                Bound::Included(rebuild_key(2346)),
            ),
            (Bound::Included(b"r0042".to_vec()), Bound::Unbounded),
            (Bound::Unbounded, Bound::Excluded(b"r0042".to_vec())),
            (
                Bound::Included(rebuild_key(4000)),
                Bound::Included(rebuild_key(4000)),
            ),
        ];
        db.check(&model, &bounds);

        let mut rng = Lcg(3);
        for _ in 0..30 {
            let ops: Vec<(Vec<u8>, bool)> = (0..40)
                .map(|_| (rebuild_key(rng.next(10_000)), rng.next(2) == 0))
                .collect();
            db.apply(&ops, &mut model).unwrap();
            check_shape(&db.runs());
            db.check(&model, &bounds);
        }

        // The view works on a write transaction's tables too.
        db.write(|txn| {
            let view = RunView::open(txn.open_table(RUN_BLOCKS)?, txn.open_table(RUN_META)?)?;
            let got: Vec<Vec<u8>> = view
                .range(Bound::Unbounded, Bound::Unbounded, false)?
                .collect::<Result<_, _>>()?;
            assert_eq!(got, model.iter().cloned().collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();

        // A second rebuild replaces everything.
        let small: Model = [b"a".to_vec(), b"b".to_vec()].into();
        db.write(|txn| rebuild(txn, small.clone().into_iter().map(Ok)))
            .unwrap();
        assert_eq!(db.runs().len(), 1);
        db.check(&small, &[]);
    }

    #[test]
    fn rebuild_refuses_unsorted_keys() {
        let db = test_db();
        let keys = [b"b".to_vec(), b"a".to_vec()];
        assert!(db
            .write(|txn| rebuild(txn, keys.clone().into_iter().map(Ok)))
            .is_err());
    }

    #[test]
    fn corrupt_blocks_are_errors() {
        let bad_blocks: [&[u8]; 7] = [
            &[7, 0, 1, b'a'],                      // unknown op
            &[1, 0, 9, b'a'],                      // truncated key
            &[1, 0],                               // truncated header
            &[],                                   // empty
            &[1, 0, 1, b'b'],                      // first key differs from the block key
            &[1, 0, 1, b'a', 1, 0, 1, b'a'],       // keys out of order
            &[1, 0, 1, b'a', 0, 0, 1, b'b', 9, 9], // trailing garbage
        ];
        let all = (Bound::Unbounded, Bound::Unbounded);
        for bad in bad_blocks {
            let db = test_db();
            let mut model = Model::new();
            db.apply(&[(b"a".to_vec(), true), (b"b".to_vec(), true)], &mut model)
                .unwrap();
            db.write(|txn| {
                let mut blocks = txn.open_table(RUN_BLOCKS)?;
                let key = blocks.first()?.unwrap().0.value().to_vec();
                blocks.insert(key.as_slice(), bad)?;
                Ok(())
            })
            .unwrap();
            for desc in [false, true] {
                assert!(db.scan(&all, desc).is_err(), "{bad:?} desc {desc}");
            }
            // Compaction reading the block fails too, rather than panic.
            for i in 0..FANOUT - 2 {
                db.apply(&[(vec![b'c', i as u8], true)], &mut model)
                    .unwrap();
            }
            assert!(
                db.apply(&[(b"z".to_vec(), true)], &mut model).is_err(),
                "{bad:?}"
            );
        }

        // Undecodable metadata.
        let db = test_db();
        db.write(|txn| {
            txn.open_table(RUN_META)?.insert(1, [9u8, 9].as_slice())?;
            Ok(())
        })
        .unwrap();
        assert!(db.scan(&all, false).is_err());
    }

    #[test]
    fn tombstones_go_when_the_oldest_run_is_merged() {
        let db = test_db();
        let mut model = Model::new();
        let put = |k: &[u8]| (k.to_vec(), true);
        let del = |k: &[u8]| (k.to_vec(), false);
        db.apply(&[put(b"a"), put(b"b"), put(b"c")], &mut model)
            .unwrap();
        db.apply(&[del(b"b")], &mut model).unwrap();
        assert_eq!(db.runs()[1].entries, 1, "the tombstone is kept at level 0");
        for i in 0..FANOUT as u8 - 2 {
            db.apply(&[put(&[b'd', i])], &mut model).unwrap();
        }
        let runs = db.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].level, 1);
        assert_eq!(runs[0].entries, model.len() as u64, "no tombstone left");
        db.check(&model, &[]);
    }

    #[test]
    fn tombstones_stay_while_an_older_run_remains() {
        let db = test_db();
        let mut model: Model = (0..10u8).map(|i| vec![b'k', i]).collect();
        db.write(|txn| rebuild(txn, model.clone().into_iter().map(Ok)))
            .unwrap();
        assert_eq!(db.runs()[0].level, 1);
        db.apply(&[(vec![b'k', 3], false)], &mut model).unwrap();
        for i in 0..FANOUT as u8 - 1 {
            db.apply(&[(vec![b'n', i], true)], &mut model).unwrap();
        }
        let runs = db.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].level, runs[1].level), (1, 1));
        assert_eq!(
            runs[1].entries,
            u64::from(FANOUT as u8 - 1) + 1,
            "puts and the tombstone"
        );
        db.check(&model, &[]);
    }

    /// Writes a run with the given level directly, bypassing compaction.
    fn craft(
        txn: &WriteTransaction,
        level: u8,
        ops: &[(Vec<u8>, bool)],
        model: &mut Model,
    ) -> Result<(), BarrelError> {
        let mut blocks = txn.open_table(RUN_BLOCKS)?;
        let mut meta = txn.open_table(RUN_META)?;
        let id = next_run_id(&blocks, &list_runs(&meta)?)?;
        let mut run = RunBuilder::new(id);
        for (k, live) in ops {
            run.push(&mut blocks, k, *live)?;
            if *live {
                model.insert(k.clone());
            } else {
                model.remove(k);
            }
        }
        run.finish(&mut blocks, &mut meta, level)?;
        Ok(())
    }

    #[test]
    fn broken_shapes_converge() {
        // Too many runs on a level.
        let db = test_db();
        let mut model = Model::new();
        db.write(|txn| {
            for i in 0..20u8 {
                craft(txn, 0, &[(vec![b'a', i % 5], i % 3 > 0)], &mut model)?;
            }
            Ok(())
        })
        .unwrap();
        db.apply(&[(b"z".to_vec(), true)], &mut model).unwrap();
        let runs = db.runs();
        check_shape(&runs);
        assert_eq!(runs.len(), 1);
        db.check(&model, &[]);

        // A newer run on a higher level than an older one, and a full level.
        let db = test_db();
        let mut model = Model::new();
        db.write(|txn| {
            craft(txn, 0, &[(b"a".to_vec(), true)], &mut model)?;
            craft(
                txn,
                3,
                &[(b"a".to_vec(), false), (b"b".to_vec(), true)],
                &mut model,
            )?;
            for i in 0..10u8 {
                craft(txn, 1, &[(vec![b'c', i], true)], &mut model)?;
            }
            Ok(())
        })
        .unwrap();
        db.apply(&[(b"z".to_vec(), true)], &mut model).unwrap();
        check_shape(&db.runs());
        db.check(&model, &[]);
    }

    #[test]
    fn empty_writer_and_empty_ranges() {
        let db = test_db();
        db.write(|txn| RunWriter::new().finish(txn)).unwrap();
        assert!(db.runs().is_empty());
        let mut model = Model::new();
        db.apply(&[(b"m".to_vec(), true)], &mut model).unwrap();
        let m = b"m".to_vec();
        for b in [
            (Bound::Excluded(m.clone()), Bound::Excluded(m.clone())),
            (Bound::Included(m.clone()), Bound::Excluded(m.clone())),
            (Bound::Included(b"n".to_vec()), Bound::Included(m.clone())),
        ] {
            assert!(db.scan(&b, false).unwrap().is_empty());
            assert!(db.scan(&b, true).unwrap().is_empty());
        }
        // Deletes into an empty index leave no run.
        let db = test_db();
        db.apply(&[(b"m".to_vec(), false)], &mut Model::new())
            .unwrap();
        assert!(db.runs().is_empty());
    }
}
