//! The `ListenerHub` actor: one per barrel, it holds the subscriptions of that barrel in a trie
//! of topic filters and hands every committed change to the subscriptions whose filters match
//! one of the change's topics (those of the previous and of the new winner, DESIGN §4).
//!
//! A [`ChangeStream`] is one subscription as its consumer sees it: it first replays the
//! changes feed from `since`, then goes live with no gap and no duplicate at the seam (it
//! registers with the hub *before* reading the feed, and drops live changes the replay
//! already covered). Each subscription has a bounded queue; when it is full the hub drops the
//! subscription and the stream ends with [`Lagged`], carrying the seq to resume from — memory
//! stays bounded whatever the clients do.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message, StreamHandler, Supervised,
};
use cooper_protocols::topic::{change_topics, TopicFilter, TopicTrie};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};

use crate::barrel::store::{ChangeRow, DocumentChanged, GetOptions};
use crate::barrel::BarrelHandle;
use crate::error::BarrelError;

/// Changes queued per subscription before it lags, unless configured otherwise (DESIGN §7).
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Rows read from the changes feed per step of a replay.
const REPLAY_STEP: usize = 256;

/// A committed change with its topics, shared by every subscription it is delivered to.
#[derive(Debug)]
pub struct Published {
    /// The change.
    pub change: Arc<DocumentChanged>,
    /// Its topics: `_id/<id>`, then those of the previous and of the new winner.
    pub topics: Vec<String>,
    doc_json: OnceLock<String>,
}

impl Published {
    fn new(change: Arc<DocumentChanged>) -> Self {
        let topics = change_topics(&change.id, change.old.as_deref(), change.new.as_deref());
        Self {
            change,
            topics,
            doc_json: OnceLock::new(),
        }
    }

    /// The new winner as JSON (`_id`, `_rev`, and the body, or `_deleted: true`), serialized
    /// once however many subscribers ask.
    pub fn doc_json(&self) -> &str {
        self.doc_json.get_or_init(|| {
            let c = &self.change;
            doc_value(&c.id, &c.rev.to_string(), c.deleted, c.new.as_deref()).to_string()
        })
    }
}

/// The CouchDB-shaped document of a change: body with `_id` and `_rev`, or a tombstone.
pub fn doc_value(id: &str, rev: &str, deleted: bool, body: Option<&Map<String, Value>>) -> Value {
    let mut m = Map::with_capacity(body.map_or(0, Map::len) + 3);
    m.insert("_id".into(), Value::String(id.to_owned()));
    m.insert("_rev".into(), Value::String(rev.to_owned()));
    if deleted {
        m.insert("_deleted".into(), Value::Bool(true));
    }
    if let Some(b) = body {
        for (k, v) in b {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// One change for one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The change, shared.
    pub published: Arc<Published>,
    /// Indexes into `published.topics` of the topics the subscription's filters matched.
    pub matched: Vec<u32>,
}

impl Delivery {
    /// The seq of the change.
    pub fn seq(&self) -> u64 {
        self.published.change.seq
    }

    /// The topics the subscription's filters matched.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.matched
            .iter()
            .map(|i| self.published.topics[*i as usize].as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Registers a subscription; changes matching `filters` go to `queue` from the moment the hub
/// handles this message.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Unique per hub: chosen by the caller from [`next_subscription_id`].
    pub id: u64,
    /// Its filters (at least one).
    pub filters: Vec<TopicFilter>,
    /// Where matching changes go.
    pub queue: mpsc::Sender<Delivery>,
}

/// Removes a subscription.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub u64);

/// Ends every subscription (the barrel is closing): their streams end with `Lagged`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EndSubscriptions;

/// Number of subscriptions registered (for tests and metrics).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CountSubscriptions;

/// A process-wide unique subscription id.
pub fn next_subscription_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The actor

/// The subscriptions of one barrel.
#[derive(Debug)]
pub struct ListenerHub {
    events: Option<broadcast::Receiver<Arc<DocumentChanged>>>,
    events_source: broadcast::Sender<Arc<DocumentChanged>>,
    trie: TopicTrie<u64>,
    queues: HashMap<u64, mpsc::Sender<Delivery>>,
}

/// What the event stream yields: a change, or how many changes the hub missed.
#[derive(Debug)]
enum Event {
    Change(Arc<DocumentChanged>),
    Missed,
}

impl ListenerHub {
    /// A hub fed by a barrel's change events.
    pub fn new(events: broadcast::Sender<Arc<DocumentChanged>>) -> Self {
        Self {
            events: Some(events.subscribe()),
            events_source: events,
            trie: TopicTrie::new(),
            queues: HashMap::new(),
        }
    }

    fn drop_subscriptions(&mut self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        for id in ids {
            self.queues.remove(id);
        }
        self.trie.retain(&mut |id| !ids.contains(id));
    }

    fn publish(&mut self, change: Arc<DocumentChanged>) {
        if self.queues.is_empty() {
            return;
        }
        let published = Arc::new(Published::new(change));
        let mut matched: HashMap<u64, Vec<u32>> = HashMap::new();
        for (i, topic) in published.topics.iter().enumerate() {
            self.trie.for_each_match(topic, |id| {
                let m = matched.entry(*id).or_default();
                if m.last() != Some(&(i as u32)) {
                    m.push(i as u32);
                }
            });
        }
        let mut dead = Vec::new();
        for (id, topics) in matched {
            let Some(queue) = self.queues.get(&id) else {
                continue;
            };
            let delivery = Delivery {
                published: published.clone(),
                matched: topics,
            };
            if queue.try_send(delivery).is_err() {
                // Full (the subscriber fell behind) or closed (it went away): either way the
                // subscription ends here; a lagging consumer learns it when its queue drains.
                dead.push(id);
            }
        }
        self.drop_subscriptions(&dead);
    }
}

impl Actor for ListenerHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        let rx = self
            .events
            .take()
            .unwrap_or_else(|| self.events_source.subscribe());
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(c) => Some((Event::Change(c), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Event::Missed, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        ctx.add_stream(stream);
    }
}

impl Supervised for ListenerHub {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Subscriptions end (their streams report `Lagged` and resume from the feed).
        self.queues.clear();
        self.trie = TopicTrie::new();
    }
}

impl StreamHandler<Event> for ListenerHub {
    fn handle(&mut self, event: Event, _ctx: &mut Self::Context) {
        match event {
            Event::Change(c) => self.publish(c),
            Event::Missed => {
                // The hub itself fell behind the barrel: every subscription resumes from the
                // feed, which has everything.
                tracing::warn!("listener hub fell behind; subscriptions resume from the feed");
                let all: Vec<u64> = self.queues.keys().copied().collect();
                self.drop_subscriptions(&all);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The barrel closed: end every subscription and stop.
        self.queues.clear();
        ctx.stop();
    }
}

impl Handler<Subscribe> for ListenerHub {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        for f in &msg.filters {
            self.trie.insert(f, msg.id);
        }
        self.queues.insert(msg.id, msg.queue);
    }
}

impl Handler<Unsubscribe> for ListenerHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.drop_subscriptions(&[msg.0]);
    }
}

impl Handler<EndSubscriptions> for ListenerHub {
    type Result = ();

    fn handle(&mut self, _: EndSubscriptions, _ctx: &mut Self::Context) {
        self.queues.clear();
        self.trie = TopicTrie::new();
    }
}

impl Handler<CountSubscriptions> for ListenerHub {
    type Result = usize;

    fn handle(&mut self, _: CountSubscriptions, _ctx: &mut Self::Context) -> usize {
        self.queues.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The consumer's side

/// A subscription that fell behind: resubscribe with `since = resume_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    /// The seq of the last change delivered (or replayed up to) before the subscription ended.
    pub resume_from: u64,
}

/// One change delivered to a subscription, replayed or live.
#[derive(Debug, Clone)]
pub struct StreamItem {
    /// The change's seq.
    pub seq: u64,
    /// The document id.
    pub id: String,
    /// The winning revision.
    pub rev: String,
    /// Whether the winner is a tombstone.
    pub deleted: bool,
    /// The topics that matched the subscription's filters.
    pub topics: Vec<String>,
    /// The winner as JSON, when asked for (`include_docs`).
    pub doc: Option<Arc<str>>,
}

/// Where `since` starts a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// After this seq (0: from the beginning).
    Seq(u64),
    /// From the current end of the feed.
    Now,
}

/// One subscription: replay from `since`, then live changes. See the module docs.
#[derive(Debug)]
pub struct ChangeStream {
    barrel: BarrelHandle,
    id: u64,
    trie: TopicTrie<()>,
    include_docs: bool,
    queue: mpsc::Receiver<Delivery>,
    /// `Some(cursor)` while replaying from the feed, after `cursor`.
    replay: Option<u64>,
    pending: std::collections::VecDeque<StreamItem>,
    /// Live changes up to this seq were covered by the replay.
    covered: u64,
    last: u64,
}

impl ChangeStream {
    /// Subscribes to `barrel`'s changes matching any of `filters` (`#` for all).
    pub async fn open(
        barrel: &BarrelHandle,
        filters: Vec<TopicFilter>,
        since: Since,
        include_docs: bool,
    ) -> Result<Self, BarrelError> {
        if filters.is_empty() {
            return Err(BarrelError::BadRequest(
                "a subscription needs at least one filter".into(),
            ));
        }
        let start = match since {
            Since::Seq(s) => s,
            // Read before registering: the replay then covers anything committed in between.
            Since::Now => barrel.counts()?.update_seq,
        };
        let mut trie = TopicTrie::new();
        for f in &filters {
            trie.insert(f, ());
        }
        let (tx, rx) = mpsc::channel(barrel.subscriber_queue());
        let id = next_subscription_id();
        barrel
            .hub()
            .send(Subscribe {
                id,
                filters,
                queue: tx,
            })
            .await
            .map_err(|_| BarrelError::Closed)?;
        Ok(Self {
            barrel: barrel.clone(),
            id,
            trie,
            include_docs,
            queue: rx,
            replay: Some(start),
            pending: Default::default(),
            covered: start,
            last: start,
        })
    }

    /// The seq of the last change delivered (or replayed up to).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The next change; `Err(Lagged)` once the subscription fell behind and ended.
    pub async fn next(&mut self) -> Result<StreamItem, Lagged> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                self.last = item.seq;
                return Ok(item);
            }
            if let Some(cursor) = self.replay {
                match self.replay_step(cursor) {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "replay failed");
                        return Err(Lagged {
                            resume_from: self.last,
                        });
                    }
                }
            }
            let Some(d) = self.queue.recv().await else {
                return Err(Lagged {
                    resume_from: self.last,
                });
            };
            if d.seq() <= self.covered {
                continue;
            }
            let c = &d.published.change;
            let item = StreamItem {
                seq: c.seq,
                id: c.id.clone(),
                rev: c.rev.to_string(),
                deleted: c.deleted,
                topics: d.topics().map(str::to_owned).collect(),
                doc: self.include_docs.then(|| Arc::from(d.published.doc_json())),
            };
            self.last = item.seq;
            return Ok(item);
        }
    }

    /// Reads one step of the feed after `cursor` into `pending`; ends the replay at its end.
    fn replay_step(&mut self, cursor: u64) -> Result<(), BarrelError> {
        let rows = self.barrel.changes(cursor, REPLAY_STEP)?;
        let done = rows.len() < REPLAY_STEP;
        let mut next = cursor;
        for row in rows {
            next = row.seq;
            if let Some(item) = self.replayed(&row)? {
                self.pending.push_back(item);
            }
        }
        self.covered = next;
        if done {
            self.replay = None;
            if self.pending.is_empty() {
                self.last = self.last.max(next);
            }
        } else {
            self.replay = Some(next);
        }
        Ok(())
    }

    /// A feed row as a stream item, if the filters match the topics of the current winner or
    /// of the winners the document had before (which the feed keeps with the row).
    fn replayed(&self, row: &ChangeRow) -> Result<Option<StreamItem>, BarrelError> {
        let doc = if row.deleted {
            None
        } else {
            match self.barrel.get(
                &row.id,
                &GetOptions {
                    rev: Some(row.rev),
                    ..GetOptions::default()
                },
            ) {
                Ok(d) => Some(d),
                Err(BarrelError::NotFound(_)) => None,
                Err(e) => return Err(e),
            }
        };
        let Some(matched) =
            row.matching_topics(doc.as_ref().map(|d| &d.body), |t| self.trie.matches(t))
        else {
            return Ok(None);
        };
        let rev = row.rev.to_string();
        let doc_json = self.include_docs.then(|| {
            Arc::from(
                doc_value(&row.id, &rev, row.deleted, doc.as_ref().map(|d| &d.body)).to_string(),
            )
        });
        Ok(Some(StreamItem {
            seq: row.seq,
            id: row.id.clone(),
            rev,
            deleted: row.deleted,
            topics: matched,
            doc: doc_json,
        }))
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        self.barrel.hub().do_send(Unsubscribe(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrel::store::Store;
    use crate::barrel::Barrel;
    use cooper_protocols::ids::BarrelName;
    use serde_json::json;

    fn start(dir: &tempfile::TempDir) -> BarrelHandle {
        let store = Arc::new(Store::open(&dir.path().join("b.redb"), Default::default()).unwrap());
        Barrel::start(BarrelName::new("b").unwrap(), store, None)
    }

    fn filters(fs: &[&str]) -> Vec<TopicFilter> {
        fs.iter().map(|f| TopicFilter::parse(f).unwrap()).collect()
    }

    #[actix_rt::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        for i in 0..300 {
            b.put(
                json!({"_id": format!("d{i:03}"), "kind": if i % 2 == 0 { "even" } else { "odd" }}),
            )
            .await
            .unwrap();
        }
        let mut s = b
            .listen(filters(&["kind/even"]), Since::Seq(0), true)
            .await
            .unwrap();
        // Writes racing with the replay.
        let writer = {
            let b = b.clone();
            actix_rt::spawn(async move {
                for i in 300..600 {
                    b.put(json!({"_id": format!("d{i:03}"), "kind": if i % 2 == 0 { "even" } else { "odd" }})).await.unwrap();
                }
            })
        };
        let mut seqs = Vec::new();
        while seqs.len() < 300 {
            let item = s.next().await.unwrap();
            assert_eq!(item.topics, vec!["kind/even".to_owned()]);
            assert!(item.doc.as_deref().unwrap().contains("\"kind\":\"even\""));
            seqs.push(item.seq);
        }
        writer.await.unwrap();
        let expected: Vec<u64> = (1..=600).filter(|s| s % 2 == 1).collect();
        assert_eq!(seqs, expected, "every even document once, in seq order");
    }

    #[actix_rt::test]
    async fn a_document_leaving_the_set_and_deletions_notify() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let mut s = b
            .listen(filters(&["status/open"]), Since::Now, false)
            .await
            .unwrap();
        let r = b.put(json!({"_id": "t", "status": "open"})).await.unwrap();
        assert_eq!(s.next().await.unwrap().id, "t");
        let r = b
            .put(json!({"_id": "t", "_rev": r.rev, "status": "closed"}))
            .await
            .unwrap();
        let left = s.next().await.unwrap();
        assert_eq!(
            (left.seq, left.topics.clone()),
            (2, vec!["status/open".to_owned()])
        );
        let mut any = b
            .listen(filters(&["_id/t"]), Since::Now, false)
            .await
            .unwrap();
        b.delete("t", cooper_protocols::ids::Rev::parse(&r.rev).unwrap())
            .await
            .unwrap();
        let gone = any.next().await.unwrap();
        assert!(gone.deleted);
        assert_eq!(gone.seq, 3);
    }

    #[actix_rt::test]
    async fn a_slow_subscriber_lags_and_resumes_from_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let mut s = b.listen(filters(&["#"]), Since::Now, false).await.unwrap();
        // The first change ends the (empty) replay; then the subscriber stops reading.
        b.put(json!({"_id": "first"})).await.unwrap();
        assert_eq!(s.next().await.unwrap().seq, 1);
        let n = SUBSCRIBER_QUEUE + 200;
        let ops = (0..n).map(|i| {
            crate::barrel::store::WriteOp::Edit(
                cooper_protocols::document::split(json!({"_id": format!("d{i:05}")})).unwrap(),
            )
        });
        for chunk in ops.collect::<Vec<_>>().chunks(100) {
            b.write(chunk.to_vec()).await.unwrap();
        }
        // Changes are published when the barrel file commits and reach the hub a little
        // later: wait until it gave up on the subscriber that reads nothing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while b.hub().send(CountSubscriptions).await.unwrap() > 0 {
            assert!(std::time::Instant::now() < deadline, "never lagged");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut got = vec![1];
        let lagged = loop {
            match s.next().await {
                Ok(item) => got.push(item.seq),
                Err(l) => break l,
            }
        };
        // What the bounded queue held was delivered in order, then the lag.
        assert!(
            got.len() <= SUBSCRIBER_QUEUE + 1 && got.len() > SUBSCRIBER_QUEUE / 2,
            "{}",
            got.len()
        );
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
        assert_eq!(lagged.resume_from, *got.last().unwrap());
        assert_eq!(
            b.hub().send(CountSubscriptions).await.unwrap(),
            0,
            "dropped from the hub"
        );
        // Resuming from the feed delivers the rest exactly once.
        let mut again = b
            .listen(filters(&["#"]), Since::Seq(lagged.resume_from), false)
            .await
            .unwrap();
        for seq in lagged.resume_from + 1..=n as u64 + 1 {
            assert_eq!(again.next().await.unwrap().seq, seq);
        }
    }
}
