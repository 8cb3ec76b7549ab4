//! Node configuration: where data lives, where HTTP listens, the limits of DESIGN §7 and the
//! auth settings. Read from a TOML file, then `COOPER_*` environment variables, then flags
//! (each later source wins); [`Config::check`] refuses unsafe combinations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cooper_protocols::rev_tree::DEFAULT_REVS_LIMIT;
use serde::{Deserialize, Serialize};

/// Default HTTP address of `cooper start`.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7080";

/// How a node runs. `Config::default()` keeps data in `./cooper-data` and serves no HTTP
/// (an embedded node); `cooper start` sets `http` to 127.0.0.1:7080 unless told otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory: `node.redb` and `barrels/<name>.redb`.
    pub data_dir: PathBuf,
    /// Address of the HTTP API; `None` serves none. Port 0 picks a free port
    /// ([`crate::Node::http_addr`] tells which).
    pub http: Option<SocketAddr>,
    /// Generations of history kept per branch of each document's revision tree.
    pub revs_limit: usize,
    /// Threads that run barrel actors.
    pub barrel_threads: usize,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// Size and shape limits.
    pub limits: Limits,
    /// Who may do what over HTTP; empty means open (allowed only on loopback, or with
    /// `insecure`).
    pub auth: AuthConfig,
    /// Serve HTTP on a non-loopback address without auth.
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            data_dir: PathBuf::from("cooper-data"),
            http: None,
            revs_limit: DEFAULT_REVS_LIMIT,
            barrel_threads: cores.min(8),
            http_workers: cores.min(16),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            insecure: false,
        }
    }
}

/// Size and shape limits (DESIGN §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest document, counted as the JSON bytes received.
    pub max_document_bytes: usize,
    /// Largest request body (e.g. `_bulk_docs`).
    pub max_request_bytes: usize,
    /// Deepest nesting of arrays and objects in a document.
    pub max_depth: usize,
    /// Most documents a query page or a changes response returns.
    pub max_page: usize,
    /// Longest a longpoll or eventsource feed stays open without a change, in milliseconds.
    pub max_feed_timeout_ms: u64,
    /// Listener subscriptions one websocket connection may hold.
    pub max_subscriptions: usize,
    /// Changes a listener subscription queues before it lags.
    pub subscriber_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_document_bytes: 8 << 20,
            max_request_bytes: 64 << 20,
            max_depth: cooper_protocols::document::MAX_DEPTH,
            max_page: 10_000,
            max_feed_timeout_ms: 3_600_000,
            max_subscriptions: 64,
            subscriber_queue: 1024,
        }
    }
}

/// A role, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads documents, queries and feeds.
    Reader,
    /// Also writes documents.
    Writer,
    /// Also creates and deletes barrels and reads node metrics.
    Admin,
}

/// Auth settings: static bearer tokens and/or JWTs signed with HS256.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens.
    pub tokens: Vec<TokenConfig>,
    /// Secret of HS256-signed JWTs whose claims carry `role` and optionally `barrels` and
    /// `exp`.
    pub jwt_hs256_secret: Option<String>,
}

impl AuthConfig {
    /// Whether any credential is configured (else the API is open).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt_hs256_secret.is_some()
    }
}

/// One static bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret the client sends as `Authorization: Bearer <token>`.
    pub token: String,
    /// What it may do.
    pub role: Role,
    /// The barrels it may touch; all when absent.
    #[serde(default)]
    pub barrels: Option<Vec<String>>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a config.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An environment variable with a bad value.
    #[error("invalid {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A combination that is unsafe or meaningless.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// The default configuration with data in `dir`.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: dir.into(),
            ..Self::default()
        }
    }

    /// Reads a TOML file; members left out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies `COOPER_DATA`, `COOPER_HTTP`, `COOPER_REVS_LIMIT`, `COOPER_INSECURE` and
    /// `COOPER_JWT_SECRET` from `env` (a lookup, so tests need not touch the process
    /// environment).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("COOPER_DATA") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("COOPER_HTTP") {
            self.http = Some(v.parse().map_err(|e| ConfigError::Env {
                name: "COOPER_HTTP",
                message: format!("{v:?} is not an address like 127.0.0.1:7080 ({e})"),
            })?);
        }
        if let Some(v) = env("COOPER_REVS_LIMIT") {
            self.revs_limit = v.parse().map_err(|_| ConfigError::Env {
                name: "COOPER_REVS_LIMIT",
                message: format!("{v:?} is not a positive integer"),
            })?;
        }
        if let Some(v) = env("COOPER_INSECURE") {
            self.insecure = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = env("COOPER_JWT_SECRET") {
            self.auth.jwt_hs256_secret = Some(v);
        }
        Ok(())
    }

    /// Refuses what would be unsafe or cannot work: HTTP on a non-loopback address without
    /// auth (unless `insecure`), zero limits, an empty token or secret.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.http {
            if !addr.ip().is_loopback() && !self.auth.enabled() && !self.insecure {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve HTTP on {addr} without authentication: anyone on the \
                     network could read and change every barrel. Configure [auth] tokens or \
                     jwt_hs256_secret, listen on 127.0.0.1, or pass --insecure"
                )));
            }
        }
        if self.revs_limit == 0 {
            return Err(ConfigError::Invalid("revs_limit must be at least 1".into()));
        }
        let l = &self.limits;
        if l.max_document_bytes == 0
            || l.max_request_bytes == 0
            || l.max_depth == 0
            || l.max_page == 0
        {
            return Err(ConfigError::Invalid("limits must be greater than 0".into()));
        }
        if self.auth.tokens.iter().any(|t| t.token.len() < 8) {
            return Err(ConfigError::Invalid(
                "auth tokens must be at least 8 characters".into(),
            ));
        }
        if self
            .auth
            .jwt_hs256_secret
            .as_ref()
            .is_some_and(|s| s.len() < 16)
        {
            return Err(ConfigError::Invalid(
                "jwt_hs256_secret must be at least 16 bytes".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cooper.toml");
        std::fs::write(
            &file,
            r#"
            data_dir = "/var/lib/cooper"
            http = "0.0.0.0:7080"
            [limits]
            max_depth = 32
            [[auth.tokens]]
            token = "reader-secret"
            role = "reader"
            barrels = ["users"]
            "#,
        )
        .unwrap();
        let mut c = Config::from_file(&file).unwrap();
        assert_eq!(c.limits.max_depth, 32);
        assert_eq!(
            c.limits.max_document_bytes,
            8 << 20,
            "defaults fill the rest"
        );
        assert_eq!(c.auth.tokens[0].role, Role::Reader);
        c.check().unwrap();
        c.apply_env(|k| (k == "COOPER_DATA").then(|| "/tmp/x".to_owned()))
            .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(c
            .apply_env(|k| (k == "COOPER_HTTP").then(|| "nope".to_owned()))
            .is_err());
    }

    #[test]
    fn non_loopback_without_auth_is_refused_unless_insecure() {
        let mut c = Config {
            http: Some("0.0.0.0:7080".parse().unwrap()),
            ..Config::default()
        };
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
        c.insecure = true;
        c.check().unwrap();
        let loopback = Config {
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..Config::default()
        };
        loopback.check().unwrap();
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a toml example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let c: Config = toml::from_str(&readme[start..end]).unwrap();
        assert_eq!(c.auth.tokens.len(), 2);
        assert_eq!(
            c.auth.tokens[1].barrels.as_deref(),
            Some(&["people".to_owned()][..])
        );
        c.check().unwrap();
    }

    #[test]
    fn unknown_members_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dri = \"x\"").unwrap();
        assert!(matches!(
            Config::from_file(&file),
            Err(ConfigError::Parse { .. })
        ));
    }
}
