//! Store tests on real redb files: every rule of DESIGN §2, the changes feed, local documents,
//! attachments, every query operator, paging, and schema migration.

use std::collections::BTreeMap;
use std::path::Path;

use cooper_actors::barrel::store::{
    self, GetOptions, Op, OpenRev, OpenRevs, Query, Store, StoreOptions, WriteOp, WriteResult,
};
use cooper_actors::BarrelError;
use cooper_protocols::document::split;
use cooper_protocols::ids::Rev;
use cooper_protocols::path;
use serde_json::{json, Value};

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("b.redb"), StoreOptions::default()).unwrap()
}

fn edit(store: &Store, doc: Value) -> Result<WriteResult, BarrelError> {
    let (mut r, _) = store
        .apply(vec![WriteOp::Edit(split(doc).unwrap())])
        .unwrap();
    r.pop().unwrap()
}

fn replicate(store: &Store, doc: Value) -> Result<WriteResult, BarrelError> {
    let (mut r, _) = store
        .apply(vec![WriteOp::Replicate(split(doc).unwrap())])
        .unwrap();
    r.pop().unwrap()
}

fn get(store: &Store, id: &str) -> Result<Value, BarrelError> {
    store
        .get(
            id,
            &GetOptions {
                conflicts: true,
                ..Default::default()
            },
        )
        .map(|d| d.to_json())
}

fn rev(s: &str) -> Rev {
    Rev::parse(s).unwrap()
}

fn h(c: char) -> String {
    c.to_string().repeat(32)
}

#[test]
fn create_generates_ids_and_deterministic_revisions() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (open(a.path()), open(b.path()));
    let gen = edit(&sa, json!({"name": "x"})).unwrap();
    assert_eq!(gen.id.len(), 32);
    assert!(gen.rev.starts_with("1-"));
    // The same edit on two stores gives the same revision, whatever the key order.
    let r1 = edit(&sa, json!({"_id": "d", "b": 1, "a": [1.5, "x"]})).unwrap();
    let r2 = edit(&sb, json!({"a": [1.5, "x"], "_id": "d", "b": 1})).unwrap();
    assert_eq!(r1.rev, r2.rev);
    let u1 = edit(&sa, json!({"_id": "d", "_rev": r1.rev, "b": 2})).unwrap();
    let u2 = edit(&sb, json!({"_id": "d", "_rev": r2.rev, "b": 2})).unwrap();
    assert_eq!(u1.rev, u2.rev);
    assert!(u1.rev.starts_with("2-"));
    // A different body gives a different revision.
    let other = edit(&sb, json!({"_id": "e", "b": 1, "a": [1.5, "y"]})).unwrap();
    assert_ne!(other.rev, r1.rev);
}

#[test]
fn update_rules_give_409s() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r1 = edit(&s, json!({"_id": "d", "v": 1})).unwrap();
    // Create over a live document without _rev.
    assert!(matches!(
        edit(&s, json!({"_id": "d", "v": 2})),
        Err(BarrelError::Conflict(_))
    ));
    // _rev on a document that does not exist.
    let phantom = json!({"_id": "nope", "_rev": format!("1-{}", h('a'))});
    assert!(matches!(edit(&s, phantom), Err(BarrelError::Conflict(_))));
    let r2 = edit(&s, json!({"_id": "d", "_rev": r1.rev, "v": 2})).unwrap();
    // A stale _rev (no longer a leaf) and an unknown one.
    assert!(matches!(
        edit(&s, json!({"_id": "d", "_rev": r1.rev, "v": 3})),
        Err(BarrelError::Conflict(_))
    ));
    let unknown = json!({"_id": "d", "_rev": format!("2-{}", h('f')), "v": 3});
    assert!(matches!(edit(&s, unknown), Err(BarrelError::Conflict(_))));
    // Retrying the very same edit answers the same revision and changes nothing.
    let seq = s.counts().unwrap().update_seq;
    let again = edit(&s, json!({"_id": "d", "_rev": r1.rev, "v": 2})).unwrap();
    assert_eq!(again.rev, r2.rev);
    assert_eq!(s.counts().unwrap().update_seq, seq);
    assert_eq!(get(&s, "d").unwrap()["v"], 2);
}

#[test]
fn deletes_are_tombstones_and_recreation_extends_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r1 = edit(&s, json!({"_id": "d", "v": 1})).unwrap();
    // Deleting needs the current revision.
    assert!(matches!(
        edit(&s, json!({"_id": "d", "_deleted": true})),
        Err(BarrelError::Conflict(_))
    ));
    let del = edit(&s, json!({"_id": "d", "_rev": r1.rev, "_deleted": true})).unwrap();
    assert!(del.rev.starts_with("2-"));
    assert_eq!(get(&s, "d"), Err(BarrelError::NotFound("deleted".into())));
    let tomb = s
        .get(
            "d",
            &GetOptions {
                rev: Some(rev(&del.rev)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(tomb.deleted);
    assert_eq!(tomb.to_json()["_deleted"], true);
    let c = s.counts().unwrap();
    assert_eq!((c.doc_count, c.deleted_count), (0, 1));
    let rows = s.changes(0, 100).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].deleted);
    // Re-creating without _rev extends the tombstone.
    let again = edit(&s, json!({"_id": "d", "v": 3})).unwrap();
    assert!(again.rev.starts_with("3-"));
    assert_eq!(get(&s, "d").unwrap()["v"], 3);
    let c = s.counts().unwrap();
    assert_eq!((c.doc_count, c.deleted_count), (1, 0));
    let history = s
        .get(
            "d",
            &GetOptions {
                revs: true,
                ..Default::default()
            },
        )
        .unwrap()
        .to_json();
    assert_eq!(history["_revisions"]["start"], 3);
    assert_eq!(history["_revisions"]["ids"].as_array().unwrap().len(), 3);
}

#[test]
fn replicated_revisions_make_conflicts_and_the_winner_is_couchdbs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let root = format!("1-{}", h('1'));
    let a2 = format!("2-{}", h('a'));
    let b2 = format!("2-{}", h('b'));
    let c3 = format!("3-{}", h('c'));
    let revs = |start: u64, ids: &[&str]| json!({"start": start, "ids": ids});
    replicate(
        &s,
        json!({"_id": "d", "_rev": a2, "_revisions": revs(2, &[&h('a'), &h('1')]), "side": "a"}),
    )
    .unwrap();
    replicate(
        &s,
        json!({"_id": "d", "_rev": b2, "_revisions": revs(2, &[&h('b'), &h('1')]), "side": "b"}),
    )
    .unwrap();
    // Same generation: the greater hash wins; the other live leaf is a conflict.
    let doc = get(&s, "d").unwrap();
    assert_eq!(doc["_rev"], b2);
    assert_eq!(doc["_conflicts"], json!([a2]));
    // Inserting a revision already held changes nothing.
    let seq = s.counts().unwrap().update_seq;
    replicate(
        &s,
        json!({"_id": "d", "_rev": a2, "_revisions": revs(2, &[&h('a'), &h('1')])}),
    )
    .unwrap();
    assert_eq!(s.counts().unwrap().update_seq, seq);
    // A higher generation wins over a greater hash.
    replicate(&s, json!({"_id": "d", "_rev": c3, "_revisions": revs(3, &[&h('c'), &h('a'), &h('1')]), "side": "c"})).unwrap();
    let doc = get(&s, "d").unwrap();
    assert_eq!(doc["_rev"], c3);
    assert_eq!(doc["_conflicts"], json!([b2]));
    // A deleted leaf loses to a live one, even with a higher generation.
    replicate(
        &s,
        json!({"_id": "d", "_rev": format!("4-{}", h('d')), "_deleted": true,
        "_revisions": revs(4, &[&h('d'), &h('c'), &h('a'), &h('1')])}),
    )
    .unwrap();
    let doc = get(&s, "d").unwrap();
    assert_eq!(doc["_rev"], b2);
    assert!(doc.get("_conflicts").is_none(), "{doc}");
    // open_revs lists every leaf; asking for an unknown one reports it missing.
    let all = s.open_revs("d", &OpenRevs::All).unwrap();
    assert_eq!(all.len(), 2);
    let asked = s
        .open_revs("d", &OpenRevs::Revs(vec![rev(&b2), rev(&root)]))
        .unwrap();
    assert!(matches!(&asked[0], OpenRev::Ok(d) if d.history.as_ref().unwrap().len() == 2));
    assert_eq!(
        asked[1],
        OpenRev::Missing(rev(&root)),
        "inner nodes keep no body"
    );
    // Resolving: delete the losing... here the tombstone branch is already dead; update b.
    let merged = edit(&s, json!({"_id": "d", "_rev": b2, "side": "merged"})).unwrap();
    assert!(merged.rev.starts_with("3-"));
    assert_eq!(s.changes(0, 10).unwrap().len(), 1, "one row per document");
}

#[test]
fn conflicts_are_resolved_by_deleting_losers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let base = edit(&s, json!({"_id": "d", "v": 0})).unwrap();
    let mine = edit(&s, json!({"_id": "d", "_rev": base.rev, "v": 1})).unwrap();
    let theirs = format!("2-{}", h('0'));
    let base_hash = base.rev.split_once('-').unwrap().1.to_owned();
    replicate(
        &s,
        json!({"_id": "d", "_rev": theirs, "v": 2,
        "_revisions": {"start": 2, "ids": [h('0'), base_hash]}}),
    )
    .unwrap();
    let doc = get(&s, "d").unwrap();
    let loser = doc["_conflicts"][0].as_str().unwrap().to_owned();
    assert!(loser == theirs || loser == mine.rev);
    edit(&s, json!({"_id": "d", "_rev": loser, "_deleted": true})).unwrap();
    let doc = get(&s, "d").unwrap();
    assert!(doc.get("_conflicts").is_none());
    assert_eq!(s.counts().unwrap().doc_count, 1);
}

#[test]
fn changes_list_each_document_once_at_its_latest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = edit(&s, json!({"_id": "a"})).unwrap();
    edit(&s, json!({"_id": "b"})).unwrap();
    edit(&s, json!({"_id": "a", "_rev": a.rev})).unwrap();
    edit(&s, json!({"_id": "c"})).unwrap();
    let rows = s.changes(0, 100).unwrap();
    let got: Vec<(u64, &str)> = rows.iter().map(|r| (r.seq, r.id.as_str())).collect();
    assert_eq!(got, vec![(2, "b"), (3, "a"), (4, "c")]);
    assert_eq!(s.changes(2, 100).unwrap().len(), 2);
    assert_eq!(s.changes(0, 1).unwrap().len(), 1);
    assert!(s.changes(4, 100).unwrap().is_empty());
    assert_eq!(s.counts().unwrap().update_seq, 4);
}

#[test]
fn revs_diff_reports_missing_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = edit(&s, json!({"_id": "a"})).unwrap();
    let unknown = rev(&format!("2-{}", h('e')));
    let mut asked = BTreeMap::new();
    asked.insert("a".to_owned(), vec![rev(&a.rev), unknown]);
    asked.insert("zz".to_owned(), vec![unknown]);
    let diff = s.revs_diff(&asked).unwrap();
    assert_eq!(diff["a"].missing, vec![unknown]);
    assert_eq!(diff["a"].possible_ancestors, vec![rev(&a.rev)]);
    assert_eq!(diff["zz"].missing, vec![unknown]);
    asked.remove("zz");
    asked.insert("a".to_owned(), vec![rev(&a.rev)]);
    assert!(s.revs_diff(&asked).unwrap().is_empty());
}

#[test]
fn local_documents_are_outside_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r = edit(&s, json!({"_id": "_local/cp", "seq": 1})).unwrap();
    assert_eq!(r.rev, "0-1");
    assert!(matches!(
        edit(&s, json!({"_id": "_local/cp", "seq": 2})),
        Err(BarrelError::Conflict(_))
    ));
    let r = edit(&s, json!({"_id": "_local/cp", "_rev": "0-1", "seq": 2})).unwrap();
    assert_eq!(r.rev, "0-2");
    assert_eq!(s.get_local("_local/cp").unwrap().0["seq"], 2);
    assert_eq!(s.counts().unwrap().update_seq, 0);
    assert!(s.changes(0, 10).unwrap().is_empty());
    edit(
        &s,
        json!({"_id": "_local/cp", "_rev": "0-2", "_deleted": true}),
    )
    .unwrap();
    assert!(matches!(
        s.get_local("_local/cp"),
        Err(BarrelError::NotFound(_))
    ));
}

#[test]
fn attachments_are_content_addressed_stubs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // "hello" in base64; its MD5 is 5d41402abc4b2a76b9719d911017c592.
    let r1 = edit(&s, json!({"_id": "d", "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}})).unwrap();
    let doc = get(&s, "d").unwrap();
    let stub = &doc["_attachments"]["a.txt"];
    assert_eq!(stub["stub"], true);
    assert_eq!(stub["length"], 5);
    assert_eq!(stub["revpos"], 1);
    assert_eq!(stub["digest"], "md5-XUFAKrxLKna5cZ2REBfFkg==");
    let (meta, data) = s.get_attachment("d", "a.txt", None).unwrap();
    assert_eq!(
        (meta.content_type.as_str(), data.as_slice()),
        ("text/plain", &b"hello"[..])
    );
    // An update that keeps the stub keeps the attachment; one without it drops it.
    let r2 = edit(
        &s,
        json!({"_id": "d", "_rev": r1.rev, "x": 1, "_attachments": {"a.txt": {"stub": true}}}),
    )
    .unwrap();
    assert_eq!(get(&s, "d").unwrap()["_attachments"]["a.txt"]["revpos"], 1);
    let r3 = edit(&s, json!({"_id": "d", "_rev": r2.rev, "x": 2})).unwrap();
    assert!(get(&s, "d").unwrap().get("_attachments").is_none());
    // A stub for an attachment the parent lacks is refused.
    let bad = json!({"_id": "d", "_rev": r3.rev, "_attachments": {"b": {"stub": true}}});
    assert!(matches!(edit(&s, bad), Err(BarrelError::BadRequest(_))));
    // Attachment writes as operations.
    let (r, _) = s
        .apply(vec![WriteOp::PutAttachment {
            id: "d".into(),
            rev: Some(rev(&r3.rev)),
            name: "b.bin".into(),
            content_type: "application/octet-stream".into(),
            data: vec![0, 1, 2],
        }])
        .unwrap();
    let r4 = r[0].clone().unwrap();
    assert_eq!(
        s.get_attachment("d", "b.bin", None).unwrap().1,
        vec![0, 1, 2]
    );
    assert_eq!(get(&s, "d").unwrap()["x"], 2, "the body is kept");
    let (r, _) = s
        .apply(vec![WriteOp::DeleteAttachment {
            id: "d".into(),
            rev: rev(&r4.rev),
            name: "b.bin".into(),
        }])
        .unwrap();
    r[0].clone().unwrap();
    assert!(matches!(
        s.get_attachment("d", "b.bin", None),
        Err(BarrelError::NotFound(_))
    ));
    // Attachment digests take part in the revision hash.
    let other = tempfile::tempdir().unwrap();
    let s2 = open(other.path());
    let plain = edit(&s2, json!({"_id": "d"})).unwrap();
    assert_ne!(plain.rev, r1.rev);
}

#[test]
fn stemming_keeps_revs_limit_generations() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("b.redb"), StoreOptions { revs_limit: 3 }).unwrap();
    let mut r = edit(&s, json!({"_id": "d", "n": 0})).unwrap();
    for n in 1..10 {
        r = edit(&s, json!({"_id": "d", "_rev": r.rev, "n": n})).unwrap();
    }
    let doc = s
        .get(
            "d",
            &GetOptions {
                revs: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(doc.history.unwrap().len(), 3);
    assert_eq!(s.rev_tree("d").unwrap().unwrap().len(), 3);
    assert_eq!(doc.rev.pos, 10);
}

#[test]
fn a_failed_write_leaves_no_trace_and_the_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let ops = vec![
        WriteOp::Edit(split(json!({"_id": "a"})).unwrap()),
        WriteOp::Edit(split(json!({"_id": "a"})).unwrap()),
        WriteOp::Edit(split(json!({"_id": "b"})).unwrap()),
    ];
    let (results, changes) = s.apply(ops).unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(BarrelError::Conflict(_))));
    assert_eq!(
        changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(s.counts().unwrap().doc_count, 2);
}

fn people(s: &Store) {
    let docs = [
        json!({"_id": "p1", "name": "Ann", "age": 31, "city": "Paris", "tags": ["a", "b"], "vip": true}),
        json!({"_id": "p2", "name": "Bob", "age": 17, "city": "Lyon", "tags": ["b"], "vip": false}),
        json!({"_id": "p3", "name": "Cid", "age": 45, "city": "Paris", "tags": [], "nick": null}),
        json!({"_id": "p4", "name": "Dee", "age": 31.5, "city": "Nice", "address": {"zip": "06000"}}),
        json!({"_id": "p5", "name": "Eve", "age": "unknown", "city": "Paris", "tags": ["c", "a"]}),
    ];
    let ops = docs
        .into_iter()
        .map(|d| WriteOp::Edit(split(d).unwrap()))
        .collect();
    s.apply(ops).unwrap();
}

fn ids(s: &Store, conds: &[(&str, Op)], order: Option<(&str, bool)>) -> Vec<String> {
    let q = Query {
        conditions: conds
            .iter()
            .map(|(p, op)| store::Condition {
                path: path::normalize(p).unwrap(),
                op: op.clone(),
            })
            .collect(),
        order: order.map(|(p, d)| (path::normalize(p).unwrap(), d)),
        limit: 100,
        cursor: None,
    };
    let page = s.query(&q).unwrap();
    assert!(page.next.is_none());
    page.docs.into_iter().map(|d| d.id).collect()
}

#[test]
fn every_query_operator() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    people(&s);
    let sorted = |conds: &[(&str, Op)]| {
        let mut v = ids(&s, conds, None);
        v.sort();
        v
    };
    assert_eq!(
        sorted(&[("city", Op::Eq(json!("Paris")))]),
        ["p1", "p3", "p5"]
    );
    assert_eq!(sorted(&[("age", Op::Eq(json!(31)))]), ["p1"]);
    assert_eq!(sorted(&[("vip", Op::Eq(json!(true)))]), ["p1"]);
    assert_eq!(sorted(&[("nick", Op::Eq(json!(null)))]), ["p3"]);
    // ne and ranges only match documents that have the path, and only the same type.
    assert_eq!(sorted(&[("city", Op::Ne(json!("Paris")))]), ["p2", "p4"]);
    assert_eq!(sorted(&[("age", Op::Gt(json!(31)))]), ["p3", "p4"]);
    assert_eq!(sorted(&[("age", Op::Gte(json!(31)))]), ["p1", "p3", "p4"]);
    assert_eq!(sorted(&[("age", Op::Lt(json!(31)))]), ["p2"]);
    assert_eq!(sorted(&[("age", Op::Lte(json!(31)))]), ["p1", "p2"]);
    assert_eq!(sorted(&[("age", Op::Gte(json!("a")))]), ["p5"]);
    assert_eq!(
        sorted(&[("city", Op::In(vec![json!("Lyon"), json!("Nice")]))]),
        ["p2", "p4"]
    );
    assert_eq!(sorted(&[("name", Op::Prefix("C".into()))]), ["p3"]);
    assert_eq!(sorted(&[("address", Op::Exists(true))]), ["p4"]);
    assert_eq!(sorted(&[("address/zip", Op::Exists(true))]), ["p4"]);
    assert_eq!(sorted(&[("tags", Op::Exists(false))]), ["p4"]);
    // An empty array exists (p3 has `tags: []`).
    assert_eq!(
        sorted(&[("tags", Op::Exists(true))]),
        ["p1", "p2", "p3", "p5"]
    );
    // Arrays by membership and by position.
    assert_eq!(sorted(&[("tags/*", Op::Eq(json!("a")))]), ["p1", "p5"]);
    assert_eq!(sorted(&[("tags/0", Op::Eq(json!("b")))]), ["p2"]);
    // AND.
    assert_eq!(
        sorted(&[
            ("city", Op::Eq(json!("Paris"))),
            ("age", Op::Gte(json!(40)))
        ]),
        ["p3"]
    );
    assert_eq!(
        sorted(&[
            ("tags/*", Op::Eq(json!("a"))),
            ("tags/*", Op::Eq(json!("b")))
        ]),
        ["p1"]
    );
}

#[test]
fn ordering_paging_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    people(&s);
    assert_eq!(
        ids(&s, &[], Some(("age", false))),
        ["p2", "p1", "p4", "p3", "p5"]
    );
    assert_eq!(
        ids(&s, &[], Some(("age", true))),
        ["p5", "p3", "p4", "p1", "p2"]
    );
    assert_eq!(
        ids(
            &s,
            &[("city", Op::Eq(json!("Paris")))],
            Some(("name", true))
        ),
        ["p5", "p3", "p1"]
    );
    assert_eq!(
        ids(&s, &[("age", Op::Gte(json!(18)))], Some(("age", true))),
        ["p3", "p4", "p1"]
    );
    // Paging through every document two at a time, in each plan.
    for (conds, order) in [
        (vec![], None),
        (vec![], Some(("name", false))),
        (vec![], Some(("name", true))),
        (vec![("city", Op::Ne(json!("x")))], None),
        (vec![("city", Op::Ne(json!("x")))], Some(("name", true))),
        (vec![("tags/*", Op::Exists(true))], None),
    ] {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let q = Query {
                conditions: conds
                    .iter()
                    .map(|(p, op): &(&str, Op)| store::Condition {
                        path: path::normalize(p).unwrap(),
                        op: op.clone(),
                    })
                    .collect(),
                order: order.map(|(p, d): (&str, bool)| (path::normalize(p).unwrap(), d)),
                limit: 2,
                cursor: cursor.clone(),
            };
            let page = s.query(&q).unwrap();
            assert!(page.docs.len() <= 2);
            all.extend(page.docs.into_iter().map(|d| d.id));
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "no document twice: {all:?}");
        let expected = if conds.is_empty() || matches!(conds[0].1, Op::Ne(_)) {
            5
        } else {
            3
        };
        assert_eq!(all.len(), expected, "{conds:?} {order:?}: {all:?}");
    }
    let explain = |conds: Vec<store::Condition>| {
        s.explain(&Query {
            conditions: conds,
            order: None,
            limit: 10,
            cursor: None,
        })
        .unwrap()
    };
    let plan = explain(vec![store::Condition {
        path: "/city".into(),
        op: Op::Eq(json!("Paris")),
    }]);
    assert_eq!(
        (plan.strategy, plan.index.as_deref(), plan.full_scan),
        ("index-scan", Some("/city"), false)
    );
    let plan = explain(vec![store::Condition {
        path: "/city".into(),
        op: Op::Exists(false),
    }]);
    assert!(plan.full_scan);
    let bad = Query {
        cursor: Some("garbage!".into()),
        limit: 1,
        ..Default::default()
    };
    assert!(matches!(s.query(&bad), Err(BarrelError::BadRequest(_))));
    let not_scalar = Query {
        conditions: vec![store::Condition {
            path: "/a".into(),
            op: Op::Eq(json!([1])),
        }],
        limit: 1,
        ..Default::default()
    };
    assert!(matches!(
        s.query(&not_scalar),
        Err(BarrelError::BadRequest(_))
    ));
}

#[test]
fn the_index_follows_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r = edit(&s, json!({"_id": "t", "status": "open"})).unwrap();
    assert_eq!(ids(&s, &[("status", Op::Eq(json!("open")))], None), ["t"]);
    let r = edit(&s, json!({"_id": "t", "_rev": r.rev, "status": "closed"})).unwrap();
    assert!(ids(&s, &[("status", Op::Eq(json!("open")))], None).is_empty());
    assert_eq!(ids(&s, &[("status", Op::Eq(json!("closed")))], None), ["t"]);
    edit(&s, json!({"_id": "t", "_rev": r.rev, "_deleted": true})).unwrap();
    assert!(ids(&s, &[("status", Op::Exists(true))], None).is_empty());
    assert!(ids(&s, &[], None).is_empty());
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        people(&s);
    }
    let s = open(dir.path());
    assert_eq!(s.counts().unwrap().doc_count, 5);
    assert_eq!(get(&s, "p1").unwrap()["name"], "Ann");
    assert_eq!(ids(&s, &[("city", Op::Eq(json!("Nice")))], None), ["p4"]);
}

/// A barrel written by schema-1 code (before the path index existed) holding the documents
/// of `people`.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-1.redb");

#[test]
fn a_schema_1_barrel_migrates_forward() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.redb");
    std::fs::copy(FIXTURE, &file).unwrap();
    let s = Store::open(&file, StoreOptions::default()).unwrap();
    assert_eq!(s.counts().unwrap().doc_count, 5);
    // The migration built the path index.
    assert_eq!(
        ids(&s, &[("city", Op::Eq(json!("Paris")))], None),
        ["p1", "p3", "p5"]
    );
    drop(s);
    // And it is not run twice.
    let s = Store::open(&file, StoreOptions::default()).unwrap();
    assert_eq!(
        ids(&s, &[("tags/*", Op::Eq(json!("a")))], None),
        ["p1", "p5"]
    );
}

#[test]
fn a_future_schema_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.redb");
    drop(Store::open(&file, StoreOptions::default()).unwrap());
    store::set_schema_version(&file, store::SCHEMA_VERSION + 1).unwrap();
    let err = Store::open(&file, StoreOptions::default()).unwrap_err();
    assert_eq!(
        err,
        BarrelError::FutureSchema {
            found: store::SCHEMA_VERSION + 1,
            supported: store::SCHEMA_VERSION
        }
    );
    assert!(err.to_string().contains("upgrade cooper"));
}

#[test]
fn the_feed_remembers_the_topics_a_document_left() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let r = edit(&s, json!({"_id": "t", "status": "open"})).unwrap();
    let r = edit(&s, json!({"_id": "t", "_rev": r.rev, "status": "closed"})).unwrap();
    edit(&s, json!({"_id": "t", "_rev": r.rev, "status": "archived"})).unwrap();
    let row = &s.changes(0, 10).unwrap()[0];
    let earlier = row.earlier_topics.clone().unwrap();
    assert!(
        earlier.contains(&"status/open".to_owned())
            && earlier.contains(&"status/closed".to_owned()),
        "{earlier:?}"
    );
    let open = |t: &str| t == "status/open";
    assert_eq!(
        row.matching_topics(None, open),
        Some(vec!["status/open".to_owned()])
    );
    assert_eq!(row.matching_topics(None, |t| t == "status/none"), None);
}

/// The files as a `kill -9` leaves them: copied while the store is open, between checkpoints.
#[test]
fn the_write_ahead_log_restores_writes_the_barrel_file_does_not_hold_yet() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // One transaction with every kind of write: a replay must give the same documents,
    // revisions, conflicts, attachments, local documents, seqs and index.
    let mut ops = Vec::new();
    for i in 0..50 {
        ops.push(WriteOp::Edit(
            split(json!({"_id": format!("d{i:02}"), "n": i, "tags": ["a", i.to_string()]}))
                .unwrap(),
        ));
    }
    ops.push(WriteOp::Edit(split(json!({"generated": true})).unwrap()));
    ops.push(WriteOp::PutLocal {
        id: "_local/cp".into(),
        rev: None,
        deleted: false,
        body: json!({"seq": 7}).as_object().unwrap().clone(),
    });
    let (results, _) = s.apply(ops).unwrap();
    let generated = results[50].as_ref().unwrap().id.clone();
    let r0 = results[0].as_ref().unwrap().rev.clone();
    let r1 = edit(&s, json!({"_id": "d00", "_rev": r0, "n": 100}))
        .unwrap()
        .rev;
    edit(&s, json!({"_id": "d00", "_rev": r1, "n": 101})).unwrap();
    replicate(
        &s,
        json!({"_id": "d01", "_rev": format!("2-{}", h('f')), "_revisions": {"start": 2, "ids": [h('f'), h('e')]}, "n": -1}),
    )
    .unwrap();
    s.apply(vec![WriteOp::PutAttachment {
        id: "d02".into(),
        rev: Some(rev(get(&s, "d02").unwrap()["_rev"].as_str().unwrap())),
        name: "a.bin".into(),
        content_type: "application/octet-stream".into(),
        data: vec![0, 1, 2, 255],
    }])
    .unwrap();
    let before: Vec<Value> = ["d00", "d01", "d02", "d49", generated.as_str()]
        .iter()
        .map(|id| get(&s, id).unwrap())
        .collect();
    let counts = s.counts().unwrap();

    let copy = tempfile::tempdir().unwrap();
    for f in ["b.redb", "b.redb.wal"] {
        std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
    }
    // Without its log, the copied file is behind: the test exercises the replay.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("b.redb"), bare.path().join("b.redb")).unwrap();
    assert!(open(bare.path()).counts().unwrap().update_seq < counts.update_seq);

    let r = open(copy.path());
    let after: Vec<Value> = ["d00", "d01", "d02", "d49", generated.as_str()]
        .iter()
        .map(|id| get(&r, id).unwrap())
        .collect();
    assert_eq!(before, after);
    let rc = r.counts().unwrap();
    assert_eq!(
        (rc.doc_count, rc.deleted_count, rc.update_seq),
        (counts.doc_count, counts.deleted_count, counts.update_seq)
    );
    assert_eq!(r.get_local("_local/cp").unwrap().1, 1);
    assert_eq!(
        r.get_attachment("d02", "a.bin", None).unwrap().1,
        vec![0, 1, 2, 255]
    );
    assert_eq!(ids(&r, &[("/tags/*", Op::Eq(json!("7")))], None), ["d07"]);
    assert_eq!(ids(&r, &[("/n", Op::Eq(json!(101)))], None), ["d00"]);
    assert_eq!(
        r.changes(0, 1000).unwrap().len(),
        s.changes(0, 1000).unwrap().len()
    );
    // The replay was checkpointed: a second open has nothing to apply and the same data.
    drop(r);
    let again = open(copy.path());
    assert_eq!(get(&again, "d00").unwrap(), before[0]);
}
