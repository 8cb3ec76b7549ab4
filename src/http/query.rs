//! `GET /barrels/{b}/docs?…`: path queries with PostgREST-style operators, answered by the
//! store's query engine (the same one GraphQL uses).

use actix_web::{web, HttpRequest, HttpResponse};
use cooper_actors::barrel::store::{Condition, Op, Query};
use cooper_protocols::path;
use serde_json::{json, Value};

use super::docs::flag;
use super::{ApiError, AppState, JsonLine};

/// Default page size of a query.
pub const DEFAULT_LIMIT: usize = 100;

/// A parsed query string: the query and whether only its plan is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedQuery {
    /// The query.
    pub query: Query,
    /// `explain=true`.
    pub explain: bool,
}

/// Parses `?address/city=eq.Paris&age=gte.18&order=age.desc&limit=50&cursor=…`.
pub fn parse(pairs: &[(String, String)], max_page: usize) -> Result<ParsedQuery, ApiError> {
    let mut query = Query {
        limit: DEFAULT_LIMIT.min(max_page),
        ..Query::default()
    };
    let mut explain = false;
    for (key, value) in pairs {
        match key.as_str() {
            "order" => {
                let (p, desc) = match value.rsplit_once('.') {
                    Some((p, "desc")) => (p, true),
                    Some((p, "asc")) => (p, false),
                    _ => (value.as_str(), false),
                };
                query.order = Some((path::normalize(p)?, desc));
            }
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max_page).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be between 1 and {max_page}"))
                    })?;
            }
            "cursor" => query.cursor = Some(value.clone()),
            "explain" => explain = flag("explain", Some(value))?,
            _ => query.conditions.push(Condition {
                path: path::normalize(key)?,
                op: parse_op(key, value)?,
            }),
        }
    }
    Ok(ParsedQuery { query, explain })
}

/// A filter value: JSON when it parses (`18`, `true`, `null`, `"18"`), else the text itself.
pub fn operand(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn parse_op(key: &str, value: &str) -> Result<Op, ApiError> {
    let (op, rest) = value.split_once('.').ok_or_else(|| {
        ApiError::bad_request(format!(
            "condition {key}={value:?} needs an operator: eq. ne. gt. gte. lt. lte. in.(…) prefix. exists."
        ))
    })?;
    Ok(match op {
        "eq" => Op::Eq(operand(rest)),
        "ne" => Op::Ne(operand(rest)),
        "gt" => Op::Gt(operand(rest)),
        "gte" => Op::Gte(operand(rest)),
        "lt" => Op::Lt(operand(rest)),
        "lte" => Op::Lte(operand(rest)),
        "prefix" => Op::Prefix(match operand(rest) {
            Value::String(s) => s,
            _ => rest.to_owned(),
        }),
        "exists" => match rest {
            "true" => Op::Exists(true),
            "false" => Op::Exists(false),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{key}: exists takes true or false"
                )))
            }
        },
        "in" => Op::In(parse_list(key, rest)?),
        other => {
            return Err(ApiError::bad_request(format!(
            "{key}: unknown operator {other:?}; use eq, ne, gt, gte, lt, lte, in, prefix or exists"
        )))
        }
    })
}

/// `(a,b,"c,d")`: items separated by commas outside double quotes.
fn parse_list(key: &str, text: &str) -> Result<Vec<Value>, ApiError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("{key}: in takes a list like in.(a,b)")))?;
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(operand(inner[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(ApiError::bad_request(format!(
            "{key}: unterminated quote in the in.(…) list"
        )));
    }
    items.push(operand(inner[start..].trim()));
    if items.len() > 1024 {
        return Err(ApiError::bad_request(format!(
            "{key}: in takes at most 1024 values"
        )));
    }
    Ok(items)
}

/// `GET /barrels/{b}/docs`
pub async fn run(
    req: HttpRequest,
    state: web::Data<AppState>,
    b: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let barrel = state.barrel(&b)?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    let parsed = parse(&pairs, state.config.limits.max_page)?;
    if parsed.explain {
        return Ok(HttpResponse::Ok().json_line(barrel.explain(&parsed.query)?));
    }
    let page = web::block(move || barrel.query(&parsed.query))
        .await
        .map_err(|_| ApiError::internal("query worker failed"))??;
    let docs: Vec<Value> = page.docs.iter().map(|d| d.to_json()).collect();
    Ok(HttpResponse::Ok().json_line(json!({"docs": docs, "next": page.next})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<ParsedQuery, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(s)
            .unwrap()
            .into_inner();
        parse(&pairs, 1000)
    }

    #[test]
    fn operators_and_values() {
        let p = q(
            "address/city=eq.Paris&age=gte.18&tags/*=in.(a,%22b,c%22,3)&order=age.desc&limit=50",
        )
        .unwrap();
        let c = &p.query.conditions;
        assert_eq!(
            c[0],
            Condition {
                path: "/address/city".into(),
                op: Op::Eq(json!("Paris"))
            }
        );
        assert_eq!(c[1].op, Op::Gte(json!(18)));
        assert_eq!(c[2].op, Op::In(vec![json!("a"), json!("b,c"), json!(3)]));
        assert_eq!(p.query.order, Some(("/age".into(), true)));
        assert_eq!(p.query.limit, 50);
        assert_eq!(
            q("a=eq.%2218%22").unwrap().query.conditions[0].op,
            Op::Eq(json!("18"))
        );
        assert_eq!(
            q("a=eq.null").unwrap().query.conditions[0].op,
            Op::Eq(json!(null))
        );
        assert_eq!(
            q("a=exists.false").unwrap().query.conditions[0].op,
            Op::Exists(false)
        );
    }

    #[test]
    fn bad_queries_say_why() {
        for bad in [
            "a=18",
            "a=like.x",
            "a=exists.maybe",
            "a=in.x",
            "limit=0",
            "limit=1001",
            "limit=x",
            "a~2=eq.1",
            "a=in.(%22x)",
            "explain=yes",
            "=eq.1",
        ] {
            let e = q(bad).unwrap_err();
            assert_eq!(e.kind, "bad_request", "{bad}");
        }
    }
}
