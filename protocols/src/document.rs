//! Splitting an incoming JSON document into Cooper's reserved members and the user's body
//! (DESIGN §2).
//!
//! Members that start with `_` are Cooper's; the allowed ones are `_id`, `_rev`, `_deleted`,
//! `_attachments`, `_conflicts` (ignored on input, as CouchDB does) and `_revisions`; any
//! other `_` member is refused. Everything else is the user's and is kept as given.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{validate_doc_id, IdError, Rev};

/// Deepest accepted nesting of arrays and objects (a document at the top counts as 1).
pub const MAX_DEPTH: usize = 64;

/// Why a document was refused; the message is the `reason` of a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The document is not a JSON object.
    #[error("a document must be a JSON object")]
    NotAnObject,
    /// A `_` member Cooper does not know.
    #[error("member {0:?} is reserved: members starting with '_' are Cooper's")]
    ReservedMember(String),
    /// A reserved member of the wrong type.
    #[error("member {member} must be {expected}")]
    WrongType {
        /// The member.
        member: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A bad id or revision.
    #[error(transparent)]
    Id(#[from] IdError),
    /// `_revisions` that does not describe a history ending at `_rev`.
    #[error("invalid _revisions: {0}")]
    Revisions(String),
    /// Nesting beyond [`MAX_DEPTH`].
    #[error("document nests deeper than {0} levels")]
    TooDeep(usize),
}

/// An incoming document, split. Serializable, so that a barrel's write-ahead log can keep it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncomingDoc {
    /// `_id`, validated, if present.
    pub id: Option<String>,
    /// `_rev`, if present (local documents carry `0-N`, kept in `local_rev`).
    pub rev: Option<Rev>,
    /// The counter of a local document's `_rev` (`0-N`), if present.
    pub local_rev: Option<u64>,
    /// `_deleted: true`.
    pub deleted: bool,
    /// `_attachments` as given (stubs or inline base64 data), if present.
    pub attachments: Option<Map<String, Value>>,
    /// The history from `_revisions`, newest first, if present.
    pub revisions: Option<Vec<Rev>>,
    /// The user's members.
    pub body: Map<String, Value>,
}

/// Depth of `value`: scalars 0, an empty or flat container 1, and so on. Iterative, so a
/// hostile document cannot overflow the stack.
pub fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(members) => {
                max = max.max(d + 1);
                stack.extend(members.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Splits `doc` into its reserved members and body, checking types, ids, revisions and depth.
pub fn split(doc: Value) -> Result<IncomingDoc, DocumentError> {
    let Value::Object(map) = doc else {
        return Err(DocumentError::NotAnObject);
    };
    let d = depth_of_map(&map);
    if d > MAX_DEPTH {
        return Err(DocumentError::TooDeep(MAX_DEPTH));
    }
    let mut out = IncomingDoc::default();
    let mut revisions = None;
    for (key, value) in map {
        if !key.starts_with('_') {
            out.body.insert(key, value);
            continue;
        }
        match key.as_str() {
            "_id" => {
                let Value::String(id) = value else {
                    return Err(wrong("_id", "a string"));
                };
                validate_doc_id(&id)?;
                out.id = Some(id);
            }
            "_rev" => {
                let Value::String(rev) = value else {
                    return Err(wrong("_rev", "a string"));
                };
                if let Some(n) = rev.strip_prefix("0-") {
                    out.local_rev = Some(n.parse().map_err(|_| IdError::Rev(rev.clone()))?);
                } else {
                    out.rev = Some(Rev::parse(&rev)?);
                }
            }
            "_deleted" => match value {
                Value::Bool(b) => out.deleted = b,
                _ => return Err(wrong("_deleted", "true or false")),
            },
            "_attachments" => match value {
                Value::Object(a) => out.attachments = Some(a),
                Value::Null => {}
                _ => return Err(wrong("_attachments", "an object")),
            },
            "_conflicts" => {}
            "_revisions" => revisions = Some(value),
            _ => return Err(DocumentError::ReservedMember(key)),
        }
    }
    if let Some(r) = revisions {
        let history = parse_revisions(&r)?;
        if let (Some(rev), Some(first)) = (&out.rev, history.first()) {
            if rev != first {
                return Err(DocumentError::Revisions(format!(
                    "_revisions starts at {first}, but _rev is {rev}"
                )));
            }
        }
        out.rev = out.rev.or(history.first().copied());
        out.revisions = Some(history);
    }
    Ok(out)
}

fn depth_of_map(map: &Map<String, Value>) -> usize {
    1 + map.values().map(depth).max().unwrap_or(0)
}

fn wrong(member: &'static str, expected: &'static str) -> DocumentError {
    DocumentError::WrongType { member, expected }
}

/// Parses CouchDB's `{"start": N, "ids": ["hash", …]}` into revisions, newest first.
pub fn parse_revisions(value: &Value) -> Result<Vec<Rev>, DocumentError> {
    let bad = |why: &str| DocumentError::Revisions(why.to_owned());
    let start = value
        .get("start")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("start must be a positive integer"))?;
    let ids = value
        .get("ids")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("ids must be an array"))?;
    if ids.is_empty() || ids.len() as u64 > start {
        return Err(bad("ids must hold between 1 and start hashes"));
    }
    ids.iter()
        .enumerate()
        .map(|(i, h)| {
            let h = h.as_str().ok_or_else(|| bad("ids must be strings"))?;
            Ok(Rev::parse(&format!("{}-{h}", start - i as u64))?)
        })
        .collect()
}

/// CouchDB's `_revisions` object for a history (newest first, consecutive generations).
pub fn revisions_json(history: &[Rev]) -> Value {
    let start = history.first().map_or(0, |r| r.pos);
    let ids: Vec<Value> = history
        .iter()
        .map(|r| Value::String(r.hash_hex()))
        .collect();
    serde_json::json!({ "start": start, "ids": ids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_reserved_members_from_the_body() {
        let d = split(json!({
            "_id": "u1", "_rev": "1-0123456789abcdef0123456789abcdef", "_deleted": false,
            "_conflicts": ["ignored"], "id": "kept", "name": "Ann"
        }))
        .unwrap();
        assert_eq!(d.id.as_deref(), Some("u1"));
        assert_eq!(d.rev.unwrap().pos, 1);
        assert_eq!(Value::Object(d.body), json!({"id": "kept", "name": "Ann"}));
    }

    #[test]
    fn refuses_bad_members() {
        assert_eq!(split(json!([1])), Err(DocumentError::NotAnObject));
        assert!(
            matches!(split(json!({"_x": 1})), Err(DocumentError::ReservedMember(k)) if k == "_x")
        );
        assert!(matches!(
            split(json!({"_id": 5})),
            Err(DocumentError::WrongType { .. })
        ));
        assert!(matches!(
            split(json!({"_deleted": "yes"})),
            Err(DocumentError::WrongType { .. })
        ));
        assert!(matches!(
            split(json!({"_rev": "1-xyz"})),
            Err(DocumentError::Id(_))
        ));
        assert!(matches!(
            split(json!({"_id": "_design/x"})),
            Err(DocumentError::Id(_))
        ));
    }

    #[test]
    fn local_revs() {
        let d = split(json!({"_id": "_local/cp", "_rev": "0-7"})).unwrap();
        assert_eq!(d.local_rev, Some(7));
        assert!(split(json!({"_rev": "0-x"})).is_err());
    }

    #[test]
    fn revisions_round_trip() {
        let h = "0123456789abcdef0123456789abcdef";
        let g = "fedcba9876543210fedcba9876543210";
        let d = split(json!({"_revisions": {"start": 3, "ids": [h, g]}})).unwrap();
        let revs = d.revisions.unwrap();
        assert_eq!(revs[0].to_string(), format!("3-{h}"));
        assert_eq!(revs[1].to_string(), format!("2-{g}"));
        assert_eq!(d.rev, Some(revs[0]));
        assert_eq!(revisions_json(&revs), json!({"start": 3, "ids": [h, g]}));
        let mismatch = json!({"_rev": format!("4-{h}"), "_revisions": {"start": 3, "ids": [h]}});
        assert!(matches!(split(mismatch), Err(DocumentError::Revisions(_))));
        assert!(split(json!({"_revisions": {"start": 1, "ids": [h, g]}})).is_err());
    }

    #[test]
    fn depth_limit() {
        let mut v = json!(1);
        for _ in 0..63 {
            v = json!([v]);
        }
        assert_eq!(depth(&json!({"a": v.clone()})), 64);
        assert!(split(json!({ "a": v.clone() })).is_ok());
        assert_eq!(split(json!({ "a": [v] })), Err(DocumentError::TooDeep(64)));
    }
}
