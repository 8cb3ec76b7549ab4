//! Node routes: `/`, `/health`, `/metrics`, `/status`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{ApiError, AppState, JsonLine};

/// `GET /`
pub async fn root(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json_line(json!({
        "cooper": "Welcome",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "data_dir": state.config.data_dir.display().to_string(),
    }))
}

/// `GET /health`
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json_line(json!({"status": "ok"}))
}

/// `GET /metrics`
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(super::prometheus().render())
}

/// `GET /status`: the cluster table. A standalone node is its own master.
pub async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let http = req.app_config().local_addr().to_string();
    let node_id = state.config.data_dir.display().to_string();
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Ok(HttpResponse::Ok().json_line(json!({
            "nodes": [{"role": "master", "node_id": node_id, "http": http, "p2p": null,
                       "last_seen": "now", "lag": 0}]
        })));
    }
    let text = format!("ROLE    NODE  HTTP\nmaster  self  {http}\n");
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text))
}
