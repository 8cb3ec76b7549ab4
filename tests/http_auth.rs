//! Who may do what over HTTP (DESIGN §7): static bearer tokens and HS256 JWTs with the roles
//! reader < writer < admin, optionally limited to some barrels; open routes; and the refusal
//! to serve a non-loopback address without auth unless `insecure`.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Answer, Http, TestNode};
use cooper::config::{Role, TokenConfig};
use cooper::http::auth::sign_jwt;
use cooper::{Config, Node};
use serde_json::{json, Value};

const READER: &str = "reader-token-0001";
const WRITER: &str = "writer-token-0002";
const ADMIN: &str = "admin-token-00003";
const SCOPED_A: &str = "scoped-a-token-04";
const SECRET: &str = "jwt-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn secured_node(dir: &std::path::Path) -> TestNode {
    common::start_in(dir, |c| {
        let token = |token: &str, role, barrels: Option<&[&str]>| TokenConfig {
            token: token.to_owned(),
            role,
            barrels: barrels.map(|b| b.iter().map(|s| (*s).to_owned()).collect()),
        };
        c.auth.tokens = vec![
            token(READER, Role::Reader, None),
            token(WRITER, Role::Writer, None),
            token(ADMIN, Role::Admin, None),
            token(SCOPED_A, Role::Writer, Some(&["a"])),
        ];
        c.auth.jwt_hs256_secret = Some(SECRET.to_owned());
    })
    .await
}

/// Sends a request with `Authorization: Bearer <token>` (none when `token` is `None`) and an
/// optional JSON body.
async fn call(
    http: &Http,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let bytes = body.map(|b| {
        headers.push(("Content-Type", "application/json"));
        serde_json::to_vec(&b).unwrap()
    });
    http.send(method, path, &headers, bytes).await
}

fn assert_refused(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    let kind = if status == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_eq!(a.body["error"], kind, "{what}: {}", a.body);
    assert!(a.body["reason"].is_string(), "{what}: {}", a.body);
    if status == 401 {
        let challenge = a
            .headers
            .get("www-authenticate")
            .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    }
}

fn assert_ok(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
}

#[actix_rt::test]
async fn tokens_carry_roles() {
    let dir = tempfile::tempdir().unwrap();
    let node = secured_node(dir.path()).await;
    let http = Http::new(&node);

    // Open routes need no token.
    assert_ok(&http.get("/health").await, 200, "/health");
    assert_ok(&http.get("/").await, 200, "/");
    assert_ok(&http.get("/openapi.json").await, 200, "/openapi.json");

    // No token, a bad token, a malformed header: 401 with a Bearer challenge.
    assert_refused(&http.get("/barrels").await, 401, "no token");
    assert_refused(
        &http.call("PUT", "/barrels/a").await,
        401,
        "no token, write",
    );
    assert_refused(
        &call(&http, Some("not-a-known-token"), "GET", "/barrels", None).await,
        401,
        "bad token",
    );
    let a = http
        .send(
            "GET",
            "/barrels",
            &[("Authorization", "Basic YWRtaW46YWRtaW4=")],
            None,
        )
        .await;
    assert_refused(&a, 401, "basic auth");
    assert_refused(
        &http.get("/no/such/route").await,
        401,
        "unknown route without a token",
    );

    // Admin creates barrels.
    for b in ["a", "b", "scratch"] {
        assert_ok(
            &call(&http, Some(ADMIN), "PUT", &format!("/barrels/{b}"), None).await,
            201,
            "admin creates a barrel",
        );
    }

    // Writer: documents yes, barrels no.
    let a = call(
        &http,
        Some(WRITER),
        "PUT",
        "/barrels/a/docs/d1",
        Some(json!({"v": 1})),
    )
    .await;
    assert_ok(&a, 201, "writer writes");
    let rev = a.body["rev"].as_str().unwrap().to_owned();
    assert_ok(
        &call(
            &http,
            Some(WRITER),
            "POST",
            "/barrels/a/_bulk_docs",
            Some(json!({"docs": [{"_id": "d2"}]})),
        )
        .await,
        201,
        "writer bulk",
    );
    assert_refused(
        &call(&http, Some(WRITER), "PUT", "/barrels/c", None).await,
        403,
        "writer creates a barrel",
    );
    assert_refused(
        &call(&http, Some(WRITER), "DELETE", "/barrels/scratch", None).await,
        403,
        "writer deletes a barrel",
    );
    assert_refused(
        &call(&http, Some(WRITER), "GET", "/metrics", None).await,
        403,
        "writer reads metrics",
    );

    // Reader: reads, never writes.
    let a = call(&http, Some(READER), "GET", "/barrels/a/docs/d1", None).await;
    assert_ok(&a, 200, "reader reads");
    assert_eq!(a.body["v"], 1);
    assert_ok(
        &call(&http, Some(READER), "GET", "/barrels", None).await,
        200,
        "reader lists",
    );
    assert_ok(
        &call(&http, Some(READER), "GET", "/barrels/a/docs?v=eq.1", None).await,
        200,
        "reader queries",
    );
    assert_ok(
        &call(&http, Some(READER), "GET", "/barrels/a/changes", None).await,
        200,
        "reader reads the feed",
    );
    assert_refused(
        &call(
            &http,
            Some(READER),
            "PUT",
            "/barrels/a/docs/d1",
            Some(json!({"_rev": rev, "v": 2})),
        )
        .await,
        403,
        "reader writes",
    );
    assert_refused(
        &call(
            &http,
            Some(READER),
            "DELETE",
            &format!("/barrels/a/docs/d1?rev={rev}"),
            None,
        )
        .await,
        403,
        "reader deletes",
    );
    assert_refused(
        &call(&http, Some(READER), "PUT", "/barrels/c", None).await,
        403,
        "reader creates a barrel",
    );
    // Nothing the reader tried landed.
    let a = call(&http, Some(READER), "GET", "/barrels/a/docs/d1", None).await;
    assert_eq!(a.body["_rev"], rev);

    // Scoped to barrel "a": writes there, nothing in "b".
    assert_ok(
        &call(
            &http,
            Some(SCOPED_A),
            "PUT",
            "/barrels/a/docs/s1",
            Some(json!({"v": 1})),
        )
        .await,
        201,
        "scoped writes in a",
    );
    assert_ok(
        &call(&http, Some(SCOPED_A), "GET", "/barrels/a/docs/s1", None).await,
        200,
        "scoped reads in a",
    );
    assert_refused(
        &call(
            &http,
            Some(SCOPED_A),
            "PUT",
            "/barrels/b/docs/s1",
            Some(json!({"v": 1})),
        )
        .await,
        403,
        "scoped writes in b",
    );
    assert_refused(
        &call(&http, Some(SCOPED_A), "GET", "/barrels/b/docs/s1", None).await,
        403,
        "scoped reads in b",
    );
    assert_refused(
        &call(&http, Some(SCOPED_A), "DELETE", "/barrels/a", None).await,
        403,
        "scoped writer deletes its barrel",
    );

    // Admin: everything, including metrics and barrel deletion.
    let a = call(&http, Some(ADMIN), "GET", "/metrics", None).await;
    assert_ok(&a, 200, "admin reads metrics");
    assert!(a
        .body
        .as_str()
        .unwrap()
        .contains("cooper_http_requests_total"));
    assert_refused(&http.get("/metrics").await, 401, "metrics without a token");
    assert_ok(
        &call(&http, Some(ADMIN), "DELETE", "/barrels/scratch", None).await,
        200,
        "admin deletes a barrel",
    );
    assert_ok(
        &call(
            &http,
            Some(ADMIN),
            "PUT",
            "/barrels/b/docs/x",
            Some(json!({"v": 1})),
        )
        .await,
        201,
        "admin writes documents",
    );
    let a = call(&http, Some(ADMIN), "GET", "/barrels", None).await;
    assert_eq!(a.body, json!(["a", "b"]));
    node.node.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn jwts_carry_roles_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let node = secured_node(dir.path()).await;
    let http = Http::new(&node);
    let secret = SECRET.as_bytes();
    let later = now() + 3600;

    let admin = sign_jwt(secret, &json!({"role": "admin", "exp": later}));
    assert_ok(
        &call(&http, Some(&admin), "PUT", "/barrels/a", None).await,
        201,
        "JWT admin creates a barrel",
    );
    assert_ok(
        &call(&http, Some(&admin), "PUT", "/barrels/b", None).await,
        201,
        "JWT admin creates a barrel",
    );

    let writer = sign_jwt(secret, &json!({"role": "writer", "exp": later}));
    assert_ok(
        &call(
            &http,
            Some(&writer),
            "PUT",
            "/barrels/a/docs/j1",
            Some(json!({"v": 1})),
        )
        .await,
        201,
        "JWT writer writes",
    );
    assert_ok(
        &call(&http, Some(&writer), "GET", "/barrels/a/docs/j1", None).await,
        200,
        "JWT writer reads",
    );
    assert_refused(
        &call(&http, Some(&writer), "DELETE", "/barrels/b", None).await,
        403,
        "JWT writer deletes a barrel",
    );
    // Without exp it does not expire.
    let forever = sign_jwt(secret, &json!({"role": "writer"}));
    assert_ok(
        &call(
            &http,
            Some(&forever),
            "PUT",
            "/barrels/a/docs/j2",
            Some(json!({"v": 2})),
        )
        .await,
        201,
        "JWT without exp",
    );

    let reader = sign_jwt(secret, &json!({"role": "reader", "exp": later}));
    assert_ok(
        &call(&http, Some(&reader), "GET", "/barrels/a/docs/j1", None).await,
        200,
        "JWT reader reads",
    );
    assert_refused(
        &call(
            &http,
            Some(&reader),
            "PUT",
            "/barrels/a/docs/j3",
            Some(json!({"v": 3})),
        )
        .await,
        403,
        "JWT reader writes",
    );

    // Barrel-scoped claims.
    let scoped = sign_jwt(
        secret,
        &json!({"role": "writer", "barrels": ["a"], "exp": later}),
    );
    assert_ok(
        &call(
            &http,
            Some(&scoped),
            "PUT",
            "/barrels/a/docs/j4",
            Some(json!({"v": 4})),
        )
        .await,
        201,
        "scoped JWT in a",
    );
    assert_refused(
        &call(
            &http,
            Some(&scoped),
            "PUT",
            "/barrels/b/docs/j4",
            Some(json!({"v": 4})),
        )
        .await,
        403,
        "scoped JWT in b",
    );

    // Expired, signed with another secret, tampered, not yet valid, without a role: 401.
    let expired = sign_jwt(secret, &json!({"role": "admin", "exp": now() - 60}));
    assert_refused(
        &call(&http, Some(&expired), "GET", "/barrels", None).await,
        401,
        "expired JWT",
    );
    let foreign = sign_jwt(
        b"another-secret-of-32-bytes-long!",
        &json!({"role": "admin", "exp": later}),
    );
    assert_refused(
        &call(&http, Some(&foreign), "GET", "/barrels", None).await,
        401,
        "JWT with another secret",
    );
    let mut parts: Vec<&str> = writer.split('.').collect();
    let admin_claims = admin.split('.').nth(1).unwrap();
    parts[1] = admin_claims;
    let tampered = parts.join(".");
    assert_refused(
        &call(&http, Some(&tampered), "DELETE", "/barrels/b", None).await,
        401,
        "JWT with swapped claims",
    );
    let early = sign_jwt(secret, &json!({"role": "admin", "nbf": later}));
    assert_refused(
        &call(&http, Some(&early), "GET", "/barrels", None).await,
        401,
        "JWT not valid yet",
    );
    let roleless = sign_jwt(secret, &json!({"sub": "someone", "exp": later}));
    assert_refused(
        &call(&http, Some(&roleless), "GET", "/barrels", None).await,
        401,
        "JWT without a role",
    );

    // Nothing refused was written.
    let a = call(&http, Some(&reader), "GET", "/barrels/b/docs/j4", None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = call(&http, Some(&reader), "GET", "/barrels", None).await;
    assert_eq!(a.body, json!(["a", "b"]));
    node.node.shutdown().await.unwrap();
}

fn all_interfaces_config(dir: &std::path::Path) -> Config {
    let mut c = Config::with_data_dir(dir);
    c.http = Some("0.0.0.0:0".parse().unwrap());
    c.http_workers = 2;
    c.barrel_threads = 2;
    c
}

#[actix_rt::test]
async fn all_interfaces_need_auth_or_insecure() {
    let dir = tempfile::tempdir().unwrap();

    let open = all_interfaces_config(dir.path());
    let err = open.check().unwrap_err().to_string();
    assert!(err.contains("--insecure"), "{err}");
    let err = Node::start(open)
        .await
        .expect_err("no auth on 0.0.0.0 is refused")
        .to_string();
    assert!(err.contains("--insecure"), "{err}");

    // With auth configured the same address is accepted.
    let mut with_auth = all_interfaces_config(dir.path());
    with_auth.auth.jwt_hs256_secret = Some(SECRET.to_owned());
    with_auth.check().unwrap();

    // Insecure: served on every interface; reached here through loopback.
    let mut insecure = all_interfaces_config(dir.path());
    insecure.insecure = true;
    insecure.check().unwrap();
    let node = Node::start(insecure).await.expect("insecure starts");
    let addr = node.http_addr().unwrap();
    assert!(addr.ip().is_unspecified(), "{addr}");
    let http = Http::at(&format!("http://127.0.0.1:{}", addr.port()));
    assert_eq!(http.get("/health").await.status, 200);
    let a = http.call("PUT", "/barrels/open").await;
    assert_eq!(a.status, 201, "no auth: open API: {}", a.body);
    node.shutdown().await.unwrap();
}
