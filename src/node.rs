//! The embedding facade: [`Node::start`] opens the data directory and starts the actors;
//! [`Node::shutdown`] stops them in reverse order, after queued writes have committed.

use actix::{Actor, Addr};
use cooper_actors::barrel::store::StoreOptions;
use cooper_actors::registry::{
    CreateBarrel, DeleteBarrel, ListBarrels, OpenBarrel, Registry, RegistryConfig, Shutdown,
};
use cooper_actors::{BarrelError, BarrelHandle};
use cooper_protocols::ids::BarrelName;

use crate::config::Config;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A barrel operation failed.
    #[error(transparent)]
    Barrel(#[from] BarrelError),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Stopped,
}

impl From<actix::MailboxError> for NodeError {
    fn from(_: actix::MailboxError) -> Self {
        Self::Stopped
    }
}

/// A running Cooper node. Start it inside an actix system (`#[actix::main]`,
/// `actix_rt::System`), use its barrels, then [`Node::shutdown`] it.
#[derive(Debug, Clone)]
pub struct Node {
    registry: Addr<Registry>,
    config: Config,
}

impl Node {
    /// Opens `config.data_dir` (creating it if needed), migrates and opens every barrel.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let registry = Registry::open(RegistryConfig {
            data_dir: config.data_dir.clone(),
            store: StoreOptions {
                revs_limit: config.revs_limit,
            },
            arbiters: config.barrel_threads,
        })?
        .start();
        tracing::info!(data = %config.data_dir.display(), "cooper node started");
        Ok(Node { registry, config })
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates a barrel.
    pub async fn create_barrel(&self, name: &str) -> Result<BarrelHandle, NodeError> {
        let name = parse_name(name)?;
        Ok(self.registry.send(CreateBarrel(name)).await??)
    }

    /// An existing barrel.
    pub async fn barrel(&self, name: &str) -> Result<BarrelHandle, NodeError> {
        let name = parse_name(name)?;
        Ok(self.registry.send(OpenBarrel(name)).await??)
    }

    /// Names of all barrels, sorted.
    pub async fn barrels(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.registry.send(ListBarrels).await?)
    }

    /// Deletes a barrel and its file.
    pub async fn delete_barrel(&self, name: &str) -> Result<(), NodeError> {
        let name = parse_name(name)?;
        Ok(self.registry.send(DeleteBarrel(name)).await??)
    }

    /// Stops the node: every barrel commits its queued writes and closes, then the barrel
    /// threads stop.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.registry.send(Shutdown).await?;
        tracing::info!("cooper node stopped");
        Ok(())
    }
}

fn parse_name(name: &str) -> Result<BarrelName, NodeError> {
    BarrelName::new(name).map_err(|e| NodeError::Barrel(BarrelError::BadRequest(e.to_string())))
}
