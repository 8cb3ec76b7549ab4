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

/// What `cooper listen` follows.
#[derive(Debug, Clone)]
pub struct ListenRequest {
    /// The barrel.
    pub barrel: String,
    /// Topic filters.
    pub filters: Vec<String>,
    /// `now`, or the seq to start after.
    pub since: String,
    /// Include each document.
    pub include_docs: bool,
}

/// Follows a barrel's changes over the listener websocket, calling `on_change` with each
/// change frame, and reconnects (with `since` = the last seq seen) when the connection drops,
/// e.g. while the node restarts. Returns only on a subscription error.
pub async fn listen(
    client: &Client,
    request: &ListenRequest,
    mut on_change: impl FnMut(&Value),
    mut on_notice: impl FnMut(&str),
) -> Result<(), ClientError> {
    let (base, token) = (client.base.as_str(), client.token.as_deref());
    let (barrel, filters, include_docs) = (&request.barrel, &request.filters, request.include_docs);
    use futures_util::{SinkExt as _, StreamExt as _};
    let ws_base = base
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let url = format!(
        "{}/barrels/{}/listen",
        ws_base.trim_end_matches('/'),
        segment(barrel)
    );
    let mut since = request.since.clone();
    let mut backoff = Duration::from_millis(200);
    let mut sub_id = 0u64;
    loop {
        let mut req = awc::Client::new().ws(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.connect().await {
            Err(e) => on_notice(&format!("cannot connect to {url} ({e}); retrying")),
            Ok((_, mut framed)) => {
                backoff = Duration::from_millis(200);
                sub_id += 1;
                let frame = serde_json::json!({"op": "subscribe", "id": sub_id, "filters": filters, "since": since, "include_docs": include_docs});
                if framed
                    .send(awc::ws::Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    continue;
                }
                while let Some(msg) = framed.next().await {
                    let text = match msg {
                        Ok(awc::ws::Frame::Text(t)) => t,
                        Ok(awc::ws::Frame::Ping(p)) => {
                            let _ = framed.send(awc::ws::Message::Pong(p)).await;
                            continue;
                        }
                        Ok(awc::ws::Frame::Close(_)) | Err(_) => break,
                        Ok(_) => continue,
                    };
                    let Ok(v) = serde_json::from_slice::<Value>(&text) else {
                        continue;
                    };
                    match v["op"].as_str() {
                        Some("change") => {
                            if let Some(seq) = v["seq"].as_str() {
                                since = seq.to_owned();
                            }
                            on_change(&v);
                        }
                        Some("lagged") => {
                            since = v["resume_from"].as_str().unwrap_or(&since).to_owned();
                            on_notice(&format!("fell behind; resuming from seq {since}"));
                            sub_id += 1;
                            let frame = serde_json::json!({"op": "subscribe", "id": sub_id, "filters": filters, "since": since, "include_docs": include_docs});
                            if framed
                                .send(awc::ws::Message::Text(frame.to_string().into()))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Some("error") => {
                            return Err(ClientError::Api {
                                status: 400,
                                kind: "bad_request".into(),
                                reason: v["reason"]
                                    .as_str()
                                    .unwrap_or("subscription refused")
                                    .to_owned(),
                            })
                        }
                        _ => {}
                    }
                }
                on_notice(&format!("connection lost; reconnecting from seq {since}"));
            }
        }
        actix_rt::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
