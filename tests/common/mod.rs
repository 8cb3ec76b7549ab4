//! Shared helpers of the whole-node tests: a node on 127.0.0.1:0 with a temporary data
//! directory, and a small HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cooper::{Config, Node};
use serde_json::Value;

/// A running node and where it keeps its data.
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its data directory (kept until the `TempDir` of the test drops).
    pub dir: PathBuf,
}

/// Starts a node serving HTTP on a free loopback port, with data in `dir`.
pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestNode {
    let mut config = Config::with_data_dir(dir);
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.http_workers = 2;
    config.barrel_threads = 2;
    tweak(&mut config);
    let node = Node::start(config).await.expect("node starts");
    let url = format!("http://{}", node.http_addr().expect("serves http"));
    TestNode {
        node,
        url,
        dir: dir.to_owned(),
    }
}

/// Starts a node with the default test configuration.
pub async fn start(dir: &Path) -> TestNode {
    start_in(dir, |_| {}).await
}

/// An HTTP answer: status, headers and body (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: awc::http::header::HeaderMap,
    /// The body as JSON, or as a JSON string holding the text.
    pub body: Value,
    /// The raw body.
    pub bytes: Vec<u8>,
}

/// A request builder over awc with generous limits.
pub struct Http {
    client: awc::Client,
    base: String,
}

impl Http {
    /// A client of `node`.
    pub fn new(node: &TestNode) -> Self {
        Self::at(&node.url)
    }

    /// A client of the node at `base`.
    pub fn at(base: &str) -> Self {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .finish();
        Self {
            client,
            base: base.to_owned(),
        }
    }

    /// Sends `method path` with optional headers and raw body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        let bytes = res.body().limit(512 << 20).await.unwrap().to_vec();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body,
            bytes,
        }
    }

    /// Sends JSON.
    pub async fn json(&self, method: &str, path: &str, body: &Value) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send(
            method,
            path,
            &[("Content-Type", "application/json")],
            Some(bytes),
        )
        .await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], None).await
    }

    /// Sends without a body.
    pub async fn call(&self, method: &str, path: &str) -> Answer {
        self.send(method, path, &[], None).await
    }
}

/// Asserts an answer's status, showing its body when it differs.
pub fn assert_status(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
}

/// Creates a barrel over the REST API.
pub async fn create_barrel(http: &Http, b: &str) {
    let a = http.call("PUT", &format!("/barrels/{b}")).await;
    assert_status(&a, 201, "create barrel");
}

/// PUTs a document and returns its new revision.
pub async fn put(http: &Http, b: &str, id: &str, body: Value) -> String {
    let a = http
        .json("PUT", &format!("/barrels/{b}/docs/{id}"), &body)
        .await;
    assert_status(&a, 201, &format!("PUT {id}"));
    a.body["rev"].as_str().unwrap().to_owned()
}

/// DELETEs a document and returns the tombstone's revision.
pub async fn delete(http: &Http, b: &str, id: &str, rev: &str) -> String {
    let a = http
        .call("DELETE", &format!("/barrels/{b}/docs/{id}?rev={rev}"))
        .await;
    assert_status(&a, 200, &format!("DELETE {id}"));
    a.body["rev"].as_str().unwrap().to_owned()
}
