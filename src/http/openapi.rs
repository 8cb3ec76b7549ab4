//! `/openapi.json`, generated from the route table in [`super::ROUTES`], so it lists exactly
//! the routes the server registers.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::{JsonLine, ROUTES};

/// The OpenAPI 3 document of the API.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let openapi_path = r.path.to_owned();
        let mut params: Vec<Value> = path_params(r.path)
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().filter(|(n, _)| !n.starts_with('<')).map(|(n, d)| {
            json!({"name": n, "in": "query", "required": false, "description": d, "schema": {"type": "string"}})
        }));
        let responses: Map<String, Value> = r
            .responses
            .iter()
            .map(|code| {
                let reason = actix_web::http::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                let mut resp = json!({"description": reason});
                if *code >= 400 {
                    resp["content"] = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
                }
                (code.to_string(), resp)
            })
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        if let Some((_, d)) = r.query.iter().find(|(n, _)| n.starts_with('<')) {
            op["description"] =
                Value::String(format!("Other query parameters are conditions: {d}."));
        }
        let entry = paths.entry(openapi_path).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Cooper", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A peer-to-peer document database node: barrels of JSON documents with revision trees."},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["error", "reason"],
            "properties": {"error": {"type": "string"}, "reason": {"type": "string"}}
        }}}
    })
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// `GET /openapi.json`
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json_line(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_described_once_per_method() {
        let doc = super::document();
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(n, super::ROUTES.len());
        assert!(
            doc["paths"]["/barrels/{b}/docs/{id}"]["put"]["parameters"]
                .as_array()
                .unwrap()
                .len()
                >= 2
        );
    }
}
