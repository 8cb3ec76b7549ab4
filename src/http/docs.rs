//! Document routes: create, update, read, delete, `_bulk_docs`, attachments, local documents.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use cooper_actors::barrel::store::{GetOptions, OpenRev, OpenRevs, WriteOp};
use cooper_protocols::document::{self, IncomingDoc};
use cooper_protocols::ids::{validate_doc_id, Rev, LOCAL_PREFIX};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Map, Value};

use super::{parse_json, read_body, ApiError, AppState, JsonLine};

/// Query parameters of document writes.
#[derive(Debug, Deserialize)]
pub struct WriteParams {
    rev: Option<String>,
    new_edits: Option<String>,
}

/// Query parameters of document reads.
#[derive(Debug, Deserialize)]
pub struct ReadParams {
    rev: Option<String>,
    revs: Option<String>,
    conflicts: Option<String>,
    open_revs: Option<String>,
    latest: Option<String>,
}

/// Reads a boolean query parameter: `true` or `false`, anything else is a 400.
pub fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

/// The revision a write names, from `If-Match`, `?rev=` and the body's `_rev`; 400 when they
/// disagree.
fn named_rev(
    req: &HttpRequest,
    query: Option<&str>,
    body: Option<Rev>,
) -> Result<Option<Rev>, ApiError> {
    let header = req
        .headers()
        .get(header::IF_MATCH)
        .map(|v| v.to_str().map(|s| s.trim().trim_matches('"').to_owned()))
        .transpose()
        .map_err(|_| ApiError::bad_request("If-Match must be a revision"))?;
    let mut found = body;
    for given in [header.as_deref(), query].into_iter().flatten() {
        let rev = Rev::parse(given)?;
        if found.is_some_and(|f| f != rev) {
            return Err(ApiError::bad_request(
                "_rev, ?rev= and If-Match name different revisions",
            ));
        }
        found = Some(rev);
    }
    Ok(found)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    validate_doc_id(id)?;
    if id.starts_with(LOCAL_PREFIX) {
        return Err(ApiError::bad_request(
            "local documents live under /barrels/{b}/local/{id}",
        ));
    }
    Ok(())
}

fn written(status: actix_web::http::StatusCode, id: &str, rev: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::ETAG, format!("\"{rev}\"")))
        .json_line(json!({"ok": true, "id": id, "rev": rev}))
}

async fn read_doc(
    req: &HttpRequest,
    state: &AppState,
    payload: web::Payload,
) -> Result<IncomingDoc, ApiError> {
    let limits = &state.config.limits;
    let body = read_body(req, payload, limits.max_document_bytes).await?;
    let value = parse_json(req, &body, limits.max_document_bytes, limits.max_depth)?;
    Ok(document::split(value)?)
}

/// `POST /barrels/{b}/docs`
pub async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    b: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let doc = read_doc(&req, &state, payload).await?;
    if let Some(id) = &doc.id {
        check_id(id)?;
    }
    let r = barrel.write_one(WriteOp::Edit(doc)).await?;
    Ok(written(actix_web::http::StatusCode::CREATED, &r.id, &r.rev))
}

/// `PUT /barrels/{b}/docs/{id}`
pub async fn put(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    check_id(&id)?;
    let new_edits = !matches!(params.new_edits.as_deref(), Some("false"));
    if !matches!(params.new_edits.as_deref(), None | Some("true" | "false")) {
        return Err(ApiError::bad_request("new_edits must be true or false"));
    }
    let mut doc = read_doc(&req, &state, payload).await?;
    if doc.id.as_ref().is_some_and(|body_id| *body_id != id) {
        return Err(ApiError::bad_request(
            "_id in the body differs from the id in the URL",
        ));
    }
    doc.id = Some(id);
    doc.rev = named_rev(&req, params.rev.as_deref(), doc.rev)?;
    let op = if new_edits {
        WriteOp::Edit(doc)
    } else {
        WriteOp::Replicate(doc)
    };
    let r = barrel.write_one(op).await?;
    Ok(written(actix_web::http::StatusCode::CREATED, &r.id, &r.rev))
}

/// `GET /barrels/{b}/docs/{id}`
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    validate_doc_id(&id)?;
    let revs = flag("revs", params.revs.as_deref())?;
    flag("latest", params.latest.as_deref())?;
    if let Some(open) = params.open_revs.as_deref() {
        let which = if open == "all" {
            OpenRevs::All
        } else {
            let list: Vec<String> = serde_json::from_str(open).map_err(|_| {
                ApiError::bad_request("open_revs must be all or a JSON array of revisions")
            })?;
            OpenRevs::Revs(
                list.iter()
                    .map(|r| Rev::parse(r))
                    .collect::<Result<_, _>>()?,
            )
        };
        let found = barrel.open_revs(&id, &which)?;
        let out: Vec<Value> = found
            .into_iter()
            .map(|r| match r {
                OpenRev::Ok(d) => json!({"ok": d.to_json()}),
                OpenRev::Missing(rev) => json!({"missing": rev.to_string()}),
            })
            .collect();
        return Ok(HttpResponse::Ok().json_line(out));
    }
    let opts = GetOptions {
        rev: params.rev.as_deref().map(Rev::parse).transpose()?,
        revs,
        conflicts: flag("conflicts", params.conflicts.as_deref())?,
    };
    let doc = barrel.get(&id, &opts)?;
    let etag = format!("\"{}\"", doc.rev);
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == etag || v.trim() == "*");
    if unchanged {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag))
        .json_line(doc.to_json()))
}

/// `DELETE /barrels/{b}/docs/{id}`
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<WriteParams>,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    check_id(&id)?;
    let rev = named_rev(&req, params.rev.as_deref(), None)?.ok_or_else(|| {
        ApiError::conflict("deleting needs the current revision: ?rev= or If-Match")
    })?;
    let r = barrel.delete(&id, rev).await?;
    Ok(written(actix_web::http::StatusCode::OK, &r.id, &r.rev))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody<'a> {
    #[serde(borrow)]
    docs: Vec<&'a RawValue>,
    #[serde(default = "yes")]
    new_edits: bool,
}

fn yes() -> bool {
    true
}

/// Documents of a `_bulk_docs` request handed to the writer at a time.
const BULK_PART: usize = 250;

/// `POST /barrels/{b}/_bulk_docs`
pub async fn bulk(
    req: HttpRequest,
    state: web::Data<AppState>,
    b: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let limits = &state.config.limits;
    let body = read_body(&req, payload, limits.max_request_bytes).await?;
    super::check_json_content_type(&req)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "the body must be an object: {\"docs\": [...], \"new_edits\": true|false}",
        ));
    }
    let bulk: BulkBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"docs\": [...], \"new_edits\": true|false}}: {e}"
        ))
    })?;
    // Documents that fail to parse get their error in their slot; the rest are written, in
    // parts of BULK_PART handed to the writer as soon as each is parsed (the writer applies
    // one while the next is parsed; each write stands alone, as in CouchDB).
    let mut parts = Vec::new();
    let mut ops = Vec::with_capacity(bulk.docs.len().min(BULK_PART));
    let mut slots: Vec<(Option<String>, Option<ApiError>)> = Vec::with_capacity(bulk.docs.len());
    for raw in &bulk.docs {
        match parse_bulk_doc(
            raw,
            bulk.new_edits,
            limits.max_document_bytes,
            limits.max_depth,
        ) {
            Ok(op) => {
                let id = match &op {
                    WriteOp::Edit(d) | WriteOp::Replicate(d) => d.id.clone(),
                    _ => None,
                };
                ops.push(op);
                slots.push((id, None));
                if ops.len() == BULK_PART {
                    parts.push((BULK_PART, barrel.submit(std::mem::take(&mut ops))?));
                }
            }
            Err((id, e)) => slots.push((id, Some(e))),
        }
    }
    if !ops.is_empty() {
        parts.push((ops.len(), barrel.submit(ops)?));
    }
    let mut written = Vec::with_capacity(slots.len());
    for (n, part) in parts {
        match part.await {
            Ok(r) => written.extend(r),
            // A part that failed as a whole fails each of its documents.
            Err(e) => written.extend(std::iter::repeat_n(Err(e), n)),
        }
    }
    let mut results = written.into_iter();
    let out: Vec<Value> = slots
        .into_iter()
        .map(|(id, failed)| {
            let e = match failed {
                Some(e) => e,
                None => match results.next() {
                    Some(Ok(r)) => return json!({"ok": true, "id": r.id, "rev": r.rev}),
                    Some(Err(e)) => ApiError::from(e),
                    None => ApiError::internal("missing result"),
                },
            };
            json!({"id": id, "error": e.kind, "reason": e.reason})
        })
        .collect();
    Ok(HttpResponse::Created().json_line(out))
}

fn parse_bulk_doc(
    raw: &RawValue,
    new_edits: bool,
    max_bytes: usize,
    max_depth: usize,
) -> Result<WriteOp, (Option<String>, ApiError)> {
    let text = raw.get();
    // Inline attachment data (base64) is limited by the request size, not the document's.
    let attachment_bytes = if text.len() > max_bytes {
        inline_attachment_bytes(text)
    } else {
        0
    };
    if text.len() - attachment_bytes > max_bytes {
        return Err((
            None,
            ApiError::too_large(format!(
                "the document is {} bytes; the limit is {max_bytes}",
                text.len()
            )),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (None, ApiError::bad_request(format!("invalid JSON: {e}"))))?;
    let id = value.get("_id").and_then(Value::as_str).map(str::to_owned);
    let fail = |e: ApiError| (id.clone(), e);
    if document::depth(&value) > max_depth {
        return Err(fail(ApiError::bad_request(format!(
            "document nests deeper than {max_depth} levels"
        ))));
    }
    let doc = document::split(value).map_err(|e| fail(e.into()))?;
    if let Some(id) = &doc.id {
        check_id(id).map_err(fail)?;
    }
    Ok(if new_edits {
        WriteOp::Edit(doc)
    } else {
        WriteOp::Replicate(doc)
    })
}

/// Bytes of inline attachment `data` in a document's JSON.
fn inline_attachment_bytes(text: &str) -> usize {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return 0;
    };
    v.get("_attachments")
        .and_then(Value::as_object)
        .map_or(0, |atts| {
            atts.values()
                .filter_map(|a| a.get("data").and_then(Value::as_str))
                .map(str::len)
                .sum()
        })
}

fn check_attachment_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 1024 || name.starts_with('_') {
        return Err(ApiError::bad_request(
            "attachment names are 1 to 1024 bytes and must not start with '_'",
        ));
    }
    Ok(())
}

/// `PUT /barrels/{b}/docs/{id}/attachments/{name}`
pub async fn put_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (b, id, name) = path.into_inner();
    let barrel = state.barrel(&b)?;
    check_id(&id)?;
    check_attachment_name(&name)?;
    let rev = named_rev(&req, params.rev.as_deref(), None)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let data = read_body(&req, payload, state.config.limits.max_document_bytes)
        .await?
        .to_vec();
    let r = barrel
        .write_one(WriteOp::PutAttachment {
            id,
            rev,
            name,
            content_type,
            data,
        })
        .await?;
    Ok(written(actix_web::http::StatusCode::CREATED, &r.id, &r.rev))
}

/// `GET /barrels/{b}/docs/{id}/attachments/{name}`
pub async fn get_attachment(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (b, id, name) = path.into_inner();
    let barrel = state.barrel(&b)?;
    validate_doc_id(&id)?;
    let rev = params.rev.as_deref().map(Rev::parse).transpose()?;
    let (meta, data) = barrel.get_attachment(&id, &name, rev)?;
    Ok(HttpResponse::Ok()
        .content_type(meta.content_type.clone())
        .insert_header((header::ETAG, format!("\"{}\"", meta.digest())))
        .body(data))
}

/// `DELETE /barrels/{b}/docs/{id}/attachments/{name}`
pub async fn delete_attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    params: web::Query<WriteParams>,
) -> Result<HttpResponse, ApiError> {
    let (b, id, name) = path.into_inner();
    let barrel = state.barrel(&b)?;
    check_id(&id)?;
    let rev = named_rev(&req, params.rev.as_deref(), None)?
        .ok_or_else(|| ApiError::conflict("removing an attachment needs the current revision"))?;
    let r = barrel
        .write_one(WriteOp::DeleteAttachment { id, rev, name })
        .await?;
    Ok(written(actix_web::http::StatusCode::OK, &r.id, &r.rev))
}

fn local_id(id: &str) -> Result<String, ApiError> {
    let full = format!("{LOCAL_PREFIX}{id}");
    validate_doc_id(&full)?;
    Ok(full)
}

fn local_rev(given: Option<&str>) -> Result<Option<u64>, ApiError> {
    given
        .map(|r| {
            r.strip_prefix("0-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!("local revisions look like 0-N, not {r:?}"))
                })
        })
        .transpose()
}

/// `PUT /barrels/{b}/local/{id}`
pub async fn put_local(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<WriteParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    let full = local_id(&id)?;
    let limits = &state.config.limits;
    let body = read_body(&req, payload, limits.max_document_bytes).await?;
    let value = parse_json(&req, &body, limits.max_document_bytes, limits.max_depth)?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::bad_request("a document must be a JSON object"));
    };
    let body_rev = map.remove("_rev").map(|v| v.as_str().map(str::to_owned));
    let body_rev = match body_rev {
        Some(None) => return Err(ApiError::bad_request("_rev must be a string")),
        Some(Some(r)) => Some(r),
        None => None,
    };
    if map
        .get("_id")
        .is_some_and(|v| v.as_str() != Some(full.as_str()))
    {
        return Err(ApiError::bad_request(
            "_id in the body differs from the id in the URL",
        ));
    }
    map.retain(|k, _| !k.starts_with('_'));
    let rev = match (
        local_rev(body_rev.as_deref())?,
        local_rev(params.rev.as_deref())?,
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "_rev and ?rev= name different revisions",
            ))
        }
        (a, b) => a.or(b),
    };
    let r = barrel
        .write_one(WriteOp::PutLocal {
            id: full,
            rev,
            deleted: false,
            body: map,
        })
        .await?;
    Ok(written(actix_web::http::StatusCode::CREATED, &r.id, &r.rev))
}

/// `GET /barrels/{b}/local/{id}`
pub async fn get_local(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    let full = local_id(&id)?;
    let (body, n) = barrel.get_local(&full)?;
    let mut out = Map::with_capacity(body.len() + 2);
    out.insert("_id".into(), Value::String(full));
    out.insert("_rev".into(), Value::String(format!("0-{n}")));
    out.extend(body);
    Ok(HttpResponse::Ok().json_line(Value::Object(out)))
}

/// `DELETE /barrels/{b}/local/{id}`
pub async fn delete_local(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    params: web::Query<WriteParams>,
) -> Result<HttpResponse, ApiError> {
    let (b, id) = path.into_inner();
    let barrel = state.barrel(&b)?;
    let full = local_id(&id)?;
    let header = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_matches('"').to_owned());
    let rev = local_rev(params.rev.as_deref().or(header.as_deref()))?
        .ok_or_else(|| ApiError::conflict("deleting needs the current revision: ?rev=0-N"))?;
    let r = barrel
        .write_one(WriteOp::PutLocal {
            id: full,
            rev: Some(rev),
            deleted: true,
            body: Map::new(),
        })
        .await?;
    Ok(written(actix_web::http::StatusCode::OK, &r.id, &r.rev))
}
