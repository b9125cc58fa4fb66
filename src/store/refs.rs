//! Which repo, revision and path name each blob: `refs.jsonl` beside the blobs, one JSON line
//! per (repo, revision, commit, path) served, appended as requests are served. The blobs
//! themselves are content-addressed and know nothing of repos; this index is what lets an
//! operator list, count and purge by repo. It is advisory: a line whose blob is gone is
//! ignored, and the file is compacted at boot.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hub::BlobId;
use crate::jsonl::{self, Appender};

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
    let mut out = jsonl::read_latest(&refs_path(root), RefEntry::key)?;
    out.sort_by(|a, b| (&a.repo, &a.revision, &a.path).cmp(&(&b.repo, &b.revision, &b.path)));
    Ok(out)
}

/// Rewrites `refs.jsonl` with only the entries `keep` accepts (temp file + rename).
pub fn rewrite_refs(root: &Path, keep: impl Fn(&RefEntry) -> bool) -> io::Result<usize> {
    let entries: Vec<RefEntry> = read_refs(root)?.into_iter().filter(|e| keep(e)).collect();
    jsonl::rewrite(&refs_path(root), &entries)?;
    Ok(entries.len())
}

/// The appender used while serving.
pub struct RefsLog(Appender<(String, String, String, String)>);

impl RefsLog {
    /// Compacts the index to the blobs that exist, then opens it for appending.
    pub fn open(root: &Path, present: &HashSet<BlobId>) -> io::Result<RefsLog> {
        rewrite_refs(root, |e| e.blob_id().is_some_and(|b| present.contains(&b)))?;
        Ok(RefsLog(Appender::open(&refs_path(root))?))
    }

    /// Appends `e` unless this process already recorded the same key.
    pub fn record(&self, e: &RefEntry) {
        self.0.append(e.key(), e);
    }
}
