//! The `Replicator` actor: one replication task, CouchDB's replication protocol between two
//! [`Endpoint`]s — a local barrel, or a CouchDB-protocol database over HTTP (another Cooper
//! node's `/couch/<db>`, pouchdb-server, CouchDB). A third transport (libp2p) implements the
//! same trait.
//!
//! One direction works in batches: read the source's changes after the checkpoint, ask the
//! target which revisions it lacks (`_revs_diff`), fetch them with their history and
//! attachments (`_bulk_get`), write them as they are (`_bulk_docs`, `new_edits=false`), then
//! record the checkpoint in `_local/` on both sides — only after the target has committed, so
//! a restart, or a peer that comes back after months, resumes where it stopped. Continuous
//! tasks then wait for the next change (the listener hub locally, a longpoll feed remotely),
//! never in a sleep loop. Errors are retried with exponential backoff and jitter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::barrel::store::{OpenRev, OpenRevs, WriteOp};
use crate::barrel::BarrelHandle;
use crate::error::BarrelError;
use crate::listener::Since;

/// Changes read per batch.
pub const BATCH: usize = 500;
/// Revisions fetched per `_bulk_get`.
const FETCH: usize = 100;
/// Longest wait of a longpoll on a remote source before asking again.
const LONGPOLL: Duration = Duration::from_secs(55);
/// Most bytes of documents one `_bulk_docs` request carries (a larger document goes alone).
const WRITE_BUDGET: usize = 4 << 20;
/// Sessions kept in a checkpoint's history.
const HISTORY: usize = 50;

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
    /// Writes revisions as they are (`new_edits=false`); returns how many failed.
    fn bulk_docs(&self, docs: Vec<Value>) -> LocalBoxFuture<'_, Res<usize>>;
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
            Ok(self
                .barrel
                .revs_diff(&asked)?
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

    fn bulk_docs(&self, docs: Vec<Value>) -> LocalBoxFuture<'_, Res<usize>> {
        Box::pin(async move {
            let mut failed = 0;
            let mut ops = Vec::with_capacity(docs.len());
            for d in docs {
                match document::split(d) {
                    Ok(doc) => ops.push(WriteOp::Replicate(doc)),
                    Err(_) => failed += 1,
                }
            }
            let results = self.barrel.write(ops).await?;
            Ok(failed + results.iter().filter(|r| r.is_err()).count())
        })
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
        })
    }

    async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<&Value>,
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
            Some(b) => req.send_json(b).await,
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
                let mut out = Vec::new();
                for r in v
                    .get("results")
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.bad("_bulk_get without results"))?
                {
                    for d in r
                        .get("docs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(ok) = d.get("ok") {
                            out.push(ok.clone());
                        }
                    }
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
                for d in v.as_array().into_iter().flatten() {
                    if let Some(ok) = d.get("ok") {
                        out.push(ok.clone());
                    }
                }
            }
            Ok(out)
        })
    }

    fn bulk_docs(&self, docs: Vec<Value>) -> LocalBoxFuture<'_, Res<usize>> {
        Box::pin(async move {
            let v = self
                .ok(
                    awc::http::Method::POST,
                    "/_bulk_docs",
                    Some(&json!({"docs": docs, "new_edits": false})),
                )
                .await?;
            let failed = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r.get("error").is_some())
                .count();
            // CouchDB acknowledges before fsync unless asked.
            let _ = self
                .call(
                    awc::http::Method::POST,
                    "/_ensure_full_commit",
                    Some(&json!({})),
                )
                .await;
            Ok(failed)
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
                200 => Ok(Some(v)),
                404 => Ok(None),
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
            if let Some(current) = self.get_local(id).await? {
                if let Some(rev) = current.get("_rev") {
                    body["_rev"] = rev.clone();
                }
            }
            self.ok(awc::http::Method::PUT, &path, Some(&body)).await?;
            Ok(())
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
    let mut since = start_seq(source_cp.as_ref(), target_cp.as_ref());
    let mut history: Vec<Value> = target_cp
        .as_ref()
        .and_then(|c| c.get("history"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    loop {
        let batch = source.changes(&since, BATCH).await?;
        if batch.rows.is_empty() {
            if !continuous {
                return Ok(());
            }
            source.wait_for_changes(&since).await?;
            continue;
        }
        let read = batch.rows.len() as u64;
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
        let (mut written, mut failed) = (0u64, 0u64);
        // The whole batch goes to the target in as few commits as its size allows: each
        // commit costs the target an fsync and its page writes, whatever it holds.
        let mut ready: Vec<Value> = Vec::new();
        let mut ready_bytes = 0;
        for (i, chunk) in wanted.chunks(FETCH).enumerate() {
            for d in source.bulk_get(chunk.to_vec()).await? {
                if passes(filters, &d) {
                    ready_bytes += serde_json::to_vec(&d).map_or(0, |v| v.len());
                    ready.push(d);
                }
            }
            let last = (i + 1) * FETCH >= wanted.len();
            if ready_bytes >= WRITE_BUDGET || (last && !ready.is_empty()) {
                let (w, f) = write_all(target, std::mem::take(&mut ready)).await?;
                written += w;
                failed += f;
                ready_bytes = 0;
            }
        }
        since = batch.last_seq.clone();
        // The target committed (its bulk_docs answered): record the checkpoint on both sides.
        history.insert(0, json!({"session_id": session, "recorded_seq": since}));
        history.truncate(HISTORY);
        let cp = json!({"session_id": session, "source_last_seq": since, "history": history, "replicator": "cooper", "version": 1});
        target.put_local(&checkpoint_id, cp.clone()).await?;
        source.put_local(&checkpoint_id, cp).await?;
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.docs_read += read;
        s.docs_written += written;
        s.doc_write_failures += failed;
        s.last_seq.insert(direction.to_owned(), since.clone());
        s.error = None;
        s.retries = 0;
        drop(s);
        metrics::counter!("cooper_replication_docs_written_total", "task" => id.to_owned())
            .increment(written);
        metrics::counter!("cooper_replication_docs_read_total", "task" => id.to_owned())
            .increment(read);
    }
}

/// Writes documents to `target` in requests under a byte budget (attachments travel inline);
/// a target with a smaller request limit answers 413, and the group is halved and retried.
/// Returns (written, failed).
async fn write_all(target: &dyn Endpoint, docs: Vec<Value>) -> Res<(u64, u64)> {
    let (mut written, mut failed) = (0, 0);
    let mut pending = by_size(docs, WRITE_BUDGET);
    pending.reverse();
    while let Some(group) = pending.pop() {
        let n = group.len() as u64;
        match target.bulk_docs(group.clone()).await {
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
fn by_size(docs: Vec<Value>, budget: usize) -> Vec<Vec<Value>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for d in docs {
        let n = serde_json::to_vec(&d).map_or(0, |v| v.len());
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
