//! Crash test (DESIGN §3, durability): a child process writes concurrently through the Barrel
//! actor and reports every acknowledged write on stdout; the parent kills it with SIGKILL in
//! the middle of the stream, reopens the barrel file and checks that every acknowledged write
//! is there. Several rounds run on the same data directory, so later rounds also recover a
//! barrel (and a `node.redb`) that an earlier kill left behind.
//!
//! The child is this same test binary, re-executed to run only the `#[ignore]`d test
//! [`child_writer`], which does nothing unless `COOPER_CRASH_DIR` is set.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cooper::actors::barrel::store::{GetOptions, Store, WriteOp};
use cooper::actors::{BarrelError, BarrelHandle};
use cooper::protocols::document;
use cooper::protocols::ids::Rev;
use cooper::{Config, Node, NodeError};
use serde_json::{json, Value};

/// Data directory of the child (set by the parent).
const DIR_VAR: &str = "COOPER_CRASH_DIR";
/// Round number of the child, used to keep document ids unique across rounds.
const ROUND_VAR: &str = "COOPER_CRASH_ROUND";
const BARREL: &str = "crash";
const ROUNDS: u64 = 5;
/// Concurrent writer tasks in the child.
const WRITERS: usize = 16;
/// Writers with an index at or above this one send batches of [`BATCH`] operations.
const FIRST_BATCH_WRITER: usize = 12;
const BATCH: usize = 10;

// ---------------------------------------------------------------------------------------------
// The child

/// Not a test on its own: the process [`acknowledged_writes_survive_sigkill`] starts and kills.
#[test]
#[ignore = "run by acknowledged_writes_survive_sigkill in a child process"]
fn child_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_VAR)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    actix_rt::System::new().block_on(async move {
        let node = Node::start(Config::with_data_dir(PathBuf::from(dir)))
            .await
            .unwrap_or_else(|e| fail(&format!("node start: {e}")));
        let barrel = match node.barrel(BARREL).await {
            Ok(b) => b,
            Err(NodeError::Barrel(BarrelError::NotFound(_))) => node
                .create_barrel(BARREL)
                .await
                .unwrap_or_else(|e| fail(&format!("create barrel: {e}"))),
            Err(e) => fail(&format!("open barrel: {e}")),
        };
        emit("READY");
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| actix_rt::spawn(writer(barrel.clone(), round, w)))
            .collect();
        // The writers loop until the parent kills the process.
        for task in tasks {
            let _ = task.await;
        }
        fail("a writer task ended");
    });
}

/// One writer: creates its own documents and every few writes updates an earlier one of them
/// with its current `_rev`; batch writers mix creates and updates in one request.
async fn writer(barrel: BarrelHandle, round: u64, w: usize) {
    // Current revision of each document this writer created, by creation number.
    let mut revs: Vec<String> = Vec::new();
    let mut n = 0usize;
    let mut step = 0usize;
    loop {
        step += 1;
        if w < FIRST_BATCH_WRITER {
            let (doc, slot) = if step.is_multiple_of(4) && !revs.is_empty() {
                let k = pick(step, w, revs.len());
                (update_doc(round, w, k, &revs[k], step), Some(k))
            } else {
                n += 1;
                (new_doc(round, w, n - 1), None)
            };
            let id = doc["_id"].as_str().unwrap_or_default().to_owned();
            match barrel.put(doc).await {
                Ok(r) => {
                    ack(&r.id, &r.rev);
                    match slot {
                        Some(k) => revs[k] = r.rev,
                        None => revs.push(r.rev),
                    }
                }
                Err(e) => fail(&format!("put {id}: {e}")),
            }
        } else {
            let mut docs = Vec::with_capacity(BATCH);
            let mut slots = Vec::with_capacity(BATCH);
            for i in 0..BATCH {
                if i % 5 == 4 && !revs.is_empty() {
                    // Distinct documents within one batch: the update's parent must be current.
                    let k = (pick(step, w, revs.len()) + i) % revs.len();
                    if slots.contains(&Some(k)) {
                        continue;
                    }
                    docs.push(update_doc(round, w, k, &revs[k], step));
                    slots.push(Some(k));
                } else {
                    docs.push(new_doc(round, w, n));
                    slots.push(None);
                    n += 1;
                }
            }
            let ids: Vec<String> = docs
                .iter()
                .map(|d| d["_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            let ops = docs
                .into_iter()
                .map(|d| {
                    WriteOp::Edit(
                        document::split(d).unwrap_or_else(|e| fail(&format!("split: {e}"))),
                    )
                })
                .collect();
            let results = barrel
                .write(ops)
                .await
                .unwrap_or_else(|e| fail(&format!("write batch from writer {w}: {e}")));
            if results.len() != slots.len() {
                fail(&format!(
                    "batch of {} got {} results",
                    slots.len(),
                    results.len()
                ));
            }
            for ((result, slot), id) in results.into_iter().zip(slots).zip(ids) {
                match result {
                    Ok(r) => {
                        ack(&r.id, &r.rev);
                        match slot {
                            Some(k) => revs[k] = r.rev,
                            None => revs.push(r.rev),
                        }
                    }
                    Err(e) => fail(&format!("batch write of {id}: {e}")),
                }
            }
        }
    }
}

fn doc_id(round: u64, w: usize, n: usize) -> String {
    format!("r{round}-w{w}-{n}")
}

/// A document of about 300 bytes with nested objects and arrays.
fn new_doc(round: u64, w: usize, n: usize) -> Value {
    json!({
        "_id": doc_id(round, w, n),
        "round": round,
        "writer": w,
        "n": n,
        "version": 0,
        "profile": {
            "name": format!("writer {w} document {n}"),
            "tags": ["crash", "durability", format!("w{w}")],
            "address": {"street": "1 Redb Lane", "city": "Fsync", "zip": 10_000 + n},
            "scores": [n % 7, n % 11, n % 13],
        },
        "payload": "x".repeat(120),
    })
}

fn update_doc(round: u64, w: usize, k: usize, rev: &str, step: usize) -> Value {
    let mut doc = new_doc(round, w, k);
    doc["_rev"] = json!(rev);
    doc["version"] = json!(step);
    doc["profile"]["tags"] = json!(["crash", "updated", format!("step{step}")]);
    doc
}

/// A deterministic, spread-out choice of an earlier document.
fn pick(step: usize, w: usize, len: usize) -> usize {
    (step.wrapping_mul(2_654_435_761) ^ w.wrapping_mul(40_503)) % len
}

/// Reports an acknowledged write.
fn ack(id: &str, rev: &str) {
    emit(&format!("ACK {id} {rev}"));
}

/// Writes one whole line to stdout and flushes it.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let line = format!("{line}\n");
    if out
        .write_all(line.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        // The parent is gone; nothing to report to.
        std::process::exit(2);
    }
}

/// Reports a failure to the parent (on stdout and stderr) and exits.
fn fail(msg: &str) -> ! {
    eprintln!("crash child failed: {msg}");
    emit(&format!("ERR {msg}"));
    std::process::exit(3);
}

// ---------------------------------------------------------------------------------------------
// The parent

/// How many acknowledgements to wait for before the kill in `round`: spread between 200 and
/// 2000, deterministic.
fn kill_after(round: u64) -> usize {
    let mut x = round.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    200 + (x % 1801) as usize
}

/// What the child acknowledged, across rounds: every acknowledged revision of each id.
type Acked = BTreeMap<String, Vec<Rev>>;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let exe = std::env::current_exe().unwrap();
    let mut acked = Acked::new();
    let mut total_acks = 0usize;
    for round in 0..ROUNDS {
        let threshold = kill_after(round);
        let stderr_path = tmp.path().join(format!("child-{round}.stderr"));
        let (acks, killed_at) = run_child(&exe, &data, round, threshold, &stderr_path, &mut acked);
        total_acks += acks;
        eprintln!(
            "crash round {round}: killed after {killed_at} acks, {acks} acknowledged in the round, \
             {} ids so far",
            acked.len()
        );
        verify_store(&data, round, &acked, total_acks);
    }
    verify_node(&data, &acked);
}

/// Runs one child until `threshold` acknowledgements, kills it with SIGKILL and collects every
/// acknowledgement it printed (also those still in the pipe). Returns the number of
/// acknowledgements and how many had been read at the kill.
fn run_child(
    exe: &Path,
    data: &Path,
    round: u64,
    threshold: usize,
    stderr_path: &Path,
    acked: &mut Acked,
) -> (usize, usize) {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_writer",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(DIR_VAR, data)
        .env(ROUND_VAR, round.to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = false;
    let mut acks = 0usize;
    let mut killed_at = None;
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        if n == 0 || !line.ends_with('\n') {
            // EOF; a trailing partial line was cut by the kill and acknowledges nothing.
            break;
        }
        let text = line.trim_end();
        if let Some(rest) = text.strip_prefix("ACK ") {
            assert!(ready, "round {round}: ACK before READY");
            let (id, rev) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("round {round}: malformed line {text:?}"));
            let rev = Rev::parse(rev)
                .unwrap_or_else(|e| panic!("round {round}: bad rev in {text:?}: {e}"));
            acked.entry(id.to_owned()).or_default().push(rev);
            acks += 1;
            if acks == threshold && killed_at.is_none() {
                // `Child::kill` sends SIGKILL on Unix.
                child.kill().unwrap();
                killed_at = Some(acks);
            }
        } else if text.contains("ERR ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "round {round}: the child failed: {text}\nstderr:\n{}",
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            );
        } else if text.ends_with("READY") {
            // libtest may have printed "test child_writer ... " on the same line.
            ready = true;
        }
    }
    let status = child.wait().unwrap();
    let Some(killed_at) = killed_at else {
        panic!(
            "round {round}: the child's output ended after {acks} of {threshold} acks \
             (ready: {ready}, status: {status})\nstderr:\n{}",
            std::fs::read_to_string(stderr_path).unwrap_or_default()
        );
    };
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child was not killed by SIGKILL: {status}"
        );
    }
    (acks, killed_at)
}

/// Opens the killed barrel's file directly and checks every acknowledged revision.
fn verify_store(data: &Path, round: u64, acked: &Acked, total_acks: usize) {
    let file = data.join("barrels").join(format!("{BARREL}.redb"));
    let store = Store::open(&file, Default::default())
        .unwrap_or_else(|e| panic!("round {round}: the barrel file does not open: {e}"));
    let counts = store
        .counts()
        .unwrap_or_else(|e| panic!("round {round}: counts: {e}"));
    let mut missing = Vec::new();
    for (id, revs) in acked {
        let Some(tree) = store
            .rev_tree(id)
            .unwrap_or_else(|e| panic!("round {round}: rev tree of {id}: {e}"))
        else {
            missing.push(format!("{id}: document missing (acked {revs:?})"));
            continue;
        };
        for rev in revs {
            if !tree.contains(rev) {
                missing.push(format!("{id}: acked revision {rev} not in the tree"));
            }
        }
        // Only the writer that owns a document edits it, always from its current revision:
        // the history is linear and the winner at least as new as the last acknowledgement.
        let leaves = tree.leaves();
        let newest = revs.iter().max().unwrap();
        let winner = tree.winner().unwrap();
        if leaves.len() != 1 || winner.deleted || winner.rev.pos < newest.pos {
            missing.push(format!(
                "{id}: unexpected leaves {leaves:?} (newest acked {newest})"
            ));
            continue;
        }
        if !tree.history(&winner.rev).contains(newest) {
            missing.push(format!(
                "{id}: acked {newest} is not an ancestor of the winner {}",
                winner.rev
            ));
        }
        match store.get(id, &GetOptions::default()) {
            Ok(doc) => {
                if doc.rev != winner.rev || doc.body.get("profile").is_none() {
                    missing.push(format!("{id}: winner body wrong: {:?}", doc.to_json()));
                }
            }
            Err(e) => missing.push(format!("{id}: winner not readable: {e}")),
        }
    }
    assert!(
        missing.is_empty(),
        "round {round}: {} of {} acknowledged documents lost or damaged after SIGKILL:\n{}",
        missing.len(),
        acked.len(),
        missing.join("\n")
    );
    assert!(
        counts.doc_count >= acked.len() as u64,
        "round {round}: doc_count {} < {} acknowledged ids",
        counts.doc_count,
        acked.len()
    );
    assert!(
        counts.update_seq >= total_acks as u64,
        "round {round}: update_seq {} < {total_acks} acknowledged writes",
        counts.update_seq
    );
    assert_eq!(
        counts.deleted_count, 0,
        "round {round}: nothing was deleted"
    );
    drop(store);
}

/// Starts a node on the killed data directory: the catalog still lists the barrel, which
/// reads and takes writes.
fn verify_node(data: &Path, acked: &Acked) {
    let data = data.to_owned();
    let acked = acked.clone();
    actix_rt::System::new().block_on(async move {
        let node = Node::start(Config::with_data_dir(&data)).await.unwrap();
        assert_eq!(node.barrels().await.unwrap(), vec![BARREL.to_owned()]);
        let barrel = node.barrel(BARREL).await.unwrap();
        for (id, revs) in acked.iter().step_by(97) {
            let doc = barrel.get(id, &GetOptions::default()).unwrap();
            assert!(doc.rev.pos >= revs.iter().max().unwrap().pos, "{id}");
        }
        let counts = barrel.counts().unwrap();
        assert!(counts.doc_count >= acked.len() as u64);
        let written = barrel
            .put(json!({"_id": "after-the-crashes", "ok": true}))
            .await
            .unwrap();
        let doc = barrel
            .get("after-the-crashes", &GetOptions::default())
            .unwrap();
        assert_eq!(doc.rev.to_string(), written.rev);
        node.shutdown().await.unwrap();
    });
}
