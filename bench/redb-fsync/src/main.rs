//! `redb-fsync [N] [DIR] [MAX_SECS]`: commits N (default 2000) single-value transactions,
//! each one ~300-byte value with `Durability::Immediate` (one fsync-bound commit per write),
//! into a fresh redb file in a temporary directory under DIR (default: the system temp dir),
//! stopping early after MAX_SECS (default 15; this disk's fsync rate drifts), and prints
//! `RESULT txn_per_s=<rate> n=<commits> secs=<elapsed> kb_per_txn=<written>` on one line
//! (`kb_per_txn`: bytes this process caused to be written to storage, `/proc/self/io`
//! `write_bytes`, per commit; 0 where that file does not exist).

use std::time::Instant;

use redb::{Database, Durability, TableDefinition};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(s) => s.parse()?,
        None => 2000,
    };
    let dir = match args.next() {
        Some(d) if !d.is_empty() => tempfile::tempdir_in(d)?,
        _ => tempfile::tempdir()?,
    };
    let max_secs: f64 = match args.next() {
        Some(s) => s.parse()?,
        None => 15.0,
    };
    // The same shape as the HTTP benchmark's documents, ~300 bytes of nested JSON.
    let values: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = format!("ref-{i:08}");
            let body = format!(
                concat!(
                    r#"{{"_id":"{id}","kind":"bench","seq":{i},"user":{{"name":"user{u}","#,
                    r#""email":"user{u}@example.com","age":{age},"address":{{"city":"City{c}","#,
                    r#""zip":"{zip:05}","street":"{i} Long Street Name"}}}},"tags":["alpha","beta","#,
                    r#""gamma"],"score":{score}.5,"active":true,"note":"lorem ipsum dolor sit amet"}}"#
                ),
                id = id,
                i = i,
                u = i % 1000,
                age = 18 + i % 60,
                c = i % 50,
                zip = i % 100_000,
                score = i % 100,
            );
            (id, body.into_bytes())
        })
        .collect();
    let db = Database::create(dir.path().join("fsync.redb"))?;
    {
        let txn = db.begin_write()?;
        txn.open_table(DOCS)?;
        txn.commit()?;
    }
    let written_before = written_bytes();
    let started = Instant::now();
    let mut done = 0usize;
    for (id, value) in &values {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(DOCS)?;
            table.insert(id.as_str(), value.as_slice())?;
        }
        txn.commit()?;
        done += 1;
        if started.elapsed().as_secs_f64() >= max_secs {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let written = written_bytes().saturating_sub(written_before);
    println!(
        "RESULT txn_per_s={:.1} n={} secs={:.3} kb_per_txn={:.1}",
        done as f64 / secs,
        done,
        secs,
        written as f64 / 1024.0 / done.max(1) as f64
    );
    Ok(())
}

/// Bytes this process caused to be sent to storage so far (Linux `/proc/self/io`).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
