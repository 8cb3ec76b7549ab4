//! `GET /barrels/{b}/changes`: the changes feed, `normal`, `longpoll` or `eventsource`.
//! Live feeds wait on the barrel's `DocumentChanged` events (no polling) and always read the
//! rows from the store, so a burst that overflows the event buffer loses nothing.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use cooper_actors::barrel::store::{ChangeRow, GetOptions};
use cooper_actors::listener::{ChangeStream, Lagged, Since, StreamItem};
use cooper_actors::BarrelHandle;
use cooper_protocols::topic::{TopicFilter, TopicTrie};
use futures_util::stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::docs::flag;
use super::{ApiError, AppState, JsonLine};

/// Default wait of a longpoll feed, as CouchDB's.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Rows read from the store per step while filtering.
const SCAN_STEP: usize = 1_000;

/// What a feed request asks for.
#[derive(Debug, Clone)]
struct FeedRequest {
    since: u64,
    limit: usize,
    include_docs: bool,
    all_docs: bool,
    filters: Vec<TopicFilter>,
    /// The same filters as a trie: the matcher listeners use.
    trie: TopicTrie<()>,
    feed: Feed,
    timeout: Duration,
    heartbeat: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Normal,
    Longpoll,
    EventSource,
}

fn parse(
    pairs: &[(String, String)],
    barrel: &BarrelHandle,
    state: &AppState,
) -> Result<FeedRequest, ApiError> {
    let limits = &state.config.limits;
    let mut r = FeedRequest {
        since: 0,
        limit: limits.max_page,
        include_docs: false,
        all_docs: false,
        filters: Vec::new(),
        trie: TopicTrie::new(),
        feed: Feed::Normal,
        timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS.min(limits.max_feed_timeout_ms)),
        heartbeat: None,
    };
    let ms = |name: &str, v: &str| -> Result<Duration, ApiError> {
        let n: u64 = v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{name} is a number of milliseconds")))?;
        Ok(Duration::from_millis(n.min(limits.max_feed_timeout_ms)))
    };
    for (k, v) in pairs {
        match k.as_str() {
            "since" => {
                r.since = match v.as_str() {
                    "now" => barrel.counts()?.update_seq,
                    n => n
                        .parse()
                        .map_err(|_| ApiError::bad_request("since is a seq or now"))?,
                }
            }
            "limit" => {
                r.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=limits.max_page).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be between 1 and {}",
                            limits.max_page
                        ))
                    })?
            }
            "include_docs" => r.include_docs = flag("include_docs", Some(v))?,
            "style" => {
                r.all_docs = match v.as_str() {
                    "all_docs" => true,
                    "main_only" => false,
                    _ => return Err(ApiError::bad_request("style is main_only or all_docs")),
                }
            }
            "filter" => {
                if r.filters.len() >= 64 {
                    return Err(ApiError::bad_request("at most 64 filters"));
                }
                let f = TopicFilter::parse(v)?;
                r.trie.insert(&f, ());
                r.filters.push(f);
            }
            "feed" => {
                r.feed = match v.as_str() {
                    "normal" => Feed::Normal,
                    "longpoll" => Feed::Longpoll,
                    "eventsource" => Feed::EventSource,
                    _ => {
                        return Err(ApiError::bad_request(
                            "feed is normal, longpoll or eventsource",
                        ))
                    }
                }
            }
            "timeout" => r.timeout = ms("timeout", v)?,
            "heartbeat" => {
                let d = if v == "true" {
                    Duration::from_millis(DEFAULT_TIMEOUT_MS)
                } else {
                    ms("heartbeat", v)?
                };
                r.heartbeat = Some(d.max(Duration::from_millis(100)));
            }
            _ => {}
        }
    }
    if r.feed == Feed::EventSource && !pairs.iter().any(|(k, _)| k == "timeout") {
        r.timeout = Duration::from_millis(limits.max_feed_timeout_ms);
    }
    Ok(r)
}

/// Reads up to `limit` matching rows after `since`; returns them and the seq to resume from.
fn collect(
    barrel: &BarrelHandle,
    r: &FeedRequest,
    since: u64,
    limit: usize,
) -> Result<(Vec<Value>, u64), ApiError> {
    let mut out = Vec::new();
    let mut cursor = since;
    let mut last = since;
    loop {
        let step = if r.filters.is_empty() {
            limit - out.len()
        } else {
            SCAN_STEP
        };
        let rows = barrel.changes(cursor, step)?;
        let done = rows.len() < step;
        for row in &rows {
            cursor = row.seq;
            if let Some(v) = render(barrel, r, row)? {
                out.push(v);
                last = row.seq;
                if out.len() == limit {
                    return Ok((out, last));
                }
            }
        }
        if done || rows.is_empty() {
            return Ok((out, last));
        }
    }
}

/// One row as JSON, or `None` when the filters reject it.
fn render(
    barrel: &BarrelHandle,
    r: &FeedRequest,
    row: &ChangeRow,
) -> Result<Option<Value>, ApiError> {
    let needs_doc = r.include_docs || !r.filters.is_empty();
    let doc = if needs_doc && !row.deleted {
        match barrel.get(
            &row.id,
            &GetOptions {
                rev: Some(row.rev),
                ..GetOptions::default()
            },
        ) {
            Ok(d) => Some(d),
            Err(cooper_actors::BarrelError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    if !r.filters.is_empty()
        && row
            .matching_topics(doc.as_ref().map(|d| &d.body), |t| r.trie.matches(t))
            .is_none()
    {
        return Ok(None);
    }
    let changes: Vec<Value> = if r.all_docs {
        row.leaves
            .iter()
            .map(|rev| json!({"rev": rev.to_string()}))
            .collect()
    } else {
        vec![json!({"rev": row.rev.to_string()})]
    };
    let mut v = json!({"seq": row.seq.to_string(), "id": row.id, "changes": changes});
    if row.deleted {
        v["deleted"] = Value::Bool(true);
    }
    if r.include_docs {
        v["doc"] = match &doc {
            Some(d) => d.to_json(),
            None => json!({"_id": row.id, "_rev": row.rev.to_string(), "_deleted": true}),
        };
    }
    Ok(Some(v))
}

/// `GET /barrels/{b}/changes`
pub async fn feed(
    req: HttpRequest,
    state: web::Data<AppState>,
    b: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    let r = parse(&pairs, &barrel, &state)?;
    match r.feed {
        Feed::Normal => {
            let (since, limit) = (r.since, r.limit);
            let (rows, last) = web::block(move || collect(&barrel, &r, since, limit))
                .await
                .map_err(|_| ApiError::internal("changes worker failed"))??;
            Ok(
                HttpResponse::Ok()
                    .json_line(json!({"results": rows, "last_seq": last.to_string()})),
            )
        }
        Feed::Longpoll => Ok(streaming(
            "application/json",
            longpoll(barrel, r, state.node.stopping()),
        )),
        Feed::EventSource => Ok(streaming(
            "text/event-stream",
            eventsource(barrel, r, state.node.stopping()),
        )),
    }
}

/// A response whose body a task writes through a bounded channel; the task stops when the
/// client goes away.
fn streaming<F>(
    content_type: &str,
    producer: impl FnOnce(mpsc::Sender<web::Bytes>) -> F,
) -> HttpResponse
where
    F: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel::<web::Bytes>(16);
    actix_rt::spawn(producer(tx));
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

/// A live feed's subscription: every change after `since` matching the request's filters
/// (all changes without filters), replayed then live, through the barrel's listener hub.
async fn subscribe(barrel: &BarrelHandle, r: &FeedRequest) -> Result<ChangeStream, ApiError> {
    let filters = if r.filters.is_empty() {
        vec![TopicFilter::parse("#")?]
    } else {
        r.filters.clone()
    };
    Ok(barrel
        .listen(filters, Since::Seq(r.since), r.include_docs)
        .await?)
}

/// A live item as a changes row (with every leaf for `style=all_docs`).
fn item_row(barrel: &BarrelHandle, r: &FeedRequest, item: &StreamItem) -> Value {
    let leaves = if r.all_docs {
        barrel.rev_tree(&item.id).ok().flatten().map(|t| {
            t.leaves()
                .into_iter()
                .map(|l| json!({"rev": l.rev.to_string()}))
                .collect::<Vec<_>>()
        })
    } else {
        None
    };
    let changes = leaves.unwrap_or_else(|| vec![json!({"rev": item.rev})]);
    let mut v = json!({"seq": item.seq.to_string(), "id": item.id, "changes": changes});
    if item.deleted {
        v["deleted"] = Value::Bool(true);
    }
    if let Some(doc) = &item.doc {
        v["doc"] = serde_json::from_str(doc).unwrap_or(Value::Null);
    }
    v
}

/// What a wait ended with.
enum Wake {
    Item(Result<StreamItem, Lagged>),
    Heartbeat,
    Timeout,
    Gone,
}

async fn wait(
    stream: &mut ChangeStream,
    tx: &mpsc::Sender<web::Bytes>,
    deadline: Instant,
    heartbeat: Option<Duration>,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Wake {
    let beat = async {
        match heartbeat {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        item = stream.next() => Wake::Item(item),
        _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
        _ = beat => Wake::Heartbeat,
        _ = tx.closed() => Wake::Gone,
        _ = stopping.wait_for(|s| *s) => Wake::Timeout,
    }
}

type Producer = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Longpoll: everything after `since` at once if there is something, else the first change
/// (and whatever is ready with it), else an empty answer after `timeout`.
fn longpoll(
    barrel: BarrelHandle,
    r: FeedRequest,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> impl FnOnce(mpsc::Sender<web::Bytes>) -> Producer {
    move |tx| {
        Box::pin(async move {
            let answer = match collect(&barrel, &r, r.since, r.limit) {
                Ok((rows, last)) if !rows.is_empty() => {
                    json!({"results": rows, "last_seq": last.to_string()})
                }
                Err(e) => json!({"error": e.kind, "reason": e.reason}),
                Ok(_) => match subscribe(&barrel, &r).await {
                    Err(e) => json!({"error": e.kind, "reason": e.reason}),
                    Ok(mut stream) => {
                        let deadline = Instant::now() + r.timeout;
                        let mut rows = Vec::new();
                        let mut last = r.since;
                        loop {
                            match wait(&mut stream, &tx, deadline, r.heartbeat, &mut stopping).await
                            {
                                Wake::Item(Ok(item)) => {
                                    last = item.seq;
                                    rows.push(item_row(&barrel, &r, &item));
                                    // Take what is ready with it, without waiting.
                                    while rows.len() < r.limit {
                                        match futures_util::FutureExt::now_or_never(stream.next()) {
                                            Some(Ok(item)) => {
                                                last = item.seq;
                                                rows.push(item_row(&barrel, &r, &item));
                                            }
                                            _ => break,
                                        }
                                    }
                                    break;
                                }
                                Wake::Item(Err(_)) | Wake::Timeout => break,
                                Wake::Heartbeat => {
                                    if tx.send(web::Bytes::from_static(b"\n")).await.is_err() {
                                        return;
                                    }
                                }
                                Wake::Gone => return,
                            }
                        }
                        json!({"results": rows, "last_seq": last.to_string()})
                    }
                },
            };
            let _ = tx.send(web::Bytes::from(format!("{answer}\n"))).await;
        })
    }
}

/// Eventsource: every change after `since` as `id:`/`data:` frames until `timeout` or the
/// client leaves; a subscription that lags ends the stream with an `error` event that says
/// where to resume (`Last-Event-ID` semantics: reconnect with `since`).
fn eventsource(
    barrel: BarrelHandle,
    r: FeedRequest,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> impl FnOnce(mpsc::Sender<web::Bytes>) -> Producer {
    move |tx| {
        Box::pin(async move {
            let mut stream = match subscribe(&barrel, &r).await {
                Ok(s) => s,
                Err(e) => {
                    let frame = format!(
                        "event: error\ndata: {}\n\n",
                        json!({"error": e.kind, "reason": e.reason})
                    );
                    let _ = tx.send(web::Bytes::from(frame)).await;
                    return;
                }
            };
            let deadline = Instant::now() + r.timeout;
            loop {
                match wait(&mut stream, &tx, deadline, r.heartbeat, &mut stopping).await {
                    Wake::Item(Ok(item)) => {
                        let frame = format!(
                            "id: {}\ndata: {}\n\n",
                            item.seq,
                            item_row(&barrel, &r, &item)
                        );
                        if tx.send(web::Bytes::from(frame)).await.is_err() {
                            return;
                        }
                    }
                    Wake::Item(Err(lag)) => {
                        let data =
                            json!({"error": "lagged", "resume_from": lag.resume_from.to_string()});
                        let _ = tx
                            .send(web::Bytes::from(format!("event: lagged\ndata: {data}\n\n")))
                            .await;
                        return;
                    }
                    Wake::Heartbeat => {
                        if tx
                            .send(web::Bytes::from_static(b": heartbeat\n\n"))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Wake::Timeout | Wake::Gone => return,
                }
            }
        })
    }
}
