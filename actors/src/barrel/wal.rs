//! The write-ahead log file of a barrel (`<barrel file>.wal`): an append-only file of
//! checksummed records, one per group commit, made durable with `fdatasync`.
//!
//! Layout: a 4 KiB header page (magic, format, the current cycle's salt), then records from
//! offset [`HEADER`]: `len: u32 LE | crc32: u32 LE | lsn: u64 LE | payload (len bytes)`, the
//! CRC over `salt | lsn | len | payload`. Records carry consecutive log sequence numbers.
//!
//! After a checkpoint (every record is in the durable barrel file) a new *cycle* starts: a
//! new random salt is made durable in the header, and the next record is written at
//! [`HEADER`] again. The file keeps its blocks, so an append overwrites blocks that are already
//! allocated and written, and its `fdatasync` flushes data only, no file metadata. Reading
//! stops at the first record that is torn, fails its CRC or does not carry the next lsn; the
//! records of earlier cycles fail the CRC (another salt), so they are never read back, even
//! when a torn multi-record write leaves an old record right after the new tail, or a
//! document's bytes happen to look like a record.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::BarrelError;

/// Where records start; the header page before it is written once, at creation.
pub const HEADER: u64 = 4096;
const MAGIC: &[u8; 8] = b"cooperWL";
const FORMAT: u8 = 1;
const RECORD_HEADER: usize = 16;
/// The file grows by at least this much (zero-filled) when a record does not fit.
const GROW: u64 = 1 << 20;
/// An idle checkpoint gives back the space beyond this.
const KEEP: u64 = 4 << 20;
/// The first bytes of a redb file: a log written by Cooper before the log had a format of its
/// own (a redb database with one table).
const REDB_MAGIC: &[u8; 9] = b"redb\x1A\x0A\xA9\x0D\x0A";

/// Where the salt lies in the header page.
const SALT_AT: usize = 16;

/// An open log file.
#[derive(Debug)]
pub struct LogFile {
    file: File,
    path: PathBuf,
    /// The current cycle's salt.
    salt: u64,
    /// Bytes allocated and written (zeros or records): appends below it change no metadata.
    len: u64,
    /// Where the next record goes.
    tail: u64,
}

/// What [`LogFile::open`] found.
#[derive(Debug)]
pub enum Opened {
    /// The log and its records, in lsn order.
    Log(LogFile, Vec<(u64, Vec<u8>)>),
    /// A redb log of an earlier Cooper: replay it, then [`LogFile::replace`] it.
    Legacy,
}

impl LogFile {
    /// Opens the log at `path`, creating it if missing (or never written), and reads its
    /// records. A file that is neither a log nor a legacy log is an error.
    pub fn open(path: &Path) -> Result<Opened, BarrelError> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Opened::Log(Self::create(path)?, Vec::new()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        if raw.starts_with(REDB_MAGIC) {
            return Ok(Opened::Legacy);
        }
        if raw.len() < HEADER as usize || !raw.starts_with(MAGIC) {
            if raw.iter().take(HEADER as usize).all(|&b| b == 0) {
                // Created but its header never reached the disk: no record was written.
                drop(file);
                return Ok(Opened::Log(Self::create(path)?, Vec::new()));
            }
            return Err(BarrelError::Storage(format!(
                "{} is not a Cooper write-ahead log",
                path.display()
            )));
        }
        if raw[MAGIC.len()] != FORMAT {
            return Err(BarrelError::Storage(format!(
                "{}: write-ahead log format {} is not supported (this Cooper reads {FORMAT})",
                path.display(),
                raw[MAGIC.len()]
            )));
        }
        let salt = u64::from_le_bytes(raw[SALT_AT..SALT_AT + 8].try_into().unwrap_or_default());
        let records = scan(salt, &raw[HEADER as usize..]);
        let len = raw.len() as u64;
        Ok(Opened::Log(
            Self {
                file,
                path: path.to_owned(),
                salt,
                len,
                tail: HEADER,
            },
            records,
        ))
    }

    /// Replaces whatever is at `path` with an empty log (after a legacy log was replayed
    /// into the durable barrel file).
    pub fn replace(path: &Path) -> Result<Self, BarrelError> {
        std::fs::remove_file(path)?;
        Self::create(path)
    }

    fn create(path: &Path) -> Result<Self, BarrelError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let salt = new_salt()?;
        let mut header = vec![0u8; HEADER as usize];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[MAGIC.len()] = FORMAT;
        header[SALT_AT..SALT_AT + 8].copy_from_slice(&salt.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            // The new name must survive a crash too.
            File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })?
            .sync_all()?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            salt,
            len: HEADER,
            tail: HEADER,
        })
    }

    /// Appends record `lsn` and makes it durable.
    pub fn append(&mut self, lsn: u64, payload: &[u8]) -> Result<(), BarrelError> {
        self.append_all(&[(lsn, payload)])
    }

    /// Appends records (consecutive lsns) with one write and makes them durable with one
    /// `fdatasync`.
    pub fn append_all(&mut self, records: &[(u64, &[u8])]) -> Result<(), BarrelError> {
        let total = records
            .iter()
            .map(|(_, p)| RECORD_HEADER + p.len())
            .sum::<usize>();
        let mut buf = Vec::with_capacity(total);
        for &(lsn, payload) in records {
            let len = u32::try_from(payload.len()).map_err(|_| {
                BarrelError::Storage("a group commit's log record exceeds 4 GiB".into())
            })?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&checksum(self.salt, lsn, len, payload).to_le_bytes());
            buf.extend_from_slice(&lsn.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let end = self.tail + buf.len() as u64;
        if end > self.len {
            self.grow(end)?;
        }
        self.file.write_all_at(&buf, self.tail)?;
        self.file.sync_data()?;
        self.tail = end;
        Ok(())
    }

    /// Zero-fills the file up to at least `end` (one metadata change for many appends).
    fn grow(&mut self, end: u64) -> Result<(), BarrelError> {
        let target = (end + GROW.max(self.len / 4)).next_multiple_of(HEADER);
        let zeros = vec![0u8; 256 << 10];
        let mut at = self.len;
        while at < target {
            let n = (target - at).min(zeros.len() as u64);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.len = target;
        Ok(())
    }

    /// Starts a new cycle (every record so far is in the durable barrel file): a new salt,
    /// durable before any record of the cycle is written.
    pub fn restart(&mut self) -> Result<(), BarrelError> {
        let salt = new_salt()?;
        self.file
            .write_all_at(&salt.to_le_bytes(), SALT_AT as u64)?;
        self.file.sync_data()?;
        self.salt = salt;
        self.tail = HEADER;
        Ok(())
    }

    /// Gives back the space beyond a few MiB when the current cycle holds no record (at an
    /// idle checkpoint: a bulk load can grow the log to tens of MiB).
    pub fn shrink(&mut self) -> Result<(), BarrelError> {
        if self.tail == HEADER && self.len > HEADER + KEEP {
            self.file.set_len(HEADER + KEEP)?;
            self.file.sync_all()?;
            self.len = HEADER + KEEP;
        }
        Ok(())
    }

    /// Bytes of the file.
    #[cfg(test)]
    pub fn size(&mut self) -> u64 {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::End(0)).unwrap_or(self.len)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn new_salt() -> Result<u64, BarrelError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| BarrelError::Storage(format!("no randomness for the log: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn checksum(salt: u64, lsn: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The records of the current cycle: from the start, while each is whole, passes its CRC and
/// carries the lsn after the previous one.
fn scan(salt: u64, mut raw: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    while raw.len() >= RECORD_HEADER {
        let len = u32::from_le_bytes(raw[0..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(raw[4..8].try_into().unwrap_or_default());
        let lsn = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
        let Some(payload) = raw.get(RECORD_HEADER..RECORD_HEADER + len as usize) else {
            break;
        };
        if checksum(salt, lsn, len, payload) != crc {
            break;
        }
        if out
            .last()
            .is_some_and(|(prev, _)| prev.checked_add(1) != Some(lsn))
        {
            break;
        }
        out.push((lsn, payload.to_vec()));
        raw = &raw[RECORD_HEADER + len as usize..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(u64, Vec<u8>)> {
        match LogFile::open(path).unwrap() {
            Opened::Log(_, r) => r,
            Opened::Legacy => panic!("legacy"),
        }
    }

    fn log(path: &Path) -> LogFile {
        match LogFile::open(path).unwrap() {
            Opened::Log(l, _) => l,
            Opened::Legacy => panic!("legacy"),
        }
    }

    #[test]
    fn appends_read_back_and_cycles_hide_stale_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.redb.wal");
        let mut l = log(&p);
        for lsn in 1..=5u64 {
            l.append(lsn, &vec![lsn as u8; 100 * lsn as usize]).unwrap();
        }
        drop(l);
        let r = records(&p);
        assert_eq!(r.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(r[2].1, vec![3u8; 300]);

        // A new cycle after a checkpoint: the old records 2..=5 stay on disk past the tail.
        let mut l = log(&p);
        l.restart().unwrap();
        l.append(6, &[6; 100]).unwrap();
        drop(l);
        assert_eq!(records(&p), vec![(6, vec![6; 100])]);

        // A new cycle whose first record ends exactly where an old one did: the old record
        // after it is whole and passes its CRC, but its lsn is not the next one.
        let mut l = log(&p);
        l.restart().unwrap();
        l.append(7, &[7; 100]).unwrap();
        drop(l);
        assert_eq!(records(&p), vec![(7, vec![7; 100])]);

        // Several records in one append.
        let mut l = log(&p);
        l.restart().unwrap();
        l.append_all(&[(8, &[8; 10]), (9, &[9; 20]), (10, &[])])
            .unwrap();
        drop(l);
        assert_eq!(
            records(&p),
            vec![(8, vec![8; 10]), (9, vec![9; 20]), (10, vec![])]
        );
    }

    #[test]
    fn records_of_an_earlier_cycle_fail_their_crc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.redb.wal");
        let mut l = log(&p);
        for lsn in 5..=7u64 {
            l.append(lsn, &[lsn as u8; 40]).unwrap();
        }
        // A new cycle whose first record has the length and lsn of the old first one (what
        // a torn multi-record write could leave): the old 6 and 7 follow it, whole and
        // with the next lsns, but made under the old salt.
        l.restart().unwrap();
        l.append(5, &[9; 40]).unwrap();
        drop(l);
        assert_eq!(records(&p), vec![(5, vec![9; 40])]);
    }

    #[test]
    fn torn_and_corrupt_tails_end_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.redb.wal");
        let mut l = log(&p);
        for lsn in 10..13u64 {
            l.append(lsn, &[lsn as u8; 50]).unwrap();
        }
        drop(l);
        let raw = std::fs::read(&p).unwrap();
        let third = HEADER as usize + 2 * (RECORD_HEADER + 50);
        // A flipped byte in the third record's payload.
        let mut bad = raw.clone();
        bad[third + RECORD_HEADER + 7] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert_eq!(records(&p).len(), 2);
        // A record cut short by the end of the file.
        std::fs::write(&p, &raw[..third + 20]).unwrap();
        assert_eq!(records(&p).len(), 2);
        // A huge length.
        let mut bad = raw.clone();
        bad[third..third + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        assert_eq!(records(&p).len(), 2);
    }

    #[test]
    fn foreign_files_are_refused_and_empty_ones_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.wal");
        std::fs::write(&p, b"hello, this is not a log").unwrap();
        assert!(LogFile::open(&p)
            .unwrap_err()
            .to_string()
            .contains("not a Cooper write-ahead log"));
        std::fs::write(&p, b"").unwrap();
        assert!(records(&p).is_empty());
        let mut redb = REDB_MAGIC.to_vec();
        redb.resize(8192, 0);
        std::fs::write(&p, &redb).unwrap();
        assert!(matches!(LogFile::open(&p).unwrap(), Opened::Legacy));
        let mut l = LogFile::replace(&p).unwrap();
        l.append(1, b"x").unwrap();
        assert_eq!(records(&p), vec![(1, b"x".to_vec())]);
    }

    #[test]
    fn shrink_keeps_a_usable_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.redb.wal");
        let mut l = log(&p);
        let big = vec![1u8; 1 << 20];
        for lsn in 1..=12u64 {
            l.append(lsn, &big).unwrap();
        }
        assert!(l.size() > HEADER + KEEP);
        l.restart().unwrap();
        l.shrink().unwrap();
        assert_eq!(l.size(), HEADER + KEEP);
        l.append(13, b"after").unwrap();
        drop(l);
        assert_eq!(records(&p), vec![(13, b"after".to_vec())]);
    }
}
