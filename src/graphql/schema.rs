//! The GraphQL schema: queries, mutations and subscriptions over the same barrels, query
//! engine and listener hub as the REST API — no rule is implemented twice.

use std::sync::Arc;

use async_graphql::{
    Context, Enum, Error, ErrorExtensions, InputObject, Json, MaybeUndefined, Object, SimpleObject,
    Subscription,
};
use cooper_actors::barrel::store::{Condition, DocRevision, GetOptions, Op, Query, WriteOp};
use cooper_actors::listener::{Lagged, Since};
use cooper_actors::BarrelHandle;
use cooper_protocols::document;
use cooper_protocols::ids::{BarrelName, Rev};
use cooper_protocols::path;
use cooper_protocols::topic::TopicFilter;
use futures_util::Stream;
use serde_json::Value;

use crate::config::{Config, Role};
use crate::http::auth::Principal;
use crate::http::ApiError;
use crate::node::Node;

/// Most items one connection page or changes page returns.
pub const MAX_FIRST: i32 = 1000;
/// Items a page returns when `first` is not given.
pub const DEFAULT_FIRST: i32 = 100;

/// An `ApiError` as a GraphQL error whose `extensions.code` is the REST error kind.
pub fn gql(e: impl Into<ApiError>) -> Error {
    let e = e.into();
    Error::new(e.reason.clone()).extend_with(|_, ext| ext.set("code", e.kind))
}

fn node<'a>(ctx: &Context<'a>) -> &'a Node {
    ctx.data_unchecked::<Node>()
}

fn config<'a>(ctx: &Context<'a>) -> &'a Config {
    ctx.data_unchecked::<Arc<Config>>()
}

/// Checks that the request's principal holds `role` (on `barrel`). Without auth configured
/// every request is an unscoped admin.
fn require(ctx: &Context<'_>, role: Role, barrel: Option<&str>) -> async_graphql::Result<()> {
    match ctx.data_opt::<Principal>() {
        None => Err(gql(ApiError::unauthorized(
            "this node needs a bearer token",
        ))),
        Some(p) if p.may(role, barrel) => Ok(()),
        Some(_) => {
            let on = barrel.map_or_else(String::new, |b| format!(" on barrel {b:?}"));
            Err(gql(ApiError::forbidden(format!(
                "this needs the {role:?} role{on}"
            ))))
        }
    }
}

fn open(ctx: &Context<'_>, name: &str, role: Role) -> async_graphql::Result<BarrelHandle> {
    let name = BarrelName::new(name).map_err(gql)?;
    require(ctx, role, Some(name.as_str()))?;
    node(ctx).open_barrel(&name).map_err(gql)
}

fn page_size(n: Option<i32>) -> async_graphql::Result<usize> {
    let n = n.unwrap_or(DEFAULT_FIRST);
    if !(1..=MAX_FIRST).contains(&n) {
        return Err(gql(ApiError::bad_request(format!(
            "first must be between 1 and {MAX_FIRST}"
        ))));
    }
    Ok(n as usize)
}

fn parse_since(since: Option<&str>) -> async_graphql::Result<Since> {
    match since {
        None | Some("now") => Ok(Since::Now),
        Some(s) => s
            .parse()
            .map(Since::Seq)
            .map_err(|_| gql(ApiError::bad_request("since is a seq or \"now\""))),
    }
}

fn filters(list: Option<Vec<String>>) -> async_graphql::Result<Vec<TopicFilter>> {
    let list = list.unwrap_or_else(|| vec!["#".to_owned()]);
    if list.is_empty() || list.len() > 64 {
        return Err(gql(ApiError::bad_request(
            "filter takes 1 to 64 topic filters",
        )));
    }
    list.iter()
        .map(|f| TopicFilter::parse(f).map_err(gql))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Query

/// The root of queries.
#[derive(Debug, Default)]
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// This node.
    async fn node(&self, ctx: &Context<'_>) -> async_graphql::Result<NodeInfo> {
        require(ctx, Role::Reader, None)?;
        Ok(NodeInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            data_dir: config(ctx).data_dir.display().to_string(),
            http: node(ctx).http_addr().map(|a| a.to_string()),
        })
    }

    /// Names of all barrels.
    async fn barrels(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        require(ctx, Role::Reader, None)?;
        node(ctx).barrels().await.map_err(gql)
    }

    /// One barrel, or null if there is none by that name.
    async fn barrel(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Option<BarrelObject>> {
        match open(ctx, &name, Role::Reader) {
            Ok(handle) => Ok(Some(BarrelObject { handle })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The cluster this node belongs to.
    async fn cluster(&self, ctx: &Context<'_>) -> async_graphql::Result<Cluster> {
        require(ctx, Role::Reader, None)?;
        Ok(Cluster)
    }
}

fn is_not_found(e: &Error) -> bool {
    e.extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .is_some_and(|c| *c == async_graphql::Value::from("not_found"))
}

/// This node.
#[derive(Debug, SimpleObject)]
pub struct NodeInfo {
    /// Cooper's version.
    version: String,
    /// Where the node keeps its data.
    data_dir: String,
    /// The HTTP address it serves.
    http: Option<String>,
}

/// The cluster this node belongs to.
#[derive(Debug)]
pub struct Cluster;

/// A member of the cluster.
#[derive(Debug, SimpleObject)]
pub struct Member {
    /// `master`, `replica` or `lost`.
    role: String,
    /// The member's identity.
    node_id: String,
    /// Its HTTP address.
    http: Option<String>,
    /// Changes it is behind the master.
    lag: u64,
}

#[Object]
impl Cluster {
    /// Every member with its role; a standalone node is its own master.
    async fn status(&self, ctx: &Context<'_>) -> Vec<Member> {
        vec![Member {
            role: "master".into(),
            node_id: config(ctx).data_dir.display().to_string(),
            http: node(ctx).http_addr().map(|a| a.to_string()),
            lag: 0,
        }]
    }
}

/// A barrel.
#[derive(Debug)]
pub struct BarrelObject {
    handle: BarrelHandle,
}

/// Counts of a barrel.
#[derive(Debug, SimpleObject)]
pub struct BarrelInfo {
    /// Live documents.
    doc_count: u64,
    /// Documents whose winner is a tombstone.
    deleted_count: u64,
    /// Seq of the latest change.
    update_seq: String,
    /// File size in bytes.
    size_bytes: u64,
}

/// Sort direction.
#[derive(Debug, Enum, Copy, Clone, Eq, PartialEq)]
pub enum Direction {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// Order by one JSON path.
#[derive(Debug, InputObject)]
pub struct OrderBy {
    /// A JSON Pointer (`age`, `/address/city`).
    path: String,
    /// ASC (default) or DESC.
    #[graphql(default_with = "Direction::Asc")]
    direction: Direction,
}

/// One condition on a JSON path: set exactly one operator.
#[derive(Debug, InputObject)]
#[graphql(name = "Condition")]
pub struct Where {
    /// A JSON Pointer; `*` matches any array element (`tags/*`).
    path: String,
    /// Equal to.
    eq: MaybeUndefined<Json<Value>>,
    /// Has the path and no value there equals this.
    ne: MaybeUndefined<Json<Value>>,
    /// Greater than (same type).
    gt: MaybeUndefined<Json<Value>>,
    /// Greater than or equal.
    gte: MaybeUndefined<Json<Value>>,
    /// Less than.
    lt: MaybeUndefined<Json<Value>>,
    /// Less than or equal.
    lte: MaybeUndefined<Json<Value>>,
    /// Equal to one of these.
    #[graphql(name = "in")]
    in_: Option<Vec<Option<Json<Value>>>>,
    /// A string starting with this.
    prefix: Option<String>,
    /// Has (true) or lacks (false) the path.
    exists: Option<bool>,
}

/// Builds an operator from its operand.
type OpMaker = fn(Value) -> Op;

impl Where {
    fn condition(self) -> async_graphql::Result<Condition> {
        let path = path::normalize(&self.path).map_err(gql)?;
        let mut ops = Vec::new();
        // An explicit null is a value (`eq: null` matches nulls); a missing operator is not.
        let value = |v: MaybeUndefined<Json<Value>>| -> Option<Value> {
            match v {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(Value::Null),
                MaybeUndefined::Value(j) => Some(j.0),
            }
        };
        let pairs: [(OpMaker, MaybeUndefined<Json<Value>>); 6] = [
            (Op::Eq, self.eq),
            (Op::Ne, self.ne),
            (Op::Gt, self.gt),
            (Op::Gte, self.gte),
            (Op::Lt, self.lt),
            (Op::Lte, self.lte),
        ];
        for (make, v) in pairs {
            if let Some(v) = value(v) {
                ops.push(make(v));
            }
        }
        if let Some(vs) = self.in_ {
            if vs.len() > 1024 {
                return Err(gql(ApiError::bad_request("in takes at most 1024 values")));
            }
            ops.push(Op::In(
                vs.into_iter()
                    .map(|v| v.map_or(Value::Null, |j| j.0))
                    .collect(),
            ));
        }
        if let Some(p) = self.prefix {
            ops.push(Op::Prefix(p));
        }
        if let Some(e) = self.exists {
            ops.push(Op::Exists(e));
        }
        match (ops.pop(), ops.is_empty()) {
            (Some(op), true) => Ok(Condition { path, op }),
            _ => Err(gql(ApiError::bad_request(format!(
                "the condition on {path} must set exactly one of eq, ne, gt, gte, lt, lte, in, prefix, exists"
            )))),
        }
    }
}

#[Object(name = "Barrel")]
impl BarrelObject {
    /// The barrel's name.
    async fn name(&self) -> &str {
        self.handle.name().as_str()
    }

    /// Counts and the update seq.
    async fn info(&self) -> async_graphql::Result<BarrelInfo> {
        let c = self.handle.counts().map_err(gql)?;
        Ok(BarrelInfo {
            doc_count: c.doc_count,
            deleted_count: c.deleted_count,
            update_seq: c.update_seq.to_string(),
            size_bytes: c.size_bytes,
        })
    }

    /// A document: its winner, or a given revision; null if missing or deleted.
    async fn doc(
        &self,
        id: String,
        rev: Option<String>,
    ) -> async_graphql::Result<Option<Document>> {
        cooper_protocols::ids::validate_doc_id(&id).map_err(gql)?;
        let rev = rev.as_deref().map(Rev::parse).transpose().map_err(gql)?;
        match self.handle.get(
            &id,
            &GetOptions {
                rev,
                conflicts: true,
                ..GetOptions::default()
            },
        ) {
            Ok(doc) => Ok(Some(Document { doc })),
            Err(cooper_actors::BarrelError::NotFound(_)) => Ok(None),
            Err(e) => Err(gql(e)),
        }
    }

    /// Documents matching every condition of `where`, ordered by `orderBy`, a page of
    /// `first` after the cursor `after` (Relay-style).
    #[graphql(
        complexity = "10 + child_complexity * (first.unwrap_or(DEFAULT_FIRST).clamp(1, MAX_FIRST) as usize / 100 + 1)"
    )]
    async fn docs(
        &self,
        #[graphql(name = "where")] conditions: Option<Vec<Where>>,
        order_by: Option<OrderBy>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<DocumentConnection> {
        let conditions = conditions.unwrap_or_default();
        if conditions.len() > 64 {
            return Err(gql(ApiError::bad_request("at most 64 conditions")));
        }
        let order = match order_by {
            Some(o) => Some((
                path::normalize(&o.path).map_err(gql)?,
                o.direction == Direction::Desc,
            )),
            None => None,
        };
        let query = Query {
            conditions: conditions
                .into_iter()
                .map(Where::condition)
                .collect::<Result<_, _>>()?,
            order,
            limit: page_size(first)?,
            cursor: after,
        };
        let handle = self.handle.clone();
        let q = query.clone();
        let page = actix_web::web::block(move || handle.query(&q))
            .await
            .map_err(|_| gql(ApiError::internal("query worker failed")))?
            .map_err(gql)?;
        Ok(DocumentConnection {
            handle: self.handle.clone(),
            query,
            page,
        })
    }

    /// The changes feed after `since`: each document once, at its latest seq.
    #[graphql(
        complexity = "10 + child_complexity * (first.unwrap_or(DEFAULT_FIRST).clamp(1, MAX_FIRST) as usize / 100 + 1)"
    )]
    async fn changes(
        &self,
        since: Option<String>,
        first: Option<i32>,
        filter: Option<Vec<String>>,
    ) -> async_graphql::Result<ChangesPage> {
        let since = match parse_since(since.as_deref().or(Some("0")))? {
            Since::Seq(s) => s,
            Since::Now => self.handle.counts().map_err(gql)?.update_seq,
        };
        let limit = page_size(first)?;
        let trie = {
            let mut t = cooper_protocols::topic::TopicTrie::new();
            for f in filters(filter)? {
                t.insert(&f, ());
            }
            t
        };
        let mut results = Vec::new();
        let mut cursor = since;
        let mut last = since;
        'scan: loop {
            let rows = self.handle.changes(cursor, 500).map_err(gql)?;
            let done = rows.len() < 500;
            for row in rows {
                cursor = row.seq;
                let body = if row.deleted {
                    None
                } else {
                    self.handle
                        .get(
                            &row.id,
                            &GetOptions {
                                rev: Some(row.rev),
                                ..Default::default()
                            },
                        )
                        .ok()
                };
                let Some(matched) =
                    row.matching_topics(body.as_ref().map(|d| &d.body), |t| trie.matches(t))
                else {
                    continue;
                };
                last = row.seq;
                results.push(Change {
                    kind: ChangeKind::Change,
                    seq: row.seq.to_string(),
                    doc_id: Some(row.id.clone()),
                    rev: Some(row.rev.to_string()),
                    deleted: row.deleted,
                    topics: matched,
                    doc: body.map(|d| Json(d.to_json())),
                    resume_from: None,
                });
                if results.len() == limit {
                    break 'scan;
                }
            }
            if done {
                break;
            }
        }
        Ok(ChangesPage {
            results,
            last_seq: last.to_string(),
        })
    }
}

/// A document revision.
#[derive(Debug)]
pub struct Document {
    doc: DocRevision,
}

#[Object]
impl Document {
    /// `_id`.
    async fn id(&self) -> &str {
        &self.doc.id
    }

    /// `_rev`.
    async fn rev(&self) -> String {
        self.doc.rev.to_string()
    }

    /// Whether this revision is a tombstone.
    async fn deleted(&self) -> bool {
        self.doc.deleted
    }

    /// Other live leaves of the document (empty when there is no conflict).
    async fn conflicts(&self) -> Vec<String> {
        self.doc
            .conflicts
            .iter()
            .flatten()
            .map(|r| r.to_string())
            .collect()
    }

    /// The whole document, with `_id` and `_rev` (conflicts are in `conflicts`).
    async fn body(&self) -> Json<Value> {
        let mut v = self.doc.to_json();
        if let Some(m) = v.as_object_mut() {
            m.remove("_conflicts");
        }
        Json(v)
    }

    /// The value at one JSON Pointer of the document (`address/city`), or null.
    async fn get(&self, path: String) -> async_graphql::Result<Option<Json<Value>>> {
        let pointer = path::normalize(&path).map_err(gql)?;
        Ok(self.doc.to_json().pointer(&pointer).cloned().map(Json))
    }
}

/// A page of documents, Relay-style.
#[derive(Debug)]
pub struct DocumentConnection {
    handle: BarrelHandle,
    query: Query,
    page: cooper_actors::barrel::store::QueryPage,
}

/// One document of a page with the cursor that continues after it.
#[derive(Debug)]
pub struct DocumentEdge {
    cursor: String,
    node: Document,
}

#[Object]
impl DocumentEdge {
    /// Pass as `after` to continue after this document.
    async fn cursor(&self) -> &str {
        &self.cursor
    }

    /// The document.
    async fn node(&self) -> &Document {
        &self.node
    }
}

/// Where a page stands.
#[derive(Debug, SimpleObject)]
pub struct PageInfo {
    /// Whether more documents follow.
    has_next_page: bool,
    /// Always false: pages go forward.
    has_previous_page: bool,
    /// The cursor of the first document of this page.
    start_cursor: Option<String>,
    /// The cursor of the last document of this page.
    end_cursor: Option<String>,
}

#[Object]
impl DocumentConnection {
    /// The documents of this page with their cursors.
    async fn edges(&self) -> Vec<DocumentEdge> {
        self.page
            .docs
            .iter()
            .zip(&self.page.cursors)
            .map(|(d, c)| DocumentEdge {
                cursor: c.clone(),
                node: Document { doc: d.clone() },
            })
            .collect()
    }

    /// The documents of this page.
    async fn nodes(&self) -> Vec<Document> {
        self.page
            .docs
            .iter()
            .map(|d| Document { doc: d.clone() })
            .collect()
    }

    /// Paging state.
    async fn page_info(&self) -> PageInfo {
        PageInfo {
            has_next_page: self.page.next.is_some(),
            has_previous_page: false,
            start_cursor: self.page.cursors.first().cloned(),
            end_cursor: self.page.cursors.last().cloned(),
        }
    }

    /// How many documents match, over all pages (reads every match).
    #[graphql(complexity = 20)]
    async fn total_count(&self) -> async_graphql::Result<u64> {
        let handle = self.handle.clone();
        let q = self.query.clone();
        actix_web::web::block(move || handle.count(&q))
            .await
            .map_err(|_| gql(ApiError::internal("count worker failed")))?
            .map(|n| n as u64)
            .map_err(gql)
    }
}

/// What a change event is.
#[derive(Debug, Enum, Copy, Clone, Eq, PartialEq)]
pub enum ChangeKind {
    /// A document changed.
    Change,
    /// The subscription fell behind and ended: subscribe again with `since: resumeFrom`.
    Lagged,
}

/// A change of a document (or, for subscriptions, a `LAGGED` notice).
#[derive(Debug, SimpleObject)]
pub struct Change {
    /// CHANGE or LAGGED.
    kind: ChangeKind,
    /// The change's seq (for LAGGED: the seq to resume from).
    seq: String,
    /// The document id.
    doc_id: Option<String>,
    /// The winning revision.
    rev: Option<String>,
    /// Whether the winner is a tombstone.
    deleted: bool,
    /// The topics that matched the filters.
    topics: Vec<String>,
    /// The document, when asked for.
    doc: Option<Json<Value>>,
    /// For LAGGED: subscribe again with this `since`.
    resume_from: Option<String>,
}

/// A page of the changes feed.
#[derive(Debug, SimpleObject)]
pub struct ChangesPage {
    /// The changes, oldest first.
    results: Vec<Change>,
    /// The seq of the last change returned: pass it as the next `since`.
    last_seq: String,
}

// ---------------------------------------------------------------------------------------------
// Mutation

/// The root of mutations.
#[derive(Debug, Default)]
pub struct MutationRoot;

/// What a write reports.
#[derive(Debug, SimpleObject)]
pub struct WriteResult {
    /// The document id.
    id: String,
    /// Its new revision.
    rev: String,
}

/// One result of `bulkDocs`: a revision, or an error.
#[derive(Debug, SimpleObject)]
pub struct BulkResult {
    /// The document id, when known.
    id: Option<String>,
    /// The new revision, on success.
    rev: Option<String>,
    /// The error kind, on failure.
    error: Option<String>,
    /// Why, on failure.
    reason: Option<String>,
}

fn incoming(ctx: &Context<'_>, doc: Value) -> Result<document::IncomingDoc, ApiError> {
    let limits = &config(ctx).limits;
    let size = serde_json::to_vec(&doc)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits.max_document_bytes {
        return Err(ApiError::too_large(format!(
            "the document is {size} bytes; the limit is {}",
            limits.max_document_bytes
        )));
    }
    if document::depth(&doc) > limits.max_depth {
        return Err(ApiError::bad_request(format!(
            "document nests deeper than {} levels",
            limits.max_depth
        )));
    }
    let doc = document::split(doc)?;
    if let Some(id) = &doc.id {
        if cooper_protocols::ids::is_local_id(id) {
            return Err(ApiError::bad_request(
                "local documents are written through REST /barrels/{b}/local/{id}",
            ));
        }
    }
    Ok(doc)
}

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Creates a barrel.
    async fn create_barrel(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<BarrelObject> {
        let checked = BarrelName::new(&name).map_err(gql)?;
        require(ctx, Role::Admin, Some(checked.as_str()))?;
        let handle = node(ctx)
            .create_barrel(checked.as_str())
            .await
            .map_err(gql)?;
        Ok(BarrelObject { handle })
    }

    /// Deletes a barrel and all its documents.
    async fn delete_barrel(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<bool> {
        let checked = BarrelName::new(&name).map_err(gql)?;
        require(ctx, Role::Admin, Some(checked.as_str()))?;
        node(ctx)
            .delete_barrel(checked.as_str())
            .await
            .map_err(gql)?;
        Ok(true)
    }

    /// Creates or updates a document (`_id` optional, `_rev` to update).
    async fn put_doc(
        &self,
        ctx: &Context<'_>,
        barrel: String,
        doc: Json<Value>,
    ) -> async_graphql::Result<WriteResult> {
        let handle = open(ctx, &barrel, Role::Writer)?;
        let doc = incoming(ctx, doc.0).map_err(gql)?;
        let r = handle.write_one(WriteOp::Edit(doc)).await.map_err(gql)?;
        Ok(WriteResult {
            id: r.id,
            rev: r.rev,
        })
    }

    /// Deletes a document: writes a tombstone on `rev`.
    async fn delete_doc(
        &self,
        ctx: &Context<'_>,
        barrel: String,
        id: String,
        rev: String,
    ) -> async_graphql::Result<WriteResult> {
        let handle = open(ctx, &barrel, Role::Writer)?;
        cooper_protocols::ids::validate_doc_id(&id).map_err(gql)?;
        let rev = Rev::parse(&rev).map_err(gql)?;
        let r = handle.delete(&id, rev).await.map_err(gql)?;
        Ok(WriteResult {
            id: r.id,
            rev: r.rev,
        })
    }

    /// Writes many documents in one group commit; one result per document, in order.
    async fn bulk_docs(
        &self,
        ctx: &Context<'_>,
        barrel: String,
        docs: Vec<Json<Value>>,
        #[graphql(default = true)] new_edits: bool,
    ) -> async_graphql::Result<Vec<BulkResult>> {
        let handle = open(ctx, &barrel, Role::Writer)?;
        if docs.len() > 10_000 {
            return Err(gql(ApiError::too_large(
                "at most 10,000 documents per bulkDocs",
            )));
        }
        let mut ops = Vec::with_capacity(docs.len());
        let mut slots: Vec<(Option<String>, Option<ApiError>)> = Vec::with_capacity(docs.len());
        for Json(doc) in docs {
            let id = doc.get("_id").and_then(Value::as_str).map(str::to_owned);
            match incoming(ctx, doc) {
                Ok(d) => {
                    ops.push(if new_edits {
                        WriteOp::Edit(d)
                    } else {
                        WriteOp::Replicate(d)
                    });
                    slots.push((id, None));
                }
                Err(e) => slots.push((id, Some(e))),
            }
        }
        let mut results = handle.write(ops).await.map_err(gql)?.into_iter();
        Ok(slots
            .into_iter()
            .map(|(id, failed)| {
                let e = match failed {
                    Some(e) => e,
                    None => match results.next() {
                        Some(Ok(r)) => {
                            return BulkResult {
                                id: Some(r.id),
                                rev: Some(r.rev),
                                error: None,
                                reason: None,
                            }
                        }
                        Some(Err(e)) => ApiError::from(e),
                        None => ApiError::internal("missing result"),
                    },
                };
                BulkResult {
                    id,
                    rev: None,
                    error: Some(e.kind.to_owned()),
                    reason: Some(e.reason),
                }
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Subscription

/// The root of subscriptions.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every change of `barrel` matching `filter` (topic filters; all when absent), replayed
    /// from `since` (default: now) and then live, in seq order. A subscription that falls
    /// behind gets one LAGGED event and ends: subscribe again with `since: resumeFrom`.
    async fn changes(
        &self,
        ctx: &Context<'_>,
        barrel: String,
        filter: Option<Vec<String>>,
        since: Option<String>,
        include_docs: Option<bool>,
    ) -> async_graphql::Result<impl Stream<Item = Change>> {
        let handle = open(ctx, &barrel, Role::Reader)?;
        let stream = handle
            .listen(
                filters(filter)?,
                parse_since(since.as_deref())?,
                include_docs.unwrap_or(false),
            )
            .await
            .map_err(gql)?;
        Ok(futures_util::stream::unfold(Some(stream), |s| async move {
            let mut s = s?;
            match s.next().await {
                Ok(item) => Some((
                    Change {
                        kind: ChangeKind::Change,
                        seq: item.seq.to_string(),
                        doc_id: Some(item.id),
                        rev: Some(item.rev),
                        deleted: item.deleted,
                        topics: item.topics,
                        doc: item
                            .doc
                            .and_then(|d| serde_json::from_str(&d).ok())
                            .map(Json),
                        resume_from: None,
                    },
                    Some(s),
                )),
                Err(Lagged { resume_from }) => Some((
                    Change {
                        kind: ChangeKind::Lagged,
                        seq: resume_from.to_string(),
                        doc_id: None,
                        rev: None,
                        deleted: false,
                        topics: Vec::new(),
                        doc: None,
                        resume_from: Some(resume_from.to_string()),
                    },
                    None,
                )),
            }
        }))
    }
}
