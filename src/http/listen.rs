//! `GET /barrels/{b}/listen`: the listener websocket (DESIGN §6). A client subscribes to topic
//! filters and receives every matching change, replayed from `since` and then live, in seq
//! order; a subscription that falls behind gets `lagged` with the seq to resume from.
//!
//! ```text
//! → {"op":"subscribe","id":1,"filters":["users/+/name/#"],"since":"0","include_docs":true}
//! ← {"op":"subscribed","id":1,"seq":"57"}
//! ← {"op":"change","id":1,"seq":"58","doc_id":"u1","rev":"3-…","deleted":false,"topics":[…],"doc":{…}}
//! ← {"op":"lagged","id":1,"resume_from":"58"}      ← {"op":"error","id":1,"reason":"…"}
//! → {"op":"unsubscribe","id":1}                     ← {"op":"unsubscribed","id":1}
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use cooper_actors::listener::{ChangeStream, Lagged, Since, StreamItem};
use cooper_actors::BarrelHandle;
use cooper_protocols::topic::TopicFilter;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::docs::flag;
use super::{ApiError, AppState};

/// Filters one subscription may list.
pub const MAX_FILTERS: usize = 64;
/// Largest frame a client may send.
pub const MAX_FRAME: usize = 64 * 1024;
/// Keepalive: a ping this often; a client silent for three of them is gone.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client that does not take a frame for this long is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// One subscription request, from a frame or from the query string.
#[derive(Debug)]
struct SubscribeRequest {
    id: Value,
    filters: Vec<TopicFilter>,
    since: Since,
    include_docs: bool,
}

/// Parses `since`: `"0"`, `"now"`, a number, or a numeric string.
fn parse_since(v: Option<&Value>) -> Result<Since, String> {
    match v {
        None | Some(Value::Null) => Ok(Since::Now),
        Some(Value::String(s)) if s == "now" => Ok(Since::Now),
        Some(Value::String(s)) => s
            .parse()
            .map(Since::Seq)
            .map_err(|_| format!("since must be a seq or \"now\", not {s:?}")),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Since::Seq)
            .ok_or_else(|| "since must be a non-negative integer".to_owned()),
        Some(other) => Err(format!("since must be a seq or \"now\", not {other}")),
    }
}

fn parse_filters(list: &[Value]) -> Result<Vec<TopicFilter>, String> {
    if list.is_empty() {
        return Err("filters must hold at least one topic filter".into());
    }
    if list.len() > MAX_FILTERS {
        return Err(format!("at most {MAX_FILTERS} filters per subscription"));
    }
    list.iter()
        .map(|f| {
            let s = f.as_str().ok_or("filters must be strings")?;
            TopicFilter::parse(s).map_err(|e| e.to_string())
        })
        .collect()
}

fn parse_subscribe(frame: &Value) -> Result<SubscribeRequest, String> {
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    if !(id.is_u64() || id.is_string()) {
        return Err("subscribe needs an id: a number or a string".into());
    }
    let filters = match frame.get("filters") {
        Some(Value::Array(list)) => parse_filters(list)?,
        Some(Value::String(one)) => parse_filters(&[Value::String(one.clone())])?,
        _ => return Err("filters must be an array of topic filters".into()),
    };
    let include_docs = match frame.get("include_docs") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("include_docs must be true or false".into()),
    };
    Ok(SubscribeRequest {
        id,
        filters,
        since: parse_since(frame.get("since"))?,
        include_docs,
    })
}

/// The change frame of one item, built without re-serializing the shared document.
fn change_frame(id: &str, item: &StreamItem) -> String {
    let doc_id = serde_json::to_string(&item.id).unwrap_or_default();
    let topics = serde_json::to_string(&item.topics).unwrap_or_default();
    let mut frame = format!(
        r#"{{"op":"change","id":{id},"seq":"{}","doc_id":{doc_id},"rev":"{}","deleted":{},"topics":{topics}"#,
        item.seq, item.rev, item.deleted
    );
    if let Some(doc) = &item.doc {
        frame.push_str(r#","doc":"#);
        frame.push_str(doc);
    }
    frame.push('}');
    frame
}

/// `GET /barrels/{b}/listen`
pub async fn listen(
    req: HttpRequest,
    state: web::Data<AppState>,
    b: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    let filters: Vec<Value> = pairs
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| Value::String(v.clone()))
        .collect();
    let initial = if filters.is_empty() {
        None
    } else {
        let since = pairs
            .iter()
            .find(|(k, _)| k == "since")
            .map(|(_, v)| Value::String(v.clone()));
        let include_docs = flag(
            "include_docs",
            pairs
                .iter()
                .find(|(k, _)| k == "include_docs")
                .map(|(_, v)| v.as_str()),
        )?;
        Some(SubscribeRequest {
            id: json!(0),
            filters: parse_filters(&filters).map_err(ApiError::bad_request)?,
            since: parse_since(since.as_ref()).map_err(ApiError::bad_request)?,
            include_docs,
        })
    };
    let (res, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("a websocket upgrade is needed: {e}")))?;
    let messages = messages
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let stopping = state.node.stopping();
    let max = state.config.limits.max_subscriptions;
    actix_rt::spawn(Connection::new(barrel, session, max).run(messages, initial, stopping));
    Ok(res)
}

type Event = (String, Result<StreamItem, Lagged>);

/// One websocket connection and its subscriptions.
struct Connection {
    barrel: BarrelHandle,
    session: actix_ws::Session,
    streams: SelectAll<BoxStream<'static, Event>>,
    /// Active subscriptions by id (their JSON text), each with the switch that ends it.
    active: HashMap<String, oneshot::Sender<()>>,
    max_subscriptions: usize,
}

impl Connection {
    fn new(barrel: BarrelHandle, session: actix_ws::Session, max_subscriptions: usize) -> Self {
        Self {
            barrel,
            session,
            streams: SelectAll::new(),
            active: HashMap::new(),
            max_subscriptions,
        }
    }

    /// Sends a frame; false when the client is gone or does not read.
    async fn send(&mut self, text: String) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.session.text(text)).await,
            Ok(Ok(()))
        )
    }

    async fn error(&mut self, id: &Value, reason: &str) -> bool {
        self.send(json!({"op": "error", "id": id, "reason": reason}).to_string())
            .await
    }

    async fn subscribe(&mut self, req: SubscribeRequest) -> bool {
        let key = req.id.to_string();
        if self.active.contains_key(&key) {
            return self
                .error(&req.id, "a subscription with this id is active")
                .await;
        }
        if self.active.len() >= self.max_subscriptions {
            return self
                .error(
                    &req.id,
                    &format!(
                        "at most {} subscriptions per connection",
                        self.max_subscriptions
                    ),
                )
                .await;
        }
        let seq = match self.barrel.counts() {
            Ok(c) => c.update_seq,
            Err(e) => return self.error(&req.id, &e.to_string()).await,
        };
        let stream = match self
            .barrel
            .listen(req.filters, req.since, req.include_docs)
            .await
        {
            Ok(s) => s,
            Err(e) => return self.error(&req.id, &e.to_string()).await,
        };
        let (stop, stopped) = oneshot::channel();
        self.active.insert(key.clone(), stop);
        let items = stream::unfold(Some(stream), |s| async move {
            let mut s: ChangeStream = s?;
            match s.next().await {
                Ok(item) => Some((Ok(item), Some(s))),
                Err(lag) => Some((Err(lag), None)),
            }
        })
        .take_until(stopped)
        .map(move |item| (key.clone(), item));
        self.streams.push(items.boxed());
        self.send(json!({"op": "subscribed", "id": req.id, "seq": seq.to_string()}).to_string())
            .await
    }

    async fn handle_text(&mut self, text: &str) -> bool {
        let frame: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return self
                    .error(&Value::Null, &format!("invalid JSON: {e}"))
                    .await
            }
        };
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        match frame.get("op").and_then(Value::as_str) {
            Some("subscribe") => match parse_subscribe(&frame) {
                Ok(req) => self.subscribe(req).await,
                Err(reason) => self.error(&id, &reason).await,
            },
            Some("unsubscribe") => match self.active.remove(&id.to_string()) {
                Some(stop) => {
                    let _ = stop.send(());
                    self.send(json!({"op": "unsubscribed", "id": id}).to_string())
                        .await
                }
                None => self.error(&id, "no active subscription with this id").await,
            },
            Some("ping") => self.send(json!({"op": "pong"}).to_string()).await,
            _ => {
                self.error(&id, "op must be subscribe, unsubscribe or ping")
                    .await
            }
        }
    }

    async fn run(
        mut self,
        mut messages: actix_ws::AggregatedMessageStream,
        initial: Option<SubscribeRequest>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        if let Some(req) = initial {
            if !self.subscribe(req).await {
                return;
            }
        }
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let alive = tokio::select! {
                msg = messages.recv() => {
                    last_heard = Instant::now();
                    match msg {
                        Some(Ok(AggregatedMessage::Text(t))) => self.handle_text(&t).await,
                        Some(Ok(AggregatedMessage::Binary(_))) => self.error(&Value::Null, "frames must be JSON text").await,
                        Some(Ok(AggregatedMessage::Ping(p))) => self.session.pong(&p).await.is_ok(),
                        Some(Ok(AggregatedMessage::Pong(_))) => true,
                        Some(Ok(AggregatedMessage::Close(_))) | None => false,
                        Some(Err(e)) => {
                            let _ = self.error(&Value::Null, &format!("bad frame: {e}")).await;
                            false
                        }
                    }
                }
                Some((key, event)) = self.streams.next(), if !self.streams.is_empty() => {
                    match event {
                        Ok(item) => self.send(change_frame(&key, &item)).await,
                        Err(lag) => {
                            self.active.remove(&key);
                            let id: Value = serde_json::from_str(&key).unwrap_or(Value::Null);
                            self.send(json!({"op": "lagged", "id": id, "resume_from": lag.resume_from.to_string()}).to_string()).await
                        }
                    }
                }
                _ = stopping.wait_for(|s| *s) => {
                    let reason = actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Away,
                        description: Some("node shutting down".into()),
                    };
                    let _ = self.session.close(Some(reason)).await;
                    return;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > PING_EVERY * 3 {
                        false
                    } else {
                        self.session.ping(b"").await.is_ok()
                    }
                }
            };
            if !alive {
                break;
            }
        }
        let _ = self.session.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_frames_are_checked() {
        let ok =
            parse_subscribe(&json!({"op": "subscribe", "id": 1, "filters": ["a/#"], "since": "0"}))
                .unwrap();
        assert_eq!(ok.since, Since::Seq(0));
        assert!(!ok.include_docs);
        for bad in [
            json!({"op": "subscribe", "filters": ["a"]}),
            json!({"op": "subscribe", "id": 1, "filters": []}),
            json!({"op": "subscribe", "id": 1, "filters": ["a/#/b"]}),
            json!({"op": "subscribe", "id": 1, "filters": [5]}),
            json!({"op": "subscribe", "id": 1, "filters": ["a"], "since": "x"}),
            json!({"op": "subscribe", "id": 1, "filters": ["a"], "since": -1}),
            json!({"op": "subscribe", "id": 1, "filters": ["a"], "include_docs": "yes"}),
            json!({"op": "subscribe", "id": {"x": 1}, "filters": ["a"]}),
        ] {
            assert!(parse_subscribe(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn change_frames_are_json() {
        let item = StreamItem {
            seq: 58,
            id: "u\"1".into(),
            rev: "3-00000000000000000000000000000000".into(),
            deleted: false,
            topics: vec!["users/u1/name/Ann".into()],
            doc: Some(std::sync::Arc::from(r#"{"_id":"u\"1"}"#)),
        };
        let v: Value = serde_json::from_str(&change_frame("1", &item)).unwrap();
        assert_eq!(v["seq"], "58");
        assert_eq!(v["doc_id"], "u\"1");
        assert_eq!(v["doc"]["_id"], "u\"1");
        assert_eq!(v["topics"][0], "users/u1/name/Ann");
    }
}
