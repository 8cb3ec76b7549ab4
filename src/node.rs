//! The embedding facade: [`Node::start`] opens the data directory, starts the actors and,
//! when configured, the HTTP API; [`Node::shutdown`] stops them in reverse order, after
//! queued writes have committed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix::{Actor, Addr};
use cooper_actors::barrel::store::StoreOptions;
use cooper_actors::registry::{
    BarrelMap, CreateBarrel, DeleteBarrel, ListBarrels, LoadTasks, Registry, RegistryConfig,
    SaveTask, Shutdown,
};
use cooper_actors::replicator::{
    task_id, Endpoint, GetState, HttpEndpoint, LocalEndpoint, ReplicationError, Replicator,
    Resolver, Stop, TaskSpec, TaskState,
};
use cooper_actors::{BarrelError, BarrelHandle};
use cooper_protocols::ids::BarrelName;

use crate::config::{Config, ConfigError};
use crate::http::{auth::Auth, AppState, HttpService};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A barrel operation failed.
    #[error(transparent)]
    Barrel(#[from] BarrelError),
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP server could not start (e.g. the address is taken).
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    Stopped,
}

impl From<actix::MailboxError> for NodeError {
    fn from(_: actix::MailboxError) -> Self {
        Self::Stopped
    }
}

/// A running Cooper node. Start it inside an actix system (`#[actix_rt::main]`,
/// `actix_rt::System`), use its barrels, then [`Node::shutdown`] it. Clones share the node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Addr<Registry>,
    barrels: BarrelMap,
    config: Arc<Config>,
    http: OnceLock<HttpService>,
    /// Flips to true when the node shuts down: long-lived requests (listeners, live feeds)
    /// end at once instead of holding the HTTP shutdown.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Replication tasks by id, on their own thread.
    replications: std::sync::Mutex<std::collections::BTreeMap<String, Addr<Replicator>>>,
    replication_thread: actix::Arbiter,
}

impl Node {
    /// Checks the configuration, opens `config.data_dir` (creating it if needed), migrates and
    /// opens every barrel, and serves HTTP when `config.http` is set.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        config.check()?;
        let registry = Registry::open(RegistryConfig {
            data_dir: config.data_dir.clone(),
            store: StoreOptions {
                revs_limit: config.revs_limit,
            },
            arbiters: config.barrel_threads,
            subscriber_queue: config.limits.subscriber_queue,
        })?;
        let barrels = registry.barrel_map();
        let registry = registry.start();
        let config = Arc::new(config);
        let (stopping, _) = tokio::sync::watch::channel(false);
        let node = Node {
            inner: Arc::new(Inner {
                registry,
                barrels,
                config: config.clone(),
                http: OnceLock::new(),
                stopping,
                replications: Default::default(),
                replication_thread: actix::Arbiter::new(),
            }),
        };
        // Resume the replication tasks of the last run.
        match node.inner.registry.send(LoadTasks).await? {
            Ok(tasks) => {
                for (id, spec) in tasks {
                    match serde_json::from_value::<TaskSpec>(spec) {
                        Ok(spec) => {
                            node.spawn_replication(spec, None);
                        }
                        Err(e) => {
                            tracing::warn!(task = id, error = %e, "skipping a replication task")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read replication tasks"),
        }
        if let Some(addr) = config.http {
            let state = AppState {
                node: node.clone(),
                config: config.clone(),
                auth: Arc::new(Auth::new(config.auth.clone())),
                started: Instant::now(),
            };
            let service = match HttpService::start(state, addr) {
                Ok(s) => s,
                Err(source) => {
                    let _ = node.inner.registry.send(Shutdown).await;
                    return Err(NodeError::Http { addr, source });
                }
            };
            tracing::info!(http = %service.addr, data = %config.data_dir.display(), "cooper node listening");
            let _ = node.inner.http.set(service);
        } else {
            tracing::info!(data = %config.data_dir.display(), "cooper node started");
        }
        Ok(node)
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A receiver that sees `true` once the node starts shutting down.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// The address the HTTP API is bound to, if it serves one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http.get().map(|h| h.addr)
    }

    /// Creates a barrel.
    pub async fn create_barrel(&self, name: &str) -> Result<BarrelHandle, NodeError> {
        let name = parse_name(name)?;
        Ok(self.inner.registry.send(CreateBarrel(name)).await??)
    }

    /// An existing barrel.
    pub async fn barrel(&self, name: &str) -> Result<BarrelHandle, NodeError> {
        Ok(self.open_barrel(&parse_name(name)?)?)
    }

    /// An existing barrel, looked up without waiting for the registry.
    pub fn open_barrel(&self, name: &BarrelName) -> Result<BarrelHandle, BarrelError> {
        let map = self.inner.barrels.read().unwrap_or_else(|e| e.into_inner());
        match map.get(name.as_str()) {
            Some(found) => found.clone(),
            None => Err(BarrelError::not_found("no such barrel")),
        }
    }

    /// Names of all barrels, sorted.
    pub async fn barrels(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.inner.registry.send(ListBarrels).await?)
    }

    /// Deletes a barrel and its file.
    pub async fn delete_barrel(&self, name: &str) -> Result<(), NodeError> {
        let name = parse_name(name)?;
        Ok(self.inner.registry.send(DeleteBarrel(name)).await??)
    }

    fn resolver(&self) -> Resolver {
        let node = self.clone();
        Arc::new(
            move |endpoint: &str| -> Result<Box<dyn Endpoint>, ReplicationError> {
                if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
                    return Ok(Box::new(HttpEndpoint::new(endpoint, None)?));
                }
                if endpoint.starts_with("p2p://") {
                    return Err(ReplicationError::Barrel(BarrelError::BadRequest(
                    "p2p:// endpoints need the libp2p network, which this node does not run yet".into(),
                )));
                }
                let name = BarrelName::new(endpoint)
                    .map_err(|e| BarrelError::BadRequest(e.to_string()))?;
                Ok(Box::new(LocalEndpoint::new(node.open_barrel(&name)?)))
            },
        )
    }

    fn spawn_replication(
        &self,
        spec: TaskSpec,
        done: Option<tokio::sync::oneshot::Sender<TaskState>>,
    ) -> String {
        let id = task_id(&spec);
        let resolve = self.resolver();
        let addr =
            Replicator::start_in_arbiter(&self.inner.replication_thread.handle(), move |_| {
                Replicator::new(spec, resolve, done)
            });
        let old = self
            .inner
            .replications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), addr);
        if let Some(old) = old {
            old.do_send(Stop);
        }
        id
    }

    /// Checks a task's endpoints and filters before it starts.
    fn check_spec(&self, spec: &TaskSpec) -> Result<(), NodeError> {
        let resolve = self.resolver();
        for e in [&spec.source, &spec.target] {
            if let Err(err) = resolve(e) {
                return Err(NodeError::Barrel(match err {
                    ReplicationError::Barrel(b) => b,
                    other => BarrelError::BadRequest(other.to_string()),
                }));
            }
        }
        for f in &spec.filter {
            cooper_protocols::topic::TopicFilter::parse(f)
                .map_err(|e| BarrelError::BadRequest(e.to_string()))?;
        }
        if spec.source == spec.target {
            return Err(BarrelError::BadRequest("source and target are the same".into()).into());
        }
        Ok(())
    }

    /// Runs a one-shot replication to its end and returns its final state.
    pub async fn replicate(&self, spec: TaskSpec) -> Result<TaskState, NodeError> {
        self.check_spec(&spec)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_replication(spec, Some(tx));
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Starts a replication task (continuous ones are saved and resumed at every start) and
    /// returns its state at once.
    pub async fn start_replication(&self, spec: TaskSpec) -> Result<TaskState, NodeError> {
        self.check_spec(&spec)?;
        if spec.continuous {
            let value =
                serde_json::to_value(&spec).map_err(|e| BarrelError::BadRequest(e.to_string()))?;
            self.inner
                .registry
                .send(SaveTask {
                    id: task_id(&spec),
                    spec: Some(value),
                })
                .await??;
        }
        let id = self.spawn_replication(spec, None);
        self.replication(&id).await
    }

    /// The state of a task.
    pub async fn replication(&self, id: &str) -> Result<TaskState, NodeError> {
        let addr = self
            .inner
            .replications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        match addr {
            Some(a) => Ok(a.send(GetState).await?),
            None => Err(BarrelError::not_found("no such replication").into()),
        }
    }

    /// Every task, one-shot ones that ended included.
    pub async fn replications(&self) -> Vec<TaskState> {
        let addrs: Vec<Addr<Replicator>> = self
            .inner
            .replications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(addrs.len());
        for a in addrs {
            if let Ok(s) = a.send(GetState).await {
                out.push(s);
            }
        }
        out
    }

    /// Stops a task and forgets it (its checkpoints stay, so starting it again resumes).
    pub async fn stop_replication(&self, id: &str) -> Result<TaskState, NodeError> {
        let addr = self
            .inner
            .replications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let Some(addr) = addr else {
            return Err(BarrelError::not_found("no such replication").into());
        };
        self.inner
            .registry
            .send(SaveTask {
                id: id.to_owned(),
                spec: None,
            })
            .await??;
        Ok(addr.send(Stop).await?)
    }

    /// Stops the node: the HTTP API finishes the requests in flight, then every barrel commits
    /// its queued writes and closes its file.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.inner.stopping.send_replace(true);
        if let Some(http) = self.inner.http.get() {
            http.stop().await;
        }
        let tasks: Vec<Addr<Replicator>> = std::mem::take(
            &mut *self
                .inner
                .replications
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
        .into_values()
        .collect();
        for t in tasks {
            let _ = t.send(Stop).await;
        }
        self.inner.replication_thread.stop();
        self.inner.registry.send(Shutdown).await?;
        tracing::info!("cooper node stopped");
        Ok(())
    }
}

fn parse_name(name: &str) -> Result<BarrelName, NodeError> {
    BarrelName::new(name).map_err(|e| NodeError::Barrel(BarrelError::BadRequest(e.to_string())))
}
