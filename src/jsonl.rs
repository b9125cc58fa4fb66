//! Append-only JSON-lines files (`refs.jsonl`, `meta.jsonl`): read with later lines winning,
//! compacted by an atomic rewrite, appended to while serving.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
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

/// Replaces `path` with `entries`, one per line (temp file, fsync, rename).
pub fn rewrite<T: Serialize>(path: &Path, entries: &[T]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("jsonl");
    let tmp = path.with_file_name(format!("{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp)?;
    for e in entries {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Appends lines, each key at most once per process.
pub struct Appender<K> {
    path: PathBuf,
    file: Mutex<File>,
    written: Mutex<HashSet<K>>,
}

impl<K: Hash + Eq> Appender<K> {
    pub fn open(path: &Path) -> io::Result<Appender<K>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Appender {
            path: path.to_path_buf(),
            file: Mutex::new(file),
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
        // One write per line on an O_APPEND file: lines from concurrent writers never interleave.
        if let Err(err) = self.file.lock().write_all(&line) {
            log::warn!("cannot append to {}: {err}", self.path.display());
        }
    }
}
