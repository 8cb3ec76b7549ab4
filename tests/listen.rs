//! The listener websocket `/barrels/{b}/listen` (DESIGN §4 topics and filters, §5 ListenerHub,
//! §6 frames, §7 limits) over real sockets with a real websocket client (awc): MQTT 3.1.1 §4.7
//! filter semantics, documents leaving a watched set and deletions, resuming with `since`
//! across disconnects and across a node restart, slow clients (`lagged`, bounded memory),
//! per-connection limits and bad frames, and the changes feed's `filter=` (normal, longpoll,
//! eventsource) sharing the listeners' matcher.
//!
//! Every wait on the server is bounded by [`HANG_GUARD`], which only turns a hang into a
//! failure; nothing here sleeps to synchronize or asserts on timing. "Everything has arrived"
//! is known from a marker document written last and matched by every subscription.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use awc::error::{WsClientError, WsProtocolError};
use awc::ws::{Frame, Message};
use common::{assert_status, create_barrel, delete, put, Http};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Guards a wait on the server so that a regression fails the test instead of hanging it.
/// Not a timing assertion: it is far longer than any answer takes.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The id of the document written last in the filter scenarios.
const MARKER: &str = "zz-marker";
/// A filter that matches only the marker document; added to every subscription.
const MARKER_FILTER: &str = "_id/zz-marker";

/// Tests share the process, so the one that measures the process's memory runs alone: it takes
/// this gate for writing, every other test takes it for reading.
static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Writes `docs` with one `_bulk_docs` request; every one must succeed.
async fn bulk(http: &Http, b: &str, docs: Vec<Value>) {
    let n = docs.len();
    let a = http
        .json(
            "POST",
            &format!("/barrels/{b}/_bulk_docs"),
            &json!({ "docs": docs }),
        )
        .await;
    assert_status(&a, 201, "_bulk_docs");
    let results = a.body.as_array().expect("per-document results");
    assert_eq!(results.len(), n);
    for r in results {
        assert_eq!(r["ok"], true, "{r}");
    }
}

async fn update_seq(http: &Http, b: &str) -> u64 {
    let a = http.get(&format!("/barrels/{b}")).await;
    assert_status(&a, 200, "barrel info");
    a.body["update_seq"].as_str().unwrap().parse().unwrap()
}

/// Percent-encodes a query-string value.
fn enc(s: &str) -> String {
    let pair = serde_urlencoded::to_string([("x", s)]).unwrap();
    pair["x=".len()..].to_owned()
}

/// The seq of a change frame (seqs are strings on the wire).
fn seq(frame: &Value) -> u64 {
    frame["seq"]
        .as_str()
        .unwrap_or_else(|| panic!("a seq string in {frame}"))
        .parse()
        .unwrap()
}

/// The topics of a change frame, sorted.
fn topics(frame: &Value) -> Vec<String> {
    let mut t: Vec<String> = frame["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("topics in {frame}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

/// What an awc websocket connection is: a stream of frames and a sink of messages.
trait WsIo:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin
{
}

impl<T> WsIo for T where
    T: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin
{
}

/// A listener websocket client. Frames read while waiting for a particular one are kept, in
/// order, and handed out first by [`Ws::next`].
struct Ws {
    io: Box<dyn WsIo>,
    backlog: VecDeque<Value>,
}

impl Ws {
    async fn try_connect(base: &str, path: &str) -> Result<Ws, WsClientError> {
        let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
        let (_res, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(16 << 20)
            .connect()
            .await?;
        Ok(Ws {
            io: Box::new(framed),
            backlog: VecDeque::new(),
        })
    }

    async fn connect(base: &str, path: &str) -> Ws {
        Self::try_connect(base, path)
            .await
            .unwrap_or_else(|e| panic!("websocket {path}: {e}"))
    }

    async fn send_text(&mut self, text: String) {
        self.io
            .send(Message::Text(text.into()))
            .await
            .expect("the frame is sent");
    }

    async fn send(&mut self, frame: &Value) {
        self.send_text(frame.to_string()).await;
    }

    /// The next JSON frame off the wire; `None` once the connection ended.
    async fn read_frame(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(HANG_GUARD, self.io.next())
                .await
                .expect("a websocket frame within the hang guard");
            match next {
                None | Some(Ok(Frame::Close(_))) | Some(Err(_)) => return None,
                Some(Ok(Frame::Text(t))) => {
                    return Some(serde_json::from_slice(&t).expect("frames are JSON"))
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.io.send(Message::Pong(p)).await;
                }
                Some(Ok(Frame::Pong(_))) => {}
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame, kept ones first; `None` once the connection ended.
    async fn next_or_end(&mut self) -> Option<Value> {
        match self.backlog.pop_front() {
            Some(v) => Some(v),
            None => self.read_frame().await,
        }
    }

    /// The next frame, kept ones first.
    async fn next(&mut self) -> Value {
        self.next_or_end().await.expect("the connection stays open")
    }

    /// The first frame (kept or new) that `pred` accepts; others are kept, in order.
    async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let v = self.read_frame().await.expect("the connection stays open");
            if pred(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// The answer to a request with `id`: the first non-change frame carrying that id.
    async fn answer(&mut self, id: &Value) -> Value {
        let id = id.clone();
        self.wait_for(move |v| v["id"] == id && v["op"] != "change" && v["op"] != "lagged")
            .await
    }

    /// Sends `frame` and returns the `error` frame it must get.
    async fn expect_error(&mut self, frame: &Value) -> String {
        self.send(frame).await;
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let v = self.answer(&id).await;
        assert_eq!(v["op"], "error", "{frame} → {v}");
        v["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("a reason in {v}"))
            .to_owned()
    }

    /// Subscribes and returns the `seq` of the `subscribed` answer.
    async fn subscribe(&mut self, id: u64, filters: &[&str], since: &str, docs: bool) -> u64 {
        let frame = json!({"op": "subscribe", "id": id, "filters": filters, "since": since, "include_docs": docs});
        self.send(&frame).await;
        let v = self.answer(&json!(id)).await;
        assert_eq!(v["op"], "subscribed", "{frame} → {v}");
        seq(&v)
    }

    /// A `ping` op answered by `pong`: everything the server queued before it was sent first.
    async fn round_trip(&mut self) {
        self.send(&json!({"op": "ping"})).await;
        self.wait_for(|v| v["op"] == "pong").await;
    }
}

/// Reads change frames until every subscription in `ids` has delivered the marker; returns
/// each subscription's changes before it. Any other frame fails the test.
async fn until_marker(ws: &mut Ws, ids: &[u64]) -> HashMap<u64, Vec<Value>> {
    let mut got: HashMap<u64, Vec<Value>> = ids.iter().map(|i| (*i, Vec::new())).collect();
    let mut done = HashSet::new();
    while done.len() < ids.len() {
        let v = ws.next().await;
        assert_eq!(v["op"], "change", "{v}");
        let id = v["id"].as_u64().unwrap();
        assert!(!done.contains(&id), "a change after the marker: {v}");
        if v["doc_id"] == MARKER {
            done.insert(id);
        } else {
            got.get_mut(&id)
                .unwrap_or_else(|| panic!("a change for an unknown subscription: {v}"))
                .push(v);
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------
// Filter scenarios shared by the websocket and the changes feed

/// Documents whose topics exercise MQTT 3.1.1 §4.7 and DESIGN §4.
fn filter_docs() -> Vec<Value> {
    vec![
        json!({"_id": "tennis1", "sport": {"tennis": {"player1": {"ranking": 1, "score": {"wimbledon": 3}}}}}),
        json!({"_id": "tennis-deep", "sport": {"tennis": {"player1": {"ranking": {"1": "gold"}}}}}),
        json!({"_id": "sportx", "sport": "x"}),
        json!({"_id": "golf1", "sport": {"golf": {"player1": {"ranking": 7}}}}),
        json!({"_id": "golf2", "sport": {"golf": {"player2": {"ranking": 5}}}}),
        json!({"_id": "ax", "a": "x"}),
        json!({"_id": "abx", "a": {"b": "x"}}),
        json!({"_id": "empty-level", "e": {"": "v"}}),
        json!({"_id": "sys", "$sys": {"load": 1}}),
        json!({"_id": "cpu", "cpu": {"load": 1}}),
        json!({"_id": "u1", "users": {"u1": {"name": "Ann"}}}),
        json!({"_id": "u2", "users": {"u2": {"email": "bob"}}}),
        json!({"_id": "u3", "users": "none"}),
    ]
}

/// Writes [`filter_docs`] in one `_bulk_docs`, then the marker on its own.
async fn write_filter_docs(http: &Http, b: &str) {
    bulk(http, b, filter_docs()).await;
    put(http, b, MARKER, json!({"marker": true})).await;
}

/// A filter and exactly the (document, matched topics) it must deliver.
struct Case {
    filter: &'static str,
    want: &'static [(&'static str, &'static [&'static str])],
}

const RANK1: &str = "sport/tennis/player1/ranking/1";
const WIMBLEDON: &str = "sport/tennis/player1/score/wimbledon/3";
const GOLD: &str = "sport/tennis/player1/ranking/1/gold";
const GOLF1: &str = "sport/golf/player1/ranking/7";
const GOLF2: &str = "sport/golf/player2/ranking/5";
const ANN: &str = "users/u1/name/Ann";
const BOB: &str = "users/u2/email/bob";
const NONE: &str = "users/none";

const CASES: &[Case] = &[
    // `#` matches any number of levels below `sport`.
    Case {
        filter: "sport/#",
        want: &[
            ("tennis1", &[RANK1, WIMBLEDON]),
            ("tennis-deep", &[GOLD]),
            ("sportx", &["sport/x"]),
            ("golf1", &[GOLF1]),
            ("golf2", &[GOLF2]),
        ],
    },
    // `#` also matches its parent level: `.../ranking/1/#` matches `.../ranking/1` itself.
    Case {
        filter: "sport/tennis/player1/ranking/1/#",
        want: &[("tennis1", &[RANK1]), ("tennis-deep", &[GOLD])],
    },
    Case {
        filter: "sport/tennis/player1/ranking/1",
        want: &[("tennis1", &[RANK1])],
    },
    Case {
        filter: "sport/tennis/player1/ranking/+",
        want: &[("tennis1", &[RANK1])],
    },
    Case {
        filter: "sport/+/player1/#",
        want: &[
            ("tennis1", &[RANK1, WIMBLEDON]),
            ("tennis-deep", &[GOLD]),
            ("golf1", &[GOLF1]),
        ],
    },
    // Topics end with the value level, so this matches no leaf.
    Case {
        filter: "sport/+/player1",
        want: &[],
    },
    Case {
        filter: "sport/+",
        want: &[("sportx", &["sport/x"])],
    },
    // `+` is exactly one whole level: `+/x` matches `a/x` and `sport/x`, not `a/b/x`.
    Case {
        filter: "+/x",
        want: &[("sportx", &["sport/x"]), ("ax", &["a/x"])],
    },
    Case {
        filter: "+/+/x",
        want: &[("abx", &["a/b/x"])],
    },
    // `+` matches an empty level too.
    Case {
        filter: "e/+/v",
        want: &[("empty-level", &["e//v"])],
    },
    // A filter starting with a wildcard never matches a topic starting with `$` (§4.7.2).
    Case {
        filter: "#",
        want: &[
            ("tennis1", &["_id/tennis1", RANK1, WIMBLEDON]),
            ("tennis-deep", &["_id/tennis-deep", GOLD]),
            ("sportx", &["_id/sportx", "sport/x"]),
            ("golf1", &["_id/golf1", GOLF1]),
            ("golf2", &["_id/golf2", GOLF2]),
            ("ax", &["_id/ax", "a/x"]),
            ("abx", &["_id/abx", "a/b/x"]),
            ("empty-level", &["_id/empty-level", "e//v"]),
            ("sys", &["_id/sys"]),
            ("cpu", &["_id/cpu", "cpu/load/1"]),
            ("u1", &["_id/u1", ANN]),
            ("u2", &["_id/u2", BOB]),
            ("u3", &["_id/u3", NONE]),
        ],
    },
    Case {
        filter: "+/load/1",
        want: &[("cpu", &["cpu/load/1"])],
    },
    Case {
        filter: "+/+/1",
        want: &[("cpu", &["cpu/load/1"])],
    },
    Case {
        filter: "$sys/#",
        want: &[("sys", &["$sys/load/1"])],
    },
    Case {
        filter: "$sys/+/1",
        want: &[("sys", &["$sys/load/1"])],
    },
    // `*` as the last level is `#`, elsewhere `+`.
    Case {
        filter: "users/*",
        want: &[("u1", &[ANN]), ("u2", &[BOB]), ("u3", &[NONE])],
    },
    Case {
        filter: "users/#",
        want: &[("u1", &[ANN]), ("u2", &[BOB]), ("u3", &[NONE])],
    },
    Case {
        filter: "users/*/name/#",
        want: &[("u1", &[ANN])],
    },
    Case {
        filter: "users/+/name/#",
        want: &[("u1", &[ANN])],
    },
    Case {
        filter: "users/+/name/+",
        want: &[("u1", &[ANN])],
    },
    // Only a leaf whose value is `name` would match.
    Case {
        filter: "users/+/name",
        want: &[],
    },
    // A leading `/` is ignored.
    Case {
        filter: "/sport/x",
        want: &[("sportx", &["sport/x"])],
    },
    Case {
        filter: "/a/+",
        want: &[("ax", &["a/x"])],
    },
    Case {
        filter: "_id/u2",
        want: &[("u2", &["_id/u2"])],
    },
];

/// Filters that must be refused: `#` not alone or not last, `+` sharing a level, empty.
const BAD_FILTERS: &[&str] = &[
    "a/#/b", "#/a", "#/", "a/b#", "sport+", "+a/b", "a/b+/c", "", "/",
];

/// Checks what each subscription (id = index in [`CASES`] + 1) delivered.
fn check_cases(how: &str, got: &HashMap<u64, Vec<Value>>) {
    for (i, case) in CASES.iter().enumerate() {
        let changes = &got[&(i as u64 + 1)];
        let mut seen = BTreeMap::new();
        let mut last = 0;
        for c in changes {
            assert!(seq(c) > last, "{how} {}: seqs increase: {c}", case.filter);
            last = seq(c);
            assert_eq!(c["deleted"], false, "{how} {}: {c}", case.filter);
            let id = c["doc_id"].as_str().unwrap().to_owned();
            assert_eq!(c["doc"]["_id"], id.as_str(), "{how}: include_docs");
            assert_eq!(c["doc"]["_rev"], c["rev"], "{how}: include_docs");
            let dup = seen.insert(id, topics(c));
            assert!(dup.is_none(), "{how} {}: delivered twice: {c}", case.filter);
        }
        let want: BTreeMap<String, Vec<String>> = case
            .want
            .iter()
            .map(|(id, ts)| {
                let mut ts: Vec<String> = ts.iter().map(|t| (*t).to_owned()).collect();
                ts.sort();
                ((*id).to_owned(), ts)
            })
            .collect();
        assert_eq!(seen, want, "{how}: filter {:?}", case.filter);
    }
}

/// Reads `/proc/self/status` VmRSS, in KiB: the node runs in the test process.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Filter semantics (MQTT 3.1.1 §4.7) through the websocket

#[actix_rt::test]
async fn filters_follow_mqtt_semantics_live_and_replayed() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "f").await;
    let ids: Vec<u64> = (1..=CASES.len() as u64).collect();

    // Live: subscribed before the writes, through the hub's trie.
    let mut live = Ws::connect(&node.url, "/barrels/f/listen").await;
    for (id, case) in ids.iter().zip(CASES) {
        let at = live
            .subscribe(*id, &[case.filter, MARKER_FILTER], "now", true)
            .await;
        assert_eq!(at, 0, "an empty barrel");
    }
    write_filter_docs(&http, "f").await;
    check_cases("live", &until_marker(&mut live, &ids).await);

    // Replayed: subscribed afterwards from since 0, through the feed.
    let mut replay = Ws::connect(&node.url, "/barrels/f/listen").await;
    for (id, case) in ids.iter().zip(CASES) {
        let at = replay
            .subscribe(*id, &[case.filter, MARKER_FILTER], "0", true)
            .await;
        assert_eq!(at, filter_docs().len() as u64 + 1);
    }
    check_cases("replay", &until_marker(&mut replay, &ids).await);

    // Invalid filters are error frames, alone or among valid ones; the connection goes on.
    for (i, bad) in BAD_FILTERS.iter().enumerate() {
        let id = 100 + i as u64;
        let reason = live
            .expect_error(&json!({"op": "subscribe", "id": id, "filters": [bad], "since": "0"}))
            .await;
        assert!(!reason.is_empty());
        let reason = live
            .expect_error(
                &json!({"op": "subscribe", "id": id, "filters": ["ok/#", bad], "since": "0"}),
            )
            .await;
        assert!(!reason.is_empty());
    }
    let reason = live
        .expect_error(&json!({"op": "subscribe", "id": 200, "filters": ["sport+"]}))
        .await;
    assert!(reason.contains("sport+"), "{reason}");
    live.round_trip().await;
    assert!(live.backlog.is_empty(), "{:?}", live.backlog);
}

// ---------------------------------------------------------------------------------------------
// 2. Leaving a watched set; deletions

#[actix_rt::test]
async fn leaving_a_watched_set_and_deletions_notify() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "s").await;
    let mut ws = Ws::connect(&node.url, "/barrels/s/listen").await;
    ws.subscribe(1, &["status/open", MARKER_FILTER], "now", true)
        .await;
    ws.subscribe(2, &["_id/t1", MARKER_FILTER], "now", true)
        .await;
    ws.subscribe(3, &["status/closed", MARKER_FILTER], "now", true)
        .await;
    ws.subscribe(4, &["priority/+", MARKER_FILTER], "now", false)
        .await;
    ws.subscribe(5, &["other/#", MARKER_FILTER], "now", false)
        .await;

    let r1 = put(
        &http,
        "s",
        "t1",
        json!({"status": "open", "priority": "high"}),
    )
    .await;
    let r2 = put(
        &http,
        "s",
        "t1",
        json!({"_rev": r1, "status": "closed", "priority": "high"}),
    )
    .await;
    let r3 = delete(&http, "s", "t1", &r2).await;
    put(&http, "s", MARKER, json!({})).await;
    let got = until_marker(&mut ws, &[1, 2, 3, 4, 5]).await;

    let summary = |id: u64| -> Vec<(u64, String, bool, Vec<String>)> {
        got[&id]
            .iter()
            .map(|c| {
                assert_eq!(c["doc_id"], "t1", "{c}");
                (
                    seq(c),
                    c["rev"].as_str().unwrap().to_owned(),
                    c["deleted"].as_bool().unwrap(),
                    topics(c),
                )
            })
            .collect()
    };
    let t = |s: &[&str]| -> Vec<String> { s.iter().map(|x| (*x).to_owned()).collect() };
    // Entering the set, then leaving it: the second change carries the old topic.
    assert_eq!(
        summary(1),
        [
            (1, r1.clone(), false, t(&["status/open"])),
            (2, r2.clone(), false, t(&["status/open"])),
        ]
    );
    assert_eq!(got[&1][1]["doc"]["status"], "closed", "the new winner");
    // `_id/<id>` sees every change, the deletion with deleted: true and a tombstone doc.
    assert_eq!(
        summary(2),
        [
            (1, r1.clone(), false, t(&["_id/t1"])),
            (2, r2.clone(), false, t(&["_id/t1"])),
            (3, r3.clone(), true, t(&["_id/t1"])),
        ]
    );
    assert_eq!(got[&2][2]["doc"]["_deleted"], true);
    assert_eq!(got[&2][2]["doc"]["_rev"], r3.as_str());
    // The last live revision's topics announce the deletion.
    assert_eq!(
        summary(3),
        [
            (2, r2.clone(), false, t(&["status/closed"])),
            (3, r3.clone(), true, t(&["status/closed"])),
        ]
    );
    assert_eq!(
        summary(4),
        [
            (1, r1, false, t(&["priority/high"])),
            (2, r2, false, t(&["priority/high"])),
            (3, r3, true, t(&["priority/high"])),
        ]
    );
    assert!(got[&5].is_empty(), "{:?}", got[&5]);
}

/// DESIGN §4: a change publishes the topics of the previous winner too, and a deletion those of
/// the last live revision; §6: "a client that reconnects with `since` misses nothing". A
/// client that resumes must therefore get the same changes as one that stayed connected.
#[actix_rt::test]
async fn resuming_with_since_reports_documents_that_left_the_set_meanwhile() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "s").await;
    let filters = ["status/open", MARKER_FILTER];
    let mut stayed = Ws::connect(&node.url, "/barrels/s/listen").await;
    stayed.subscribe(1, &filters, "now", false).await;
    let mut away = Ws::connect(&node.url, "/barrels/s/listen").await;
    away.subscribe(1, &filters, "now", false).await;

    let r1 = put(&http, "s", "t1", json!({"status": "open"})).await;
    let r2 = put(&http, "s", "t2", json!({"status": "open"})).await;
    let mut last = 0;
    for want in ["t1", "t2"] {
        let c = away.next().await;
        assert_eq!(
            (c["op"].as_str(), c["doc_id"].as_str()),
            (Some("change"), Some(want))
        );
        last = seq(&c);
    }
    drop(away);
    // While the client is away, t1 leaves the set and t2 is deleted.
    put(&http, "s", "t1", json!({"_rev": r1, "status": "closed"})).await;
    delete(&http, "s", "t2", &r2).await;
    put(&http, "s", MARKER, json!({})).await;

    let stayed_got: Vec<(u64, String, bool)> = until_marker(&mut stayed, &[1]).await[&1]
        .iter()
        .map(|c| {
            (
                seq(c),
                c["doc_id"].as_str().unwrap().to_owned(),
                c["deleted"] == true,
            )
        })
        .collect();
    assert_eq!(
        stayed_got,
        [
            (1, "t1".to_owned(), false),
            (2, "t2".to_owned(), false),
            (3, "t1".to_owned(), false),
            (4, "t2".to_owned(), true),
        ]
    );

    let mut back = Ws::connect(&node.url, "/barrels/s/listen").await;
    back.subscribe(1, &filters, &last.to_string(), false).await;
    let resumed: Vec<(u64, String, bool)> = until_marker(&mut back, &[1]).await[&1]
        .iter()
        .map(|c| {
            (
                seq(c),
                c["doc_id"].as_str().unwrap().to_owned(),
                c["deleted"] == true,
            )
        })
        .collect();
    assert_eq!(
        resumed,
        stayed_got[2..],
        "a client resuming from seq {last} must learn that t1 left status/open (seq 3) and \
         that t2 was deleted (seq 4), as the client that stayed connected did"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Resume across a disconnect under concurrent writers

/// Follows `#` on a fresh connection from `since`, appending `(seq, doc_id)` of each change to
/// `out` (and resubscribing from `resume_from` on `lagged`) until `enough(out)`; then drops
/// the connection. Returns how many `lagged` frames it saw.
async fn follow(
    base: &str,
    barrel: &str,
    since: u64,
    out: &mut Vec<(u64, String)>,
    enough: impl Fn(&[(u64, String)]) -> bool,
) -> usize {
    let mut ws = Ws::connect(base, &format!("/barrels/{barrel}/listen")).await;
    let mut id = 1;
    ws.subscribe(id, &["#"], &since.to_string(), false).await;
    let mut lags = 0;
    while !enough(out) {
        let v = ws.next().await;
        assert_eq!(v["id"], id, "{v}");
        match v["op"].as_str() {
            Some("change") => out.push((seq(&v), v["doc_id"].as_str().unwrap().to_owned())),
            Some("lagged") => {
                lags += 1;
                let resume: u64 = v["resume_from"].as_str().unwrap().parse().unwrap();
                assert_eq!(resume, out.last().map_or(since, |l| l.0.max(since)));
                id += 1;
                ws.subscribe(id, &["#"], &resume.to_string(), false).await;
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    lags
}

/// Delivery is exactly-once across a reconnect when the client resumes from the last seq it
/// received: the replay from `since` starts after that seq, and each document's change is in
/// the feed once, at its latest seq (each document here is written once, so seq ↔ document is
/// one to one and every seq 1..=5000 must arrive exactly once, in increasing order).
#[actix_rt::test]
async fn a_client_resuming_from_its_last_seq_gets_every_change_exactly_once() {
    const WRITERS: usize = 16;
    const DOCS: usize = 5_000;
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "r").await;
    let barrel = node.node.barrel("r").await.unwrap();

    let mut got: Vec<(u64, String)> = Vec::new();
    // Subscribe first, then start the writers.
    let mut ws = Ws::connect(&node.url, "/barrels/r/listen").await;
    ws.subscribe(1, &["#"], "0", false).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let b = barrel.clone();
            actix_rt::spawn(async move {
                for i in (w..DOCS).step_by(WRITERS) {
                    b.put(json!({"_id": format!("doc-{i:05}"), "writer": w, "i": i}))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut lags = 0;
    while got.len() < 1_000 {
        let v = ws.next().await;
        match v["op"].as_str() {
            Some("change") => got.push((seq(&v), v["doc_id"].as_str().unwrap().to_owned())),
            Some("lagged") => {
                lags += 1;
                break;
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    // Drop the connection while the writers go on.
    drop(ws);
    let first = got.len();
    let dropped_at = barrel.counts().unwrap().update_seq;

    // A second connection resumes, reads a while, and drops too.
    let since = got.last().map_or(0, |l| l.0);
    lags += follow(&node.url, "r", since, &mut got, |g| {
        g.len() >= first + 1_500
    })
    .await;
    let second_dropped_at = barrel.counts().unwrap().update_seq;

    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(update_seq(&http, "r").await, DOCS as u64);
    let since = got.last().map_or(0, |l| l.0);
    lags += follow(&node.url, "r", since, &mut got, |g| {
        g.last().is_some_and(|l| l.0 == DOCS as u64)
    })
    .await;
    eprintln!(
        "resume: first connection dropped at update_seq {dropped_at} after {first} changes, \
         second at {second_dropped_at}; {lags} lagged"
    );

    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        seqs,
        (1..=DOCS as u64).collect::<Vec<_>>(),
        "every seq exactly once, in order"
    );
    let ids: BTreeSet<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(ids.len(), DOCS, "every document exactly once");
    assert!(ids.iter().all(|id| id.starts_with("doc-")));
}

// ---------------------------------------------------------------------------------------------
// 4. Slow clients: `lagged`, and memory that stays bounded

#[actix_rt::test]
async fn a_client_that_does_not_read_gets_lagged_and_resumes() {
    const DOCS: u64 = 3_000;
    const BATCH: u64 = 250;
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "slow").await;
    let barrel = node.node.barrel("slow").await.unwrap();
    let mut ws = Ws::connect(&node.url, "/barrels/slow/listen").await;
    ws.subscribe(1, &["#"], "now", true).await;

    // ~8 KiB per change frame (24 MiB in all), so the socket buffers between the node and this
    // client hold a fraction of the changes written; the rest must wait in the subscription's
    // bounded queue (1024), which overflows. The client reads nothing meanwhile.
    let pad = "p".repeat(8 << 10);
    for b in 0..DOCS / BATCH {
        let docs = (0..BATCH)
            .map(|i| json!({"_id": format!("s{:05}", b * BATCH + i), "pad": pad}))
            .collect();
        bulk(&http, "slow", docs).await;
    }

    let mut seqs = Vec::new();
    let resume = loop {
        let v = ws.next().await;
        assert_eq!(v["id"], 1, "{v}");
        match v["op"].as_str() {
            Some("change") => seqs.push(seq(&v)),
            Some("lagged") => break v["resume_from"].as_str().unwrap().parse::<u64>().unwrap(),
            _ => panic!("unexpected frame {v}"),
        }
        assert!(
            *seqs.last().unwrap() < DOCS,
            "all {DOCS} changes arrived without a `lagged`"
        );
    };
    eprintln!("slow client: {} changes before lagged", seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        resume,
        seqs.len() as u64,
        "resume_from is the last delivered seq"
    );
    let subs = barrel
        .hub()
        .send(cooper_actors::listener::CountSubscriptions)
        .await
        .unwrap();
    assert_eq!(subs, 0, "the lagging subscription was dropped from the hub");

    // Resubscribing from resume_from delivers the rest, each once, in order.
    ws.subscribe(2, &["#"], &resume.to_string(), false).await;
    for want in resume + 1..=DOCS {
        let v = ws.next().await;
        assert_eq!(
            (v["op"].as_str(), v["id"].as_u64()),
            (Some("change"), Some(2)),
            "{v}"
        );
        assert_eq!(seq(&v), want);
    }
    ws.round_trip().await;
    assert!(ws.backlog.is_empty(), "{:?}", ws.backlog);
}

/// Pushes 100,000 small-document changes (100 `_bulk_docs` of 1000) past a subscriber that
/// never reads, and bounds the growth of the process's resident memory (VmRSS; the node runs
/// in this process) by 300 MiB. The bound is generous: it also covers redb's page cache and the
/// allocator's retention while the bulk requests are parsed and written (about 50 MiB in
/// practice). Without the bounded per-subscription queue, the unread changes with their
/// documents would pile up. A memory bound, not a timing assertion.
#[actix_rt::test]
async fn memory_stays_bounded_past_a_subscriber_that_never_reads() {
    const CHANGES: u64 = 100_000;
    const BATCH: u64 = 1_000;
    const RSS_BOUND_MIB: u64 = 300;
    // Alone in the process, so that other tests do not move the RSS.
    let _gate = GATE.write().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "m").await;
    let mut ws = Ws::connect(&node.url, "/barrels/m/listen").await;
    ws.subscribe(1, &["#"], "now", true).await;
    let docs = |b: u64| -> Vec<Value> {
        (0..BATCH)
            .map(|i| json!({"_id": format!("m{b:03}-{i:04}"), "n": i, "kind": "small", "tags": ["a", "b"]}))
            .collect()
    };
    // One warm-up batch (allocator arenas, HTTP buffers, redb), then measure.
    bulk(&http, "m", docs(0)).await;
    let before = rss_kib();
    for b in 1..CHANGES / BATCH {
        bulk(&http, "m", docs(b)).await;
    }
    let after = rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "RSS before {} MiB, after {} MiB ({CHANGES} changes past a subscriber that never \
         reads): grew {grown_mib} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        grown_mib < RSS_BOUND_MIB,
        "RSS grew {grown_mib} MiB, over the {RSS_BOUND_MIB} MiB bound"
    );

    // The subscriber now reads: what was queued, then `lagged` (or, had it stayed silent
    // past the node's send timeout, the end of the connection) — never all the changes.
    let mut received = 0u64;
    let ended = loop {
        match ws.next_or_end().await {
            None => break "closed".to_owned(),
            Some(v) if v["op"] == "change" => received += 1,
            Some(v) if v["op"] == "lagged" => break format!("lagged at {}", v["resume_from"]),
            Some(v) => panic!("unexpected frame {v}"),
        }
    };
    eprintln!("the silent subscriber then read {received} changes, then {ended}");
    assert!(received < CHANGES, "{received}");
}

// ---------------------------------------------------------------------------------------------
// 5. A node restart mid-stream

#[actix_rt::test]
async fn a_listener_resumes_across_a_node_restart() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "p").await;
    for b in 0..2 {
        let docs = (0..250)
            .map(|i| json!({"_id": format!("p{b}-{i:03}"), "i": i}))
            .collect();
        bulk(&http, "p", docs).await;
    }

    let mut ws = Ws::connect(&node.url, "/barrels/p/listen").await;
    ws.subscribe(1, &["#"], "0", false).await;
    let mut got: Vec<u64> = Vec::new();
    while got.len() < 100 {
        let v = ws.next().await;
        assert_eq!(v["op"], "change", "{v}");
        got.push(seq(&v));
    }
    // Shut the node down mid-stream, reading whatever still arrives until the connection ends.
    let shutdown = actix_rt::spawn(node.node.shutdown());
    let mut lagged = None;
    while let Some(v) = ws.next_or_end().await {
        match v["op"].as_str() {
            Some("change") => got.push(seq(&v)),
            Some("lagged") => lagged = Some(v["resume_from"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected frame {v}"),
        }
    }
    shutdown.await.unwrap().expect("a clean shutdown");
    let before_restart = got.len();
    if let Some(r) = &lagged {
        assert_eq!(
            r,
            &got.last().unwrap().to_string(),
            "lagged at the last seq"
        );
    }

    let node = common::start_in(dir.path(), |_| {}).await;
    let http = Http::new(&node);
    assert_eq!(update_seq(&http, "p").await, 500, "the barrel survived");
    let docs = (0..200)
        .map(|i| json!({"_id": format!("q-{i:03}"), "i": i}))
        .collect();
    bulk(&http, "p", docs).await;
    let mut ws = Ws::connect(&node.url, "/barrels/p/listen").await;
    let since = got.last().unwrap().to_string();
    ws.subscribe(1, &["#"], &since, false).await;
    while *got.last().unwrap() < 700 {
        let v = ws.next().await;
        assert_eq!(v["op"], "change", "{v}");
        got.push(seq(&v));
    }
    eprintln!(
        "restart: {before_restart} changes before the restart (lagged: {lagged:?}), {} after",
        got.len() - before_restart
    );
    assert_eq!(got, (1..=700).collect::<Vec<u64>>(), "nothing missed");
}

// ---------------------------------------------------------------------------------------------
// 6. Limits and bad frames

#[actix_rt::test]
async fn limits_and_bad_frames_get_error_frames() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "l").await;
    let mut ws = Ws::connect(&node.url, "/barrels/l/listen").await;

    // Bad frames: each gets an error frame and the connection goes on.
    ws.send_text("{not json".into()).await;
    let v = ws.answer(&Value::Null).await;
    assert_eq!(v["op"], "error", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("JSON"), "{v}");
    ws.round_trip().await;
    ws.io
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let v = ws.answer(&Value::Null).await;
    assert_eq!(v["op"], "error", "binary frame: {v}");
    for frame in [
        json!({"op": "publish", "id": 5}),
        json!({"id": 6, "filters": ["a"]}),
        json!({"op": 7, "id": 7}),
        json!({"op": "subscribe", "id": 8, "filters": []}),
        json!({"op": "subscribe", "id": 9, "filters": "a/#/b"}),
        json!({"op": "subscribe", "id": 10, "filters": [1]}),
        json!({"op": "subscribe", "id": 11, "filters": ["a"], "since": "soon"}),
        json!({"op": "subscribe", "id": 12, "filters": ["a"], "since": -1}),
        json!({"op": "subscribe", "id": 13, "filters": ["a"], "include_docs": "yes"}),
        json!({"op": "subscribe", "id": 14, "filters": (0..65).map(|i| format!("f/{i}")).collect::<Vec<_>>()}),
        json!({"op": "subscribe", "id": 15, "filters": ["b".repeat(5_000)]}),
        json!({"op": "subscribe", "id": 16, "filters": ["b".repeat(4_097)]}),
        json!({"op": "unsubscribe", "id": 17}),
        json!({"op": "subscribe", "id": [18], "filters": ["a"]}),
    ] {
        let reason = ws.expect_error(&frame).await;
        assert!(!reason.is_empty(), "{frame}");
    }
    // The longest filter allowed (4096 bytes) is fine.
    ws.subscribe(19, &["b".repeat(4_096).as_str()], "now", false)
        .await;
    ws.send(&json!({"op": "unsubscribe", "id": 19})).await;
    assert_eq!(ws.answer(&json!(19)).await["op"], "unsubscribed");

    // Duplicate ids are refused while the first is active; the first keeps working.
    ws.subscribe(1, &["n/1"], "now", false).await;
    ws.expect_error(&json!({"op": "subscribe", "id": 1, "filters": ["n/2"]}))
        .await;
    // Up to 64 subscriptions per connection; the 65th is an error frame.
    for i in 2..=64u64 {
        ws.subscribe(i, &[format!("n/{i}").as_str()], "now", false)
            .await;
    }
    let reason = ws
        .expect_error(&json!({"op": "subscribe", "id": 65, "filters": ["n/65"]}))
        .await;
    assert!(reason.contains("64"), "{reason}");
    // String ids are ids too, and count against the same limit.
    ws.expect_error(&json!({"op": "subscribe", "id": "s", "filters": ["n/65"]}))
        .await;
    // The others still work.
    put(&http, "l", "d1", json!({"n": 1})).await;
    put(&http, "l", "d2", json!({"n": 2})).await;
    put(&http, "l", "d64", json!({"n": 64})).await;
    put(&http, "l", "d65", json!({"n": 65})).await;
    let mut got = BTreeSet::new();
    while got.len() < 3 {
        let v = ws.next().await;
        assert_eq!(v["op"], "change", "{v}");
        got.insert((
            v["id"].as_u64().unwrap(),
            v["doc_id"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        got,
        BTreeSet::from([(1, "d1".into()), (2, "d2".into()), (64, "d64".into())])
    );
    ws.round_trip().await;
    assert!(
        ws.backlog.is_empty(),
        "nothing for the refused ones: {:?}",
        ws.backlog
    );

    // Unsubscribing answers `unsubscribed`, ends the changes, and frees a slot.
    ws.send(&json!({"op": "unsubscribe", "id": 1})).await;
    assert_eq!(ws.answer(&json!(1)).await["op"], "unsubscribed");
    ws.expect_error(&json!({"op": "unsubscribe", "id": 1}))
        .await;
    ws.subscribe(65, &["n/65", "n/1"], "now", false).await;
    put(&http, "l", "e1", json!({"n": 1})).await;
    put(&http, "l", "e65", json!({"n": 65})).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let v = ws.next().await;
        assert_eq!(v["op"], "change", "{v}");
        got.push((
            v["id"].as_u64().unwrap(),
            v["doc_id"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(got, [(65, "e1".to_owned()), (65, "e65".to_owned())]);
    ws.round_trip().await;
    assert!(ws.backlog.is_empty(), "nothing for id 1: {:?}", ws.backlog);

    // The query-string form subscribes at once, with id 0 (filter is repeatable).
    put(&http, "l", "u1", json!({"users": {"u1": {"name": "Ann"}}})).await;
    put(&http, "l", "u2", json!({"users": {"u2": {"email": "bob"}}})).await;
    put(&http, "l", MARKER, json!({})).await;
    let mut q = Ws::connect(
        &node.url,
        "/barrels/l/listen?filter=users/%2B/name/%23&filter=_id/zz-marker&since=0&include_docs=true",
    )
    .await;
    let v = q.next().await;
    assert_eq!(
        (v["op"].as_str(), v["id"].as_u64()),
        (Some("subscribed"), Some(0)),
        "{v}"
    );
    let got = until_marker(&mut q, &[0]).await;
    assert_eq!(got[&0].len(), 1, "{:?}", got[&0]);
    assert_eq!(got[&0][0]["doc_id"], "u1");
    assert_eq!(topics(&got[&0][0]), ["users/u1/name/Ann"]);
    assert_eq!(got[&0][0]["doc"]["users"]["u1"]["name"], "Ann");
    // ... and the connection takes frames as usual.
    q.subscribe(1, &["users/#"], "now", false).await;

    // A bad query string is a 400 before any upgrade.
    for qs in [
        "filter=a/%23/b",
        "filter=sport%2B",
        "filter=",
        "filter=a&since=soon",
        "filter=a&include_docs=yes",
    ] {
        let path = format!("/barrels/l/listen?{qs}");
        match Ws::try_connect(&node.url, &path).await {
            Err(WsClientError::InvalidResponseStatus(s)) => assert_eq!(s.as_u16(), 400, "{qs}"),
            Err(e) => panic!("{qs}: {e}"),
            Ok(_) => panic!("{qs}: upgraded"),
        }
        let a = http.get(&path).await;
        assert_status(&a, 400, qs);
        assert_eq!(a.body["error"], "bad_request", "{qs}: {}", a.body);
        assert!(a.body["reason"].is_string(), "{qs}: {}", a.body);
    }
    let long = format!("/barrels/l/listen?filter={}", "b".repeat(5_000));
    assert_status(&http.get(&long).await, 400, "a 5000-byte filter");
    match Ws::try_connect(&node.url, "/barrels/nope/listen").await {
        Err(WsClientError::InvalidResponseStatus(s)) => assert_eq!(s.as_u16(), 404),
        Err(e) => panic!("missing barrel: {e}"),
        Ok(_) => panic!("missing barrel: upgraded"),
    }
    // A plain GET without an upgrade is refused.
    let a = http.get("/barrels/l/listen?filter=a").await;
    assert_status(&a, 400, "no upgrade");

    // A frame over the 64 KiB frame limit gets an error frame, then the connection ends.
    let mut big = Ws::connect(&node.url, "/barrels/l/listen").await;
    big.send_text(format!(r#"{{"op":"ping","pad":"{}"}}"#, "a".repeat(70_000)))
        .await;
    let v = big.next().await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(big.next_or_end().await, None, "the connection ends");
    // ... and the others are unaffected.
    ws.round_trip().await;
}

/// Deleting a barrel ends its listeners' subscriptions with a frame (not silence), and a
/// resubscription on that connection is refused with an error frame.
#[actix_rt::test]
async fn deleting_a_barrel_ends_its_subscriptions() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "d").await;
    let mut ws = Ws::connect(&node.url, "/barrels/d/listen").await;
    ws.subscribe(1, &["#"], "now", false).await;
    put(&http, "d", "x", json!({"a": 1})).await;
    assert_eq!(ws.next().await["doc_id"], "x");
    assert_status(
        &http.call("DELETE", "/barrels/d").await,
        200,
        "delete barrel",
    );
    match ws.next_or_end().await {
        None => {}
        Some(v) => {
            assert!(v["op"] == "lagged" || v["op"] == "error", "{v}");
            assert_eq!(v["id"], 1, "{v}");
            let again = json!({"op": "subscribe", "id": 2, "filters": ["#"], "since": "1"});
            ws.send(&again).await;
            match ws.next_or_end().await {
                None => {}
                Some(v) => assert_eq!(v["op"], "error", "{v}"),
            }
        }
    }
    let gone = Ws::try_connect(&node.url, "/barrels/d/listen").await;
    assert!(
        matches!(gone, Err(WsClientError::InvalidResponseStatus(s)) if s.as_u16() == 404),
        "a deleted barrel is a 404"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The changes feed's `filter=` uses the same matcher

/// Reads a streaming response's body until `done` accepts the text so far.
/// `None` for `done` reads to the end of the body.
async fn read_until<S>(
    res: &mut awc::ClientResponse<S>,
    text: &mut String,
    done: Option<&dyn Fn(&str) -> bool>,
) where
    S: Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    while !done.is_some_and(|d| d(text)) {
        let chunk = tokio::time::timeout(HANG_GUARD, res.next())
            .await
            .expect("a chunk within the hang guard");
        match chunk {
            Some(c) => text.push_str(std::str::from_utf8(&c.expect("a chunk")).unwrap()),
            None if done.is_none() => return,
            None => panic!("the body ended early: {text:?}"),
        }
    }
}

#[actix_rt::test]
async fn changes_feed_filters_use_the_listener_matcher() {
    let _gate = GATE.read().await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start(dir.path()).await;
    let http = Http::new(&node);
    create_barrel(&http, "c").await;
    write_filter_docs(&http, "c").await;

    // Normal feed: each filter of the websocket scenarios selects the same documents.
    for case in CASES {
        let a = http
            .get(&format!(
                "/barrels/c/changes?since=0&filter={}",
                enc(case.filter)
            ))
            .await;
        assert_status(&a, 200, case.filter);
        let ids: BTreeSet<&str> = a.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .filter(|id| *id != MARKER)
            .collect();
        let want: BTreeSet<&str> = case.want.iter().map(|w| w.0).collect();
        assert_eq!(ids, want, "changes?filter={}", case.filter);
    }
    // Repeated filters are a union.
    let a = http
        .get(&format!(
            "/barrels/c/changes?since=0&filter={}&filter={}",
            enc("+/x"),
            enc("$sys/#")
        ))
        .await;
    let ids: Vec<&str> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sportx", "ax", "sys"]);
    for bad in BAD_FILTERS {
        let a = http
            .get(&format!("/barrels/c/changes?filter={}", enc(bad)))
            .await;
        assert_status(&a, 400, bad);
    }

    let client = awc::Client::builder().timeout(HANG_GUARD * 2).finish();
    let r1 = put(&http, "c", "t1", json!({"status": "open"})).await;
    let r2 = put(&http, "c", "t2", json!({"status": "open"})).await;
    let now = update_seq(&http, "c").await;

    // Longpoll: waiting (its heartbeat shows it), it wakes when t1 leaves status/open.
    let mut res = client
        .get(format!(
            "{}/barrels/c/changes?feed=longpoll&since={now}&filter=status/open&heartbeat=100&timeout=600000",
            node.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut text = String::new();
    read_until(&mut res, &mut text, Some(&|t| t.contains('\n'))).await;
    put(&http, "c", "t1", json!({"_rev": r1, "status": "closed"})).await;
    read_until(&mut res, &mut text, None).await;
    let answer: Value = serde_json::from_str(text.trim()).unwrap();
    let rows = answer["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{answer}");
    assert_eq!(rows[0]["id"], "t1");
    assert_eq!(seq(&rows[0]), now + 1);
    assert_eq!(answer["last_seq"], (now + 1).to_string());

    // Eventsource: live (a heartbeat came), it sends t2 leaving status/open.
    let mut res = client
        .get(format!(
            "{}/barrels/c/changes?feed=eventsource&since={}&filter=status/open&heartbeat=100",
            node.url,
            now + 1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut text = String::new();
    read_until(&mut res, &mut text, Some(&|t| t.contains(": heartbeat"))).await;
    put(&http, "c", "t2", json!({"_rev": r2, "status": "closed"})).await;
    let event_done =
        |t: &str| t.split("\n\n").any(|e| e.starts_with("id: ")) && t.ends_with("\n\n");
    read_until(&mut res, &mut text, Some(&event_done)).await;
    let event = text.split("\n\n").find(|e| e.starts_with("id: ")).unwrap();
    assert!(event.starts_with(&format!("id: {}\n", now + 2)), "{event}");
    let data: Value = serde_json::from_str(event.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(data["id"], "t2", "{event}");
}
