//! The running Cooper node: actors that own barrels and (in later parts) listeners,
//! replication, the network and cluster roles, talking by typed messages over bounded
//! mailboxes and channels.
//!
//! | module | holds |
//! |---|---|
//! | [`barrel`] | the `Barrel` actor: group commit on a writer thread, `DocumentChanged` events, [`barrel::BarrelHandle`] |
//! | [`barrel::store`] | the redb store of one barrel: tables, revision rules, path index, queries, migrations |
//! | [`listener`] | the `ListenerHub` actor (a trie of topic filters per barrel) and [`listener::ChangeStream`]: replay, then live, bounded, with `lagged` |
//! | [`registry`] | the `Registry` actor: the barrel catalog in `node.redb`; creates, opens, lists, deletes and supervises barrels |
//! | [`replicator`] | the `Replicator` actor: CouchDB's replication protocol between local barrels and HTTP databases, checkpoints, retries |
//! | [`error`] | error enums with stable kinds (`not_found`, `conflict`, …) |

pub mod barrel;
pub mod error;
pub mod listener;
pub mod registry;
pub mod replicator;

pub use barrel::{Barrel, BarrelHandle};
pub use error::BarrelError;
pub use registry::Registry;
