//! The HTTP interface (DESIGN §6): the native REST API over actix-web.
//!
//! Every route is declared once, in the [`routes!`] table below, which both registers it with
//! actix-web and describes it in `/openapi.json` — the description cannot drift from the
//! routes. Errors become statuses in exactly one place, [`error`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpServer};
use cooper_actors::BarrelHandle;
use cooper_protocols::ids::BarrelName;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;

use crate::config::Config;
use crate::node::Node;

pub mod auth;
mod barrels;
mod changes;
pub mod docs;
pub mod error;
mod info;
mod listen;
pub mod openapi;
mod query;
mod replicate;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node.
    pub node: Node,
    /// The node's configuration.
    pub config: Arc<Config>,
    /// Credentials and their rights.
    pub auth: Arc<auth::Auth>,
    /// When the node started.
    pub started: Instant,
}

impl AppState {
    /// The barrel named in a URL: 400 for an invalid name, 404 for a missing barrel.
    pub fn barrel(&self, name: &str) -> Result<BarrelHandle, ApiError> {
        let name = BarrelName::new(name)?;
        Ok(self.node.open_barrel(&name)?)
    }
}

/// JSON answers end with a newline, as CouchDB's do, so `curl` output reads well.
pub trait JsonLine {
    /// Answers `value` as JSON followed by `\n`.
    fn json_line(&mut self, value: impl serde::Serialize) -> actix_web::HttpResponse;
}

impl JsonLine for actix_web::HttpResponseBuilder {
    fn json_line(&mut self, value: impl serde::Serialize) -> actix_web::HttpResponse {
        match serde_json::to_vec(&value) {
            Ok(mut body) => {
                body.push(b'\n');
                self.content_type("application/json").body(body)
            }
            Err(e) => actix_web::HttpResponse::InternalServerError().body(e.to_string()),
        }
    }
}

/// One documented route of the API.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// actix-web path pattern (`/barrels/{b}`).
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Query parameters it reads: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Statuses it answers.
    pub responses: &'static [u16],
}

/// Declares every route once: registered with actix-web and listed in [`ROUTES`].
macro_rules! routes {
    ($(
        $method:ident $path:literal => $handler:path,
        $summary:literal,
        query [$(($qn:literal, $qd:literal)),* $(,)?],
        responses [$($code:literal),* $(,)?];
    )*) => {
        fn register(cfg: &mut web::ServiceConfig) {
            $( cfg.route($path, web::$method().to($handler)); )*
        }

        /// Every route of the API, as `/openapi.json` describes it.
        pub const ROUTES: &[RouteDoc] = &[$(
            RouteDoc {
                method: stringify!($method),
                path: $path,
                summary: $summary,
                query: &[$(($qn, $qd)),*],
                responses: &[$($code),*],
            }
        ),*];
    };
}

routes! {
    get "/" => info::root, "Node information: name, version, uptime.", query [], responses [200];
    get "/health" => info::health, "Liveness: 200 while the node serves.", query [], responses [200];
    get "/metrics" => info::metrics, "Prometheus metrics: requests and latency per route, documents written, commit batch sizes and times.", query [], responses [200, 401, 403];
    get "/status" => info::status, "Cluster table: text for curl, JSON with Accept: application/json. A standalone node lists itself as master.", query [], responses [200, 401];
    get "/openapi.json" => openapi::serve, "This description.", query [], responses [200];
    get "/barrels" => barrels::list, "Names of all barrels.", query [], responses [200, 401];
    put "/barrels/{b}" => barrels::create, "Creates a barrel.", query [], responses [201, 400, 401, 403, 412];
    post "/barrels/{b}" => barrels::create, "Creates a barrel.", query [], responses [201, 400, 401, 403, 412];
    get "/barrels/{b}" => barrels::info, "Barrel information: doc_count, deleted_count, update_seq, size_bytes.", query [], responses [200, 400, 404];
    delete "/barrels/{b}" => barrels::delete, "Deletes a barrel and its file.", query [], responses [200, 400, 401, 403, 404];
    post "/barrels/{b}/docs" => docs::post, "Creates a document; the id is generated when _id is missing.", query [], responses [201, 400, 404, 409, 413, 415];
    get "/barrels/{b}/docs" => query::run, "Queries documents by JSON paths: ?address/city=eq.Paris&age=gte.18&tags/*=eq.x&order=age.desc&limit=50&cursor=...",
        query [("order", "path.asc or path.desc"), ("limit", "page size, default 100"), ("cursor", "the next value of the previous page"), ("explain", "true: answer how the query runs instead"), ("<path>", "a condition: eq. ne. gt. gte. lt. lte. in.(a,b) prefix. exists.true|false followed by the value")],
        responses [200, 400, 404];
    put "/barrels/{b}/docs/{id}" => docs::put, "Creates or updates a document (_rev in the body, ?rev= or If-Match).",
        query [("rev", "the revision being updated"), ("new_edits", "false: store the given _rev and _revisions as they are (replication)")],
        responses [201, 400, 404, 409, 413, 415];
    get "/barrels/{b}/docs/{id}" => docs::get, "Reads a document: its winner, or a given revision.",
        query [("rev", "a given revision"), ("revs", "true: include _revisions"), ("conflicts", "true: include _conflicts"), ("open_revs", "all, or a JSON array of revisions: every leaf asked for")],
        responses [200, 304, 400, 404];
    head "/barrels/{b}/docs/{id}" => docs::get, "Whether a document exists: the status and ETag of GET, without the body.", query [("rev", "a given revision")], responses [200, 304, 404];
    delete "/barrels/{b}/docs/{id}" => docs::delete, "Deletes a document (writes a tombstone); needs ?rev= or If-Match.", query [("rev", "the current revision")], responses [200, 400, 404, 409];
    post "/barrels/{b}/_bulk_docs" => docs::bulk, "Writes many documents: {\"docs\": [...], \"new_edits\": true|false}; one result per document.", query [], responses [201, 400, 404, 413, 415];
    get "/barrels/{b}/changes" => changes::feed, "The changes feed: each document once, at its latest seq.",
        query [("since", "a seq, or now"), ("limit", "most rows"), ("include_docs", "true: include each winner"), ("filter", "a topic filter (repeatable)"), ("feed", "normal, longpoll or eventsource"), ("timeout", "longpoll/eventsource: milliseconds to wait"), ("heartbeat", "milliseconds between keep-alive newlines")],
        responses [200, 400, 404];
    get "/couch" => crate::couch::root, "CouchDB-compatible API: welcome.", query [], responses [200];
    get "/couch/{db}/_changes" => crate::couch::changes, "CouchDB _changes: feed=normal|longpoll|continuous, style=all_docs, since, limit, include_docs, heartbeat, timeout, filter=_doc_ids.",
        query [("since", "a seq or now"), ("feed", "normal, longpoll or continuous"), ("style", "all_docs: every leaf"), ("limit", "most rows"), ("include_docs", "true"), ("heartbeat", "ms"), ("timeout", "ms")], responses [200, 400, 404];
    post "/couch/{db}/_changes" => crate::couch::changes, "CouchDB _changes with a body {\"doc_ids\": [...]} for filter=_doc_ids.", query [], responses [200, 400, 404];
    post "/couch/{db}/_revs_diff" => crate::couch::revs_diff, "CouchDB _revs_diff: which of these revisions are missing.", query [], responses [200, 400, 404];
    post "/couch/{db}/_bulk_get" => crate::couch::bulk_get, "CouchDB _bulk_get: revisions with their history (revs=true), attachments inline (attachments=true), latest=true.", query [("revs", "true"), ("attachments", "true"), ("latest", "true")], responses [200, 400, 404];
    post "/couch/{db}/_bulk_docs" => crate::couch::bulk_docs, "CouchDB _bulk_docs, new_edits true or false.", query [], responses [201, 400, 404, 413, 415];
    get "/couch/{db}/_all_docs" => crate::couch::all_docs, "CouchDB _all_docs: startkey, endkey, keys, limit, skip, descending, include_docs.", query [("include_docs", "true"), ("startkey", "JSON"), ("endkey", "JSON"), ("keys", "JSON array"), ("limit", "n"), ("skip", "n"), ("descending", "true")], responses [200, 400, 404];
    post "/couch/{db}/_all_docs" => crate::couch::all_docs_post, "CouchDB _all_docs with {\"keys\": [...]}.", query [], responses [200, 400, 404];
    post "/couch/{db}/_ensure_full_commit" => crate::couch::ensure_full_commit, "CouchDB _ensure_full_commit: writes are durable when acknowledged.", query [], responses [201, 404];
    get "/couch/{db}/_local/{id}" => crate::couch::get_local, "A local document (replication checkpoints).", query [], responses [200, 404];
    put "/couch/{db}/_local/{id}" => crate::couch::put_local, "Writes a local document.", query [], responses [201, 400, 404, 409];
    delete "/couch/{db}/_local/{id}" => crate::couch::delete_local, "Deletes a local document.", query [("rev", "0-N")], responses [200, 404, 409];
    get "/couch/{db}" => crate::couch::info, "CouchDB database info.", query [], responses [200, 404];
    head "/couch/{db}" => crate::couch::info, "Whether the database exists.", query [], responses [200, 404];
    put "/couch/{db}" => crate::couch::create, "Creates a database (a barrel).", query [], responses [201, 400, 412];
    delete "/couch/{db}" => crate::couch::delete, "Deletes a database.", query [], responses [200, 404];
    post "/couch/{db}" => crate::couch::post_doc, "Creates a document.", query [], responses [201, 400, 404, 409];
    get "/couch/{db}/{docid}" => crate::couch::get_doc, "A document: rev, revs, conflicts, open_revs (JSON), latest, attachments.",
        query [("rev", "a revision"), ("revs", "true"), ("conflicts", "true"), ("open_revs", "all or a JSON array"), ("latest", "true"), ("attachments", "true: inline data")], responses [200, 400, 404];
    head "/couch/{db}/{docid}" => crate::couch::get_doc, "Whether a document exists.", query [], responses [200, 404];
    put "/couch/{db}/{docid}" => crate::couch::put_doc, "Writes a document (new_edits=false for replicated revisions).", query [("rev", "current revision"), ("new_edits", "false")], responses [201, 400, 404, 409];
    delete "/couch/{db}/{docid}" => crate::couch::delete_doc, "Deletes a document.", query [("rev", "current revision")], responses [200, 404, 409];
    get "/couch/{db}/{docid}/{name}" => crate::couch::get_attachment, "An attachment.", query [("rev", "a revision")], responses [200, 404];
    put "/couch/{db}/{docid}/{name}" => crate::couch::put_attachment, "Adds an attachment.", query [("rev", "current revision")], responses [201, 404, 409];
    delete "/couch/{db}/{docid}/{name}" => crate::couch::delete_attachment, "Removes an attachment.", query [("rev", "current revision")], responses [200, 404, 409];
    post "/replicate" => replicate::replicate, "Replicates: {\"source\", \"target\" (barrel names or CouchDB-protocol URLs), \"direction\": push|pull|sync, \"continuous\", \"filter\": [topic filters], \"async\"}. One-shot answers when done (200) unless async; continuous answers 202.", query [], responses [200, 202, 400, 404];
    get "/replications" => replicate::list, "Replication tasks with their state, documents read and written, failures, last seq and error.", query [], responses [200];
    get "/replications/{id}" => replicate::get, "One replication task.", query [], responses [200, 404];
    delete "/replications/{id}" => replicate::delete, "Stops and forgets a replication task (its checkpoints stay).", query [], responses [200, 404];
    post "/graphql" => crate::graphql::post, "GraphQL: a query or mutation, or a batch (JSON array) of them.", query [], responses [200, 400, 413, 415];
    get "/graphql" => crate::graphql::get, "GraphiQL in a browser; with ?query= a GraphQL query over GET.", query [("query", "a GraphQL query"), ("variables", "JSON"), ("operationName", "which operation")], responses [200, 400];
    get "/graphql/ws" => crate::graphql::ws, "GraphQL subscriptions over a websocket: subprotocols graphql-transport-ws and graphql-ws.", query [], responses [101, 400];
    get "/graphql/schema.graphql" => crate::graphql::sdl_route, "The GraphQL schema in SDL.", query [], responses [200];
    get "/barrels/{b}/listen" => listen::listen, "Listener websocket: subscribe to topic filters, get every matching change (replayed from since, then live). See the README for the frames; ?filter=&since=&include_docs= subscribes at once.",
        query [("filter", "a topic filter (repeatable): subscribe at once with id 0"), ("since", "a seq or now"), ("include_docs", "true: include each document")],
        responses [101, 400, 404];
    put "/barrels/{b}/docs/{id}/attachments/{name}" => docs::put_attachment, "Adds or replaces an attachment: the body is its content, Content-Type its type; needs ?rev= or If-Match unless the document is new.", query [("rev", "the document's current revision")], responses [201, 400, 404, 409, 413];
    get "/barrels/{b}/docs/{id}/attachments/{name}" => docs::get_attachment, "Reads an attachment of the winner or of ?rev=.", query [("rev", "a given revision")], responses [200, 400, 404];
    delete "/barrels/{b}/docs/{id}/attachments/{name}" => docs::delete_attachment, "Removes an attachment; needs ?rev= or If-Match.", query [("rev", "the document's current revision")], responses [200, 400, 404, 409];
    put "/barrels/{b}/local/{id}" => docs::put_local, "Writes a local document (not replicated, not in the changes feed); _rev 0-N to update.", query [], responses [201, 400, 404, 409, 413, 415];
    get "/barrels/{b}/local/{id}" => docs::get_local, "Reads a local document.", query [], responses [200, 400, 404];
    delete "/barrels/{b}/local/{id}" => docs::delete_local, "Deletes a local document; needs ?rev= or If-Match.", query [("rev", "its 0-N revision")], responses [200, 400, 404, 409];
}

/// The global Prometheus recorder: installed once per process, shared by every node in it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Counts requests and their latency per route pattern.
async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.call(req).await?;
    let status = res.status().as_u16().to_string();
    metrics::counter!("cooper_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("cooper_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(res)
}

/// Answers malformed query strings and paths with the API's JSON error shape.
fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query string: {err}")).into()
}

fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid path: {err}")).into()
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpService {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    handle: ServerHandle,
}

impl HttpService {
    /// Starts serving the API on `addr`.
    pub fn start(state: AppState, addr: SocketAddr) -> std::io::Result<Self> {
        prometheus();
        let workers = state.config.http_workers.max(1);
        let schema = crate::graphql::schema(state.node.clone(), state.config.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::Data::new(schema.clone()))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(path_error))
                .configure(register)
                .default_service(web::to(not_found))
                .wrap(from_fn(auth::authorize))
                .wrap(from_fn(check_path_utf8))
                .wrap(from_fn(cors))
                // PouchDB and CouchDB clients address databases as `/couch/db/`.
                .wrap(actix_web::middleware::NormalizePath::trim())
                .wrap(from_fn(record_metrics))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(10)
        .bind(addr)?;
        let bound = server.addrs().first().copied().unwrap_or(addr);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self {
            addr: bound,
            handle,
        })
    }

    /// Stops accepting connections and waits for requests in flight.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let path = req.path();
    let allowed: Vec<String> = ROUTES
        .iter()
        .filter(|r| actix_web::dev::ResourceDef::new(r.path).is_match(path))
        .map(|r| r.method.to_ascii_uppercase())
        .collect();
    if allowed.is_empty() {
        return Err(ApiError::not_found(format!(
            "no route for {} {path}",
            req.method()
        )));
    }
    Err(ApiError::method_not_allowed(format!(
        "{} is not allowed on {path}; use {}",
        req.method(),
        allowed.join(", ")
    )))
}

/// CORS, so browsers (PouchDB in a web page) can use the API: the request's origin is
/// allowed, and preflight `OPTIONS` requests are answered here.
async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    use actix_web::http::header::{self, HeaderValue};
    let origin = req.headers().get(header::ORIGIN).cloned();
    if req.method() == actix_web::http::Method::OPTIONS && origin.is_some() {
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let mut res = actix_web::HttpResponse::NoContent();
        res.insert_header((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin.clone().unwrap_or(HeaderValue::from_static("*")),
        ))
        .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, HEAD, POST, PUT, DELETE, OPTIONS",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"));
        if let Some(h) = asked {
            res.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        return Ok(req.into_response(res.finish()).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    if let Some(o) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("ETag, Content-Type"),
        );
    }
    Ok(res.map_into_left_body())
}

/// Refuses a path whose percent-encoded bytes are not UTF-8: actix would decode them
/// lossily, and two different URLs would reach the same document.
async fn check_path_utf8(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let raw = req.uri().path().as_bytes();
    if raw.contains(&b'%') {
        let hex = |b: u8| (b as char).to_digit(16);
        let mut decoded = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let pair = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            );
            match (raw[i], pair) {
                (b'%', (Some(h), Some(l))) => {
                    decoded.push((h * 16 + l) as u8);
                    i += 3;
                }
                (b, _) => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(
                ApiError::bad_request("the path is not valid UTF-8 once percent-decoded").into(),
            );
        }
    }
    next.call(req).await
}

/// Reads a JSON body: checks the content type (415), the size (413), the syntax and the depth
/// (400).
pub fn parse_json(
    req: &HttpRequest,
    body: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<Value, ApiError> {
    check_json_content_type(req)?;
    if body.len() > max_bytes {
        return Err(ApiError::too_large(format!(
            "the body is {} bytes; the limit is {max_bytes}",
            body.len()
        )));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            ApiError::bad_request(format!("document nests deeper than {max_depth} levels"))
        } else {
            ApiError::bad_request(format!("invalid JSON: {e}"))
        }
    })?;
    if cooper_protocols::document::depth(&value) > max_depth {
        return Err(ApiError::bad_request(format!(
            "document nests deeper than {max_depth} levels"
        )));
    }
    Ok(value)
}

/// 415 unless the request says JSON (or says nothing, as `curl -d` without `-H` would
/// otherwise be refused for a form type, which is refused too).
pub fn check_json_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(ct) = req.headers().get(actix_web::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "Content-Type must be application/json, not {mime:?}"
        )))
    }
}

/// Reads a request body up to `limit` bytes: 413 past it, before reading it all when the
/// client announced its length.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    use futures_util::StreamExt as _;
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::too_large(format!(
                "the body is {len} bytes; the limit is {limit}"
            )));
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::too_large(format!(
                "the body is over the limit of {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
