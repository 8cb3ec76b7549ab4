//! Replication with the real PouchDB (DESIGN §6, CouchDB-compatible API): a PouchDB with the
//! memory adapter, driven by a Node.js script, pushes to a node and pulls from it (documents
//! with several revisions, attachments and deletions), keeps a live two-way sync in which a
//! write on either side reaches the other, and converges with the node on the same winner and
//! the same `_conflicts` after conflicting edits on both sides. pouchdb-server, run as a child
//! process, replicates with a node both ways, started from the node (`POST /replicate`) and
//! from pouchdb-server (`POST /_replicate`); after each replication both databases hold the
//! same documents with the same revision trees, bodies and attachments.
//!
//! The Node.js packages live in `tests/pouchdb-clients`; `npm ci --prefix tests/pouchdb-clients
//! --ignore-scripts` installs them from the lock file (no install script is needed: the
//! memory adapter is pure JavaScript). Nothing here sleeps to synchronize or asserts on timing;
//! every wait is bounded by [`HANG_GUARD`], which only turns a hang into a failure. How long a
//! live change took to cross is printed (`--nocapture`), never asserted.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{Http, TestNode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Turns a hang into a failure; far longer than any step takes.
const HANG_GUARD: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The Node.js side

/// `tests/pouchdb-clients`, whose dependencies must be installed.
fn clients_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pouchdb-clients");
    assert!(
        dir.join("node_modules/pouchdb").is_dir()
            && dir.join("node_modules/pouchdb-adapter-memory").is_dir()
            && dir.join("node_modules/pouchdb-server").is_dir(),
        "PouchDB and pouchdb-server are not installed: run `npm ci --prefix tests/pouchdb-clients --ignore-scripts`"
    );
    dir
}

/// A running `sync.mjs`: a PouchDB (memory adapter) that answers one JSON line per command.
/// Killed when dropped before it has exited (a failed test leaves no process behind).
struct Pouch {
    child: Option<Child>,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::Receiver<String>,
    stderr: Option<actix_rt::task::JoinHandle<String>>,
}

impl Pouch {
    /// Starts `node sync.mjs <remote>`.
    fn start(remote: &str) -> Self {
        let dir = clients_dir();
        let mut child = Command::new("node")
            .arg(dir.join("sync.mjs"))
            .arg(remote)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20 or later is needed): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::channel(64);
        // Blocking reads run on the blocking pool: the node's actors run on this test thread.
        drop(actix_rt::task::spawn_blocking(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        }));
        let stderr = actix_rt::task::spawn_blocking(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            child: Some(child),
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Sends a command and returns its answer.
    async fn call(&mut self, cmd: Value) -> Value {
        // A line of a few hundred bytes into a pipe the script keeps reading: never blocks long.
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("PouchDB script: cannot send {cmd}: {e}"));
        let line = match tokio::time::timeout(HANG_GUARD, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let stderr = self.stderr.take().unwrap().await.unwrap();
                panic!("PouchDB script ended during {cmd}:\n{stderr}");
            }
            Err(_) => {
                // Killed, its stderr ends: show what it said about the hang.
                if let Some(child) = &mut self.child {
                    let _ = child.kill();
                }
                let stderr = self.stderr.take().unwrap().await.unwrap();
                panic!("PouchDB script: no answer to {cmd} within {HANG_GUARD:?}:\n{stderr}");
            }
        };
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("PouchDB script: not JSON ({e}): {line}"));
        assert_eq!(answer["op"], cmd["op"], "PouchDB script: answer to {cmd}");
        answer
    }

    /// Writes a document locally; returns its new revision.
    async fn put(&mut self, doc: Value) -> String {
        let a = self.call(json!({"op": "put", "doc": doc})).await;
        a["rev"].as_str().unwrap().to_owned()
    }

    /// Deletes a document locally; returns the tombstone's revision.
    async fn remove(&mut self, id: &str, rev: &str) -> String {
        let a = self
            .call(json!({"op": "remove", "id": id, "rev": rev}))
            .await;
        a["rev"].as_str().unwrap().to_owned()
    }

    /// A local document read with `conflicts: true`.
    async fn get_with_conflicts(&mut self, id: &str) -> Value {
        let a = self
            .call(json!({"op": "get", "id": id, "opts": {"conflicts": true}}))
            .await;
        assert!(a["doc"].is_object(), "PouchDB get {id}: {a}");
        a["doc"].clone()
    }

    /// A one-shot replication (`push`, `pull` or `sync`); returns its result.
    async fn replicate(&mut self, op: &str) -> Value {
        let a = self.call(json!({"op": op})).await;
        a["result"].clone()
    }

    /// Every local document with all its leaves, in the same form as [`snapshot`].
    async fn dump(&mut self) -> BTreeMap<String, Vec<Value>> {
        let a = self.call(json!({"op": "dump"})).await;
        a["docs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, leaves)| (id.clone(), normalize_leaves(leaves)))
            .collect()
    }

    /// Ends the script, which must exit cleanly.
    async fn exit(mut self) {
        self.call(json!({"op": "exit"})).await;
        // Its output ends when it exits.
        let rest = tokio::time::timeout(HANG_GUARD, self.lines.recv())
            .await
            .expect("PouchDB script exits");
        assert_eq!(rest, None, "PouchDB script: output after exit");
        let mut child = self.child.take().unwrap();
        let status: ExitStatus = actix_rt::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let stderr = self.stderr.take().unwrap().await.unwrap();
        assert!(status.success(), "PouchDB script: {status}\n{stderr}");
    }
}

impl Drop for Pouch {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pouchdb-server child process (in-memory databases), killed when dropped.
struct PouchServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl PouchServer {
    /// Starts pouchdb-server on a free loopback port and waits until it listens.
    async fn start() -> Self {
        let clients = clients_dir();
        // A port the system just handed out and nobody else was given meanwhile.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // It writes config.json and log.txt into its working directory.
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        let mut child = Command::new("node")
            .arg(clients.join("node_modules/pouchdb-server/bin/pouchdb-server"))
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .args(["--in-memory", "--no-color"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20 or later is needed): {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        // It logs `pouchdb-server has started on …` once it listens, then a line per request;
        // the reader keeps draining them so that the pipe never fills.
        let (started, listening) = tokio::sync::oneshot::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        drop(actix_rt::task::spawn_blocking(move || {
            let mut started = Some(started);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("has started on") {
                    if let Some(s) = started.take() {
                        let _ = s.send(());
                    }
                }
                kept.lock().unwrap().push(line);
            }
        }));
        let up = tokio::time::timeout(HANG_GUARD, listening).await;
        if !matches!(up, Ok(Ok(()))) {
            let _ = server.child.kill();
            let _ = server.child.wait();
            let err = std::fs::read_to_string(server.dir.path().join("stderr.txt"));
            panic!(
                "pouchdb-server did not start on {}: {:?}\nstdout: {:?}\nstderr: {}",
                server.url,
                up,
                log.lock().unwrap(),
                err.unwrap_or_default()
            );
        }
        server
    }
}

impl Drop for PouchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Creates a barrel.
async fn create_barrel(http: &Http, name: &str) {
    let a = http.call("PUT", &format!("/barrels/{name}")).await;
    assert_eq!(a.status, 201, "create {name}: {}", a.body);
}

/// Writes a document over the node's REST API; returns its new revision.
async fn rest_put(http: &Http, barrel: &str, id: &str, body: Value) -> String {
    let a = http
        .json("PUT", &format!("/barrels/{barrel}/docs/{id}"), &body)
        .await;
    assert_eq!(a.status, 201, "PUT {barrel}/{id} {body}: {}", a.body);
    a.body["rev"].as_str().unwrap().to_owned()
}

/// Deletes a document over the node's REST API; returns the tombstone's revision.
async fn rest_delete(http: &Http, barrel: &str, id: &str, rev: &str) -> String {
    let a = http
        .call("DELETE", &format!("/barrels/{barrel}/docs/{id}?rev={rev}"))
        .await;
    assert_eq!(a.status, 200, "DELETE {barrel}/{id}?rev={rev}: {}", a.body);
    a.body["rev"].as_str().unwrap().to_owned()
}

/// Adds an attachment over the node's REST API; returns the document's new revision.
async fn rest_attach(http: &Http, barrel: &str, id: &str, rev: &str, name: &str, data: &[u8]) {
    let a = http
        .send(
            "PUT",
            &format!("/barrels/{barrel}/docs/{id}/attachments/{name}?rev={rev}"),
            &[("Content-Type", "application/octet-stream")],
            Some(data.to_vec()),
        )
        .await;
    assert_eq!(a.status, 201, "attach {name} to {barrel}/{id}: {}", a.body);
}

/// A document of a barrel, read over REST with `conflicts=true` (200 expected).
async fn rest_get_with_conflicts(http: &Http, barrel: &str, id: &str) -> Value {
    let a = http
        .get(&format!("/barrels/{barrel}/docs/{id}?conflicts=true"))
        .await;
    assert_eq!(a.status, 200, "GET {barrel}/{id}: {}", a.body);
    a.body
}

/// Writes a document on a CouchDB-protocol server (pouchdb-server); returns its new revision.
async fn couch_put(http: &Http, db: &str, id: &str, body: Value) -> String {
    let a = http.json("PUT", &format!("/{db}/{id}"), &body).await;
    assert_eq!(a.status, 201, "PUT {db}/{id} {body}: {}", a.body);
    a.body["rev"].as_str().unwrap().to_owned()
}

/// The leaves of an `open_revs` answer sorted by revision, with attachments inline.
fn normalize_leaves(leaves: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = leaves
        .as_array()
        .unwrap_or_else(|| panic!("open_revs: expected an array: {leaves}"))
        .iter()
        .map(|l| {
            let mut doc = l
                .get("ok")
                .unwrap_or_else(|| panic!("open_revs: a missing leaf: {l}"))
                .clone();
            if let Some(atts) = doc.get_mut("_attachments").and_then(Value::as_object_mut) {
                for att in atts.values_mut() {
                    let a = att.as_object_mut().unwrap();
                    // `length` goes: the node shows it next to inline data, PouchDB does not.
                    a.remove("length");
                    // The content as its length and SHA-256: as exact, and readable in a diff.
                    if let Some(data) = a.get("data").and_then(Value::as_str) {
                        let bytes = STANDARD.decode(data).unwrap_or_else(|e| {
                            panic!("attachment data is not base64 ({e}): {data}")
                        });
                        let hash: String = Sha256::digest(&bytes)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        a.insert(
                            "data".into(),
                            json!(format!("{} bytes, sha256 {hash}", bytes.len())),
                        );
                    }
                }
            }
            doc
        })
        .collect();
    out.sort_by(|a, b| a["_rev"].as_str().cmp(&b["_rev"].as_str()));
    out
}

/// Every document of a CouchDB-protocol database (`<http>/<db>`), deleted ones included, with
/// all its leaves, their `_revisions` and attachments inline.
async fn snapshot(http: &Http, db: &str) -> BTreeMap<String, Vec<Value>> {
    let changes = http.get(&format!("{db}/_changes?style=all_docs")).await;
    assert_eq!(changes.status, 200, "{db}/_changes: {}", changes.body);
    let mut docs = BTreeMap::new();
    for row in changes.body["results"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        let a = http
            .send(
                "GET",
                &format!(
                    "{db}/{}?open_revs=all&revs=true&attachments=true",
                    escape(id)
                ),
                &[("Accept", "application/json")],
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{db}/{id} open_revs=all: {}", a.body);
        docs.insert(id.to_owned(), normalize_leaves(&a.body));
    }
    docs
}

/// Percent-encodes a document id for a URL path (every byte but the unreserved ones).
fn escape(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Asserts two snapshots are equal, naming the first document that differs.
fn assert_same_docs(
    left: &BTreeMap<String, Vec<Value>>,
    right: &BTreeMap<String, Vec<Value>>,
    what: &str,
) {
    let ids = |m: &BTreeMap<String, Vec<Value>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(ids(left), ids(right), "{what}: the same documents");
    for (id, leaves) in left {
        assert_eq!(
            Value::Array(leaves.clone()),
            Value::Array(right[id].clone()),
            "{what}: document {id}"
        );
    }
}

/// Whether `rev` is a leaf of document `id` of a node's barrel (read over the CouchDB API).
async fn node_has_leaf(http: &Http, barrel: &str, id: &str, rev: &str) -> bool {
    let a = http
        .send(
            "GET",
            &format!("/couch/{barrel}/{}?open_revs=all", escape(id)),
            &[("Accept", "application/json")],
            None,
        )
        .await;
    a.status == 200
        && a.body
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["ok"]["_rev"] == rev))
}

/// Waits until `rev` is a leaf of `id` on the node, following the changes feed (longpoll);
/// returns how long it took (reported, never asserted).
async fn wait_on_node(http: &Http, barrel: &str, id: &str, rev: &str) -> Duration {
    let start = Instant::now();
    let wait = async {
        loop {
            let info = http.get(&format!("/barrels/{barrel}")).await;
            assert_eq!(info.status, 200, "{}", info.body);
            let seq = match &info.body["update_seq"] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            if node_has_leaf(http, barrel, id, rev).await {
                return;
            }
            let a = http
                .get(&format!(
                    "/barrels/{barrel}/changes?feed=longpoll&since={seq}&timeout=30000"
                ))
                .await;
            assert_eq!(a.status, 200, "longpoll: {}", a.body);
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("{barrel}/{id} never got {rev} within {HANG_GUARD:?}"));
    start.elapsed()
}

/// The winner of a revision tree with these leaves by the CouchDB/PouchDB rule: live beats
/// deleted, then the higher generation, then the greater hash.
fn expected_winner(leaves: &[(&str, bool)]) -> String {
    let key = |(rev, deleted): &(&str, bool)| {
        let (n, h) = rev.split_once('-').unwrap();
        (!*deleted, n.parse::<u64>().unwrap(), h.to_owned())
    };
    leaves.iter().max_by_key(|l| key(l)).unwrap().0.to_owned()
}

/// A revision's generation.
fn generation(rev: &str) -> u64 {
    rev.split_once('-').unwrap().0.parse().unwrap()
}

/// `_conflicts` of a document as a list of strings (empty when absent).
fn conflicts(doc: &Value) -> Vec<String> {
    doc["_conflicts"]
        .as_array()
        .map(|c| c.iter().map(|r| r.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Asserts a one-shot PouchDB replication result: complete, nothing failed, `written` revisions
/// written.
fn assert_replicated(r: &Value, written: u64, what: &str) {
    assert_eq!(r["ok"], true, "{what}: {r}");
    assert_eq!(r["status"], "complete", "{what}: {r}");
    assert_eq!(r["doc_write_failures"], 0, "{what}: {r}");
    assert_eq!(r["errors"], json!([]), "{what}: {r}");
    assert_eq!(r["docs_written"], written, "{what}: {r}");
}

/// `POST /replicate` on the node (one-shot): must complete without write failures.
async fn node_replicate(http: &Http, source: &str, target: &str) -> Value {
    let a = http
        .json(
            "POST",
            "/replicate",
            &json!({"source": source, "target": target}),
        )
        .await;
    assert_eq!(a.status, 200, "replicate {source} → {target}: {}", a.body);
    assert_eq!(
        a.body["state"], "completed",
        "replicate {source} → {target}: {}",
        a.body
    );
    assert_eq!(
        a.body["doc_write_failures"], 0,
        "replicate {source} → {target}: {}",
        a.body
    );
    a.body
}

/// `POST /_replicate` on pouchdb-server (one-shot): must succeed without write failures.
async fn server_replicate(server: &Http, source: &str, target: &str) -> Value {
    let a = server
        .json(
            "POST",
            "/_replicate",
            &json!({"source": source, "target": target}),
        )
        .await;
    assert_eq!(
        a.status, 200,
        "pouchdb-server replicate {source} → {target}: {}",
        a.body
    );
    assert_eq!(
        a.body["ok"], true,
        "pouchdb-server replicate {source} → {target}: {}",
        a.body
    );
    assert_eq!(
        a.body["doc_write_failures"], 0,
        "pouchdb-server replicate {source} → {target}: {}",
        a.body
    );
    a.body
}

/// Bytes that are not UTF-8, for attachments.
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 256) as u8).collect()
}

/// Writes on a node's barrel the documents both replication tests start from: a plain one,
/// one with three revisions, one with a binary attachment, a deleted one and one with two
/// conflicting branches (written with `new_edits=false`).
async fn seed_node(http: &Http, barrel: &str, prefix: &str) {
    rest_put(
        http,
        barrel,
        &format!("{prefix}1"),
        json!({"kind": "plain", "n": 1, "f": 1.5, "s": "é ✓ 😀", "nested": {"a": [1, {"b": null}]}}),
    )
    .await;
    let id = format!("{prefix}2");
    let mut rev = rest_put(http, barrel, &id, json!({"v": 1})).await;
    for v in 2..=3 {
        rev = rest_put(http, barrel, &id, json!({"v": v, "_rev": rev})).await;
    }
    let id = format!("{prefix}3");
    let rev = rest_put(http, barrel, &id, json!({"kind": "attached"})).await;
    rest_attach(http, barrel, &id, &rev, "blob.bin", &binary(3000)).await;
    let id = format!("{prefix}4");
    let rev = rest_put(http, barrel, &id, json!({"kind": "doomed"})).await;
    rest_delete(http, barrel, &id, &rev).await;
    let id = format!("{prefix}5");
    let rev = rest_put(http, barrel, &id, json!({"kind": "conflicted"})).await;
    let hash = rev.split_once('-').unwrap().1;
    let branches: Vec<Value> = ["a", "b"]
        .iter()
        .map(|c| {
            json!({"_id": id, "_rev": format!("2-{}", c.repeat(32)), "branch": c,
                   "_revisions": {"start": 2, "ids": [c.repeat(32), hash]}})
        })
        .collect();
    let a = http
        .json(
            "POST",
            &format!("/barrels/{barrel}/_bulk_docs"),
            &json!({"docs": branches, "new_edits": false}),
        )
        .await;
    assert_eq!(a.status, 201, "new_edits=false: {}", a.body);
    let doc = rest_get_with_conflicts(http, barrel, &id).await;
    assert_eq!(doc["_rev"], format!("2-{}", "b".repeat(32)), "{doc}");
    assert_eq!(doc["_conflicts"], json!([format!("2-{}", "a".repeat(32))]));
}

/// Changes a CouchDB-protocol database on pouchdb-server: a new document with an attachment,
/// an update of `<prefix>1`, a deletion of `<prefix>3` and a resolution of `<prefix>5`'s
/// conflict.
async fn change_on_server(server: &Http, db: &str, prefix: &str) {
    couch_put(
        server,
        db,
        &format!("{prefix}6"),
        json!({"from": "pouchdb-server", "_attachments": {"note.txt": {
            "content_type": "text/plain", "data": STANDARD.encode("written on pouchdb-server")}}}),
    )
    .await;
    let doc = server.get(&format!("/{db}/{prefix}1")).await.body;
    let mut doc = doc.as_object().unwrap().clone();
    doc.insert("n".into(), json!(2));
    couch_put(server, db, &format!("{prefix}1"), Value::Object(doc)).await;
    let doc = server.get(&format!("/{db}/{prefix}3")).await.body;
    let a = server
        .call(
            "DELETE",
            &format!("/{db}/{prefix}3?rev={}", doc["_rev"].as_str().unwrap()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let loser = format!("2-{}", "a".repeat(32));
    let a = server
        .call("DELETE", &format!("/{db}/{prefix}5?rev={loser}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// PouchDB ⇄ node

#[actix_rt::test]
async fn pouchdb_pushes_pulls_syncs_live_and_converges_on_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let node: TestNode = common::start(tmp.path()).await;
    let http = Http::new(&node);
    let b = "pouch";
    create_barrel(&http, b).await;
    // Written on the node over REST before PouchDB pulls.
    seed_node(&http, b, "n").await;
    let mut pouch = Pouch::start(&format!("{}/couch/{b}", node.url));

    // PouchDB → node: new documents, one with an attachment, one with history, one deleted.
    let p1 = pouch
        .put(json!({"_id": "p1", "kind": "plain", "list": [1, 2.5, "x", true, null], "u": "ß 😀"}))
        .await;
    let text = "an attachment written by PouchDB";
    let p2 = pouch
        .put(
            json!({"_id": "p2", "kind": "attached", "_attachments": {"hello.txt": {
            "content_type": "text/plain", "data": STANDARD.encode(text)}}}),
        )
        .await;
    let mut p3 = pouch.put(json!({"_id": "p3", "v": 1})).await;
    for v in 2..=3 {
        p3 = pouch.put(json!({"_id": "p3", "_rev": p3, "v": v})).await;
    }
    let p4 = pouch.put(json!({"_id": "p4", "kind": "doomed"})).await;
    let p4 = pouch.remove("p4", &p4).await;
    // An id that must be escaped in URLs, and a larger binary attachment.
    let odd = "p5 ü/x+y%z?&#";
    let big = binary(100_000);
    let p5 = pouch
        .put(json!({"_id": odd, "_attachments": {"big.bin": {
            "content_type": "application/octet-stream", "data": STANDARD.encode(&big)}}}))
        .await;
    let r = pouch.replicate("push").await;
    assert_replicated(&r, 5, "PouchDB → node");

    let d = rest_get_with_conflicts(&http, b, "p1").await;
    assert_eq!(d["_rev"], p1, "{d}");
    assert_eq!(d["list"], json!([1, 2.5, "x", true, null]), "{d}");
    assert_eq!(d["u"], "ß 😀", "{d}");
    let d = rest_get_with_conflicts(&http, b, "p2").await;
    assert_eq!(d["_rev"], p2, "{d}");
    let local = pouch
        .call(json!({"op": "get", "id": "p2", "opts": {}}))
        .await;
    let digest = &local["doc"]["_attachments"]["hello.txt"]["digest"];
    assert!(digest.as_str().unwrap().starts_with("md5-"), "{local}");
    assert_eq!(&d["_attachments"]["hello.txt"]["digest"], digest, "{d}");
    let a = http
        .get(&format!("/barrels/{b}/docs/p2/attachments/hello.txt"))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.bytes, text.as_bytes());
    let d = http
        .get(&format!("/barrels/{b}/docs/p3?revs=true"))
        .await
        .body;
    assert_eq!(d["_rev"], p3, "{d}");
    assert_eq!(d["_revisions"]["start"], 3, "{d}");
    assert_eq!(d["_revisions"]["ids"].as_array().unwrap().len(), 3, "{d}");
    let a = http.get(&format!("/barrels/{b}/docs/p4")).await;
    assert_eq!(a.status, 404, "a deleted document: {}", a.body);
    assert!(node_has_leaf(&http, b, "p4", &p4).await, "p4's tombstone");
    let a = http
        .get(&format!(
            "/barrels/{b}/docs/{}/attachments/big.bin",
            escape(odd)
        ))
        .await;
    assert_eq!(a.status, 200, "{odd}: {}", a.body);
    assert_eq!(a.bytes, big, "{odd}: the attachment's bytes");
    let d = rest_get_with_conflicts(&http, b, &escape(odd)).await;
    assert_eq!(d["_id"], odd, "{d}");
    assert_eq!(d["_rev"], p5, "{d}");

    // node → PouchDB: what was written over REST (the conflicted document's three leaves).
    let r = pouch.replicate("pull").await;
    assert_replicated(&r, 6, "node → PouchDB");
    let n5 = pouch.get_with_conflicts("n5").await;
    assert_eq!(n5["_rev"], format!("2-{}", "b".repeat(32)), "{n5}");
    assert_eq!(n5["_conflicts"], json!([format!("2-{}", "a".repeat(32))]));
    let n3 = pouch
        .call(json!({"op": "get", "id": "n3", "opts": {"attachments": true, "binary": false}}))
        .await;
    assert_eq!(
        n3["doc"]["_attachments"]["blob.bin"]["data"],
        STANDARD.encode(binary(3000)),
        "{n3}"
    );
    assert_same_docs(
        &pouch.dump().await,
        &snapshot(&http, &format!("/couch/{b}")).await,
        "PouchDB and the node after push and pull",
    );

    // Live two-way sync: a write on either side reaches the other.
    pouch.call(json!({"op": "live_start"})).await;
    let rev = rest_put(&http, b, "live-node", json!({"from": "node"})).await;
    let w = pouch
        .call(json!({"op": "wait", "id": "live-node", "rev": rev}))
        .await;
    eprintln!("node → PouchDB (live): {} ms", w["ms"]);
    let n1 = rest_get_with_conflicts(&http, b, "n1").await;
    let mut n1 = n1.as_object().unwrap().clone();
    n1.insert("n".into(), json!(2));
    let rev = rest_put(&http, b, "n1", Value::Object(n1)).await;
    pouch
        .call(json!({"op": "wait", "id": "n1", "rev": rev}))
        .await;
    let rev = pouch
        .put(json!({"_id": "live-pouch", "from": "PouchDB"}))
        .await;
    let took = wait_on_node(&http, b, "live-pouch", &rev).await;
    eprintln!("PouchDB → node (live): {took:?}");
    let d = rest_get_with_conflicts(&http, b, "live-pouch").await;
    assert_eq!(d["_rev"], rev, "{d}");
    assert_eq!(d["from"], "PouchDB", "{d}");
    let p1 = pouch.remove("p1", &p1).await;
    wait_on_node(&http, b, "p1", &p1).await;
    let a = http.get(&format!("/barrels/{b}/docs/p1")).await;
    assert_eq!(a.status, 404, "deleted in PouchDB: {}", a.body);
    let stopped = pouch.call(json!({"op": "live_stop"})).await;
    assert_eq!(stopped["result"]["push"]["ok"], true, "{stopped}");
    assert_eq!(stopped["result"]["pull"]["ok"], true, "{stopped}");

    // Conflicting edits on both sides while they are apart, then a sync.
    let mut base = BTreeMap::new();
    for id in ["c1", "c2", "c3", "c4"] {
        base.insert(id, pouch.put(json!({"_id": id, "v": 0})).await);
    }
    let r = pouch.replicate("sync").await;
    assert_eq!(r["push"]["docs_written"], 4, "{r}");
    // c1: one edit on each side (same generation: the greater hash wins).
    // c2: two edits in PouchDB, one on the node (PouchDB's generation wins).
    // c3: deleted in PouchDB, edited on the node (the live leaf wins, no conflict).
    // c4: one edit in PouchDB, two on the node (the node's generation wins).
    let mut leaves: BTreeMap<&str, Vec<(String, bool)>> = BTreeMap::new();
    for (id, pouch_edits, node_edits) in [("c1", 1, 1), ("c2", 2, 1), ("c3", 0, 1), ("c4", 1, 2)] {
        let mut rev = base[id].clone();
        for e in 1..=pouch_edits {
            rev = pouch
                .put(json!({"_id": id, "_rev": rev, "v": e, "by": "PouchDB"}))
                .await;
        }
        if pouch_edits == 0 {
            rev = pouch.remove(id, &rev).await;
        }
        leaves.entry(id).or_default().push((rev, pouch_edits == 0));
        let mut rev = base[id].clone();
        for e in 1..=node_edits {
            rev = rest_put(&http, b, id, json!({"_rev": rev, "v": e, "by": "node"})).await;
        }
        leaves.entry(id).or_default().push((rev, false));
    }
    let r = pouch.replicate("sync").await;
    assert_eq!(r["push"]["ok"], true, "{r}");
    assert_eq!(r["pull"]["ok"], true, "{r}");
    assert_eq!(r["push"]["doc_write_failures"], 0, "{r}");
    assert_eq!(r["pull"]["doc_write_failures"], 0, "{r}");
    for (id, l) in &leaves {
        let l: Vec<(&str, bool)> = l.iter().map(|(r, d)| (r.as_str(), *d)).collect();
        let winner = expected_winner(&l);
        let mut losers: Vec<String> = l
            .iter()
            .filter(|(r, d)| *r != winner && !d)
            .map(|(r, _)| r.to_string())
            .collect();
        losers.sort_by_key(|r| std::cmp::Reverse((generation(r), r.clone())));
        let in_pouch = pouch.get_with_conflicts(id).await;
        let on_node = rest_get_with_conflicts(&http, b, id).await;
        let couch = http.get(&format!("/couch/{b}/{id}?conflicts=true")).await;
        assert_eq!(couch.status, 200, "{}", couch.body);
        for (side, doc) in [
            ("PouchDB", &in_pouch),
            ("node", &on_node),
            ("couch", &couch.body),
        ] {
            assert_eq!(doc["_rev"], winner, "{id}: the winner in {side}: {doc}");
            let mut c = conflicts(doc);
            c.sort_by_key(|r| std::cmp::Reverse((generation(r), r.clone())));
            assert_eq!(c, losers, "{id}: _conflicts in {side}: {doc}");
        }
        assert_eq!(
            conflicts(&in_pouch),
            conflicts(&on_node),
            "{id}: _conflicts in the same order"
        );
        let body = |d: &Value| (d["v"].clone(), d["by"].clone());
        assert_eq!(body(&in_pouch), body(&on_node), "{id}: the winner's body");
    }
    assert_same_docs(
        &pouch.dump().await,
        &snapshot(&http, &format!("/couch/{b}")).await,
        "PouchDB and the node after conflicting edits",
    );

    // Resolving in PouchDB (deleting the loser) resolves on the node.
    let c1 = pouch.get_with_conflicts("c1").await;
    let loser = conflicts(&c1)[0].clone();
    pouch.remove("c1", &loser).await;
    let r = pouch.replicate("sync").await;
    assert_eq!(r["push"]["docs_written"], 1, "{r}");
    let d = rest_get_with_conflicts(&http, b, "c1").await;
    assert_eq!(d["_rev"], c1["_rev"], "{d}");
    assert!(d.get("_conflicts").is_none(), "resolved: {d}");
    assert_same_docs(
        &pouch.dump().await,
        &snapshot(&http, &format!("/couch/{b}")).await,
        "PouchDB and the node after the resolution",
    );

    pouch.exit().await;
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// pouchdb-server ⇄ node

#[actix_rt::test]
async fn pouchdb_server_replicates_with_a_node_started_from_either_side() {
    let tmp = tempfile::tempdir().unwrap();
    let node: TestNode = common::start(tmp.path()).await;
    let http = Http::new(&node);
    let server = PouchServer::start().await;
    let ps = Http::at(&server.url);

    // Started from the node: POST /replicate, barrel → pouchdb-server, then back.
    create_barrel(&http, "na").await;
    seed_node(&http, "na", "a").await;
    let a = ps.call("PUT", "/pa").await;
    assert_eq!(a.status, 201, "pouchdb-server PUT /pa: {}", a.body);
    let pa = format!("{}/pa", server.url);
    let t = node_replicate(&http, "na", &pa).await;
    assert_eq!(t["docs_written"], 6, "{t}");
    assert_same_docs(
        &snapshot(&ps, "/pa").await,
        &snapshot(&http, "/couch/na").await,
        "node → pouchdb-server, started from the node",
    );
    change_on_server(&ps, "pa", "a").await;
    let t = node_replicate(&http, &pa, "na").await;
    assert_eq!(t["docs_written"], 4, "{t}");
    assert_same_docs(
        &snapshot(&ps, "/pa").await,
        &snapshot(&http, "/couch/na").await,
        "pouchdb-server → node, started from the node",
    );
    let d = rest_get_with_conflicts(&http, "na", "a5").await;
    assert!(
        d.get("_conflicts").is_none(),
        "resolved on pouchdb-server: {d}"
    );
    let a = http.get("/barrels/na/docs/a6/attachments/note.txt").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.bytes, b"written on pouchdb-server");

    // Both ways at once (`direction: sync`) after conflicting edits of a1 on both sides.
    let on_node = rest_get_with_conflicts(&http, "na", "a1").await;
    let on_server = ps.get("/pa/a1").await.body;
    assert_eq!(on_node["_rev"], on_server["_rev"]);
    let base = on_node["_rev"].as_str().unwrap().to_owned();
    let node_rev = rest_put(&http, "na", "a1", json!({"_rev": base, "by": "node"})).await;
    let server_rev = couch_put(
        &ps,
        "pa",
        "a1",
        json!({"_rev": base, "by": "pouchdb-server"}),
    )
    .await;
    rest_put(&http, "na", "a7", json!({"by": "node"})).await;
    couch_put(&ps, "pa", "a8", json!({"by": "pouchdb-server"})).await;
    let a = http
        .json(
            "POST",
            "/replicate",
            &json!({"source": "na", "target": pa, "direction": "sync"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "completed", "{}", a.body);
    assert_eq!(a.body["docs_written"], 4, "{}", a.body);
    assert_same_docs(
        &snapshot(&ps, "/pa").await,
        &snapshot(&http, "/couch/na").await,
        "node ⇄ pouchdb-server (direction sync), started from the node",
    );
    let winner = expected_winner(&[(&node_rev, false), (&server_rev, false)]);
    let loser = if winner == node_rev {
        &server_rev
    } else {
        &node_rev
    };
    let on_node = rest_get_with_conflicts(&http, "na", "a1").await;
    let on_server = ps.get("/pa/a1?conflicts=true").await.body;
    for (side, doc) in [("node", &on_node), ("pouchdb-server", &on_server)] {
        assert_eq!(doc["_rev"], winner, "a1's winner on the {side}: {doc}");
        assert_eq!(doc["_conflicts"], json!([loser]), "a1 on the {side}: {doc}");
    }

    // Started from pouchdb-server: POST /_replicate, node → pouchdb-server, then back.
    create_barrel(&http, "nb").await;
    seed_node(&http, "nb", "b").await;
    let a = ps.call("PUT", "/pb").await;
    assert_eq!(a.status, 201, "pouchdb-server PUT /pb: {}", a.body);
    let nb = format!("{}/couch/nb", node.url);
    let r = server_replicate(&ps, &nb, "pb").await;
    assert_eq!(r["docs_written"], 6, "{r}");
    assert_same_docs(
        &snapshot(&ps, "/pb").await,
        &snapshot(&http, "/couch/nb").await,
        "node → pouchdb-server, started from pouchdb-server",
    );
    change_on_server(&ps, "pb", "b").await;
    let r = server_replicate(&ps, "pb", &nb).await;
    assert_eq!(r["docs_written"], 4, "{r}");
    assert_same_docs(
        &snapshot(&ps, "/pb").await,
        &snapshot(&http, "/couch/nb").await,
        "pouchdb-server → node, started from pouchdb-server",
    );
    let d = rest_get_with_conflicts(&http, "nb", "b5").await;
    assert!(
        d.get("_conflicts").is_none(),
        "resolved on pouchdb-server: {d}"
    );

    drop(server);
    node.node.shutdown().await.unwrap();
}
