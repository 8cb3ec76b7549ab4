//! Cooper: a peer-to-peer document database node. This crate is the facade for embedding a
//! node in a Rust program, and (in later parts) its HTTP, websocket and GraphQL interfaces.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | [`Config`]: data directory, HTTP address, limits, auth; from TOML, env and flags |
//! | [`node`] | [`Node`]: start, barrels, shutdown |
//! | [`http`] | the REST API (actix-web): routes, errors, auth, OpenAPI, the listener websocket |
//! | [`couch`] | the CouchDB-compatible API under `/couch` that PouchDB and CouchDB replicate with |
//! | [`graphql`] | the GraphQL API (async-graphql): schema, HTTP and websocket transports |
//! | [`client`] | the HTTP client behind the `cooper` CLI's client commands |
//!
//! The parts underneath are re-exported: [`protocols`] (pure data: ids, revisions, paths,
//! topics) and [`actors`] (barrels, their store and the registry).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! actix_rt::System::new().block_on(async {
//!     let node = cooper::Node::start(cooper::Config::with_data_dir(dir.path())).await?;
//!     let users = node.create_barrel("users").await?;
//!     let written = users.put(serde_json::json!({"_id": "ann", "age": 31})).await?;
//!     let doc = users.get("ann", &Default::default())?;
//!     assert_eq!(doc.rev.to_string(), written.rev);
//!     node.shutdown().await?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```

pub mod client;
pub mod config;
pub mod couch;
pub mod graphql;
pub mod http;
pub mod node;

pub use config::Config;
pub use cooper_actors as actors;
pub use cooper_protocols as protocols;
pub use node::{Node, NodeError};

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
