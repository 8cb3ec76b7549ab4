//! The HTTP client behind the `cooper` CLI's client commands: one request per call, errors
//! turned into readable messages.

use std::time::Duration;

use serde_json::Value;

/// Talks to a running node.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: awc::Client,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{status} {kind}: {reason}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error kind.
        kind: String,
        /// The reason.
        reason: String,
    },
    /// Bad input on the command line.
    #[error("{0}")]
    Usage(String),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:7080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(300))
            .finish();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    /// Sends a request and returns the JSON answer (or the raw text when it is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let method = awc::http::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Usage(format!("bad method {method}")))?;
        let mut req = self
            .http
            .request(method, &url)
            .insert_header(("Accept", "application/json"));
        if let Some(t) = &self.token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        let sent = match body {
            Some(b) => {
                req.insert_header(("Content-Type", "application/json"))
                    .send_body(b)
                    .await
            }
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let bytes = res
            .body()
            .limit(256 << 20)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let status = res.status();
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Api {
                status: status.as_u16(),
                kind: value["error"].as_str().unwrap_or("error").to_owned(),
                reason: value["reason"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            })
        }
    }
}

/// Percent-encodes one path segment (an id, a barrel name).
pub fn segment(s: &str) -> String {
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

/// Builds a query string from `key=value` arguments such as `age=gte.18`.
pub fn query_string(args: &[String]) -> Result<String, ClientError> {
    let pairs: Vec<(&str, &str)> = args
        .iter()
        .map(|a| {
            a.split_once('=').ok_or_else(|| {
                ClientError::Usage(format!("{a:?} is not a condition like age=gte.18"))
            })
        })
        .collect::<Result<_, _>>()?;
    serde_urlencoded::to_string(&pairs).map_err(|e| ClientError::Usage(e.to_string()))
}
