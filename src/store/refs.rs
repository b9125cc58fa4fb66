//! Which repo, revision and path name each blob: `refs.jsonl` beside the blobs, one JSON line
//! per (repo, revision, commit, path) served, appended as requests are served. The blobs
//! themselves are content-addressed and know nothing of repos; this index is what lets an
//! operator list, count and purge by repo. It is advisory: a line whose blob is gone is
//! ignored, and the file is compacted at boot.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::hub::BlobId;

/// One line of `refs.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    /// `org/name`, `datasets/org/name`, `spaces/...`, `kernels/...`.
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub path: String,
    /// `sha256/<hex>` or `oid/<hex>`.
    pub blob: String,
    pub size: u64,
    /// Unix seconds when it was (last) recorded.
    pub time: u64,
}

impl RefEntry {
    pub fn blob_id(&self) -> Option<BlobId> {
        BlobId::parse_key(&self.blob)
    }

    fn key(&self) -> (String, String, String, String) {
        (
            self.repo.clone(),
            self.revision.clone(),
            self.commit.clone(),
            self.path.clone(),
        )
    }
}

pub fn refs_path(root: &Path) -> PathBuf {
    root.join("refs.jsonl")
}

/// Reads every well-formed line, later lines replacing earlier ones with the same key.
pub fn read_refs(root: &Path) -> io::Result<Vec<RefEntry>> {
    let file = match File::open(refs_path(root)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut latest: HashMap<_, RefEntry> = HashMap::new();
    for line in BufReader::new(file).lines() {
        // A torn last line (a crash mid-append) is skipped, not fatal.
        if let Ok(e) = serde_json::from_str::<RefEntry>(&line?) {
            latest.insert(e.key(), e);
        }
    }
    let mut out: Vec<RefEntry> = latest.into_values().collect();
    out.sort_by(|a, b| (&a.repo, &a.revision, &a.path).cmp(&(&b.repo, &b.revision, &b.path)));
    Ok(out)
}

/// Rewrites `refs.jsonl` with only the entries `keep` accepts (temp file + rename).
pub fn rewrite_refs(root: &Path, keep: impl Fn(&RefEntry) -> bool) -> io::Result<usize> {
    let entries: Vec<RefEntry> = read_refs(root)?.into_iter().filter(|e| keep(e)).collect();
    let tmp = root.join(format!("refs.jsonl.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp)?;
    for e in &entries {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, refs_path(root))?;
    Ok(entries.len())
}

/// The appender used while serving.
pub struct RefsLog {
    file: Mutex<File>,
    seen: Mutex<HashSet<(String, String, String, String)>>,
}

impl RefsLog {
    /// Compacts the index to the blobs that exist, then opens it for appending.
    pub fn open(root: &Path, present: &HashSet<BlobId>) -> io::Result<RefsLog> {
        rewrite_refs(root, |e| e.blob_id().is_some_and(|b| present.contains(&b)))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(refs_path(root))?;
        Ok(RefsLog {
            file: Mutex::new(file),
            seen: Mutex::new(HashSet::new()),
        })
    }

    /// Appends `e` unless this process already recorded the same key.
    pub fn record(&self, e: &RefEntry) {
        if !self.seen.lock().insert(e.key()) {
            return;
        }
        let mut line = match serde_json::to_vec(e) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        // One write per line on an O_APPEND file: lines from concurrent writers never interleave.
        if let Err(err) = self.file.lock().write_all(&line) {
            log::warn!("cannot append to refs.jsonl: {err}");
        }
    }
}
