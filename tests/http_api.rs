//! The native REST API (DESIGN §6) over real sockets: barrels, documents and their revisions,
//! tombstones, conflicts, `_bulk_docs`, path queries, the changes feeds (normal, longpoll,
//! eventsource), attachments, local documents, persistence across a restart, and the node
//! routes (`/`, `/health`, `/status`, `/metrics`, `/openapi.json`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{assert_status, create_barrel, delete, put, Answer, Http};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Guards a wait on the server so that a regression fails the test instead of hanging it.
/// Not a timing assertion: it is far longer than any answer takes.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The generation of a revision `N-h`.
fn generation(rev: &str) -> u64 {
    let (n, h) = rev.split_once('-').expect("a revision N-h");
    assert!(is_hex32(h), "revision hash of {rev}");
    n.parse().expect("a generation")
}

/// Percent-encodes a query-string value.
fn enc(s: &str) -> String {
    let pair = serde_urlencoded::to_string([("x", s)]).unwrap();
    pair["x=".len()..].to_owned()
}

fn assert_error(a: &Answer, status: u16, kind: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.body["error"], kind, "{what}: {}", a.body);
    assert!(a.body["reason"].is_string(), "{what}: {}", a.body);
}

fn header(a: &Answer, name: &str) -> String {
    a.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn info(http: &Http, b: &str) -> Value {
    let a = http.get(&format!("/barrels/{b}")).await;
    assert_status(&a, 200, "barrel info");
    a.body
}

async fn update_seq(http: &Http, b: &str) -> u64 {
    info(http, b).await["update_seq"]
        .as_str()
        .expect("update_seq is a string")
        .parse()
        .unwrap()
}

/// Runs a query and returns the ids of its page, in order.
async fn query_ids(http: &Http, b: &str, qs: &str) -> Vec<String> {
    let a = http.get(&format!("/barrels/{b}/docs?{qs}")).await;
    assert_status(&a, 200, qs);
    a.body["docs"]
        .as_array()
        .unwrap_or_else(|| panic!("{qs}: {}", a.body))
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn query_set(http: &Http, b: &str, qs: &str) -> Vec<String> {
    let mut ids = query_ids(http, b, qs).await;
    ids.sort();
    ids
}

fn strs(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// The rows of a normal changes feed and its `last_seq`.
async fn changes(http: &Http, b: &str, qs: &str) -> (Vec<Value>, String) {
    let a = http.get(&format!("/barrels/{b}/changes?{qs}")).await;
    assert_status(&a, 200, qs);
    let rows = a.body["results"].as_array().unwrap().clone();
    (rows, a.body["last_seq"].as_str().unwrap().to_owned())
}

fn row_ids(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Barrels

#[actix_rt::test]
async fn barrels_are_created_listed_described_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);

    let a = http.call("PUT", "/barrels/users").await;
    assert_status(&a, 201, "PUT barrel");
    assert_eq!(a.body["ok"], true);
    let a = http.call("POST", "/barrels/orders").await;
    assert_status(&a, 201, "POST barrel");

    for method in ["PUT", "POST"] {
        let a = http.call(method, "/barrels/users").await;
        assert_error(&a, 412, "file_exists", "create again");
    }
    let a = http.call("PUT", "/barrels/Not-Valid").await;
    assert_error(&a, 400, "bad_request", "invalid barrel name");

    let a = http.get("/barrels").await;
    assert_status(&a, 200, "list");
    assert_eq!(a.body, json!(["orders", "users"]));

    let i = info(&http, "users").await;
    assert_eq!(i["name"], "users");
    assert_eq!(i["doc_count"], 0);
    assert_eq!(i["deleted_count"], 0);
    assert_eq!(i["update_seq"], "0");
    assert!(i["size_bytes"].as_u64().unwrap() > 0, "{i}");

    put(&http, "users", "ann", json!({"age": 31})).await;
    let i = info(&http, "users").await;
    assert_eq!(i["doc_count"], 1);
    assert_eq!(i["update_seq"], "1");

    let a = http.call("DELETE", "/barrels/users").await;
    assert_status(&a, 200, "delete barrel");
    assert_eq!(a.body["ok"], true);
    let a = http.get("/barrels/users").await;
    assert_error(&a, 404, "not_found", "info of a deleted barrel");
    let a = http.get("/barrels/users/docs/ann").await;
    assert_error(&a, 404, "not_found", "doc of a deleted barrel");
    let a = http.call("DELETE", "/barrels/users").await;
    assert_error(&a, 404, "not_found", "delete again");
    assert_eq!(http.get("/barrels").await.body, json!(["orders"]));

    // The name is free again.
    create_barrel(&http, "users").await;
    assert_eq!(info(&http, "users").await["doc_count"], 0);
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Documents

#[actix_rt::test]
async fn documents_are_created_read_and_updated() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;

    // POST without _id: a generated 128-bit hex id.
    let a = http
        .json("POST", "/barrels/b/docs", &json!({"name": "gen"}))
        .await;
    assert_status(&a, 201, "POST doc");
    assert_eq!(a.body["ok"], true);
    let gen = a.body["id"].as_str().unwrap().to_owned();
    assert!(is_hex32(&gen), "generated id {gen}");
    assert_eq!(generation(a.body["rev"].as_str().unwrap()), 1);
    let a = http.get(&format!("/barrels/b/docs/{gen}")).await;
    assert_status(&a, 200, "GET generated");
    assert_eq!(a.body["name"], "gen");
    // POST with an _id uses it.
    let a = http
        .json("POST", "/barrels/b/docs", &json!({"_id": "given", "x": 1}))
        .await;
    assert_status(&a, 201, "POST with _id");
    assert_eq!(a.body["id"], "given");

    // PUT creates: {ok, id, rev} and the ETag of the revision.
    let a = http
        .json(
            "PUT",
            "/barrels/b/docs/d1",
            &json!({"v": 1, "id": "not the id"}),
        )
        .await;
    assert_status(&a, 201, "PUT create");
    assert_eq!(a.body["ok"], true);
    assert_eq!(a.body["id"], "d1");
    let rev1 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev1), 1);
    assert_eq!(header(&a, "etag"), format!("\"{rev1}\""));

    // GET returns the body with _id and _rev (a member named `id` is the user's).
    let a = http.get("/barrels/b/docs/d1").await;
    assert_status(&a, 200, "GET");
    assert_eq!(
        a.body,
        json!({"_id": "d1", "_rev": rev1, "v": 1, "id": "not the id"})
    );
    let etag = header(&a, "etag");
    assert_eq!(etag, format!("\"{rev1}\""));

    // If-None-Match with the current ETag: 304 without a body.
    let a = http
        .send(
            "GET",
            "/barrels/b/docs/d1",
            &[("If-None-Match", etag.as_str())],
            None,
        )
        .await;
    assert_eq!(a.status, 304);
    assert!(a.bytes.is_empty());
    let a = http
        .send(
            "GET",
            "/barrels/b/docs/d1",
            &[("If-None-Match", "\"1-00000000000000000000000000000000\"")],
            None,
        )
        .await;
    assert_status(&a, 200, "If-None-Match with another rev");

    // Update with _rev in the body.
    let rev2 = put(&http, "b", "d1", json!({"_rev": rev1, "v": 2})).await;
    assert_eq!(generation(&rev2), 2);
    // Update with ?rev=.
    let a = http
        .json(
            "PUT",
            &format!("/barrels/b/docs/d1?rev={rev2}"),
            &json!({"v": 3}),
        )
        .await;
    assert_status(&a, 201, "update with ?rev=");
    let rev3 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev3), 3);
    // Update with If-Match (quoted, as an ETag).
    let quoted = format!("\"{rev3}\"");
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/d1",
            &[
                ("Content-Type", "application/json"),
                ("If-Match", quoted.as_str()),
            ],
            Some(br#"{"v": 4}"#.to_vec()),
        )
        .await;
    assert_status(&a, 201, "update with If-Match");
    let rev4 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev4), 4);
    assert_eq!(header(&a, "etag"), format!("\"{rev4}\""));
    let a = http.get("/barrels/b/docs/d1").await;
    assert_eq!(a.body, json!({"_id": "d1", "_rev": rev4, "v": 4}));

    // A stale revision (in the body, in ?rev=, in If-Match) is a conflict.
    let a = http
        .json(
            "PUT",
            "/barrels/b/docs/d1",
            &json!({"_rev": rev2, "v": "stale"}),
        )
        .await;
    assert_error(&a, 409, "conflict", "stale _rev");
    let a = http
        .json(
            "PUT",
            &format!("/barrels/b/docs/d1?rev={rev1}"),
            &json!({"v": "stale"}),
        )
        .await;
    assert_error(&a, 409, "conflict", "stale ?rev=");
    let stale = format!("\"{rev3}\"");
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/d1",
            &[
                ("Content-Type", "application/json"),
                ("If-Match", stale.as_str()),
            ],
            Some(br#"{"v": "stale"}"#.to_vec()),
        )
        .await;
    assert_error(&a, 409, "conflict", "stale If-Match");
    // An unknown revision of a missing document too.
    let a = http
        .json(
            "PUT",
            "/barrels/b/docs/nobody",
            &json!({"_rev": rev1, "v": 1}),
        )
        .await;
    assert_error(&a, 409, "conflict", "rev of a missing doc");

    // Creating over a live document without _rev is a conflict.
    let a = http
        .json("PUT", "/barrels/b/docs/d1", &json!({"v": "again"}))
        .await;
    assert_error(&a, 409, "conflict", "create over a live doc");
    let a = http
        .json(
            "POST",
            "/barrels/b/docs",
            &json!({"_id": "d1", "v": "again"}),
        )
        .await;
    assert_error(&a, 409, "conflict", "POST over a live doc");

    // _id in the body must be the URL's.
    let a = http
        .json(
            "PUT",
            "/barrels/b/docs/d1",
            &json!({"_id": "other", "_rev": rev4}),
        )
        .await;
    assert_error(&a, 400, "bad_request", "_id differs from the URL");
    // The same _id is fine.
    put(&http, "b", "d1", json!({"_id": "d1", "_rev": rev4, "v": 5})).await;

    // Bad input: unknown _ member, not an object, not JSON, wrong content type, bad rev.
    let a = http
        .json("PUT", "/barrels/b/docs/x", &json!({"_x": 1}))
        .await;
    assert_error(&a, 400, "bad_request", "reserved member");
    let a = http.json("PUT", "/barrels/b/docs/x", &json!([1, 2])).await;
    assert_error(&a, 400, "bad_request", "not an object");
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/x",
            &[("Content-Type", "application/json")],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_error(&a, 400, "bad_request", "not JSON");
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/x",
            &[("Content-Type", "text/plain")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_error(&a, 415, "unsupported_media_type", "text/plain");
    let a = http
        .json("PUT", "/barrels/b/docs/x?rev=banana", &json!({}))
        .await;
    assert_error(&a, 400, "bad_request", "bad rev");
    let a = http.get("/barrels/b/docs/never").await;
    assert_error(&a, 404, "not_found", "missing doc");
    let a = http.get("/barrels/nope/docs/d1").await;
    assert_error(&a, 404, "not_found", "missing barrel");

    // Nothing of the refused writes landed.
    let i = info(&http, "b").await;
    assert_eq!(i["doc_count"], 3, "{i}");
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn deletions_write_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;
    let rev1 = put(&http, "b", "t", json!({"v": 1})).await;
    put(&http, "b", "keep", json!({"v": 1})).await;
    let i = info(&http, "b").await;
    assert_eq!(
        (i["doc_count"].as_u64(), i["deleted_count"].as_u64()),
        (Some(2), Some(0))
    );

    // Without a revision: 409.
    let a = http.call("DELETE", "/barrels/b/docs/t").await;
    assert_error(&a, 409, "conflict", "delete without rev");
    // With a stale one: 409.
    let a = http
        .call(
            "DELETE",
            "/barrels/b/docs/t?rev=1-00000000000000000000000000000000",
        )
        .await;
    assert_error(&a, 409, "conflict", "delete with an unknown rev");

    let a = http
        .call("DELETE", &format!("/barrels/b/docs/t?rev={rev1}"))
        .await;
    assert_status(&a, 200, "delete");
    assert_eq!(a.body["ok"], true);
    assert_eq!(a.body["id"], "t");
    let tomb = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&tomb), 2);

    let a = http.get("/barrels/b/docs/t").await;
    assert_error(&a, 404, "not_found", "GET deleted");
    assert_eq!(a.body["reason"], "deleted");
    let a = http.get(&format!("/barrels/b/docs/t?rev={tomb}")).await;
    assert_status(&a, 200, "GET the tombstone");
    assert_eq!(a.body["_deleted"], true);
    assert_eq!(a.body["_rev"], tomb);
    // Inner revisions keep their ids only (DESIGN §2): the body of 1-… is gone.
    let a = http.get(&format!("/barrels/b/docs/t?rev={rev1}")).await;
    assert_error(&a, 404, "not_found", "GET an inner rev");

    let i = info(&http, "b").await;
    assert_eq!(
        (i["doc_count"].as_u64(), i["deleted_count"].as_u64()),
        (Some(1), Some(1))
    );
    let a = http.call("DELETE", "/barrels/b/docs/t").await;
    assert_error(&a, 409, "conflict", "delete a tombstone without rev");

    // Re-creating without _rev extends the tombstone.
    let a = http
        .json("PUT", "/barrels/b/docs/t", &json!({"v": "back"}))
        .await;
    assert_status(&a, 201, "re-create");
    let rev3 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev3), 3);
    let a = http.get("/barrels/b/docs/t?revs=true").await;
    assert_eq!(a.body["v"], "back");
    let ids: Vec<&str> = a.body["_revisions"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(a.body["_revisions"]["start"], 3);
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[1], tomb.split_once('-').unwrap().1);
    let i = info(&http, "b").await;
    assert_eq!(
        (i["doc_count"].as_u64(), i["deleted_count"].as_u64()),
        (Some(2), Some(0))
    );

    // Deleting with If-Match.
    let quoted = format!("\"{rev3}\"");
    let a = http
        .send(
            "DELETE",
            "/barrels/b/docs/t",
            &[("If-Match", quoted.as_str())],
            None,
        )
        .await;
    assert_status(&a, 200, "delete with If-Match");
    assert_eq!(generation(a.body["rev"].as_str().unwrap()), 4);
    let i = info(&http, "b").await;
    assert_eq!(
        (i["doc_count"].as_u64(), i["deleted_count"].as_u64()),
        (Some(1), Some(1))
    );
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn replicated_revisions_make_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;
    let rev1 = put(&http, "b", "c", json!({"v": "root"})).await;
    let h1 = rev1.split_once('-').unwrap().1.to_owned();
    let (hx, hy) = ("f".repeat(32), "e".repeat(32));
    let (rx, ry) = (format!("2-{hx}"), format!("2-{hy}"));

    for (rev, h, v) in [(&rx, &hx, "x"), (&ry, &hy, "y")] {
        let a = http
            .json(
                "PUT",
                "/barrels/b/docs/c?new_edits=false",
                &json!({"_rev": rev, "_revisions": {"start": 2, "ids": [h, h1]}, "v": v}),
            )
            .await;
        assert_status(&a, 201, "new_edits=false");
        assert_eq!(a.body["rev"], *rev, "the given revision is stored as is");
    }
    // Writing the same revision again is a no-op.
    let a = http
        .json(
            "PUT",
            "/barrels/b/docs/c?new_edits=false",
            &json!({"_rev": rx, "v": "x"}),
        )
        .await;
    assert_status(&a, 201, "new_edits=false again");

    // The winner is the greater hash; the other leaf is a conflict.
    let a = http.get("/barrels/b/docs/c").await;
    assert_eq!(a.body["_rev"], rx);
    assert_eq!(a.body["v"], "x");
    assert!(a.body.get("_conflicts").is_none(), "only when asked");
    let a = http.get("/barrels/b/docs/c?conflicts=true").await;
    assert_status(&a, 200, "conflicts=true");
    assert_eq!(a.body["_conflicts"], json!([ry]));

    let a = http.get("/barrels/b/docs/c?revs=true").await;
    assert_eq!(a.body["_revisions"], json!({"start": 2, "ids": [hx, h1]}));
    let a = http
        .get(&format!("/barrels/b/docs/c?rev={ry}&revs=true"))
        .await;
    assert_eq!(a.body["v"], "y");
    assert_eq!(a.body["_revisions"], json!({"start": 2, "ids": [hy, h1]}));

    // open_revs=all: every leaf, each as {"ok": doc}.
    let a = http.get("/barrels/b/docs/c?open_revs=all").await;
    assert_status(&a, 200, "open_revs=all");
    let leaves: BTreeSet<String> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["ok"]["_id"], "c", "{r}");
            r["ok"]["_rev"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(leaves, BTreeSet::from([rx.clone(), ry.clone()]));

    // open_revs=[…]: found ones as ok, unknown ones as missing.
    let unknown = format!("3-{}", "a".repeat(32));
    let list = json!([ry, unknown]).to_string();
    let a = http
        .get(&format!("/barrels/b/docs/c?open_revs={}", enc(&list)))
        .await;
    assert_status(&a, 200, "open_revs list");
    assert_eq!(a.body[0]["ok"]["_rev"], ry);
    assert_eq!(a.body[0]["ok"]["v"], "y");
    assert_eq!(a.body[1], json!({"missing": unknown}));
    let a = http.get("/barrels/b/docs/c?open_revs=nonsense").await;
    assert_error(&a, 400, "bad_request", "bad open_revs");

    // Resolving: delete the loser; the conflict is gone.
    delete(&http, "b", "c", &ry).await;
    let a = http.get("/barrels/b/docs/c?conflicts=true").await;
    assert!(a.body.get("_conflicts").is_none(), "{}", a.body);
    assert_eq!(a.body["_rev"], rx);
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn bulk_docs_answer_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;
    let live = put(&http, "b", "live", json!({"v": 1})).await;

    let a = http
        .json(
            "POST",
            "/barrels/b/_bulk_docs",
            &json!({"docs": [
                {"_id": "n1", "v": 1},
                {"_id": "live", "v": "no rev"},
                {"_id": "bad", "_x": true},
                {"v": "generated"},
                {"_id": "live", "_rev": live, "v": 2},
            ]}),
        )
        .await;
    assert_status(&a, 201, "_bulk_docs");
    let r = a.body.as_array().unwrap();
    assert_eq!(r.len(), 5, "{}", a.body);
    assert_eq!(r[0]["ok"], true);
    assert_eq!(r[0]["id"], "n1");
    assert_eq!(generation(r[0]["rev"].as_str().unwrap()), 1);
    assert_eq!(r[1]["id"], "live");
    assert_eq!(r[1]["error"], "conflict");
    assert!(r[1]["reason"].is_string());
    assert_eq!(r[2]["id"], "bad");
    assert_eq!(r[2]["error"], "bad_request");
    assert!(r[2]["reason"].is_string());
    assert_eq!(r[3]["ok"], true);
    assert!(is_hex32(r[3]["id"].as_str().unwrap()), "{}", r[3]);
    assert_eq!(r[4]["ok"], true);
    assert_eq!(r[4]["id"], "live");
    assert_eq!(generation(r[4]["rev"].as_str().unwrap()), 2);

    assert_eq!(http.get("/barrels/b/docs/n1").await.body["v"], 1);
    assert_eq!(http.get("/barrels/b/docs/live").await.body["v"], 2);
    assert_eq!(http.get("/barrels/b/docs/bad").await.status, 404);
    let gen = r[3]["id"].as_str().unwrap();
    assert_eq!(
        http.get(&format!("/barrels/b/docs/{gen}")).await.body["v"],
        "generated"
    );

    // new_edits=false stores the given revisions and their history.
    let (ha, hb, hc) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
    let a = http
        .json(
            "POST",
            "/barrels/b/_bulk_docs",
            &json!({"new_edits": false, "docs": [
                {"_id": "r1", "_rev": format!("1-{ha}"), "v": 1},
                {"_id": "r2", "_rev": format!("2-{hb}"),
                 "_revisions": {"start": 2, "ids": [hb, hc]}, "v": 2},
                {"_id": "r3", "_rev": format!("1-{ha}"), "_deleted": true},
            ]}),
        )
        .await;
    assert_status(&a, 201, "_bulk_docs new_edits=false");
    assert_eq!(
        a.body,
        json!([
            {"ok": true, "id": "r1", "rev": format!("1-{ha}")},
            {"ok": true, "id": "r2", "rev": format!("2-{hb}")},
            {"ok": true, "id": "r3", "rev": format!("1-{ha}")},
        ])
    );
    let a = http.get("/barrels/b/docs/r1").await;
    assert_eq!(
        a.body,
        json!({"_id": "r1", "_rev": format!("1-{ha}"), "v": 1})
    );
    let a = http.get("/barrels/b/docs/r2?revs=true").await;
    assert_eq!(a.body["_revisions"], json!({"start": 2, "ids": [hb, hc]}));
    assert_eq!(
        http.get("/barrels/b/docs/r3").await.body["reason"],
        "deleted"
    );
    let i = info(&http, "b").await;
    assert_eq!(
        (i["doc_count"].as_u64(), i["deleted_count"].as_u64()),
        (Some(5), Some(1))
    );

    // A body that is not {"docs": [...]} is a 400 for the whole request.
    let a = http
        .json("POST", "/barrels/b/_bulk_docs", &json!({"documents": []}))
        .await;
    assert_error(&a, 400, "bad_request", "bad bulk body");
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Queries

async fn people(http: &Http) {
    create_barrel(http, "p").await;
    let docs = [
        json!({"_id": "p1", "name": "ann", "age": 31, "city": "Paris", "tags": ["a", "b"],
               "code": "18", "address": {"city": "Paris", "zip": "75001"}}),
        json!({"_id": "p2", "name": "bob", "age": 18, "city": "Lyon", "tags": ["b"], "code": 18}),
        json!({"_id": "p3", "name": "cat", "age": 45, "city": "Paris", "nick": "kit"}),
        json!({"_id": "p4", "name": "dan", "age": 12, "tags": ["c", "a"], "active": true}),
        json!({"_id": "p5", "name": "eve", "age": "old", "active": false}),
        json!({"_id": "p6", "name": "anna", "age": 27, "city": "Nice", "nick": null}),
    ];
    let a = http
        .json("POST", "/barrels/p/_bulk_docs", &json!({"docs": docs}))
        .await;
    assert_status(&a, 201, "people");
}

#[actix_rt::test]
async fn queries_use_every_operator() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    people(&http).await;

    let cases: &[(&str, &[&str])] = &[
        ("age=eq.18", &["p2"]),
        ("/age=eq.18", &["p2"]),
        // JSON-typed values: a number, a string that looks like one.
        ("code=eq.18", &["p2"]),
        ("code=eq.%2218%22", &["p1"]),
        ("age=eq.%2218%22", &[]),
        ("name=eq.ann", &["p1"]),
        ("name=eq.%22ann%22", &["p1"]),
        ("active=eq.true", &["p4"]),
        ("active=eq.false", &["p5"]),
        ("nick=eq.null", &["p6"]),
        // ne: only documents that have the path.
        ("age=ne.18", &["p1", "p3", "p4", "p5", "p6"]),
        ("city=ne.Paris", &["p2", "p6"]),
        // Ranges compare within one type.
        ("age=gt.18", &["p1", "p3", "p6"]),
        ("age=gte.18", &["p1", "p2", "p3", "p6"]),
        ("age=lt.18", &["p4"]),
        ("age=lte.18", &["p2", "p4"]),
        ("age=gt.n", &["p5"]),
        ("name=lt.b", &["p1", "p6"]),
        ("city=in.(Paris,Nice)", &["p1", "p3", "p6"]),
        ("age=in.(12,%2218%22,45)", &["p3", "p4"]),
        ("name=prefix.an", &["p1", "p6"]),
        ("name=prefix.z", &[]),
        ("nick=exists.true", &["p3", "p6"]),
        ("nick=exists.false", &["p1", "p2", "p4", "p5"]),
        ("address=exists.true", &["p1"]),
        ("address/zip=exists.true", &["p1"]),
        // Arrays: membership and position.
        ("tags/*=eq.a", &["p1", "p4"]),
        ("tags/*=eq.b", &["p1", "p2"]),
        ("tags/*=in.(c,b)", &["p1", "p2", "p4"]),
        ("tags/0=eq.c", &["p4"]),
        ("tags/1=eq.a", &["p4"]),
        ("address/city=eq.Paris", &["p1"]),
        // AND of conditions.
        ("city=eq.Paris&age=gt.40", &["p3"]),
        ("city=eq.Paris&tags/*=eq.b", &["p1"]),
        ("tags/*=eq.a&age=lt.20", &["p4"]),
        ("city=eq.Paris&city=eq.Lyon", &[]),
        // No condition: every document.
        ("", &["p1", "p2", "p3", "p4", "p5", "p6"]),
    ];
    for (qs, want) in cases {
        assert_eq!(query_set(&http, "p", qs).await, strs(want), "{qs}");
    }

    // Documents come back whole, with _id and _rev.
    let a = http.get("/barrels/p/docs?name=eq.bob").await;
    let doc = &a.body["docs"][0];
    assert_eq!(doc["_id"], "p2");
    assert_eq!(generation(doc["_rev"].as_str().unwrap()), 1);
    assert_eq!(doc["tags"], json!(["b"]));
    assert_eq!(a.body["next"], Value::Null);

    // Order by one path, ascending and descending.
    let asc = strs(&["p4", "p2", "p6", "p1", "p3"]);
    let mut desc = asc.clone();
    desc.reverse();
    assert_eq!(query_ids(&http, "p", "age=gte.0&order=age.asc").await, asc);
    assert_eq!(query_ids(&http, "p", "age=gte.0&order=age").await, asc);
    assert_eq!(
        query_ids(&http, "p", "age=gte.0&order=age.desc").await,
        desc
    );
    assert_eq!(
        query_ids(&http, "p", "order=name.asc").await,
        strs(&["p1", "p6", "p2", "p3", "p4", "p5"])
    );
    // Strings sort after numbers.
    assert_eq!(
        query_ids(&http, "p", "order=age.desc").await,
        strs(&["p5", "p3", "p1", "p6", "p2", "p4"])
    );
    assert_eq!(
        query_ids(&http, "p", "city=eq.Paris&order=age.desc").await,
        strs(&["p3", "p1"])
    );

    // Bad queries are 400s with a reason.
    for bad in [
        "age=like.18",
        "age=18",
        "age=exists.maybe",
        "age=in.18",
        "limit=0",
        "limit=x",
        "explain=maybe",
        "cursor=not-a-cursor",
        "tags/*=eq.%5B1%5D",
    ] {
        let a = http.get(&format!("/barrels/p/docs?{bad}")).await;
        assert_error(&a, 400, "bad_request", bad);
    }
    let a = http.get("/barrels/nope/docs?age=eq.1").await;
    assert_error(&a, 404, "not_found", "query of a missing barrel");
    node.node.shutdown().await.unwrap();
}

/// Follows `next` from the first page to the last; returns every id in order.
async fn all_pages(http: &Http, b: &str, qs: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/barrels/{b}/docs?{qs}&cursor={}", enc(c)),
            None => format!("/barrels/{b}/docs?{qs}"),
        };
        let a = http.get(&url).await;
        assert_status(&a, 200, &url);
        pages += 1;
        assert!(pages < 100, "{qs}: endless paging");
        for d in a.body["docs"].as_array().unwrap() {
            out.push(d["_id"].as_str().unwrap().to_owned());
        }
        match &a.body["next"] {
            Value::String(next) => cursor = Some(next.clone()),
            Value::Null => return (out, pages),
            other => panic!("{qs}: next is {other}"),
        }
    }
}

#[actix_rt::test]
async fn queries_page_with_a_cursor_and_explain_their_plan() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "pages").await;
    const N: usize = 30;
    // Values collide in pairs on `pair`, so ordering by it must break ties consistently.
    let docs: Vec<Value> = (0..N)
        .map(|i| {
            json!({"_id": format!("d{i:02}"), "n": i, "pair": i / 2, "group": "x",
                        "tags": ["t", format!("t{}", i % 3)]})
        })
        .collect();
    let a = http
        .json("POST", "/barrels/pages/_bulk_docs", &json!({"docs": docs}))
        .await;
    assert_status(&a, 201, "bulk");
    let ids: Vec<String> = (0..N).map(|i| format!("d{i:02}")).collect();
    let mut rev_ids = ids.clone();
    rev_ids.reverse();

    for (qs, want) in [
        ("limit=7", ids.clone()),
        ("limit=7&order=n.asc", ids.clone()),
        ("limit=7&order=n.desc", rev_ids.clone()),
        ("limit=7&group=eq.x&order=n.desc", rev_ids.clone()),
        ("limit=7&n=gte.0&order=n.asc", ids.clone()),
        ("limit=4&tags/*=eq.t", ids.clone()),
        ("limit=4&tags/*=in.(t,t1)", ids.clone()),
        ("limit=5&order=pair.asc", ids.clone()),
        ("limit=5&group=eq.x&order=pair.desc", rev_ids.clone()),
    ] {
        let (got, pages) = all_pages(&http, "pages", qs).await;
        if qs.contains("order=pair") {
            // Ties are ordered somehow; every document exactly once, pairs in order.
            let set: BTreeSet<&String> = got.iter().collect();
            assert_eq!(set.len(), N, "{qs}: repeats in {got:?}");
            assert_eq!(got.len(), N, "{qs}: {got:?}");
            let pairs: Vec<usize> = got
                .iter()
                .map(|id| id[1..].parse::<usize>().unwrap() / 2)
                .collect();
            let mut sorted = pairs.clone();
            sorted.sort_unstable();
            if qs.contains("desc") {
                sorted.reverse();
            }
            assert_eq!(pairs, sorted, "{qs}");
        } else {
            assert_eq!(got, want, "{qs}");
        }
        assert!(pages >= 5, "{qs}: {pages} pages");
    }
    // A page size that divides the count exactly ends with a null `next` or an empty page.
    let (got, _) = all_pages(&http, "pages", "limit=10&order=n.asc").await;
    assert_eq!(got, ids);
    let (got, _) = all_pages(&http, "pages", "limit=3&tags/*=eq.t1").await;
    let want: Vec<String> = (0..N)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("d{i:02}"))
        .collect();
    assert_eq!(got, want);

    // explain=true answers the plan instead of documents.
    let plan = |qs: &'static str| {
        let http = &http;
        async move {
            let a = http
                .get(&format!("/barrels/pages/docs?{qs}&explain=true"))
                .await;
            assert_status(&a, 200, qs);
            assert!(a.body.get("docs").is_none(), "{qs}: {}", a.body);
            a.body
        }
    };
    let p = plan("group=eq.x").await;
    assert_eq!(p["strategy"], "index-scan", "{p}");
    assert_eq!(p["index"], "/group");
    assert_eq!(p["full_scan"], false);
    let p = plan("n=gt.3&order=n.desc").await;
    assert_eq!(p["strategy"], "index-scan", "{p}");
    assert_eq!(p["index"], "/n");
    let p = plan("group=eq.x&order=n.asc").await;
    assert_eq!(p["strategy"], "index-collect", "{p}");
    assert_eq!(p["index"], "/group");
    let p = plan("").await;
    assert_eq!(p["strategy"], "ids", "{p}");
    assert_eq!(p["index"], Value::Null);
    assert_eq!(p["full_scan"], false);
    let p = plan("nick=exists.false").await;
    assert_eq!(p["strategy"], "full-scan", "{p}");
    assert_eq!(p["full_scan"], true);
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Changes

#[actix_rt::test]
async fn changes_feed_lists_each_document_once_at_its_latest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "f").await;
    let (rows, last) = changes(&http, "f", "").await;
    assert!(rows.is_empty());
    assert_eq!(last, "0");

    let a1 = put(&http, "f", "a", json!({"status": "open"})).await; // seq 1
    let b1 = put(&http, "f", "b", json!({"status": "closed"})).await; // seq 2
    let c1 = put(&http, "f", "c", json!({"status": "open"})).await; // seq 3
    let a2 = put(&http, "f", "a", json!({"_rev": a1, "status": "closed"})).await; // seq 4
    let b2 = delete(&http, "f", "b", &b1).await; // seq 5
    assert_eq!(update_seq(&http, "f").await, 5);

    let (rows, last) = changes(&http, "f", "").await;
    assert_eq!(
        Value::Array(rows.clone()),
        json!([
            {"seq": "3", "id": "c", "changes": [{"rev": c1}]},
            {"seq": "4", "id": "a", "changes": [{"rev": a2}]},
            {"seq": "5", "id": "b", "changes": [{"rev": b2}], "deleted": true},
        ])
    );
    assert_eq!(last, "5");

    let (rows, last) = changes(&http, "f", "since=3").await;
    assert_eq!(row_ids(&rows), ["a", "b"]);
    assert_eq!(last, "5");
    let (rows, last) = changes(&http, "f", "since=5").await;
    assert!(rows.is_empty());
    assert_eq!(last, "5");
    let (rows, last) = changes(&http, "f", "since=now").await;
    assert!(rows.is_empty());
    assert_eq!(last, "5");
    let (rows, last) = changes(&http, "f", "limit=1").await;
    assert_eq!(row_ids(&rows), ["c"]);
    assert_eq!(last, "3", "last_seq is the seq of the last row");
    let (rows, last) = changes(&http, "f", "since=3&limit=1").await;
    assert_eq!(row_ids(&rows), ["a"]);
    assert_eq!(last, "4");

    // include_docs: the winner, or a tombstone stub for deleted documents.
    let (rows, _) = changes(&http, "f", "include_docs=true").await;
    assert_eq!(
        rows[0]["doc"],
        json!({"_id": "c", "_rev": c1, "status": "open"})
    );
    assert_eq!(
        rows[1]["doc"],
        json!({"_id": "a", "_rev": a2, "status": "closed"})
    );
    assert_eq!(rows[2]["doc"]["_deleted"], true);
    assert_eq!(rows[2]["doc"]["_id"], "b");
    assert_eq!(rows[2]["deleted"], true);
    let (rows, _) = changes(&http, "f", "include_docs=false").await;
    assert!(rows.iter().all(|r| r.get("doc").is_none()));

    // Topic filters match the current winner's leaves, and those of the winners a document
    // had before (`a` was open, then closed: it left the set).
    let (rows, last) = changes(&http, "f", "filter=status/open").await;
    assert_eq!(row_ids(&rows), ["c", "a"]);
    assert_eq!(last, rows[1]["seq"].as_str().unwrap());
    // `b` was closed, then deleted: it left the set too.
    let (rows, _) = changes(&http, "f", "filter=status/closed").await;
    assert_eq!(row_ids(&rows), ["a", "b"]);
    let (rows, _) = changes(&http, "f", "filter=status/%2B").await;
    assert_eq!(row_ids(&rows), ["c", "a", "b"]);
    let (rows, _) = changes(&http, "f", "filter=status/open&filter=_id/b").await;
    assert_eq!(row_ids(&rows), ["c", "a", "b"]);
    let (rows, _) = changes(&http, "f", "filter=_id/%23").await;
    assert_eq!(row_ids(&rows), ["c", "a", "b"]);
    let (rows, _) = changes(&http, "f", "filter=nothing/here").await;
    assert!(rows.is_empty());

    // style=all_docs lists every leaf of a conflicted document.
    // A second root 1-000… loses to c's own 1-… (same generation, smaller hash).
    let branch = format!("1-{}", "0".repeat(32));
    let a = http
        .json(
            "PUT",
            "/barrels/f/docs/c?new_edits=false",
            &json!({"_rev": branch, "status": "open"}),
        )
        .await;
    assert_status(&a, 201, "branch"); // seq 6
    let (rows, last) = changes(&http, "f", "since=5").await;
    assert_eq!(row_ids(&rows), ["c"]);
    assert_eq!(rows[0]["seq"], "6");
    assert_eq!(rows[0]["changes"], json!([{"rev": c1}]));
    assert_eq!(last, "6");
    let (rows, _) = changes(&http, "f", "since=5&style=all_docs").await;
    let leaves: BTreeSet<&str> = rows[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_str().unwrap())
        .collect();
    assert_eq!(leaves.len(), 2, "{}", rows[0]);
    assert!(leaves.contains(branch.as_str()));

    for bad in [
        "since=x",
        "limit=0",
        "style=weird",
        "feed=weird",
        "include_docs=1",
        "filter=a/%23/b",
    ] {
        let a = http.get(&format!("/barrels/f/changes?{bad}")).await;
        assert_error(&a, 400, "bad_request", bad);
    }
    node.node.shutdown().await.unwrap();
}

/// A streaming response body read chunk by chunk.
struct Body<S> {
    res: S,
    buf: String,
}

impl<S, B, E> Body<S>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    fn new(res: S) -> Self {
        Self {
            res,
            buf: String::new(),
        }
    }

    /// Reads one more chunk; false at the end of the body.
    async fn more(&mut self) -> bool {
        let next = tokio::time::timeout(HANG_GUARD, self.res.next())
            .await
            .expect("the server sends something");
        match next {
            Some(chunk) => {
                let chunk = chunk.expect("a chunk");
                self.buf
                    .push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
                true
            }
            None => false,
        }
    }

    /// The next server-sent event frame (up to its blank line), without the blank line.
    async fn frame(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                return frame.trim_end().to_owned();
            }
            assert!(self.more().await, "the stream ended: {:?}", self.buf);
        }
    }

    /// The rest of the body.
    async fn rest(&mut self) -> String {
        while self.more().await {}
        std::mem::take(&mut self.buf)
    }
}

/// An `id:`/`data:` frame as (seq, row); `None` for comments such as heartbeats.
fn event(frame: &str) -> Option<(String, Value)> {
    let mut seq = None;
    let mut data = None;
    for line in frame.lines() {
        if let Some(s) = line.strip_prefix("id: ") {
            seq = Some(s.to_owned());
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str::<Value>(d).unwrap());
        }
    }
    Some((seq?, data?))
}

fn feed_client() -> awc::Client {
    awc::Client::builder().timeout(HANG_GUARD).finish()
}

#[actix_rt::test]
async fn longpoll_answers_at_once_or_waits_for_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "lp").await;
    put(&http, "lp", "first", json!({"v": 1})).await;

    // Changes exist: the answer comes at once.
    let a = http.get("/barrels/lp/changes?feed=longpoll&since=0").await;
    assert_status(&a, 200, "longpoll with changes");
    assert!(header(&a, "content-type").starts_with("application/json"));
    assert_eq!(row_ids(a.body["results"].as_array().unwrap()), ["first"]);
    assert_eq!(a.body["last_seq"], "1");

    // Nothing after `since`: the request waits for the next write. The longpoll subscribes
    // before it reads, so the write is seen whichever of the two reaches the node first.
    let url = node.url.clone();
    let waiting = actix_rt::spawn(async move {
        Http::at(&url)
            .get("/barrels/lp/changes?feed=longpoll&since=1&include_docs=true")
            .await
    });
    let rev = put(&http, "lp", "second", json!({"v": 2})).await;
    let a = tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("the longpoll answers after the write")
        .unwrap();
    assert_status(&a, 200, "longpoll after a write");
    let rows = a.body["results"].as_array().unwrap();
    assert_eq!(row_ids(rows), ["second"]);
    assert_eq!(rows[0]["changes"], json!([{"rev": rev}]));
    assert_eq!(rows[0]["doc"]["v"], 2);
    assert_eq!(a.body["last_seq"], "2");

    // The same, certainly through the live path: a heartbeat newline is only sent while the
    // longpoll waits, subscribed, so the write made after it arrives live.
    let client = feed_client();
    let res = client
        .get(format!(
            "{}/barrels/lp/changes?feed=longpoll&since=2&include_docs=true&heartbeat=100",
            node.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut body = Body::new(res);
    while !body.buf.contains('\n') {
        assert!(body.more().await, "a heartbeat before the answer");
    }
    let rev = put(&http, "lp", "live", json!({"v": 3})).await;
    let text = body.rest().await;
    let answer: Value = serde_json::from_str(text.trim()).unwrap();
    let rows = answer["results"].as_array().unwrap();
    assert_eq!(row_ids(rows), ["live"]);
    assert_eq!(rows[0]["seq"], "3");
    assert_eq!(rows[0]["changes"], json!([{"rev": rev}]));
    assert_eq!(rows[0]["doc"], json!({"_id": "live", "_rev": rev, "v": 3}));
    assert_eq!(answer["last_seq"], "3");

    // A filter that the first write does not match keeps it waiting; the matching one
    // answers.
    let url = node.url.clone();
    let waiting = actix_rt::spawn(async move {
        Http::at(&url)
            .get("/barrels/lp/changes?feed=longpoll&since=3&filter=kind/wanted")
            .await
    });
    put(&http, "lp", "other", json!({"kind": "other"})).await;
    put(&http, "lp", "wanted", json!({"kind": "wanted"})).await;
    let a = tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("the filtered longpoll answers")
        .unwrap();
    assert_eq!(row_ids(a.body["results"].as_array().unwrap()), ["wanted"]);
    assert_eq!(a.body["last_seq"], "5");

    // No write within a short timeout: no rows and last_seq = since.
    let a = http
        .get("/barrels/lp/changes?feed=longpoll&since=5&timeout=20")
        .await;
    assert_status(&a, 200, "longpoll timeout");
    assert_eq!(a.body, json!({"results": [], "last_seq": "5"}));
    let a = http
        .get("/barrels/lp/changes?feed=longpoll&since=now&timeout=1")
        .await;
    assert_eq!(a.body, json!({"results": [], "last_seq": "5"}));
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn eventsource_streams_changes_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "ev").await;
    put(&http, "ev", "before", json!({"v": 0})).await; // seq 1
    let r2 = put(&http, "ev", "replayed", json!({"v": 1})).await; // seq 2

    let client = feed_client();
    let res = client
        .get(format!(
            "{}/barrels/ev/changes?feed=eventsource&since=1&heartbeat=100&include_docs=true",
            node.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers().get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut body = Body::new(res);

    // What is already there after `since` comes first, then a heartbeat once the stream
    // waits for live changes.
    let mut frames = Vec::new();
    loop {
        let frame = body.frame().await;
        match event(&frame) {
            Some(e) => frames.push(e),
            None => {
                assert!(frame.starts_with(':'), "a comment: {frame:?}");
                break;
            }
        }
    }
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, "2");
    assert_eq!(frames[0].1["id"], "replayed");
    assert_eq!(frames[0].1["changes"], json!([{"rev": r2}]));
    assert_eq!(frames[0].1["doc"]["v"], 1);

    // Written after the stream started waiting: delivered live, in seq order.
    let r3 = put(&http, "ev", "live1", json!({"v": 2})).await; // seq 3
    let r4 = put(&http, "ev", "live2", json!({"v": 3})).await; // seq 4
    let d4 = delete(&http, "ev", "live2", &r4).await; // seq 5
    let mut live = Vec::new();
    while live.len() < 3 {
        if let Some(e) = event(&body.frame().await) {
            live.push(e);
        }
    }
    let seqs: Vec<&str> = live.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(seqs, ["3", "4", "5"]);
    assert_eq!(live[0].1["id"], "live1");
    assert_eq!(live[0].1["seq"], "3");
    assert_eq!(live[0].1["changes"], json!([{"rev": r3}]));
    assert_eq!(
        live[0].1["doc"],
        json!({"_id": "live1", "_rev": r3, "v": 2})
    );
    assert_eq!(live[1].1["id"], "live2");
    assert_eq!(live[1].1["changes"], json!([{"rev": r4}]));
    assert_eq!(live[2].1["id"], "live2");
    assert_eq!(live[2].1["deleted"], true);
    assert_eq!(live[2].1["changes"], json!([{"rev": d4}]));
    assert_eq!(live[2].1["doc"]["_deleted"], true);
    drop(body);
    drop(client);

    // A filtered stream only carries matching changes.
    let client = feed_client();
    let res = client
        .get(format!(
            "{}/barrels/ev/changes?feed=eventsource&since=5&filter=kind/red&heartbeat=100",
            node.url
        ))
        .send()
        .await
        .unwrap();
    let mut body = Body::new(res);
    let frame = body.frame().await;
    assert!(frame.starts_with(':'), "a heartbeat first: {frame:?}");
    put(&http, "ev", "blue", json!({"kind": "blue"})).await; // seq 6
    put(&http, "ev", "red", json!({"kind": "red"})).await; // seq 7
    let e = loop {
        if let Some(e) = event(&body.frame().await) {
            break e;
        }
    };
    assert_eq!(e.0, "7");
    assert_eq!(e.1["id"], "red");
    drop(body);
    drop(client);

    // The node keeps serving after the clients went away.
    put(&http, "ev", "after", json!({"v": 4})).await;
    let (rows, last) = changes(&http, "ev", "since=7").await;
    assert_eq!(row_ids(&rows), ["after"]);
    assert_eq!(last, "8");
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Attachments

#[actix_rt::test]
async fn attachments_are_stored_served_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;

    // On a new document, without a revision.
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/att/attachments/hello.txt",
            &[("Content-Type", "text/plain")],
            Some(b"hello world".to_vec()),
        )
        .await;
    assert_status(&a, 201, "PUT attachment on a new doc");
    assert_eq!(a.body["id"], "att");
    let rev1 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev1), 1);

    let a = http.get("/barrels/b/docs/att/attachments/hello.txt").await;
    assert_status(&a, 200, "GET attachment");
    assert_eq!(a.bytes, b"hello world");
    assert!(header(&a, "content-type").starts_with("text/plain"));

    let a = http.get("/barrels/b/docs/att").await;
    assert_eq!(
        a.body["_attachments"]["hello.txt"],
        json!({"content_type": "text/plain", "digest": "md5-XrY7u+Ae7tCTyyK7j1rNww==",
               "length": 11, "revpos": 1, "stub": true})
    );

    // On an existing document: needs its revision.
    let png: Vec<u8> = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 0xFF, 0xFE, 0];
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/att/attachments/pic.png",
            &[("Content-Type", "image/png")],
            Some(png.clone()),
        )
        .await;
    assert_error(
        &a,
        409,
        "conflict",
        "attachment on an existing doc without rev",
    );
    let a = http
        .send(
            "PUT",
            &format!("/barrels/b/docs/att/attachments/pic.png?rev={rev1}"),
            &[("Content-Type", "image/png")],
            Some(png.clone()),
        )
        .await;
    assert_status(&a, 201, "PUT attachment with ?rev=");
    let rev2 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev2), 2);

    let a = http.get("/barrels/b/docs/att/attachments/pic.png").await;
    assert_status(&a, 200, "GET binary attachment");
    assert_eq!(a.bytes, png);
    assert_eq!(header(&a, "content-type"), "image/png");
    let a = http.get("/barrels/b/docs/att").await;
    let atts = a.body["_attachments"].as_object().unwrap();
    assert_eq!(atts.len(), 2, "{}", a.body);
    let pic = &atts["pic.png"];
    assert_eq!(pic["length"], png.len());
    assert_eq!(pic["stub"], true);
    assert_eq!(pic["revpos"], 2);
    assert!(pic["digest"].as_str().unwrap().starts_with("md5-"));
    assert_eq!(atts["hello.txt"]["revpos"], 1);

    // A document update that keeps the stubs keeps the attachments and the body.
    let mut doc = a.body.clone();
    doc["title"] = json!("with pictures");
    let rev3 = put(&http, "b", "att", doc).await;
    let a = http.get("/barrels/b/docs/att").await;
    assert_eq!(a.body["title"], "with pictures");
    assert_eq!(a.body["_attachments"].as_object().unwrap().len(), 2);

    // Removing one attachment.
    let a = http
        .call("DELETE", "/barrels/b/docs/att/attachments/hello.txt")
        .await;
    assert_error(&a, 409, "conflict", "DELETE attachment without rev");
    let a = http
        .call(
            "DELETE",
            &format!("/barrels/b/docs/att/attachments/hello.txt?rev={rev3}"),
        )
        .await;
    assert_status(&a, 200, "DELETE attachment");
    let rev4 = a.body["rev"].as_str().unwrap().to_owned();
    assert_eq!(generation(&rev4), 4);
    let a = http.get("/barrels/b/docs/att/attachments/hello.txt").await;
    assert_error(&a, 404, "not_found", "GET removed attachment");
    // ?rev= names the revision whose attachment is read.
    let a = http
        .get(&format!(
            "/barrels/b/docs/att/attachments/pic.png?rev={rev4}"
        ))
        .await;
    assert_status(&a, 200, "GET attachment of a given rev");
    assert_eq!(a.bytes, png);
    let a = http.get("/barrels/b/docs/att").await;
    assert_eq!(a.body["_rev"], rev4);
    assert_eq!(a.body["title"], "with pictures");
    let atts = a.body["_attachments"].as_object().unwrap();
    assert_eq!(atts.keys().collect::<Vec<_>>(), ["pic.png"]);
    assert_eq!(
        http.get("/barrels/b/docs/att/attachments/pic.png")
            .await
            .bytes,
        png
    );

    let a = http
        .call(
            "DELETE",
            &format!("/barrels/b/docs/att/attachments/hello.txt?rev={rev4}"),
        )
        .await;
    assert_error(&a, 404, "not_found", "DELETE a missing attachment");
    let a = http.get("/barrels/b/docs/none/attachments/x").await;
    assert_error(&a, 404, "not_found", "attachment of a missing doc");
    let a = http
        .send(
            "PUT",
            "/barrels/b/docs/other/attachments/_bad",
            &[("Content-Type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_error(&a, 400, "bad_request", "attachment name starting with _");
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Local documents

#[actix_rt::test]
async fn local_documents_have_counter_revisions_and_stay_out_of_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "b").await;
    put(&http, "b", "normal", json!({"v": 1})).await;
    let seq = update_seq(&http, "b").await;

    let a = http
        .json("PUT", "/barrels/b/local/ckpt", &json!({"last_seq": "10"}))
        .await;
    assert_status(&a, 201, "PUT local");
    assert_eq!(a.body["id"], "_local/ckpt");
    assert_eq!(a.body["rev"], "0-1");

    let a = http
        .json("PUT", "/barrels/b/local/ckpt", &json!({"last_seq": "11"}))
        .await;
    assert_error(&a, 409, "conflict", "local update without rev");
    let a = http
        .json(
            "PUT",
            "/barrels/b/local/ckpt",
            &json!({"_rev": "0-1", "last_seq": "12"}),
        )
        .await;
    assert_status(&a, 201, "local update with _rev");
    assert_eq!(a.body["rev"], "0-2");
    let a = http
        .json(
            "PUT",
            "/barrels/b/local/ckpt",
            &json!({"_rev": "0-1", "last_seq": "13"}),
        )
        .await;
    assert_error(&a, 409, "conflict", "stale local rev");

    let a = http.get("/barrels/b/local/ckpt").await;
    assert_status(&a, 200, "GET local");
    assert_eq!(
        a.body,
        json!({"_id": "_local/ckpt", "_rev": "0-2", "last_seq": "12"})
    );

    // Not in the changes feed, not counted, no seq taken.
    let (rows, _) = changes(&http, "b", "").await;
    assert_eq!(row_ids(&rows), ["normal"]);
    let i = info(&http, "b").await;
    assert_eq!(i["doc_count"], 1);
    assert_eq!(i["update_seq"], seq.to_string());
    assert!(query_ids(&http, "b", "last_seq=exists.true")
        .await
        .is_empty());

    let a = http.call("DELETE", "/barrels/b/local/ckpt").await;
    assert_error(&a, 409, "conflict", "DELETE local without rev");
    let a = http.call("DELETE", "/barrels/b/local/ckpt?rev=0-1").await;
    assert_error(&a, 409, "conflict", "DELETE local with stale rev");
    let a = http.call("DELETE", "/barrels/b/local/ckpt?rev=0-2").await;
    assert_status(&a, 200, "DELETE local");
    let a = http.get("/barrels/b/local/ckpt").await;
    assert_error(&a, 404, "not_found", "GET deleted local");
    // It can be written again from scratch.
    let a = http
        .json("PUT", "/barrels/b/local/ckpt", &json!({"last_seq": "0"}))
        .await;
    assert_eq!(a.body["rev"], "0-1");
    assert_eq!(update_seq(&http, "b").await, seq);

    // Local ids are not documents of the docs routes.
    let a = http
        .json("PUT", "/barrels/b/docs/_local/x", &json!({}))
        .await;
    assert_ne!(a.status, 201, "{}", a.body);
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Persistence

#[actix_rt::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "keep").await;
    create_barrel(&http, "other").await;
    let mut revs = Vec::new();
    for i in 0..12 {
        revs.push(
            put(
                &http,
                "keep",
                &format!("k{i:02}"),
                json!({"i": i, "even": i % 2 == 0}),
            )
            .await,
        );
    }
    let r = put(
        &http,
        "keep",
        "k00",
        json!({"_rev": revs[0], "i": 100, "even": true}),
    )
    .await;
    revs[0] = r;
    delete(&http, "keep", "k01", &revs[1]).await;
    let a = http
        .send(
            "PUT",
            "/barrels/keep/docs/k02/attachments/a.bin",
            &[("Content-Type", "application/octet-stream")],
            Some(vec![1, 2, 3]),
        )
        .await;
    assert_error(&a, 409, "conflict", "attachment without rev");
    let a = http
        .send(
            "PUT",
            &format!("/barrels/keep/docs/k02/attachments/a.bin?rev={}", revs[2]),
            &[("Content-Type", "application/octet-stream")],
            Some(vec![1, 2, 3]),
        )
        .await;
    assert_status(&a, 201, "attachment");
    let a = http
        .json("PUT", "/barrels/keep/local/ckpt", &json!({"at": 7}))
        .await;
    assert_status(&a, 201, "local");
    let before = info(&http, "keep").await;
    let k00 = http.get("/barrels/keep/docs/k00").await.body;
    let evens = query_ids(&http, "keep", "even=eq.true&order=i.desc").await;
    node.node.shutdown().await.unwrap();

    let node = common::start_in(dir.path(), |_| {}).await;
    let http = Http::new(&node);
    assert_eq!(http.get("/barrels").await.body, json!(["keep", "other"]));
    let after = info(&http, "keep").await;
    for k in ["doc_count", "deleted_count", "update_seq"] {
        assert_eq!(after[k], before[k], "{k}");
    }
    assert_eq!(after["update_seq"], "15");
    assert_eq!(http.get("/barrels/keep/docs/k00").await.body, k00);
    assert_eq!(
        http.get("/barrels/keep/docs/k01").await.body["reason"],
        "deleted"
    );
    for (i, rev) in revs.iter().enumerate().skip(3) {
        let a = http.get(&format!("/barrels/keep/docs/k{i:02}")).await;
        assert_eq!(a.body["i"], i);
        assert_eq!(a.body["_rev"], *rev);
    }
    assert_eq!(
        http.get("/barrels/keep/docs/k02/attachments/a.bin")
            .await
            .bytes,
        [1, 2, 3]
    );
    assert_eq!(
        http.get("/barrels/keep/local/ckpt").await.body["_rev"],
        "0-1"
    );

    // Queries still answer from the index.
    assert_eq!(
        query_ids(&http, "keep", "even=eq.true&order=i.desc").await,
        evens
    );
    assert_eq!(evens, strs(&["k00", "k10", "k08", "k06", "k04", "k02"]));
    let a = http
        .get("/barrels/keep/docs?even=eq.true&explain=true")
        .await;
    assert_eq!(a.body["strategy"], "index-scan");
    assert_eq!(
        query_set(&http, "keep", "i=gt.9").await,
        strs(&["k00", "k10", "k11"])
    );

    // The feed carries on from the same seq.
    let a = http.json("PUT", "/barrels/keep/docs/new", &json!({})).await;
    assert_status(&a, 201, "write after restart");
    let (rows, last) = changes(&http, "keep", "since=15").await;
    assert_eq!(row_ids(&rows), ["new"]);
    assert_eq!(last, "16");
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Node routes

#[actix_rt::test]
async fn node_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);

    let a = http.get("/").await;
    assert_status(&a, 200, "/");
    assert!(a.body["version"].is_string(), "{}", a.body);
    let a = http.get("/health").await;
    assert_status(&a, 200, "/health");

    let a = http.get("/status").await;
    assert_status(&a, 200, "/status");
    assert!(header(&a, "content-type").starts_with("text/plain"));
    let text = a.body.as_str().unwrap();
    assert!(text.contains("master"), "{text}");
    let a = http
        .send("GET", "/status", &[("Accept", "application/json")], None)
        .await;
    assert_status(&a, 200, "/status JSON");
    let nodes = a.body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{}", a.body);
    assert_eq!(nodes[0]["role"], "master");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "master").count(), 1);

    create_barrel(&http, "m").await;
    put(&http, "m", "x", json!({"v": 1})).await;
    let a = http.get("/metrics").await;
    assert_status(&a, 200, "/metrics");
    let text = a.body.as_str().unwrap();
    assert!(text.contains("cooper_http_requests_total"), "{text}");
    assert!(text.contains("cooper_documents_written_total"), "{text}");

    let a = http.get("/no/such/route").await;
    assert_error(&a, 404, "not_found", "unknown route");
    assert!(a.body["reason"].as_str().unwrap().starts_with("no route"));
    assert!(header(&a, "content-type").starts_with("application/json"));
    // A method a path does not take: a JSON error too (404 or 405).
    let a = http.call("PATCH", "/barrels/m").await;
    assert!(matches!(a.status, 404 | 405), "{} {}", a.status, a.body);
    assert!(a.body["error"].is_string(), "{}", a.body);
    assert!(a.body["reason"].is_string(), "{}", a.body);
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn every_openapi_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "api").await;
    let rev = put(&http, "api", "doc", json!({"v": 1})).await;
    let a = http
        .send(
            "PUT",
            &format!("/barrels/api/docs/doc/attachments/file.txt?rev={rev}"),
            &[("Content-Type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_status(&a, 201, "attachment");
    let a = http
        .json("PUT", "/barrels/api/local/doc", &json!({"v": 1}))
        .await;
    assert_status(&a, 201, "local");

    let a = http.get("/openapi.json").await;
    assert_status(&a, 200, "/openapi.json");
    assert!(a.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = a.body["paths"].as_object().unwrap();
    let mut calls: Vec<(String, String)> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            // Path parameters become real names; any other parameter some value.
            let real: Vec<&str> = path
                .split('/')
                .map(|seg| match seg {
                    "{b}" => "api",
                    "{id}" => "doc",
                    "{name}" => "file.txt",
                    s if s.starts_with('{') => "x",
                    s => s,
                })
                .collect();
            let real = real.join("/");
            calls.push((method.to_uppercase(), real));
        }
    }
    for expected in [
        ("GET", "/barrels/api/docs"),
        ("POST", "/barrels/api/_bulk_docs"),
        ("GET", "/barrels/api/changes"),
        ("DELETE", "/barrels/api/docs/doc/attachments/file.txt"),
    ] {
        assert!(
            calls
                .iter()
                .any(|(m, p)| m == expected.0 && p == expected.1),
            "{expected:?} is described"
        );
    }
    // Deletions last, and the barrel's own deletion at the very end.
    calls.sort_by_key(|(m, p)| (m == "DELETE", p == "/barrels/api", p.len()));
    for (method, path) in &calls {
        let a = if method == "PUT" || method == "POST" {
            http.json(method, path, &json!({"docs": []})).await
        } else {
            http.call(method, path).await
        };
        let reason = a.body["reason"].as_str().unwrap_or("");
        assert!(
            !(a.status == 404 && reason.starts_with("no route")),
            "{method} {path} is not routed: {}",
            a.body
        );
        assert!(a.status < 500, "{method} {path}: {} {}", a.status, a.body);
    }
    node.node.shutdown().await.unwrap();
}
