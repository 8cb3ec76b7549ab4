//! Validated identifiers: barrel names, document ids and revisions (DESIGN §2).
//!
//! Every name that reaches the disk or the wire passes through one of these types first, so
//! an unchecked string never becomes a path or a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest document id, in UTF-8 bytes.
pub const MAX_DOC_ID_BYTES: usize = 512;
/// Prefix of local documents: never replicated, not in the changes feed.
pub const LOCAL_PREFIX: &str = "_local/";

/// Why an identifier was refused. The messages are shown to users as the `reason` of a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A barrel name outside `^[a-z][a-z0-9_-]{0,63}$`.
    #[error("invalid barrel name {0:?}: it must match ^[a-z][a-z0-9_-]{{0,63}}$")]
    BarrelName(String),
    /// An empty document id.
    #[error("document id must not be empty")]
    EmptyDocId,
    /// A document id over [`MAX_DOC_ID_BYTES`].
    #[error("document id is {0} bytes long; the limit is 512")]
    DocIdTooLong(usize),
    /// A document id that starts with `_` but is not a `_local/` id.
    #[error("document id {0:?} starts with '_', which is reserved (only _local/ ids are allowed)")]
    ReservedDocId(String),
    /// A revision that is not `N-<32 lowercase hex>` with N ≥ 1.
    #[error("invalid revision {0:?}: it must look like 1-0123456789abcdef0123456789abcdef")]
    Rev(String),
}

/// A validated barrel name: `^[a-z][a-z0-9_-]{0,63}$`.
///
/// The name is used as a file name, which is safe only because of this check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BarrelName(String);

impl BarrelName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let bytes = name.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(IdError::BarrelName(truncate(name, 80)))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BarrelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BarrelName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Checks a document id: non-empty, at most 512 bytes, and either not starting with `_` or a
/// `_local/` id with a non-empty rest.
pub fn validate_doc_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::EmptyDocId);
    }
    if id.len() > MAX_DOC_ID_BYTES {
        return Err(IdError::DocIdTooLong(id.len()));
    }
    if id.starts_with('_') && (!id.starts_with(LOCAL_PREFIX) || id.len() == LOCAL_PREFIX.len()) {
        return Err(IdError::ReservedDocId(truncate(id, 80)));
    }
    Ok(())
}

/// Whether `id` names a local document (`_local/…`).
pub fn is_local_id(id: &str) -> bool {
    id.starts_with(LOCAL_PREFIX)
}

/// A document revision `N-h`: generation `pos` ≥ 1 and a 128-bit hash shown as 32 lowercase
/// hex characters.
///
/// The derived order is (generation, hash), which is the order the winner rule uses among
/// leaves of the same deletedness (DESIGN §2): for lowercase hex, comparing the bytes equals
/// comparing the strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rev {
    /// The generation: 1 for a first revision, parent + 1 after.
    pub pos: u64,
    /// The first 128 bits of the revision's SHA-256 (or the hash another system gave).
    pub hash: [u8; 16],
}

impl Rev {
    /// Builds a revision from its parts.
    pub fn new(pos: u64, hash: [u8; 16]) -> Self {
        Self { pos, hash }
    }

    /// The hash as 32 lowercase hex characters.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// Parses `N-<32 hex>`; upper-case hex is refused so that one revision has one spelling.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = || IdError::Rev(truncate(s, 80));
        let (pos, hash) = s.split_once('-').ok_or_else(err)?;
        if pos.is_empty() || pos.len() > 19 || !pos.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let pos: u64 = pos.parse().map_err(|_| err())?;
        if pos == 0 || hash.len() != 32 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, pair) in hash.as_bytes().chunks(2).enumerate() {
            out[i] = (nibble(pair[0]).ok_or_else(err)? << 4) | nibble(pair[1]).ok_or_else(err)?;
        }
        Ok(Self { pos, hash: out })
    }
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pos, self.hash_hex())
    }
}

impl fmt::Debug for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rev({self})")
    }
}

impl FromStr for Rev {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Stored and sent as the compact pair `(pos, hash bytes)`.
impl Serialize for Rev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.pos, serde_bytes_16(&self.hash)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rev {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (pos, hash): (u64, Bytes16) = Deserialize::deserialize(d)?;
        if pos == 0 {
            return Err(serde::de::Error::custom("revision generation 0"));
        }
        Ok(Self { pos, hash: hash.0 })
    }
}

fn serde_bytes_16(hash: &[u8; 16]) -> Bytes16 {
    Bytes16(*hash)
}

/// 16 bytes serialized as a CBOR byte string rather than an array of 16 integers.
struct Bytes16([u8; 16]);

impl Serialize for Bytes16 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes16 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes16;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes16, E> {
                <[u8; 16]>::try_from(v)
                    .map(Bytes16)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Bytes16, A::Error> {
                let mut out = [0u8; 16];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Bytes16(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrel_names() {
        for ok in ["a", "users", "a0_-z", &"a".repeat(64)] {
            assert!(BarrelName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "0abc",
            "_x",
            "-x",
            "a.b",
            "../x",
            "a/b",
            "Users",
            &"a".repeat(65),
            "é",
        ] {
            assert!(BarrelName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn doc_ids() {
        assert!(validate_doc_id("user-42").is_ok());
        assert!(validate_doc_id("_local/checkpoint").is_ok());
        assert!(validate_doc_id("id").is_ok());
        assert_eq!(validate_doc_id(""), Err(IdError::EmptyDocId));
        assert!(matches!(
            validate_doc_id("_design/x"),
            Err(IdError::ReservedDocId(_))
        ));
        assert!(matches!(
            validate_doc_id("_local/"),
            Err(IdError::ReservedDocId(_))
        ));
        assert_eq!(
            validate_doc_id(&"x".repeat(513)),
            Err(IdError::DocIdTooLong(513))
        );
        assert!(validate_doc_id(&"x".repeat(512)).is_ok());
    }

    #[test]
    fn revs_round_trip_and_order() {
        let r = Rev::parse("3-0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(r.pos, 3);
        assert_eq!(r.to_string(), "3-0123456789abcdef0123456789abcdef");
        let bytes = {
            let mut v = Vec::new();
            ciborium::into_writer(&r, &mut v).unwrap();
            v
        };
        let back: Rev = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back, r);
        let a = Rev::parse("2-ffffffffffffffffffffffffffffffff").unwrap();
        let b = Rev::parse("10-00000000000000000000000000000000").unwrap();
        assert!(a < b, "generation is compared as a number, not as text");
        for bad in [
            "",
            "1",
            "1-",
            "0-0123456789abcdef0123456789abcdef",
            "x-0123456789abcdef0123456789abcdef",
            "1-0123456789ABCDEF0123456789abcdef",
            "1-0123456789abcdef0123456789abcde",
            "-1-0123456789abcdef0123456789abcdef",
            "99999999999999999999-0123456789abcdef0123456789abcdef",
        ] {
            assert!(Rev::parse(bad).is_err(), "{bad}");
        }
    }
}
