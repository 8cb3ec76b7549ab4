//! The `Registry` actor: the barrel catalog (in `<data>/node.redb`) and one supervised
//! [`Barrel`] per open barrel, spread over a small pool of arbiters (threads).
//!
//! Barrel files live at `<data>/barrels/<name>.redb`; the name is a validated
//! [`BarrelName`], so no unchecked input ever becomes a path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::{Actor, Arbiter, Context, Handler, Message, ResponseFuture};
use cooper_protocols::ids::BarrelName;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::barrel::store::{Store, StoreOptions};
use crate::barrel::{Barrel, BarrelHandle, Close};
use crate::error::BarrelError;
use crate::listener::EndSubscriptions;

/// Open barrels by name, shared with the HTTP layer for lookups without a message round
/// trip; a barrel that could not be opened maps to why. Only the registry writes it.
pub type BarrelMap = Arc<RwLock<BTreeMap<String, Result<BarrelHandle, BarrelError>>>>;

/// `barrels`: name → [`CatalogEntry`] (CBOR).
const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("barrels");
/// `replications`: task id → the task's specification (JSON), resumed at start.
const REPLICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("replications");

/// One barrel in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CatalogEntry {
    v: u8,
    /// Creation time, milliseconds since the Unix epoch.
    created_ms: u64,
}

/// Where and how the registry keeps barrels.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Options of every barrel store.
    pub store: StoreOptions,
    /// Threads that run barrel actors (at least 1).
    pub arbiters: usize,
    /// Changes a listener subscription queues before it lags.
    pub subscriber_queue: usize,
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Creates a barrel; [`BarrelError::AlreadyExists`] if it exists.
#[derive(Debug, Message)]
#[rtype(result = "Result<BarrelHandle, BarrelError>")]
pub struct CreateBarrel(pub BarrelName);

/// The handle of an existing barrel; [`BarrelError::NotFound`] if there is none.
#[derive(Debug, Message)]
#[rtype(result = "Result<BarrelHandle, BarrelError>")]
pub struct OpenBarrel(pub BarrelName);

/// Names of all barrels, sorted.
#[derive(Debug, Message)]
#[rtype(result = "Vec<String>")]
pub struct ListBarrels;

/// Deletes a barrel: closes it after its queued writes, removes it from the catalog and
/// removes its file.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), BarrelError>")]
pub struct DeleteBarrel(pub BarrelName);

/// Saves (or with `None`, removes) a replication task's specification in `node.redb`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), BarrelError>")]
pub struct SaveTask {
    /// The task id.
    pub id: String,
    /// Its specification as JSON, or `None` to forget it.
    pub spec: Option<serde_json::Value>,
}

/// Every saved replication task: (id, specification).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(String, serde_json::Value)>, BarrelError>")]
pub struct LoadTasks;

/// Closes every barrel (queued writes commit first) and stops the barrel threads.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---------------------------------------------------------------------------------------------
// The actor

/// The barrel catalog and the open barrels.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    /// `None` after [`Shutdown`], so the file is released at once.
    node_db: Option<Database>,
    open: BTreeMap<String, BarrelHandle>,
    /// Barrels in the catalog that could not be opened, with why (e.g. a newer schema).
    failed: BTreeMap<String, BarrelError>,
    arbiters: Vec<Arbiter>,
    next: usize,
    shared: BarrelMap,
}

impl Registry {
    /// Opens the data directory and every barrel of the catalog. Must run inside an actix
    /// system; call [`Actor::start`] on the result.
    pub fn open(config: RegistryConfig) -> Result<Self, BarrelError> {
        std::fs::create_dir_all(barrels_dir(&config.data_dir))?;
        let node_db = Database::create(config.data_dir.join("node.redb"))?;
        let txn = node_db.begin_write()?;
        txn.open_table(CATALOG)?;
        txn.open_table(REPLICATIONS)?;
        txn.commit()?;
        let arbiters = (0..config.arbiters.max(1))
            .map(|_| Arbiter::new())
            .collect();
        let mut registry = Self {
            config,
            node_db: Some(node_db),
            open: BTreeMap::new(),
            failed: BTreeMap::new(),
            arbiters,
            next: 0,
            shared: BarrelMap::default(),
        };
        for name in registry.catalog()? {
            let Ok(barrel) = BarrelName::new(&name) else {
                tracing::warn!(name, "skipping an invalid name in the barrel catalog");
                continue;
            };
            match registry.start_barrel(&barrel) {
                Ok(h) => {
                    registry.open.insert(name, h);
                }
                Err(e) => {
                    tracing::error!(barrel = name, error = %e, "cannot open barrel");
                    registry.failed.insert(name, e);
                }
            }
        }
        registry.publish();
        Ok(registry)
    }

    /// The shared map of open barrels, kept up to date by the registry.
    pub fn barrel_map(&self) -> BarrelMap {
        self.shared.clone()
    }

    /// Copies the open and failed barrels into the shared map.
    fn publish(&self) {
        let mut map = self.shared.write().unwrap_or_else(|e| e.into_inner());
        map.clear();
        for (name, h) in &self.open {
            map.insert(name.clone(), Ok(h.clone()));
        }
        for (name, e) in &self.failed {
            map.insert(name.clone(), Err(e.clone()));
        }
    }

    fn node_db(&self) -> Result<&Database, BarrelError> {
        self.node_db.as_ref().ok_or(BarrelError::Closed)
    }

    fn catalog(&self) -> Result<Vec<String>, BarrelError> {
        let txn = self.node_db()?.begin_read()?;
        let table = txn.open_table(CATALOG)?;
        let mut names = Vec::new();
        for entry in table.iter()? {
            names.push(entry?.0.value().to_owned());
        }
        Ok(names)
    }

    fn start_barrel(&mut self, name: &BarrelName) -> Result<BarrelHandle, BarrelError> {
        let file = barrel_file(&self.config.data_dir, name);
        let store = Arc::new(Store::open(&file, self.config.store.clone())?);
        let arbiter = &self.arbiters[self.next % self.arbiters.len()];
        self.next += 1;
        Ok(Barrel::start(name.clone(), store, Some(&arbiter.handle()))
            .with_subscriber_queue(self.config.subscriber_queue))
    }

    fn create(&mut self, name: &BarrelName) -> Result<BarrelHandle, BarrelError> {
        if self.open.contains_key(name.as_str()) || self.failed.contains_key(name.as_str()) {
            return Err(BarrelError::AlreadyExists(name.to_string()));
        }
        // A file without a catalog entry (left by a crash between its creation and the catalog
        // commit, or put there by hand) is adopted, never overwritten.
        let handle = self.start_barrel(name)?;
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut entry = Vec::new();
        ciborium::into_writer(&CatalogEntry { v: 1, created_ms }, &mut entry)
            .expect("cbor into a vec");
        let txn = self.node_db()?.begin_write()?;
        txn.open_table(CATALOG)?
            .insert(name.as_str(), entry.as_slice())?;
        txn.commit()?;
        self.open.insert(name.to_string(), handle.clone());
        self.publish();
        Ok(handle)
    }
}

fn barrels_dir(data: &Path) -> PathBuf {
    data.join("barrels")
}

fn barrel_file(data: &Path, name: &BarrelName) -> PathBuf {
    barrels_dir(data).join(format!("{name}.redb"))
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl Handler<CreateBarrel> for Registry {
    type Result = Result<BarrelHandle, BarrelError>;

    fn handle(&mut self, msg: CreateBarrel, _ctx: &mut Self::Context) -> Self::Result {
        self.create(&msg.0)
    }
}

impl Handler<OpenBarrel> for Registry {
    type Result = Result<BarrelHandle, BarrelError>;

    fn handle(&mut self, msg: OpenBarrel, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(e) = self.failed.get(msg.0.as_str()) {
            return Err(e.clone());
        }
        self.open
            .get(msg.0.as_str())
            .cloned()
            .ok_or_else(|| BarrelError::not_found("no such barrel"))
    }
}

impl Handler<ListBarrels> for Registry {
    type Result = Vec<String>;

    fn handle(&mut self, _: ListBarrels, _ctx: &mut Self::Context) -> Self::Result {
        self.open
            .keys()
            .chain(self.failed.keys())
            .cloned()
            .collect()
    }
}

impl Handler<DeleteBarrel> for Registry {
    type Result = ResponseFuture<Result<(), BarrelError>>;

    fn handle(&mut self, msg: DeleteBarrel, _ctx: &mut Self::Context) -> Self::Result {
        let name = msg.0;
        let handle = self.open.remove(name.as_str());
        let was_failed = self.failed.remove(name.as_str()).is_some();
        self.publish();
        if handle.is_none() && !was_failed {
            return Box::pin(async { Err(BarrelError::not_found("no such barrel")) });
        }
        let removed = (|| -> Result<(), BarrelError> {
            let txn = self.node_db()?.begin_write()?;
            txn.open_table(CATALOG)?.remove(name.as_str())?;
            txn.commit()?;
            Ok(())
        })();
        let file = barrel_file(&self.config.data_dir, &name);
        Box::pin(async move {
            removed?;
            if let Some(h) = handle {
                let _ = h.hub().send(EndSubscriptions).await;
                let _ = h.addr().send(Close).await;
            }
            for f in [crate::barrel::store::Store::wal_path(&file), file] {
                match std::fs::remove_file(&f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

impl Handler<SaveTask> for Registry {
    type Result = Result<(), BarrelError>;

    fn handle(&mut self, msg: SaveTask, _ctx: &mut Self::Context) -> Self::Result {
        let txn = self.node_db()?.begin_write()?;
        {
            let mut table = txn.open_table(REPLICATIONS)?;
            match &msg.spec {
                Some(spec) => {
                    let bytes = serde_json::to_vec(spec)
                        .map_err(|e| BarrelError::BadRequest(e.to_string()))?;
                    table.insert(msg.id.as_str(), bytes.as_slice())?;
                }
                None => {
                    table.remove(msg.id.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Handler<LoadTasks> for Registry {
    type Result = Result<Vec<(String, serde_json::Value)>, BarrelError>;

    fn handle(&mut self, _: LoadTasks, _ctx: &mut Self::Context) -> Self::Result {
        let txn = self.node_db()?.begin_read()?;
        let table = txn.open_table(REPLICATIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, raw) = entry?;
            match serde_json::from_slice(raw.value()) {
                Ok(spec) => out.push((id.value().to_owned(), spec)),
                Err(e) => {
                    tracing::warn!(task = id.value(), error = %e, "skipping an unreadable replication task")
                }
            }
        }
        Ok(out)
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let handles: Vec<BarrelHandle> = std::mem::take(&mut self.open).into_values().collect();
        self.failed.clear();
        self.node_db = None;
        self.publish();
        Box::pin(async move {
            for h in handles {
                let _ = h.hub().send(EndSubscriptions).await;
                let _ = h.addr().send(Close).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;
    use serde_json::json;

    fn config(dir: &Path) -> RegistryConfig {
        RegistryConfig {
            data_dir: dir.to_owned(),
            store: StoreOptions::default(),
            arbiters: 2,
            subscriber_queue: crate::listener::SUBSCRIBER_QUEUE,
        }
    }

    #[actix_rt::test]
    async fn create_list_open_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(config(dir.path())).unwrap().start();
        let name = BarrelName::new("users").unwrap();
        let b = reg.send(CreateBarrel(name.clone())).await.unwrap().unwrap();
        b.put(json!({"_id": "u1", "name": "Ann"})).await.unwrap();
        assert!(matches!(
            reg.send(CreateBarrel(name.clone())).await.unwrap(),
            Err(BarrelError::AlreadyExists(_))
        ));
        reg.send(CreateBarrel(BarrelName::new("other").unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reg.send(ListBarrels).await.unwrap(), vec!["other", "users"]);
        reg.send(Shutdown).await.unwrap();
        drop((b, reg));

        // A new registry on the same directory finds the barrels and their data.
        let reg = Registry::open(config(dir.path())).unwrap().start();
        let b = reg.send(OpenBarrel(name.clone())).await.unwrap().unwrap();
        assert_eq!(
            b.get("u1", &Default::default()).unwrap().body["name"],
            "Ann"
        );
        reg.send(DeleteBarrel(name.clone())).await.unwrap().unwrap();
        assert!(!dir.path().join("barrels/users.redb").exists());
        assert!(matches!(
            reg.send(OpenBarrel(name.clone())).await.unwrap(),
            Err(BarrelError::NotFound(_))
        ));
        assert!(matches!(
            reg.send(DeleteBarrel(name)).await.unwrap(),
            Err(BarrelError::NotFound(_))
        ));
        assert_eq!(reg.send(ListBarrels).await.unwrap(), vec!["other"]);
    }
}
