//! The CouchDB-compatible API under `/couch` (DESIGN §6): enough of CouchDB's replication
//! protocol that PouchDB, pouchdb-server and CouchDB replicate with a node in both directions.
//! Documents are the same objects as in the native API; a database is a barrel.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cooper_actors::barrel::store::{DocRevision, GetOptions, OpenRev, OpenRevs};
use cooper_actors::listener::Since;
use cooper_actors::{BarrelError, BarrelHandle};
use cooper_protocols::ids::{validate_doc_id, BarrelName, Rev};
use cooper_protocols::topic::TopicFilter;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::http::docs::flag;
use crate::http::{read_body, ApiError, AppState, JsonLine};

/// The CouchDB version Cooper answers like.
pub const COUCH_VERSION: &str = "3.3.3";

fn barrel(state: &AppState, db: &str) -> Result<BarrelHandle, ApiError> {
    state.barrel(db).map_err(|e| {
        if e.kind == "not_found" {
            ApiError::not_found("Database does not exist.")
        } else {
            e
        }
    })
}

/// The document as CouchDB shows it; with `attachments`, attachment data inline (base64).
pub fn couch_doc(
    barrel: &BarrelHandle,
    doc: &DocRevision,
    attachments: bool,
) -> Result<Value, ApiError> {
    with_attachments(barrel, doc, doc.to_json(), attachments)
}

/// [`couch_doc`] of a revision the caller no longer needs (its body is moved, not copied).
pub fn couch_doc_owned(
    barrel: &BarrelHandle,
    mut doc: DocRevision,
    attachments: bool,
) -> Result<Value, ApiError> {
    let v = doc.take_json();
    with_attachments(barrel, &doc, v, attachments)
}

fn with_attachments(
    barrel: &BarrelHandle,
    doc: &DocRevision,
    mut v: Value,
    attachments: bool,
) -> Result<Value, ApiError> {
    if attachments && !doc.attachments.is_empty() {
        let mut atts = Map::new();
        for a in &doc.attachments {
            let (meta, data) = barrel.get_attachment(&doc.id, &a.name, Some(doc.rev))?;
            atts.insert(
                a.name.clone(),
                json!({"content_type": meta.content_type, "digest": meta.digest(), "length": meta.length,
                       "revpos": meta.revpos, "data": STANDARD.encode(data)}),
            );
        }
        v["_attachments"] = Value::Object(atts);
    }
    Ok(v)
}

/// `GET /couch/`
pub async fn root() -> HttpResponse {
    HttpResponse::Ok().json_line(json!({
        "couchdb": "Welcome",
        "version": COUCH_VERSION,
        "vendor": {"name": "Cooper", "version": env!("CARGO_PKG_VERSION")},
        "features": [],
    }))
}

fn db_info(b: &BarrelHandle) -> Result<Value, ApiError> {
    let c = b.counts()?;
    Ok(json!({
        "db_name": b.name().as_str(),
        "doc_count": c.doc_count,
        "doc_del_count": c.deleted_count,
        "update_seq": c.update_seq.to_string(),
        "committed_update_seq": c.update_seq.to_string(),
        "purge_seq": "0",
        "compact_running": false,
        "disk_size": c.size_bytes,
        "data_size": c.size_bytes,
        "sizes": {"file": c.size_bytes, "active": c.size_bytes, "external": c.size_bytes},
        "instance_start_time": "0",
        "disk_format_version": 8,
    }))
}

/// `GET|HEAD /couch/{db}`
pub async fn info(
    state: web::Data<AppState>,
    db: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = barrel(&state, &db)?;
    Ok(HttpResponse::Ok().json_line(db_info(&b)?))
}

/// `PUT /couch/{db}`
pub async fn create(
    state: web::Data<AppState>,
    db: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = BarrelName::new(&db)?;
    state.node.create_barrel(name.as_str()).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.kind == "file_exists" {
            ApiError {
                reason: "The database could not be created, the file already exists.".into(),
                ..e
            }
        } else {
            e
        }
    })?;
    Ok(HttpResponse::Created().json_line(json!({"ok": true})))
}

/// `DELETE /couch/{db}`
pub async fn delete(
    state: web::Data<AppState>,
    db: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = BarrelName::new(&db)?;
    barrel(&state, name.as_str())?;
    state.node.delete_barrel(name.as_str()).await?;
    Ok(HttpResponse::Ok().json_line(json!({"ok": true})))
}

/// `POST /couch/{db}/_ensure_full_commit`: every acknowledged write is already durable.
pub async fn ensure_full_commit(
    state: web::Data<AppState>,
    db: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &db)?;
    Ok(HttpResponse::Created().json_line(json!({"ok": true, "instance_start_time": "0"})))
}

/// `POST /couch/{db}/_revs_diff`
pub async fn revs_diff(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let b = barrel(&state, &db)?;
    let limits = &state.config.limits;
    let body = read_body(&req, payload, limits.max_request_bytes).await?;
    let asked: BTreeMap<String, Vec<String>> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("_revs_diff takes {{\"docid\": [\"rev\", …]}}: {e}"))
    })?;
    let mut parsed = BTreeMap::new();
    for (id, revs) in asked {
        validate_doc_id(&id)?;
        parsed.insert(
            id,
            revs.iter()
                .map(|r| Rev::parse(r))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    let diff = b.revs_diff(&parsed)?;
    let out: Map<String, Value> = diff
        .into_iter()
        .map(|(id, d)| {
            let mut v =
                json!({"missing": d.missing.iter().map(Rev::to_string).collect::<Vec<_>>()});
            if !d.possible_ancestors.is_empty() {
                v["possible_ancestors"] = json!(d
                    .possible_ancestors
                    .iter()
                    .map(Rev::to_string)
                    .collect::<Vec<_>>());
            }
            (id, v)
        })
        .collect();
    Ok(HttpResponse::Ok().json_line(Value::Object(out)))
}

/// Query parameters of document reads.
#[derive(Debug, Default, Deserialize)]
pub struct CouchReadParams {
    rev: Option<String>,
    revs: Option<String>,
    conflicts: Option<String>,
    open_revs: Option<String>,
    latest: Option<String>,
    attachments: Option<String>,
}

fn open_revs_json(
    b: &BarrelHandle,
    id: &str,
    which: &OpenRevs,
    attachments: bool,
) -> Result<Vec<Value>, ApiError> {
    b.open_revs(id, which)?
        .into_iter()
        .map(|r| match r {
            OpenRev::Ok(d) => Ok(json!({"ok": couch_doc(b, &d, attachments)?})),
            OpenRev::Missing(rev) => Ok(json!({"missing": rev.to_string()})),
        })
        .collect()
}

/// `POST /couch/{db}/_bulk_get`
pub async fn bulk_get(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    params: web::Query<CouchReadParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    struct Asked {
        id: String,
        rev: Option<String>,
    }
    #[derive(Deserialize)]
    struct Body {
        docs: Vec<Asked>,
    }
    let b = barrel(&state, &db)?;
    let body = read_body(&req, payload, state.config.limits.max_request_bytes).await?;
    let asked: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "_bulk_get takes {{\"docs\": [{{\"id\", \"rev\"}}, …]}}: {e}"
        ))
    })?;
    let attachments = flag("attachments", params.attachments.as_deref())?;
    let latest = flag("latest", params.latest.as_deref())?;
    // Check every request first, then read all the valid ones on one read transaction.
    let checked: Vec<(Asked, Result<OpenRevs, String>)> = asked
        .docs
        .into_iter()
        .map(|a| {
            let which = match (
                validate_doc_id(&a.id),
                a.rev.as_deref().map(Rev::parse).transpose(),
            ) {
                (Err(e), _) => Err(e.to_string()),
                (_, Err(e)) => Err(e.to_string()),
                (Ok(()), Ok(None)) => Ok(OpenRevs::All),
                (Ok(()), Ok(Some(r))) if latest => Ok(OpenRevs::Latest(vec![r])),
                (Ok(()), Ok(Some(r))) => Ok(OpenRevs::Revs(vec![r])),
            };
            (a, which)
        })
        .collect();
    let reads: Vec<(&str, &OpenRevs)> = checked
        .iter()
        .filter_map(|(a, w)| w.as_ref().ok().map(|w| (a.id.as_str(), w)))
        .collect();
    let mut found = b.open_revs_many(&reads)?.into_iter();
    // Serialized straight from these (no JSON tree of the whole answer); each document's
    // body is moved into its JSON, not copied.
    #[derive(Serialize)]
    struct Found {
        id: String,
        docs: Vec<Item>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Item {
        Ok { ok: Value },
        Error { error: Value },
    }
    let mut results = Vec::with_capacity(checked.len());
    for (a, which) in checked {
        let error = |rev: Option<&str>, e: &str, reason: &str| Item::Error {
            error: json!({"id": a.id, "rev": rev.unwrap_or("undefined"), "error": e, "reason": reason}),
        };
        let docs = match which {
            Err(reason) => vec![error(a.rev.as_deref(), "bad_request", &reason)],
            Ok(_) => match found.next().ok_or_else(|| {
                ApiError::from(BarrelError::Storage("_bulk_get lost a read".into()))
            })? {
                Err(BarrelError::NotFound(_)) => {
                    vec![error(a.rev.as_deref(), "not_found", "missing")]
                }
                Err(e) => return Err(e.into()),
                Ok(found) => found
                    .into_iter()
                    .map(|r| match r {
                        OpenRev::Ok(d) => Ok(Item::Ok {
                            ok: couch_doc_owned(&b, d, attachments)?,
                        }),
                        OpenRev::Missing(rev) => {
                            Ok(error(Some(&rev.to_string()), "not_found", "missing"))
                        }
                    })
                    .collect::<Result<_, ApiError>>()?,
            },
        };
        results.push(Found { id: a.id, docs });
    }
    #[derive(Serialize)]
    struct Answer {
        results: Vec<Found>,
    }
    Ok(HttpResponse::Ok().json_line(Answer { results }))
}

/// `POST /couch/{db}/_bulk_docs`
pub async fn bulk_docs(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The same rules as the native route; only the database lookup differs.
    barrel(&state, &db)?;
    crate::http::docs::bulk(req, state, db, payload).await
}

/// Query parameters of `_all_docs`.
#[derive(Debug, Deserialize)]
pub struct AllDocsParams {
    include_docs: Option<String>,
    descending: Option<String>,
    startkey: Option<String>,
    start_key: Option<String>,
    endkey: Option<String>,
    end_key: Option<String>,
    inclusive_end: Option<String>,
    limit: Option<String>,
    skip: Option<String>,
    keys: Option<String>,
    key: Option<String>,
    attachments: Option<String>,
    conflicts: Option<String>,
}

fn json_param(name: &str, v: Option<&str>) -> Result<Option<Value>, ApiError> {
    v.map(|s| {
        serde_json::from_str(s).map_err(|_| ApiError::bad_request(format!("{name} must be JSON")))
    })
    .transpose()
}

fn all_docs_rows(
    b: &BarrelHandle,
    p: &AllDocsParams,
    keys: Option<Vec<String>>,
    max_page: usize,
) -> Result<Value, ApiError> {
    let include_docs = flag("include_docs", p.include_docs.as_deref())?;
    let attachments = flag("attachments", p.attachments.as_deref())?;
    let conflicts = flag("conflicts", p.conflicts.as_deref())?;
    let descending = flag("descending", p.descending.as_deref())?;
    let inclusive_end = !matches!(p.inclusive_end.as_deref(), Some("false"));
    let num = |name: &str, v: Option<&str>, default: usize| -> Result<usize, ApiError> {
        v.map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("{name} must be a number")))
        })
    };
    let limit = num("limit", p.limit.as_deref(), max_page)?.min(max_page);
    let skip = num("skip", p.skip.as_deref(), 0)?;
    let total = b.counts()?.doc_count;
    let doc_for = |id: &str, rev: Rev| -> Result<Value, ApiError> {
        let d = b.get(
            id,
            &GetOptions {
                rev: Some(rev),
                conflicts,
                ..GetOptions::default()
            },
        )?;
        couch_doc(b, &d, attachments)
    };
    let mut rows = Vec::new();
    let keys = match (keys, json_param("key", p.key.as_deref())?) {
        (Some(k), _) => Some(k),
        (None, Some(Value::String(k))) => Some(vec![k]),
        (None, _) => None,
    };
    if let Some(keys) = keys {
        for key in keys.into_iter().skip(skip).take(limit) {
            match b.rev_tree(&key)?.and_then(|t| t.winner()) {
                None => rows.push(json!({"key": key, "error": "not_found"})),
                Some(w) if w.deleted => {
                    rows.push(json!({"id": key, "key": key, "value": {"rev": w.rev.to_string(), "deleted": true}, "doc": null}))
                }
                Some(w) => {
                    let mut row = json!({"id": key, "key": key, "value": {"rev": w.rev.to_string()}});
                    if include_docs {
                        row["doc"] = doc_for(&key, w.rev)?;
                    }
                    rows.push(row);
                }
            }
        }
    } else {
        let text =
            |a: Option<&str>, b: Option<&str>, name: &str| -> Result<Option<String>, ApiError> {
                match json_param(name, a.or(b))? {
                    None => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => Err(ApiError::bad_request(format!(
                        "{name} must be a JSON string"
                    ))),
                }
            };
        let start = text(p.startkey.as_deref(), p.start_key.as_deref(), "startkey")?;
        let end = text(p.endkey.as_deref(), p.end_key.as_deref(), "endkey")?;
        for r in b.all_docs(
            start.as_deref(),
            end.as_deref(),
            inclusive_end,
            descending,
            skip,
            limit,
        )? {
            let mut row = json!({"id": r.id, "key": r.id, "value": {"rev": r.rev.to_string()}});
            if include_docs {
                row["doc"] = doc_for(&r.id, r.rev)?;
            }
            rows.push(row);
        }
    }
    Ok(json!({"total_rows": total, "offset": skip, "rows": rows}))
}

/// `GET /couch/{db}/_all_docs`
pub async fn all_docs(
    state: web::Data<AppState>,
    db: web::Path<String>,
    params: web::Query<AllDocsParams>,
) -> Result<HttpResponse, ApiError> {
    let b = barrel(&state, &db)?;
    let keys = match json_param("keys", params.keys.as_deref())? {
        None => None,
        Some(v) => Some(
            serde_json::from_value(v)
                .map_err(|_| ApiError::bad_request("keys must be a JSON array of ids"))?,
        ),
    };
    let max = state.config.limits.max_page;
    let out = web::block(move || all_docs_rows(&b, &params, keys, max))
        .await
        .map_err(|_| ApiError::internal("worker failed"))??;
    Ok(HttpResponse::Ok().json_line(out))
}

/// `POST /couch/{db}/_all_docs` with `{"keys": [...]}`
pub async fn all_docs_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    params: web::Query<AllDocsParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let b = barrel(&state, &db)?;
    let body = read_body(&req, payload, state.config.limits.max_request_bytes).await?;
    #[derive(Deserialize)]
    struct Keys {
        keys: Vec<String>,
    }
    let keys: Keys = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("_all_docs takes {{\"keys\": [...]}}: {e}")))?;
    let max = state.config.limits.max_page;
    let out = web::block(move || all_docs_rows(&b, &params, Some(keys.keys), max))
        .await
        .map_err(|_| ApiError::internal("worker failed"))??;
    Ok(HttpResponse::Ok().json_line(out))
}

/// Query parameters of `_changes`.
#[derive(Debug, Deserialize)]
pub struct ChangesParams {
    since: Option<String>,
    limit: Option<String>,
    feed: Option<String>,
    style: Option<String>,
    include_docs: Option<String>,
    heartbeat: Option<String>,
    timeout: Option<String>,
    filter: Option<String>,
    doc_ids: Option<String>,
    descending: Option<String>,
    attachments: Option<String>,
    conflicts: Option<String>,
}

/// What a `_changes` request asks for.
#[derive(Clone)]
struct Changes {
    since: u64,
    limit: usize,
    all_docs: bool,
    include_docs: bool,
    attachments: bool,
    doc_ids: Option<std::collections::HashSet<String>>,
    heartbeat: Option<Duration>,
    timeout: Duration,
}

fn changes_request(
    b: &BarrelHandle,
    p: &ChangesParams,
    body_ids: Option<Vec<String>>,
    state: &AppState,
) -> Result<Changes, ApiError> {
    let limits = &state.config.limits;
    let since = match p.since.as_deref() {
        None => 0,
        Some("now") => b.counts()?.update_seq,
        // CouchDB seqs are opaque; ours are numbers, possibly with a `-suffix` a client copied.
        Some(s) => s
            .split('-')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .parse()
            .map_err(|_| ApiError::bad_request("since must be a seq or now"))?,
    };
    let limit = match p.limit.as_deref() {
        None => limits.max_page,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("limit must be a number"))?
            .clamp(1, limits.max_page),
    };
    let ms = |name: &str, v: &str| -> Result<Duration, ApiError> {
        v.parse::<u64>()
            .map(|n| Duration::from_millis(n.min(limits.max_feed_timeout_ms)))
            .map_err(|_| ApiError::bad_request(format!("{name} is a number of milliseconds")))
    };
    let heartbeat = match p.heartbeat.as_deref() {
        None | Some("false") => None,
        Some("true") => Some(Duration::from_secs(60)),
        Some(v) => Some(ms("heartbeat", v)?.max(Duration::from_millis(100))),
    };
    let timeout = match p.timeout.as_deref() {
        None => Duration::from_millis(60_000.min(limits.max_feed_timeout_ms)),
        Some(v) => ms("timeout", v)?,
    };
    if flag("descending", p.descending.as_deref())? {
        return Err(ApiError::bad_request(
            "descending changes are not supported",
        ));
    }
    let doc_ids = match (p.filter.as_deref(), body_ids, json_param("doc_ids", p.doc_ids.as_deref())?) {
        (Some("_doc_ids"), Some(ids), _) => Some(ids.into_iter().collect()),
        (Some("_doc_ids"), None, Some(v)) => Some(serde_json::from_value::<Vec<String>>(v).map_err(|_| ApiError::bad_request("doc_ids must be an array of ids"))?.into_iter().collect()),
        (Some("_doc_ids"), None, None) => return Err(ApiError::bad_request("filter=_doc_ids needs doc_ids")),
        (Some(other), _, _) => return Err(ApiError::bad_request(format!("filter {other:?} is not supported; use _doc_ids, or topic filters on /barrels/{{b}}/changes"))),
        (None, _, _) => None,
    };
    flag("conflicts", p.conflicts.as_deref())?;
    Ok(Changes {
        since,
        limit,
        all_docs: p.style.as_deref() == Some("all_docs"),
        include_docs: flag("include_docs", p.include_docs.as_deref())?,
        attachments: flag("attachments", p.attachments.as_deref())?,
        doc_ids,
        heartbeat,
        timeout,
    })
}

/// Rows after `since` (at most `limit`) and the seq to resume from.
fn change_rows(b: &BarrelHandle, c: &Changes, since: u64) -> Result<(Vec<Value>, u64), ApiError> {
    let mut out = Vec::new();
    let mut cursor = since;
    loop {
        let rows = b.changes(cursor, 500)?;
        let done = rows.len() < 500;
        for row in rows {
            cursor = row.seq;
            if c.doc_ids.as_ref().is_some_and(|ids| !ids.contains(&row.id)) {
                continue;
            }
            let changes: Vec<Value> = if c.all_docs {
                row.leaves
                    .iter()
                    .map(|r| json!({"rev": r.to_string()}))
                    .collect()
            } else {
                vec![json!({"rev": row.rev.to_string()})]
            };
            let mut v = json!({"seq": row.seq.to_string(), "id": row.id, "changes": changes});
            if row.deleted {
                v["deleted"] = Value::Bool(true);
            }
            if c.include_docs {
                let d = b.get(
                    &row.id,
                    &GetOptions {
                        rev: Some(row.rev),
                        ..GetOptions::default()
                    },
                )?;
                v["doc"] = couch_doc(b, &d, c.attachments)?;
            }
            out.push(v);
            if out.len() == c.limit {
                return Ok((out, cursor));
            }
        }
        if done {
            return Ok((out, cursor));
        }
    }
}

/// `GET|POST /couch/{db}/_changes`: `feed=normal|longpoll|continuous`.
pub async fn changes(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    params: web::Query<ChangesParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let b = barrel(&state, &db)?;
    let body_ids = if req.method() == actix_web::http::Method::POST {
        let body = read_body(&req, payload, state.config.limits.max_request_bytes).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            #[derive(Deserialize)]
            struct Ids {
                doc_ids: Option<Vec<String>>,
            }
            let ids: Ids = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
            ids.doc_ids
        }
    } else {
        None
    };
    let c = changes_request(&b, &params, body_ids, &state)?;
    let stopping = state.node.stopping();
    match params.feed.as_deref().unwrap_or("normal") {
        "normal" => {
            let since = c.since;
            let (rows, last) = web::block(move || change_rows(&b, &c, since))
                .await
                .map_err(|_| ApiError::internal("worker failed"))??;
            Ok(HttpResponse::Ok().json_line(
                json!({"results": rows, "last_seq": last.max(since).to_string(), "pending": 0}),
            ))
        }
        "longpoll" => Ok(stream_response("application/json", move |tx| {
            live(b, c, tx, false, stopping)
        })),
        "continuous" => Ok(stream_response("application/json", move |tx| {
            live(b, c, tx, true, stopping)
        })),
        other => Err(ApiError::bad_request(format!(
            "feed {other:?}: use normal, longpoll or continuous"
        ))),
    }
}

fn stream_response<F, Fut>(content_type: &str, producer: F) -> HttpResponse
where
    F: FnOnce(mpsc::Sender<web::Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel::<web::Bytes>(16);
    actix_rt::spawn(producer(tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    HttpResponse::Ok()
        .content_type(content_type)
        .streaming(body)
}

/// Longpoll (one answer, as soon as there is a change) and continuous (one line per change,
/// until `timeout` without changes or the client leaves) feeds, woken by the listener hub.
async fn live(
    b: BarrelHandle,
    c: Changes,
    tx: mpsc::Sender<web::Bytes>,
    continuous: bool,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let send = |tx: &mpsc::Sender<web::Bytes>, s: String| {
        let tx = tx.clone();
        async move { tx.send(web::Bytes::from(s)).await.is_ok() }
    };
    // Subscribe before reading, so a change committed in between wakes us.
    let hash = match TopicFilter::parse("#") {
        Ok(f) => f,
        Err(_) => return,
    };
    let mut stream = match b.listen(vec![hash], Since::Now, false).await {
        Ok(s) => s,
        Err(e) => {
            let _ = send(
                &tx,
                format!(
                    "{}\n",
                    json!({"error": ApiError::from(e).kind, "reason": "cannot follow changes"})
                ),
            )
            .await;
            return;
        }
    };
    let mut since = c.since;
    let mut sent = 0usize;
    let mut deadline = tokio::time::Instant::now() + c.timeout;
    loop {
        let (rows, last) = match change_rows(
            &b,
            &Changes {
                limit: c.limit - sent,
                ..c.clone()
            },
            since,
        ) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(
                    &tx,
                    format!("{}\n", json!({"error": e.kind, "reason": e.reason})),
                )
                .await;
                return;
            }
        };
        since = last.max(since);
        if !rows.is_empty() {
            if continuous {
                for row in &rows {
                    if !send(&tx, format!("{row}\n")).await {
                        return;
                    }
                }
                sent += rows.len();
                deadline = tokio::time::Instant::now() + c.timeout;
                if sent >= c.limit {
                    let _ =
                        send(&tx, format!("{}\n", json!({"last_seq": since.to_string()}))).await;
                    return;
                }
            } else {
                let _ = send(
                    &tx,
                    format!(
                        "{}\n",
                        json!({"results": rows, "last_seq": since.to_string(), "pending": 0})
                    ),
                )
                .await;
                return;
            }
        }
        // Wait for the next commit, a heartbeat, the timeout or the client leaving.
        loop {
            let beat = async {
                match c.heartbeat {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = stream.next() => {
                    if item.is_err() {
                        // The hub dropped us; re-read from the feed, then follow again.
                        match b.listen(vec![TopicFilter::parse("#").expect("valid")], Since::Now, false).await {
                            Ok(s) => stream = s,
                            Err(_) => return,
                        }
                    }
                    break;
                }
                _ = beat => {
                    if !send(&tx, "\n".to_owned()).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let end = if continuous {
                        json!({"last_seq": since.to_string()})
                    } else {
                        json!({"results": [], "last_seq": since.to_string(), "pending": 0})
                    };
                    let _ = send(&tx, format!("{end}\n")).await;
                    return;
                }
                _ = tx.closed() => return,
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }
}

/// `GET /couch/{db}/{docid}`: `rev`, `revs`, `conflicts`, `open_revs`, `latest`, `attachments`.
pub async fn get_doc(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<CouchReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (db, id) = path.into_inner();
    let b = barrel(&state, &db)?;
    validate_doc_id(&id)?;
    let attachments = flag("attachments", params.attachments.as_deref())?;
    let latest = flag("latest", params.latest.as_deref())?;
    if let Some(open) = params.open_revs.as_deref() {
        let which = if open == "all" {
            OpenRevs::All
        } else {
            let list: Vec<String> = serde_json::from_str(open).map_err(|_| {
                ApiError::bad_request("open_revs must be all or a JSON array of revisions")
            })?;
            let revs = list
                .iter()
                .map(|r| Rev::parse(r))
                .collect::<Result<Vec<_>, _>>()?;
            if latest {
                OpenRevs::Latest(revs)
            } else {
                OpenRevs::Revs(revs)
            }
        };
        return Ok(HttpResponse::Ok().json_line(open_revs_json(&b, &id, &which, attachments)?));
    }
    let opts = GetOptions {
        rev: params.rev.as_deref().map(Rev::parse).transpose()?,
        revs: flag("revs", params.revs.as_deref())?,
        conflicts: flag("conflicts", params.conflicts.as_deref())?,
    };
    let doc = b.get(&id, &opts)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", doc.rev)))
        .json_line(couch_doc(&b, &doc, attachments)?))
}

/// `PUT /couch/{db}/{docid}` (`?new_edits=false` for replicated revisions)
pub async fn put_doc(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::put(req, state, path, params, payload).await
}

/// `POST /couch/{db}`: a new document, its id generated when `_id` is missing.
pub async fn post_doc(
    req: HttpRequest,
    state: web::Data<AppState>,
    db: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &db)?;
    crate::http::docs::post(req, state, db, payload).await
}

/// `DELETE /couch/{db}/{docid}?rev=`
pub async fn delete_doc(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::delete(req, state, path, params).await
}

/// `GET /couch/{db}/_local/{id}`
pub async fn get_local(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::get_local(state, path).await
}

/// `PUT /couch/{db}/_local/{id}`
pub async fn put_local(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::put_local(req, state, path, params, payload).await
}

/// `DELETE /couch/{db}/_local/{id}`
pub async fn delete_local(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::delete_local(req, state, path, params).await
}

/// `GET /couch/{db}/{docid}/{name}`
pub async fn get_attachment(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<crate::http::docs::ReadParams>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::get_attachment(state, path, params).await
}

/// `PUT /couch/{db}/{docid}/{name}`
pub async fn put_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::put_attachment(req, state, path, params, payload).await
}

/// `DELETE /couch/{db}/{docid}/{name}`
pub async fn delete_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<crate::http::docs::WriteParams>,
) -> Result<HttpResponse, ApiError> {
    barrel(&state, &path.0)?;
    crate::http::docs::delete_attachment(req, state, path, params).await
}
