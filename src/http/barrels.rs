//! Barrel routes: list, create, info, delete.

use actix_web::{web, HttpResponse};
use cooper_protocols::ids::BarrelName;
use serde_json::json;

use super::{ApiError, AppState, JsonLine};

/// `GET /barrels`
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json_line(state.node.barrels().await?))
}

/// `PUT|POST /barrels/{b}`
pub async fn create(
    state: web::Data<AppState>,
    b: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = BarrelName::new(&b)?;
    state.node.create_barrel(name.as_str()).await?;
    Ok(HttpResponse::Created().json_line(json!({"ok": true, "name": name.as_str()})))
}

/// `GET /barrels/{b}`
pub async fn info(
    state: web::Data<AppState>,
    b: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let c = barrel.counts()?;
    Ok(HttpResponse::Ok().json_line(json!({
        "name": barrel.name().as_str(),
        "doc_count": c.doc_count,
        "deleted_count": c.deleted_count,
        "update_seq": c.update_seq.to_string(),
        "size_bytes": c.size_bytes,
    })))
}

/// `DELETE /barrels/{b}`
pub async fn delete(
    state: web::Data<AppState>,
    b: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = BarrelName::new(&b)?;
    state.node.delete_barrel(name.as_str()).await?;
    Ok(HttpResponse::Ok().json_line(json!({"ok": true})))
}
