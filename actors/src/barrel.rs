//! The `Barrel` actor: owns one barrel's redb store, applies writes in groups on a dedicated
//! writer thread, and publishes a [`DocumentChanged`] for every change once it is committed.
//!
//! **Group commit**: writes that arrive while the writer is busy queue up in a bounded
//! channel and are applied together as the next group; the log thread makes the log records
//! queued meanwhile durable with one fsync, so N concurrent writers cost about one fsync. A
//! write is acknowledged only once its log record is durable. The barrel file's transaction
//! spans groups and commits (without fsync) when a reader asks for what it holds, when it is
//! large and no write waits, after [`store::TXN_MAX_AGE`], or when full (see
//! [`Store::apply_group`]).
//! **Reads** go straight to the store through a [`BarrelHandle`] on read transactions, from
//! the caller's thread, never through the actor's mailbox; a read that starts after a write
//! was acknowledged waits for the commit that makes it visible (it asks for it: no fsync).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use actix::{
    Actor, Addr, ArbiterHandle, Context, Handler, Message, ResponseFuture, Supervised, Supervisor,
};
use cooper_protocols::document::{self, IncomingDoc};
use cooper_protocols::ids::{BarrelName, Rev};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

pub mod runs;
pub mod store;
mod wal;

pub use store::DocumentChanged;
use store::{
    Ack, AttachmentMeta, BarrelCounts, ChangeRow, DocRevision, GetOptions, OpenRev, OpenRevs,
    OpenTxn, Plan, Prepared, Query, QueryPage, RevsDiff, Store, WriteOp, WriteResult,
};

use crate::error::BarrelError;
use crate::listener::{ChangeStream, ListenerHub, Since};

/// Queued write requests per barrel before senders wait (each may hold many documents).
pub const WRITE_QUEUE: usize = 1024;
/// Most documents one group commit takes from the queue (a single larger request still
/// commits whole, in one transaction).
pub const MAX_BATCH_OPS: usize = 4096;
/// An open transaction with at least this many writes commits as soon as no write waits
/// (smaller ones wait for more writes, a reader, or [`store::TXN_MAX_AGE`]).
pub const EAGER_COMMIT_OPS: usize = 64;
/// Events kept for slow subscribers of [`DocumentChanged`] before they lag.
pub const EVENT_BUFFER: usize = 4096;

/// The results of one write request, one per operation, in order.
pub type WriteResults = Vec<Result<WriteResult, BarrelError>>;

// ---------------------------------------------------------------------------------------------
// Messages

/// Writes a batch of operations; they commit in one group commit (possibly with other
/// requests). Each operation succeeds or fails on its own.
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteResults, BarrelError>")]
pub struct Write(pub Vec<WriteOp>);

/// [`Write`] of writes already prepared on the caller's thread.
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteResults, BarrelError>")]
pub struct WritePrepared(pub Prepared);

/// Stops the writer after the writes already queued have committed; later writes get
/// [`BarrelError::Closed`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close;

// ---------------------------------------------------------------------------------------------
// The actor

/// One open barrel. Started under an actix `Supervisor` by the registry: if a handler panics
/// the actor restarts with the same address, its store and a fresh writer thread.
#[derive(Debug)]
pub struct Barrel {
    name: BarrelName,
    store: Arc<Store>,
    events: broadcast::Sender<Arc<DocumentChanged>>,
    writer: Option<WriterThread>,
    link: WriterLink,
    closed: bool,
}

/// The writer thread's queue, shared by the actor (which starts, restarts and stops the
/// thread) and every handle: a handle queues its writes straight to the writer thread and
/// gets its answer straight from it, without two hops through the actor's arbiter thread
/// (each a cross-thread wake-up, about 45 µs apiece on a 2-core VM). Empty before the first
/// writer starts and after [`Close`]; a handle that finds it empty or its thread gone asks
/// the actor, which starts the writer again (or answers `Closed`).
#[derive(Debug, Clone, Default)]
struct WriterLink(Arc<Mutex<Option<mpsc::Sender<WriteJob>>>>);

impl WriterLink {
    fn get(&self) -> Option<mpsc::Sender<WriteJob>> {
        let tx = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tx.as_ref().filter(|tx| !tx.is_closed()).cloned()
    }

    fn set(&self, tx: Option<mpsc::Sender<WriteJob>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = tx;
    }
}

#[derive(Debug)]
struct WriterThread {
    tx: mpsc::Sender<WriteJob>,
    thread: JoinHandle<()>,
}

#[derive(Debug)]
struct WriteJob {
    ops: Prepared,
    reply: oneshot::Sender<Result<WriteResults, BarrelError>>,
}

impl Barrel {
    /// Starts a supervised barrel actor over an open store, on `arbiter` (or the current
    /// one), and returns its handle.
    pub fn start(
        name: BarrelName,
        store: Arc<Store>,
        arbiter: Option<&ArbiterHandle>,
    ) -> BarrelHandle {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let link = WriterLink::default();
        let barrel = Barrel {
            name: name.clone(),
            store: store.clone(),
            events: events.clone(),
            writer: None,
            link: link.clone(),
            closed: false,
        };
        let hub = ListenerHub::new(events.clone());
        let (addr, hub) = match arbiter {
            Some(a) => (
                Supervisor::start_in_arbiter(a, move |_| barrel),
                Supervisor::start_in_arbiter(a, move |_| hub),
            ),
            None => (
                Supervisor::start(move |_| barrel),
                Supervisor::start(move |_| hub),
            ),
        };
        BarrelHandle {
            name,
            addr,
            store,
            events,
            hub,
            link,
            subscriber_queue: crate::listener::SUBSCRIBER_QUEUE,
        }
    }

    fn ensure_writer(&mut self) {
        let alive = self
            .writer
            .as_ref()
            .is_some_and(|w| !w.thread.is_finished());
        if alive || self.closed {
            return;
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let store = self.store.clone();
        let events = self.events.clone();
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("barrel-{}", self.name))
            .spawn(move || writer_loop(&name, &store, rx, &events))
            .expect("spawn a barrel writer thread");
        self.link.set(Some(tx.clone()));
        self.writer = Some(WriterThread { tx, thread });
    }
}

impl Actor for Barrel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.ensure_writer();
    }
}

impl Supervised for Barrel {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(barrel = %self.name, "barrel actor restarting");
        self.ensure_writer();
    }
}

impl Handler<Write> for Barrel {
    type Result = ResponseFuture<Result<WriteResults, BarrelError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) -> Self::Result {
        match Prepared::new(msg.0) {
            Ok(p) => Handler::<WritePrepared>::handle(self, WritePrepared(p), ctx),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl Handler<WritePrepared> for Barrel {
    type Result = ResponseFuture<Result<WriteResults, BarrelError>>;

    fn handle(&mut self, msg: WritePrepared, _ctx: &mut Self::Context) -> Self::Result {
        self.ensure_writer();
        let tx = self.writer.as_ref().map(|w| w.tx.clone());
        Box::pin(async move {
            let tx = tx.ok_or(BarrelError::Closed)?;
            let (reply, answer) = oneshot::channel();
            tx.send(WriteJob { ops: msg.0, reply })
                .await
                .map_err(|_| BarrelError::Closed)?;
            answer.await.map_err(|_| BarrelError::Closed)?
        })
    }
}

impl Handler<Close> for Barrel {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, _ctx: &mut Self::Context) -> Self::Result {
        self.closed = true;
        // Handles fall back to this actor, which answers `Closed`; the thread exits once the
        // senders of writes already on their way are gone.
        self.link.set(None);
        let writer = self.writer.take();
        let store = self.store.clone();
        Box::pin(async move {
            if let Some(w) = writer {
                drop(w.tx);
                // The thread drains the queue, commits and exits; wait off the actor thread.
                let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
            }
            store.close();
        })
    }
}

/// A test-only message whose handler panics, to exercise supervision.
#[cfg(test)]
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Poison;

#[cfg(test)]
impl Handler<Poison> for Barrel {
    type Result = ();

    fn handle(&mut self, _: Poison, ctx: &mut Self::Context) {
        let outcome = catch_unwind(AssertUnwindSafe(|| panic!("poisoned")));
        if outcome.is_err() {
            actix::ActorContext::stop(ctx);
        }
    }
}

/// What the writer does next.
enum Next {
    Job(WriteJob),
    /// Answer the groups whose log records became durable.
    Acknowledge,
    /// Commit the open transaction.
    Commit,
    /// Nothing to do for a while: checkpoint.
    Idle,
    Closed,
}

/// Takes queued writes in groups and applies each group inside the barrel file's open
/// transaction, answering its writers as soon as its log record is durable; commits the
/// transaction (which makes the groups visible) when a reader asks for them, after
/// [`store::TXN_MAX_AGE`], or when it is full, then publishes the changes.
fn writer_loop(
    name: &BarrelName,
    store: &Store,
    mut rx: mpsc::Receiver<WriteJob>,
    events: &broadcast::Sender<Arc<DocumentChanged>>,
) {
    // A small runtime of the writer thread's own, to wait for work with a timeout.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(barrel = %name, error = %e, "cannot start the writer's timer");
            return;
        }
    };
    let mut open = OpenGuard { store, open: None };
    let open = &mut open.open;
    loop {
        let next = match &*open {
            Some(o)
                if o.is_full()
                    || store.commit_wanted()
                    || o.started().elapsed() >= store::TXN_MAX_AGE
                    // Large enough to be worth its commit, and nothing waits: commit now,
                    // before a reader (often the writer, reading back) has to ask.
                    || (o.ops() >= EAGER_COMMIT_OPS && rx.is_empty()) =>
            {
                Next::Commit
            }
            Some(o) => {
                let deadline = tokio::time::Instant::from_std(o.started() + store::TXN_MAX_AGE);
                let waits_for_log = o.has_unacknowledged();
                rt.block_on(async {
                    tokio::select! {
                        job = rx.recv() => job.map_or(Next::Closed, Next::Job),
                        () = store.log_progressed(), if waits_for_log => Next::Acknowledge,
                        () = store.commit_requested() => Next::Commit,
                        () = tokio::time::sleep_until(deadline) => Next::Commit,
                    }
                })
            }
            None if store.needs_checkpoint() => {
                let wait =
                    async { tokio::time::timeout(store::CHECKPOINT_INTERVAL, rx.recv()).await };
                match rt.block_on(wait) {
                    Ok(job) => job.map_or(Next::Closed, Next::Job),
                    Err(_) => Next::Idle,
                }
            }
            None => rx.blocking_recv().map_or(Next::Closed, Next::Job),
        };
        match next {
            Next::Job(first) => group_commit(name, store, open, &mut rx, first),
            Next::Acknowledge => {
                if let Err(e) = store.acknowledge(open) {
                    tracing::error!(barrel = %name, error = %e, "group commit failed");
                }
            }
            Next::Commit => {
                if let Some(o) = open.take() {
                    commit(name, store, o, events);
                }
            }
            Next::Idle => {
                // Idle: make the barrel file durable and start a new log cycle.
                if let Err(e) = store.checkpoint() {
                    tracing::warn!(barrel = %name, error = %e, "checkpoint failed");
                }
            }
            Next::Closed => break,
        }
    }
    if let Some(o) = open.take() {
        commit(name, store, o, events);
    }
    // The writer can stop without the store closing (a restarted actor starts another).
    if let Err(e) = store.checkpoint() {
        if !matches!(e, BarrelError::Closed) {
            tracing::warn!(barrel = %name, error = %e, "checkpoint at stop failed");
        }
    }
}

/// The writer's open transaction: dropped by a panic while it holds acknowledged writes, it
/// fails the store (reads and writes) until it is reopened, which applies them from the log.
struct OpenGuard<'a> {
    store: &'a Store,
    open: Option<OpenTxn>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        if self.open.take().is_some_and(|o| o.holds_acknowledged()) {
            self.store.poison();
        }
    }
}

/// Applies `first` and the writes queued behind it as one group in the open transaction.
fn group_commit(
    name: &BarrelName,
    store: &Store,
    open: &mut Option<OpenTxn>,
    rx: &mut mpsc::Receiver<WriteJob>,
    first: WriteJob,
) {
    let mut count = first.ops.len();
    let mut jobs = vec![first];
    while count < MAX_BATCH_OPS {
        match rx.try_recv() {
            Ok(job) => {
                count += job.ops.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    let mut sizes = Vec::with_capacity(jobs.len());
    let mut ops = Prepared::default();
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        sizes.push(job.ops.len());
        ops.append(job.ops);
        replies.push(job.reply);
    }
    let started = Instant::now();
    let requests = sizes.len();
    // Writers are answered as soon as the group is durable (see `Store::apply_group`).
    let ack: Ack = Box::new(move |outcome| match outcome {
        Ok(results) => {
            let mut results = results.into_iter();
            for (reply, n) in replies.into_iter().zip(&sizes) {
                let _ = reply.send(Ok(results.by_ref().take(*n).collect()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| store.apply_group(open, ops, ack)));
    let elapsed = started.elapsed();
    metrics::histogram!("cooper_commit_seconds").record(elapsed.as_secs_f64());
    metrics::histogram!("cooper_commit_batch_documents").record(count as f64);
    tracing::debug!(barrel = %name, requests, docs = count,
        micros = elapsed.as_micros() as u64, "group commit");
    match outcome {
        Ok(Ok(())) => {}
        // The writers have their answer.
        Ok(Err(e)) => tracing::error!(barrel = %name, error = %e, "group commit failed"),
        Err(_) => {
            // Unanswered writers see their reply channel dropped.
            tracing::error!(barrel = %name, "group commit panicked; the barrel refuses writes until it is reopened");
            open.take();
            store.poison();
        }
    }
}

/// Commits the open transaction and publishes its changes.
fn commit(
    name: &BarrelName,
    store: &Store,
    open: OpenTxn,
    events: &broadcast::Sender<Arc<DocumentChanged>>,
) {
    let started = Instant::now();
    let docs = open.ops();
    match catch_unwind(AssertUnwindSafe(|| store.commit_open(open))) {
        Ok(Ok(changes)) => {
            metrics::counter!("cooper_documents_written_total").increment(changes.len() as u64);
            for change in changes {
                // No subscriber is not an error.
                let _ = events.send(Arc::new(change));
            }
        }
        Ok(Err(e)) => {
            tracing::error!(barrel = %name, error = %e, "committing the barrel file failed");
        }
        Err(_) => {
            tracing::error!(barrel = %name, "committing the barrel file panicked; the barrel refuses writes until it is reopened");
            store.poison();
        }
    }
    tracing::debug!(barrel = %name, docs, micros = started.elapsed().as_micros() as u64,
        "barrel file commit");
}

// ---------------------------------------------------------------------------------------------
// The handle

/// A cheap, cloneable handle on an open barrel: writes go through the actor (and its group
/// commit), reads run on the caller's thread on their own read transaction.
#[derive(Debug, Clone)]
pub struct BarrelHandle {
    name: BarrelName,
    addr: Addr<Barrel>,
    store: Arc<Store>,
    events: broadcast::Sender<Arc<DocumentChanged>>,
    hub: Addr<ListenerHub>,
    link: WriterLink,
    subscriber_queue: usize,
}

impl BarrelHandle {
    /// The barrel's name.
    pub fn name(&self) -> &BarrelName {
        &self.name
    }

    /// The barrel actor's address.
    pub fn addr(&self) -> &Addr<Barrel> {
        &self.addr
    }

    /// The same handle, whose subscriptions queue `n` changes before they lag.
    pub fn with_subscriber_queue(mut self, n: usize) -> Self {
        self.subscriber_queue = n.max(1);
        self
    }

    /// Changes a subscription queues before it lags.
    pub fn subscriber_queue(&self) -> usize {
        self.subscriber_queue
    }

    /// The barrel's listener hub.
    pub fn hub(&self) -> &Addr<ListenerHub> {
        &self.hub
    }

    /// Subscribes to changes matching `filters`, replayed from `since` then live; see
    /// [`ChangeStream`].
    pub async fn listen(
        &self,
        filters: Vec<cooper_protocols::topic::TopicFilter>,
        since: Since,
        include_docs: bool,
    ) -> Result<ChangeStream, BarrelError> {
        ChangeStream::open(self, filters, since, include_docs).await
    }

    /// Writes a batch; see [`Write`].
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<WriteResults, BarrelError> {
        // Encoded here, on the caller's thread, not on the barrel's writer thread.
        self.write_prepared(Prepared::new(ops)?).await
    }

    /// Queues prepared writes on the writer thread at once (straight through the shared link
    /// while the thread runs, else through the actor, which starts the writer again or
    /// answers `Closed`) and returns the future of their results.
    fn write_prepared(
        &self,
        ops: Prepared,
    ) -> impl std::future::Future<Output = Result<WriteResults, BarrelError>> {
        type Answer = oneshot::Receiver<Result<WriteResults, BarrelError>>;
        enum Queued {
            Writer(Answer),
            Full(mpsc::Sender<WriteJob>, WriteJob, Answer),
            Actor(actix::dev::Request<Barrel, WritePrepared>),
        }
        let queued = match self.link.get() {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                match tx.try_send(WriteJob { ops, reply }) {
                    Ok(()) => Queued::Writer(answer),
                    Err(mpsc::error::TrySendError::Full(job)) => Queued::Full(tx, job, answer),
                    Err(mpsc::error::TrySendError::Closed(job)) => {
                        Queued::Actor(self.addr.send(WritePrepared(job.ops)))
                    }
                }
            }
            None => Queued::Actor(self.addr.send(WritePrepared(ops))),
        };
        let addr = self.addr.clone();
        async move {
            let answer = match queued {
                Queued::Writer(answer) => answer,
                Queued::Full(tx, job, answer) => match tx.send(job).await {
                    Ok(()) => answer,
                    Err(mpsc::error::SendError(job)) => {
                        return addr
                            .send(WritePrepared(job.ops))
                            .await
                            .map_err(|_| BarrelError::Closed)?
                    }
                },
                Queued::Actor(request) => {
                    return request.await.map_err(|_| BarrelError::Closed)?;
                }
            };
            answer.await.unwrap_or(Err(BarrelError::Closed))
        }
    }

    /// Queues a batch at once (encoded on this thread) and returns its results' future: a
    /// caller can prepare the next batch while the writer applies this one.
    pub fn submit(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<impl std::future::Future<Output = Result<WriteResults, BarrelError>>, BarrelError>
    {
        Ok(self.write_prepared(Prepared::new(ops)?))
    }

    /// Writes one operation.
    pub async fn write_one(&self, op: WriteOp) -> Result<WriteResult, BarrelError> {
        self.write(vec![op])
            .await?
            .pop()
            .ok_or(BarrelError::Closed)?
    }

    /// Creates or updates a document from its JSON (`_id` optional, `_rev` for updates).
    pub async fn put(&self, doc: Value) -> Result<WriteResult, BarrelError> {
        let doc = document::split(doc).map_err(|e| BarrelError::BadRequest(e.to_string()))?;
        self.write_one(WriteOp::Edit(doc)).await
    }

    /// Inserts a replicated revision with its `_revisions` history (`new_edits=false`).
    pub async fn put_replicated(&self, doc: Value) -> Result<WriteResult, BarrelError> {
        let doc = document::split(doc).map_err(|e| BarrelError::BadRequest(e.to_string()))?;
        self.write_one(WriteOp::Replicate(doc)).await
    }

    /// Deletes a document: writes a tombstone on `rev`.
    pub async fn delete(&self, id: &str, rev: Rev) -> Result<WriteResult, BarrelError> {
        let doc = IncomingDoc {
            id: Some(id.to_owned()),
            rev: Some(rev),
            deleted: true,
            ..IncomingDoc::default()
        };
        self.write_one(WriteOp::Edit(doc)).await
    }

    /// A document's winner or a given revision.
    pub fn get(&self, id: &str, opts: &GetOptions) -> Result<DocRevision, BarrelError> {
        self.store.get(id, opts)
    }

    /// Leaves of a document (`open_revs`).
    pub fn open_revs(&self, id: &str, which: &OpenRevs) -> Result<Vec<OpenRev>, BarrelError> {
        self.store.open_revs(id, which)
    }

    /// `open_revs` of several documents on one read transaction; see
    /// [`Store::open_revs_many`].
    pub fn open_revs_many(
        &self,
        asked: &[(&str, &OpenRevs)],
    ) -> Result<Vec<Result<Vec<OpenRev>, BarrelError>>, BarrelError> {
        self.store.open_revs_many(asked)
    }

    /// Live documents by id; see [`Store::all_docs`].
    pub fn all_docs(
        &self,
        start: Option<&str>,
        end: Option<&str>,
        inclusive_end: bool,
        descending: bool,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<store::AllDocsRow>, BarrelError> {
        self.store
            .all_docs(start, end, inclusive_end, descending, skip, limit)
    }

    /// The revision tree of a document, if it exists.
    pub fn rev_tree(
        &self,
        id: &str,
    ) -> Result<Option<cooper_protocols::rev_tree::RevTree>, BarrelError> {
        self.store.rev_tree(id)
    }

    /// The changes feed after `since`.
    pub fn changes(&self, since: u64, limit: usize) -> Result<Vec<ChangeRow>, BarrelError> {
        self.store.changes(since, limit)
    }

    /// A path query.
    pub fn query(&self, query: &Query) -> Result<QueryPage, BarrelError> {
        self.store.query(query)
    }

    /// How many documents match a query, over all pages.
    pub fn count(&self, query: &Query) -> Result<usize, BarrelError> {
        self.store.count(query)
    }

    /// How a query would be answered.
    pub fn explain(&self, query: &Query) -> Result<Plan, BarrelError> {
        self.store.explain(query)
    }

    /// Which of the given revisions the barrel lacks.
    pub fn revs_diff(
        &self,
        asked: &BTreeMap<String, Vec<Rev>>,
    ) -> Result<BTreeMap<String, RevsDiff>, BarrelError> {
        self.store.revs_diff(asked)
    }

    /// [`BarrelHandle::revs_diff`] on what is committed; see [`Store::revs_diff_committed`].
    pub fn revs_diff_committed(
        &self,
        asked: &BTreeMap<String, Vec<Rev>>,
    ) -> Result<BTreeMap<String, RevsDiff>, BarrelError> {
        self.store.revs_diff_committed(asked)
    }

    /// Counts, update seq and file size.
    pub fn counts(&self) -> Result<BarrelCounts, BarrelError> {
        self.store.counts()
    }

    /// A local document and its `0-N` revision.
    pub fn get_local(
        &self,
        id: &str,
    ) -> Result<(serde_json::Map<String, Value>, u64), BarrelError> {
        self.store.get_local(id)
    }

    /// An attachment's metadata and content.
    pub fn get_attachment(
        &self,
        id: &str,
        name: &str,
        rev: Option<Rev>,
    ) -> Result<(AttachmentMeta, Vec<u8>), BarrelError> {
        self.store.get_attachment(id, name, rev)
    }

    /// Subscribes to the changes committed from now on. A receiver that falls more than
    /// [`EVENT_BUFFER`] events behind gets `Lagged` and should resume from the changes feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DocumentChanged>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start(dir: &tempfile::TempDir) -> BarrelHandle {
        let store = Arc::new(Store::open(&dir.path().join("b.redb"), Default::default()).unwrap());
        Barrel::start(BarrelName::new("b").unwrap(), store, None)
    }

    #[actix_rt::test]
    async fn concurrent_writes_are_group_committed_and_published() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let mut events = b.subscribe();
        let writes = (0..200).map(|i| {
            let b = b.clone();
            async move { b.put(json!({"_id": format!("d{i:03}"), "n": i})).await }
        });
        let results = futures_join_all(writes).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(b.counts().unwrap().doc_count, 200);
        assert_eq!(b.counts().unwrap().update_seq, 200);
        let mut seqs = Vec::new();
        for _ in 0..200 {
            seqs.push(events.recv().await.unwrap().seq);
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    }

    #[actix_rt::test]
    async fn every_writer_reads_its_own_write_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let writes = (0..64).map(|i| {
            let b = b.clone();
            async move {
                let id = format!("d{i:02}");
                let r = b.put(json!({"_id": id, "n": i})).await.unwrap();
                // Answered means durable in the log; the read asks the writer to commit the
                // barrel file's open transaction, and sees the write.
                let got = b.get(&id, &GetOptions::default()).unwrap();
                assert_eq!(got.rev.to_string(), r.rev);
                let page = b
                    .query(&Query {
                        conditions: vec![store::Condition {
                            path: "/n".into(),
                            op: store::Op::Eq(json!(i)),
                        }],
                        limit: 10,
                        ..Query::default()
                    })
                    .unwrap();
                assert_eq!(page.docs.len(), 1, "the index holds it too");
            }
        });
        futures_join_all(writes).await;
        assert_eq!(b.counts().unwrap().doc_count, 64);
    }

    #[actix_rt::test]
    async fn changes_are_published_without_a_reader_asking() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let mut events = b.subscribe();
        b.put(json!({"_id": "a"})).await.unwrap();
        // The open transaction commits on its own, after `TXN_MAX_AGE`.
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("published")
            .unwrap();
        assert_eq!(got.id, "a");
    }

    #[actix_rt::test]
    async fn a_panicking_barrel_restarts_with_its_address_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        let r = b.put(json!({"_id": "a", "v": 1})).await.unwrap();
        b.addr().send(Poison).await.unwrap();
        // Same address, data intact, writes still work.
        let got = b.get("a", &GetOptions::default()).unwrap();
        assert_eq!(got.rev.to_string(), r.rev);
        let r2 = b
            .put(json!({"_id": "a", "_rev": r.rev, "v": 2}))
            .await
            .unwrap();
        assert!(r2.rev.starts_with("2-"));
    }

    #[actix_rt::test]
    async fn writes_after_close_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = start(&dir);
        b.put(json!({"_id": "a"})).await.unwrap();
        b.addr().send(Close).await.unwrap();
        assert_eq!(b.put(json!({"_id": "b"})).await, Err(BarrelError::Closed));
        assert_eq!(b.get("a", &GetOptions::default()), Err(BarrelError::Closed));
        // The file is released: it opens again at once.
        Store::open(&dir.path().join("b.redb"), Default::default()).unwrap();
    }

    async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = fs.map(actix_rt::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
