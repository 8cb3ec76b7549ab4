//! Bad input (DESIGN §2, §6, §7): a table of malformed, oversized and out-of-range requests,
//! each answered with the right 4xx and a `{"error": kind, "reason": text}` body. After every
//! row the node must still serve (`GET /health`) and the barrel's data must be intact: the same
//! documents with the same revisions and bodies, the same counts, seq, local document,
//! attachment and changes feed.
//!
//! The table is sent over a raw HTTP/1.1 socket, so that every row goes out byte for byte as
//! written (invalid UTF-8 in the path or in a header, a `Content-Length` that announces more than
//! is sent, a chunked body, a 100 MiB body). The setup and the checks use the awc client of
//! `tests/common`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start, Http, TestNode};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;
/// A well-formed revision that no document has.
const UNKNOWN_REV: &str = "1-0123456789abcdef0123456789abcdef";
/// How long a row may take to be answered before it counts as a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// A body sent with a Content-Length pauses after this many bytes until the answer comes (or a
/// few seconds pass), so that "answered before the body was read" is a property we can observe.
const PAUSE_AFTER: u64 = 4 * MIB as u64;

// ---------------------------------------------------------------------------------------------
// The table

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` of the body as sent.
    Length,
    /// `Transfer-Encoding: chunked`: no length announced.
    Chunked,
    /// `Content-Length: n` announced, only the body (possibly nothing) sent.
    Announce(u64),
    /// No framing header added: the row's own headers say it.
    AsGiven,
}

/// One bad request and the answer it must get.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Arc<Vec<u8>>>,
    framing: Framing,
    status: u16,
    kind: &'static str,
}

fn row(name: impl Into<String>, method: &'static str, path: impl Into<String>) -> Row {
    Row {
        name: name.into(),
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        framing: Framing::Length,
        status: 0,
        kind: "",
    }
}

impl Row {
    /// A JSON body (`Content-Type: application/json`).
    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }

    /// A body without a content type.
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(Arc::new(body.into()));
        self
    }

    /// A body shared with other rows (built once).
    fn shared(mut self, body: &Arc<Vec<u8>>) -> Self {
        self.body = Some(Arc::clone(body));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    fn expect(mut self, status: u16, kind: &'static str) -> Self {
        self.status = status;
        self.kind = kind;
        self
    }

    fn bad(self) -> Self {
        self.expect(400, "bad_request")
    }

    /// Refused by the HTTP/1 parser before any route runs: `status` with an empty body.
    fn framing_error(self, status: u16) -> Self {
        self.expect(status, "")
    }
}

/// `{"a": [[[…]]]}` nesting `depth` arrays and objects in all (the document counts as one).
fn nested(depth: usize) -> Vec<u8> {
    let inner = depth - 1;
    let mut out = Vec::with_capacity(8 + 2 * inner);
    out.extend_from_slice(b"{\"a\":");
    out.extend(std::iter::repeat_n(b'[', inner));
    out.extend(std::iter::repeat_n(b']', inner));
    out.push(b'}');
    out
}

/// A valid JSON document of exactly `bytes` bytes.
fn padded_doc(bytes: usize) -> Vec<u8> {
    let (open, close) = (b"{\"pad\":\"", b"\"}");
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(open);
    out.resize(bytes - close.len(), b'x');
    out.extend_from_slice(close);
    out
}

/// A valid `_bulk_docs` body of exactly `bytes` bytes.
fn padded_bulk(bytes: usize) -> Vec<u8> {
    let (open, close) = (b"{\"docs\":[{\"pad\":\"", b"\"}]}");
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(open);
    out.resize(bytes - close.len(), b'x');
    out.extend_from_slice(close);
    out
}

/// The table; `k1` is the current revision of document k1.
fn table(k1: &str) -> Vec<Row> {
    let doc = "/barrels/b/docs/k1";
    // A new id for each row that writes a new document, so that a row wrongly accepted
    // does not change what the next row meets.
    let mut fresh = 0;
    let mut new = || {
        fresh += 1;
        format!("/barrels/b/docs/fresh{fresh}")
    };
    let post = "/barrels/b/docs";
    let bulk = "/barrels/b/_bulk_docs";
    let query = "/barrels/b/docs?";
    let changes = "/barrels/b/changes?";
    let long_id = "i".repeat(513);
    let long_name = "a".repeat(65);
    let upper_rev = k1.to_uppercase();
    let gen0_rev = format!("0-{}", &k1[2..]);
    let hundred_mib = Arc::new(padded_bulk(100 * MIB));
    let nine_mib = Arc::new(padded_doc(9 * MIB));
    vec![
        // Invalid JSON.
        row("truncated JSON", "PUT", new()).json(r#"{"a": 1"#).bad(),
        row("trailing garbage", "PUT", new())
            .json(r#"{"a": 1} x"#)
            .bad(),
        row("single quotes", "PUT", new()).json(r#"{'a': 1}"#).bad(),
        row("NaN", "PUT", new()).json(r#"{"a": NaN}"#).bad(),
        row("empty body", "PUT", new()).json("").bad(),
        row("invalid UTF-8 in a string", "PUT", new())
            .json(b"{\"a\": \"\xff\xfe\"}".to_vec())
            .bad(),
        row("truncated JSON, POST", "POST", post)
            .json(r#"{"a": "#)
            .bad(),
        // JSON that is not an object.
        row("array as document", "PUT", new()).json("[1, 2]").bad(),
        row("string as document", "PUT", new())
            .json(r#""doc""#)
            .bad(),
        row("number as document", "PUT", new()).json("42").bad(),
        row("null as document", "PUT", new()).json("null").bad(),
        row("array as document, POST", "POST", post)
            .json("[]")
            .bad(),
        // Reserved members of the wrong type, unknown reserved members.
        row("_id: 5", "POST", post).json(r#"{"_id": 5}"#).bad(),
        row("_rev: 1", "PUT", doc).json(r#"{"_rev": 1}"#).bad(),
        row("_deleted: \"yes\"", "PUT", doc)
            .json(format!(r#"{{"_rev": "{k1}", "_deleted": "yes"}}"#))
            .bad(),
        row("_attachments: 3", "PUT", doc)
            .json(format!(r#"{{"_rev": "{k1}", "_attachments": 3}}"#))
            .bad(),
        row("_revisions: 5", "PUT", doc)
            .json(format!(r#"{{"_rev": "{k1}", "_revisions": 5}}"#))
            .bad(),
        row("_revisions of the wrong shape", "PUT", doc)
            .json(r#"{"_revisions": {"start": "2", "ids": "x"}}"#)
            .bad(),
        row("_revisions that disagree with _rev", "PUT", doc)
            .json(format!(
                r#"{{"_rev": "{k1}", "_revisions": {{"start": 2, "ids": ["{}"]}}}}"#,
                &k1[2..]
            ))
            .bad(),
        row("reserved member _x", "PUT", doc)
            .json(format!(r#"{{"_rev": "{k1}", "_x": 1}}"#))
            .bad(),
        row("_id differs from the URL", "PUT", doc)
            .json(format!(r#"{{"_id": "k2", "_rev": "{k1}"}}"#))
            .bad(),
        row("_id _design/x in a POST", "POST", post)
            .json(r#"{"_id": "_design/x"}"#)
            .bad(),
        row("_id _local/x in a POST", "POST", post)
            .json(r#"{"_id": "_local/x"}"#)
            .bad(),
        row("inline attachment named _x", "PUT", new())
            .json(r#"{"_attachments": {"_x": {"content_type": "text/plain", "data": "aGk="}}}"#)
            .bad(),
        row("inline attachment not base64", "PUT", new())
            .json(r#"{"_attachments": {"a.txt": {"content_type": "text/plain", "data": "!!!"}}}"#)
            .bad(),
        // Nesting.
        row("nesting 65 levels", "PUT", new())
            .json(nested(65))
            .bad(),
        row("nesting 100,000 levels", "PUT", new())
            .json(nested(100_000))
            .bad(),
        row("nesting 100,000 levels, POST", "POST", post)
            .json(nested(100_000))
            .bad(),
        // Sizes.
        row("100 MiB _bulk_docs", "POST", bulk)
            .header("Content-Type", "application/json")
            .shared(&hundred_mib)
            .expect(413, "too_large"),
        row("9 MiB document", "PUT", new())
            .header("Content-Type", "application/json")
            .shared(&nine_mib)
            .expect(413, "too_large"),
        row("9 MiB document, chunked", "PUT", new())
            .header("Content-Type", "application/json")
            .shared(&nine_mib)
            .framing(Framing::Chunked)
            .expect(413, "too_large"),
        row("Content-Length 10 GB announced, nothing sent", "PUT", new())
            .json("")
            .framing(Framing::Announce(10_000_000_000))
            .expect(413, "too_large"),
        row(
            "Content-Length 9 MiB announced on _local",
            "PUT",
            "/barrels/b/local/big",
        )
        .json("")
        .framing(Framing::Announce(9 * MIB as u64))
        .expect(413, "too_large"),
        // Barrel names.
        row(
            "barrel ../x (encoded), read",
            "GET",
            "/barrels/..%2Fx/docs/k1",
        )
        .bad(),
        row("barrel ../x (encoded), create", "PUT", "/barrels/..%2Fx").bad(),
        row(
            "barrel ../x (encoded), write",
            "PUT",
            "/barrels/..%2Fx/docs/k1",
        )
        .json("{}")
        .bad(),
        row("barrel Users", "PUT", "/barrels/Users").bad(),
        row("barrel Users, query", "GET", "/barrels/Users/docs?age=eq.1").bad(),
        row("barrel a.b", "PUT", "/barrels/a.b").bad(),
        row("barrel of 65 chars", "PUT", format!("/barrels/{long_name}")).bad(),
        row("barrel _x", "PUT", "/barrels/_x").bad(),
        row("barrel 1a", "POST", "/barrels/1a").bad(),
        row("barrel with invalid UTF-8", "PUT", "/barrels/%FF%FE").bad(),
        row("barrel exists", "PUT", "/barrels/b").expect(412, "file_exists"),
        row("missing barrel, read", "GET", "/barrels/nope/docs/k1").expect(404, "not_found"),
        row("missing barrel, write", "PUT", "/barrels/nope/docs/k1")
            .json("{}")
            .expect(404, "not_found"),
        row("missing barrel, changes", "GET", "/barrels/nope/changes").expect(404, "not_found"),
        // Document ids.
        row(
            "id with invalid UTF-8, read",
            "GET",
            "/barrels/b/docs/%FF%FE",
        )
        .bad(),
        row(
            "id with invalid UTF-8, write",
            "PUT",
            "/barrels/b/docs/%FF%FE",
        )
        .json("{}")
        .bad(),
        row(
            "id of 513 bytes, write",
            "PUT",
            format!("/barrels/b/docs/{long_id}"),
        )
        .json("{}")
        .bad(),
        row(
            "id of 513 bytes, read",
            "GET",
            format!("/barrels/b/docs/{long_id}"),
        )
        .bad(),
        row("id of 513 bytes in a POST", "POST", post)
            .json(format!(r#"{{"_id": "{long_id}"}}"#))
            .bad(),
        row("id _design/x", "PUT", "/barrels/b/docs/_design%2Fx")
            .json("{}")
            .bad(),
        row("id _x", "PUT", "/barrels/b/docs/_x").json("{}").bad(),
        row(
            "id _local/x on the docs route",
            "PUT",
            "/barrels/b/docs/_local%2Fx",
        )
        .json("{}")
        .bad(),
        // Malformed revisions.
        row("_rev 1-xyz", "PUT", doc)
            .json(r#"{"_rev": "1-xyz"}"#)
            .bad(),
        row("_rev abc", "PUT", doc).json(r#"{"_rev": "abc"}"#).bad(),
        row("_rev with generation 0", "PUT", doc)
            .json(format!(r#"{{"_rev": "{gen0_rev}"}}"#))
            .bad(),
        row("_rev 0-1 on a document", "PUT", doc)
            .json(r#"{"_rev": "0-1"}"#)
            .bad(),
        row("_rev 0-1 on a new document", "PUT", new())
            .json(r#"{"_rev": "0-1"}"#)
            .bad(),
        row("_rev in upper-case hex", "PUT", doc)
            .json(format!(r#"{{"_rev": "{upper_rev}"}}"#))
            .bad(),
        row("?rev=abc on a write", "PUT", format!("{doc}?rev=abc"))
            .json("{}")
            .bad(),
        row(
            "?rev=0-… on a write",
            "PUT",
            format!("{doc}?rev={gen0_rev}"),
        )
        .json("{}")
        .bad(),
        row("If-Match: 1-xyz", "PUT", doc)
            .json("{}")
            .header("If-Match", "1-xyz")
            .bad(),
        row("If-Match in upper-case hex", "PUT", doc)
            .json("{}")
            .header("If-Match", format!("\"{upper_rev}\""))
            .bad(),
        row("?rev=abc on a read", "GET", format!("{doc}?rev=abc")).bad(),
        row(
            "?rev=1-xyz on a delete",
            "DELETE",
            format!("{doc}?rev=1-xyz"),
        )
        .bad(),
        row(
            "_rev and ?rev= disagree",
            "PUT",
            format!("{doc}?rev={UNKNOWN_REV}"),
        )
        .json(format!(r#"{{"_rev": "{k1}"}}"#))
        .bad(),
        // Unknown but well-formed revisions, missing revisions.
        row("unknown _rev", "PUT", doc)
            .json(format!(r#"{{"_rev": "{UNKNOWN_REV}"}}"#))
            .expect(409, "conflict"),
        row("unknown If-Match", "PUT", doc)
            .json("{}")
            .header("If-Match", format!("\"{UNKNOWN_REV}\""))
            .expect(409, "conflict"),
        row(
            "unknown ?rev= on a delete",
            "DELETE",
            format!("{doc}?rev={UNKNOWN_REV}"),
        )
        .expect(409, "conflict"),
        row("unknown _rev on a new document", "PUT", new())
            .json(format!(r#"{{"_rev": "{UNKNOWN_REV}"}}"#))
            .expect(409, "conflict"),
        row("update without _rev", "PUT", doc)
            .json(r#"{"a": 1}"#)
            .expect(409, "conflict"),
        row("DELETE without rev", "DELETE", doc).expect(409, "conflict"),
        row(
            "unknown ?rev= on a read",
            "GET",
            format!("{doc}?rev={UNKNOWN_REV}"),
        )
        .expect(404, "not_found"),
        row(
            "new_edits=false without _rev",
            "PUT",
            format!("{}?new_edits=false", new()),
        )
        .json(r#"{"a": 1}"#)
        .bad(),
        // Queries.
        row("unknown operator like", "GET", format!("{query}age=like.3")).bad(),
        row(
            "condition without operator",
            "GET",
            format!("{query}age=18"),
        )
        .bad(),
        row("in without a list", "GET", format!("{query}a=in.x")).bad(),
        row(
            "in with an open quote",
            "GET",
            format!("{query}a=in.(%22x)"),
        )
        .bad(),
        row("exists.maybe", "GET", format!("{query}a=exists.maybe")).bad(),
        row("limit=0", "GET", format!("{query}limit=0")).bad(),
        row("limit=abc", "GET", format!("{query}limit=abc")).bad(),
        row(
            "limit over the page size",
            "GET",
            format!("{query}limit=10000001"),
        )
        .bad(),
        row("order=~2", "GET", format!("{query}order=~2")).bad(),
        row("path with a bad escape", "GET", format!("{query}a~2=eq.1")).bad(),
        row("empty path", "GET", format!("{query}=eq.1")).bad(),
        row("cursor=!!!", "GET", format!("{query}cursor=!!!")).bad(),
        row("explain=maybe", "GET", format!("{query}explain=maybe")).bad(),
        // Changes feed parameters.
        row("since=abc", "GET", format!("{changes}since=abc")).bad(),
        row("since=-1", "GET", format!("{changes}since=-1")).bad(),
        row("feed=bogus", "GET", format!("{changes}feed=bogus")).bad(),
        row("filter=a/#/b", "GET", format!("{changes}filter=a/%23/b")).bad(),
        row("filter=sport+", "GET", format!("{changes}filter=sport%2B")).bad(),
        row("empty filter", "GET", format!("{changes}filter=")).bad(),
        row(
            "filter of 5000 bytes",
            "GET",
            format!("{changes}filter={}", "f".repeat(5000)),
        )
        .bad(),
        row(
            "include_docs=maybe",
            "GET",
            format!("{changes}include_docs=maybe"),
        )
        .bad(),
        row("heartbeat=-1", "GET", format!("{changes}heartbeat=-1")).bad(),
        row(
            "timeout=abc, longpoll",
            "GET",
            format!("{changes}feed=longpoll&timeout=abc"),
        )
        .bad(),
        row("limit=0 on changes", "GET", format!("{changes}limit=0")).bad(),
        row("style=bogus", "GET", format!("{changes}style=bogus")).bad(),
        // Content types.
        row("text/plain document", "PUT", new())
            .header("Content-Type", "text/plain")
            .body("{}")
            .expect(415, "unsupported_media_type"),
        row("form document", "PUT", new())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("a=1")
            .expect(415, "unsupported_media_type"),
        row("text/plain POST", "POST", post)
            .header("Content-Type", "text/plain")
            .body("{}")
            .expect(415, "unsupported_media_type"),
        row("text/plain _bulk_docs", "POST", bulk)
            .header("Content-Type", "text/plain")
            .body(r#"{"docs": []}"#)
            .expect(415, "unsupported_media_type"),
        row("form _bulk_docs", "POST", bulk)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("docs=1")
            .expect(415, "unsupported_media_type"),
        row("text/plain _local", "PUT", "/barrels/b/local/cp")
            .header("Content-Type", "text/plain")
            .body("{}")
            .expect(415, "unsupported_media_type"),
        // _bulk_docs shapes.
        row("_bulk_docs without docs", "POST", bulk)
            .json("{}")
            .bad(),
        row("_bulk_docs with docs: 5", "POST", bulk)
            .json(r#"{"docs": 5}"#)
            .bad(),
        row("_bulk_docs with docs: {}", "POST", bulk)
            .json(r#"{"docs": {}}"#)
            .bad(),
        row("_bulk_docs as an array", "POST", bulk).json("[]").bad(),
        row("_bulk_docs as [docs, new_edits]", "POST", bulk)
            .json("[[], true]")
            .bad(),
        row("_bulk_docs with new_edits: \"no\"", "POST", bulk)
            .json(r#"{"docs": [], "new_edits": "no"}"#)
            .bad(),
        row("_bulk_docs truncated", "POST", bulk)
            .json(r#"{"docs": [{"a": 1}"#)
            .bad(),
        // Headers out of range.
        row("If-Match: \"not a rev\"", "PUT", doc)
            .json("{}")
            .header("If-Match", "\"not a rev\"")
            .bad(),
        row("If-Match with bytes that are not UTF-8", "PUT", doc)
            .json("{}")
            .header("If-Match", b"\"1-\xff\xfe\"".to_vec())
            .bad(),
        row("If-Match: garbage on a delete", "DELETE", doc)
            .header("If-Match", "garbage")
            .bad(),
        // Local documents.
        row("_local with _rev 0-x", "PUT", "/barrels/b/local/cp")
            .json(r#"{"_rev": "0-x"}"#)
            .bad(),
        row(
            "_local with ?rev=1-abc",
            "PUT",
            "/barrels/b/local/cp?rev=1-abc",
        )
        .json("{}")
        .bad(),
        row("_local as an array", "PUT", "/barrels/b/local/cp")
            .json("[]")
            .bad(),
        row(
            "_local nesting 100,000 levels",
            "PUT",
            "/barrels/b/local/cp",
        )
        .json(nested(100_000))
        .bad(),
        row("_local DELETE without rev", "DELETE", "/barrels/b/local/cp").expect(409, "conflict"),
        // Read parameters.
        row(
            "open_revs=notjson",
            "GET",
            format!("{doc}?open_revs=notjson"),
        )
        .bad(),
        row(
            "open_revs with a bad rev",
            "GET",
            format!("{doc}?open_revs=%5B%22abc%22%5D"),
        )
        .bad(),
        row("revs=maybe", "GET", format!("{doc}?revs=maybe")).bad(),
        row("conflicts=maybe", "GET", format!("{doc}?conflicts=maybe")).bad(),
        row("latest=maybe", "GET", format!("{doc}?latest=maybe")).bad(),
        // Attachments.
        row(
            "attachment named _x",
            "PUT",
            format!("{doc}/attachments/_x?rev={k1}"),
        )
        .header("Content-Type", "text/plain")
        .body("hi")
        .bad(),
        row(
            "attachment ?rev=abc on a read",
            "GET",
            "/barrels/b/docs/k4/attachments/note.txt?rev=abc",
        )
        .bad(),
        row(
            "attachment DELETE without rev",
            "DELETE",
            "/barrels/b/docs/k4/attachments/note.txt",
        )
        .expect(409, "conflict"),
        row(
            "attachment 9 MiB announced",
            "PUT",
            format!("{doc}/attachments/big.bin?rev={k1}"),
        )
        .header("Content-Type", "application/octet-stream")
        .framing(Framing::Announce(9 * MIB as u64))
        .expect(413, "too_large"),
        row("Content-Type that is not UTF-8", "PUT", new())
            .header("Content-Type", b"application/\xffjson".to_vec())
            .body("{}")
            .expect(415, "unsupported_media_type"),
        // HTTP framing errors: actix-http's parser answers these before any route runs, with an
        // empty body (no hook exists to give them the JSON shape); only the status is checked.
        row("Content-Length past u64", "PUT", new())
            .json("{}")
            .framing(Framing::AsGiven)
            .header("Content-Length", "99999999999999999999999")
            .framing_error(400),
        row("Content-Length -1", "PUT", new())
            .json("{}")
            .framing(Framing::AsGiven)
            .header("Content-Length", "-1")
            .framing_error(400),
        row("two different Content-Lengths", "PUT", new())
            .json("{}")
            .header("Content-Length", "3")
            .framing_error(400),
        row("Content-Length and chunked", "PUT", new())
            .json("{}")
            .framing(Framing::Chunked)
            .header("Content-Length", "2")
            .framing_error(400),
        row("Transfer-Encoding: gzip", "PUT", new())
            .json("{}")
            .framing(Framing::AsGiven)
            .header("Transfer-Encoding", "gzip")
            .framing_error(400),
        row("a header of 200 KB", "GET", "/barrels/b/docs/k1")
            .header("X-Big", "a".repeat(200_000))
            .framing_error(431),
        {
            let mut r = row("200 headers", "GET", "/barrels/b/docs/k1").framing_error(431);
            for _ in 0..200 {
                r = r.header("X-Many", "1");
            }
            r
        },
        row("space in the path", "GET", "/barrels/b/docs/a b").framing_error(400),
        row("control byte in the path", "GET", "/barrels/b/docs/a\x01b").framing_error(400),
        // No such route.
        row("unknown route", "GET", "/barrels/b/nothing/here").expect(404, "not_found"),
    ]
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 exchange

/// The answer to a raw request.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    /// Body bytes written when the answer's head arrived.
    written_at_answer: u64,
    /// How long the answer took.
    took: Duration,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `row` on a new connection (`Connection: close`) and reads the answer. The body is
/// written by a second thread while this one reads, so an early answer is seen at once; write
/// errors after the answer (the server closing the connection) are expected and ignored.
fn exchange(addr: SocketAddr, row: &Row) -> Result<RawAnswer, String> {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let body = row.body.clone().unwrap_or_default();
    let mut head = Vec::new();
    head.extend_from_slice(format!("{} ", row.method).as_bytes());
    head.extend_from_slice(row.path.as_bytes());
    head.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes(),
    );
    for (name, value) in &row.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    match row.framing {
        Framing::Length if row.body.is_some() || row.method != "GET" => {
            head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes())
        }
        Framing::Length => {}
        Framing::Chunked => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Announce(n) => {
            head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        Framing::AsGiven => {}
    }
    head.extend_from_slice(b"\r\n");

    let answered = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut w = stream.try_clone().map_err(|e| e.to_string())?;
        let (answered, written, framing) =
            (Arc::clone(&answered), Arc::clone(&written), row.framing);
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&head)?;
            let mut paused = false;
            for chunk in body.chunks(256 << 10) {
                if answered.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if framing == Framing::Chunked {
                    w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    w.write_all(chunk)?;
                    w.write_all(b"\r\n")?;
                } else {
                    w.write_all(chunk)?;
                }
                let n =
                    written.fetch_add(chunk.len() as u64, Ordering::SeqCst) + chunk.len() as u64;
                if framing == Framing::Length && !paused && n >= PAUSE_AFTER {
                    paused = true;
                    let until = Instant::now() + Duration::from_secs(3);
                    while !answered.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
            if framing == Framing::Chunked && !answered.load(Ordering::SeqCst) {
                w.write_all(b"0\r\n\r\n")?;
            }
            Ok(())
        })
    };

    let result = read_answer(&stream, &answered, &written, started);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = writer.join();
    result
}

fn read_answer(
    mut stream: &TcpStream,
    answered: &AtomicBool,
    written: &AtomicU64,
    started: Instant,
) -> Result<RawAnswer, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "connection closed without an answer ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("no answer after {:?}: {e}", started.elapsed())),
        }
    };
    answered.store(true, Ordering::SeqCst);
    let written_at_answer = written.load(Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "content-type" => content_type = Some(v.to_owned()),
                _ => {}
            }
        }
    }
    let mut rest = buf[head_end..].to_vec();
    let mut read_more = |rest: &mut Vec<u8>| -> Result<bool, String> {
        match stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                rest.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(format!("reading the body: {e}")),
        }
    };
    let body = if let Some(len) = length {
        while rest.len() < len {
            if !read_more(&mut rest)? {
                return Err(format!("body cut at {} of {len} bytes", rest.len()));
            }
        }
        rest.truncate(len);
        rest
    } else if chunked {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let Some(eol) = find(&rest[pos..], b"\r\n") else {
                if !read_more(&mut rest)? {
                    return Err("chunked body cut".into());
                }
                continue;
            };
            let size_text = String::from_utf8_lossy(&rest[pos..pos + eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let start = pos + eol + 2;
            while rest.len() < start + size + 2 {
                if !read_more(&mut rest)? {
                    return Err("chunked body cut".into());
                }
            }
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[start..start + size]);
            pos = start + size + 2;
        }
        out
    } else {
        while read_more(&mut rest)? {}
        rest
    };
    Ok(RawAnswer {
        status,
        content_type,
        body,
        written_at_answer,
        took: started.elapsed(),
    })
}

/// Checks one answer against its row; returns what is wrong, if anything.
fn judge(row: &Row, answer: &RawAnswer) -> Option<String> {
    let text = String::from_utf8_lossy(&answer.body);
    let shown: String = text.chars().take(300).collect();
    let mut wrong = Vec::new();
    if answer.status != row.status {
        wrong.push(format!(
            "status {} (expected {})",
            answer.status, row.status
        ));
    }
    if !row.kind.is_empty() {
        if !answer
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/json"))
        {
            wrong.push(format!("Content-Type {:?}", answer.content_type));
        }
        match serde_json::from_slice::<Value>(&answer.body) {
            Ok(v) => {
                if v["error"] != json!(row.kind) {
                    wrong.push(format!("error {} (expected {:?})", v["error"], row.kind));
                }
                if v["reason"].as_str().is_none_or(|r| r.trim().is_empty()) {
                    wrong.push("no reason".to_owned());
                }
            }
            Err(_) => wrong.push("body is not JSON".to_owned()),
        }
    }
    // With a Content-Length the limit is known before any byte of the body; a chunked body
    // can only be refused once the limit is crossed.
    let len = row.body.as_ref().map_or(0, |b| b.len() as u64);
    if row.status == 413
        && row.framing == Framing::Length
        && len > PAUSE_AFTER
        && answer.written_at_answer >= len
    {
        wrong.push(format!(
            "answered only after the whole body ({len} bytes) was sent, not from its length"
        ));
    }
    if answer.took > Duration::from_secs(5) {
        wrong.push(format!("took {:?}", answer.took));
    }
    (!wrong.is_empty()).then(|| format!("{}; body {shown:?}", wrong.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// The data that must survive

/// Everything a bad request must leave as it was.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    barrels: Value,
    info: Value,
    docs: Vec<(String, u16, Value)>,
    local: Value,
    attachment: (u16, Vec<u8>),
    changes: Value,
    query: Value,
}

const KNOWN: [&str; 5] = ["k1", "k2", "k3", "k4", "gone"];

impl Snapshot {
    /// Each field as JSON text.
    fn fields(&self) -> Vec<(&'static str, String)> {
        fn text(v: &impl serde::Serialize) -> String {
            serde_json::to_string(v).unwrap()
        }
        vec![
            ("barrels", text(&self.barrels)),
            ("info", text(&self.info)),
            ("docs", text(&self.docs)),
            ("local", text(&self.local)),
            ("attachment", text(&self.attachment)),
            ("changes", text(&self.changes)),
            ("query", text(&self.query)),
        ]
    }
}

/// What differs between two snapshots: per field, the text around the first difference.
fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let mut out = Vec::new();
    for ((name, b), (_, a)) in before.fields().into_iter().zip(after.fields()) {
        if a == b {
            continue;
        }
        let (b, a): (Vec<char>, Vec<char>) = (b.chars().collect(), a.chars().collect());
        let first = b.iter().zip(&a).take_while(|(x, y)| x == y).count();
        let window = |t: &[char]| -> String {
            let start = first.saturating_sub(40);
            t[start..t.len().min(first + 240)].iter().collect()
        };
        out.push(format!(
            "{name}: before …{}… after …{}…",
            window(&b),
            window(&a)
        ));
    }
    out.join("; ")
}

async fn snapshot(http: &Http) -> Snapshot {
    let info = http.get("/barrels/b").await;
    assert_eq!(info.status, 200, "barrel info: {:?}", info.body);
    let mut b = info.body;
    // The file may grow or shrink with compaction; its size is not data.
    b.as_object_mut().unwrap().remove("size_bytes");
    let mut docs = Vec::new();
    for id in KNOWN {
        let a = http
            .get(&format!("/barrels/b/docs/{id}?revs=true&conflicts=true"))
            .await;
        docs.push((id.to_owned(), a.status, a.body));
    }
    let local = http.get("/barrels/b/local/cp").await;
    assert_eq!(local.status, 200, "local document: {:?}", local.body);
    let att = http.get("/barrels/b/docs/k4/attachments/note.txt").await;
    Snapshot {
        barrels: http.get("/barrels").await.body,
        info: b,
        docs,
        local: local.body,
        attachment: (att.status, att.bytes),
        changes: http.get("/barrels/b/changes?include_docs=true").await.body,
        query: http
            .get("/barrels/b/docs?age=gte.18&order=age.desc")
            .await
            .body,
    }
}

/// Creates barrel `b` with known documents: k1, k2 (nested), k3 (two revisions), k4 (with an
/// attachment), `gone` (deleted), and the local document `cp`; returns the revision of k1.
async fn seed(http: &Http) -> String {
    assert_eq!(http.call("PUT", "/barrels/b").await.status, 201);
    let put = |id: &'static str, body: Value| async move {
        let a = http
            .json("PUT", &format!("/barrels/b/docs/{id}"), &body)
            .await;
        assert_eq!(a.status, 201, "seed {id}: {:?}", a.body);
        a.body["rev"].as_str().unwrap().to_owned()
    };
    let k1 = put("k1", json!({"name": "Ann", "age": 30, "tags": ["a", "b"]})).await;
    put(
        "k2",
        json!({"name": "Bob", "age": 17, "address": {"city": "Paris", "zip": "75001"}}),
    )
    .await;
    let k3 = put("k3", json!({"name": "Cy", "age": 40})).await;
    put("k3", json!({"_rev": k3, "name": "Cy", "age": 41})).await;
    put(
        "k4",
        json!({"name": "Di", "age": 18, "n": 1.5, "none": null}),
    )
    .await;
    let k4 = http.get("/barrels/b/docs/k4").await.body["_rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = http
        .send(
            "PUT",
            &format!("/barrels/b/docs/k4/attachments/note.txt?rev={k4}"),
            &[("Content-Type", "text/plain")],
            Some(b"hello, attachment".to_vec()),
        )
        .await;
    assert_eq!(a.status, 201, "attachment: {:?}", a.body);
    let gone = put("gone", json!({"name": "Ed"})).await;
    let d = http
        .call("DELETE", &format!("/barrels/b/docs/gone?rev={gone}"))
        .await;
    assert_eq!(d.status, 200, "delete: {:?}", d.body);
    let l = http
        .json("PUT", "/barrels/b/local/cp", &json!({"seq": "5"}))
        .await;
    assert_eq!(l.status, 201, "local: {:?}", l.body);
    k1
}

async fn health(http: &Http, after: &str) {
    let h = http.get("/health").await;
    assert_eq!(
        h.status, 200,
        "the node stopped serving after {after}: {:?}",
        h.body
    );
}

fn data_files(node: &TestNode) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![node.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(&node.dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[actix_rt::test]
async fn bad_input_is_refused_and_harmless() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let node = start(&data).await;
    let http = Http::new(&node);
    let addr: SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    let k1 = seed(&http).await;
    let mut expected = snapshot(&http).await;
    let files = data_files(&node);

    let rows = table(&k1);
    let json_rows = rows.iter().filter(|r| !r.kind.is_empty()).count();
    assert!(json_rows >= 45, "only {json_rows} rows");
    let mut failures = Vec::new();
    for row in &rows {
        let r = row.clone();
        let answer = actix_rt::task::spawn_blocking(move || exchange(addr, &r))
            .await
            .unwrap();
        let what = format!("{} ({} {})", row.name, row.method, short(&row.path));
        match answer {
            Ok(a) => {
                if row.body.as_ref().is_some_and(|b| b.len() > MIB) {
                    eprintln!(
                        "{}: {} in {:?}, {} of {} body bytes written when the answer came",
                        row.name,
                        a.status,
                        a.took,
                        a.written_at_answer,
                        row.body.as_ref().map_or(0, |b| b.len())
                    );
                }
                if let Some(w) = judge(row, &a) {
                    failures.push(format!("{what}: {w}"));
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
        health(&http, &row.name).await;
        let now = snapshot(&http).await;
        if now != expected {
            failures.push(format!(
                "{}: data changed: {}",
                row.name,
                diff(&expected, &now)
            ));
            expected = now;
        }
    }

    // The per-document errors of _bulk_docs: one request, one error in each slot.
    let nine = padded_doc(9 * MIB);
    let bulk_rows: Vec<(&str, Vec<u8>, &str)> = vec![
        ("array", b"[1]".to_vec(), "bad_request"),
        ("null", b"null".to_vec(), "bad_request"),
        ("_x member", br#"{"_x": 1}"#.to_vec(), "bad_request"),
        ("_id: 5", br#"{"_id": 5}"#.to_vec(), "bad_request"),
        (
            "_id _design/x",
            br#"{"_id": "_design/x"}"#.to_vec(),
            "bad_request",
        ),
        (
            "_attachments: 3",
            br#"{"_attachments": 3}"#.to_vec(),
            "bad_request",
        ),
        ("nesting 65 levels", nested(65), "bad_request"),
        ("nesting 100,000 levels", nested(100_000), "bad_request"),
        ("9 MiB document", nine, "too_large"),
        (
            "_rev 1-xyz",
            br#"{"_id": "k1", "_rev": "1-xyz"}"#.to_vec(),
            "bad_request",
        ),
        (
            "unknown _rev",
            format!(r#"{{"_id": "k1", "_rev": "{UNKNOWN_REV}"}}"#).into_bytes(),
            "conflict",
        ),
        ("stale: no _rev", br#"{"_id": "k1"}"#.to_vec(), "conflict"),
        (
            "_rev 0-1 on k1",
            br#"{"_id": "k1", "_rev": "0-1"}"#.to_vec(),
            "bad_request",
        ),
    ];
    let mut body = b"{\"docs\":[".to_vec();
    for (i, (_, doc, _)) in bulk_rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(doc);
    }
    body.extend_from_slice(b"]}");
    let a = http
        .send(
            "POST",
            "/barrels/b/_bulk_docs",
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .await;
    if a.status != 201 {
        failures.push(format!(
            "_bulk_docs with bad documents: status {} {:?}",
            a.status, a.body
        ));
    } else {
        let results = a.body.as_array().cloned().unwrap_or_default();
        if results.len() != bulk_rows.len() {
            failures.push(format!(
                "_bulk_docs: {} results for {} docs",
                results.len(),
                bulk_rows.len()
            ));
        }
        for ((name, _, kind), r) in bulk_rows.iter().zip(&results) {
            let reason_ok = r["reason"].as_str().is_some_and(|s| !s.is_empty());
            if r["error"] != json!(kind) || !reason_ok {
                failures.push(format!("_bulk_docs slot {name}: expected {kind}, got {r}"));
            }
        }
    }
    health(&http, "_bulk_docs with bad documents").await;
    let now = snapshot(&http).await;
    if now != expected {
        failures.push(format!(
            "_bulk_docs with bad documents: data changed: {}",
            diff(&expected, &now)
        ));
    }

    // Nothing was created on disk by the bad barrel names (no ../x, no Users).
    let after = data_files(&node);
    let new_files: Vec<&String> = after.iter().filter(|f| !files.contains(f)).collect();
    if new_files.iter().any(|f| f.ends_with(".redb")) {
        failures.push(format!("new files in the data directory: {new_files:?}"));
    }
    if tmp.path().join("x.redb").exists() || data.join("x.redb").exists() {
        failures.push("a barrel file x.redb was created outside barrels/".into());
    }

    node.node.shutdown().await.expect("clean shutdown");
    eprintln!(
        "{} rows ({json_rows} with a JSON error body) + {} _bulk_docs slots in {:?}",
        rows.len(),
        bulk_rows.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} problems in {} rows and {} _bulk_docs slots:\n{}",
        failures.len(),
        rows.len(),
        bulk_rows.len(),
        failures.join("\n")
    );
}

fn short(path: &str) -> String {
    if path.len() > 80 {
        format!("{}…", &path[..80])
    } else {
        path.to_owned()
    }
}
