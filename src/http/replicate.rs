//! Replication routes: `POST /replicate`, `GET /replications`, `GET|DELETE /replications/{id}`.

use actix_web::{web, HttpRequest, HttpResponse};
use cooper_actors::replicator::TaskSpec;
use serde::Deserialize;

use super::{parse_json, read_body, ApiError, AppState, JsonLine};

#[derive(Debug, Deserialize)]
struct ReplicateBody {
    #[serde(flatten)]
    spec: TaskSpec,
    /// Answer at once instead of when a one-shot task ends.
    #[serde(default, rename = "async")]
    run_async: bool,
}

/// `POST /replicate`: one-shot tasks answer with their final state (200) unless `async`;
/// continuous ones answer 202 at once and are resumed at every start.
pub async fn replicate(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limits = &state.config.limits;
    let body = read_body(&req, payload, limits.max_document_bytes).await?;
    let value = parse_json(&req, &body, limits.max_document_bytes, limits.max_depth)?;
    let asked: ReplicateBody = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(format!(
            "a replication is {{\"source\", \"target\", \"direction\": push|pull|sync, \"continuous\", \"filter\": [...], \"async\"}}: {e}"
        ))
    })?;
    if asked.spec.continuous || asked.run_async {
        let task = state.node.start_replication(asked.spec).await?;
        Ok(HttpResponse::Accepted().json_line(task))
    } else {
        let task = state.node.replicate(asked.spec).await?;
        Ok(HttpResponse::Ok().json_line(task))
    }
}

/// `GET /replications`
pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json_line(state.node.replications().await)
}

/// `GET /replications/{id}`
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json_line(state.node.replication(&id).await?))
}

/// `DELETE /replications/{id}`
pub async fn delete(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json_line(state.node.stop_replication(&id).await?))
}
