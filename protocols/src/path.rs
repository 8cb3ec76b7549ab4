//! JSON Pointer paths (RFC 6901), the path index's entries and its order-preserving key
//! encoding (DESIGN §4).
//!
//! Index key layout, compared bytewise by redb:
//! `escaped(pointer) 0x00 0x01 | scalar key | id bytes`, where a scalar key is a type tag
//! followed by an order-preserving encoding, so keys sort by (path, value, id) with values in
//! the order null < false < true < numbers (by value) < strings (by UTF-8 bytes).

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Type tags of scalar keys, in collation order.
pub mod tag {
    /// `null`
    pub const NULL: u8 = 0x05;
    /// `false`
    pub const FALSE: u8 = 0x10;
    /// `true`
    pub const TRUE: u8 = 0x11;
    /// numbers: followed by 8 bytes, the order-preserving big-endian form of the f64
    pub const NUMBER: u8 = 0x20;
    /// strings: followed by the escaped bytes and the terminator `0x00 0x01`
    pub const STRING: u8 = 0x30;
    /// an empty array (indexed so that `exists` finds it)
    pub const EMPTY_ARRAY: u8 = 0x40;
    /// an empty object
    pub const EMPTY_OBJECT: u8 = 0x41;
}

/// Why a path or an index key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Malformed pointer (bad `~` escape, too long, …).
    #[error("invalid path {path:?}: {reason}")]
    Invalid {
        /// The path as given (truncated).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes that are not an index key.
    #[error("corrupt index key")]
    CorruptKey,
}

/// Normalizes a path as users write it (`address/city`, `/address/city`, `tags/*`) to a JSON
/// Pointer with a leading `/`. Checks `~` escapes (`~0`, `~1` only) and the length limit.
/// The empty path (whole document) is refused.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return Err(invalid(path, "path is empty".to_owned()));
    }
    let len = rest.len() + 1;
    if len > MAX_PATH_BYTES {
        return Err(invalid(
            path,
            format!("path is {len} bytes long; the limit is {MAX_PATH_BYTES}"),
        ));
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            match bytes.get(i + 1) {
                Some(b'0' | b'1') => i += 2,
                _ => {
                    return Err(invalid(
                        path,
                        format!("'~' at byte {i} must be followed by '0' or '1'"),
                    ))
                }
            }
        } else {
            i += 1;
        }
    }
    let mut out = String::with_capacity(len);
    out.push('/');
    out.push_str(rest);
    Ok(out)
}

/// The unescaped segments of a normalized pointer (`/a~1b/c` → `["a/b", "c"]`).
pub fn segments(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    let rest = pointer.strip_prefix('/').unwrap_or(pointer);
    rest.split('/')
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            unescape_into(seg, &mut out);
            out
        })
        .collect()
}

/// Every scalar leaf of `body` with its positional pointer (`/tags/0`), in document order.
/// Members whose key starts with `_` at the top level are skipped. Used for topics.
pub fn leaf_values(body: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    for (key, value) in body {
        if key.starts_with('_') {
            continue;
        }
        buf.clear();
        buf.push('/');
        push_escaped(&mut buf, key);
        collect_leaves(value, &mut buf, &mut out);
    }
    out
}

/// The path index entries of a body: every scalar leaf under its positional pointer and, for
/// leaves inside arrays, under the pointers where array positions are replaced by `*`
/// (membership), deduplicated and sorted. Empty arrays and objects count as leaves (so
/// `exists` finds them). When a leaf lies under more than 3 nested arrays,
/// only the all-positional and the all-`*` pointers are emitted, so the count stays bounded.
/// Top-level `_` members are skipped.
pub fn index_entries(body: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    walk_index(body, &mut |pointer, value| {
        out.push((pointer.to_owned(), value))
    });
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| compare(a.1, b.1)));
    out.dedup_by(|a, b| a.0 == b.0 && compare(a.1, b.1) == Ordering::Equal);
    out
}

/// The index keys ([`index_key`]) of document `id` with `body`: those of
/// [`index_entries`], made in one walk, sorted bytewise, without duplicates.
pub fn index_keys(body: &Map<String, Value>, id: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    walk_index(body, &mut |pointer, value| {
        out.push(index_key(pointer, value, id))
    });
    out.sort_unstable();
    out.dedup();
    out
}

/// Calls `sink` with every (pointer, value) of [`index_entries`], unsorted, maybe repeated.
fn walk_index<'a>(body: &'a Map<String, Value>, sink: &mut dyn FnMut(&str, &'a Value)) {
    let mut walk = IndexWalk {
        buf: String::new(),
        scratch: String::new(),
        index_ranges: Vec::new(),
        sink,
    };
    for (key, value) in body {
        if key.starts_with('_') {
            continue;
        }
        walk.buf.clear();
        walk.buf.push('/');
        push_escaped(&mut walk.buf, key);
        walk.visit(value);
    }
}

/// The values found at `pointer` in `body`, where a `*` segment matches every element of an
/// array (and an object member literally named `*`). Values may be scalars or containers.
pub fn values_at<'a>(body: &'a Value, pointer: &str) -> Vec<&'a Value> {
    if pointer.is_empty() {
        // RFC 6901: the empty pointer is the whole document.
        return vec![body];
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Vec::new();
    };
    let mut current = vec![body];
    let mut next = Vec::new();
    let mut key = String::new();
    for seg in rest.split('/') {
        key.clear();
        if !unescape_into(seg, &mut key) {
            return Vec::new();
        }
        for value in current.drain(..) {
            match value {
                Value::Object(map) => {
                    if let Some(v) = map.get(key.as_str()) {
                        next.push(v);
                    }
                }
                Value::Array(items) => {
                    if key == "*" {
                        next.extend(items.iter());
                    } else if let Some(v) = array_index(&key).and_then(|i| items.get(i)) {
                        next.push(v);
                    }
                }
                _ => {}
            }
        }
        std::mem::swap(&mut current, &mut next);
        if current.is_empty() {
            break;
        }
    }
    current
}

/// Collation of scalars: null < false < true < numbers (by value) < strings (bytewise).
/// Containers sort after strings, arrays before objects, and compare equal among themselves.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Appends `escaped(pointer) 0x00 0x01` — the prefix of every index key of that path.
pub fn encode_path(pointer: &str, out: &mut Vec<u8>) {
    push_escaped_bytes(pointer.as_bytes(), out);
}

/// Appends the scalar key of `value` (tag, then order-preserving bytes). Empty arrays and
/// objects have keys of their own, after strings; other containers are not scalars: returns
/// false and writes nothing for them.
pub fn encode_scalar(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Null => out.push(tag::NULL),
        Value::Bool(false) => out.push(tag::FALSE),
        Value::Bool(true) => out.push(tag::TRUE),
        Value::Number(n) => {
            out.push(tag::NUMBER);
            out.extend_from_slice(&encode_f64(number_f64(n)));
        }
        Value::String(s) => {
            out.push(tag::STRING);
            push_escaped_bytes(s.as_bytes(), out);
        }
        Value::Array(a) if a.is_empty() => out.push(tag::EMPTY_ARRAY),
        Value::Object(o) if o.is_empty() => out.push(tag::EMPTY_OBJECT),
        Value::Array(_) | Value::Object(_) => return false,
    }
    true
}

/// The full index key of (pointer, scalar, id). `value` must be a scalar.
pub fn index_key(pointer: &str, value: &Value, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(pointer.len() + id.len() + 16);
    encode_path(pointer, &mut out);
    encode_scalar(value, &mut out);
    out.extend_from_slice(id.as_bytes());
    out
}

/// Splits an index key back into (pointer, value, id). Numbers come back as f64 unless they
/// are integral and within ±2^53, which come back as integers.
pub fn decode_index_key(key: &[u8]) -> Result<(String, Value, String), PathError> {
    let (pointer, rest) = read_escaped(key).ok_or(PathError::CorruptKey)?;
    let (&tag_byte, rest) = rest.split_first().ok_or(PathError::CorruptKey)?;
    let (value, rest) = match tag_byte {
        tag::NULL => (Value::Null, rest),
        tag::FALSE => (Value::Bool(false), rest),
        tag::TRUE => (Value::Bool(true), rest),
        tag::EMPTY_ARRAY => (Value::Array(Vec::new()), rest),
        tag::EMPTY_OBJECT => (Value::Object(Map::new()), rest),
        tag::NUMBER => {
            let (bytes, rest) = rest.split_first_chunk::<8>().ok_or(PathError::CorruptKey)?;
            (decode_f64(*bytes).ok_or(PathError::CorruptKey)?, rest)
        }
        tag::STRING => {
            let (s, rest) = read_escaped(rest).ok_or(PathError::CorruptKey)?;
            (Value::String(s), rest)
        }
        _ => return Err(PathError::CorruptKey),
    };
    let id = std::str::from_utf8(rest).map_err(|_| PathError::CorruptKey)?;
    Ok((pointer, value, id.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Private helpers

/// Longest excerpt of a refused path kept in the error, in bytes.
const ERROR_PATH_BYTES: usize = 100;

fn invalid(path: &str, reason: String) -> PathError {
    let path = if path.len() <= ERROR_PATH_BYTES {
        path.to_owned()
    } else {
        let mut end = ERROR_PATH_BYTES;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &path[..end])
    };
    PathError::Invalid { path, reason }
}

/// Appends `key` as a pointer segment (`~` → `~0`, `/` → `~1`).
fn push_escaped(buf: &mut String, key: &str) {
    if !key.contains(['~', '/']) {
        buf.push_str(key);
        return;
    }
    for ch in key.chars() {
        match ch {
            '~' => buf.push_str("~0"),
            '/' => buf.push_str("~1"),
            _ => buf.push(ch),
        }
    }
}

/// Appends the unescaped form of one pointer segment (`~1` → `/`, `~0` → `~`, in one pass,
/// which is the RFC 6901 order). A `~` not followed by `0` or `1` is kept as it is; the
/// return value says whether every escape was valid.
fn unescape_into(seg: &str, out: &mut String) -> bool {
    if !seg.contains('~') {
        out.push_str(seg);
        return true;
    }
    let mut valid = true;
    let mut chars = seg.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '~' {
            out.push(ch);
            continue;
        }
        match chars.peek() {
            Some('0') => {
                chars.next();
                out.push('~');
            }
            Some('1') => {
                chars.next();
                out.push('/');
            }
            _ => {
                valid = false;
                out.push('~');
            }
        }
    }
    valid
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(seg: &str) -> Option<usize> {
    let bytes = seg.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    seg.parse().ok()
}

fn collect_leaves<'a>(value: &'a Value, buf: &mut String, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            let len = buf.len();
            for (key, v) in map {
                buf.push('/');
                push_escaped(buf, key);
                collect_leaves(v, buf, out);
                buf.truncate(len);
            }
        }
        Value::Array(items) => {
            let len = buf.len();
            for (i, v) in items.iter().enumerate() {
                push_index(buf, i);
                collect_leaves(v, buf, out);
                buf.truncate(len);
            }
        }
        _ => out.push((buf.clone(), value)),
    }
}

/// Appends `/<i>`.
fn push_index(buf: &mut String, i: usize) {
    use std::fmt::Write;
    buf.push('/');
    let _ = write!(buf, "{i}");
}

/// Depth-first walk of a body collecting path index entries.
struct IndexWalk<'a, 'o> {
    /// The positional pointer of the current node.
    buf: String,
    /// Where the `*` variants of `buf` are built.
    scratch: String,
    /// Byte ranges in `buf` of the array index segments on the current path (without `/`).
    index_ranges: Vec<(usize, usize)>,
    sink: &'o mut dyn FnMut(&str, &'a Value),
}

impl<'a> IndexWalk<'a, '_> {
    fn visit(&mut self, value: &'a Value) {
        match value {
            Value::Object(map) if map.is_empty() => self.leaf(value),
            Value::Array(items) if items.is_empty() => self.leaf(value),
            Value::Object(map) => {
                let len = self.buf.len();
                for (key, v) in map {
                    self.buf.push('/');
                    push_escaped(&mut self.buf, key);
                    self.visit(v);
                    self.buf.truncate(len);
                }
            }
            Value::Array(items) => {
                let len = self.buf.len();
                for (i, v) in items.iter().enumerate() {
                    push_index(&mut self.buf, i);
                    self.index_ranges.push((len + 1, self.buf.len()));
                    self.visit(v);
                    self.index_ranges.pop();
                    self.buf.truncate(len);
                }
            }
            _ => self.leaf(value),
        }
    }

    fn leaf(&mut self, value: &'a Value) {
        let k = self.index_ranges.len();
        (self.sink)(&self.buf, value);
        if k == 0 {
            return;
        }
        if k <= 3 {
            // Every combination of positional / `*`, mask 0 (all positional) already given.
            for mask in 1u32..(1 << k) {
                self.variant(|i| mask & (1 << i) != 0);
                (self.sink)(&self.scratch, value);
            }
        } else {
            self.variant(|_| true);
            (self.sink)(&self.scratch, value);
        }
    }

    /// Puts in `scratch` the current pointer with the array index segments `i` for which
    /// `star(i)` replaced by `*`.
    fn variant(&mut self, star: impl Fn(usize) -> bool) {
        let s = &mut self.scratch;
        s.clear();
        let mut last = 0;
        for (i, &(start, end)) in self.index_ranges.iter().enumerate() {
            if star(i) {
                s.push_str(&self.buf[last..start]);
                s.push('*');
                last = end;
            }
        }
        s.push_str(&self.buf[last..]);
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(false) => 1,
        Value::Bool(true) => 2,
        Value::Number(_) => 3,
        Value::String(_) => 4,
        Value::Array(_) => 5,
        Value::Object(_) => 6,
    }
}

/// A number as an exact integer when it is one, else as a float.
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &serde_json::Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(0.0))
    }
}

/// The f64 a number is indexed as (integers converted with `as f64`).
fn number_f64(n: &serde_json::Number) -> f64 {
    match num(n) {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// Numbers by their exact mathematical value, which is a total order (so sorting with it is
/// sound) and never contradicts the order of their f64 keys: rounding to f64 is monotone.
fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or_else(|| x.total_cmp(&y)),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn compare_int_float(i: i128, f: f64) -> Ordering {
    let rounded = i as f64;
    match rounded.partial_cmp(&f) {
        // `f` is `i` rounded, hence integral and finite: compare exactly.
        Some(Ordering::Equal) => i.cmp(&(f as i128)),
        Some(order) => order,
        // NaN (not representable in JSON): after every number.
        None => Ordering::Less,
    }
}

/// Order-preserving big-endian bytes of a float; -0.0 is keyed as 0.0.
fn encode_f64(f: f64) -> [u8; 8] {
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let key = if bits & (1 << 63) != 0 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    key.to_be_bytes()
}

/// Inverse of [`encode_f64`], as a JSON number: integral values within ±2^53 as integers.
/// `None` for NaN and infinities, which JSON cannot hold.
fn decode_f64(bytes: [u8; 8]) -> Option<Value> {
    let key = u64::from_be_bytes(bytes);
    let bits = if key & (1 << 63) != 0 {
        key ^ (1 << 63)
    } else {
        !key
    };
    let f = f64::from_bits(bits);
    const MAX_SAFE: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.is_finite() && f.fract() == 0.0 && f.abs() <= MAX_SAFE {
        Some(Value::from(f as i64))
    } else {
        serde_json::Number::from_f64(f).map(Value::Number)
    }
}

/// Appends `bytes` with 0x00 → 0x00 0xFF, then the terminator 0x00 0x01.
fn push_escaped_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads escaped bytes up to the terminator 0x00 0x01: the UTF-8 text and what follows.
fn read_escaped(bytes: &[u8]) -> Option<(String, &[u8])> {
    let mut text = Vec::new();
    let mut i = 0;
    loop {
        let b = *bytes.get(i)?;
        if b != 0 {
            text.push(b);
            i += 1;
            continue;
        }
        match *bytes.get(i + 1)? {
            0xFF => {
                text.push(0);
                i += 2;
            }
            0x01 => {
                let text = String::from_utf8(text).ok()?;
                return Some((text, &bytes[i + 2..]));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn entries(v: Value) -> Vec<(String, Value)> {
        let body = obj(v);
        index_entries(&body)
            .into_iter()
            .map(|(p, v)| (p, v.clone()))
            .collect()
    }

    fn e(p: &str, v: Value) -> (String, Value) {
        (p.to_owned(), v)
    }

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(encode_scalar(v, &mut out));
        out
    }

    fn reason(r: Result<String, PathError>) -> String {
        match r {
            Err(PathError::Invalid { reason, .. }) => reason,
            other => panic!("expected an invalid path, got {other:?}"),
        }
    }

    // --- normalize / segments ---------------------------------------------------------------

    #[test]
    fn normalize_adds_leading_slash() {
        assert_eq!(normalize("address/city").unwrap(), "/address/city");
        assert_eq!(normalize("/address/city").unwrap(), "/address/city");
        assert_eq!(normalize("tags/*").unwrap(), "/tags/*");
        assert_eq!(normalize("a~0b~1c").unwrap(), "/a~0b~1c");
        assert_eq!(normalize("x").unwrap(), "/x");
    }

    #[test]
    fn normalize_allows_empty_segments() {
        assert_eq!(normalize("a//b").unwrap(), "/a//b");
        assert_eq!(normalize("a/").unwrap(), "/a/");
        assert_eq!(normalize("//").unwrap(), "//");
    }

    #[test]
    fn normalize_refuses_empty() {
        assert!(reason(normalize("")).contains("empty"));
        assert!(reason(normalize("/")).contains("empty"));
    }

    #[test]
    fn normalize_refuses_bad_escapes() {
        for bad in ["a~", "a~2", "/~", "~x/b", "a/b~/c", "~~0"] {
            let r = reason(normalize(bad));
            assert!(r.contains("'~'"), "{bad}: {r}");
            assert_eq!(r, r.to_lowercase());
        }
    }

    #[test]
    fn normalize_length_limit() {
        let ok = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(normalize(&ok).unwrap(), ok);
        assert_eq!(normalize(&ok[1..]).unwrap(), ok);
        let long = "a".repeat(MAX_PATH_BYTES);
        let err = normalize(&long).unwrap_err();
        let PathError::Invalid { path, reason } = err else {
            panic!("wrong error");
        };
        assert!(reason.contains("4096"), "{reason}");
        assert!(path.len() < 200, "the path in the error is truncated");
        // Truncation respects char boundaries.
        let long = "é".repeat(MAX_PATH_BYTES);
        assert!(normalize(&long).is_err());
    }

    #[test]
    fn error_message_is_lowercase() {
        let msg = normalize("a~3").unwrap_err().to_string();
        assert!(msg.starts_with("invalid path"), "{msg}");
        assert_eq!(PathError::CorruptKey.to_string(), "corrupt index key");
    }

    #[test]
    fn segments_unescape() {
        assert_eq!(segments("/a~1b/c"), vec!["a/b", "c"]);
        assert_eq!(segments("/m~0n"), vec!["m~n"]);
        // RFC 6901: `~01` is `~1` literally, not `/`.
        assert_eq!(segments("/~01"), vec!["~1"]);
        assert_eq!(segments("/~10"), vec!["/0"]);
        assert_eq!(segments("/a//b/"), vec!["a", "", "b", ""]);
        assert_eq!(segments("/"), vec![""]);
        assert!(segments("").is_empty());
        // Not normalized: tolerated, never a panic.
        assert_eq!(segments("a/b"), vec!["a", "b"]);
        assert_eq!(segments("/a~"), vec!["a~"]);
        assert_eq!(segments("/é~1ü"), vec!["é/ü"]);
    }

    // --- leaf_values --------------------------------------------------------------------------

    #[test]
    fn leaf_values_positional_in_document_order() {
        let body = obj(json!({
            "_id": "z", "_rev": "1-x",
            "name": "Ann",
            "address": {"city": "Paris", "zip": 75001},
            "tags": ["x", "y"],
            "a/b": {"m~n": true},
            "empty": [], "none": {},
            "nested": [[1, null], {"k": false}],
        }));
        let got: Vec<(String, Value)> = leaf_values(&body)
            .into_iter()
            .map(|(p, v)| (p, v.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                e("/a~1b/m~0n", json!(true)),
                e("/address/city", json!("Paris")),
                e("/address/zip", json!(75001)),
                e("/name", json!("Ann")),
                e("/nested/0/0", json!(1)),
                e("/nested/0/1", json!(null)),
                e("/nested/1/k", json!(false)),
                e("/tags/0", json!("x")),
                e("/tags/1", json!("y")),
            ]
        );
    }

    #[test]
    fn leaf_values_skips_only_top_level_underscore() {
        let body = obj(json!({"_private": 1, "a": {"_kept": 2}}));
        let got = leaf_values(&body);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "/a/_kept");
        assert!(leaf_values(&Map::new()).is_empty());
    }

    #[test]
    fn leaf_values_empty_keys() {
        let body = obj(json!({"": {"": 1}}));
        let got = leaf_values(&body);
        assert_eq!(got, vec![("//".to_owned(), &json!(1))]);
        assert_eq!(
            values_at(&Value::Object(body.clone()), "//"),
            vec![&json!(1)]
        );
    }

    // --- index_entries ------------------------------------------------------------------------

    #[test]
    fn index_entries_nested_example() {
        let got = entries(json!({
            "a": {"b": [{"c": 1}, {"c": 2}]},
            "tags": ["x", "y", "x"],
            "_id": "z",
        }));
        assert_eq!(
            got,
            vec![
                e("/a/b/*/c", json!(1)),
                e("/a/b/*/c", json!(2)),
                e("/a/b/0/c", json!(1)),
                e("/a/b/1/c", json!(2)),
                e("/tags/*", json!("x")),
                e("/tags/*", json!("y")),
                e("/tags/0", json!("x")),
                e("/tags/1", json!("y")),
                e("/tags/2", json!("x")),
            ]
        );
    }

    #[test]
    fn index_entries_scalars_without_arrays() {
        let got = entries(json!({"n": null, "b": true, "s": "x", "o": {"p": 1.5}, "_r": 1}));
        assert_eq!(
            got,
            vec![
                e("/b", json!(true)),
                e("/n", json!(null)),
                e("/o/p", json!(1.5)),
                e("/s", json!("x")),
            ]
        );
        assert!(entries(json!({})).is_empty());
        // Empty containers are indexed too, so `exists` finds them.
        let got = entries(json!({"a": [], "b": {}, "c": [[], {}]}));
        let pointers: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/a", "/b", "/c/*", "/c/*", "/c/0", "/c/1"]);
        let key = index_key("/a", &json!([]), "d");
        assert_eq!(
            decode_index_key(&key).unwrap(),
            ("/a".to_owned(), json!([]), "d".to_owned())
        );
    }

    #[test]
    fn index_entries_two_array_levels_give_all_combinations() {
        let got = entries(json!({"m": [[10, 20], [30]]}));
        let pointers: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/m/*/*", "/m/*/*", "/m/*/*", // 10, 20, 30
                "/m/*/0", "/m/*/0", "/m/*/1", // 10, 30; 20
                "/m/0/*", "/m/0/*", "/m/0/0", "/m/0/1", // 10, 20; 10; 20
                "/m/1/*", "/m/1/0", // 30; 30
            ]
        );
        assert!(got.contains(&e("/m/*/0", json!(30))));
        assert!(got.contains(&e("/m/1/*", json!(30))));
        // Sorted by value within a pointer.
        assert_eq!(got[0].1, json!(10));
        assert_eq!(got[1].1, json!(20));
        assert_eq!(got[2].1, json!(30));
    }

    #[test]
    fn index_entries_three_levels_give_eight_pointers() {
        let got = entries(json!({"a": [{"b": [[{"c": "v"}]]}]}));
        let pointers: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/a/*/b/*/*/c",
                "/a/*/b/*/0/c",
                "/a/*/b/0/*/c",
                "/a/*/b/0/0/c",
                "/a/0/b/*/*/c",
                "/a/0/b/*/0/c",
                "/a/0/b/0/*/c",
                "/a/0/b/0/0/c",
            ]
        );
    }

    #[test]
    fn index_entries_deep_arrays_give_two_pointers() {
        let got = entries(json!({"d": [[[[7]]]]}));
        assert_eq!(
            got,
            vec![e("/d/*/*/*/*", json!(7)), e("/d/0/0/0/0", json!(7))]
        );
        let got = entries(json!({"d": [[[[[1, 2]]]]]}));
        assert_eq!(
            got,
            vec![
                e("/d/*/*/*/*/*", json!(1)),
                e("/d/*/*/*/*/*", json!(2)),
                e("/d/0/0/0/0/0", json!(1)),
                e("/d/0/0/0/0/1", json!(2)),
            ]
        );
    }

    #[test]
    fn index_entries_escape_keys_and_mixed_values() {
        let got = entries(json!({"a/b": ["~", 2, null, true, "x", 2.0]}));
        let star: Vec<&Value> = got
            .iter()
            .filter(|(p, _)| p == "/a~1b/*")
            .map(|(_, v)| v)
            .collect();
        // 2 and 2.0 are the same value (same key): kept once.
        assert_eq!(
            star,
            vec![
                &json!(null),
                &json!(true),
                &json!(2),
                &json!("x"),
                &json!("~")
            ]
        );
        assert!(got.contains(&e("/a~1b/0", json!("~"))));
        assert!(got.contains(&e("/a~1b/5", json!(2.0))));
    }

    #[test]
    fn index_entries_sorted_and_unique() {
        let got = entries(json!({
            "z": [1, 1, "1", [1, 1]], "y": {"k": [{"k": [0, -1]}]}, "x": [true, false, true]
        }));
        for w in got.windows(2) {
            let order = w[0].0.cmp(&w[1].0).then_with(|| compare(&w[0].1, &w[1].1));
            assert_eq!(order, Ordering::Less, "{w:?}");
        }
    }

    #[test]
    fn index_entries_consistent_with_values_at() {
        let doc = json!({"a": {"b": [{"c": 1}, {"c": [2, 3]}]}, "t": ["x", ["y"]]});
        let body = obj(doc.clone());
        for (pointer, value) in index_entries(&body) {
            assert!(
                values_at(&doc, &pointer).contains(&value),
                "{pointer} {value}"
            );
        }
    }

    // --- values_at ----------------------------------------------------------------------------

    #[test]
    fn values_at_walks_objects_and_arrays() {
        let doc = json!({
            "a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]},
            "tags": ["x", "y"],
            "o": {"*": "star", "k": "v"},
            "a/b": {"m~n": 9},
            "arr": [[1, 2], [3]],
        });
        assert_eq!(values_at(&doc, "/a/b/*/c"), vec![&json!(1), &json!(2)]);
        assert_eq!(values_at(&doc, "/a/b/1/c"), vec![&json!(2)]);
        assert_eq!(values_at(&doc, "/a/b/2/c"), Vec::<&Value>::new());
        assert_eq!(values_at(&doc, "/tags/*"), vec![&json!("x"), &json!("y")]);
        assert_eq!(values_at(&doc, "/tags/0"), vec![&json!("x")]);
        assert_eq!(values_at(&doc, "/tags"), vec![&json!(["x", "y"])]);
        assert_eq!(values_at(&doc, "/o/*"), vec![&json!("star")]);
        assert_eq!(values_at(&doc, "/a~1b/m~0n"), vec![&json!(9)]);
        assert_eq!(
            values_at(&doc, "/arr/*/*"),
            vec![&json!(1), &json!(2), &json!(3)]
        );
        assert_eq!(values_at(&doc, "/arr/*/1"), vec![&json!(2)]);
        assert_eq!(values_at(&doc, ""), vec![&doc]);
    }

    #[test]
    fn values_at_refuses_bad_pointers_and_indices() {
        let doc = json!({"t": ["a", "b"], "x": 1, "01": "key"});
        let none = Vec::<&Value>::new();
        assert_eq!(values_at(&doc, "t/0"), none, "no leading slash");
        assert_eq!(values_at(&doc, "/t/01"), none, "leading zero");
        assert_eq!(values_at(&doc, "/t/-"), none);
        assert_eq!(values_at(&doc, "/t/2"), none);
        assert_eq!(values_at(&doc, "/t/+1"), none);
        assert_eq!(values_at(&doc, "/t/ 1"), none);
        assert_eq!(values_at(&doc, "/t/99999999999999999999999999"), none);
        assert_eq!(values_at(&doc, "/x/0"), none, "into a scalar");
        assert_eq!(values_at(&doc, "/x/*"), none);
        assert_eq!(values_at(&doc, "/t~2"), none, "bad escape");
        assert_eq!(values_at(&doc, "/missing"), none);
        assert_eq!(
            values_at(&doc, "/01"),
            vec![&json!("key")],
            "object keys are not indices"
        );
        assert_eq!(values_at(&json!([5]), "/0"), vec![&json!(5)]);
        assert_eq!(values_at(&json!(5), "/0"), none);
    }

    // --- compare ------------------------------------------------------------------------------

    #[test]
    fn compare_ranks_types() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(i64::MIN),
            json!(-1),
            json!(-0.5),
            json!(0),
            json!(0.5),
            json!(1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e300),
            json!(""),
            json!("A"),
            json!("a"),
            json!("ab"),
            json!("é"),
            json!([]),
            json!({}),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn compare_numbers_by_value() {
        assert_eq!(compare(&json!(1), &json!(1.0)), Ordering::Equal);
        assert_eq!(compare(&json!(0.0), &json!(-0.0)), Ordering::Equal);
        assert_eq!(compare(&json!(2), &json!(10)), Ordering::Less);
        assert_eq!(compare(&json!(-3), &json!(2u64)), Ordering::Less);
        // Exact for integers beyond 2^53.
        assert_eq!(
            compare(&json!(u64::MAX - 1), &json!(u64::MAX)),
            Ordering::Less
        );
        assert_eq!(
            compare(&json!(i64::MIN), &json!(i64::MIN + 1)),
            Ordering::Less
        );
        assert_eq!(
            compare(&json!(i64::MAX as u64 + 1), &json!(i64::MAX)),
            Ordering::Greater
        );
        // Integers and floats compare by exact value.
        let two53 = 9_007_199_254_740_992_i64;
        assert_eq!(
            compare(&json!(two53 + 1), &json!(two53 as f64)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&json!(two53 as f64), &json!(two53)),
            Ordering::Equal
        );
        assert_eq!(
            compare(&json!(u64::MAX), &json!(18446744073709551616.0)),
            Ordering::Less
        );
        assert_eq!(compare(&json!(1), &json!(1.5)), Ordering::Less);
        assert_eq!(compare(&json!(-1.5), &json!(-1)), Ordering::Less);
        // Containers of one kind are equal.
        assert_eq!(compare(&json!([1]), &json!([0, 2])), Ordering::Equal);
        assert_eq!(compare(&json!({"a": 1}), &json!({})), Ordering::Equal);
    }

    // --- key encoding -------------------------------------------------------------------------

    #[test]
    fn encode_path_escapes_nul() {
        let mut out = Vec::new();
        encode_path("/a\0b", &mut out);
        assert_eq!(out, b"/a\x00\xFFb\x00\x01");
        let mut out = Vec::new();
        encode_path("", &mut out);
        assert_eq!(out, [0, 1]);
    }

    #[test]
    fn encode_scalar_layout() {
        assert_eq!(enc(&json!(null)), [tag::NULL]);
        assert_eq!(enc(&json!(false)), [tag::FALSE]);
        assert_eq!(enc(&json!(true)), [tag::TRUE]);
        assert_eq!(enc(&json!(0)), [tag::NUMBER, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(&json!(-0.0)), enc(&json!(0)));
        assert_eq!(enc(&json!(1)), enc(&json!(1.0)));
        let mut one = vec![tag::NUMBER];
        one.extend_from_slice(&(1.0f64.to_bits() ^ (1 << 63)).to_be_bytes());
        assert_eq!(enc(&json!(1)), one);
        let mut minus = vec![tag::NUMBER];
        minus.extend_from_slice(&(!(-1.0f64).to_bits()).to_be_bytes());
        assert_eq!(enc(&json!(-1)), minus);
        assert_eq!(enc(&json!("a\0")), b"\x30a\x00\xFF\x00\x01");
        assert_eq!(enc(&json!("")), [tag::STRING, 0, 1]);
        let mut out = vec![9];
        assert!(!encode_scalar(&json!([1]), &mut out));
        assert!(!encode_scalar(&json!({"a": 1}), &mut out));
        assert_eq!(out, [9], "nothing written for containers");
    }

    #[test]
    fn index_key_layout_and_decode() {
        let key = index_key("/tags/*", &json!("x"), "doc1");
        assert_eq!(key, b"/tags/*\x00\x01\x30x\x00\x01doc1");
        assert_eq!(
            decode_index_key(&key).unwrap(),
            ("/tags/*".to_owned(), json!("x"), "doc1".to_owned())
        );
        let key = index_key("/n", &json!(3.0), "");
        assert_eq!(decode_index_key(&key).unwrap().1, json!(3));
        let key = index_key("/n", &json!(-2.5), "i");
        assert_eq!(decode_index_key(&key).unwrap().1, json!(-2.5));
        let key = index_key("/n", &json!(1e20), "i");
        assert_eq!(decode_index_key(&key).unwrap().1, json!(1e20));
        let key = index_key("/n", &json!(9_007_199_254_740_992_i64), "i");
        assert_eq!(
            decode_index_key(&key).unwrap().1,
            json!(9_007_199_254_740_992_i64)
        );
        let key = index_key("/n", &json!(-9_007_199_254_740_992_i64), "i");
        assert_eq!(
            decode_index_key(&key).unwrap().1,
            json!(-9_007_199_254_740_992_i64)
        );
        let key = index_key("/n", &json!(9_007_199_254_740_994_i64), "i");
        let v = decode_index_key(&key).unwrap().1;
        assert!(v.is_f64(), "beyond 2^53 numbers come back as floats: {v}");
        assert_eq!(v.as_f64(), Some(9_007_199_254_740_994.0));
        for v in [json!(null), json!(true), json!(false), json!("a\0b/é")] {
            let key = index_key("/p\0q", &v, "id\0x");
            assert_eq!(
                decode_index_key(&key).unwrap(),
                ("/p\0q".to_owned(), v, "id\0x".to_owned())
            );
        }
    }

    #[test]
    fn decode_refuses_corrupt_keys() {
        let corrupt = [
            &b""[..],
            b"/a",
            b"/a\x00",
            b"/a\x00\x02",
            b"/a\x00\x01",
            b"/a\x00\x01\x99",
            b"/a\x00\x01\x20\x00",
            b"/a\x00\x01\x30abc",
            b"/a\x00\x01\x30abc\x00",
            b"/a\x00\x01\x30\xFF\x00\x01",
            b"\xFF\x00\x01\x05",
            b"/a\x00\x01\x05\xFF",
            // NaN and infinity.
            b"/a\x00\x01\x20\xFF\xF8\x00\x00\x00\x00\x00\x00",
            b"/a\x00\x01\x20\xFF\xF0\x00\x00\x00\x00\x00\x00",
        ];
        for key in corrupt {
            assert_eq!(decode_index_key(key), Err(PathError::CorruptKey), "{key:?}");
        }
        // -0.0 on disk decodes as 0.
        let mut key = b"/a\x00\x01\x20".to_vec();
        key.extend_from_slice(&(!(-0.0f64).to_bits()).to_be_bytes());
        assert_eq!(decode_index_key(&key).unwrap().1, json!(0));
    }

    #[test]
    fn keys_of_one_path_sort_by_value_then_id() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e10),
            json!(-3),
            json!(0),
            json!(0.25),
            json!(7),
            json!(u64::MAX),
            json!(""),
            json!("a"),
            json!("a\0"),
            json!("a\0b"),
            json!("aa"),
        ];
        let mut keys = Vec::new();
        for v in &values {
            for id in ["a", "b"] {
                keys.push(index_key("/p", v, id));
            }
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let prefix = {
            let mut out = Vec::new();
            encode_path("/p", &mut out);
            out
        };
        assert!(keys.iter().all(|k| k.starts_with(&prefix)));
        // `/p` sorts before `/p/x` and `/pa`, and their keys don't share `/p`'s prefix.
        for other in ["/p/x", "/pa", "/p\0"] {
            let k = index_key(other, &json!(null), "a");
            assert!(!k.starts_with(&prefix));
            assert!(keys.iter().all(|key| key < &k));
        }
    }

    // --- properties ---------------------------------------------------------------------------

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-20i64..20).prop_map(Value::from),
            any::<f64>()
                .prop_filter_map("finite", serde_json::Number::from_f64)
                .prop_map(Value::Number),
            prop::sample::select(vec![
                0.0,
                -0.0,
                0.5,
                -0.5,
                1.0,
                -1.0,
                9_007_199_254_740_992.0,
                -9_007_199_254_740_992.0,
                9_223_372_036_854_775_808.0,
                18_446_744_073_709_551_616.0,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                -f64::MIN_POSITIVE,
                5e-324,
            ])
            .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[a\\x00b]{0,4}".prop_map(Value::String),
        ]
    }

    fn pointer() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[/a\\x00~01]{0,6}"]
    }

    fn same_f64(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (number_f64(x), number_f64(y));
                x == y
            }
            _ => false,
        }
    }

    fn path_key(p: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_path(p, &mut out);
        out
    }

    proptest! {
        #[test]
        fn prop_compare_agrees_with_encoding(a in scalar(), b in scalar()) {
            let (ea, eb) = (enc(&a), enc(&b));
            if same_f64(&a, &b) {
                prop_assert_eq!(ea, eb);
            } else {
                prop_assert_eq!(compare(&a, &b), ea.cmp(&eb), "{} vs {}", a, b);
            }
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }

        #[test]
        fn prop_compare_is_transitive(a in scalar(), b in scalar(), c in scalar()) {
            let mut v = [a, b, c];
            v.sort_by(compare);
            prop_assert_ne!(compare(&v[0], &v[1]), Ordering::Greater);
            prop_assert_ne!(compare(&v[1], &v[2]), Ordering::Greater);
            prop_assert_ne!(compare(&v[0], &v[2]), Ordering::Greater);
        }

        #[test]
        fn prop_path_encoding_order_and_prefix_free(p in pointer(), q in pointer()) {
            let (ep, eq) = (path_key(&p), path_key(&q));
            prop_assert_eq!(ep.cmp(&eq), p.as_bytes().cmp(q.as_bytes()));
            if p != q {
                prop_assert!(!eq.starts_with(&ep));
                prop_assert!(!ep.starts_with(&eq));
            }
        }

        #[test]
        fn prop_keys_sort_by_path_value_id(
            p1 in pointer(), v1 in scalar(), id1 in any::<String>(),
            p2 in pointer(), v2 in scalar(), id2 in any::<String>(),
        ) {
            let (k1, k2) = (index_key(&p1, &v1, &id1), index_key(&p2, &v2, &id2));
            let value_order = if same_f64(&v1, &v2) {
                Ordering::Equal
            } else {
                compare(&v1, &v2)
            };
            let expected = p1
                .as_bytes()
                .cmp(p2.as_bytes())
                .then(value_order)
                .then_with(|| id1.as_bytes().cmp(id2.as_bytes()));
            prop_assert_eq!(k1.cmp(&k2), expected);
            prop_assert!(k1.starts_with(&path_key(&p1)));
            if p1 != p2 {
                prop_assert!(!k2.starts_with(&path_key(&p1)));
            }
        }

        #[test]
        fn prop_index_key_round_trips(p in pointer(), v in scalar(), id in any::<String>()) {
            let key = index_key(&p, &v, &id);
            let (p2, v2, id2) = decode_index_key(&key).unwrap();
            prop_assert_eq!(&p2, &p);
            prop_assert_eq!(&id2, &id);
            prop_assert_eq!(compare(&v, &v2) == Ordering::Equal || same_f64(&v, &v2), true);
            prop_assert_eq!(index_key(&p2, &v2, &id2), key);
            if let Value::Number(n) = &v2 {
                let f = number_f64(n);
                let small_int = f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0;
                prop_assert_eq!(n.is_i64(), small_int, "{}", n);
            } else {
                prop_assert_eq!(&v2, &v);
            }
        }

        #[test]
        fn prop_decode_never_panics(key in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_index_key(&key);
        }

        #[test]
        fn prop_decode_never_panics_near_valid(
            p in pointer(), v in scalar(), cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(), byte in any::<u8>(),
        ) {
            let mut key = index_key(&p, &v, "id");
            let at = flip.index(key.len());
            key[at] = byte;
            let _ = decode_index_key(&key);
            key.truncate(cut.index(key.len() + 1));
            let _ = decode_index_key(&key);
        }

        #[test]
        fn prop_normalize_and_segments_never_panic(s in any::<String>()) {
            if let Ok(p) = normalize(&s) {
                prop_assert!(p.starts_with('/'));
                prop_assert!(p.len() <= MAX_PATH_BYTES);
                prop_assert_eq!(normalize(&p), Ok(p.clone()), "idempotent");
                prop_assert_eq!(segments(&p).len(), p.split('/').count() - 1);
            }
            let _ = segments(&s);
            let _ = values_at(&serde_json::json!({"a": [1, {"b": 2}]}), &s);
        }

        #[test]
        fn prop_leaves_round_trip_through_values_at(doc in json_object()) {
            let Value::Object(body) = &doc else {
                unreachable!("json_object makes objects")
            };
            for (pointer, value) in leaf_values(body) {
                let found = values_at(&doc, &pointer);
                prop_assert_eq!(found.len(), 1, "{}", pointer);
                prop_assert!(std::ptr::eq(found[0], value));
                // Positional pointers are valid paths (but for `/`, the top-level key "").
                if pointer != "/" {
                    prop_assert_eq!(normalize(&pointer), Ok(pointer.clone()));
                }
                prop_assert!(!segments(&pointer).is_empty());
            }
            let entries = index_entries(body);
            for w in entries.windows(2) {
                let order = w[0].0.cmp(&w[1].0).then_with(|| compare(w[0].1, w[1].1));
                prop_assert_eq!(order, Ordering::Less);
            }
            for (pointer, value) in &entries {
                prop_assert!(values_at(&doc, pointer).contains(value), "{}", pointer);
            }
            // Every leaf is indexed under its positional pointer.
            for (pointer, value) in leaf_values(body) {
                prop_assert!(entries.iter().any(|(p, v)| *p == pointer && *v == value));
            }
            // The one-walk keys are exactly the entries' keys.
            let mut keys: Vec<Vec<u8>> =
                entries.iter().map(|(p, v)| index_key(p, v, "doc")).collect();
            keys.sort_unstable();
            keys.dedup();
            prop_assert_eq!(index_keys(body, "doc"), keys);
        }
    }

    fn json_object() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(Value::from),
            "[xy]{0,2}".prop_map(Value::String),
        ];
        let tree = leaf.prop_recursive(5, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a_/~*]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[ab_/~]{0,2}", tree, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }
}
