//! The `Replicator` actor: one replication task, CouchDB's replication protocol between two
//! [`Endpoint`]s — a local barrel, or a CouchDB-protocol database over HTTP (another Cooper
//! node's `/couch/<db>`, pouchdb-server, CouchDB). A third transport (libp2p) implements the
//! same trait.
//!
//! One direction works in batches: read the source's changes after the checkpoint, ask the
//! target which revisions it lacks (`_revs_diff`), fetch them with their history and
//! attachments (`_bulk_get`, two requests at once from a remote source), write them as they
//! are (`_bulk_docs`, `new_edits=false`); the next batch is read while the previous one is
//! written. The checkpoint in `_local/` on both sides records only what the target has
//! committed (`_ensure_full_commit` first), after the first batch, then at most once a second
//! and whenever the source has nothing more, so a restart, or a peer that comes back
//! after months, resumes where it stopped (reading again at most the last second's batches).
//! Continuous tasks then wait for the next change (the listener hub locally, a longpoll feed
//! remotely), never in a sleep loop. Errors are retried with exponential backoff and jitter.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult,
    WrapFuture,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cooper_protocols::document::{self, revisions_json};
use cooper_protocols::ids::Rev;
use cooper_protocols::topic::{change_topics, TopicFilter, TopicTrie};
use futures_util::future::LocalBoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::barrel::store::{OpenRev, OpenRevs, WriteOp};
use crate::barrel::BarrelHandle;
use crate::error::BarrelError;
use crate::listener::Since;

/// Changes read per batch.
pub const BATCH: usize = 500;
/// Revisions fetched per `bulk_get` (fewer when they are large: about [`WRITE_BUDGET`] bytes).
/// Larger requests to a remote source are no faster; two at once are (see
/// [`Endpoint::fetches_in_flight`]).
const FETCH: usize = 100;
/// Longest wait of a longpoll on a remote source before asking again.
const LONGPOLL: Duration = Duration::from_secs(55);
/// Most bytes of documents one `_bulk_docs` request carries (a larger document goes alone).
const WRITE_BUDGET: usize = 4 << 20;
/// Sessions kept in a checkpoint's history.
const HISTORY: usize = 50;
/// Least time between two checkpoints of a running replication (each costs a durable commit
/// on both sides); a run also checkpoints after its first batch and whenever it catches up.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Why a replication step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The peer could not be reached, timed out or closed the connection.
    #[error("{endpoint}: unreachable: {reason}")]
    Unreachable {
        /// Which endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The peer answered something the protocol does not allow.
    #[error("{endpoint}: bad answer: {reason}")]
    BadAnswer {
        /// Which endpoint.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The peer refused a request as too large (413).
    #[error("{endpoint}: request too large: {reason}")]
    TooLarge {
        /// Which endpoint.
        endpoint: String,
        /// What it said.
        reason: String,
    },
    /// A local barrel failed.
    #[error(transparent)]
    Barrel(#[from] BarrelError),
}

type Res<T> = Result<T, ReplicationError>;

/// One row of a source's changes: a document and its leaf revisions.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedDoc {
    /// The source's seq of this row (opaque).
    pub seq: String,
    /// The document id.
    pub id: String,
    /// Its leaves.
    pub revs: Vec<Rev>,
}

/// A batch of changes and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangesBatch {
    /// The rows.
    pub rows: Vec<ChangedDoc>,
    /// The seq to continue after.
    pub last_seq: String,
}

/// A revision on its way from a source to a target: the document (with `_revisions` and
/// attachments inline) and its JSON, serialized once: it sizes the write requests and is what
/// an HTTP target is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// The document.
    pub doc: Value,
    /// `doc` as JSON (empty for a target that takes documents, not JSON).
    pub json: Vec<u8>,
    /// The size of `doc` as JSON (about, when `json` is empty).
    pub size: usize,
}

impl Revision {
    /// A revision and its JSON.
    pub fn new(doc: Value) -> Self {
        // A `Value` always serializes (its keys are strings).
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        Self {
            size: json.len(),
            doc,
            json,
        }
    }

    /// A revision for a target that takes documents: its JSON size is estimated, not made.
    pub fn without_json(doc: Value) -> Self {
        Self {
            size: json_size(&doc),
            doc,
            json: Vec::new(),
        }
    }
}

/// About the size of `v` as JSON (escapes aside).
fn json_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

/// One side of a replication. Futures are local: tasks run on the actix system thread.
pub trait Endpoint: std::fmt::Debug {
    /// A stable description (for the replication id and messages).
    fn describe(&self) -> String;
    /// Changes after `since` (`"0"` for all), at most `limit`, all leaves of each document.
    fn changes(&self, since: &str, limit: usize) -> LocalBoxFuture<'_, Res<ChangesBatch>>;
    /// Resolves when there may be changes after `since` (or after a while).
    fn wait_for_changes<'a>(&'a self, since: &'a str) -> LocalBoxFuture<'a, Res<()>>;
    /// For each document, the revisions this side lacks.
    fn revs_diff(
        &self,
        asked: BTreeMap<String, Vec<Rev>>,
    ) -> LocalBoxFuture<'_, Res<BTreeMap<String, Vec<Rev>>>>;
    /// The given revisions with `_revisions` and attachments inline (`data`).
    fn bulk_get(&self, asked: Vec<(String, Rev)>) -> LocalBoxFuture<'_, Res<Vec<Value>>>;
    /// How many `bulk_get`s a task keeps in flight: more than one overlaps a remote
    /// source's work with the task's own (a local source answers at once).
    fn fetches_in_flight(&self) -> usize {
        1
    }
    /// Whether [`Endpoint::bulk_docs`] sends the documents' JSON (else it takes them as
    /// values, and the JSON is not made).
    fn takes_json(&self) -> bool {
        true
    }
    /// Writes revisions as they are (`new_edits=false`); returns how many failed. The writes
    /// may not be durable before [`Endpoint::ensure_full_commit`].
    fn bulk_docs<'a>(&'a self, docs: &'a mut [Revision]) -> LocalBoxFuture<'a, Res<usize>>;
    /// Makes every write acknowledged so far durable (called before a checkpoint records
    /// them, as CouchDB's replicator does).
    fn ensure_full_commit(&self) -> LocalBoxFuture<'_, Res<()>>;
    /// A local document.
    fn get_local<'a>(&'a self, id: &'a str) -> LocalBoxFuture<'a, Res<Option<Value>>>;
    /// Writes a local document (overwriting whatever is there).
    fn put_local<'a>(&'a self, id: &'a str, body: Value) -> LocalBoxFuture<'a, Res<()>>;
}

// ---------------------------------------------------------------------------------------------
// Local barrels

/// A barrel of this node.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    barrel: BarrelHandle,
}

impl LocalEndpoint {
    /// The endpoint of a local barrel.
    pub fn new(barrel: BarrelHandle) -> Self {
        Self { barrel }
    }
}

fn seq_number(since: &str) -> u64 {
    since
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Endpoint for LocalEndpoint {
    fn describe(&self) -> String {
        format!("local:{}", self.barrel.name())
    }

    fn takes_json(&self) -> bool {
        false
    }

    fn changes(&self, since: &str, limit: usize) -> LocalBoxFuture<'_, Res<ChangesBatch>> {
        let since = seq_number(since);
        Box::pin(async move {
            let rows = self.barrel.changes(since, limit)?;
            let last = rows.last().map_or(since, |r| r.seq);
            Ok(ChangesBatch {
                rows: rows
                    .into_iter()
                    .map(|r| ChangedDoc {
                        seq: r.seq.to_string(),
                        id: r.id,
                        revs: r.leaves,
                    })
                    .collect(),
                last_seq: last.to_string(),
            })
        })
    }

    fn wait_for_changes<'a>(&'a self, since: &'a str) -> LocalBoxFuture<'a, Res<()>> {
        Box::pin(async move {
            let all =
                TopicFilter::parse("#").map_err(|e| BarrelError::BadRequest(e.to_string()))?;
            let mut stream = self
                .barrel
                .listen(vec![all], Since::Seq(seq_number(since)), false)
                .await?;
            // The first change after `since` (or a lag, which also means there are changes).
            let _ = stream.next().await;
            Ok(())
        })
    }

    fn revs_diff(
        &self,
        asked: BTreeMap<String, Vec<Rev>>,
    ) -> LocalBoxFuture<'_, Res<BTreeMap<String, Vec<Rev>>>> {
        Box::pin(async move {
            // The writer of this replication may have written the batch before this one
            // without its commit yet: its documents are not asked again (a new batch holds
            // other changes), and one that is comes back as a no-op write.
            Ok(self
                .barrel
                .revs_diff_committed(&asked)?
                .into_iter()
                .map(|(id, d)| (id, d.missing))
                .collect())
        })
    }

    fn bulk_get(&self, asked: Vec<(String, Rev)>) -> LocalBoxFuture<'_, Res<Vec<Value>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(asked.len());
            for (id, rev) in asked {
                for found in self.barrel.open_revs(&id, &OpenRevs::Revs(vec![rev]))? {
                    if let OpenRev::Ok(d) = found {
                        let mut v = d.to_json();
                        if let Some(h) = &d.history {
                            v["_revisions"] = revisions_json(h);
                        }
                        if !d.attachments.is_empty() {
                            let mut atts = Map::new();
                            for a in &d.attachments {
                                let (meta, data) =
                                    self.barrel.get_attachment(&d.id, &a.name, Some(d.rev))?;
                                atts.insert(
                                    a.name.clone(),
                                    json!({"content_type": meta.content_type, "revpos": meta.revpos, "data": STANDARD.encode(data)}),
                                );
                            }
                            v["_attachments"] = Value::Object(atts);
                        }
                        out.push(v);
                    }
                }
            }
            Ok(out)
        })
    }

    fn bulk_docs<'a>(&'a self, docs: &'a mut [Revision]) -> LocalBoxFuture<'a, Res<usize>> {
        Box::pin(async move {
            let mut failed = 0;
            let mut ops = Vec::with_capacity(docs.len());
            // Moved out: a local write is never retried with the same documents.
            for d in docs.iter_mut() {
                match document::split(std::mem::take(&mut d.doc)) {
                    Ok(doc) => ops.push(WriteOp::Replicate(doc)),
                    Err(_) => failed += 1,
                }
            }
            let results = self.barrel.write(ops).await?;
            Ok(failed + results.iter().filter(|r| r.is_err()).count())
        })
    }

    fn ensure_full_commit(&self) -> LocalBoxFuture<'_, Res<()>> {
        // A barrel's writes are durable when acknowledged.
        Box::pin(async { Ok(()) })
    }

    fn get_local<'a>(&'a self, id: &'a str) -> LocalBoxFuture<'a, Res<Option<Value>>> {
        Box::pin(async move {
            match self.barrel.get_local(id) {
                Ok((body, _)) => Ok(Some(Value::Object(body))),
                Err(BarrelError::NotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn put_local<'a>(&'a self, id: &'a str, body: Value) -> LocalBoxFuture<'a, Res<()>> {
        Box::pin(async move {
            let Value::Object(body) = body else {
                return Ok(());
            };
            let current = match self.barrel.get_local(id) {
                Ok((_, n)) => Some(n),
                Err(BarrelError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let op = WriteOp::PutLocal {
                id: id.to_owned(),
                rev: current,
                deleted: false,
                body,
            };
            self.barrel.write_one(op).await?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// CouchDB-protocol databases over HTTP

/// A database that speaks CouchDB's protocol: `http(s)://host:port/couch/<db>` (Cooper) or
/// `http(s)://host:port/<db>` (CouchDB, pouchdb-server). Credentials may be in the URL.
#[derive(Clone)]
pub struct HttpEndpoint {
    base: String,
    auth: Option<String>,
    client: awc::Client,
    /// The `_rev` of each local document (checkpoint) as last read or written through this
    /// endpoint (`None`: there was none), so that a checkpoint is one PUT, not a GET and a PUT.
    local_revs: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl std::fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpEndpoint {
    /// The endpoint at `url`; `user:password@` in the URL becomes basic auth, `headers` may
    /// carry e.g. `Authorization: Bearer …`.
    pub fn new(url: &str, authorization: Option<String>) -> Result<Self, ReplicationError> {
        let bad = |why: &str| ReplicationError::BadAnswer {
            endpoint: url.to_owned(),
            reason: why.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("only http and https URLs"));
        }
        let (userinfo, hostpath) = match rest.split_once('@') {
            Some((u, h)) if !u.contains('/') => (Some(u), h),
            _ => (None, rest),
        };
        let auth = match (authorization, userinfo) {
            (Some(a), _) => Some(a),
            (None, Some(u)) => Some(format!("Basic {}", STANDARD.encode(percent_decode(u)))),
            (None, None) => None,
        };
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(120))
            .finish();
        Ok(Self {
            base: format!("{scheme}://{}", hostpath.trim_end_matches('/')),
            auth,
            client,
            local_revs: Arc::default(),
        })
    }

    async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Res<(u16, Value)> {
        // A `Value` always serializes (its keys are strings).
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.send(method, path, body).await
    }

    /// A request with a body of JSON already serialized.
    async fn send(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Res<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| ReplicationError::Unreachable {
            endpoint: self.base.clone(),
            reason,
        };
        let mut req = self
            .client
            .request(method, &url)
            .insert_header(("Accept", "application/json"));
        if let Some(a) = &self.auth {
            req = req.insert_header(("Authorization", a.as_str()));
        }
        let sent = match body {
            Some(b) => {
                req.insert_header(("Content-Type", "application/json"))
                    .send_body(b)
                    .await
            }
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| unreachable(e.to_string()))?;
        let bytes = res
            .body()
            .limit(256 << 20)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = res.status().as_u16();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ReplicationError::BadAnswer {
                endpoint: self.base.clone(),
                reason: format!("{path}: not JSON ({e})"),
            })?
        };
        Ok((status, value))
    }

    async fn ok(&self, method: awc::http::Method, path: &str, body: Option<&Value>) -> Res<Value> {
        let (status, v) = self.call(method, path, body).await?;
        self.answer(path, status, v)
    }

    /// The body of a 2xx answer, else the error the status means.
    fn answer(&self, path: &str, status: u16, v: Value) -> Res<Value> {
        if (200..300).contains(&status) {
            Ok(v)
        } else if status == 413 {
            Err(ReplicationError::TooLarge {
                endpoint: self.base.clone(),
                reason: v
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
        } else {
            Err(ReplicationError::BadAnswer {
                endpoint: self.base.clone(),
                reason: format!(
                    "{path}: HTTP {status}: {}",
                    v.get("reason").and_then(Value::as_str).unwrap_or("")
                ),
            })
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ReplicationError {
        ReplicationError::BadAnswer {
            endpoint: self.base.clone(),
            reason: reason.into(),
        }
    }

    /// The `_rev` of local document `id` as last seen: `None` when unknown, `Some(None)` when
    /// there was no such document.
    fn local_rev(&self, id: &str) -> Option<Option<String>> {
        let revs = self.local_revs.lock().unwrap_or_else(|e| e.into_inner());
        revs.get(id).cloned()
    }

    fn note_local_rev(&self, id: &str, rev: Option<Option<String>>) {
        let mut revs = self.local_revs.lock().unwrap_or_else(|e| e.into_inner());
        match rev {
            Some(r) => revs.insert(id.to_owned(), r),
            None => revs.remove(id),
        };
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |x: u8| (x as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Member `key` of a JSON object, taken out of it.
fn field(v: Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(mut map) => map.remove(key),
        _ => None,
    }
}

fn seq_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "0".into(),
        other => other.to_string(),
    }
}

impl Endpoint for HttpEndpoint {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn changes(&self, since: &str, limit: usize) -> LocalBoxFuture<'_, Res<ChangesBatch>> {
        let path = format!(
            "/_changes?style=all_docs&since={}&limit={limit}",
            encode_component(since)
        );
        Box::pin(async move {
            let v = self.ok(awc::http::Method::GET, &path, None).await?;
            let results = v
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| self.bad("_changes without results"))?;
            let mut rows = Vec::with_capacity(results.len());
            for r in results {
                let id = r
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.bad("a change without id"))?;
                let revs = r
                    .get("changes")
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.bad("a change without changes"))?
                    .iter()
                    .filter_map(|c| c.get("rev").and_then(Value::as_str))
                    .map(Rev::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.bad(e.to_string()))?;
                rows.push(ChangedDoc {
                    seq: seq_text(r.get("seq").unwrap_or(&Value::Null)),
                    id: id.to_owned(),
                    revs,
                });
            }
            let last_seq = seq_text(v.get("last_seq").unwrap_or(&Value::Null));
            Ok(ChangesBatch { rows, last_seq })
        })
    }

    fn wait_for_changes<'a>(&'a self, since: &'a str) -> LocalBoxFuture<'a, Res<()>> {
        let path = format!(
            "/_changes?feed=longpoll&limit=1&since={}&timeout={}",
            encode_component(since),
            LONGPOLL.as_millis()
        );
        Box::pin(async move {
            self.ok(awc::http::Method::GET, &path, None).await?;
            Ok(())
        })
    }

    fn revs_diff(
        &self,
        asked: BTreeMap<String, Vec<Rev>>,
    ) -> LocalBoxFuture<'_, Res<BTreeMap<String, Vec<Rev>>>> {
        Box::pin(async move {
            let body: Map<String, Value> = asked
                .iter()
                .map(|(id, revs)| {
                    (
                        id.clone(),
                        json!(revs.iter().map(Rev::to_string).collect::<Vec<_>>()),
                    )
                })
                .collect();
            let v = self
                .ok(
                    awc::http::Method::POST,
                    "/_revs_diff",
                    Some(&Value::Object(body)),
                )
                .await?;
            let map = v
                .as_object()
                .ok_or_else(|| self.bad("_revs_diff answer is not an object"))?;
            let mut out = BTreeMap::new();
            for (id, d) in map {
                let missing = d
                    .get("missing")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(Rev::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.bad(e.to_string()))?;
                out.insert(id.clone(), missing);
            }
            Ok(out)
        })
    }

    fn bulk_get(&self, asked: Vec<(String, Rev)>) -> LocalBoxFuture<'_, Res<Vec<Value>>> {
        Box::pin(async move {
            let docs: Vec<Value> = asked
                .iter()
                .map(|(id, rev)| json!({"id": id, "rev": rev.to_string()}))
                .collect();
            let (status, v) = self
                .call(
                    awc::http::Method::POST,
                    "/_bulk_get?revs=true&attachments=true&latest=true",
                    Some(&json!({"docs": docs})),
                )
                .await?;
            if (200..300).contains(&status) {
                let mut out = Vec::with_capacity(asked.len());
                let Some(Value::Array(results)) = field(v, "results") else {
                    return Err(self.bad("_bulk_get without results"));
                };
                for r in results {
                    let Some(Value::Array(docs)) = field(r, "docs") else {
                        continue;
                    };
                    out.extend(docs.into_iter().filter_map(|d| field(d, "ok")));
                }
                return Ok(out);
            }
            // No _bulk_get (older peers): one open_revs read per revision.
            let mut out = Vec::new();
            for (id, rev) in asked {
                let path = format!(
                    "/{}?open_revs={}&revs=true&attachments=true&latest=true",
                    encode_component(&id),
                    encode_component(&json!([rev.to_string()]).to_string())
                );
                let v = self.ok(awc::http::Method::GET, &path, None).await?;
                if let Value::Array(found) = v {
                    out.extend(found.into_iter().filter_map(|d| field(d, "ok")));
                }
            }
            Ok(out)
        })
    }

    fn fetches_in_flight(&self) -> usize {
        2
    }

    fn bulk_docs<'a>(&'a self, docs: &'a mut [Revision]) -> LocalBoxFuture<'a, Res<usize>> {
        Box::pin(async move {
            // {"docs": [...], "new_edits": false} from the documents' JSON as it is.
            let len = docs.iter().map(|d| d.json.len() + 1).sum::<usize>();
            let mut body = Vec::with_capacity(len + 32);
            body.extend_from_slice(b"{\"docs\":[");
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&d.json);
            }
            body.extend_from_slice(b"],\"new_edits\":false}");
            let (status, v) = self
                .send(awc::http::Method::POST, "/_bulk_docs", Some(body))
                .await?;
            let v = self.answer("/_bulk_docs", status, v)?;
            Ok(v.as_array()
                .into_iter()
                .flatten()
                .filter(|r| r.get("error").is_some())
                .count())
        })
    }

    fn ensure_full_commit(&self) -> LocalBoxFuture<'_, Res<()>> {
        Box::pin(async move {
            // CouchDB and PouchDB may acknowledge writes before they are durable; a Cooper
            // node answers at once. A peer without the route has nothing to commit.
            let path = "/_ensure_full_commit";
            let (status, v) = self
                .call(awc::http::Method::POST, path, Some(&json!({})))
                .await?;
            if matches!(status, 404 | 405 | 501) {
                return Ok(());
            }
            self.answer(path, status, v).map(drop)
        })
    }

    fn get_local<'a>(&'a self, id: &'a str) -> LocalBoxFuture<'a, Res<Option<Value>>> {
        Box::pin(async move {
            let path = format!(
                "/_local/{}",
                encode_component(id.trim_start_matches("_local/"))
            );
            let (status, v) = self.call(awc::http::Method::GET, &path, None).await?;
            match status {
                200 => {
                    let rev = v.get("_rev").and_then(Value::as_str).map(str::to_owned);
                    self.note_local_rev(id, Some(rev));
                    Ok(Some(v))
                }
                404 => {
                    self.note_local_rev(id, Some(None));
                    Ok(None)
                }
                s => Err(self.bad(format!("{path}: HTTP {s}"))),
            }
        })
    }

    fn put_local<'a>(&'a self, id: &'a str, mut body: Value) -> LocalBoxFuture<'a, Res<()>> {
        Box::pin(async move {
            let path = format!(
                "/_local/{}",
                encode_component(id.trim_start_matches("_local/"))
            );
            // One PUT with the `_rev` this endpoint last saw; when it is unknown, or stale
            // (409: someone else wrote the document), a GET for the current one first.
            let mut read = false;
            if self.local_rev(id).is_none() {
                self.get_local(id).await?;
                read = true;
            }
            loop {
                if let Value::Object(map) = &mut body {
                    match self.local_rev(id).flatten() {
                        Some(rev) => map.insert("_rev".into(), Value::String(rev)),
                        None => map.remove("_rev"),
                    };
                }
                let (status, v) = self
                    .call(awc::http::Method::PUT, &path, Some(&body))
                    .await?;
                if status == 409 && !read {
                    self.get_local(id).await?;
                    read = true;
                    continue;
                }
                let v = self.answer(&path, status, v).inspect_err(|_| {
                    self.note_local_rev(id, None);
                })?;
                let rev = v.get("rev").and_then(Value::as_str).map(str::to_owned);
                // Without a rev in the answer, the next write reads the current one first.
                self.note_local_rev(id, rev.map(Some));
                return Ok(());
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// Which way documents flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Source to target.
    #[default]
    Push,
    /// Target to source.
    Pull,
    /// Both ways (two checkpoints).
    Sync,
}

/// A replication task as asked for (and persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A local barrel name or a CouchDB-protocol URL.
    pub source: String,
    /// A local barrel name or a CouchDB-protocol URL.
    pub target: String,
    /// push (default), pull or sync.
    #[serde(default)]
    pub direction: Direction,
    /// Keep following changes.
    #[serde(default)]
    pub continuous: bool,
    /// Topic filters: only documents with a matching topic are copied (all when empty).
    #[serde(default)]
    pub filter: Vec<String>,
}

/// The state of a task, as `/replications` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct TaskState {
    /// The task id.
    pub id: String,
    /// `running`, `completed`, `failed` or `paused`.
    pub state: String,
    /// The specification.
    #[serde(flatten)]
    pub spec: Option<TaskSpec>,
    /// Changes read from sources.
    pub docs_read: u64,
    /// Revisions written to targets.
    pub docs_written: u64,
    /// Revisions a target refused.
    pub doc_write_failures: u64,
    /// Source seq reached, per direction (`push`, `pull`).
    pub last_seq: BTreeMap<String, String>,
    /// The last error, while retrying or when failed.
    pub error: Option<String>,
    /// Retries since the last success.
    pub retries: u32,
}

/// The id of a task: a hash of what it replicates, so the same task gets the same id (and
/// the same checkpoints) on every start.
pub fn task_id(spec: &TaskSpec) -> String {
    let base = checkpoint_base(spec);
    if spec.continuous {
        // CouchDB's `+continuous`: a one-shot run and a continuous task between the same
        // endpoints are different tasks that share their checkpoints.
        format!("{base}+continuous")
    } else {
        base
    }
}

/// What the checkpoints of a task are named after: source, target, direction and filter.
pub fn checkpoint_base(spec: &TaskSpec) -> String {
    let mut h = Sha256::new();
    h.update(spec.source.as_bytes());
    h.update([0]);
    h.update(spec.target.as_bytes());
    h.update([0]);
    h.update(format!("{:?}", spec.direction).as_bytes());
    for f in &spec.filter {
        h.update([0]);
        h.update(f.as_bytes());
    }
    cooper_protocols::ids::hex(&h.finalize()[..16])
}

/// Copies one direction from `source` to `target` until caught up (or forever when
/// `continuous`), updating `state`.
///
/// Reading and writing overlap: a reader takes the source's changes, asks the target which
/// revisions it lacks and fetches them, while a writer writes the previous batch to the
/// target; a channel of one step between them keeps the reader about one batch ahead (a few
/// groups of documents in memory, whatever the batches hold). The reader may ask the target
/// about a batch before the previous one is written: at worst the target then receives a
/// revision twice, which `new_edits=false` makes harmless. The writer records the checkpoint
/// (target first, then source) only for batches the target has committed: after the first
/// batch, then at most every [`CHECKPOINT_EVERY`], and always when the source has nothing
/// more (before a one-shot run ends, before a continuous task waits for changes). A restart
/// resumes from the checkpoint: at worst it reads again the batches written since, and the
/// target answers that it has them.
pub async fn replicate_once(
    id: &str,
    direction: &str,
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    filters: &TopicTrie<()>,
    state: &Mutex<TaskState>,
    continuous: bool,
) -> Res<()> {
    let base = id.trim_end_matches("+continuous");
    let checkpoint_id = format!("_local/cooper-{base}-{direction}");
    let session = crate::barrel::store::new_doc_id()?;
    let source_cp = source.get_local(&checkpoint_id).await?;
    let target_cp = target.get_local(&checkpoint_id).await?;
    let since = start_seq(source_cp.as_ref(), target_cp.as_ref());
    let mut checkpoint = Checkpoint {
        id: &checkpoint_id,
        session,
        history: target_cp
            .as_ref()
            .and_then(|c| c.get("history"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    let (tx, mut rx) = mpsc::channel::<Step>(1);
    let reader = async move {
        if let Err(e) = read_ahead(source, target, filters, since, continuous, &tx).await {
            // After what was read before: the writer writes that first.
            let _ = tx.send(Step::Failed(e)).await;
        }
    };
    let writer = async {
        let task = id.to_owned();
        let written_total =
            metrics::counter!("cooper_replication_docs_written_total", "task" => task.clone());
        let read_total = metrics::counter!("cooper_replication_docs_read_total", "task" => task);
        let (mut written, mut failed) = (0u64, 0u64);
        // Batches committed by the target but not yet in the checkpoint, and the last seq.
        let (mut pending, mut done) = (false, String::new());
        let mut recorded: Option<Instant> = None;
        // The steps taken from the reader, in order: writes in flight (the target works on
        // one while the next is prepared and sent) and the marks after them, each handled
        // once every write before it is acknowledged.
        let mut queue: FuturesOrdered<LocalBoxFuture<'_, Done>> = FuturesOrdered::new();
        let mut reading = true;
        loop {
            let next = tokio::select! {
                biased;
                Some(done) = queue.next(), if !queue.is_empty() => done,
                step = rx.recv(), if reading && queue.len() < STEPS_IN_FLIGHT => {
                    match step {
                        Some(Step::Docs(docs)) => queue.push_back(Box::pin(async move {
                            Done::Wrote(write_all(target, docs).await)
                        })),
                        Some(step) => queue.push_back(Box::pin(std::future::ready(Done::Step(step)))),
                        None => reading = false,
                    }
                    continue;
                }
                else => return Ok(()),
            };
            match next {
                Done::Wrote(r) => {
                    let (w, f) = r?;
                    written += w;
                    failed += f;
                }
                Done::Step(Step::Docs(_)) => {}
                Done::Step(Step::Batch { read, last_seq }) => {
                    done = last_seq;
                    pending = true;
                    // The target acknowledged the batch (its bulk_docs answered); the
                    // checkpoint makes it durable first (ensure_full_commit).
                    if recorded.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY) {
                        checkpoint.record(source, target, &done).await?;
                        pending = false;
                        recorded = Some(Instant::now());
                    }
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.docs_read += read;
                    s.docs_written += written;
                    s.doc_write_failures += failed;
                    s.last_seq.insert(direction.to_owned(), done.clone());
                    s.error = None;
                    s.retries = 0;
                    drop(s);
                    written_total.increment(written);
                    read_total.increment(read);
                    (written, failed) = (0, 0);
                }
                Done::Step(Step::CaughtUp(idle)) => {
                    if pending {
                        checkpoint.record(source, target, &done).await?;
                        pending = false;
                        recorded = Some(Instant::now());
                    }
                    if !continuous {
                        return Ok(());
                    }
                    // The reader may wait for changes now.
                    let _ = idle.send(());
                }
                Done::Step(Step::Failed(e)) => return Err(e),
            }
        }
    };
    let mut writer = std::pin::pin!(writer);
    tokio::select! {
        biased;
        r = &mut writer => r,
        () = reader => writer.await,
    }
}

/// Steps of [`replicate_once`]'s writer in flight at once: with a batch's documents and its
/// end mark, two batches.
const STEPS_IN_FLIGHT: usize = 4;

/// What a step of [`replicate_once`]'s writer gives when its turn comes.
enum Done {
    /// A `Docs` step written: (written, failed).
    Wrote(Res<(u64, u64)>),
    /// Any other step, after every write before it.
    Step(Step),
}

/// What the reader of [`replicate_once`] hands its writer, in order.
enum Step {
    /// Revisions to write as they are (a group of about [`WRITE_BUDGET`] bytes).
    Docs(Vec<Revision>),
    /// The end of a batch of `read` changes: every revision of it that the target lacked
    /// (and that passes the filters) was in the `Docs` before.
    Batch { read: u64, last_seq: String },
    /// The source has no changes after the last batch. A continuous reader waits for the
    /// writer's answer (everything committed and checkpointed) before waiting for changes.
    CaughtUp(oneshot::Sender<()>),
    /// Reading failed (after the steps before, which the writer completes first).
    Failed(ReplicationError),
}

/// The reader of [`replicate_once`]: batches of changes after `since`, the revisions the
/// target lacks, fetched from the source ([`Endpoint::fetches_in_flight`] requests at a time;
/// each document serialized once, here). Returns when the writer is gone.
async fn read_ahead(
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    filters: &TopicTrie<()>,
    mut since: String,
    continuous: bool,
    tx: &mpsc::Sender<Step>,
) -> Res<()> {
    let parallel = source.fetches_in_flight().max(1);
    // The JSON size of a revision of the last `bulk_get` (unknown before the first).
    let mut per_doc: Option<usize> = None;
    // The next batch of changes, read while this one's documents were fetched (when this
    // one was full, so that more are likely).
    let mut prefetched = None;
    loop {
        let batch = match prefetched.take() {
            Some(b) => b,
            None => source.changes(&since, BATCH).await?,
        };
        if batch.rows.is_empty() {
            let (idle, checkpointed) = oneshot::channel();
            if tx.send(Step::CaughtUp(idle)).await.is_err() || !continuous {
                return Ok(());
            }
            if checkpointed.await.is_err() {
                return Ok(());
            }
            source.wait_for_changes(&since).await?;
            continue;
        }
        let last_seq = batch.last_seq.clone();
        let full = batch.rows.len() >= BATCH;
        let this = fetch_batch(source, target, filters, batch, parallel, &mut per_doc, tx);
        let go_on = if full {
            let (go_on, next) =
                futures_util::future::join(this, source.changes(&last_seq, BATCH)).await;
            prefetched = Some(next?);
            go_on?
        } else {
            this.await?
        };
        if !go_on {
            return Ok(());
        }
        since = last_seq;
    }
}

/// One batch of [`read_ahead`]: the revisions of `batch` the target lacks, fetched and handed
/// to the writer, then the batch's end. `false` when the writer is gone.
async fn fetch_batch(
    source: &dyn Endpoint,
    target: &dyn Endpoint,
    filters: &TopicTrie<()>,
    batch: ChangesBatch,
    parallel: usize,
    per_doc: &mut Option<usize>,
    tx: &mpsc::Sender<Step>,
) -> Res<bool> {
    let read = batch.rows.len() as u64;
    let json = target.takes_json();
    let asked: BTreeMap<String, Vec<Rev>> = batch
        .rows
        .iter()
        .map(|r| (r.id.clone(), r.revs.clone()))
        .collect();
    let missing = target.revs_diff(asked).await?;
    let wanted: Vec<(String, Rev)> = missing
        .into_iter()
        .flat_map(|(id, revs)| revs.into_iter().map(move |r| (id.clone(), r)))
        .collect();
    // The whole batch goes to the target in as few commits as its size allows: each
    // commit costs the target an fsync and its page writes, whatever it holds.
    let mut ready: Vec<Revision> = Vec::new();
    let mut ready_bytes = 0;
    // Revisions wanted[..next] are asked for: `fetching` in flight, in order, then
    // `fetched`, the answers that came while a step was handed to the writer.
    let mut next = 0;
    let mut fetching = FuturesOrdered::new();
    let mut fetched = VecDeque::new();
    loop {
        // Before the first answer tells how large revisions are, one request alone.
        let in_flight = if per_doc.is_some() { parallel } else { 1 };
        while fetching.len() + fetched.len() < in_flight && next < wanted.len() {
            // FETCH revisions, or fewer when about WRITE_BUDGET bytes.
            let n = per_doc.map_or(FETCH, |b| (WRITE_BUDGET / b.max(1)).clamp(1, FETCH));
            let end = wanted.len().min(next + n);
            fetching.push_back(source.bulk_get(wanted[next..end].to_vec()));
            next = end;
        }
        let docs = match fetched.pop_front() {
            Some(docs) => docs,
            None => match fetching.next().await {
                Some(docs) => docs,
                None => break,
            },
        };
        let (mut bytes, mut count) = (0, 0);
        for d in docs? {
            if passes(filters, &d) {
                let r = if json {
                    Revision::new(d)
                } else {
                    Revision::without_json(d)
                };
                bytes += r.size;
                count += 1;
                ready.push(r);
            }
        }
        // Unchanged when every revision was filtered out.
        *per_doc = bytes.checked_div(count).or(*per_doc);
        ready_bytes += bytes;
        let last = next >= wanted.len() && fetching.is_empty() && fetched.is_empty();
        if ready_bytes >= WRITE_BUDGET || (last && !ready.is_empty()) {
            let step = Step::Docs(std::mem::take(&mut ready));
            if !send_fetching(tx, step, &mut fetching, &mut fetched).await {
                return Ok(false);
            }
            ready_bytes = 0;
        }
    }
    let sent = tx
        .send(Step::Batch {
            read,
            last_seq: batch.last_seq,
        })
        .await;
    Ok(sent.is_ok())
}

/// Hands `step` to the writer (false when it is gone) while the requests in flight go on:
/// their answers are kept in `fetched`, in order.
async fn send_fetching<F: Future>(
    tx: &mpsc::Sender<Step>,
    step: Step,
    fetching: &mut FuturesOrdered<F>,
    fetched: &mut VecDeque<F::Output>,
) -> bool {
    let mut send = std::pin::pin!(tx.send(step));
    loop {
        tokio::select! {
            biased;
            sent = &mut send => return sent.is_ok(),
            Some(docs) = fetching.next(), if !fetching.is_empty() => fetched.push_back(docs),
        }
    }
}

/// The checkpoint of one direction of a task, as this run records it.
struct Checkpoint<'a> {
    id: &'a str,
    session: String,
    history: Vec<Value>,
}

impl Checkpoint<'_> {
    /// Records that the target committed everything up to `seq`: makes the target's writes
    /// durable, then records it on the target, then on the source (a durable commit on each).
    async fn record(&mut self, source: &dyn Endpoint, target: &dyn Endpoint, seq: &str) -> Res<()> {
        self.history
            .insert(0, json!({"session_id": self.session, "recorded_seq": seq}));
        self.history.truncate(HISTORY);
        let cp = json!({
            "session_id": self.session,
            "source_last_seq": seq,
            "history": self.history,
            "replicator": "cooper",
            "version": 1,
        });
        // The target's writes are durable before a checkpoint records them.
        target.ensure_full_commit().await?;
        target.put_local(self.id, cp.clone()).await?;
        source.put_local(self.id, cp).await?;
        Ok(())
    }
}

/// Writes documents to `target` in requests under a byte budget (attachments travel inline);
/// a target with a smaller request limit answers 413, and the group is halved and retried.
/// Returns (written, failed).
async fn write_all(target: &dyn Endpoint, docs: Vec<Revision>) -> Res<(u64, u64)> {
    let (mut written, mut failed) = (0, 0);
    let mut pending = by_size(docs, WRITE_BUDGET);
    pending.reverse();
    while let Some(mut group) = pending.pop() {
        let n = group.len() as u64;
        match target.bulk_docs(&mut group).await {
            Ok(f) => {
                written += n - f as u64;
                failed += f as u64;
            }
            Err(ReplicationError::TooLarge { .. }) if group.len() > 1 => {
                let mut first = group;
                let second = first.split_off(first.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((written, failed))
}

/// Splits documents into groups of at most `budget` bytes of JSON (a larger one alone).
fn by_size(docs: Vec<Revision>, budget: usize) -> Vec<Vec<Revision>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for d in docs {
        let n = d.size;
        if !current.is_empty() && size + n > budget {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        size += n;
        current.push(d);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Where to start: the newest session both checkpoints know (CouchDB's rule), else 0.
fn start_seq(source: Option<&Value>, target: Option<&Value>) -> String {
    let (Some(s), Some(t)) = (source, target) else {
        return "0".into();
    };
    if s.get("session_id").is_some() && s.get("session_id") == t.get("session_id") {
        return seq_text(t.get("source_last_seq").unwrap_or(&Value::Null));
    }
    let sessions = |c: &Value| -> Vec<(String, String)> {
        c.get("history")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| {
                Some((
                    h.get("session_id")?.as_str()?.to_owned(),
                    seq_text(h.get("recorded_seq")?),
                ))
            })
            .collect()
    };
    let theirs = sessions(s);
    for (session, seq) in sessions(t) {
        if theirs.iter().any(|(s2, _)| *s2 == session) {
            return seq;
        }
    }
    "0".into()
}

/// Whether a document passes the task's topic filters. Tombstones always pass: a deletion of
/// a document the target may hold must reach it.
fn passes(filters: &TopicTrie<()>, doc: &Value) -> bool {
    if filters.is_empty() || doc.get("_deleted") == Some(&Value::Bool(true)) {
        return true;
    }
    let Some(obj) = doc.as_object() else {
        return false;
    };
    let id = obj.get("_id").and_then(Value::as_str).unwrap_or("");
    change_topics(id, None, Some(obj))
        .iter()
        .any(|t| filters.matches(t))
}

// ---------------------------------------------------------------------------------------------
// The actor

/// Resolves replication endpoints (local barrel names) for the replicator.
pub type Resolver = Arc<dyn Fn(&str) -> Result<Box<dyn Endpoint>, ReplicationError> + Send + Sync>;

/// Asks a task for its state.
#[derive(Debug, Message)]
#[rtype(result = "TaskState")]
pub struct GetState;

/// One replication task. It runs from `started` until it completes (one-shot), fails after
/// its retries, or is stopped; stopping the actor stops the task.
pub struct Replicator {
    id: String,
    spec: TaskSpec,
    resolve: Resolver,
    state: Arc<Mutex<TaskState>>,
    done: Option<tokio::sync::oneshot::Sender<TaskState>>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("id", &self.id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Retries of a one-shot task before it fails.
const ONE_SHOT_RETRIES: u32 = 5;

impl Replicator {
    /// A task; `done` receives its final state when it ends.
    pub fn new(
        spec: TaskSpec,
        resolve: Resolver,
        done: Option<tokio::sync::oneshot::Sender<TaskState>>,
    ) -> Self {
        let id = task_id(&spec);
        let state = TaskState {
            id: id.clone(),
            state: "running".into(),
            spec: Some(spec.clone()),
            ..TaskState::default()
        };
        Self {
            id,
            spec,
            resolve,
            state: Arc::new(Mutex::new(state)),
            done,
        }
    }

    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

async fn run_task(id: String, spec: TaskSpec, resolve: Resolver, state: Arc<Mutex<TaskState>>) {
    let mut trie = TopicTrie::new();
    for f in &spec.filter {
        match TopicFilter::parse(f) {
            Ok(f) => trie.insert(&f, ()),
            Err(e) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.state = "failed".into();
                s.error = Some(e.to_string());
                return;
            }
        }
    }
    loop {
        let result = async {
            let a = resolve(&spec.source)?;
            let b = resolve(&spec.target)?;
            let push = matches!(spec.direction, Direction::Push | Direction::Sync);
            let pull = matches!(spec.direction, Direction::Pull | Direction::Sync);
            if spec.continuous {
                // Both directions follow their sources at once.
                let p = async {
                    if push {
                        replicate_once(&id, "push", a.as_ref(), b.as_ref(), &trie, &state, true)
                            .await
                    } else {
                        std::future::pending().await
                    }
                };
                let q = async {
                    if pull {
                        replicate_once(&id, "pull", b.as_ref(), a.as_ref(), &trie, &state, true)
                            .await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! { r = p => r, r = q => r }
            } else {
                if push {
                    replicate_once(&id, "push", a.as_ref(), b.as_ref(), &trie, &state, false)
                        .await?;
                }
                if pull {
                    replicate_once(&id, "pull", b.as_ref(), a.as_ref(), &trie, &state, false)
                        .await?;
                }
                Ok(())
            }
        }
        .await;
        let finished = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    s.state = "completed".into();
                    s.error = None;
                    true
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "replication failed; retrying");
                    s.error = Some(e.to_string());
                    s.retries += 1;
                    let give_up = !spec.continuous && s.retries > ONE_SHOT_RETRIES;
                    if give_up {
                        s.state = "failed".into();
                    }
                    give_up
                }
            }
        };
        if finished {
            return;
        }
        // Exponential backoff with jitter, up to a minute; a batch that succeeds resets the
        // retry count, and with it the backoff.
        let retries = state.lock().unwrap_or_else(|e| e.into_inner()).retries;
        let backoff = (Duration::from_millis(500) * 2u32.pow(retries.saturating_sub(1).min(7)))
            .min(Duration::from_secs(60));
        let jitter = {
            let mut b = [0u8; 2];
            let _ = getrandom::fill(&mut b);
            u16::from_le_bytes(b) as u64 % (backoff.as_millis() as u64 / 2 + 1)
        };
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
    }
}

impl Actor for Replicator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let fut = run_task(
            self.id.clone(),
            self.spec.clone(),
            self.resolve.clone(),
            self.state.clone(),
        );
        // A finished task stays for `/replications` until removed; nothing runs then.
        ctx.spawn(fut.into_actor(self).map(|(), act, _ctx| {
            let state = act.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(done) = act.done.take() {
                let _ = done.send(state);
            }
        }));
    }
}

impl Handler<GetState> for Replicator {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Stops the task (it can be started again; its checkpoints remain).
#[derive(Debug, Message)]
#[rtype(result = "TaskState")]
pub struct Stop;

impl Handler<Stop> for Replicator {
    type Result = MessageResult<Stop>;

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) -> Self::Result {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.state == "running" {
            s.state = "paused".into();
        }
        let out = s.clone();
        drop(s);
        ctx.stop();
        MessageResult(out)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use cooper_protocols::ids::BarrelName;

    use super::*;
    use crate::barrel::store::Store;
    use crate::barrel::Barrel;

    const CP: &str = "_local/cooper-t-push";

    fn barrel(dir: &tempfile::TempDir, name: &str) -> BarrelHandle {
        let store = Arc::new(
            Store::open(&dir.path().join(format!("{name}.redb")), Default::default()).unwrap(),
        );
        Barrel::start(BarrelName::new(name).unwrap(), store, None)
    }

    async fn fill(b: &BarrelHandle, from: usize, to: usize) {
        for start in (from..to).step_by(1000) {
            let ops = (start..to.min(start + 1000))
                .map(|n| {
                    let doc = json!({"_id": format!("d{n:06}"), "n": n});
                    WriteOp::Edit(document::split(doc).unwrap())
                })
                .collect();
            assert!(b.write(ops).await.unwrap().iter().all(Result::is_ok));
        }
    }

    fn last_seq(b: &BarrelHandle) -> String {
        b.changes(0, 1 << 20)
            .unwrap()
            .last()
            .map_or(0, |r| r.seq)
            .to_string()
    }

    /// The seq a barrel's checkpoint of task `t` records.
    fn checkpointed(b: &BarrelHandle) -> Option<String> {
        let (cp, _) = b.get_local(CP).ok()?;
        Some(seq_text(cp.get("source_last_seq")?))
    }

    /// The seq a task waited for changes after, and the target's checkpoint then.
    type Wait = (String, Option<String>);

    /// A local endpoint that counts its calls, fails some, and notes the target's checkpoint
    /// whenever it starts waiting for changes.
    #[derive(Debug)]
    struct Spy {
        inner: LocalEndpoint,
        changes: Rc<Cell<usize>>,
        fail_changes_at: usize,
        bulk_docs: Cell<usize>,
        fail_bulk_docs_at: usize,
        peer: Option<BarrelHandle>,
        waits: Rc<RefCell<Vec<Wait>>>,
        /// Another spy's `changes` count, noted when each `bulk_docs` returns.
        watch: Option<Rc<Cell<usize>>>,
        seen: Rc<RefCell<Vec<usize>>>,
        /// The writes asked of it, in order: `bulk_docs`, `ensure_full_commit`, `put_local`.
        calls: RefCell<Vec<&'static str>>,
        /// The number of revisions asked by each `bulk_get`, and how many `bulk_get`s were in
        /// flight then; its `fetches_in_flight`.
        fetched: RefCell<Vec<(usize, usize)>>,
        in_flight: Rc<Cell<usize>>,
        fetches_in_flight: usize,
    }

    impl Spy {
        fn new(b: &BarrelHandle) -> Self {
            Self {
                inner: LocalEndpoint::new(b.clone()),
                changes: Rc::default(),
                fail_changes_at: usize::MAX,
                bulk_docs: Cell::new(0),
                fail_bulk_docs_at: usize::MAX,
                peer: None,
                waits: Rc::default(),
                watch: None,
                seen: Rc::default(),
                calls: RefCell::default(),
                fetched: RefCell::default(),
                in_flight: Rc::default(),
                fetches_in_flight: 1,
            }
        }
    }

    fn down() -> ReplicationError {
        ReplicationError::Unreachable {
            endpoint: "spy".into(),
            reason: "down".into(),
        }
    }

    impl Endpoint for Spy {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn changes(&self, since: &str, limit: usize) -> LocalBoxFuture<'_, Res<ChangesBatch>> {
            let n = self.changes.get() + 1;
            self.changes.set(n);
            if n >= self.fail_changes_at {
                return Box::pin(async { Err(down()) });
            }
            self.inner.changes(since, limit)
        }
        fn wait_for_changes<'a>(&'a self, since: &'a str) -> LocalBoxFuture<'a, Res<()>> {
            let cp = self.peer.as_ref().and_then(checkpointed);
            self.waits.borrow_mut().push((since.to_owned(), cp));
            self.inner.wait_for_changes(since)
        }
        fn revs_diff(
            &self,
            asked: BTreeMap<String, Vec<Rev>>,
        ) -> LocalBoxFuture<'_, Res<BTreeMap<String, Vec<Rev>>>> {
            self.inner.revs_diff(asked)
        }
        fn bulk_get(&self, asked: Vec<(String, Rev)>) -> LocalBoxFuture<'_, Res<Vec<Value>>> {
            let in_flight = self.in_flight.clone();
            self.fetched
                .borrow_mut()
                .push((asked.len(), in_flight.get()));
            in_flight.set(in_flight.get() + 1);
            Box::pin(async move {
                let r = self.inner.bulk_get(asked).await;
                in_flight.set(in_flight.get() - 1);
                r
            })
        }
        fn fetches_in_flight(&self) -> usize {
            self.fetches_in_flight
        }
        fn bulk_docs<'a>(&'a self, docs: &'a mut [Revision]) -> LocalBoxFuture<'a, Res<usize>> {
            let n = self.bulk_docs.get() + 1;
            self.bulk_docs.set(n);
            self.calls.borrow_mut().push("bulk_docs");
            if n >= self.fail_bulk_docs_at {
                return Box::pin(async { Err(down()) });
            }
            Box::pin(async move {
                let r = self.inner.bulk_docs(docs).await;
                if let Some(w) = &self.watch {
                    self.seen.borrow_mut().push(w.get());
                }
                r
            })
        }
        fn ensure_full_commit(&self) -> LocalBoxFuture<'_, Res<()>> {
            self.calls.borrow_mut().push("ensure_full_commit");
            self.inner.ensure_full_commit()
        }
        fn get_local<'a>(&'a self, id: &'a str) -> LocalBoxFuture<'a, Res<Option<Value>>> {
            self.inner.get_local(id)
        }
        fn put_local<'a>(&'a self, id: &'a str, body: Value) -> LocalBoxFuture<'a, Res<()>> {
            self.calls.borrow_mut().push("put_local");
            self.inner.put_local(id, body)
        }
    }

    async fn run(source: &dyn Endpoint, target: &dyn Endpoint) -> (Res<()>, TaskState) {
        let state = Mutex::new(TaskState::default());
        let r = replicate_once(
            "t",
            "push",
            source,
            target,
            &TopicTrie::new(),
            &state,
            false,
        )
        .await;
        (r, state.into_inner().unwrap())
    }

    #[actix_rt::test]
    async fn a_one_shot_run_of_several_batches_ends_checkpointed_and_a_second_copies_nothing() {
        const N: usize = 3 * BATCH + 17;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, N).await;
        let (src, dst) = (Spy::new(&a), Spy::new(&b));
        let (r, s) = run(&src, &dst).await;
        r.unwrap();
        assert_eq!((s.docs_read, s.docs_written), (N as u64, N as u64), "{s:?}");
        assert_eq!(s.doc_write_failures, 0);
        let end = last_seq(&a);
        assert_eq!(s.last_seq["push"], end);
        assert_eq!(
            checkpointed(&b),
            Some(end.clone()),
            "the target's checkpoint"
        );
        assert_eq!(
            checkpointed(&a),
            Some(end.clone()),
            "the source's checkpoint"
        );
        assert_eq!(b.counts().unwrap().doc_count, N as u64);
        assert_eq!(dst.bulk_docs.get(), 4, "one write per batch");
        // Each checkpoint on the target follows a full commit, and only checkpoints do.
        let calls = dst.calls.borrow().clone();
        let commits = calls.iter().filter(|c| **c == "ensure_full_commit").count();
        assert!(
            commits >= 2,
            "after the first batch and at the end: {calls:?}"
        );
        for (i, c) in calls.iter().enumerate() {
            match *c {
                "put_local" => assert_eq!(calls[i - 1], "ensure_full_commit", "{calls:?}"),
                "ensure_full_commit" => assert_eq!(calls[i + 1], "put_local", "{calls:?}"),
                _ => {}
            }
        }

        let (src, dst) = (Spy::new(&a), Spy::new(&b));
        let (r, s) = run(&src, &dst).await;
        r.unwrap();
        assert_eq!((s.docs_read, s.docs_written), (0, 0), "{s:?}");
        assert_eq!(dst.bulk_docs.get(), 0);
        assert_eq!(checkpointed(&b), Some(end));
    }

    #[actix_rt::test]
    async fn the_next_batch_is_read_while_one_is_written_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, 4 * BATCH).await;
        let src = Spy::new(&a);
        let mut dst = Spy::new(&b);
        dst.watch = Some(src.changes.clone());
        let (r, s) = run(&src, &dst).await;
        r.unwrap();
        assert_eq!(s.docs_written, 4 * BATCH as u64);
        // While batch k was written, batch k + 1's documents were read and its successor's
        // changes asked for (a full batch: more are likely), and no further: the changes
        // requests made by the end of each write.
        assert_eq!(
            *dst.seen.borrow(),
            vec![3, 4, 5, 5],
            "changes asked by each write's end"
        );
    }

    #[actix_rt::test]
    async fn a_failed_write_stops_the_run_and_the_next_resumes_from_the_checkpoint() {
        const N: usize = 4 * BATCH;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, N).await;
        let src = Spy::new(&a);
        let mut dst = Spy::new(&b);
        dst.fail_bulk_docs_at = 3;
        let (r, first) = run(&src, &dst).await;
        assert_eq!(r, Err(down()));
        // Two batches were committed and counted; the first is checkpointed at least.
        assert_eq!(first.docs_written, 2 * BATCH as u64, "{first:?}");
        assert_eq!(b.counts().unwrap().doc_count, 2 * BATCH as u64);
        let cp: u64 = checkpointed(&b).unwrap().parse().unwrap();
        assert!(
            (BATCH as u64..=2 * BATCH as u64).contains(&cp),
            "the checkpoint holds only committed batches: {cp}"
        );
        assert_eq!(checkpointed(&a), Some(cp.to_string()));

        let (r, second) = run(&Spy::new(&a), &Spy::new(&b)).await;
        r.unwrap();
        assert_eq!(
            second.docs_read,
            N as u64 - cp,
            "it resumed from the checkpoint"
        );
        assert_eq!(
            second.docs_written,
            2 * BATCH as u64,
            "the target had the rest"
        );
        assert_eq!(b.counts().unwrap().doc_count, N as u64);
        assert_eq!(checkpointed(&b), Some(last_seq(&a)));
    }

    #[actix_rt::test]
    async fn a_failed_read_lets_the_batches_read_before_it_be_written_first() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, 3 * BATCH).await;
        let mut src = Spy::new(&a);
        src.fail_changes_at = 3;
        let dst = Spy::new(&b);
        let (r, s) = run(&src, &dst).await;
        assert_eq!(r, Err(down()));
        assert_eq!(
            (s.docs_read, s.docs_written),
            (2 * BATCH as u64, 2 * BATCH as u64),
            "{s:?}"
        );
        assert_eq!(b.counts().unwrap().doc_count, 2 * BATCH as u64);
    }

    #[actix_rt::test]
    async fn a_continuous_task_checkpoints_before_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, BATCH + 5).await;
        let mut src = Spy::new(&a);
        src.peer = Some(b.clone());
        let waits = src.waits.clone();
        let dst = LocalEndpoint::new(b.clone());
        let state = Arc::new(Mutex::new(TaskState::default()));
        let task = {
            let state = state.clone();
            actix_rt::spawn(async move {
                let trie = TopicTrie::new();
                replicate_once("t", "push", &src, &dst, &trie, &state, true).await
            })
        };
        let wait_for = |n: usize| {
            let waits = waits.clone();
            async move {
                for _ in 0..2000 {
                    if waits.borrow().len() >= n {
                        return waits.borrow()[n - 1].clone();
                    }
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("the task never waited for changes: {:?}", waits.borrow());
            }
        };
        // Two batches, the second within a second of the first: the checkpoint of the
        // second is written when the task catches up, before it waits.
        let end = last_seq(&a);
        assert_eq!(wait_for(1).await, (end.clone(), Some(end.clone())));
        assert_eq!(checkpointed(&a), Some(end));
        fill(&a, BATCH + 5, BATCH + 8).await;
        let end = last_seq(&a);
        assert_eq!(wait_for(2).await, (end.clone(), Some(end.clone())));
        let s = state.lock().unwrap().clone();
        assert_eq!(
            (s.docs_read, s.docs_written),
            (BATCH as u64 + 8, BATCH as u64 + 8)
        );
        assert_eq!(s.last_seq["push"], end);
        task.abort();
        assert!(task.await.is_err(), "still running until stopped");
        assert_eq!(b.counts().unwrap().doc_count, BATCH as u64 + 8);
    }

    #[actix_rt::test]
    async fn a_remote_source_gets_two_bulk_gets_at_once_of_fewer_revisions_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (barrel(&dir, "a"), barrel(&dir, "b"));
        fill(&a, 0, 2 * BATCH).await;
        let mut src = Spy::new(&a);
        src.fetches_in_flight = 2;
        let (r, s) = run(&src, &Spy::new(&b)).await;
        r.unwrap();
        assert_eq!(s.docs_written, 2 * BATCH as u64);
        // The first request alone, then two at a time, FETCH revisions each; all of a batch
        // answered before the next.
        let fetched = src.fetched.borrow().clone();
        let per_batch = BATCH / FETCH;
        assert_eq!(fetched.len(), 2 * per_batch, "{fetched:?}");
        assert!(fetched.iter().all(|&(n, _)| n == FETCH), "{fetched:?}");
        let in_flight: Vec<usize> = fetched.iter().map(|&(_, f)| f).collect();
        let mut expected = vec![0, 0];
        expected.extend([1].repeat(per_batch - 2));
        expected.push(0);
        expected.extend([1].repeat(per_batch - 1));
        assert_eq!(in_flight, expected);

        // Documents of 50 kB: a request asks for about WRITE_BUDGET bytes of them.
        const BIG: usize = 50_000;
        let (c, d) = (barrel(&dir, "c"), barrel(&dir, "d"));
        let ops = (0..200)
            .map(|n| {
                let doc = json!({"_id": format!("big{n:03}"), "pad": "x".repeat(BIG)});
                WriteOp::Edit(document::split(doc).unwrap())
            })
            .collect();
        assert!(c.write(ops).await.unwrap().iter().all(Result::is_ok));
        let mut src = Spy::new(&c);
        src.fetches_in_flight = 2;
        let dst = Spy::new(&d);
        let (r, s) = run(&src, &dst).await;
        r.unwrap();
        assert_eq!(s.docs_written, 200);
        let fetched: Vec<usize> = src.fetched.borrow().iter().map(|&(n, _)| n).collect();
        assert_eq!(fetched[0], FETCH, "{fetched:?}");
        assert_eq!(fetched.iter().sum::<usize>(), 200, "{fetched:?}");
        assert!(
            fetched[1..]
                .iter()
                .all(|&n| n <= WRITE_BUDGET / BIG && n > 1),
            "{fetched:?}"
        );
        assert_eq!(d.counts().unwrap().doc_count, 200);
        assert!(
            dst.bulk_docs.get() >= 3,
            "requests of WRITE_BUDGET bytes at most"
        );
    }

    /// A CouchDB-like database over HTTP on its own threads: `_local` documents with their
    /// revisions, `_ensure_full_commit` (or a 404 without `full_commit`), `_bulk_docs` (bodies
    /// kept); every request is logged as "METHOD path".
    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        locals: Arc<Mutex<BTreeMap<String, (u64, Value)>>>,
        bodies: Arc<Mutex<Vec<Value>>>,
        full_commit: bool,
    }

    impl Fake {
        fn start(full_commit: bool) -> (Self, String) {
            use std::net::TcpListener;
            let fake = Fake {
                full_commit,
                ..Fake::default()
            };
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/db", listener.local_addr().unwrap());
            let f = fake.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let f = f.clone();
                    std::thread::spawn(move || f.serve(conn));
                }
            });
            (fake, url)
        }

        fn log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }

        fn serve(&self, mut conn: std::net::TcpStream) {
            use std::io::{Read, Write};
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            self.log.lock().unwrap().push(format!("{method} {path}"));
            let (status, answer) = self.answer(method, path, body);
            let answer = answer.to_string();
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            );
        }

        fn answer(&self, method: &str, path: &str, mut body: Value) -> (u16, Value) {
            let mut locals = self.locals.lock().unwrap();
            match (method, path.strip_prefix("/db/_local/")) {
                ("GET", Some(id)) => match locals.get(id) {
                    Some((n, v)) => {
                        let mut v = v.clone();
                        v["_id"] = json!(format!("_local/{id}"));
                        v["_rev"] = json!(format!("0-{n}"));
                        (200, v)
                    }
                    None => (404, json!({"error": "not_found"})),
                },
                ("PUT", Some(id)) => {
                    let asked = body.as_object_mut().unwrap().remove("_rev");
                    let current = locals.get(id).map(|(n, _)| json!(format!("0-{n}")));
                    if asked != current {
                        return (409, json!({"error": "conflict"}));
                    }
                    let n = locals.get(id).map_or(1, |(n, _)| n + 1);
                    locals.insert(id.to_owned(), (n, body));
                    (201, json!({"ok": true, "id": id, "rev": format!("0-{n}")}))
                }
                ("POST", _) if path == "/db/_ensure_full_commit" && self.full_commit => {
                    (201, json!({"ok": true}))
                }
                ("POST", _) if path == "/db/_bulk_docs" => {
                    self.bodies.lock().unwrap().push(body);
                    (201, json!([]))
                }
                _ => (404, json!({"error": "not_found"})),
            }
        }
    }

    #[actix_rt::test]
    async fn a_checkpoint_over_http_is_one_put_and_a_stale_rev_is_read_again() {
        let (fake, url) = Fake::start(true);
        let ep = HttpEndpoint::new(&url, None).unwrap();
        let (get, put) = ("GET /db/_local/cp", "PUT /db/_local/cp");
        // Unknown at first: read, then written.
        ep.put_local("_local/cp", json!({"n": 1})).await.unwrap();
        assert_eq!(fake.log(), [get, put]);
        // Then written with the rev of the last write.
        ep.put_local("_local/cp", json!({"n": 2})).await.unwrap();
        assert_eq!(fake.log(), [put]);
        // Someone else wrote it: the PUT is refused, the document read, the PUT done again.
        fake.locals.lock().unwrap().get_mut("cp").unwrap().0 += 1;
        ep.put_local("_local/cp", json!({"n": 3})).await.unwrap();
        assert_eq!(fake.log(), [put, get, put]);
        assert_eq!(fake.locals.lock().unwrap()["cp"], (4, json!({"n": 3})));

        // A run reads the checkpoint when it starts: its first write is one PUT, as is the
        // first write of a checkpoint that is not there.
        let ep = HttpEndpoint::new(&url, None).unwrap();
        let cp = ep.get_local("_local/cp").await.unwrap().unwrap();
        assert_eq!((&cp["n"], &cp["_rev"]), (&json!(3), &json!("0-4")));
        ep.put_local("_local/cp", json!({"n": 4})).await.unwrap();
        assert_eq!(ep.get_local("_local/new").await.unwrap(), None);
        ep.put_local("_local/new", json!({"n": 1})).await.unwrap();
        assert_eq!(
            fake.log(),
            [get, put, "GET /db/_local/new", "PUT /db/_local/new"]
        );
        assert_eq!(fake.locals.lock().unwrap()["cp"], (5, json!({"n": 4})));

        // Writes are a _bulk_docs each, with no commit; the commit is asked for apart.
        let mut docs = vec![
            Revision::new(json!({"_id": "a", "_rev": "1-ab", "x": [1, {"y": "é\n"}]})),
            Revision::new(json!({"_id": "b", "_rev": "2-cd", "_deleted": true})),
        ];
        assert_eq!(ep.bulk_docs(&mut docs).await.unwrap(), 0);
        assert_eq!(fake.log(), ["POST /db/_bulk_docs"]);
        assert_eq!(
            fake.bodies.lock().unwrap().pop().unwrap(),
            json!({"docs": [docs[0].doc, docs[1].doc], "new_edits": false})
        );
        ep.ensure_full_commit().await.unwrap();
        assert_eq!(fake.log(), ["POST /db/_ensure_full_commit"]);

        // A peer without _ensure_full_commit has nothing to commit.
        let (fake, url) = Fake::start(false);
        let ep = HttpEndpoint::new(&url, None).unwrap();
        ep.ensure_full_commit().await.unwrap();
        assert_eq!(fake.log(), ["POST /db/_ensure_full_commit"]);
    }
}
