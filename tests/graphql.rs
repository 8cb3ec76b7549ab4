//! The GraphQL interface (DESIGN §6) over real sockets: every field of Query and Mutation with
//! every filter operator, paging through a connection of 1,000 documents with cursors, the
//! transports (POST single and batched, GET with `?query=`, GraphiQL, the SDL), the REST error
//! kinds in `extensions.code`, auth by bearer token, abusive queries (answered with a clear
//! error, the node unaffected), and subscriptions with real Node.js clients of both websocket
//! protocols: `graphql-ws` (graphql-transport-ws) and `subscriptions-transport-ws` (the legacy
//! graphql-ws), including `since` across concurrent writers and tokens in `connection_init`.
//!
//! The Node.js clients live in `tests/graphql-clients` (`npm ci --prefix tests/graphql-clients`
//! installs them from the lock file). Nothing here sleeps to synchronize or asserts on timing;
//! waits on a subscriber are bounded by [`HANG_GUARD`], which only turns a hang into a failure.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Answer, Http, TestNode};
use cooper::config::{Role, TokenConfig};
use futures_util::future::join_all;
use serde_json::{json, Value};

/// Turns a hang into a failure; far longer than any answer takes.
const HANG_GUARD: Duration = Duration::from_secs(90);

const READER: &str = "gql-reader-token-1";
const WRITER: &str = "gql-writer-token-2";
const ADMIN: &str = "gql-admin-token-03";

// ---------------------------------------------------------------------------------------------
// Helpers

/// POSTs one GraphQL request (with an optional bearer token) and returns the HTTP answer.
async fn post_as(http: &Http, token: Option<&str>, query: &str, variables: Value) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = json!({"query": query, "variables": variables});
    http.send(
        "POST",
        "/graphql",
        &headers,
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

/// POSTs a GraphQL request and returns its response (`{"data", "errors"}`); the HTTP status
/// must be 200.
async fn gql_as(http: &Http, token: Option<&str>, query: &str, variables: Value) -> Value {
    let a = post_as(http, token, query, variables).await;
    assert_eq!(a.status, 200, "{query}: {}", a.body);
    assert!(a.body.is_object(), "{query}: {}", a.body);
    a.body
}

async fn gql(http: &Http, query: &str, variables: Value) -> Value {
    gql_as(http, None, query, variables).await
}

/// A response's `data`, which must come without errors.
fn data(r: Value, what: &str) -> Value {
    assert!(r.get("errors").is_none(), "{what}: unexpected errors: {r}");
    r["data"].clone()
}

/// Runs a query that must succeed and returns its `data`.
async fn ok(http: &Http, query: &str, variables: Value) -> Value {
    data(gql(http, query, variables).await, query)
}

/// The `extensions.code` of a response's only error, and its message.
fn error_code(r: &Value, what: &str) -> (String, String) {
    let errors = r["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected an error: {r}"));
    assert_eq!(errors.len(), 1, "{what}: {r}");
    let message = errors[0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        !message.is_empty(),
        "{what}: an error without a message: {r}"
    );
    let code = errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: an error without extensions.code: {r}"))
        .to_owned();
    (code, message)
}

/// Asserts that a response carries one error with `extensions.code == code`.
fn assert_code(r: &Value, code: &str, what: &str) {
    assert_eq!(error_code(r, what).0, code, "{what}: {r}");
}

/// Asserts that a request was refused before it ran (a validation error: no data, a message,
/// no `extensions.code`), with `needle` in the message.
fn assert_invalid(r: &Value, needle: &str, what: &str) {
    assert!(r["data"].is_null(), "{what}: must not run: {r}");
    let errors = r["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected errors: {r}"));
    assert!(!errors.is_empty(), "{what}: {r}");
    let text = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_lowercase())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        text.contains(&needle.to_lowercase()),
        "{what}: expected {needle:?} in the error: {r}"
    );
}

async fn create_barrel(http: &Http, name: &str) {
    let d = ok(
        http,
        "mutation($n: String!) { createBarrel(name: $n) { name } }",
        json!({"n": name}),
    )
    .await;
    assert_eq!(d["createBarrel"]["name"], name);
}

/// Writes documents with `bulkDocs`; every one must succeed.
async fn bulk(http: &Http, barrel: &str, docs: Vec<Value>) -> Vec<Value> {
    let n = docs.len();
    let d = ok(
        http,
        "mutation($b: String!, $d: [JSON!]!) { bulkDocs(barrel: $b, docs: $d) { id rev error reason } }",
        json!({"b": barrel, "d": docs}),
    )
    .await;
    let results = d["bulkDocs"].as_array().unwrap().clone();
    assert_eq!(results.len(), n);
    for r in &results {
        assert!(r["error"].is_null(), "bulkDocs: {r}");
        assert!(r["rev"].as_str().unwrap().starts_with("1-"), "{r}");
    }
    results
}

async fn put_doc(http: &Http, barrel: &str, doc: Value) -> Value {
    gql(
        http,
        "mutation($b: String!, $d: JSON!) { putDoc(barrel: $b, doc: $d) { id rev } }",
        json!({"b": barrel, "d": doc}),
    )
    .await
}

async fn info(http: &Http, barrel: &str) -> Value {
    ok(
        http,
        "query($b: String!) { barrel(name: $b) { info { docCount deletedCount updateSeq sizeBytes } } }",
        json!({"b": barrel}),
    )
    .await["barrel"]["info"]
        .clone()
}

/// The ids a `docs` query returns (first page, up to 1000).
async fn ids_where(http: &Http, barrel: &str, conditions: Value, order: Value) -> Vec<String> {
    let d = ok(
        http,
        "query($b: String!, $w: [Condition!], $o: OrderBy) {
           barrel(name: $b) { docs(where: $w, orderBy: $o, first: 1000) { totalCount nodes { id } } }
         }",
        json!({"b": barrel, "w": conditions, "o": order}),
    )
    .await;
    let conn = &d["barrel"]["docs"];
    let ids: Vec<String> = conn["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        conn["totalCount"],
        ids.len(),
        "totalCount of {conditions}: {d}"
    );
    ids
}

/// The node still answers an ordinary query.
async fn still_serves(http: &Http, what: &str) {
    let r = gql(http, "{ barrels }", json!({})).await;
    assert!(
        r.get("errors").is_none() && r["data"]["barrels"].is_array(),
        "after {what}: {r}"
    );
}

async fn secured_node(dir: &std::path::Path) -> TestNode {
    common::start_in(dir, |c| {
        let token = |token: &str, role| TokenConfig {
            token: token.to_owned(),
            role,
            barrels: None,
        };
        c.auth.tokens = vec![
            token(READER, Role::Reader),
            token(WRITER, Role::Writer),
            token(ADMIN, Role::Admin),
        ];
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Queries

#[actix_rt::test]
async fn every_query_field_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    let addr = node.url.trim_start_matches("http://").to_owned();

    // node, barrels, cluster.
    let d = ok(
        &http,
        "{ node { version dataDir http } barrels cluster { status { role nodeId http lag } } }",
        json!({}),
    )
    .await;
    assert_eq!(d["node"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["node"]["dataDir"], dir.path().display().to_string());
    assert_eq!(d["node"]["http"], addr);
    assert_eq!(d["barrels"], json!([]));
    let members = d["cluster"]["status"].as_array().unwrap();
    assert_eq!(members.len(), 1, "a standalone node is one member: {d}");
    assert_eq!(members[0]["role"], "master");
    assert_eq!(members[0]["http"], addr);
    assert_eq!(members[0]["lag"], 0);
    assert!(!members[0]["nodeId"].as_str().unwrap().is_empty(), "{d}");

    create_barrel(&http, "people").await;
    create_barrel(&http, "orders").await;
    assert_eq!(
        ok(&http, "{ barrels }", json!({})).await["barrels"],
        json!(["orders", "people"])
    );

    // barrel(name): null when missing, bad_request for a bad name.
    let d = ok(&http, r#"{ barrel(name: "nope") { name } }"#, json!({})).await;
    assert!(d["barrel"].is_null(), "{d}");
    let r = gql(
        &http,
        r#"{ barrel(name: "Not Valid") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "bad_request", "bad barrel name");
    assert!(r["data"]["barrel"].is_null(), "{r}");
    assert_eq!(r["errors"][0]["path"], json!(["barrel"]), "{r}");

    // info of an empty barrel.
    let d = ok(
        &http,
        r#"{ barrel(name: "people") { name info { docCount deletedCount updateSeq sizeBytes } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["barrel"]["name"], "people");
    let i = &d["barrel"]["info"];
    assert_eq!(
        (&i["docCount"], &i["deletedCount"], &i["updateSeq"]),
        (&json!(0), &json!(0), &json!("0"))
    );
    assert!(i["sizeBytes"].as_u64().unwrap() > 0, "{i}");

    // Documents: two revisions of ann, and bob.
    let r1 = data(
        put_doc(
            &http,
            "people",
            json!({"_id": "ann", "name": "Ann", "address": {"city": "Paris"}, "tags": ["a", "b"]}),
        )
        .await,
        "put ann",
    )["putDoc"]["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let r2 = data(
        put_doc(
            &http,
            "people",
            json!({"_id": "ann", "_rev": r1, "name": "Ann", "address": {"city": "Lyon"}}),
        )
        .await,
        "update ann",
    )["putDoc"]["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(r2.starts_with("2-"), "{r2}");
    bulk(&http, "people", vec![json!({"_id": "bob", "name": "Bob"})]).await;

    let q = "query($id: String!, $rev: String, $p: String!) {
        barrel(name: \"people\") {
          doc(id: $id, rev: $rev) { id rev deleted conflicts body get(path: $p) missing: get(path: \"/no/such/path\") }
        }
      }";
    let d = ok(&http, q, json!({"id": "ann", "p": "address/city"})).await;
    let doc = &d["barrel"]["doc"];
    assert_eq!(doc["id"], "ann");
    assert_eq!(doc["rev"], r2.as_str());
    assert_eq!(doc["deleted"], false);
    assert_eq!(doc["conflicts"], json!([]));
    assert_eq!(doc["body"]["_id"], "ann");
    assert_eq!(doc["body"]["_rev"], r2.as_str());
    assert_eq!(doc["body"]["name"], "Ann");
    assert!(doc["body"].get("tags").is_none(), "{doc}");
    assert_eq!(doc["get"], "Lyon");
    assert!(doc["missing"].is_null(), "{doc}");
    // A JSON Pointer with its leading slash reads the same.
    let d = ok(&http, q, json!({"id": "ann", "p": "/address/city"})).await;
    assert_eq!(d["barrel"]["doc"]["get"], "Lyon");
    // The winner by its rev; an older revision is an inner node of the tree, which keeps no
    // body (DESIGN §2), so it reads as null.
    let d = ok(&http, q, json!({"id": "ann", "rev": r2, "p": "name"})).await;
    assert_eq!(d["barrel"]["doc"]["rev"], r2.as_str());
    assert_eq!(d["barrel"]["doc"]["get"], "Ann");
    let d = ok(&http, q, json!({"id": "ann", "rev": r1, "p": "name"})).await;
    assert!(d["barrel"]["doc"].is_null(), "{d}");
    // Missing: an unknown id, an unknown rev.
    let d = ok(&http, q, json!({"id": "nobody", "p": "x"})).await;
    assert!(d["barrel"]["doc"].is_null(), "{d}");
    let d = ok(
        &http,
        q,
        json!({"id": "ann", "rev": format!("7-{}", "0".repeat(32)), "p": "x"}),
    )
    .await;
    assert!(d["barrel"]["doc"].is_null(), "{d}");
    // Bad input: a bad rev, an empty id, a bad path.
    let r = gql(&http, q, json!({"id": "ann", "rev": "zzz", "p": "x"})).await;
    assert_code(&r, "bad_request", "bad rev");
    let r = gql(&http, q, json!({"id": "", "p": "x"})).await;
    assert_code(&r, "bad_request", "empty id");

    // A conflict, made the way replication makes one: two branches with their history.
    let base = "1".repeat(32);
    let (ha, hb) = ("a".repeat(32), "b".repeat(32));
    let d = ok(
        &http,
        "mutation($d: [JSON!]!) { bulkDocs(barrel: \"people\", docs: $d, newEdits: false) { id rev error } }",
        json!({"d": [
            {"_id": "cat", "_rev": format!("2-{ha}"), "side": "a",
             "_revisions": {"start": 2, "ids": [ha, base]}},
            {"_id": "cat", "_rev": format!("2-{hb}"), "side": "b",
             "_revisions": {"start": 2, "ids": [hb, base]}},
        ]}),
    )
    .await;
    assert_eq!(
        d["bulkDocs"],
        json!([
            {"id": "cat", "rev": format!("2-{ha}"), "error": null},
            {"id": "cat", "rev": format!("2-{hb}"), "error": null},
        ])
    );
    let d = ok(&http, q, json!({"id": "cat", "p": "side"})).await;
    let doc = &d["barrel"]["doc"];
    // The winner is the greater hash; the other live leaf is a conflict.
    assert_eq!(doc["rev"], format!("2-{hb}"));
    assert_eq!(doc["get"], "b");
    assert_eq!(doc["conflicts"], json!([format!("2-{ha}")]));
    let d = ok(
        &http,
        q,
        json!({"id": "cat", "rev": format!("2-{ha}"), "p": "side"}),
    )
    .await;
    assert_eq!(d["barrel"]["doc"]["get"], "a");

    // A deleted document reads as null; its tombstone is still addressable by rev.
    let bob = ok(&http, q, json!({"id": "bob", "p": "name"})).await["barrel"]["doc"]["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = ok(
        &http,
        "mutation($r: String!) { deleteDoc(barrel: \"people\", id: \"bob\", rev: $r) { id rev } }",
        json!({"r": bob}),
    )
    .await;
    let tomb = d["deleteDoc"]["rev"].as_str().unwrap().to_owned();
    assert!(tomb.starts_with("2-"), "{d}");
    let d = ok(&http, q, json!({"id": "bob", "p": "name"})).await;
    assert!(d["barrel"]["doc"].is_null(), "a deleted doc: {d}");
    let d = ok(&http, q, json!({"id": "bob", "rev": tomb, "p": "name"})).await;
    assert_eq!(d["barrel"]["doc"]["deleted"], true, "{d}");

    // info counts: ann, cat live; bob deleted.
    let i = info(&http, "people").await;
    assert_eq!(i["docCount"], 2, "{i}");
    assert_eq!(i["deletedCount"], 1, "{i}");
    let seq: u64 = i["updateSeq"].as_str().unwrap().parse().unwrap();
    assert!(seq >= 5, "{i}");

    // changes(since, first, filter): each document once, at its latest seq, oldest first.
    let cq = "query($s: String, $f: Int, $filter: [String!]) {
        barrel(name: \"people\") {
          changes(since: $s, first: $f, filter: $filter) {
            results { kind seq docId rev deleted topics doc resumeFrom } lastSeq
          }
        }
      }";
    let d = ok(&http, cq, json!({})).await;
    let page = &d["barrel"]["changes"];
    let rows = page["results"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["docId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ann", "cat", "bob"], "{d}");
    let seqs: Vec<u64> = rows
        .iter()
        .map(|r| r["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{d}");
    assert_eq!(page["lastSeq"], rows[2]["seq"]);
    assert_eq!(seqs[2], seq);
    for r in rows {
        assert_eq!(r["kind"], "CHANGE");
        assert!(r["resumeFrom"].is_null(), "{r}");
    }
    assert_eq!(rows[0]["rev"], r2.as_str());
    assert_eq!(rows[0]["doc"]["address"]["city"], "Lyon");
    assert!(
        rows[0]["topics"]
            .as_array()
            .unwrap()
            .contains(&json!("address/city/Lyon")),
        "{}",
        rows[0]
    );
    assert_eq!(rows[2]["deleted"], true);
    assert_eq!(rows[2]["rev"], tomb.as_str());
    assert!(rows[2]["doc"].is_null(), "{}", rows[2]);
    // first and since page through the feed.
    let d = ok(&http, cq, json!({"s": "0", "f": 1})).await;
    let page = &d["barrel"]["changes"];
    assert_eq!(page["results"].as_array().unwrap().len(), 1);
    assert_eq!(page["results"][0]["docId"], "ann");
    let d = ok(&http, cq, json!({"s": page["lastSeq"], "f": 10})).await;
    let ids: Vec<&Value> = d["barrel"]["changes"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["docId"])
        .collect();
    assert_eq!(ids, [&json!("cat"), &json!("bob")], "{d}");
    // "now" and the latest seq: nothing after.
    for s in [json!("now"), json!(seq.to_string())] {
        let d = ok(&http, cq, json!({ "s": s })).await;
        assert_eq!(d["barrel"]["changes"]["results"], json!([]), "since {s}");
    }
    // A topic filter keeps the matching changes and reports the matched topics only: those
    // of the winner and of the winner it replaced (the feed keeps them).
    let d = ok(&http, cq, json!({"filter": ["side/+"]})).await;
    let rows = d["barrel"]["changes"]["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{d}");
    assert_eq!(rows[0]["docId"], "cat");
    assert_eq!(rows[0]["topics"], json!(["side/b", "side/a"]));
    let d = ok(&http, cq, json!({"filter": ["_id/bob", "name/#"]})).await;
    let ids: Vec<&Value> = d["barrel"]["changes"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["docId"])
        .collect();
    assert_eq!(ids, [&json!("ann"), &json!("bob")], "{d}");
    // Bad input.
    for (vars, what) in [
        (json!({"s": "abc"}), "bad since"),
        (json!({"f": 0}), "first 0"),
        (json!({"f": 1001}), "first too large"),
        (json!({"filter": ["a/#/b"]}), "bad filter"),
        (json!({"filter": []}), "no filter"),
    ] {
        let r = gql(&http, cq, vars).await;
        assert_code(&r, "bad_request", what);
    }

    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn docs_filter_with_every_operator_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "p").await;
    bulk(
        &http,
        "p",
        vec![
            json!({"_id": "a", "age": 10, "name": "ann", "tags": ["x", "y"], "active": true,
                   "address": {"city": "Paris"}}),
            json!({"_id": "b", "age": 20, "name": "bob", "tags": ["y"], "active": false,
                   "address": {"city": "Lyon"}}),
            json!({"_id": "c", "age": 30, "name": "anna", "active": true,
                   "address": {"city": "Paris"}}),
            json!({"_id": "d", "age": 40, "name": "dan", "tags": ["z"], "nick": null}),
            json!({"_id": "e", "age": "50", "name": "eve"}),
        ],
    )
    .await;

    let none = Value::Null;
    let cases: Vec<(Value, &[&str])> = vec![
        (json!([{"path": "age", "eq": 20}]), &["b"]),
        // A string is not a number: "50" only equals "50".
        (json!([{"path": "age", "eq": 50}]), &[]),
        (json!([{"path": "age", "eq": "50"}]), &["e"]),
        (json!([{"path": "active", "eq": true}]), &["a", "c"]),
        (json!([{"path": "active", "in": [false]}]), &["b"]),
        (
            json!([{"path": "/address/city", "eq": "Paris"}]),
            &["a", "c"],
        ),
        (
            json!([{"path": "address/city", "eq": "Paris"}]),
            &["a", "c"],
        ),
        // ne and ranges match only documents that have the path.
        (json!([{"path": "age", "ne": 20}]), &["a", "c", "d", "e"]),
        (json!([{"path": "active", "ne": true}]), &["b"]),
        (json!([{"path": "age", "gt": 20}]), &["c", "d"]),
        (json!([{"path": "age", "gte": 20}]), &["b", "c", "d"]),
        (json!([{"path": "age", "lt": 30}]), &["a", "b"]),
        (json!([{"path": "age", "lte": 30}]), &["a", "b", "c"]),
        (json!([{"path": "name", "gt": "b"}]), &["b", "d", "e"]),
        (json!([{"path": "age", "in": [10, 40, 99]}]), &["a", "d"]),
        (json!([{"path": "name", "in": ["eve", "bob"]}]), &["b", "e"]),
        (json!([{"path": "name", "prefix": "an"}]), &["a", "c"]),
        (json!([{"path": "name", "prefix": "zz"}]), &[]),
        (json!([{"path": "tags", "exists": true}]), &["a", "b", "d"]),
        (json!([{"path": "tags", "exists": false}]), &["c", "e"]),
        (
            json!([{"path": "address/city", "exists": true}]),
            &["a", "b", "c"],
        ),
        // Array membership.
        (json!([{"path": "tags/*", "eq": "y"}]), &["a", "b"]),
        (json!([{"path": "tags/*", "in": ["x", "z"]}]), &["a", "d"]),
        (json!([{"path": "tags/0", "eq": "y"}]), &["b"]),
        // AND of several conditions.
        (
            json!([{"path": "address/city", "eq": "Paris"}, {"path": "age", "gt": 15}]),
            &["c"],
        ),
        (
            json!([
                {"path": "tags/*", "eq": "y"},
                {"path": "active", "eq": true},
                {"path": "name", "prefix": "a"},
                {"path": "age", "lte": 10},
            ]),
            &["a"],
        ),
        (
            json!([{"path": "tags/*", "eq": "y"}, {"path": "tags/*", "eq": "z"}]),
            &[],
        ),
    ];
    for (conditions, expected) in cases {
        let mut got = ids_where(&http, "p", conditions.clone(), none.clone()).await;
        got.sort();
        assert_eq!(got, expected, "where {conditions}");
    }

    // No condition: every live document, by id.
    assert_eq!(
        ids_where(&http, "p", none.clone(), none.clone()).await,
        ["a", "b", "c", "d", "e"]
    );
    // orderBy: numbers before strings (null < false < true < numbers < strings); ASC is the
    // default; DESC reverses.
    let order = ["a", "b", "c", "d", "e"];
    for o in [
        json!({"path": "age"}),
        json!({"path": "age", "direction": "ASC"}),
    ] {
        assert_eq!(ids_where(&http, "p", none.clone(), o).await, order);
    }
    let desc: Vec<&str> = order.iter().rev().copied().collect();
    assert_eq!(
        ids_where(
            &http,
            "p",
            none.clone(),
            json!({"path": "/age", "direction": "DESC"})
        )
        .await,
        desc
    );
    assert_eq!(
        ids_where(
            &http,
            "p",
            none.clone(),
            json!({"path": "name", "direction": "DESC"})
        )
        .await,
        ["e", "d", "b", "c", "a"]
    );
    // Conditions and order together.
    assert_eq!(
        ids_where(
            &http,
            "p",
            json!([{"path": "name", "prefix": "an"}]),
            json!({"path": "age", "direction": "DESC"})
        )
        .await,
        ["c", "a"]
    );

    // A condition needs exactly one operator; bad paths and enum values are refused.
    let q = "query($w: [Condition!], $o: OrderBy) { barrel(name: \"p\") { docs(where: $w, orderBy: $o) { totalCount } } }";
    for (vars, what) in [
        (json!({"w": [{"path": "age"}]}), "no operator"),
        (
            json!({"w": [{"path": "age", "eq": 1, "gt": 0}]}),
            "two operators",
        ),
        (
            json!({"w": [{"path": "a~2b", "eq": 1}]}),
            "bad JSON Pointer",
        ),
        (json!({"o": {"path": "a~2b"}}), "bad order path"),
        (
            json!({"w": (0..65).map(|i| json!({"path": format!("f{i}"), "exists": true})).collect::<Vec<_>>()}),
            "65 conditions",
        ),
    ] {
        let r = gql(&http, q, vars).await;
        assert_code(&r, "bad_request", what);
    }
    let r = gql(
        &http,
        q,
        json!({"o": {"path": "age", "direction": "SIDEWAYS"}}),
    )
    .await;
    assert_invalid(&r, "direction", "an unknown direction");

    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[actix_rt::test]
async fn every_mutation_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);

    // createBarrel, twice.
    let d = ok(
        &http,
        r#"mutation { createBarrel(name: "m") { name info { docCount updateSeq } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        d["createBarrel"],
        json!({"name": "m", "info": {"docCount": 0, "updateSeq": "0"}})
    );
    let r = gql(
        &http,
        r#"mutation { createBarrel(name: "m") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "file_exists", "create again");
    assert!(r["data"].is_null(), "{r}");
    let r = gql(
        &http,
        r#"mutation { createBarrel(name: "M!") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "bad_request", "bad barrel name");
    // REST sees the barrel.
    assert_eq!(http.get("/barrels/m").await.status, 200);

    // putDoc: create with an id, create with a generated id, update, conflicts.
    let r = data(
        put_doc(&http, "m", json!({"_id": "d1", "v": 1})).await,
        "create",
    );
    let rev1 = r["putDoc"]["rev"].as_str().unwrap().to_owned();
    assert_eq!(r["putDoc"]["id"], "d1");
    assert!(rev1.starts_with("1-") && rev1.len() == 34, "{rev1}");
    let r = data(
        put_doc(&http, "m", json!({"v": "gen"})).await,
        "generated id",
    );
    let gen = r["putDoc"]["id"].as_str().unwrap();
    assert_eq!(gen.len(), 32, "128-bit hex: {gen}");
    assert!(gen.chars().all(|c| c.is_ascii_hexdigit()), "{gen}");
    let r = data(
        put_doc(&http, "m", json!({"_id": "d1", "_rev": rev1, "v": 2})).await,
        "update",
    );
    let rev2 = r["putDoc"]["rev"].as_str().unwrap().to_owned();
    assert!(rev2.starts_with("2-"), "{rev2}");
    let got = http.get("/barrels/m/docs/d1").await;
    assert_eq!(got.body["v"], 2);
    assert_eq!(got.body["_rev"], rev2.as_str());
    let r = put_doc(&http, "m", json!({"_id": "d1", "v": 3})).await;
    assert_code(&r, "conflict", "create over a live doc");
    let r = put_doc(&http, "m", json!({"_id": "d1", "_rev": rev1, "v": 3})).await;
    assert_code(&r, "conflict", "stale rev");
    assert!(r["data"].is_null(), "{r}");
    let r = put_doc(&http, "m", json!({"_id": "d1", "_rev": "nonsense"})).await;
    assert_code(&r, "bad_request", "bad rev");
    let r = put_doc(&http, "m", json!({"_id": "d2", "_secret": 1})).await;
    assert_code(&r, "bad_request", "reserved member");
    let r = put_doc(&http, "m", json!([1, 2])).await;
    assert_code(&r, "bad_request", "not an object");
    let r = put_doc(&http, "m", json!({"_id": "_local/x"})).await;
    assert_code(&r, "bad_request", "a local doc");
    let r = put_doc(&http, "nope", json!({"a": 1})).await;
    assert_code(&r, "not_found", "a missing barrel");
    // Nesting depth: 64 levels pass, 65 are refused (an object holding `levels - 1` nested
    // arrays: `levels` containers in all).
    let nest = |levels: usize| {
        let mut v = json!(1);
        for _ in 1..levels {
            v = json!([v]);
        }
        json!({ "n": v })
    };
    let mut deep = nest(64);
    deep["_id"] = json!("deep64");
    data(put_doc(&http, "m", deep).await, "64 levels");
    let mut deeper = nest(65);
    deeper["_id"] = json!("deep65");
    let r = put_doc(&http, "m", deeper).await;
    assert_code(&r, "bad_request", "65 levels");

    data(
        put_doc(&http, "m", json!({"_id": "seq", "n": 1})).await,
        "seq",
    );
    // Mutations in one request run in order: the second sees the first.
    let r = gql(
        &http,
        r#"mutation {
             a: putDoc(barrel: "m", doc: {_id: "ord", n: 1}) { rev }
             b: putDoc(barrel: "m", doc: {_id: "ord", n: 2}) { rev }
           }"#,
        json!({}),
    )
    .await;
    assert!(r["data"]["a"]["rev"].is_string(), "{r}");
    assert_eq!(error_code(&r, "second write").0, "conflict");
    assert_eq!(r["errors"][0]["path"], json!(["b"]), "{r}");

    // deleteDoc.
    let q = "mutation($id: String!, $rev: String!) { deleteDoc(barrel: \"m\", id: $id, rev: $rev) { id rev } }";
    let r = gql(&http, q, json!({"id": "d1", "rev": rev1})).await;
    assert_code(&r, "conflict", "delete a stale rev");
    let r = gql(&http, q, json!({"id": "d1", "rev": "bad"})).await;
    assert_code(&r, "bad_request", "delete a bad rev");
    let d = data(
        gql(&http, q, json!({"id": "d1", "rev": rev2})).await,
        "delete",
    );
    assert_eq!(d["deleteDoc"]["id"], "d1");
    assert!(
        d["deleteDoc"]["rev"].as_str().unwrap().starts_with("3-"),
        "{d}"
    );
    assert_eq!(http.get("/barrels/m/docs/d1").await.status, 404);
    // Re-creating over the tombstone extends it.
    let r = data(
        put_doc(&http, "m", json!({"_id": "d1", "v": 4})).await,
        "re-create",
    );
    assert!(
        r["putDoc"]["rev"].as_str().unwrap().starts_with("4-"),
        "{r}"
    );

    // bulkDocs: one result per document, in order, errors per document.
    let d = ok(
        &http,
        "mutation($d: [JSON!]!) { bulkDocs(barrel: \"m\", docs: $d) { id rev error reason } }",
        json!({"d": [
            {"_id": "b1", "v": 1},
            {"_id": "seq", "v": "conflict"},
            {"_id": "b2", "_bad": true},
            {"_id": ""},
            "not an object",
            {"v": "generated"},
            {"_id": "b1", "v": "again"},
        ]}),
    )
    .await;
    let rows = d["bulkDocs"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{d}");
    assert_eq!(rows[0]["id"], "b1");
    assert!(rows[0]["rev"].as_str().unwrap().starts_with("1-"), "{d}");
    assert!(
        rows[0]["error"].is_null() && rows[0]["reason"].is_null(),
        "{d}"
    );
    assert_eq!(
        (&rows[1]["id"], &rows[1]["error"], &rows[1]["rev"]),
        (&json!("seq"), &json!("conflict"), &Value::Null)
    );
    assert_eq!(rows[2]["error"], "bad_request", "{d}");
    assert_eq!(rows[2]["id"], "b2", "{d}");
    assert_eq!(rows[3]["error"], "bad_request", "{d}");
    assert_eq!(rows[4]["error"], "bad_request", "{d}");
    for r in &rows[1..5] {
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    assert_eq!(rows[5]["id"].as_str().unwrap().len(), 32, "{d}");
    assert!(rows[5]["error"].is_null(), "{d}");
    assert_eq!(rows[6]["error"], "conflict", "{d}");
    // Unknown barrel for bulkDocs.
    let r = gql(
        &http,
        r#"mutation { bulkDocs(barrel: "nope", docs: [{}]) { id } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "not_found", "bulkDocs on a missing barrel");

    // deleteBarrel.
    let d = ok(&http, r#"mutation { deleteBarrel(name: "m") }"#, json!({})).await;
    assert_eq!(d["deleteBarrel"], true);
    let d = ok(
        &http,
        r#"{ barrels barrel(name: "m") { name } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["barrels"], json!([]));
    assert!(d["barrel"].is_null(), "{d}");
    let r = gql(&http, r#"mutation { deleteBarrel(name: "m") }"#, json!({})).await;
    assert_code(&r, "not_found", "delete again");
    let r = gql(&http, r#"mutation { deleteBarrel(name: "-x") }"#, json!({})).await;
    assert_code(&r, "bad_request", "bad name");
    // The name is free again.
    create_barrel(&http, "m").await;
    assert_eq!(info(&http, "m").await["docCount"], 0);

    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Paging

const PAGE_QUERY: &str = "query($w: [Condition!], $o: OrderBy, $first: Int, $after: String) {
  barrel(name: \"big\") {
    docs(where: $w, orderBy: $o, first: $first, after: $after) {
      totalCount
      edges { cursor node { id get(path: \"n\") } }
      nodes { id }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}";

/// Pages through a `docs` connection; returns the ids in order and checks every page.
async fn page_through(http: &Http, vars: Value, first: usize, total: usize) -> Vec<String> {
    let mut after: Option<String> = None;
    let mut ids: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let mut v = vars.clone();
        v["first"] = json!(first);
        v["after"] = json!(after);
        let d = ok(http, PAGE_QUERY, v).await;
        let conn = &d["barrel"]["docs"];
        assert_eq!(conn["totalCount"], total, "totalCount on every page");
        let edges = conn["edges"].as_array().unwrap();
        let nodes: Vec<&Value> = conn["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| &n["id"])
            .collect();
        let edge_ids: Vec<&Value> = edges.iter().map(|e| &e["node"]["id"]).collect();
        assert_eq!(nodes, edge_ids, "nodes and edges agree");
        let info = &conn["pageInfo"];
        assert_eq!(info["hasPreviousPage"], false);
        pages += 1;
        let remaining = total - ids.len();
        assert_eq!(edges.len(), remaining.min(first), "page {pages}: {info}");
        if let (Some(first_edge), Some(last_edge)) = (edges.first(), edges.last()) {
            assert_eq!(info["startCursor"], first_edge["cursor"]);
            assert_eq!(info["endCursor"], last_edge["cursor"]);
        }
        ids.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        if info["hasNextPage"] == false {
            break;
        }
        assert!(pages <= total / first + 1, "paging does not end");
        after = Some(info["endCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(pages, total.div_ceil(first));
    ids
}

#[actix_rt::test]
async fn paging_through_a_thousand_documents_with_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "big").await;
    // Inserted out of order, so that id order and `n` order differ from insertion order.
    let docs: Vec<Value> = (0..1000)
        .map(|i| (i * 7919) % 1000)
        .map(|n| json!({"_id": format!("doc-{n:04}"), "n": n, "odd": n % 2 == 1}))
        .collect();
    bulk(&http, "big", docs).await;
    assert_eq!(info(&http, "big").await["docCount"], 1000);

    // All 1,000 by id, 100 a page: every document exactly once, in order.
    let ids = page_through(&http, json!({}), 100, 1000).await;
    let expected: Vec<String> = (0..1000).map(|n| format!("doc-{n:04}")).collect();
    assert_eq!(ids, expected);

    // Ordered by n, descending, with a condition: 500 matches, 64 a page.
    let ids = page_through(
        &http,
        json!({"w": [{"path": "odd", "eq": true}], "o": {"path": "n", "direction": "DESC"}}),
        64,
        500,
    )
    .await;
    let expected: Vec<String> = (0..1000)
        .rev()
        .filter(|n| n % 2 == 1)
        .map(|n| format!("doc-{n:04}"))
        .collect();
    assert_eq!(ids, expected);

    // Every edge's cursor works as `after`: it continues right after that edge.
    let d = ok(
        &http,
        PAGE_QUERY,
        json!({"first": 100, "o": {"path": "n"}, "w": [{"path": "n", "gte": 200}]}),
    )
    .await;
    let edges = d["barrel"]["docs"]["edges"].as_array().unwrap().clone();
    assert_eq!(edges.len(), 100);
    for k in [0usize, 1, 37, 98, 99] {
        let d = ok(
            &http,
            PAGE_QUERY,
            json!({
                "first": 3,
                "o": {"path": "n"},
                "w": [{"path": "n", "gte": 200}],
                "after": edges[k]["cursor"],
            }),
        )
        .await;
        let got: Vec<i64> = d["barrel"]["docs"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["get"].as_i64().unwrap())
            .collect();
        let n = 200 + k as i64;
        assert_eq!(got, [n + 1, n + 2, n + 3], "after the cursor of edge {k}");
        assert_eq!(d["barrel"]["docs"]["totalCount"], 800);
    }
    // The last page: a cursor after the last document gives an empty page.
    let d = ok(
        &http,
        PAGE_QUERY,
        json!({"first": 1, "o": {"path": "n", "direction": "DESC"}}),
    )
    .await;
    let last = d["barrel"]["docs"]["pageInfo"]["endCursor"].clone();
    let d = ok(
        &http,
        PAGE_QUERY,
        json!({"first": 1, "o": {"path": "n"}, "w": [{"path": "n", "gte": 999}]}),
    )
    .await;
    let conn = &d["barrel"]["docs"];
    assert_eq!(conn["edges"][0]["node"]["get"], 999);
    assert_eq!(conn["pageInfo"]["hasNextPage"], false);
    let d = ok(
        &http,
        PAGE_QUERY,
        json!({"first": 10, "o": {"path": "n"}, "w": [{"path": "n", "gte": 999}],
               "after": conn["pageInfo"]["endCursor"]}),
    )
    .await;
    let conn = &d["barrel"]["docs"];
    assert_eq!(conn["edges"], json!([]), "{d}");
    assert_eq!(conn["pageInfo"]["hasNextPage"], false);
    assert!(conn["pageInfo"]["endCursor"].is_null(), "{d}");
    assert!(last.is_string());

    // `first` bounds and a garbage cursor.
    for (first, what) in [(0, "first 0"), (-1, "first -1"), (1001, "first 1001")] {
        let r = gql(&http, PAGE_QUERY, json!({ "first": first })).await;
        assert_code(&r, "bad_request", what);
    }
    let d = ok(&http, PAGE_QUERY, json!({"first": 1000})).await;
    assert_eq!(d["barrel"]["docs"]["edges"].as_array().unwrap().len(), 1000);
    let r = gql(
        &http,
        PAGE_QUERY,
        json!({"first": 10, "after": "not a cursor"}),
    )
    .await;
    assert_code(&r, "bad_request", "a garbage cursor");

    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Transports

#[actix_rt::test]
async fn transports_post_batch_get_graphiql_and_sdl() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "t").await;

    // A batch: an array of requests gets an array of responses, in order.
    let batch = json!([
        {"query": "{ barrels }"},
        {"query": "query($n: String!) { barrel(name: $n) { name } }", "variables": {"n": "t"}},
    ]);
    let a = http.json("POST", "/graphql", &batch).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!([
            {"data": {"barrels": ["t"]}},
            {"data": {"barrel": {"name": "t"}}},
        ])
    );
    // A batch with a failing member: the others still answer.
    let batch = json!([
        {"query": "{ barrels }"},
        {"query": "{ nope }"},
        {"query": "mutation { createBarrel(name: \"t\") { name } }"},
    ]);
    let a = http.json("POST", "/graphql", &batch).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let list = a.body.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0], json!({"data": {"barrels": ["t"]}}));
    assert_invalid(&list[1], "nope", "an unknown field in a batch");
    assert_code(&list[2], "file_exists", "a failing mutation in a batch");
    // A batch of 65 is refused.
    let batch: Vec<Value> = (0..65).map(|_| json!({"query": "{ barrels }"})).collect();
    let a = http.json("POST", "/graphql", &json!(batch)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"], "bad_request");

    // operationName picks one of several operations.
    let a = http
        .json(
            "POST",
            "/graphql",
            &json!({"query": "query A { barrels } query B { node { version } }", "operationName": "B"}),
        )
        .await;
    assert_eq!(
        a.body,
        json!({"data": {"node": {"version": env!("CARGO_PKG_VERSION")}}})
    );

    // GET with ?query= (and variables).
    let a = http.get("/graphql?query=%7Bbarrels%7D").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"data": {"barrels": ["t"]}}));
    let qs = serde_urlencoded::to_string([
        ("query", "query($n: String!) { barrel(name: $n) { name } }"),
        ("variables", r#"{"n": "t"}"#),
    ])
    .unwrap();
    let a = http.get(&format!("/graphql?{qs}")).await;
    assert_eq!(a.body, json!({"data": {"barrel": {"name": "t"}}}));
    // GET never mutates.
    let qs = serde_urlencoded::to_string([("query", r#"mutation { deleteBarrel(name: "t") }"#)])
        .unwrap();
    let a = http.get(&format!("/graphql?{qs}")).await;
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.body["error"], "method_not_allowed");
    assert!(
        a.body["reason"].as_str().unwrap().contains("POST"),
        "{}",
        a.body
    );
    assert_eq!(
        ok(&http, "{ barrels }", json!({})).await["barrels"],
        json!(["t"])
    );

    // GET without a query: GraphiQL.
    let a = http.get("/graphql").await;
    assert_eq!(a.status, 200);
    let ct = a.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = String::from_utf8_lossy(&a.bytes).to_lowercase();
    assert!(page.contains("graphiql"), "{page}");
    assert!(
        page.contains("/graphql/ws"),
        "subscriptions endpoint in GraphiQL"
    );

    // The SDL, the same as `cooper schema` prints.
    let a = http.get("/graphql/schema.graphql").await;
    assert_eq!(a.status, 200);
    let sdl = String::from_utf8_lossy(&a.bytes).into_owned();
    for needle in [
        "type Query",
        "type Mutation",
        "type Subscription",
        "input Condition",
        "scalar JSON",
        "totalCount",
    ] {
        assert!(sdl.contains(needle), "{needle} in the SDL");
    }
    assert_eq!(sdl, cooper::graphql::sdl());

    // Bad HTTP bodies are REST errors.
    let a = http
        .send(
            "POST",
            "/graphql",
            &[("Content-Type", "application/json")],
            Some(b"{\"query\": ".to_vec()),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"], "bad_request");
    let a = http
        .send(
            "POST",
            "/graphql",
            &[("Content-Type", "text/plain")],
            Some(b"{\"query\": \"{ barrels }\"}".to_vec()),
        )
        .await;
    assert_eq!(a.status, 415, "{}", a.body);
    let a = http
        .send(
            "POST",
            "/graphql",
            &[("Content-Type", "application/json")],
            Some(br#"{"query": 5}"#.to_vec()),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    // Invalid GraphQL syntax is a GraphQL error.
    let r = gql(&http, "{ barrels ", json!({})).await;
    assert_invalid(&r, "expected", "a syntax error");
    // An empty batch is refused one way or the other, and never runs anything.
    let a = http.json("POST", "/graphql", &json!([])).await;
    assert!(
        a.status == 400 || (a.status == 200 && a.body["errors"].is_array()),
        "an empty batch: {} {}",
        a.status,
        a.body
    );

    // A websocket upgrade without a GraphQL subprotocol is refused.
    let a = http
        .send(
            "GET",
            "/graphql/ws",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Protocol", "mqtt"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);

    still_serves(&http, "transport errors").await;
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Auth

#[actix_rt::test]
async fn auth_roles_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let node = secured_node(dir.path()).await;
    let http = Http::new(&node);

    // No token: every field is refused with "unauthorized"; nothing runs.
    let r = gql_as(&http, None, "{ barrels }", json!({})).await;
    assert_code(&r, "unauthorized", "no token");
    let r = gql_as(
        &http,
        None,
        r#"mutation { createBarrel(name: "a") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "unauthorized", "no token, mutation");
    let r = gql_as(&http, None, r#"{ barrel(name: "a") { name } }"#, json!({})).await;
    assert_code(&r, "unauthorized", "no token, barrel");
    // An unknown token or a malformed header: 401 before GraphQL runs.
    let a = post_as(&http, Some("not-a-token"), "{ barrels }", json!({})).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"], "unauthorized");
    let a = http
        .send(
            "POST",
            "/graphql",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", "Basic Zm9vOmJhcg=="),
            ],
            Some(br#"{"query": "{ barrels }"}"#.to_vec()),
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = http
        .send(
            "GET",
            "/graphql?query=%7Bbarrels%7D",
            &[("Authorization", "Bearer wrong")],
            None,
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    // GraphiQL and the SDL are open.
    assert_eq!(http.get("/graphql").await.status, 200);
    assert_eq!(http.get("/graphql/schema.graphql").await.status, 200);

    // Reader: queries, but no writes.
    let r = gql_as(
        &http,
        Some(READER),
        r#"mutation { createBarrel(name: "a") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "forbidden", "reader creates a barrel");
    let r = gql_as(
        &http,
        Some(WRITER),
        r#"mutation { createBarrel(name: "a") { name } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "forbidden", "writer creates a barrel");
    let d = data(
        gql_as(
            &http,
            Some(ADMIN),
            r#"mutation { createBarrel(name: "a") { name } }"#,
            json!({}),
        )
        .await,
        "admin creates a barrel",
    );
    assert_eq!(d["createBarrel"]["name"], "a");

    let put = r#"mutation { putDoc(barrel: "a", doc: {_id: "d", v: 1}) { id rev } }"#;
    let r = gql_as(&http, Some(READER), put, json!({})).await;
    assert_code(&r, "forbidden", "reader putDoc");
    let r = gql_as(
        &http,
        Some(READER),
        r#"mutation { bulkDocs(barrel: "a", docs: [{}]) { id } }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "forbidden", "reader bulkDocs");
    let d = data(
        gql_as(&http, Some(WRITER), put, json!({})).await,
        "writer putDoc",
    );
    let rev = d["putDoc"]["rev"].as_str().unwrap().to_owned();
    let del = format!(r#"mutation {{ deleteDoc(barrel: "a", id: "d", rev: "{rev}") {{ id }} }}"#);
    let r = gql_as(&http, Some(READER), &del, json!({})).await;
    assert_code(&r, "forbidden", "reader deleteDoc");

    let read = r#"{ node { version } barrels barrel(name: "a") { info { docCount } doc(id: "d") { id } docs { totalCount } changes { lastSeq } } cluster { status { role } } }"#;
    let d = data(
        gql_as(&http, Some(READER), read, json!({})).await,
        "reader reads",
    );
    assert_eq!(d["barrels"], json!(["a"]));
    assert_eq!(d["barrel"]["info"]["docCount"], 1);
    assert_eq!(d["barrel"]["doc"]["id"], "d");
    assert_eq!(d["barrel"]["docs"]["totalCount"], 1);
    assert_eq!(d["cluster"]["status"][0]["role"], "master");
    // Over GET too.
    let a = http
        .send(
            "GET",
            "/graphql?query=%7Bbarrels%7D",
            &[("Authorization", &format!("Bearer {READER}"))],
            None,
        )
        .await;
    assert_eq!(a.body, json!({"data": {"barrels": ["a"]}}));

    // A batch: every member runs as the same principal.
    let a = http
        .send(
            "POST",
            "/graphql",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {READER}")),
            ],
            Some(serde_json::to_vec(&json!([{"query": "{ barrels }"}, {"query": put}])).unwrap()),
        )
        .await;
    let list = a.body.as_array().unwrap();
    assert_eq!(list[0], json!({"data": {"barrels": ["a"]}}));
    assert_code(&list[1], "forbidden", "reader putDoc in a batch");

    let r = gql_as(
        &http,
        Some(WRITER),
        r#"mutation { deleteBarrel(name: "a") }"#,
        json!({}),
    )
    .await;
    assert_code(&r, "forbidden", "writer deletes a barrel");
    let d = data(
        gql_as(&http, Some(WRITER), &del, json!({})).await,
        "writer deleteDoc",
    );
    assert_eq!(d["deleteDoc"]["id"], "d");
    let d = data(
        gql_as(
            &http,
            Some(ADMIN),
            r#"mutation { deleteBarrel(name: "a") }"#,
            json!({}),
        )
        .await,
        "admin deletes a barrel",
    );
    assert_eq!(d["deleteBarrel"], true);

    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Abuse

#[actix_rt::test]
async fn abusive_queries_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "x").await;
    bulk(&http, "x", vec![json!({"_id": "a", "v": 1})]).await;

    // 50 levels of a type that recurses (introspection's ofType): refused before it runs.
    let nested = |levels: usize| {
        format!(
            "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
            "{ ofType ".repeat(levels),
            "}".repeat(levels)
        )
    };
    let r = gql(&http, &nested(50), json!({})).await;
    assert_invalid(&r, "depth", "50 levels of ofType");
    still_serves(&http, "50 levels of ofType").await;
    // Past the depth limit but within the recursion limit: the depth limit answers.
    let r = gql(&http, &nested(12), json!({})).await;
    assert_invalid(&r, "nested too deep", "12 levels of ofType");
    // The same depth built from nested fragments.
    let mut fragments = String::from("{ __schema { types { ...F0 } } }\n");
    for i in 0..50 {
        fragments.push_str(&format!(
            "fragment F{i} on __Type {{ name ofType {{ ...F{} }} }}\n",
            i + 1
        ));
    }
    fragments.push_str("fragment F50 on __Type { name }\n");
    let r = gql(&http, &fragments, json!({})).await;
    assert!(r["data"].is_null() && r["errors"].is_array(), "{r}");
    still_serves(&http, "50 nested fragments").await;
    // A fragment cycle.
    let r = gql(
        &http,
        "{ __schema { types { ...A } } } fragment A on __Type { ofType { ...B } } fragment B on __Type { ofType { ...A } }",
        json!({}),
    )
    .await;
    assert_invalid(&r, "", "a fragment cycle");
    // 50 levels of selections on a field that has none.
    let invalid = format!("{{ barrels {} }}", "{ a ".repeat(50) + &"}".repeat(50));
    let r = gql(&http, &invalid, json!({})).await;
    assert!(r["data"].is_null() && r["errors"].is_array(), "{r}");
    // The deepest selection the schema allows runs.
    let d = ok(
        &http,
        r#"{ barrel(name: "x") { docs { edges { node { id body } } pageInfo { endCursor } } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["barrel"]["docs"]["edges"][0]["node"]["id"], "a");

    // A huge `first`.
    for q in [
        r#"{ barrel(name: "x") { docs(first: 100000) { totalCount } } }"#,
        r#"{ barrel(name: "x") { changes(first: 100000) { lastSeq } } }"#,
    ] {
        let r = gql(&http, q, json!({})).await;
        assert_code(&r, "bad_request", q);
        assert!(error_code(&r, q).1.contains("first"), "{r}");
    }
    let r = gql(
        &http,
        r#"{ barrel(name: "x") { docs(first: 99999999999) { totalCount } } }"#,
        json!({}),
    )
    .await;
    assert!(r["data"]["barrel"].is_null(), "first beyond Int: {r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Int"), "first beyond Int: {r}");

    // Unknown fields and arguments.
    let r = gql(&http, "{ nope }", json!({})).await;
    assert_invalid(&r, "unknown field", "an unknown field");
    let r = gql(&http, r#"{ barrel(name: "x") { name secret } }"#, json!({})).await;
    assert_invalid(&r, "secret", "an unknown nested field");
    let r = gql(
        &http,
        r#"{ barrel(name: "x", color: 1) { name } }"#,
        json!({}),
    )
    .await;
    assert_invalid(&r, "color", "an unknown argument");
    let r = gql(&http, r#"{ barrel { name } }"#, json!({})).await;
    assert_invalid(&r, "name", "a missing argument");
    let r = gql(&http, "subscription { nope }", json!({})).await;
    assert_invalid(&r, "nope", "an unknown subscription");

    // Wrong types, inline and in variables.
    for (q, vars, needle) in [
        (r#"{ barrel(name: 5) { name } }"#, json!({}), "name"),
        (
            r#"{ barrel(name: "x") { docs(first: "ten") { totalCount } } }"#,
            json!({}),
            "first",
        ),
        (
            r#"{ barrel(name: "x") { docs(where: {path: 1, eq: 1}) { totalCount } } }"#,
            json!({}),
            "where",
        ),
        (
            "query($f: Int) { barrel(name: \"x\") { docs(first: $f) { totalCount } } }",
            json!({"f": "ten"}),
            "first",
        ),
        (
            "query($n: String!) { barrel(name: $n) { name } }",
            json!({}),
            "n",
        ),
        (
            "query($n: String!) { barrel(name: $n) { name } }",
            json!({"n": ["x"]}),
            "n",
        ),
        (
            "mutation($d: [JSON!]!) { bulkDocs(barrel: \"x\", docs: $d, newEdits: \"yes\") { id } }",
            json!({"d": []}),
            "newEdits",
        ),
    ] {
        let r = gql(&http, q, vars).await;
        assert_invalid(&r, needle, q);
    }
    // A selection on a scalar, and a scalar without its selection.
    let r = gql(&http, "{ barrels { name } }", json!({})).await;
    assert!(r["data"].is_null() && r["errors"].is_array(), "{r}");
    let r = gql(&http, r#"{ barrel(name: "x") }"#, json!({})).await;
    assert!(r["data"].is_null() && r["errors"].is_array(), "{r}");

    // A long query of moderate aliases within the limits still runs: the limits are not too
    // tight for real clients.
    let q = format!(
        "{{ {} }}",
        (0..20)
            .map(|i| format!(r#"a{i}: barrel(name: "x") {{ doc(id: "a") {{ id rev }} }}"#))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let d = ok(&http, &q, json!({})).await;
    assert_eq!(d["a19"]["doc"]["id"], "a");

    // Aliases of costlier fields beyond the complexity limit.
    let q = format!(
        "{{ {} }}",
        (0..1000)
            .map(|i| format!(r#"a{i}: barrel(name: "x") {{ docs {{ totalCount }} }}"#))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let r = gql(&http, &q, json!({})).await;
    assert_invalid(&r, "complex", "1,000 aliases of barrel{docs{totalCount}}");

    still_serves(&http, "every abusive query").await;
    let d = ok(
        &http,
        r#"{ barrel(name: "x") { doc(id: "a") { get(path: "v") } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(d["barrel"]["doc"]["get"], 1);
    node.node.shutdown().await.unwrap();
}

/// The issue asks for "1,000 aliases — clear errors". A query of 1,000 aliases of `barrels`
/// has complexity 1,000, under `MAX_COMPLEXITY` (2,000), so the node runs it.
#[actix_rt::test]
async fn a_thousand_aliases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "x").await;
    let q = format!(
        "{{ {} }}",
        (0..1000)
            .map(|i| format!("a{i}: barrels"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let r = gql(&http, &q, json!({})).await;
    assert!(
        r["data"].is_null() && r["errors"].is_array(),
        "1,000 aliases of barrels must be refused with an error, not run: {}…",
        &r.to_string()[..200.min(r.to_string().len())]
    );
    still_serves(&http, "1,000 aliases").await;
    node.node.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Subscriptions with real Node.js clients

/// `tests/graphql-clients`, whose dependencies must be installed.
fn clients_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/graphql-clients");
    assert!(
        dir.join("node_modules/graphql-ws").is_dir()
            && dir.join("node_modules/subscriptions-transport-ws").is_dir(),
        "the Node.js GraphQL clients are not installed: run `npm ci --prefix tests/graphql-clients`"
    );
    dir
}

/// A running `subscribe.mjs`: its stdout lines as they come, and its end.
struct Subscriber {
    what: String,
    lines: tokio::sync::mpsc::Receiver<String>,
    stderr: actix_rt::task::JoinHandle<String>,
    exit: actix_rt::task::JoinHandle<ExitStatus>,
}

/// What a subscriber printed and how it ended.
struct Ended {
    events: Vec<Value>,
    status: ExitStatus,
    stderr: String,
}

impl Subscriber {
    /// Starts `node subscribe.mjs <url> <protocol> <barrel> <n> [token]`.
    fn start(url: &str, protocol: &str, barrel: &str, n: usize, token: Option<&str>) -> Self {
        let dir = clients_dir();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("subscribe.mjs"))
            .args([url, protocol, barrel, &n.to_string()])
            .args(token)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20 or later is needed): {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::channel(1024);
        // Blocking reads run on the blocking pool: the node's actors run on this test thread.
        let exit = actix_rt::task::spawn_blocking(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
            child.wait().unwrap()
        });
        let stderr = actix_rt::task::spawn_blocking(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            what: format!("{protocol} subscriber of {barrel}"),
            lines,
            stderr,
            exit,
        }
    }

    /// The next event it printed (None once it has ended).
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(HANG_GUARD, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no output within {HANG_GUARD:?}", self.what))?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what)),
        )
    }

    /// Reads to its end.
    async fn end(mut self, mut events: Vec<Value>) -> Ended {
        while let Some(e) = self.next().await {
            events.push(e);
        }
        let status = tokio::time::timeout(HANG_GUARD, self.exit)
            .await
            .unwrap_or_else(|_| panic!("{}: does not exit", self.what))
            .unwrap();
        let stderr = self.stderr.await.unwrap();
        Ended {
            events,
            status,
            stderr,
        }
    }
}

/// Checks that a subscriber saw every seq `1..=n` exactly once, in order, with its document.
fn assert_every_seq(e: &Ended, n: u64, what: &str) {
    assert!(e.status.success(), "{what}: {:?}\n{}", e.status, e.stderr);
    let seqs: Vec<u64> = e
        .events
        .iter()
        .map(|c| {
            assert_eq!(c["kind"], "CHANGE", "{what}: {c}");
            c["seq"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let expected: Vec<u64> = (1..=n).collect();
    if seqs != expected {
        let got: BTreeSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !got.contains(s))
            .copied()
            .collect();
        panic!(
            "{what}: expected seqs 1..={n} once each in order; {} events, missing {missing:?}, got {seqs:?}",
            seqs.len()
        );
    }
    let mut ids = BTreeSet::new();
    for c in &e.events {
        let id = c["docId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "{what}: {id} twice");
        assert_eq!(c["doc"]["_id"], id, "{what}: includeDocs: {c}");
        assert_eq!(c["doc"]["_rev"], c["rev"], "{what}: {c}");
        assert!(c["rev"].as_str().unwrap().starts_with("1-"), "{what}: {c}");
    }
}

#[actix_rt::test]
async fn subscriptions_of_both_protocols_miss_nothing_across_concurrent_writes() {
    clients_dir();
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "live").await;

    const BEFORE: usize = 200;
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    const N: usize = BEFORE + WRITERS * EACH;

    // Some documents before anyone subscribes.
    bulk(
        &http,
        "live",
        (0..BEFORE)
            .map(|i| json!({"_id": format!("before-{i:03}"), "i": i}))
            .collect(),
    )
    .await;

    // Both clients subscribe with since "0"; once each has received its first replayed
    // change, it is subscribed, and the writers start while it replays and follows.
    let mut modern = Subscriber::start(&node.url, "modern", "live", N, None);
    let mut legacy = Subscriber::start(&node.url, "legacy", "live", N, None);
    let first_modern = modern.next().await.expect("modern: a first change");
    let first_legacy = legacy.next().await.expect("legacy: a first change");
    assert_eq!(first_modern["seq"], "1");
    assert_eq!(first_legacy["seq"], "1");

    // 8 concurrent writers, half over REST, half with GraphQL putDoc.
    let writers = (0..WRITERS).map(|w| {
        let http = &http;
        async move {
            for j in 0..EACH {
                let id = format!("w{w}-{j:03}");
                if w % 2 == 0 {
                    let a = http
                        .json(
                            "PUT",
                            &format!("/barrels/live/docs/{id}"),
                            &json!({"w": w, "j": j}),
                        )
                        .await;
                    assert_eq!(a.status, 201, "PUT {id}: {}", a.body);
                } else {
                    data(
                        put_doc(http, "live", json!({"_id": id, "w": w, "j": j})).await,
                        "putDoc",
                    );
                }
            }
        }
    });
    join_all(writers).await;
    let i = info(&http, "live").await;
    assert_eq!(i["updateSeq"], N.to_string(), "{i}");
    assert_eq!(i["docCount"], N);

    let modern = modern.end(vec![first_modern]).await;
    let legacy = legacy.end(vec![first_legacy]).await;
    assert_every_seq(&modern, N as u64, "modern (graphql-ws)");
    assert_every_seq(&legacy, N as u64, "legacy (subscriptions-transport-ws)");
    // Each client spoke its own subprotocol.
    assert!(
        modern.stderr.contains("protocol: graphql-transport-ws"),
        "{}",
        modern.stderr
    );
    assert!(
        legacy.stderr.contains("protocol: graphql-ws"),
        "{}",
        legacy.stderr
    );
    // Both saw the same history.
    let revs = |e: &Ended| {
        e.events
            .iter()
            .map(|c| (c["seq"].clone(), c["docId"].clone(), c["rev"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(revs(&modern), revs(&legacy));

    // The feed over HTTP agrees.
    let d = ok(
        &http,
        r#"{ barrel(name: "live") { changes(first: 1000) { results { seq docId rev } lastSeq } } }"#,
        json!({}),
    )
    .await;
    let feed: Vec<(Value, Value, Value)> = d["barrel"]["changes"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["seq"].clone(), c["docId"].clone(), c["rev"].clone()))
        .collect();
    assert_eq!(feed, revs(&modern));

    // A subscription to a missing barrel or with a bad name ends with a clear error.
    let missing = Subscriber::start(&node.url, "modern", "nope", 1, None);
    let bad = Subscriber::start(&node.url, "legacy", "Bad", 1, None);
    let (missing, bad) = (missing.end(vec![]).await, bad.end(vec![]).await);
    assert_eq!(missing.status.code(), Some(2), "{}", missing.stderr);
    assert!(missing.stderr.contains("not_found"), "{}", missing.stderr);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("bad_request"), "{}", bad.stderr);

    still_serves(&http, "subscriptions").await;
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn subscriptions_authenticate_through_connection_init() {
    clients_dir();
    let dir = tempfile::tempdir().unwrap();
    let node = secured_node(dir.path()).await;
    let http = Http::new(&node);
    data(
        gql_as(
            &http,
            Some(ADMIN),
            r#"mutation { createBarrel(name: "s") { name } }"#,
            json!({}),
        )
        .await,
        "create",
    );
    data(
        gql_as(
            &http,
            Some(WRITER),
            r#"mutation { bulkDocs(barrel: "s", docs: [{_id: "a"}, {_id: "b"}, {_id: "c"}]) { id } }"#,
            json!({}),
        )
        .await,
        "write",
    );

    let runs = [
        ("modern", Some(READER)),
        ("legacy", Some(READER)),
        ("modern", None),
        ("legacy", None),
        ("modern", Some("wrong-token")),
        ("legacy", Some("wrong-token")),
    ]
    .map(|(protocol, token)| {
        let s = Subscriber::start(&node.url, protocol, "s", 3, token);
        (protocol, token, s)
    });
    let ended = join_all(
        runs.into_iter()
            .map(|(p, t, s)| async move { (p, t, s.end(vec![]).await) }),
    )
    .await;
    for (protocol, token, e) in ended {
        let what = format!("{protocol} with token {token:?}");
        match token {
            Some(READER) => assert_every_seq(&e, 3, &what),
            None => {
                assert_eq!(e.status.code(), Some(2), "{what}: {}", e.stderr);
                assert!(e.events.is_empty(), "{what}");
                assert!(e.stderr.contains("unauthorized"), "{what}: {}", e.stderr);
            }
            Some(_) => {
                assert_eq!(e.status.code(), Some(2), "{what}: {}", e.stderr);
                assert!(e.events.is_empty(), "{what}");
                assert!(e.stderr.contains("unknown token"), "{what}: {}", e.stderr);
            }
        }
    }

    still_serves_as(&http, READER).await;
    node.node.shutdown().await.unwrap();
}

async fn still_serves_as(http: &Http, token: &str) {
    let r = gql_as(http, Some(token), "{ barrels }", json!({})).await;
    assert_eq!(r, json!({"data": {"barrels": ["s"]}}));
}

/// `eq: null` asks for documents whose value at the path is JSON null (REST: `eq.null`); the
/// node reads an explicit null as "no operator" and refuses the condition, and `in: [null]` is
/// not valid for `[JSON!]`: GraphQL cannot ask for null values at all.
#[actix_rt::test]
async fn eq_null_matches_null_values() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "n").await;
    bulk(
        &http,
        "n",
        vec![json!({"_id": "a", "v": null}), json!({"_id": "b", "v": 1})],
    )
    .await;
    let rest = http.get("/barrels/n/docs?v=eq.null").await;
    assert_eq!(rest.body["docs"][0]["_id"], "a", "REST: {}", rest.body);
    let r = gql(
        &http,
        r#"{ barrel(name: "n") { docs(where: [{path: "v", eq: null}]) { nodes { id } } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        r,
        json!({"data": {"barrel": {"docs": {"nodes": [{"id": "a"}]}}}}),
        "GraphQL eq: null"
    );
    node.node.shutdown().await.unwrap();
}
