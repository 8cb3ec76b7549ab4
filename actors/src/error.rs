//! Errors of the running node, one enum per area, each with a stable kind that the HTTP and
//! GraphQL layers map to statuses and codes in one place.

/// What went wrong with a barrel operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BarrelError {
    /// No such barrel, document, revision or attachment.
    #[error("not found: {0}")]
    NotFound(String),
    /// A stale or missing revision (CouchDB's 409).
    #[error("{0}")]
    Conflict(String),
    /// Input the barrel refuses, with the reason.
    #[error("{0}")]
    BadRequest(String),
    /// Creating a barrel that exists.
    #[error("barrel {0:?} already exists")]
    AlreadyExists(String),
    /// The file was written by a newer schema than this build reads.
    #[error("barrel file has schema version {found}, newer than the {supported} this build of cooper reads; upgrade cooper to open it")]
    FutureSchema {
        /// Version found in the file.
        found: u64,
        /// Newest version this build reads.
        supported: u64,
    },
    /// The storage engine failed (I/O, lock, full disk).
    #[error("storage error: {0}")]
    Storage(String),
    /// Stored bytes that do not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The barrel is shutting down or was deleted.
    #[error("barrel is closed")]
    Closed,
}

impl BarrelError {
    /// A missing thing; the reason is CouchDB's word (`missing`, `deleted`).
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::NotFound(reason.into())
    }

    /// Stored data that does not decode.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    /// The stable kind shown as `error` in REST bodies and `extensions.code` in GraphQL.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::BadRequest(_) => "bad_request",
            Self::AlreadyExists(_) => "file_exists",
            Self::FutureSchema { .. } | Self::Storage(_) | Self::Corrupt(_) => "internal",
            Self::Closed => "unavailable",
        }
    }
}

macro_rules! storage_error {
    ($($t:ty),*) => {$(
        impl From<$t> for BarrelError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}

impl From<redb::DatabaseError> for BarrelError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Self::Storage(
                "the file is already open in another cooper node (is one running on this data directory?)".into(),
            ),
            other => Self::Storage(other.to_string()),
        }
    }
}

storage_error!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error
);
