//! The redb store of one barrel (DESIGN §3). Synchronous, plain and free of actix: the
//! [`Barrel`](crate::barrel::Barrel) actor calls it from its writer thread (writes, in groups
//! inside a transaction that spans several of them; see [`Store::apply_group`]) and from any
//! thread (reads, on read transactions; a read waits only for the commit of writes
//! acknowledged before it started).
//!
//! Every stored value starts with a format byte, and the `meta` table records the schema
//! version; [`Store::open`] migrates older files forward and refuses newer ones.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use cooper_protocols::cbor;
use cooper_protocols::document::{revisions_json, IncomingDoc};
use cooper_protocols::ids::{is_local_id, Rev};
use cooper_protocols::path;
use cooper_protocols::rev_tree::{RevTree, DEFAULT_REVS_LIMIT};
use md5::Md5;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::runs::{self, RunView, RunWriter};
use super::wal::{LogFile, Opened};
use crate::error::BarrelError;

/// `meta`: schema version, update seq and document counts.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `docs`: id → [`DocInfo`] (revision tree and the doc's latest seq), CBOR.
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
/// `bodies`: id bytes ‖ 24-byte revision → stored revision (format byte, flags, attachments,
/// canonical CBOR body). Only leaves keep bodies.
const BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bodies");
/// `feed`: seq → [`FeedEntry`] (CBOR); each document appears once, at its latest seq.
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// Schema 3's `changes`: seq → id (replaced by `feed`).
const CHANGES_V3: TableDefinition<u64, &str> = TableDefinition::new("changes");
/// `paths`: path index key (see `cooper_protocols::path`) → (); schemas 2–4 only (schema 5
/// keeps the index in runs, see [`runs`]).
const PATHS: TableDefinition<&[u8], ()> = TableDefinition::new("paths");
/// `attachments`: SHA-256 of the content → content.
const ATTACHMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("attachments");
/// `local`: `_local/…` id → format byte, u64 counter, canonical CBOR body.
const LOCAL: TableDefinition<&str, &[u8]> = TableDefinition::new("local");

const SCHEMA_VERSION_KEY: &str = "schema_version";
const UPDATE_SEQ_KEY: &str = "update_seq";
const DOC_COUNT_KEY: &str = "doc_count";
const DELETED_COUNT_KEY: &str = "deleted_count";
/// The last write-ahead log record whose writes this file holds.
const APPLIED_LSN_KEY: &str = "applied_lsn";

/// The write-ahead log as earlier Cooper wrote it (`<barrel file>.wal` as a redb file): log
/// sequence number → one group commit's writes (see [`encode_record`]). Read once, at the
/// first open by this code, which replays it and replaces it with a [`LogFile`].
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Log bytes after which the barrel file is made durable and the log trimmed.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Groups of at most this many writes are logged by the writer thread itself.
const INLINE_LOG_OPS: usize = 1;
/// Longest time the barrel file stays behind its log while writes come in.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The schema this code writes. Version 1 had no path index; 2 added it; 3 indexes empty
/// arrays and objects too; 4 keeps, in the changes feed, the topics a document had before its
/// latest change; 5 has a write-ahead log beside the file (older code would ignore it) and keeps
/// the path index in runs (see [`runs`]) instead of one `paths` table.
pub const SCHEMA_VERSION: u64 = 5;

/// Most earlier topics a feed entry keeps; past that it matches every filter.
const MAX_EARLIER_TOPICS: usize = 256;

/// One entry of the changes feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FeedEntry {
    v: u8,
    id: String,
    /// Topics of the live winners the document had before this change, since its previous
    /// entry (accumulated over the entries this one replaced); `None` when there were too
    /// many to keep, which makes the entry match every filter.
    earlier: Option<Vec<String>>,
}

/// Format byte of stored values written by this code.
const FORMAT: u8 = 1;
/// Depth limit when decoding stored CBOR (documents are checked at 64 on the way in).
const DECODE_DEPTH: usize = 128;
/// Most candidates a query collects to sort in memory before it prefers an ordered scan.
const COLLECT_LIMIT: usize = 10_000;

/// Options of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Generations kept per branch of a revision tree.
    pub revs_limit: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            revs_limit: DEFAULT_REVS_LIMIT,
        }
    }
}

/// Metadata of one attachment of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// Name within the document.
    pub name: String,
    /// MIME type as given.
    pub content_type: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the content: the key in the `attachments` table.
    #[serde(with = "bytes32")]
    pub sha256: [u8; 32],
    /// MD5 of the content, shown as CouchDB's `md5-<base64>` digest.
    pub md5: [u8; 16],
    /// Generation of the revision that added this content.
    pub revpos: u64,
}

impl AttachmentMeta {
    /// CouchDB's digest string, `md5-<base64>`.
    pub fn digest(&self) -> String {
        format!("md5-{}", STANDARD.encode(self.md5))
    }

    /// The stub shown in a document's `_attachments`.
    pub fn stub(&self) -> Value {
        serde_json::json!({
            "content_type": self.content_type,
            "digest": self.digest(),
            "length": self.length,
            "revpos": self.revpos,
            "stub": true,
        })
    }
}

/// A `Vec<u8>` as one CBOR byte string (not an array of integers).
mod byte_vec {
    use std::fmt;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

mod bytes32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let v: serde_bytes_vec::ByteBuf = Deserialize::deserialize(d)?;
        <[u8; 32]>::try_from(v.0.as_slice()).map_err(|_| serde::de::Error::custom("32 bytes"))
    }

    pub mod serde_bytes_vec {
        use std::fmt;

        pub struct ByteBuf(pub Vec<u8>);

        impl<'de> serde::Deserialize<'de> for ByteBuf {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = ByteBuf;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                        Ok(ByteBuf(v.to_vec()))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut a: A,
                    ) -> Result<ByteBuf, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = a.next_element::<u8>()? {
                            if out.len() >= 64 {
                                return Err(serde::de::Error::custom("too many bytes"));
                            }
                            out.push(b);
                        }
                        Ok(ByteBuf(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

/// What the `docs` table holds per document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocInfo {
    /// Format version of this record.
    v: u8,
    tree: RevTree,
    /// The seq of the document's latest change.
    seq: u64,
}

/// One revision with its body, as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRevision {
    /// The document id.
    pub id: String,
    /// This revision.
    pub rev: Rev,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// The user's members.
    pub body: Map<String, Value>,
    /// Its attachments.
    pub attachments: Vec<AttachmentMeta>,
    /// History newest first, when asked for (`revs=true`).
    pub history: Option<Vec<Rev>>,
    /// Other live leaves, when asked for (`conflicts=true`).
    pub conflicts: Option<Vec<Rev>>,
}

impl DocRevision {
    /// The CouchDB-shaped document: the body with `_id`, `_rev` and, when present, `_deleted`,
    /// `_attachments`, `_conflicts`, `_revisions`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(self.body.len() + 4);
        for (k, v) in &self.body {
            m.insert(k.clone(), v.clone());
        }
        self.add_members(m)
    }

    /// [`DocRevision::to_json`], moving the body out instead of copying it (it is left
    /// empty).
    pub fn take_json(&mut self) -> Value {
        let m = std::mem::take(&mut self.body);
        self.add_members(m)
    }

    fn add_members(&self, mut m: Map<String, Value>) -> Value {
        m.insert("_id".into(), Value::String(self.id.clone()));
        m.insert("_rev".into(), Value::String(self.rev.to_string()));
        if self.deleted {
            m.insert("_deleted".into(), Value::Bool(true));
        }
        if !self.attachments.is_empty() {
            let atts = self
                .attachments
                .iter()
                .map(|a| (a.name.clone(), a.stub()))
                .collect();
            m.insert("_attachments".into(), Value::Object(atts));
        }
        if let Some(c) = &self.conflicts {
            if !c.is_empty() {
                let c = c.iter().map(|r| Value::String(r.to_string())).collect();
                m.insert("_conflicts".into(), Value::Array(c));
            }
        }
        if let Some(h) = &self.history {
            m.insert("_revisions".into(), revisions_json(h));
        }
        Value::Object(m)
    }
}

/// Which revision(s) a read asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetOptions {
    /// A given revision instead of the winner (a deleted one is returned too).
    pub rev: Option<Rev>,
    /// Include the history (`_revisions`).
    pub revs: bool,
    /// Include the other live leaves (`_conflicts`).
    pub conflicts: bool,
}

/// Which leaves `open_revs` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenRevs {
    /// Every leaf.
    All,
    /// These revisions (each found or reported missing).
    Revs(Vec<Rev>),
    /// These revisions, each replaced by the leaves that descend from it when it is no longer
    /// a leaf (CouchDB's `latest=true`).
    Latest(Vec<Rev>),
}

/// One row of `_all_docs`.
#[derive(Debug, Clone, PartialEq)]
pub struct AllDocsRow {
    /// The document id.
    pub id: String,
    /// Its winning revision.
    pub rev: Rev,
}

/// One answer of an `open_revs` read.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenRev {
    /// The revision, with its history.
    Ok(DocRevision),
    /// A revision the store does not hold (or holds without a body).
    Missing(Rev),
}

/// Writes ready for a group commit: generated ids fixed and each write encoded for the
/// write-ahead log. Made on the caller's thread ([`Prepared::new`]), so that the barrel's
/// writer thread only applies them.
#[derive(Debug, Default)]
pub struct Prepared {
    ops: Vec<WriteOp>,
    encoded: Vec<Vec<u8>>,
    /// Per op, what the writer would compute from the request alone (not logged: replay
    /// computes it again, to the same result).
    hints: Vec<Option<Hint>>,
}

/// Work done for the writer on the caller's thread: a document's canonical CBOR body and,
/// unless it is a deletion, its index keys (sorted, without duplicates).
#[derive(Debug, Default)]
struct Hint {
    body_cbor: Vec<u8>,
    keys: Option<Vec<Vec<u8>>>,
}

impl Hint {
    fn of(op: &WriteOp) -> Option<Self> {
        let (WriteOp::Edit(doc) | WriteOp::Replicate(doc)) = op else {
            return None;
        };
        let id = doc.id.as_deref().filter(|id| !is_local_id(id))?;
        let mut body_cbor = Vec::with_capacity(256);
        cbor::encode_object(&doc.body, true, &mut body_cbor);
        let keys = (!doc.deleted).then(|| index_keys(id, Some(&doc.body)));
        Some(Self { body_cbor, keys })
    }
}

/// The index keys of a document's body, sorted, without duplicates.
fn index_keys(id: &str, body: Option<&Map<String, Value>>) -> Vec<Vec<u8>> {
    body.map(|b| path::index_keys(b, id)).unwrap_or_default()
}

impl Prepared {
    /// Fixes the ids to generate (the log must replay to the same documents) and encodes.
    pub fn new(mut ops: Vec<WriteOp>) -> Result<Self, BarrelError> {
        for op in &mut ops {
            if let WriteOp::Edit(doc) = op {
                if doc.id.is_none() {
                    doc.id = Some(new_doc_id()?);
                }
            }
        }
        let encoded = ops.iter().map(encode_op).collect();
        let hints = ops.iter().map(Hint::of).collect();
        Ok(Self {
            ops,
            encoded,
            hints,
        })
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is no write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends `other`'s writes (one group commit takes several requests).
    pub fn append(&mut self, other: Prepared) {
        self.ops.extend(other.ops);
        self.encoded.extend(other.encoded);
        self.hints.extend(other.hints);
    }
}

/// One write, as the barrel receives it (and as its write-ahead log keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteOp {
    /// A new edit (`new_edits=true`): creates, updates or (with `deleted`) deletes. The id is
    /// generated when missing.
    Edit(IncomingDoc),
    /// A replicated revision (`new_edits=false`): inserted with the history given in
    /// `revisions` (or just `rev`).
    Replicate(IncomingDoc),
    /// Adds or replaces one attachment, making a new revision from `rev`.
    PutAttachment {
        /// The document.
        id: String,
        /// The parent revision (`None` creates the document).
        rev: Option<Rev>,
        /// Attachment name.
        name: String,
        /// MIME type.
        content_type: String,
        /// The content.
        #[serde(with = "byte_vec")]
        data: Vec<u8>,
    },
    /// Removes one attachment, making a new revision from `rev`.
    DeleteAttachment {
        /// The document.
        id: String,
        /// The parent revision.
        rev: Rev,
        /// Attachment name.
        name: String,
    },
    /// Writes (or with `deleted`, removes) a local document; `rev` must be its current `0-N`.
    PutLocal {
        /// The `_local/…` id.
        id: String,
        /// The current counter, if the document exists.
        rev: Option<u64>,
        /// Delete instead of write.
        deleted: bool,
        /// The body.
        body: Map<String, Value>,
    },
}

/// What a successful write reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// The document id.
    pub id: String,
    /// The new revision (`0-N` for local documents).
    pub rev: String,
}

/// The changes a batch committed, in seq order.
pub type Changes = Vec<DocumentChanged>;

/// A committed change of a document, as published to listeners after the commit.
#[derive(Debug, Clone)]
pub struct DocumentChanged {
    /// The seq the change took.
    pub seq: u64,
    /// The document id.
    pub id: String,
    /// The winner after the change.
    pub rev: Rev,
    /// Whether the winner is a tombstone.
    pub deleted: bool,
    /// Body of the previous live winner, if there was one.
    pub old: Option<Arc<Map<String, Value>>>,
    /// Body of the new live winner, if it is live.
    pub new: Option<Arc<Map<String, Value>>>,
}

/// One row of the changes feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// The document's latest seq.
    pub seq: u64,
    /// The document id.
    pub id: String,
    /// Its winning revision.
    pub rev: Rev,
    /// Whether the winner is a tombstone.
    pub deleted: bool,
    /// Every leaf, winner first (for `style=all_docs`).
    pub leaves: Vec<Rev>,
    /// Topics of the live winners the document had before this change (since its previous
    /// entry in the feed), so a filtered reader that replays the feed learns that a document
    /// left the set it watches; `None` when there were too many to keep: then the row
    /// matches every filter.
    pub earlier_topics: Option<Vec<String>>,
}

impl ChangeRow {
    /// The topics of this row that `matches` accepts — those of the current winner `body`
    /// and the earlier ones; `None` when the row does not concern the filter.
    pub fn matching_topics(
        &self,
        body: Option<&Map<String, Value>>,
        matches: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let mut topics = cooper_protocols::topic::topics(&self.id, body.unwrap_or(&Map::new()));
        if let Some(earlier) = &self.earlier_topics {
            for t in earlier {
                if !topics.contains(t) {
                    topics.push(t.clone());
                }
            }
        }
        let matched: Vec<String> = topics.into_iter().filter(|t| matches(t)).collect();
        if matched.is_empty() && self.earlier_topics.is_some() {
            None
        } else {
            Some(matched)
        }
    }
}

/// Counts of a barrel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BarrelCounts {
    /// Live documents.
    pub doc_count: u64,
    /// Documents whose winner is a tombstone.
    pub deleted_count: u64,
    /// Seq of the latest change.
    pub update_seq: u64,
    /// File size in bytes.
    pub size_bytes: u64,
}

/// The answer of `revs_diff` for one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevsDiff {
    /// Revisions the store does not hold.
    pub missing: Vec<Rev>,
    /// Leaves the store holds that are ancestors-by-generation of missing ones.
    pub possible_ancestors: Vec<Rev>,
}

/// A condition of a path query.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Equal to the value (for arrays with `*`: some element equals it).
    Eq(Value),
    /// Has the path and no value there equals this one.
    Ne(Value),
    /// Greater than (same type only: numbers with numbers, strings with strings).
    Gt(Value),
    /// Greater than or equal.
    Gte(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Lte(Value),
    /// Equal to one of these.
    In(Vec<Value>),
    /// A string starting with this.
    Prefix(String),
    /// Has (true) or lacks (false) the path.
    Exists(bool),
}

/// One condition: a normalized JSON Pointer and an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Normalized pointer (`/address/city`, `/tags/*`).
    pub path: String,
    /// The operator and operand.
    pub op: Op,
}

/// A path query: AND of conditions, optional order by one path, a page size and a cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    /// Order by this normalized path; `true` for descending. Documents without a scalar
    /// at the path are not listed when ordering by it (as in CouchDB's Mango).
    pub order: Option<(String, bool)>,
    /// Page size.
    pub limit: usize,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

/// One page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// The matching winners.
    pub docs: Vec<DocRevision>,
    /// For each document, the cursor of the page that starts right after it (Relay's edge
    /// cursors).
    pub cursors: Vec<String>,
    /// Cursor of the next page, `None` when this page is the last.
    pub next: Option<String>,
}

/// How a query is answered, as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `index-scan` (ordered walk of one path's index), `index-collect` (collect from one
    /// path's index, then sort), `ids` (all documents by id), or `full-scan`.
    pub strategy: &'static str,
    /// The path whose index drives the query, if any.
    pub index: Option<String>,
    /// Key ranges of that index the query walks.
    pub ranges: usize,
    /// Conditions checked on each candidate document after the index.
    pub filters: usize,
    /// Whether every document is read (no index narrows the query).
    pub full_scan: bool,
}

/// A barrel's redb store.
#[derive(Debug)]
pub struct Store {
    /// `None` once closed: handles that outlive the barrel then get `Closed`, and the file is
    /// released at once rather than when the last handle drops.
    db: RwLock<Option<Database>>,
    /// The write-ahead log; only the writer (and `close`) takes it.
    wal: Mutex<Option<Wal>>,
    /// How far writers were answered and readers can see (see [`Store::apply_then`]).
    visibility: Mutex<Visibility>,
    visible_cv: Condvar,
    /// Wakes the writer when a reader waits for its open transaction.
    commit_notify: tokio::sync::Notify,
    path: PathBuf,
    options: StoreOptions,
}

/// The write-ahead log of a store and its checkpoint state.
///
/// A group of writes is applied to the barrel file's open transaction while its log record
/// (the writes as requested) is appended to the log ([`LogFile`]) and made durable with
/// `fdatasync` (the acknowledgement point); the transaction commits later without an fsync
/// (`Durability::None`), and the pages it dirtied stay in memory, where later commits to the
/// same pages coalesce. At a *checkpoint* (every [`CHECKPOINT_INTERVAL`] under load, after a
/// second of idleness, at close, or after [`CHECKPOINT_BYTES`] of log) the barrel file is made
/// durable and the log starts a new cycle. On open, the records past the file's `applied_lsn`
/// are applied again, in order, by the same code (generated ids are fixed before logging, so
/// replay is deterministic): a `kill -9` loses no acknowledged write.
#[derive(Debug)]
struct Wal {
    log: LogThread,
    next_lsn: u64,
    last_checkpoint: Instant,
    bytes_since_checkpoint: u64,
    /// The barrel file has commits that are not durable yet.
    dirty: bool,
    /// Acknowledged writes are in the log but could not be applied to the barrel file: no
    /// more writes, checkpoints or trims until the barrel is reopened (which applies them).
    poisoned: bool,
}

/// Log records whose writes were acknowledged, and those readers see: a group commit is
/// acknowledged as soon as its log record is durable, just before the barrel file's commit
/// makes it visible; a read waits for the visibility of what was acknowledged when it began
/// (a commit without fsync: microseconds), so a writer always reads its own writes.
#[derive(Debug, Default)]
struct Visibility {
    acked: u64,
    visible: u64,
    /// A reader waits for `visible` to reach `acked`: the writer commits now.
    wanted: bool,
    /// Acknowledged writes were lost from the barrel file (they are in the log): reads fail
    /// until the store is reopened.
    failed: bool,
}

/// The results of a group's writes, one per write, in order.
type WriteResults = Vec<Result<WriteResult, BarrelError>>;

/// Answers a group of writes once its log record is durable: each write's result, or why the
/// group failed.
pub type Ack = Box<dyn FnOnce(Result<WriteResults, BarrelError>) + Send + 'static>;

/// Writes an open transaction takes before it commits.
pub const TXN_MAX_OPS: usize = 4096;
/// Log bytes an open transaction holds before it commits.
const TXN_MAX_BYTES: usize = 16 << 20;
/// Longest time acknowledged writes wait in the open transaction before they are committed
/// (and published to listeners) when no reader asks for them.
pub const TXN_MAX_AGE: Duration = Duration::from_millis(10);

/// The barrel file's write transaction while it spans group commits (see
/// [`Store::apply_group`]): the groups' writes, their index changes (one run at commit), the
/// log records they came from (applied again should the commit fail), the changes to publish.
pub struct OpenTxn {
    txn: WriteTransaction,
    index: RunWriter,
    records: Vec<(u64, Arc<Vec<u8>>)>,
    /// Groups whose log records are not durable yet: their lsn, results and answer.
    acks: std::collections::VecDeque<(u64, WriteResults, Ack)>,
    changes: Changes,
    ops: usize,
    bytes: usize,
    started: Instant,
}

impl OpenTxn {
    fn begin(db: &Database) -> Result<Self, BarrelError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(Self {
            txn,
            index: RunWriter::new(),
            records: Vec::new(),
            acks: std::collections::VecDeque::new(),
            changes: Vec::new(),
            ops: 0,
            bytes: 0,
            started: Instant::now(),
        })
    }

    /// When the first group began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether it should commit now, whatever its age.
    pub fn is_full(&self) -> bool {
        self.ops >= TXN_MAX_OPS || self.bytes >= TXN_MAX_BYTES
    }

    /// Whether groups wait for their log records.
    pub fn has_unacknowledged(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Whether it holds acknowledged writes (which are then only in the log, should it be
    /// dropped without its commit).
    pub fn holds_acknowledged(&self) -> bool {
        self.records.len() > self.acks.len()
    }

    /// Writes applied so far.
    pub fn ops(&self) -> usize {
        self.ops
    }
}

impl std::fmt::Debug for OpenTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTxn")
            .field("records", &self.records.len())
            .field("unacknowledged", &self.acks.len())
            .field("ops", &self.ops)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// Makes log record `.1` visible to readers when dropped.
struct VisibleOnDrop<'a>(&'a Store, u64);

impl Drop for VisibleOnDrop<'_> {
    fn drop(&mut self) {
        let mut v = self.0.visibility.lock().unwrap_or_else(|e| e.into_inner());
        if std::thread::panicking() {
            // The commit did not happen: the acknowledged writes are only in the log.
            v.failed = true;
            self.0.visible_cv.notify_all();
            return;
        }
        v.visible = v.visible.max(self.1);
        if v.visible >= v.acked {
            v.wanted = false;
        }
        self.0.visible_cv.notify_all();
    }
}

/// Records the log thread takes at most before it syncs (it takes every queued one up to
/// this); also the number of records in flight before the writer waits.
const LOG_QUEUE: usize = 64;

/// How far the log is durable, shared by the log thread and the writer.
#[derive(Debug, Default)]
struct LogProgress {
    state: Mutex<LogState>,
    cv: Condvar,
    /// Wakes the writer (waiting for its next job) when records became durable.
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct LogState {
    /// Every record up to this one is durable.
    durable: u64,
    /// An append failed: no later record is written (a gap would hide them at replay).
    failed: Option<BarrelError>,
}

impl LogProgress {
    fn advance(&self, result: Result<u64, BarrelError>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(lsn) => st.durable = st.durable.max(lsn),
            Err(e) => {
                st.failed.get_or_insert(e);
            }
        }
        self.cv.notify_all();
        self.notify.notify_one();
    }

    fn get(&self) -> (u64, Option<BarrelError>) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.durable, st.failed.clone())
    }

    /// Waits until record `lsn` is durable (or the log failed).
    fn wait(&self, lsn: u64) -> Result<(), BarrelError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.durable >= lsn {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks the log failed when dropped by an unwinding panic.
struct FailOnPanic(Arc<LogProgress>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .advance(Err(BarrelError::Storage("the log thread panicked".into())));
        }
    }
}

/// The thread that appends to the write-ahead log: it takes every record queued while it
/// synced the previous ones and makes them durable with one `fdatasync` (group commit of
/// the log), while the writer applies the next groups to the barrel file.
#[derive(Debug)]
struct LogThread {
    file: Arc<Mutex<LogFile>>,
    progress: Arc<LogProgress>,
    /// The last record handed to the log (by the thread or inline).
    submitted: u64,
    tx: Option<std::sync::mpsc::SyncSender<(u64, Arc<Vec<u8>>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogThread {
    fn start(log: LogFile, durable: u64) -> Result<Self, BarrelError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Arc<Vec<u8>>)>(LOG_QUEUE);
        let name = format!(
            "wal-{}",
            log.path()
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("barrel")
        );
        let file = Arc::new(Mutex::new(log));
        let progress = Arc::new(LogProgress::default());
        progress.advance(Ok(durable));
        let (shared, prog) = (file.clone(), progress.clone());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // Should this thread panic, the writer hears of it instead of waiting forever.
                let _failed = FailOnPanic(prog.clone());
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < LOG_QUEUE {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if prog.get().1.is_some() {
                        continue;
                    }
                    let last = batch.last().map_or(0, |r| r.0);
                    let records: Vec<(u64, &[u8])> =
                        batch.iter().map(|(l, r)| (*l, r.as_slice())).collect();
                    let started = Instant::now();
                    let result = match shared.lock() {
                        Ok(mut f) => f.append_all(&records),
                        Err(_) => Err(BarrelError::Storage("the log file is unusable".into())),
                    };
                    metrics::histogram!("cooper_wal_sync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("cooper_wal_records_per_sync").record(batch.len() as f64);
                    prog.advance(result.map(|()| last));
                }
            })
            .map_err(|e| BarrelError::Storage(format!("cannot start the log thread: {e}")))?;
        Ok(Self {
            file,
            progress,
            submitted: durable,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands record `lsn` to the log thread (waits while [`LOG_QUEUE`] records are queued).
    fn submit(&mut self, lsn: u64, record: Arc<Vec<u8>>) -> Result<(), BarrelError> {
        self.tx
            .as_ref()
            .ok_or(BarrelError::Closed)?
            .send((lsn, record))
            .map_err(|_| BarrelError::Storage("the log thread stopped".into()))?;
        self.submitted = lsn;
        Ok(())
    }

    /// Whether every record handed to the log is durable.
    fn idle(&self) -> bool {
        let (durable, failed) = self.progress.get();
        failed.is_none() && durable >= self.submitted
    }

    /// Appends record `lsn` on this thread; only when [`idle`](Self::idle).
    fn append_inline(&mut self, lsn: u64, record: &[u8]) -> Result<(), BarrelError> {
        self.submitted = lsn;
        let result = self.file().and_then(|mut f| f.append(lsn, record));
        self.progress.advance(result.clone().map(|()| lsn));
        result
    }

    /// The log file (between appends).
    fn file(&self) -> Result<std::sync::MutexGuard<'_, LogFile>, BarrelError> {
        self.file
            .lock()
            .map_err(|_| BarrelError::Storage("the log file is unusable".into()))
    }
}

impl Drop for LogThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, migrating an older schema forward and
    /// applying the write-ahead log records the file does not hold yet.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, BarrelError> {
        let db = Database::create(path)?;
        Self::migrate(&db, path)?;
        let mut applied = applied_lsn(&db)?;
        let wal_path = Self::wal_path(path);
        let (log, records) = match LogFile::open(&wal_path)? {
            Opened::Log(log, records) => (log, records),
            Opened::Legacy => {
                let records = legacy_records(&Database::create(&wal_path)?)?;
                let mut pending = 0;
                for (lsn, raw) in records.iter().filter(|(lsn, _)| *lsn > applied) {
                    reapply_record(&db, &options, *lsn, raw)?;
                    pending += 1;
                }
                // Durable before the old log goes.
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                tracing::info!(file = %path.display(), records = pending,
                    "replayed and replaced a write-ahead log of an earlier format");
                applied = applied.max(records.last().map_or(0, |r| r.0));
                (LogFile::replace(&wal_path)?, Vec::new())
            }
        };
        let next_lsn = records.last().map_or(0, |r| r.0).max(applied) + 1;
        let pending: Vec<_> = records
            .into_iter()
            .filter(|(lsn, _)| *lsn > applied)
            .collect();
        if pending.first().is_some_and(|(lsn, _)| *lsn != applied + 1) {
            return Err(BarrelError::Storage(format!(
                "{}: the write-ahead log continues at record {} but the barrel file holds \
                 records up to {applied} (is it another barrel's log?)",
                wal_path.display(),
                pending[0].0
            )));
        }
        let store = Self {
            db: RwLock::new(Some(db)),
            wal: Mutex::new(Some(Wal {
                log: LogThread::start(log, next_lsn - 1)?,
                next_lsn,
                last_checkpoint: Instant::now(),
                bytes_since_checkpoint: 0,
                dirty: false,
                poisoned: false,
            })),
            visibility: Mutex::new(Visibility::default()),
            visible_cv: Condvar::new(),
            commit_notify: tokio::sync::Notify::new(),
            path: path.to_owned(),
            options,
        };
        store.recover(pending)?;
        Ok(store)
    }

    /// The write-ahead log state. A panic while it was held (in the middle of a group
    /// commit) poisons the store, like a failed group commit.
    fn lock_wal(&self) -> std::sync::MutexGuard<'_, Option<Wal>> {
        match self.wal.lock() {
            Ok(g) => g,
            Err(e) => {
                let mut g = e.into_inner();
                if let Some(w) = g.as_mut() {
                    if !w.poisoned {
                        tracing::error!(file = %self.path.display(),
                            "a group commit panicked; no more writes until the barrel is reopened");
                    }
                    w.poisoned = true;
                }
                g
            }
        }
    }

    /// The write-ahead log file of the barrel file at `path`.
    pub fn wal_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".wal");
        PathBuf::from(p)
    }

    /// Applies the log records the barrel file does not hold yet (after a crash), makes the
    /// file durable and trims the log.
    fn recover(&self, pending: Vec<(u64, Vec<u8>)>) -> Result<(), BarrelError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or(BarrelError::Closed)?;
        let mut guard = self.lock_wal();
        let wal = guard.as_mut().ok_or(BarrelError::Closed)?;
        let replayed = pending.len();
        for (lsn, raw) in pending {
            reapply_record(db, &self.options, lsn, &raw)?;
            wal.dirty = true;
        }
        if replayed > 0 {
            tracing::info!(file = %self.path.display(), records = replayed, "replayed the write-ahead log");
            // Durable, and a new log cycle.
            Self::checkpoint_locked(db, wal)
        } else {
            // Every record is in the durable file: a new cycle (a new salt), so that this
            // run's records never continue the last run's.
            wal.log.file()?.restart()
        }
    }

    /// Makes the barrel file durable and starts a new log cycle, if the file is behind the
    /// log; then gives back log space beyond a few MiB (the writer calls it when idle).
    pub fn checkpoint(&self) -> Result<(), BarrelError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or(BarrelError::Closed)?;
        let mut guard = self.lock_wal();
        let wal = guard.as_mut().ok_or(BarrelError::Closed)?;
        Self::checkpoint_locked(db, wal)?;
        // The cycle is empty now (a checkpoint runs without an open transaction, so every
        // record so far is in the file that `checkpoint_locked` made durable).
        wal.log.file().and_then(|mut f| f.shrink())
    }

    /// Whether the barrel file has commits that are not durable yet (the writer checkpoints
    /// it when idle).
    pub fn needs_checkpoint(&self) -> bool {
        let guard = self.lock_wal();
        guard.as_ref().is_some_and(|w| !w.poisoned && w.dirty)
    }

    fn checkpoint_locked(db: &Database, wal: &mut Wal) -> Result<(), BarrelError> {
        if wal.poisoned || wal.log.progress.get().1.is_some() {
            wal.poisoned = true;
            return Err(poisoned());
        }
        if wal.dirty {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            wal.dirty = false;
            // Every record so far is in the durable file now: the next one starts a new
            // cycle at the start of the log, under a new salt made durable first.
            if !wal.log.idle() {
                return Err(BarrelError::Storage(
                    "a checkpoint with log records in flight".into(),
                ));
            }
            wal.log.file()?.restart()?;
        }
        wal.last_checkpoint = Instant::now();
        wal.bytes_since_checkpoint = 0;
        Ok(())
    }

    /// The file of this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file after the transaction in flight; later calls get `Closed`.
    pub fn close(&self) {
        if let Err(e) = self.checkpoint() {
            if !matches!(e, BarrelError::Closed) {
                tracing::warn!(file = %self.path.display(), error = %e,
                    "checkpoint at close failed; the write-ahead log is replayed at the next open");
            }
        }
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        *db = None;
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn read(&self) -> Result<ReadTransaction, BarrelError> {
        {
            let mut v = self.visibility.lock().unwrap_or_else(|e| e.into_inner());
            let target = v.acked;
            if v.visible < target && !v.wanted {
                // The writer holds them in its open transaction: ask it to commit.
                v.wanted = true;
                self.commit_notify.notify_one();
            }
            while v.visible < target && !v.failed {
                v = self.visible_cv.wait(v).unwrap_or_else(|e| e.into_inner());
            }
            if v.failed {
                return Err(poisoned());
            }
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        Ok(db.as_ref().ok_or(BarrelError::Closed)?.begin_read()?)
    }

    fn migrate(db: &Database, path: &Path) -> Result<(), BarrelError> {
        let txn = db.begin_write()?;
        let found = {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(SCHEMA_VERSION_KEY)?.map(|g| g.value());
            if found.is_none() {
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
            }
            found
        };
        // Creating every table up front lets readers open them without checking.
        txn.open_table(DOCS)?;
        txn.open_table(BODIES)?;
        txn.open_table(FEED)?;
        runs::create_tables(&txn)?;
        txn.open_table(ATTACHMENTS)?;
        txn.open_table(LOCAL)?;
        match found {
            None => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(BarrelError::FutureSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(v) => {
                for from in v..SCHEMA_VERSION {
                    tracing::info!(file = %path.display(), from, to = from + 1, "migrating barrel");
                    MIGRATIONS[from as usize - 1](&txn)?;
                }
                txn.open_table(META)?
                    .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Applies a batch of writes in one group commit; see [`Store::apply_then`]. Returns the
    /// results and the changes to publish.
    pub fn apply(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<(Vec<Result<WriteResult, BarrelError>>, Changes), BarrelError> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let slot = out.clone();
        let changes = self.apply_then(
            Prepared::new(ops)?,
            Box::new(move |r| {
                if let Ok(r) = r {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = r;
                }
            }),
        )?;
        let out = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
        Ok((out, changes))
    }

    /// Applies a batch of writes in one group commit and commits the barrel file at once:
    /// [`Store::apply_group`] then [`Store::commit_open`]. Returns the changes to publish
    /// (visible by then); `ack` has been called by then. Not while a
    /// [`Barrel`](crate::barrel::Barrel) writes to this store (its writer holds an open
    /// transaction).
    pub fn apply_then(&self, prepared: Prepared, ack: Ack) -> Result<Changes, BarrelError> {
        let mut open = None;
        self.apply_group(&mut open, prepared, ack)?;
        match open {
            Some(open) => self.commit_open(open),
            None => Ok(Vec::new()),
        }
    }

    /// Applies a group of writes inside the barrel file's open transaction (begun if `open`
    /// is `None`): each write's result is in its slot; a failed write leaves no trace, the
    /// others apply. The group's log record goes to the log thread, which makes it durable
    /// (with those of other groups) while the writer goes on; `ack` gets the results once it
    /// is durable (the acknowledgement point; see [`Store::acknowledge`]). A group of one
    /// write with nothing else in flight is logged here, and acknowledged before this returns.
    /// The writes become visible when the transaction commits ([`Store::commit_open`]); a
    /// read that starts after the acknowledgement waits for that commit and asks for it
    /// ([`Store::commit_wanted`]). On an error `ack` gets it; the open transaction is then
    /// aborted, and should it hold acknowledged writes the store refuses reads and writes
    /// until it is reopened (which applies them from the log).
    ///
    /// Only one thread (the barrel's writer) may hold an open transaction; it takes the log
    /// lock while holding it, so no other thread may start a write on this store meanwhile.
    pub fn apply_group(
        &self,
        open: &mut Option<OpenTxn>,
        prepared: Prepared,
        ack: Ack,
    ) -> Result<(), BarrelError> {
        let Prepared {
            ops,
            encoded,
            hints,
        } = prepared;
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = db.as_ref() else {
            ack(Err(BarrelError::Closed));
            return Err(BarrelError::Closed);
        };
        let mut guard = self.lock_wal();
        let Some(wal) = guard.as_mut().filter(|w| !w.poisoned) else {
            let e = if guard.is_some() {
                poisoned()
            } else {
                BarrelError::Closed
            };
            ack(Err(e.clone()));
            return Err(e);
        };
        let lsn = wal.next_lsn;
        let n = ops.len();
        // The log gets the writes as requested, first thing, and syncs them while they are
        // applied here; replay reproduces the same results, failures included.
        let record = Arc::new(encode_record(encoded.iter().map(Vec::as_slice)));
        wal.bytes_since_checkpoint += record.len() as u64;
        // A lone write with nothing in flight is logged on this thread after it is applied
        // (cheaper than two thread hand-offs); otherwise the log thread takes it now.
        let inline = n <= INLINE_LOG_OPS && wal.log.idle();
        if !inline {
            if let Err(e) = wal.log.submit(lsn, record.clone()) {
                // The log thread is gone: no record can be made durable any more.
                wal.poisoned = true;
                ack(Err(e.clone()));
                drop(guard);
                self.abort_open(open, &e);
                return Err(e);
            }
        }
        wal.next_lsn = lsn + 1;
        // From here the record may be durable: should this group fail, later groups would be
        // applied (and acknowledged) on a state without it while the next open replays it
        // before them. So a failure here poisons the store (no more writes, checkpoints or
        // new log cycles) until it is reopened and the log replayed; a panic does the same
        // through the poisoned mutex (see `lock_wal`).
        let applied = (|| -> Result<_, BarrelError> {
            let o = match open {
                Some(o) => o,
                None => open.insert(OpenTxn::begin(db)?),
            };
            let mut w = Writer::open(&o.txn, &self.options, std::mem::take(&mut o.index))?;
            let results: Vec<_> = ops
                .into_iter()
                .zip(hints)
                .map(|(op, hint)| {
                    w.hint = hint;
                    w.apply(op)
                })
                .collect();
            w.applied_lsn = Some(lsn);
            let finished = w.finish();
            o.index = std::mem::take(&mut w.index);
            o.changes.append(&mut w.changes);
            drop(w);
            if inline {
                wal.log.append_inline(lsn, &record)?;
            }
            finished?;
            o.ops += n;
            o.bytes += record.len();
            o.records.push((lsn, record));
            Ok(results)
        })();
        match applied {
            Ok(results) => {
                if let Some(o) = open.as_mut() {
                    o.acks.push_back((lsn, results, ack));
                }
                drop(guard);
                self.acknowledge(open)
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e,
                    "a group commit failed after its log record was written; reopen the barrel");
                wal.poisoned = true;
                drop(guard);
                ack(Err(e.clone()));
                self.abort_open(open, &e);
                Err(e)
            }
        }
    }

    /// Answers the groups of the open transaction whose log records are durable. On a
    /// failed log every group of the transaction fails (see [`Store::abort_open`]).
    pub fn acknowledge(&self, open: &mut Option<OpenTxn>) -> Result<(), BarrelError> {
        let Some(o) = open.as_mut() else {
            return Ok(());
        };
        let (durable, failed) = self
            .lock_wal()
            .as_ref()
            .map_or((0, Some(BarrelError::Closed)), |w| w.log.progress.get());
        if let Some(e) = failed {
            tracing::error!(file = %self.path.display(), error = %e,
                "writing the write-ahead log failed; reopen the barrel");
            if let Some(w) = self.lock_wal().as_mut() {
                w.poisoned = true;
            }
            self.abort_open(open, &e);
            return Err(e);
        }
        let mut done = Vec::new();
        while o.acks.front().is_some_and(|a| a.0 <= durable) {
            done.extend(o.acks.pop_front());
        }
        if let Some(last) = done.last().map(|a| a.0) {
            // Before the answers: a writer that reads right after its answer finds its
            // writes (it waits for this transaction's commit).
            let mut v = self.visibility.lock().unwrap_or_else(|e| e.into_inner());
            v.acked = v.acked.max(last);
        }
        for (_, results, ack) in done {
            ack(Ok(results));
        }
        Ok(())
    }

    /// Completes when log records became durable (or the log failed) since the last call.
    pub async fn log_progressed(&self) {
        let progress = self.lock_wal().as_ref().map(|w| w.log.progress.clone());
        match progress {
            Some(p) => p.notify.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Drops an open transaction after a failure: its unanswered groups get `error`; should
    /// it hold acknowledged writes, reads fail until the store is reopened (they are in the
    /// log).
    pub fn abort_open(&self, open: &mut Option<OpenTxn>, error: &BarrelError) {
        let Some(o) = open.take() else { return };
        let acked = o.records.len() > o.acks.len();
        // Their records may be durable already: the next open then applies them.
        let unknown = BarrelError::Storage(format!(
            "{error}; the write may still be applied when the barrel is reopened"
        ));
        for (_, _, ack) in o.acks {
            ack(Err(unknown.clone()));
        }
        if acked {
            self.fail_reads();
        }
    }

    /// After a panic in [`Store::apply_group`] or [`Store::commit_open`]: acknowledged writes
    /// may be missing from the barrel file, so writes and reads fail until it is reopened
    /// (which applies them from the log).
    pub fn poison(&self) {
        if let Some(w) = self.lock_wal().as_mut() {
            w.poisoned = true;
        }
        self.fail_reads();
    }

    fn fail_reads(&self) {
        let mut v = self.visibility.lock().unwrap_or_else(|e| e.into_inner());
        v.failed = true;
        self.visible_cv.notify_all();
    }

    /// Commits the open transaction once its log records are durable (answering its
    /// groups): its groups become visible. Returns the changes to publish. Should the commit
    /// fail, the groups are applied again from their log records; should that fail too,
    /// reads and writes fail until the store is reopened.
    pub fn commit_open(&self, open: OpenTxn) -> Result<Changes, BarrelError> {
        let Some(last) = open.records.last().map(|r| r.0) else {
            // Nothing was applied: nothing to commit.
            return Ok(Vec::new());
        };
        let progress = self.lock_wal().as_ref().map(|w| w.log.progress.clone());
        let durable = progress.map_or(Err(BarrelError::Closed), |p| p.wait(last));
        let mut open = Some(open);
        if let Err(e) = durable.and_then(|()| self.acknowledge(&mut open)) {
            // Records were handed to the log: no later record, checkpoint or new log cycle
            // until the barrel is reopened.
            if let Some(w) = self.lock_wal().as_mut() {
                w.poisoned = true;
            }
            self.abort_open(&mut open, &e);
            return Err(e);
        }
        let Some(OpenTxn {
            txn,
            index,
            records,
            changes,
            ..
        }) = open
        else {
            return Ok(Vec::new());
        };
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = db.as_ref() else {
            self.poison();
            return Err(BarrelError::Closed);
        };
        // Readers wait for `visible` to reach `acked`: it does when this scope ends (an
        // unwinding panic fails the reads instead).
        let _visible = VisibleOnDrop(self, last);
        // Committed before the log lock is taken (lock order: log, then the file's writer).
        let committed = index
            .finish(&txn)
            .and_then(|()| txn.commit().map_err(BarrelError::from));
        let mut guard = self.lock_wal();
        let wal = guard.as_mut().ok_or(BarrelError::Closed)?;
        wal.dirty = true;
        if let Err(e) = committed {
            // Acknowledged, so apply the logged writes again in fresh transactions; should
            // that fail too, the next open applies them from the log.
            tracing::error!(file = %self.path.display(), error = %e,
                "commit after the write-ahead log failed; applying the log records again");
            for (lsn, record) in &records {
                if let Err(e) = reapply_record(db, &self.options, *lsn, record) {
                    tracing::error!(file = %self.path.display(), error = %e,
                        "applying the log record again failed; reopen the barrel to apply the log");
                    // Later commits would move `applied_lsn` past this record and a new log
                    // cycle would drop it: stop here, so that the next open applies it.
                    wal.poisoned = true;
                    self.fail_reads();
                    // Nothing to publish: the writes are not readable before that open.
                    return Ok(Vec::new());
                }
            }
        }
        drop(_visible);
        if wal.bytes_since_checkpoint >= CHECKPOINT_BYTES
            || wal.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            // The groups are acknowledged and visible whatever happens here; a failed
            // checkpoint is tried again later (the file stays `dirty`).
            if let Err(e) = Self::checkpoint_locked(db, wal) {
                tracing::warn!(file = %self.path.display(), error = %e, "checkpoint failed");
            }
        }
        Ok(changes)
    }

    /// Whether a reader waits for acknowledged writes of the open transaction.
    pub fn commit_wanted(&self) -> bool {
        self.visibility
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wanted
    }

    /// Completes when a reader asks for the open transaction to commit (or at once, if one
    /// asked since the last call).
    pub async fn commit_requested(&self) {
        self.commit_notify.notified().await;
    }

    /// The winner (or the revision in `opts.rev`) of a document; `NotFound` for a missing
    /// document, a deleted winner, or an unknown revision.
    pub fn get(&self, id: &str, opts: &GetOptions) -> Result<DocRevision, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        let info = load_info(&docs, id)?.ok_or_else(|| BarrelError::not_found("missing"))?;
        let winner = info
            .tree
            .winner()
            .ok_or_else(|| BarrelError::corrupt("empty tree"))?;
        let rev = match opts.rev {
            Some(rev) => rev,
            None if winner.deleted => return Err(BarrelError::not_found("deleted")),
            None => winner.rev,
        };
        let mut doc = read_revision(&bodies, id, &rev)?
            .ok_or_else(|| BarrelError::not_found("missing revision"))?;
        if opts.revs {
            doc.history = Some(info.tree.history(&rev));
        }
        if opts.conflicts {
            doc.conflicts = Some(
                info.tree
                    .conflicts()
                    .into_iter()
                    .filter(|r| *r != rev)
                    .collect(),
            );
        }
        Ok(doc)
    }

    /// The leaves asked for, each with its history, or reported missing.
    pub fn open_revs(&self, id: &str, which: &OpenRevs) -> Result<Vec<OpenRev>, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        open_revs_in(&docs, &bodies, id, which)
    }

    /// [`Store::open_revs`] of several documents, on one read transaction (CouchDB's
    /// `_bulk_get`); one result per request, in order.
    pub fn open_revs_many(
        &self,
        asked: &[(&str, &OpenRevs)],
    ) -> Result<Vec<Result<Vec<OpenRev>, BarrelError>>, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        Ok(asked
            .iter()
            .map(|(id, which)| open_revs_in(&docs, &bodies, id, which))
            .collect())
    }

    /// Live documents by id, in id order (or reversed), from `start` to `end` (inclusive
    /// unless `inclusive_end` is false), after skipping `skip`, at most `limit`.
    pub fn all_docs(
        &self,
        start: Option<&str>,
        end: Option<&str>,
        inclusive_end: bool,
        descending: bool,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<AllDocsRow>, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        let (lo, hi) = if descending {
            (end, start)
        } else {
            (start, end)
        };
        let lo_bound = match lo {
            Some(k) if descending && !inclusive_end => Bound::Excluded(k),
            Some(k) => Bound::Included(k),
            None => Bound::Unbounded,
        };
        let hi_bound = match hi {
            Some(k) if !descending && !inclusive_end => Bound::Excluded(k),
            Some(k) => Bound::Included(k),
            None => Bound::Unbounded,
        };
        if let (Some(l), Some(h)) = (lo, hi) {
            if l > h {
                return Ok(Vec::new());
            }
        }
        let range = docs.range::<&str>((lo_bound, hi_bound))?;
        let iter: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        let mut skipped = 0;
        for entry in iter {
            if out.len() >= limit {
                break;
            }
            let (id, raw) = entry?;
            let info = decode_info(raw.value())?;
            let Some(w) = info.tree.winner().filter(|w| !w.deleted) else {
                continue;
            };
            if skipped < skip {
                skipped += 1;
                continue;
            }
            out.push(AllDocsRow {
                id: id.value().to_owned(),
                rev: w.rev,
            });
        }
        Ok(out)
    }

    /// The revision tree of a document, if it exists.
    pub fn rev_tree(&self, id: &str) -> Result<Option<RevTree>, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        Ok(load_info(&docs, id)?.map(|i| i.tree))
    }

    /// Changes after `since`, oldest first, at most `limit` rows; each document once, at its
    /// latest seq.
    pub fn changes(&self, since: u64, limit: usize) -> Result<Vec<ChangeRow>, BarrelError> {
        let txn = self.read()?;
        let changes = txn.open_table(FEED)?;
        let docs = txn.open_table(DOCS)?;
        let mut out = Vec::new();
        for entry in changes.range((Bound::Excluded(since), Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (seq, raw) = entry?;
            let FeedEntry { id, earlier, .. } = decode_feed(raw.value())?;
            let seq = seq.value();
            let info = load_info(&docs, &id)?
                .ok_or_else(|| BarrelError::corrupt("change of a missing document"))?;
            let leaves = info.tree.leaves();
            let winner = leaves
                .first()
                .ok_or_else(|| BarrelError::corrupt("empty tree"))?;
            out.push(ChangeRow {
                seq,
                rev: winner.rev,
                deleted: winner.deleted,
                leaves: leaves.iter().map(|l| l.rev).collect(),
                id,
                earlier_topics: earlier,
            });
        }
        Ok(out)
    }

    /// For each document, the revisions the store lacks (replication's `_revs_diff`).
    pub fn revs_diff(
        &self,
        asked: &BTreeMap<String, Vec<Rev>>,
    ) -> Result<BTreeMap<String, RevsDiff>, BarrelError> {
        self.revs_diff_in(&self.read()?, asked)
    }

    /// [`Store::revs_diff`] on what is committed, without waiting for writes acknowledged
    /// but not committed yet (nor asking for their commit): a revision written just before
    /// may be reported missing. For a replicator writing to this store while it reads the
    /// next batch: such a revision is then written again, which changes nothing.
    pub fn revs_diff_committed(
        &self,
        asked: &BTreeMap<String, Vec<Rev>>,
    ) -> Result<BTreeMap<String, RevsDiff>, BarrelError> {
        let txn = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            db.as_ref().ok_or(BarrelError::Closed)?.begin_read()?
        };
        self.revs_diff_in(&txn, asked)
    }

    fn revs_diff_in(
        &self,
        txn: &ReadTransaction,
        asked: &BTreeMap<String, Vec<Rev>>,
    ) -> Result<BTreeMap<String, RevsDiff>, BarrelError> {
        let docs = txn.open_table(DOCS)?;
        let mut out = BTreeMap::new();
        for (id, revs) in asked {
            let info = load_info(&docs, id)?;
            let missing: Vec<Rev> = revs
                .iter()
                .filter(|r| !info.as_ref().is_some_and(|i| i.tree.contains(r)))
                .copied()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let max_pos = missing.iter().map(|r| r.pos).max().unwrap_or(0);
            let possible_ancestors = info
                .map(|i| {
                    i.tree
                        .leaves()
                        .into_iter()
                        .filter(|l| l.rev.pos < max_pos)
                        .map(|l| l.rev)
                        .collect()
                })
                .unwrap_or_default();
            out.insert(
                id.clone(),
                RevsDiff {
                    missing,
                    possible_ancestors,
                },
            );
        }
        Ok(out)
    }

    /// Document counts, update seq and file size.
    pub fn counts(&self) -> Result<BarrelCounts, BarrelError> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        let get = |k| -> Result<u64, BarrelError> { Ok(meta.get(k)?.map_or(0, |g| g.value())) };
        Ok(BarrelCounts {
            doc_count: get(DOC_COUNT_KEY)?,
            deleted_count: get(DELETED_COUNT_KEY)?,
            update_seq: get(UPDATE_SEQ_KEY)?,
            size_bytes: [self.path.clone(), Self::wal_path(&self.path)]
                .iter()
                .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum(),
        })
    }

    /// A local document and its `0-N` revision.
    pub fn get_local(&self, id: &str) -> Result<(Map<String, Value>, u64), BarrelError> {
        let txn = self.read()?;
        let local = txn.open_table(LOCAL)?;
        let raw = local
            .get(id)?
            .ok_or_else(|| BarrelError::not_found("missing"))?;
        decode_local(raw.value())
    }

    /// An attachment of the winner (or of `rev`): its metadata and content.
    pub fn get_attachment(
        &self,
        id: &str,
        name: &str,
        rev: Option<Rev>,
    ) -> Result<(AttachmentMeta, Vec<u8>), BarrelError> {
        let doc = self.get(
            id,
            &GetOptions {
                rev,
                ..GetOptions::default()
            },
        )?;
        let meta = doc
            .attachments
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| BarrelError::not_found("missing attachment"))?;
        let txn = self.read()?;
        let atts = txn.open_table(ATTACHMENTS)?;
        let data = atts
            .get(&meta.sha256[..])?
            .ok_or_else(|| BarrelError::corrupt("attachment content missing"))?
            .value()
            .to_vec();
        Ok((meta, data))
    }

    /// Answers a path query from the path index.
    pub fn query(&self, query: &Query) -> Result<QueryPage, BarrelError> {
        let txn = self.read()?;
        let docs = txn.open_table(DOCS)?;
        let bodies = txn.open_table(BODIES)?;
        let paths = index_view(&txn)?;
        let plan = plan(query, &paths)?;
        let cursor = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let mut out = Vec::new();
        let mut cursors: Vec<String> = Vec::new();
        let mut next = None;
        let limit = query.limit.max(1);
        let reader = |id: &str| -> Result<Option<DocRevision>, BarrelError> {
            let Some(info) = load_info(&docs, id)? else {
                return Ok(None);
            };
            let Some(w) = info.tree.winner().filter(|w| !w.deleted) else {
                return Ok(None);
            };
            read_revision(&bodies, id, &w.rev)
        };
        match &plan.driver {
            Driver::Ids => {
                let start = match &cursor {
                    Some(Cursor::Key(k)) => Bound::Excluded(
                        std::str::from_utf8(k).map_err(|_| bad_cursor())?.to_owned(),
                    ),
                    Some(_) => return Err(bad_cursor()),
                    None => Bound::Unbounded,
                };
                let range = docs.range::<&str>((as_ref_bound(&start), Bound::Unbounded))?;
                for entry in range {
                    let (id, _) = entry?;
                    let id = id.value().to_owned();
                    if let Some(doc) = reader(&id)? {
                        if matches_all(&query.conditions, &doc.body) {
                            if out.len() == limit {
                                next = cursors.last().cloned();
                                break;
                            }
                            cursors.push(Cursor::Key(doc.id.as_bytes().to_vec()).encode());
                            out.push(doc);
                        }
                    }
                }
            }
            Driver::Scan { ranges, desc } => {
                let after = match &cursor {
                    Some(Cursor::Key(k)) => Some(k.clone()),
                    Some(_) => return Err(bad_cursor()),
                    None => None,
                };
                let ordered: Vec<&KeyRange> = if *desc {
                    ranges.iter().rev().collect()
                } else {
                    ranges.iter().collect()
                };
                'ranges: for r in ordered {
                    let (lo, hi) = r.bounds_after(after.as_deref(), *desc);
                    if lo_hi_empty(&lo, &hi) {
                        continue;
                    }
                    for entry in paths.range(as_slice_bound(&lo), as_slice_bound(&hi), *desc)? {
                        let key = entry?;
                        let key = key.as_slice();
                        let (_, _, id) = path::decode_index_key(key)
                            .map_err(|_| BarrelError::corrupt("bad index key"))?;
                        let Some(doc) = reader(&id)? else { continue };
                        if !matches_all(&query.conditions, &doc.body) {
                            continue;
                        }
                        // A document with several keys in the ranges (several values, or
                        // several leaves under a path) is listed once: at its first key in
                        // scan order, so pages never repeat it.
                        if first_key(&doc, ranges, *desc).as_deref() != Some(key) {
                            continue;
                        }
                        if out.len() == limit {
                            next = cursors.last().cloned();
                            break 'ranges;
                        }
                        cursors.push(Cursor::Key(key.to_vec()).encode());
                        out.push(doc);
                    }
                }
            }
            Driver::Collect {
                ranges,
                order_path,
                desc,
            } => {
                let mut ids = BTreeSet::new();
                for r in ranges {
                    for entry in paths.range(as_slice_bound(&r.lo), as_slice_bound(&r.hi), false)? {
                        let key = entry?;
                        let (_, _, id) = path::decode_index_key(&key)
                            .map_err(|_| BarrelError::corrupt("bad index key"))?;
                        ids.insert(id);
                    }
                }
                let order_op = conditions_on(&query.conditions, order_path);
                let mut rows = Vec::new();
                for id in ids {
                    let Some(doc) = reader(&id)? else { continue };
                    if !matches_all(&query.conditions, &doc.body) {
                        continue;
                    }
                    let Some(v) = sort_value(&doc.body, order_path, order_op.as_ref(), *desc)
                    else {
                        continue;
                    };
                    let mut key = Vec::new();
                    path::encode_scalar(&v, &mut key);
                    rows.push((key, doc));
                }
                rows.sort_by(|a, b| {
                    let o = a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id));
                    if *desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
                let after = match &cursor {
                    Some(Cursor::Sorted(k, id)) => Some((k.clone(), id.clone())),
                    Some(_) => return Err(bad_cursor()),
                    None => None,
                };
                for (key, doc) in rows {
                    if let Some((ak, aid)) = &after {
                        let o = key
                            .as_slice()
                            .cmp(ak)
                            .then_with(|| doc.id.as_str().cmp(aid));
                        let beyond = if *desc { o.is_lt() } else { o.is_gt() };
                        if !beyond {
                            continue;
                        }
                    }
                    if out.len() == limit {
                        next = cursors.last().cloned();
                        break;
                    }
                    cursors.push(Cursor::Sorted(key, doc.id.clone()).encode());
                    out.push(doc);
                }
            }
        }
        Ok(QueryPage {
            docs: out,
            cursors,
            next,
        })
    }

    /// How many live documents match `query` (its cursor and limit are ignored); reads every
    /// match, a page at a time.
    pub fn count(&self, query: &Query) -> Result<usize, BarrelError> {
        let mut q = Query {
            cursor: None,
            limit: 1000,
            ..query.clone()
        };
        let mut n = 0;
        loop {
            let page = self.query(&q)?;
            n += page.docs.len();
            match page.next {
                Some(next) => q.cursor = Some(next),
                None => return Ok(n),
            }
        }
    }

    /// How [`Store::query`] would answer `query`.
    pub fn explain(&self, query: &Query) -> Result<Plan, BarrelError> {
        let txn = self.read()?;
        Ok(plan(query, &index_view(&txn)?)?.explain(query))
    }
}

/// The path index of a read transaction.
type IndexView = RunView<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>;

/// The path index as a read transaction sees it.
fn index_view(txn: &ReadTransaction) -> Result<IndexView, BarrelError> {
    RunView::open(
        txn.open_table(runs::RUN_BLOCKS)?,
        txn.open_table(runs::RUN_META)?,
    )
}

fn bad_cursor() -> BarrelError {
    BarrelError::BadRequest("invalid cursor: pass the `next` value of the same query".into())
}

fn as_ref_bound(b: &Bound<String>) -> Bound<&str> {
    match b {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(s) => Bound::Included(s.as_slice()),
        Bound::Excluded(s) => Bound::Excluded(s.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn lo_hi_empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Migrations: MIGRATIONS[n - 1] takes a file from schema n to n + 1.

type Migration = fn(&WriteTransaction) -> Result<(), BarrelError>;

const MIGRATIONS: &[Migration] = &[
    rebuild_path_index,
    rebuild_path_index,
    feed_with_earlier_topics,
    wal_and_index_runs,
];

/// Schema 5 adds the write-ahead log beside the file, and moves the path index from the
/// `paths` table into one run.
fn wal_and_index_runs(txn: &WriteTransaction) -> Result<(), BarrelError> {
    {
        let paths = txn.open_table(PATHS)?;
        let keys = paths
            .iter()?
            .map(|e| Ok(e.map_err(BarrelError::from)?.0.value().to_vec()));
        runs::rebuild(txn, keys)?;
    }
    txn.delete_table(PATHS)?;
    Ok(())
}

/// Schema 3 kept seq → id; schema 4 keeps the earlier topics with each entry (none known for
/// the entries written before).
fn feed_with_earlier_topics(txn: &WriteTransaction) -> Result<(), BarrelError> {
    {
        let old = txn.open_table(CHANGES_V3)?;
        let mut feed = txn.open_table(FEED)?;
        for entry in old.iter()? {
            let (seq, id) = entry?;
            let e = FeedEntry {
                v: FORMAT,
                id: id.value().to_owned(),
                earlier: Some(Vec::new()),
            };
            feed.insert(seq.value(), encode_feed(&e).as_slice())?;
        }
    }
    txn.delete_table(CHANGES_V3)?;
    Ok(())
}

/// Applies one log record to the barrel file (without fsync).
fn reapply_record(
    db: &Database,
    options: &StoreOptions,
    lsn: u64,
    record: &[u8],
) -> Result<(), BarrelError> {
    let ops = decode_record(record)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    {
        let mut w = Writer::open(&txn, options, RunWriter::new())?;
        for op in ops {
            let _ = w.apply(op);
        }
        w.applied_lsn = Some(lsn);
        w.finish()?;
        let index = std::mem::take(&mut w.index);
        drop(w);
        index.finish(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// The last log record whose writes the barrel file holds.
fn applied_lsn(db: &Database) -> Result<u64, BarrelError> {
    let txn = db.begin_read()?;
    Ok(match txn.open_table(META) {
        Ok(meta) => meta.get(APPLIED_LSN_KEY)?.map_or(0, |g| g.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    })
}

/// Every record of a log in the earlier (redb) format.
fn legacy_records(log: &Database) -> Result<Vec<(u64, Vec<u8>)>, BarrelError> {
    let txn = log.begin_read()?;
    let table = match txn.open_table(LEGACY_LOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (lsn, raw) = entry?;
        out.push((lsn.value(), raw.value().to_vec()));
    }
    Ok(out)
}

fn encode_feed(e: &FeedEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + e.id.len());
    ciborium::into_writer(e, &mut out).expect("cbor into a vec");
    out
}

fn decode_feed(raw: &[u8]) -> Result<FeedEntry, BarrelError> {
    ciborium::from_reader(raw).map_err(|e| BarrelError::corrupt(format!("feed entry: {e}")))
}

fn poisoned() -> BarrelError {
    BarrelError::Storage(
        "the barrel file could not take acknowledged writes; reopen the barrel to apply its log"
            .into(),
    )
}

/// Format byte of a write-ahead log record.
const RECORD_FORMAT: u8 = 1;

fn encode_op(op: &WriteOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    ciborium::into_writer(op, &mut out).expect("cbor into a vec");
    out
}

/// A log record: format byte, 8 reserved bytes (zero), then each write as a u32 BE length and its CBOR.
fn encode_record<'a>(ops: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let len = 9 + ops.clone().map(|op| 4 + op.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&[0; 8]);
    for op in ops {
        out.extend_from_slice(&(op.len() as u32).to_be_bytes());
        out.extend_from_slice(op);
    }
    out
}

fn decode_record(raw: &[u8]) -> Result<Vec<WriteOp>, BarrelError> {
    let bad = |what: &str| BarrelError::corrupt(format!("write-ahead log record: {what}"));
    let [RECORD_FORMAT, rest @ ..] = raw else {
        return Err(bad("unknown format"));
    };
    // The 8 reserved bytes.
    let (_, mut rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
    let mut ops = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (op, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
        ops.push(ciborium::from_reader(op).map_err(|e| bad(&e.to_string()))?);
        rest = tail;
    }
    Ok(ops)
}

/// Schema 1 had no path index, schema 2 one without empty containers: (re)build it from the
/// winner of every live document.
fn rebuild_path_index(txn: &WriteTransaction) -> Result<(), BarrelError> {
    txn.delete_table(PATHS)?;
    let docs = txn.open_table(DOCS)?;
    let bodies = txn.open_table(BODIES)?;
    let mut paths = txn.open_table(PATHS)?;
    for entry in docs.iter()? {
        let (id, raw) = entry?;
        let info = decode_info(raw.value())?;
        if let Some(w) = info.tree.winner().filter(|w| !w.deleted) {
            if let Some(doc) = read_revision(&bodies, id.value(), &w.rev)? {
                for (p, v) in path::index_entries(&doc.body) {
                    paths.insert(path::index_key(&p, v, id.value()).as_slice(), ())?;
                }
            }
        }
    }
    Ok(())
}

/// Marks a store as written by a future schema. Only for tests of the refusal.
#[doc(hidden)]
pub fn set_schema_version(path: &Path, version: u64) -> Result<(), BarrelError> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(SCHEMA_VERSION_KEY, version)?;
    txn.commit()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding of stored values.

fn decode_info(raw: &[u8]) -> Result<DocInfo, BarrelError> {
    let info: DocInfo =
        ciborium::from_reader(raw).map_err(|e| BarrelError::corrupt(format!("doc info: {e}")))?;
    if info.v != FORMAT {
        return Err(BarrelError::corrupt(format!("doc info format {}", info.v)));
    }
    Ok(info)
}

fn encode_info(info: &DocInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + info.tree.len() * 40);
    // Writing CBOR into a Vec cannot fail.
    ciborium::into_writer(info, &mut out).expect("cbor into a vec");
    out
}

fn load_info<T: ReadableTable<&'static str, &'static [u8]>>(
    docs: &T,
    id: &str,
) -> Result<Option<DocInfo>, BarrelError> {
    docs.get(id)?.map(|g| decode_info(g.value())).transpose()
}

fn body_key(id: &str, rev: &Rev) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 24);
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(&rev.pos.to_be_bytes());
    k.extend_from_slice(&rev.hash);
    k
}

/// Stored revision: `FORMAT`, flags (bit 0 = deleted), u32 BE length of the attachments'
/// CBOR, that CBOR (omitted when 0), then the canonical CBOR body.
fn encode_revision(deleted: bool, atts: &[AttachmentMeta], body_cbor: &[u8]) -> Vec<u8> {
    let mut atts_cbor = Vec::new();
    if !atts.is_empty() {
        ciborium::into_writer(&atts, &mut atts_cbor).expect("cbor into a vec");
    }
    let mut out = Vec::with_capacity(6 + atts_cbor.len() + body_cbor.len());
    out.push(FORMAT);
    out.push(u8::from(deleted));
    out.extend_from_slice(&(atts_cbor.len() as u32).to_be_bytes());
    out.extend_from_slice(&atts_cbor);
    out.extend_from_slice(body_cbor);
    out
}

fn decode_revision(id: &str, rev: Rev, raw: &[u8]) -> Result<DocRevision, BarrelError> {
    let corrupt = || BarrelError::corrupt("stored revision");
    if raw.len() < 6 || raw[0] != FORMAT {
        return Err(corrupt());
    }
    let deleted = raw[1] & 1 == 1;
    let n = u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]) as usize;
    let rest = &raw[6..];
    if rest.len() < n {
        return Err(corrupt());
    }
    let attachments = if n == 0 {
        Vec::new()
    } else {
        ciborium::from_reader(&rest[..n]).map_err(|_| corrupt())?
    };
    let body = match cbor::decode_value(&rest[n..], DECODE_DEPTH)
        .map_err(|e| BarrelError::corrupt(format!("stored body: {e}")))?
    {
        Value::Object(m) => m,
        _ => return Err(corrupt()),
    };
    Ok(DocRevision {
        id: id.to_owned(),
        rev,
        deleted,
        body,
        attachments,
        history: None,
        conflicts: None,
    })
}

fn read_revision<T: ReadableTable<&'static [u8], &'static [u8]>>(
    bodies: &T,
    id: &str,
    rev: &Rev,
) -> Result<Option<DocRevision>, BarrelError> {
    bodies
        .get(body_key(id, rev).as_slice())?
        .map(|g| decode_revision(id, *rev, g.value()))
        .transpose()
}

fn decode_local(raw: &[u8]) -> Result<(Map<String, Value>, u64), BarrelError> {
    let corrupt = || BarrelError::corrupt("stored local document");
    if raw.len() < 9 || raw[0] != FORMAT {
        return Err(corrupt());
    }
    let n = u64::from_be_bytes(raw[1..9].try_into().map_err(|_| corrupt())?);
    match cbor::decode_value(&raw[9..], DECODE_DEPTH).map_err(|_| corrupt())? {
        Value::Object(m) => Ok((m, n)),
        _ => Err(corrupt()),
    }
}

// ---------------------------------------------------------------------------------------------
// The write path.

/// The open tables of one write transaction and the batch's bookkeeping.
struct Writer<'t> {
    meta: Table<'t, &'static str, u64>,
    docs: Table<'t, &'static str, &'static [u8]>,
    bodies: Table<'t, &'static [u8], &'static [u8]>,
    changes_table: Table<'t, u64, &'static [u8]>,
    index: RunWriter,
    /// The caller's precomputed work for the op being applied.
    hint: Option<Hint>,
    attachments: Table<'t, &'static [u8], &'static [u8]>,
    local: Table<'t, &'static str, &'static [u8]>,
    revs_limit: usize,
    seq: u64,
    doc_count: u64,
    deleted_count: u64,
    /// The log record this transaction applies, if any.
    applied_lsn: Option<u64>,
    changes: Vec<DocumentChanged>,
}

/// An attachment of a new revision, resolved: its metadata and, for new content, the bytes.
struct NewAttachment {
    meta: AttachmentMeta,
    data: Option<Vec<u8>>,
}

impl<'t> Writer<'t> {
    fn open(
        txn: &'t WriteTransaction,
        options: &StoreOptions,
        index: RunWriter,
    ) -> Result<Self, BarrelError> {
        let meta = txn.open_table(META)?;
        let get = |k| -> Result<u64, BarrelError> { Ok(meta.get(k)?.map_or(0, |g| g.value())) };
        let (seq, doc_count, deleted_count) = (
            get(UPDATE_SEQ_KEY)?,
            get(DOC_COUNT_KEY)?,
            get(DELETED_COUNT_KEY)?,
        );
        Ok(Self {
            docs: txn.open_table(DOCS)?,
            bodies: txn.open_table(BODIES)?,
            changes_table: txn.open_table(FEED)?,
            index,
            hint: None,
            attachments: txn.open_table(ATTACHMENTS)?,
            local: txn.open_table(LOCAL)?,
            meta,
            revs_limit: options.revs_limit.max(1),
            seq,
            doc_count,
            deleted_count,
            applied_lsn: None,
            changes: Vec::new(),
        })
    }

    fn finish(&mut self) -> Result<(), BarrelError> {
        self.meta.insert(UPDATE_SEQ_KEY, self.seq)?;
        self.meta.insert(DOC_COUNT_KEY, self.doc_count)?;
        self.meta.insert(DELETED_COUNT_KEY, self.deleted_count)?;
        if let Some(lsn) = self.applied_lsn {
            self.meta.insert(APPLIED_LSN_KEY, lsn)?;
        }
        Ok(())
    }

    fn apply(&mut self, op: WriteOp) -> Result<WriteResult, BarrelError> {
        match op {
            WriteOp::Edit(doc) => self.edit(doc),
            WriteOp::Replicate(doc) => self.replicate(doc),
            WriteOp::PutAttachment {
                id,
                rev,
                name,
                content_type,
                data,
            } => {
                let current = self.current_attachments(&id, rev)?;
                let mut atts: Map<String, Value> =
                    current.iter().map(|a| (a.name.clone(), a.stub())).collect();
                atts.insert(
                    name,
                    serde_json::json!({"content_type": content_type, "data": STANDARD.encode(&data)}),
                );
                let body = match rev {
                    Some(rev) => self.body_of(&id, &rev)?,
                    None => Map::new(),
                };
                self.edit(IncomingDoc {
                    id: Some(id),
                    rev,
                    attachments: Some(atts),
                    body,
                    ..IncomingDoc::default()
                })
            }
            WriteOp::DeleteAttachment { id, rev, name } => {
                let current = self.current_attachments(&id, Some(rev))?;
                if !current.iter().any(|a| a.name == name) {
                    return Err(BarrelError::not_found("missing attachment"));
                }
                let atts = current
                    .iter()
                    .filter(|a| a.name != name)
                    .map(|a| (a.name.clone(), a.stub()))
                    .collect();
                let body = self.body_of(&id, &rev)?;
                self.edit(IncomingDoc {
                    id: Some(id),
                    rev: Some(rev),
                    attachments: Some(atts),
                    body,
                    ..IncomingDoc::default()
                })
            }
            WriteOp::PutLocal {
                id,
                rev,
                deleted,
                body,
            } => self.put_local(id, rev, deleted, body, false),
        }
    }

    /// The canonical CBOR of the op's body: from the hint, or encoded here.
    fn body_cbor(&mut self, body: &Map<String, Value>) -> Vec<u8> {
        match self.hint.as_mut() {
            Some(h) => std::mem::take(&mut h.body_cbor),
            None => {
                let mut out = Vec::with_capacity(256);
                cbor::encode_object(body, true, &mut out);
                out
            }
        }
    }

    fn current_attachments(
        &self,
        id: &str,
        rev: Option<Rev>,
    ) -> Result<Vec<AttachmentMeta>, BarrelError> {
        match rev {
            None => Ok(Vec::new()),
            Some(rev) => Ok(read_revision(&self.bodies, id, &rev)?
                .ok_or_else(|| BarrelError::Conflict("document update conflict".into()))?
                .attachments),
        }
    }

    fn body_of(&self, id: &str, rev: &Rev) -> Result<Map<String, Value>, BarrelError> {
        Ok(read_revision(&self.bodies, id, rev)?
            .ok_or_else(|| BarrelError::Conflict("document update conflict".into()))?
            .body)
    }

    fn put_local(
        &mut self,
        id: String,
        rev: Option<u64>,
        deleted: bool,
        body: Map<String, Value>,
        force: bool,
    ) -> Result<WriteResult, BarrelError> {
        if !is_local_id(&id) {
            return Err(BarrelError::BadRequest(
                "local document ids start with _local/".into(),
            ));
        }
        let current = self
            .local
            .get(id.as_str())?
            .map(|g| decode_local(g.value()))
            .transpose()?;
        let current_n = current.map(|(_, n)| n);
        if !force && rev != current_n {
            return Err(BarrelError::Conflict("document update conflict".into()));
        }
        if deleted {
            if current_n.is_none() {
                return Err(BarrelError::not_found("missing"));
            }
            self.local.remove(id.as_str())?;
            return Ok(WriteResult {
                id,
                rev: "0-0".into(),
            });
        }
        let n = current_n.unwrap_or(0) + 1;
        let mut raw = vec![FORMAT];
        raw.extend_from_slice(&n.to_be_bytes());
        cbor::encode_object(&body, true, &mut raw);
        self.local.insert(id.as_str(), raw.as_slice())?;
        Ok(WriteResult {
            id,
            rev: format!("0-{n}"),
        })
    }

    /// A new edit: CouchDB's rules for `new_edits=true` (DESIGN §2).
    fn edit(&mut self, doc: IncomingDoc) -> Result<WriteResult, BarrelError> {
        let id = match doc.id.clone() {
            Some(id) => id,
            None => new_doc_id()?,
        };
        if is_local_id(&id) {
            return self.put_local(id, doc.local_rev, doc.deleted, doc.body, false);
        }
        check_not_local_rev(&doc)?;
        let info = load_info(&self.docs, &id)?;
        let parent: Option<Rev> = match (&info, doc.rev) {
            (None, None) => None,
            (None, Some(_)) => return Err(conflict()),
            (Some(info), Some(rev)) => {
                if !info.tree.is_leaf(&rev) {
                    return self.maybe_retry(&id, info, rev, &doc);
                }
                Some(rev)
            }
            (Some(info), None) => {
                let w = info
                    .tree
                    .winner()
                    .ok_or_else(|| BarrelError::corrupt("empty tree"))?;
                if !w.deleted || doc.deleted {
                    return Err(conflict());
                }
                Some(w.rev)
            }
        };
        let atts = self.resolve_attachments(&id, &doc, parent.as_ref(), info.as_ref(), false)?;
        let body = doc.body;
        let body_cbor = self.body_cbor(&body);
        let digests: Vec<String> = atts.iter().map(|a| a.meta.digest()).collect();
        let rev = cbor::next_rev(doc.deleted, parent.as_ref(), &body_cbor, &digests);
        let path: Vec<Rev> = std::iter::once(rev).chain(parent).collect();
        self.commit_revision(&id, info, &path, doc.deleted, body, &body_cbor, atts)?;
        Ok(WriteResult {
            id,
            rev: rev.to_string(),
        })
    }

    /// `_rev` is not a leaf. If the same edit was already applied (a client retrying a write
    /// whose answer it lost), answer it again; otherwise it is a conflict.
    fn maybe_retry(
        &self,
        id: &str,
        info: &DocInfo,
        parent: Rev,
        doc: &IncomingDoc,
    ) -> Result<WriteResult, BarrelError> {
        if !info.tree.contains(&parent) || doc.attachments.is_some() {
            return Err(conflict());
        }
        let mut body_cbor = Vec::with_capacity(256);
        cbor::encode_object(&doc.body, true, &mut body_cbor);
        let rev = cbor::next_rev(doc.deleted, Some(&parent), &body_cbor, &[]);
        match info.tree.get(&rev) {
            Some(node) if node.parent == Some(parent) => Ok(WriteResult {
                id: id.to_owned(),
                rev: rev.to_string(),
            }),
            _ => Err(conflict()),
        }
    }

    /// A replicated revision (`new_edits=false`): merged with its history as given.
    fn replicate(&mut self, doc: IncomingDoc) -> Result<WriteResult, BarrelError> {
        let id = doc
            .id
            .clone()
            .ok_or_else(|| BarrelError::BadRequest("_id is required".into()))?;
        if is_local_id(&id) {
            return self.put_local(id, None, doc.deleted, doc.body, true);
        }
        check_not_local_rev(&doc)?;
        let path = match (&doc.revisions, doc.rev) {
            (Some(h), _) if !h.is_empty() => h.clone(),
            (_, Some(rev)) => vec![rev],
            _ => return Err(BarrelError::BadRequest("_rev is required".into())),
        };
        let leaf = path[0];
        let info = load_info(&self.docs, &id)?;
        if info.as_ref().is_some_and(|i| i.tree.contains(&leaf)) {
            return Ok(WriteResult {
                id,
                rev: leaf.to_string(),
            });
        }
        let atts = self.resolve_attachments(&id, &doc, None, info.as_ref(), true)?;
        let body_cbor = self.body_cbor(&doc.body);
        self.commit_revision(&id, info, &path, doc.deleted, doc.body, &body_cbor, atts)?;
        Ok(WriteResult {
            id,
            rev: leaf.to_string(),
        })
    }

    /// Resolves `_attachments`: inline `data` becomes new content; a stub refers to an
    /// attachment the parent (or, when replicating, any stored leaf) already has.
    fn resolve_attachments(
        &self,
        id: &str,
        doc: &IncomingDoc,
        parent: Option<&Rev>,
        info: Option<&DocInfo>,
        replicating: bool,
    ) -> Result<Vec<NewAttachment>, BarrelError> {
        let Some(given) = &doc.attachments else {
            return Ok(Vec::new());
        };
        let new_pos = doc.rev.map_or_else(
            || parent.map_or(1, |p| p.pos + 1),
            |r| {
                if replicating {
                    r.pos
                } else {
                    r.pos + 1
                }
            },
        );
        let mut known: Vec<AttachmentMeta> = Vec::new();
        if replicating {
            if let Some(info) = info {
                for leaf in info.tree.leaves() {
                    if let Some(d) = read_revision(&self.bodies, id, &leaf.rev)? {
                        known.extend(d.attachments);
                    }
                }
            }
        } else if let Some(p) = parent {
            if let Some(d) = read_revision(&self.bodies, id, p)? {
                known = d.attachments;
            }
        }
        let mut out = Vec::with_capacity(given.len());
        for (name, spec) in given {
            let bad = |why: &str| BarrelError::BadRequest(format!("attachment {name:?}: {why}"));
            if name.is_empty() || name.len() > 1024 || name.starts_with('_') {
                return Err(bad("names are 1 to 1024 bytes and must not start with '_'"));
            }
            let spec = spec.as_object().ok_or_else(|| bad("must be an object"))?;
            let content_type = match spec.get("content_type") {
                None => "application/octet-stream".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(bad("content_type must be a string")),
            };
            if let Some(data) = spec.get("data") {
                let data = data
                    .as_str()
                    .ok_or_else(|| bad("data must be a base64 string"))?;
                let bytes = STANDARD
                    .decode(data)
                    .map_err(|_| bad("data is not valid base64"))?;
                let meta = AttachmentMeta {
                    name: name.clone(),
                    content_type,
                    length: bytes.len() as u64,
                    sha256: Sha256::digest(&bytes).into(),
                    md5: Md5::digest(&bytes).into(),
                    revpos: spec
                        .get("revpos")
                        .and_then(Value::as_u64)
                        .filter(|_| replicating)
                        .unwrap_or(new_pos),
                };
                out.push(NewAttachment {
                    meta,
                    data: Some(bytes),
                });
            } else if spec.get("stub").and_then(Value::as_bool) == Some(true) {
                let digest = spec.get("digest").and_then(Value::as_str);
                let found = known
                    .iter()
                    .find(|a| a.name == *name && digest.is_none_or(|d| d == a.digest()))
                    .or_else(|| {
                        known
                            .iter()
                            .find(|a| digest.is_some_and(|d| d == a.digest()))
                    })
                    .ok_or_else(|| bad("stub refers to an attachment this document lacks"))?;
                let mut meta = found.clone();
                meta.name = name.clone();
                out.push(NewAttachment { meta, data: None });
            } else {
                return Err(bad("needs either data (base64) or stub: true"));
            }
        }
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// Merges `path` (newest first) into the document's tree with the leaf's body, keeps
    /// bodies only on leaves, updates the path index, the changes feed and the counts.
    #[allow(clippy::too_many_arguments)]
    fn commit_revision(
        &mut self,
        id: &str,
        info: Option<DocInfo>,
        path: &[Rev],
        deleted: bool,
        body: Map<String, Value>,
        body_cbor: &[u8],
        atts: Vec<NewAttachment>,
    ) -> Result<(), BarrelError> {
        let (mut tree, old_seq) = match info {
            Some(i) => (i.tree, Some(i.seq)),
            None => (RevTree::new(), None),
        };
        let old_winner = tree.winner();
        let old_leaves: BTreeSet<Rev> = tree.leaves().into_iter().map(|l| l.rev).collect();
        tree.merge_path(path, deleted);
        tree.stem(self.revs_limit);
        let leaves = tree.leaves();
        let new_winner = *leaves
            .first()
            .ok_or_else(|| BarrelError::corrupt("a revision tree without leaves"))?;
        let leaf = path[0];

        // Content of new attachments, once per barrel.
        let metas: Vec<AttachmentMeta> = atts
            .into_iter()
            .map(|a| {
                if let Some(data) = a.data {
                    if self.attachments.get(&a.meta.sha256[..])?.is_none() {
                        self.attachments
                            .insert(&a.meta.sha256[..], data.as_slice())?;
                    }
                }
                Ok(a.meta)
            })
            .collect::<Result<_, BarrelError>>()?;

        // The old winner's body, needed for the index diff and for listeners.
        let old_body = match old_winner {
            Some(w) if !w.deleted && w.rev != new_winner.rev => {
                read_revision(&self.bodies, id, &w.rev)?.map(|d| d.body)
            }
            _ => None,
        };
        let leaf_is_leaf = leaves.iter().any(|l| l.rev == leaf);
        if leaf_is_leaf {
            let raw = encode_revision(deleted, &metas, body_cbor);
            self.bodies
                .insert(body_key(id, &leaf).as_slice(), raw.as_slice())?;
        }
        for gone in old_leaves.iter().filter(|r| !tree.is_leaf(r)) {
            self.bodies.remove(body_key(id, gone).as_slice())?;
        }

        let winner_changed =
            old_winner.map(|w| (w.rev, w.deleted)) != Some((new_winner.rev, new_winner.deleted));
        let mut new_body = None;
        if winner_changed {
            let new_live = if new_winner.deleted {
                None
            } else if new_winner.rev == leaf {
                Some(body)
            } else {
                read_revision(&self.bodies, id, &new_winner.rev)?.map(|d| d.body)
            };
            let old_live = match old_winner {
                Some(w) if !w.deleted => old_body,
                _ => None,
            };
            // The new body's keys were computed by the caller when it is the new winner.
            let hinted = match self.hint.take() {
                Some(h) if !new_winner.deleted && new_winner.rev == leaf => h.keys,
                _ => None,
            };
            self.reindex(id, old_live.as_ref(), new_live.as_ref(), hinted)?;
            match (old_winner.map(|w| w.deleted), new_winner.deleted) {
                (None, false) => self.doc_count += 1,
                (None, true) => self.deleted_count += 1,
                (Some(false), true) => {
                    self.doc_count -= 1;
                    self.deleted_count += 1;
                }
                (Some(true), false) => {
                    self.deleted_count -= 1;
                    self.doc_count += 1;
                }
                _ => {}
            }
            new_body = Some((old_live.map(Arc::new), new_live.map(Arc::new)));
        }

        self.seq += 1;
        // The topics this document had before: those of the entry this one replaces, plus
        // those of the winner this change replaced (when it was live and changed).
        let mut earlier = Some(Vec::new());
        if let Some(s) = old_seq {
            if let Some(raw) = self.changes_table.remove(s)? {
                earlier = decode_feed(raw.value())?.earlier;
            }
        }
        if let (Some(list), Some((Some(old), _))) = (earlier.as_mut(), new_body.as_ref()) {
            for t in cooper_protocols::topic::topics(id, old).into_iter().skip(1) {
                if !list.contains(&t) {
                    list.push(t);
                }
            }
            if list.len() > MAX_EARLIER_TOPICS {
                earlier = None;
            }
        }
        let entry = FeedEntry {
            v: FORMAT,
            id: id.to_owned(),
            earlier,
        };
        self.changes_table
            .insert(self.seq, encode_feed(&entry).as_slice())?;
        let info = DocInfo {
            v: FORMAT,
            tree,
            seq: self.seq,
        };
        self.docs.insert(id, encode_info(&info).as_slice())?;
        let (old, new) = match new_body {
            Some(pair) => pair,
            // The winner stayed (a losing branch changed): its body is still the live one.
            None if !new_winner.deleted => {
                let b = read_revision(&self.bodies, id, &new_winner.rev)?.map(|d| Arc::new(d.body));
                (b.clone(), b)
            }
            None => (None, None),
        };
        self.changes.push(DocumentChanged {
            seq: self.seq,
            id: id.to_owned(),
            rev: new_winner.rev,
            deleted: new_winner.deleted,
            old,
            new,
        });
        Ok(())
    }

    /// Replaces the index entries of `old` by those of `new`, touching only the difference.
    fn reindex(
        &mut self,
        id: &str,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        new_keys: Option<Vec<Vec<u8>>>,
    ) -> Result<(), BarrelError> {
        let old = index_keys(id, old);
        let new = new_keys.unwrap_or_else(|| index_keys(id, new));
        for k in &old {
            if new.binary_search(k).is_err() {
                self.index.delete(k.clone());
            }
        }
        for k in new {
            if old.binary_search(&k).is_err() {
                self.index.put(k);
            }
        }
        Ok(())
    }
}

/// [`Store::open_revs`] on open tables.
fn open_revs_in<D, B>(
    docs: &D,
    bodies: &B,
    id: &str,
    which: &OpenRevs,
) -> Result<Vec<OpenRev>, BarrelError>
where
    D: ReadableTable<&'static str, &'static [u8]>,
    B: ReadableTable<&'static [u8], &'static [u8]>,
{
    let info = load_info(docs, id)?;
    let revs: Vec<Rev> = match (which, &info) {
        (OpenRevs::All, Some(info)) => info.tree.leaves().into_iter().map(|l| l.rev).collect(),
        (OpenRevs::All, None) => return Err(BarrelError::not_found("missing")),
        (OpenRevs::Revs(revs), _) => revs.clone(),
        (OpenRevs::Latest(revs), None) => revs.clone(),
        (OpenRevs::Latest(revs), Some(info)) => {
            let leaves = info.tree.leaves();
            let mut out = Vec::new();
            for rev in revs {
                if !info.tree.contains(rev) || info.tree.is_leaf(rev) {
                    out.push(*rev);
                    continue;
                }
                for l in &leaves {
                    if info.tree.history(&l.rev).contains(rev) && !out.contains(&l.rev) {
                        out.push(l.rev);
                    }
                }
            }
            out
        }
    };
    let mut out = Vec::with_capacity(revs.len());
    for rev in revs {
        let found = match &info {
            Some(info) => read_revision(bodies, id, &rev)?.map(|mut d| {
                d.history = Some(info.tree.history(&rev));
                d
            }),
            None => None,
        };
        out.push(found.map_or(OpenRev::Missing(rev), OpenRev::Ok));
    }
    Ok(out)
}

/// A `0-N` revision belongs to local documents only.
fn check_not_local_rev(doc: &IncomingDoc) -> Result<(), BarrelError> {
    match doc.local_rev {
        Some(n) => Err(BarrelError::BadRequest(format!(
            "_rev 0-{n} is a local document's revision; documents have revisions like 1-<32 hex>"
        ))),
        None => Ok(()),
    }
}

fn conflict() -> BarrelError {
    BarrelError::Conflict("document update conflict".into())
}

/// A new document id: 128 random bits as 32 lowercase hex characters.
pub fn new_doc_id() -> Result<String, BarrelError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| BarrelError::Storage(format!("random: {e}")))?;
    Ok(cooper_protocols::ids::hex(&bytes))
}

// ---------------------------------------------------------------------------------------------
// Query planning and evaluation.

/// A contiguous range of index keys.
#[derive(Debug, Clone)]
struct KeyRange {
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
}

impl KeyRange {
    fn prefix(prefix: Vec<u8>) -> Self {
        let hi = successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        Self {
            lo: Bound::Included(prefix),
            hi,
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        let above = match &self.lo {
            Bound::Included(l) => k >= l.as_slice(),
            Bound::Excluded(l) => k > l.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.hi {
            Bound::Included(h) => k <= h.as_slice(),
            Bound::Excluded(h) => k < h.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// This range narrowed to keys after `after` in scan order.
    fn bounds_after(&self, after: Option<&[u8]>, desc: bool) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let (mut lo, mut hi) = (self.lo.clone(), self.hi.clone());
        if let Some(a) = after {
            if desc {
                let tighter = match &hi {
                    Bound::Included(h) | Bound::Excluded(h) => a <= h.as_slice(),
                    Bound::Unbounded => true,
                };
                if tighter {
                    hi = Bound::Excluded(a.to_vec());
                }
            } else {
                let tighter = match &lo {
                    Bound::Included(l) | Bound::Excluded(l) => a >= l.as_slice(),
                    Bound::Unbounded => true,
                };
                if tighter {
                    lo = Bound::Excluded(a.to_vec());
                }
            }
        }
        (lo, hi)
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[derive(Debug)]
enum Driver {
    /// Every live document in id order.
    Ids,
    /// Walk one path's index over `ranges`, in order.
    Scan { ranges: Vec<KeyRange>, desc: bool },
    /// Collect candidate ids from `ranges`, then sort by `order_path`.
    Collect {
        ranges: Vec<KeyRange>,
        order_path: String,
        desc: bool,
    },
}

#[derive(Debug)]
struct Planned {
    driver: Driver,
    index: Option<String>,
    full_scan: bool,
}

impl Planned {
    fn explain(&self, query: &Query) -> Plan {
        let (strategy, ranges) = match &self.driver {
            Driver::Ids if self.full_scan => ("full-scan", 0),
            Driver::Ids => ("ids", 0),
            Driver::Scan { ranges, .. } => ("index-scan", ranges.len()),
            Driver::Collect { ranges, .. } => ("index-collect", ranges.len()),
        };
        Plan {
            strategy,
            index: self.index.clone(),
            ranges,
            filters: query.conditions.len(),
            full_scan: self.full_scan,
        }
    }
}

fn path_prefix(p: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len() + 2);
    path::encode_path(p, &mut out);
    out
}

fn scalar_key(prefix: &[u8], v: &Value) -> Option<Vec<u8>> {
    if !is_scalar(v) {
        return None;
    }
    let mut k = prefix.to_vec();
    path::encode_scalar(v, &mut k).then_some(k)
}

/// The type tag range of a scalar's group: numbers with numbers, strings with strings.
fn type_group(prefix: &[u8], v: &Value) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut k = Vec::new();
    if !path::encode_scalar(v, &mut k) {
        return None;
    }
    let (lo, hi) = match k[0] {
        path::tag::FALSE | path::tag::TRUE => (path::tag::FALSE, path::tag::TRUE + 1),
        t => (t, t + 1),
    };
    let mut a = prefix.to_vec();
    a.push(lo);
    let mut b = prefix.to_vec();
    b.push(hi);
    Some((a, b))
}

/// Key ranges of the index of `cond.path` that hold every document the condition admits,
/// sorted and disjoint; `None` when the index cannot answer it (`exists.false`).
fn ranges_for(cond: &Condition) -> Result<Option<Vec<KeyRange>>, BarrelError> {
    let prefix = path_prefix(&cond.path);
    let not_scalar = || {
        BarrelError::BadRequest(format!(
            "the value compared with {} must be a string, number, boolean or null",
            cond.path
        ))
    };
    let eq = |v: &Value| -> Result<KeyRange, BarrelError> {
        Ok(KeyRange::prefix(
            scalar_key(&prefix, v).ok_or_else(not_scalar)?,
        ))
    };
    let ranges = match &cond.op {
        Op::Eq(v) => vec![eq(v)?],
        Op::In(vs) => {
            let mut keys: Vec<Vec<u8>> = vs
                .iter()
                .map(|v| scalar_key(&prefix, v).ok_or_else(not_scalar))
                .collect::<Result<_, _>>()?;
            keys.sort();
            keys.dedup();
            keys.into_iter().map(KeyRange::prefix).collect()
        }
        Op::Prefix(p) => {
            let mut k = scalar_key(&prefix, &Value::String(p.clone())).ok_or_else(not_scalar)?;
            k.truncate(k.len() - 2); // drop the string terminator: any continuation matches
            vec![KeyRange::prefix(k)]
        }
        Op::Gt(v) | Op::Gte(v) | Op::Lt(v) | Op::Lte(v) => {
            let key = scalar_key(&prefix, v).ok_or_else(not_scalar)?;
            let (group_lo, group_hi) = type_group(&prefix, v).ok_or_else(not_scalar)?;
            let after = successor(&key).map_or(Bound::Unbounded, Bound::Excluded);
            let r = match &cond.op {
                Op::Gt(_) => KeyRange {
                    lo: after.clone().map_bound_included(),
                    hi: Bound::Excluded(group_hi),
                },
                Op::Gte(_) => KeyRange {
                    lo: Bound::Included(key),
                    hi: Bound::Excluded(group_hi),
                },
                Op::Lt(_) => KeyRange {
                    lo: Bound::Included(group_lo),
                    hi: Bound::Excluded(key),
                },
                _ => KeyRange {
                    lo: Bound::Included(group_lo),
                    hi: after,
                },
            };
            vec![r]
        }
        Op::Ne(v) => {
            let key = scalar_key(&prefix, v).ok_or_else(not_scalar)?;
            let whole = KeyRange::prefix(prefix.clone());
            let after = successor(&key).map_or(Bound::Unbounded, Bound::Included);
            vec![
                KeyRange {
                    lo: whole.lo.clone(),
                    hi: Bound::Excluded(key),
                },
                KeyRange {
                    lo: after,
                    hi: whole.hi,
                },
            ]
        }
        Op::Exists(true) => {
            // Scalars at the path, and anything below it (the path holds a container).
            let mut below = cond.path.as_bytes().to_vec();
            below.push(b'/');
            let mut rs = vec![KeyRange::prefix(prefix), KeyRange::prefix(below)];
            rs.sort_by(|a, b| bound_key(&a.lo).cmp(bound_key(&b.lo)));
            rs
        }
        Op::Exists(false) => return Ok(None),
    };
    Ok(Some(ranges))
}

/// The first of a document's index keys that lies in `ranges`, in scan order.
fn first_key(doc: &DocRevision, ranges: &[KeyRange], desc: bool) -> Option<Vec<u8>> {
    let keys = path::index_entries(&doc.body)
        .into_iter()
        .map(|(p, v)| path::index_key(&p, v, &doc.id))
        .filter(|k| ranges.iter().any(|r| r.contains(k)));
    if desc {
        keys.max()
    } else {
        keys.min()
    }
}

fn bound_key(b: &Bound<Vec<u8>>) -> &[u8] {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => k,
        Bound::Unbounded => &[],
    }
}

trait IncludedBound {
    fn map_bound_included(self) -> Bound<Vec<u8>>;
}

impl IncludedBound for Bound<Vec<u8>> {
    /// `Excluded(successor)` as a lower bound means "from the successor on", i.e. included.
    fn map_bound_included(self) -> Bound<Vec<u8>> {
        match self {
            Bound::Excluded(k) => Bound::Included(k),
            other => other,
        }
    }
}

/// How selective an operator usually is: lower drives the query first.
fn rank(op: &Op) -> u8 {
    match op {
        Op::Eq(_) => 0,
        Op::In(_) => 1,
        Op::Prefix(_) => 2,
        Op::Gt(_) | Op::Gte(_) | Op::Lt(_) | Op::Lte(_) => 3,
        Op::Ne(_) | Op::Exists(true) => 4,
        Op::Exists(false) => 5,
    }
}

fn conditions_on(conds: &[Condition], p: &str) -> Option<Op> {
    conds
        .iter()
        .filter(|c| c.path == p)
        .min_by_key(|c| rank(&c.op))
        .map(|c| c.op.clone())
}

fn plan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    query: &Query,
    paths: &RunView<T>,
) -> Result<Planned, BarrelError> {
    // Validate every condition's operand up front, so a bad one is a 400 whatever the plan.
    let mut candidates = Vec::new();
    for c in &query.conditions {
        if let Some(r) = ranges_for(c)? {
            candidates.push((rank(&c.op), c, r));
        }
    }
    candidates.sort_by_key(|(r, _, _)| *r);
    if let Some((order_path, desc)) = &query.order {
        let desc = *desc;
        if let Some((_, _, ranges)) = candidates.iter().find(|(_, c, _)| &c.path == order_path) {
            return Ok(Planned {
                driver: Driver::Scan {
                    ranges: ranges.clone(),
                    desc,
                },
                index: Some(order_path.clone()),
                full_scan: false,
            });
        }
        if let Some((_, c, ranges)) = candidates.iter().find(|(r, _, _)| *r <= 1) {
            if count_up_to(paths, ranges, COLLECT_LIMIT + 1)? <= COLLECT_LIMIT {
                return Ok(Planned {
                    driver: Driver::Collect {
                        ranges: ranges.clone(),
                        order_path: order_path.clone(),
                        desc,
                    },
                    index: Some(c.path.clone()),
                    full_scan: false,
                });
            }
        }
        return Ok(Planned {
            driver: Driver::Scan {
                ranges: vec![KeyRange::prefix(path_prefix(order_path))],
                desc,
            },
            index: Some(order_path.clone()),
            full_scan: false,
        });
    }
    if let Some((_, c, ranges)) = candidates.first() {
        return Ok(Planned {
            driver: Driver::Scan {
                ranges: ranges.clone(),
                desc: false,
            },
            index: Some(c.path.clone()),
            full_scan: false,
        });
    }
    Ok(Planned {
        driver: Driver::Ids,
        index: None,
        full_scan: !query.conditions.is_empty(),
    })
}

fn count_up_to<T: ReadableTable<&'static [u8], &'static [u8]>>(
    paths: &RunView<T>,
    ranges: &[KeyRange],
    max: usize,
) -> Result<usize, BarrelError> {
    let mut n = 0;
    for r in ranges {
        for entry in paths.range(as_slice_bound(&r.lo), as_slice_bound(&r.hi), false)? {
            entry?;
            n += 1;
            if n >= max {
                return Ok(n);
            }
        }
    }
    Ok(n)
}

/// The value a document sorts by at `p`: among its scalars there that `op` admits, the
/// smallest (ascending) or the greatest (descending).
fn sort_value(body: &Map<String, Value>, p: &str, op: Option<&Op>, desc: bool) -> Option<Value> {
    let root = BodyRef(body);
    let vals = root.values_at(p);
    let admitted = vals
        .into_iter()
        .filter(|v| is_scalar(v) && op.is_none_or(|op| admits(op, v)));
    let pick = if desc {
        admitted.max_by(|a, b| path::compare(a, b))
    } else {
        admitted.min_by(|a, b| path::compare(a, b))
    };
    pick.cloned()
}

/// Borrowed view of a body as a JSON object value, without cloning it.
struct BodyRef<'a>(&'a Map<String, Value>);

impl<'a> BodyRef<'a> {
    fn values_at(&self, p: &str) -> Vec<&'a Value> {
        let segs = path::segments(p);
        let Some((first, rest)) = segs.split_first() else {
            return Vec::new();
        };
        let starts: Vec<&'a Value> = if first == "*" {
            self.0.get("*").into_iter().collect()
        } else {
            self.0.get(first.as_str()).into_iter().collect()
        };
        if rest.is_empty() {
            return starts;
        }
        let mut tail = String::new();
        for s in rest {
            tail.push('/');
            tail.push_str(&s.replace('~', "~0").replace('/', "~1"));
        }
        starts
            .into_iter()
            .flat_map(|v| path::values_at(v, &tail))
            .collect()
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn same_group(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Number(_), Value::Number(_))
            | (Value::String(_), Value::String(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Null, Value::Null)
    )
}

/// Whether one value at the path satisfies `op` (for the value-wise operators).
fn admits(op: &Op, v: &Value) -> bool {
    let cmp = |x: &Value| same_group(v, x).then(|| path::compare(v, x));
    match op {
        Op::Eq(x) => cmp(x).is_some_and(|o| o.is_eq()),
        Op::Ne(x) => cmp(x).is_none_or(|o| o.is_ne()),
        Op::Gt(x) => cmp(x).is_some_and(|o| o.is_gt()),
        Op::Gte(x) => cmp(x).is_some_and(|o| o.is_ge()),
        Op::Lt(x) => cmp(x).is_some_and(|o| o.is_lt()),
        Op::Lte(x) => cmp(x).is_some_and(|o| o.is_le()),
        Op::In(xs) => xs.iter().any(|x| cmp(x).is_some_and(|o| o.is_eq())),
        Op::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        Op::Exists(e) => *e,
    }
}

/// Whether a body satisfies one condition.
fn matches(cond: &Condition, body: &Map<String, Value>) -> bool {
    let vals = BodyRef(body).values_at(&cond.path);
    match &cond.op {
        Op::Exists(e) => vals.is_empty() != *e,
        Op::Ne(x) => {
            let scalars: Vec<_> = vals.iter().filter(|v| is_scalar(v)).collect();
            !scalars.is_empty() && !scalars.iter().any(|v| admits(&Op::Eq(x.clone()), v))
        }
        op => vals.iter().any(|v| is_scalar(v) && admits(op, v)),
    }
}

fn matches_all(conds: &[Condition], body: &Map<String, Value>) -> bool {
    conds.iter().all(|c| matches(c, body))
}

/// The opaque `next` cursor.
#[derive(Debug, Clone, PartialEq)]
enum Cursor {
    /// Resume after this key (index key, or document id for the `ids` plan).
    Key(Vec<u8>),
    /// Resume after this (sort key, id) of a collected-and-sorted page.
    Sorted(Vec<u8>, String),
}

impl Cursor {
    fn encode(&self) -> String {
        let mut raw = vec![1u8];
        match self {
            Cursor::Key(k) => {
                raw.push(b'k');
                raw.extend_from_slice(k);
            }
            Cursor::Sorted(k, id) => {
                raw.push(b's');
                raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
                raw.extend_from_slice(k);
                raw.extend_from_slice(id.as_bytes());
            }
        }
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(s: &str) -> Result<Self, BarrelError> {
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad_cursor())?;
        match raw.as_slice() {
            [1, b'k', rest @ ..] => Ok(Cursor::Key(rest.to_vec())),
            [1, b's', a, b, c, d, rest @ ..] => {
                let n = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
                if rest.len() < n {
                    return Err(bad_cursor());
                }
                let id = std::str::from_utf8(&rest[n..]).map_err(|_| bad_cursor())?;
                Ok(Cursor::Sorted(rest[..n].to_vec(), id.to_owned()))
            }
            _ => Err(bad_cursor()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edit(doc: Value) -> WriteOp {
        WriteOp::Edit(cooper_protocols::document::split(doc).unwrap())
    }

    #[test]
    fn a_log_that_does_not_continue_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        s.apply(vec![edit(json!({"_id": "a"}))]).unwrap();
        s.close();
        drop(s);
        // Record 5 after a file that holds records up to 1: records 2..=4 are missing.
        let wal = Store::wal_path(&path);
        let mut log = match LogFile::open(&wal).unwrap() {
            Opened::Log(l, _) => l,
            Opened::Legacy => unreachable!(),
        };
        let op = encode_op(&edit(json!({"_id": "b"})));
        log.append(5, &encode_record(std::iter::once(op.as_slice())))
            .unwrap();
        drop(log);
        let e = Store::open(&path, StoreOptions::default()).unwrap_err();
        assert!(e.to_string().contains("continues at record 5"), "{e}");
    }

    #[test]
    fn a_legacy_redb_log_is_replayed_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        s.apply(vec![edit(json!({"_id": "a", "n": 1}))]).unwrap();
        s.close();
        drop(s);

        // What an earlier Cooper left after a crash: record 2 in a redb log, not yet in the file.
        let wal = Store::wal_path(&path);
        std::fs::remove_file(&wal).unwrap();
        {
            let log = Database::create(&wal).unwrap();
            let txn = log.begin_write().unwrap();
            let op = encode_op(&edit(json!({"_id": "b", "n": 2})));
            txn.open_table(LEGACY_LOG)
                .unwrap()
                .insert(2, encode_record(std::iter::once(op.as_slice())).as_slice())
                .unwrap();
            txn.commit().unwrap();
        }

        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.get("b", &GetOptions::default()).unwrap().body["n"], 2);
        assert!(std::fs::read(&wal).unwrap().starts_with(b"cooperWL"));
        s.apply(vec![edit(json!({"_id": "c", "n": 3}))]).unwrap();
        assert_eq!(s.lock_wal().as_ref().unwrap().next_lsn, 4);
        s.close();
        drop(s);
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        for id in ["a", "b", "c"] {
            s.get(id, &GetOptions::default()).unwrap();
        }
        assert_eq!(s.counts().unwrap().doc_count, 3);
    }
}
