//! The GraphQL interface (DESIGN §6): `POST /graphql` (single or batched), GraphiQL on
//! `GET /graphql`, subscriptions on `/graphql/ws` (both `graphql-transport-ws` and the legacy
//! `graphql-ws` subprotocols), and the SDL at `/graphql/schema.graphql`.
//!
//! Resolvers call the same barrels, query engine and listener hub as REST. Auth is the REST
//! auth: a bearer token in the `Authorization` header, or for websockets in the
//! `connection_init` payload (`{"token": "…"}` or `{"Authorization": "Bearer …"}`). Errors
//! carry the REST error kind in `extensions.code`. Depth and complexity are limited, so an
//! abusive query is refused before it runs.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use async_graphql::http::GraphiQLSource;
use async_graphql::{BatchRequest, Data, Schema};
use async_graphql_actix_web::GraphQLSubscription;

use crate::config::{Config, Role};
use crate::http::auth::{Auth, Principal};
use crate::http::{read_body, ApiError, AppState, JsonLine};
use crate::node::Node;

pub mod schema;

pub use schema::{MutationRoot, QueryRoot, SubscriptionRoot};

/// Cooper's GraphQL schema.
pub type CooperSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Deepest selection a query may nest.
pub const MAX_DEPTH: usize = 12;
/// Highest complexity a query may have: each field counts 1, `docs` and `changes` their
/// selection once per 100 documents asked for plus 10, `totalCount` 20 — so 1,000 aliases of
/// anything are refused before they run.
pub const MAX_COMPLEXITY: usize = 500;

fn builder() -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32)
        .limit_directives(8)
}

/// The schema of a running node.
pub fn schema(node: Node, config: Arc<Config>) -> CooperSchema {
    builder().data(node).data(config).finish()
}

/// The schema in SDL (what `cooper schema` prints).
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// The principal of a request: from its bearer token when auth is on, else an unscoped admin.
fn principal(auth: &Auth, header: Option<&str>) -> Result<Option<Principal>, ApiError> {
    if !auth.enabled() {
        return Ok(Some(Principal {
            role: Role::Admin,
            barrels: None,
        }));
    }
    let Some(h) = header else { return Ok(None) };
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?;
    auth.principal(token.trim()).map(Some)
}

fn header_principal(req: &HttpRequest, state: &AppState) -> Result<Option<Principal>, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    principal(&state.auth, header)
}

async fn execute(
    schema: &CooperSchema,
    batch: BatchRequest,
    principal: Option<Principal>,
) -> HttpResponse {
    let batch = match principal {
        Some(p) => batch.data(p),
        None => batch,
    };
    let mut response = schema.execute_batch(batch).await;
    // Errors from parsing and validation (depth, complexity, unknown fields, wrong types) are
    // the client's: give them the REST kind too.
    let mark = |r: &mut async_graphql::Response| {
        for e in &mut r.errors {
            let ext = e.extensions.get_or_insert_with(Default::default);
            if ext.get("code").is_none() {
                ext.set("code", "bad_request");
            }
        }
    };
    match &mut response {
        async_graphql::BatchResponse::Single(r) => mark(r),
        async_graphql::BatchResponse::Batch(list) => list.iter_mut().for_each(mark),
    }
    HttpResponse::Ok().json_line(&response)
}

/// `POST /graphql`: a query, or a batch (a JSON array of queries).
pub async fn post(
    req: HttpRequest,
    state: web::Data<AppState>,
    schema: web::Data<CooperSchema>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let principal = header_principal(&req, &state)?;
    crate::http::check_json_content_type(&req)?;
    let body = read_body(&req, payload, state.config.limits.max_request_bytes).await?;
    let shape = |e: serde_json::Error| {
        ApiError::bad_request(format!("a GraphQL request is {{\"query\", \"variables\", \"operationName\"}} (or an array of them): {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(shape)?;
    let batch = match value {
        serde_json::Value::Array(list) => {
            if list.is_empty() || list.len() > 64 {
                return Err(ApiError::bad_request("a batch holds 1 to 64 requests"));
            }
            let requests = list
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<Vec<async_graphql::Request>, _>>()
                .map_err(shape)?;
            BatchRequest::Batch(requests)
        }
        other => BatchRequest::Single(serde_json::from_value(other).map_err(shape)?),
    };
    Ok(execute(&schema, batch, principal).await)
}

/// `GET /graphql`: GraphiQL for people; with `?query=` a query over GET.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    schema: web::Data<CooperSchema>,
) -> Result<HttpResponse, ApiError> {
    if req.query_string().is_empty() {
        let page = GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .title("Cooper GraphiQL")
            .finish();
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(page));
    }
    let principal = header_principal(&req, &state)?;
    let request: async_graphql::Request =
        async_graphql::http::parse_query_string(req.query_string())
            .map_err(|e| ApiError::bad_request(format!("invalid GraphQL GET request: {e}")))?;
    // GET must not change anything: mutations go through POST.
    if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
        let mutates = doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty == async_graphql::parser::types::OperationType::Mutation);
        if mutates {
            return Err(ApiError::method_not_allowed(
                "mutations must be sent with POST",
            ));
        }
    }
    Ok(execute(&schema, BatchRequest::Single(request), principal).await)
}

/// `GET /graphql/ws`: subscriptions (and queries) over a websocket.
pub async fn ws(
    req: HttpRequest,
    state: web::Data<AppState>,
    schema: web::Data<CooperSchema>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let from_header = header_principal(&req, &state)?;
    let auth = state.auth.clone();
    let mut data = Data::default();
    if let Some(p) = from_header.clone() {
        data.insert(p);
    }
    GraphQLSubscription::new(Schema::clone(&schema))
        .with_data(data)
        .on_connection_init(move |payload: serde_json::Value| async move {
            let mut data = Data::default();
            if from_header.is_some() {
                return Ok(data);
            }
            let token = payload
                .get("token")
                .and_then(|t| t.as_str())
                .map(|t| format!("Bearer {t}"))
                .or_else(|| {
                    ["Authorization", "authorization"]
                        .iter()
                        .find_map(|k| payload.get(*k).or_else(|| payload.get("headers").and_then(|h| h.get(*k))))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                });
            match principal(&auth, token.as_deref()) {
                Ok(Some(p)) => data.insert(p),
                Ok(None) => {}
                Err(e) => return Err(async_graphql::Error::new(e.reason)),
            }
            Ok(data)
        })
        .start(&req, payload)
        .map_err(|e| ApiError::bad_request(format!("a websocket upgrade with subprotocol graphql-transport-ws or graphql-ws is needed: {e}")))
}

/// `GET /graphql/schema.graphql`: the schema in SDL.
pub async fn sdl_route() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(sdl())
}
