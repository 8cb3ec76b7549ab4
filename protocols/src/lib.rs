//! Cooper's pure data and wire formats. No I/O, no runtime: everything here is a value and
//! functions over values, so every node, client and test agrees on them.
//!
//! | module | holds |
//! |---|---|
//! | [`ids`] | validated barrel names, document ids, revisions `N-<32 hex>` |
//! | [`cbor`] | canonical CBOR of JSON values and deterministic revision hashing |
//! | [`rev_tree`] | the revision tree: merge, stem, leaves, winner, conflicts, history |
//! | [`document`] | splitting an incoming JSON document into its reserved members and body |
//! | [`path`] | JSON Pointer paths, path index entries and their order-preserving keys |
//! | [`topic`] | topics of a document and MQTT-style topic filters |

pub mod cbor;
pub mod document;
pub mod ids;
pub mod path;
pub mod rev_tree;
pub mod topic;
