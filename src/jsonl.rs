//! Append-only JSON-lines files (`refs.jsonl`, `meta.jsonl`): read with later lines winning,
//! compacted by an atomic rewrite, appended to while serving. A rewrite and every append hold
//! the file's lock ([`durable::Locked`]), and an appender whose file was replaced reopens it:
//! `hf-edge cache` commands can compact a store a server is appending to, and neither a crash
//! nor the other process loses a line.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::durable::{self, Locked};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Every well-formed line of `path` (none if it does not exist), a later line replacing an
/// earlier one with the same `key`. A torn last line (a crash mid-append) is skipped.
pub fn read_latest<T: DeserializeOwned, K: Hash + Eq>(
    path: &Path,
    key: impl Fn(&T) -> K,
) -> io::Result<Vec<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut latest = HashMap::new();
    for line in BufReader::new(file).lines() {
        if let Ok(v) = serde_json::from_str::<T>(&line?) {
            latest.insert(key(&v), v);
        }
    }
    Ok(latest.into_values().collect())
}

/// Replaces `path` with `entries`, one per line, atomically and under the file's lock.
pub fn rewrite<T: Serialize>(path: &Path, entries: &[T]) -> io::Result<()> {
    let _lock = Locked::acquire(path)?;
    durable::replace(path, &lines(entries)?)
}

/// Rewrites `path` from what it holds, under its lock: `edit` gets its bytes (empty when it
/// does not exist) and returns the new ones, or `None` to leave it as it is.
pub fn rewrite_with(path: &Path, edit: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) -> io::Result<()> {
    let _lock = Locked::acquire(path)?;
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    match edit(text) {
        Some(new) => durable::replace(path, &new),
        None => Ok(()),
    }
}

fn lines<T: Serialize>(entries: &[T]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Appends lines, each key at most once per process.
pub struct Appender<K> {
    path: PathBuf,
    file: Mutex<File>,
    written: Mutex<HashSet<K>>,
}

impl<K: Hash + Eq> Appender<K> {
    pub fn open(path: &Path) -> io::Result<Appender<K>> {
        Ok(Appender {
            path: path.to_path_buf(),
            file: Mutex::new(open_append(path)?),
            written: Mutex::new(HashSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `value` unless this process already appended one under `key`.
    pub fn append<T: Serialize>(&self, key: K, value: &T) {
        if !self.written.lock().insert(key) {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(value) else {
            return;
        };
        line.push(b'\n');
        if let Err(err) = self.append_line(&line) {
            log::warn!("cannot append to {}: {err}", self.path.display());
        }
    }

    /// One write per line on an O_APPEND file, under the lock, to the file now at `path` (a
    /// rewrite by another process replaced the one opened before).
    fn append_line(&self, line: &[u8]) -> io::Result<()> {
        let _lock = Locked::acquire(&self.path)?;
        let mut file = self.file.lock();
        let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        let open = file.metadata().map(|m| (m.dev(), m.ino()))?;
        if current.ok() != Some(open) {
            *file = open_append(&self.path)?;
        }
        file.write_all(line)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
