//! Usage: cargo run --example embedded [DATA_DIR]
//!
//! Embeds a Cooper node in a Rust program and prints what it does, step by step:
//!
//! 1. starts a node on `DATA_DIR` (or on a fresh temporary directory);
//! 2. creates the barrel `people` (or opens it when `DATA_DIR` already holds it);
//! 3. writes documents with nested JSON (`address/city`, `age`, a `tags` array);
//! 4. updates one with its `_rev` and shows the new revision;
//! 5. makes a conflict as replication would (`new_edits=false`), reads the winner with its
//!    `_conflicts`, then resolves the conflict by deleting the losing revision;
//! 6. queries by path (`address/city = Paris` and `age >= 18`, by age descending), shows how
//!    the query is answered (`explain`) and pages through it two documents at a time;
//! 7. deletes a document and reads the changes feed;
//! 8. shuts the node down.
//!
//! Running it twice on the same `DATA_DIR` works: documents that exist are updated. Set
//! `RUST_LOG=info` to see the node's own log lines too.

use anyhow::Context as _;
use cooper::actors::barrel::store::{Condition, GetOptions, Op, Query, WriteResult};
use cooper::actors::{BarrelError, BarrelHandle};
use cooper::protocols::ids::Rev;
use cooper::protocols::path;
use cooper::{Config, Node, NodeError};
use serde_json::{json, Value};

/// A hash for the revision "another node" sends in step 5: any 32 lowercase hex characters.
const PEER_HASH: &str = "5eed5eed5eed5eed5eed5eed5eed5eed";

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // Keep the temporary directory alive until the end: dropping it removes the data.
    let (data_dir, _temp) = match std::env::args_os().nth(1) {
        Some(dir) => (std::path::PathBuf::from(dir), None),
        None => {
            let temp = tempfile::tempdir()?;
            (temp.path().to_owned(), Some(temp))
        }
    };

    println!("1. Start a node");
    let node = Node::start(Config::with_data_dir(&data_dir)).await?;
    println!("   data directory: {}", data_dir.display());
    println!();

    println!("2. Create the barrel \"people\"");
    let people = match node.create_barrel("people").await {
        Ok(barrel) => {
            println!("   created");
            barrel
        }
        Err(NodeError::Barrel(BarrelError::AlreadyExists(_))) => {
            println!("   it already exists in this data directory: opened it");
            node.barrel("people").await?
        }
        Err(e) => return Err(e.into()),
    };
    println!("   barrels on this node: {:?}", node.barrels().await?);
    println!();

    println!("3. Write documents");
    let docs = [
        json!({"_id": "ann",   "name": "Ann",   "age": 31, "address": {"city": "Paris", "zip": "75011"}, "tags": ["admin", "dev"]}),
        json!({"_id": "bob",   "name": "Bob",   "age": 17, "address": {"city": "Paris", "zip": "75002"}, "tags": ["student"]}),
        json!({"_id": "chloe", "name": "Chloé", "age": 45, "address": {"city": "Paris", "zip": "75005"}, "tags": ["dev", "ops"]}),
        json!({"_id": "david", "name": "David", "age": 28, "address": {"city": "Lyon",  "zip": "69001"}, "tags": ["dev"]}),
        json!({"_id": "emma",  "name": "Emma",  "age": 22, "address": {"city": "Paris", "zip": "75018"}, "tags": []}),
        json!({"_id": "farid", "name": "Farid", "age": 67, "address": {"city": "Paris", "zip": "75020"}, "tags": ["retired"]}),
        json!({"_id": "gus",   "name": "Gus",   "age": 19, "address": {"city": "Paris", "zip": "75013"}, "tags": ["ops"]}),
    ];
    for doc in docs {
        let written = upsert(&people, doc).await?;
        println!("   put {:<6} -> rev {}", written.id, written.rev);
    }
    println!();

    println!("4. Update ann with her current _rev");
    let mut ann = people.get("ann", &GetOptions::default())?.to_json();
    let old_rev = ann["_rev"]
        .as_str()
        .context("a read document has a _rev")?
        .to_owned();
    ann["age"] = json!(32);
    let updated = people.put(ann).await?;
    println!("   rev {old_rev}");
    println!("    -> {}  (generation +1, new hash)", updated.rev);
    let stale = people
        .put(json!({"_id": "ann", "_rev": old_rev, "age": 99}))
        .await;
    match stale {
        Err(BarrelError::Conflict(why)) => {
            println!("   writing again on the old rev is refused: conflict ({why})")
        }
        other => anyhow::bail!("expected a conflict for a stale _rev, got {other:?}"),
    }
    println!();

    println!("5. A conflict, as replication makes one (new_edits=false)");
    let local: Rev = updated.rev.parse()?;
    let parent = people
        .get(
            "ann",
            &GetOptions {
                revs: true,
                ..Default::default()
            },
        )?
        .history
        .and_then(|h| h.get(1).copied())
        .context("ann's update has a parent")?;
    let peer = json!({
        "_id": "ann",
        "_rev": format!("{}-{PEER_HASH}", local.pos),
        "_revisions": {"start": local.pos, "ids": [PEER_HASH, parent.hash_hex()]},
        "name": "Ann",
        "age": 31,
        "address": {"city": "Paris", "zip": "75011"},
        "tags": ["admin", "dev", "on-call"],
    });
    let sibling = people.put_replicated(peer).await?;
    println!(
        "   another node also edited {parent}: it sent {}",
        sibling.rev
    );
    let with_conflicts = GetOptions {
        conflicts: true,
        ..Default::default()
    };
    let doc = people.get("ann", &with_conflicts)?;
    println!("   ann now has two live leaves; every node picks the same winner");
    println!("   (same generation: the greater hash wins):");
    println!("   winner:     {}", doc.rev);
    let conflicts = doc.conflicts.clone().unwrap_or_default();
    for c in &conflicts {
        println!("   _conflicts: {c}");
    }
    println!("   {}", compact(&doc.to_json()));
    let loser = *conflicts.first().context("ann should be in conflict")?;
    let tombstone = people.delete("ann", loser).await?;
    println!(
        "   resolve: delete the losing rev {loser} -> tombstone {}",
        tombstone.rev
    );
    let doc = people.get("ann", &with_conflicts)?;
    println!("   {}", compact(&doc.to_json()));
    println!(
        "   (no _conflicts any more; the winner is still {})",
        doc.rev
    );
    println!();

    println!("6. Query by path");
    let city = path::normalize("address/city")?;
    let age = path::normalize("age")?;
    let query = Query {
        conditions: vec![
            Condition {
                path: city.clone(),
                op: Op::Eq(json!("Paris")),
            },
            Condition {
                path: age.clone(),
                op: Op::Gte(json!(18)),
            },
        ],
        order: Some((age.clone(), true)),
        limit: 100,
        cursor: None,
    };
    println!("   {city} = \"Paris\" and {age} >= 18, by {age} descending:");
    for d in people.query(&query)?.docs {
        println!("     {:<6} age {}", d.id, d.body["age"]);
    }
    let plan = people.explain(&query)?;
    println!(
        "   explain: strategy {}, index {}, {} key range(s), {} condition(s) checked per document, full scan: {}",
        plan.strategy,
        plan.index.as_deref().unwrap_or("none"),
        plan.ranges,
        plan.filters,
        plan.full_scan
    );
    println!("   the same query, 2 per page, following the `next` cursor:");
    let mut page_query = Query { limit: 2, ..query };
    for page in 1.. {
        let page_result = people.query(&page_query)?;
        let ids: Vec<&str> = page_result.docs.iter().map(|d| d.id.as_str()).collect();
        println!("     page {page}: {}", ids.join(", "));
        match page_result.next {
            Some(next) => page_query.cursor = Some(next),
            None => break,
        }
    }
    let tags = path::normalize("tags/*")?;
    let devs = people.query(&Query {
        conditions: vec![Condition {
            path: tags.clone(),
            op: Op::Eq(json!("dev")),
        }],
        limit: 100,
        ..Default::default()
    })?;
    let ids: Vec<&str> = devs.docs.iter().map(|d| d.id.as_str()).collect();
    println!(
        "   {tags} = \"dev\" (tags contains \"dev\"): {}",
        ids.join(", ")
    );
    println!();

    println!("7. Delete bob, then read the changes feed from 0");
    let bob = people.get("bob", &GetOptions::default())?;
    let deleted = people.delete("bob", bob.rev).await?;
    println!("   deleted bob -> tombstone {}", deleted.rev);
    println!("   each document once, at its latest seq (hence the gaps):");
    println!("   {:>4}  {:<6} {:<34} deleted", "seq", "id", "rev");
    for row in people.changes(0, 100)? {
        println!(
            "   {:>4}  {:<6} {:<34} {}",
            row.seq,
            row.id,
            row.rev.to_string(),
            row.deleted
        );
    }
    let counts = people.counts()?;
    println!(
        "   {} live, {} deleted, update_seq {}",
        counts.doc_count, counts.deleted_count, counts.update_seq
    );
    println!();

    println!("8. Shut the node down");
    node.shutdown().await?;
    println!("   stopped: queued writes committed, barrels closed");
    Ok(())
}

/// Creates `doc`, or updates it on its current revision when it already exists (as it does
/// when the example runs again on the same data directory).
async fn upsert(barrel: &BarrelHandle, mut doc: Value) -> anyhow::Result<WriteResult> {
    let id = doc["_id"].as_str().context("doc needs an _id")?.to_owned();
    match barrel.get(&id, &GetOptions::default()) {
        Ok(current) => doc["_rev"] = json!(current.rev.to_string()),
        Err(BarrelError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(barrel.put(doc).await?)
}

fn compact(doc: &Value) -> String {
    serde_json::to_string(doc).unwrap_or_else(|e| format!("<{e}>"))
}
