//! Node configuration: where data lives and the limits of DESIGN §7.

use std::path::PathBuf;

use cooper_protocols::rev_tree::DEFAULT_REVS_LIMIT;

/// How a node runs. `Config::default()` keeps data in `./cooper-data`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: `node.redb` and `barrels/<name>.redb`.
    pub data_dir: PathBuf,
    /// Generations of history kept per branch of each document's revision tree.
    pub revs_limit: usize,
    /// Threads that run barrel actors.
    pub barrel_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("cooper-data"),
            revs_limit: DEFAULT_REVS_LIMIT,
            barrel_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
        }
    }
}

impl Config {
    /// The default configuration with data in `dir`.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: dir.into(),
            ..Self::default()
        }
    }
}
