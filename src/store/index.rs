//! The persisted index of complete blobs, so that a restart does not list every blob on disk
//! (a full scan: minutes for millions of blobs) before it serves.
//!
//! ```text
//! index.snap          header + one record per blob (size, last access), written whole
//! index.journal.<g>   records appended since the snapshot of generation g: add, remove, touch
//! index.dirty         exists while a process owns the index; left behind by a crash
//! index.stale         left by `hf-edge cache` commands that removed blobs
//! index.lock          flock held by the process that writes the index
//! ```
//! Records are absolute (a size, a time, a removal), so replaying one twice is harmless: a
//! crash between writing a snapshot and retiring the journals it covers loses nothing.
//!
//! The index only ever names blobs that were renamed into `blobs/` after verification, and
//! the hit path opens the file itself, so a stale index can make a blob look missing or
//! present, never serve wrong bytes: a missing blob is adopted on its next miss, and one gone
//! behind our back is forgotten when it is opened. What a stale index gets wrong is disk
//! usage; a boot after a crash or after `hf-edge cache` removed blobs reconciles it with a scan
//! in the background, while serving.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use pingora_cache::key::HashBinary;

use crate::hub::BlobId;

const MAGIC: &[u8; 8] = b"HFEIDX02";
const HEADER: usize = 32;
const RECORD: usize = 74;

/// What a record says about a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Complete on disk, with this size and last access.
    Add,
    Remove,
    /// Read at this time (the LRU order).
    Touch,
}

/// A blob in the index: its size and last access (Unix time in nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: BlobId,
    /// Its cache-key hash (what the eviction manager knows it by): kept, since computing it
    /// for millions of blobs would cost a boot seconds.
    pub key: HashBinary,
    pub size: u64,
    pub access: u64,
}

/// The blobs by cache-key hash.
pub type Blobs = HashMap<HashBinary, Entry>;

/// The index as loaded at boot.
#[derive(Debug)]
pub struct Loaded {
    pub blobs: Blobs,
    /// The journal generation new records go to.
    pub generation: u64,
    /// Why the index may not match the disk (a crash, a torn journal, `hf-edge cache`): the
    /// boot reconciles it with a scan in the background.
    pub stale: Option<String>,
}

/// Why no index could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no index")]
    Missing,
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn snapshot_path(root: &Path) -> PathBuf {
    root.join("index.snap")
}

fn journal_path(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("index.journal.{generation}"))
}

fn dirty_path(root: &Path) -> PathBuf {
    root.join("index.dirty")
}

fn stale_path(root: &Path) -> PathBuf {
    root.join("index.stale")
}

/// Tells the next boot to reconcile the index with the disk: blobs were removed by another
/// process (the `hf-edge cache` commands).
pub fn mark_stale(root: &Path) -> io::Result<()> {
    File::create(stale_path(root)).map(drop)
}

/// FNV-1a: a checksum against torn and flipped bytes, not against an adversary (the cache
/// directory is ours alone).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn encode(op: Op, e: &Entry) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0] = match op {
        Op::Add => 1,
        Op::Remove => 2,
        Op::Touch => 3,
    };
    match &e.id {
        BlobId::Sha256(b) => {
            r[1] = 1;
            r[2..34].copy_from_slice(b);
        }
        BlobId::GitOid(b) => {
            r[1] = 2;
            r[2..22].copy_from_slice(b);
        }
    }
    r[34..50].copy_from_slice(&e.key);
    r[50..58].copy_from_slice(&e.size.to_le_bytes());
    r[58..66].copy_from_slice(&e.access.to_le_bytes());
    let sum = checksum(&r[..66]);
    r[66..].copy_from_slice(&sum.to_le_bytes());
    r
}

fn decode(r: &[u8]) -> Option<(Op, Entry)> {
    let sum = u64::from_le_bytes(r[66..74].try_into().ok()?);
    if checksum(&r[..66]) != sum {
        return None;
    }
    let op = match r[0] {
        1 => Op::Add,
        2 => Op::Remove,
        3 => Op::Touch,
        _ => return None,
    };
    let id = match r[1] {
        1 => BlobId::Sha256(r[2..34].try_into().ok()?),
        2 => BlobId::GitOid(r[2..22].try_into().ok()?),
        _ => return None,
    };
    let key = r[34..50].try_into().ok()?;
    let size = u64::from_le_bytes(r[50..58].try_into().ok()?);
    let access = u64::from_le_bytes(r[58..66].try_into().ok()?);
    Some((
        op,
        Entry {
            id,
            key,
            size,
            access,
        },
    ))
}

/// Applies one record to the map being loaded.
fn apply(map: &mut Blobs, op: Op, e: Entry) {
    match op {
        Op::Add => {
            map.insert(e.key, e);
        }
        Op::Remove => {
            map.remove(&e.key);
        }
        Op::Touch => {
            if let Some(known) = map.get_mut(&e.key) {
                known.access = known.access.max(e.access);
            }
        }
    }
}

/// Loads the snapshot and replays the journals after it. A snapshot that is absent or does
/// not check out is an error (the caller scans instead); a torn journal tail (a crash mid-
/// write) is not: what precedes it is kept and the index is marked stale.
pub fn load(root: &Path) -> Result<Loaded, LoadError> {
    let path = snapshot_path(root);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |why: String| LoadError::Corrupt(format!("{}: {why}", path.display()));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not an hf-edge store index (bad header)".into()));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (generation, count, sum) = (word(8), word(16), word(24));
    let body = &bytes[HEADER..];
    if Some(body.len() as u64) != count.checked_mul(RECORD as u64) {
        return Err(corrupt(format!(
            "{} bytes of records for {count} blob(s)",
            body.len()
        )));
    }
    if checksum(body) != sum {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut map = HashMap::with_capacity(count as usize);
    for r in body.chunks_exact(RECORD) {
        match decode(r) {
            Some((Op::Add, e)) => apply(&mut map, Op::Add, e),
            _ => return Err(corrupt("a record that is not a blob".into())),
        }
    }
    let mut stale = None;
    let mut last = generation;
    for g in journals(root)?.into_iter().filter(|g| *g >= generation) {
        last = g;
        let mut bytes = Vec::new();
        File::open(journal_path(root, g))?.read_to_end(&mut bytes)?;
        let mut records = bytes.chunks(RECORD);
        for r in records.by_ref() {
            match (r.len() == RECORD).then(|| decode(r)).flatten() {
                Some((op, e)) => apply(&mut map, op, e),
                None => {
                    stale = Some(format!(
                        "{} ends in a torn record",
                        journal_path(root, g).display()
                    ));
                    break;
                }
            }
        }
    }
    if stale.is_none() && dirty_path(root).exists() {
        stale = Some("the last process that served from it did not shut down cleanly".into());
    }
    if stale.is_none() && stale_path(root).exists() {
        stale = Some("`hf-edge cache` removed blobs since".into());
    }
    Ok(Loaded {
        blobs: map,
        generation: last,
        stale,
    })
}

/// The journal generations present, ascending.
fn journals(root: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let name = entry?.file_name();
        if let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("index.journal."))
            .and_then(|g| g.parse().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The writer of the index, held by the one process that owns it (`index.lock`).
pub struct Writer {
    root: PathBuf,
    _lock: File,
    journal: File,
    generation: u64,
    /// Records in the current journal (compaction is due when they outnumber the blobs).
    pub records: u64,
}

impl Writer {
    /// Takes ownership of the index if no other process has it (a graceful upgrade's old
    /// process keeps it until it exits); marks it dirty until [`Writer::close`].
    pub fn acquire(root: &Path, generation: u64) -> io::Result<Option<Writer>> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("index.lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        File::create(dirty_path(root))?;
        // The newest journal on disk: one a previous owner started after this process loaded
        // the index (a graceful upgrade), or one a damaged snapshot left behind. Appending to
        // it and rotating past it keeps every journal a later boot replays newer than its
        // snapshot.
        let generation = journals(root)?.into_iter().fold(generation, u64::max);
        Ok(Some(Writer {
            journal: open_journal(root, generation)?,
            root: root.to_path_buf(),
            _lock: lock,
            generation,
            records: 0,
        }))
    }

    /// Appends one record per entry, in one `write`, to the page cache (a process killed
    /// after it returns keeps them; only a power loss can tear them).
    pub fn append_all(&mut self, op: Op, entries: &[Entry]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * RECORD);
        for e in entries {
            buf.extend_from_slice(&encode(op, e));
        }
        self.records += entries.len() as u64;
        self.journal.write_all(&buf)
    }

    /// Starts a new journal generation; the snapshot of `entries` taken at the same moment
    /// (under the same lock) is then written by [`write_snapshot`] without holding it.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let next = self.generation + 1;
        self.journal = open_journal(&self.root, next)?;
        self.generation = next;
        self.records = 0;
        Ok(next)
    }

    /// The index is complete on disk: the next boot trusts it without a scan.
    pub fn close(self) -> io::Result<()> {
        self.journal.sync_all()?;
        fs::remove_file(dirty_path(&self.root))
    }
}

fn open_journal(root: &Path, generation: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(root, generation))
}

/// Writes the snapshot of generation `generation` (temp file, fsync, rename) and removes the
/// journals it covers.
pub fn write_snapshot(root: &Path, generation: u64, entries: &[Entry]) -> io::Result<()> {
    let mut body = Vec::with_capacity(entries.len() * RECORD);
    for e in entries {
        body.extend_from_slice(&encode(Op::Add, e));
    }
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    drop(body);
    crate::durable::replace(&snapshot_path(root), &bytes)?;
    for g in journals(root)?.into_iter().filter(|g| *g < generation) {
        fs::remove_file(journal_path(root, g))?;
    }
    Ok(())
}

/// The `hf-edge cache` commands' view was reconciled: the stale mark goes.
pub fn clear_stale(root: &Path) -> io::Result<()> {
    match fs::remove_file(stale_path(root)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, size: u64, access: u64) -> Entry {
        let id = if n.is_multiple_of(2) {
            BlobId::Sha256([n; 32])
        } else {
            BlobId::GitOid([n; 20])
        };
        Entry {
            id,
            key: [n; 16],
            size,
            access,
        }
    }

    fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
        v.sort_by_key(|e| e.size);
        v
    }

    #[test]
    fn snapshot_and_journal_replay_to_the_same_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_snapshot(root, 0, &[entry(1, 10, 5), entry(2, 20, 5)]).unwrap();
        let mut w = Writer::acquire(root, 0).unwrap().unwrap();
        w.append_all(Op::Add, &[entry(4, 40, 6)]).unwrap();
        w.append_all(Op::Remove, &[entry(1, 10, 0)]).unwrap();
        w.append_all(Op::Touch, &[entry(2, 0, 9)]).unwrap();
        let loaded = load(root).unwrap();
        assert_eq!(
            sorted(loaded.blobs.into_values().collect()),
            vec![entry(2, 20, 9), entry(4, 40, 6)]
        );
        assert!(loaded.stale.is_some(), "a writer still owns it: dirty");
        w.close().unwrap();
        assert_eq!(load(root).unwrap().stale, None);
    }

    #[test]
    fn a_rotation_then_a_snapshot_retires_the_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_snapshot(root, 0, &[]).unwrap();
        let mut w = Writer::acquire(root, 0).unwrap().unwrap();
        w.append_all(Op::Add, &[entry(2, 20, 1)]).unwrap();
        let g = w.rotate().unwrap();
        w.append_all(Op::Add, &[entry(4, 40, 1)]).unwrap();
        // A crash here replays both journals onto the old snapshot.
        assert_eq!(load(root).unwrap().blobs.len(), 2);
        write_snapshot(root, g, &[entry(2, 20, 1)]).unwrap();
        assert!(!journal_path(root, 0).exists());
        assert_eq!(load(root).unwrap().blobs.len(), 2);
        assert_eq!(load(root).unwrap().generation, 1);
    }

    #[test]
    fn a_torn_journal_keeps_what_precedes_it_and_marks_the_index_stale() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_snapshot(root, 3, &[entry(2, 20, 1)]).unwrap();
        let mut torn = encode(Op::Add, &entry(4, 40, 1)).to_vec();
        torn.extend_from_slice(&encode(Op::Add, &entry(6, 60, 1))[..30]);
        fs::write(journal_path(root, 3), torn).unwrap();
        let loaded = load(root).unwrap();
        assert_eq!(loaded.blobs.len(), 2);
        assert!(loaded.stale.unwrap().contains("torn"));
    }

    #[test]
    fn a_damaged_snapshot_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(matches!(load(root), Err(LoadError::Missing)));
        write_snapshot(root, 0, &[entry(2, 20, 1), entry(3, 30, 1)]).unwrap();
        let path = snapshot_path(root);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = load(root).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        fs::write(&path, &bytes[..HEADER + 10]).unwrap();
        let err = load(root).unwrap_err().to_string();
        assert!(err.contains("for 2 blob(s)"), "{err}");
        fs::write(&path, b"garbage").unwrap();
        assert!(load(root).unwrap_err().to_string().contains("bad header"));
    }

    #[test]
    fn a_second_process_does_not_get_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let first = Writer::acquire(dir.path(), 0).unwrap();
        assert!(first.is_some());
        assert!(Writer::acquire(dir.path(), 0).unwrap().is_none());
        drop(first);
        assert!(Writer::acquire(dir.path(), 0).unwrap().is_some());
    }
}
