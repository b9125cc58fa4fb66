//! Which repo, revision and path name each blob: `refs.jsonl` beside the blobs, one JSON line
//! per (repo, revision, commit, path) served, appended as requests are served. The blobs
//! themselves are content-addressed and know nothing of repos; this index is what lets an
//! operator list, count and purge by repo. It is advisory: a line whose blob is gone is
//! ignored, and the file is compacted at boot.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hub::grammar::canonical_revision;
use crate::hub::BlobId;
use crate::jsonl::{self, Appender, Compaction};

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

    /// What names one entry: the repo as the Hub compares it (case-insensitively), the
    /// revision and commit as it reads them ([`canonical_revision`]), and the path. Spellings
    /// a client chooses (`GPT2` for `gpt2`, a commit in upper case) are one entry, in the file
    /// and when it is compacted.
    fn key(&self) -> RefKey {
        (
            self.repo.to_ascii_lowercase(),
            canonical_revision(&self.revision),
            self.commit.to_ascii_lowercase(),
            self.path.clone(),
        )
    }
}

type RefKey = (String, String, String, String);

/// Entries this process remembers having recorded (past that, one may be recorded again).
const REMEMBER: usize = 100_000;

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
pub struct RefsLog(Appender<RefKey>);

impl RefsLog {
    /// Opens the index for appending (and keeps it compacted as it grows: at most about twice
    /// its entries), and drops the names of blobs that are gone in the background: that reads
    /// and rewrites the whole file (a line per name served), which the boot of a store of
    /// millions of blobs must not wait for. Lines appended meanwhile are kept, as beside
    /// `hf-edge cache purge`, and so is the name of any blob on disk by then.
    pub fn open(root: &Path) -> io::Result<RefsLog> {
        let path = refs_path(root);
        let compaction = Compaction::new(RefEntry::key, usize::MAX);
        let log = RefsLog(Appender::open(&path, compaction, REMEMBER)?);
        if std::fs::metadata(&path)?.len() == 0 {
            return Ok(log);
        }
        let layout = super::Layout::new(root);
        std::thread::Builder::new()
            .name("refs compaction".into())
            .spawn(move || {
                let gone = |e: &RefEntry| e.blob_id().is_none_or(|b| !layout.blob(&b).exists());
                if let Err(e) = super::admin::drop_refs(layout.root(), gone) {
                    log::warn!("cannot compact {}: {e:#}", path.display());
                }
            })?;
        Ok(log)
    }

    /// Appends `e` unless this process already recorded the same key, or, with `filled`, in
    /// any case: the blob was just written again, after `hf-edge cache` removed it and, with
    /// it, its names. A commit (as the revision too) is written in lower case.
    pub fn record(&self, e: &RefEntry, filled: bool) {
        let e = RefEntry {
            revision: canonical_revision(&e.revision),
            commit: e.commit.to_ascii_lowercase(),
            ..e.clone()
        };
        match filled {
            true => self.0.append_anew(e.key(), &e),
            false => self.0.append(e.key(), &e),
        }
    }

    /// Waits until what was recorded is in the file (it is written on a thread of its own).
    #[cfg(test)]
    pub fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn entry(repo: &str, revision: &str) -> RefEntry {
        RefEntry {
            repo: repo.into(),
            revision: revision.into(),
            commit: COMMIT.to_ascii_uppercase(),
            path: "config.json".into(),
            blob: format!("oid/{}", "b".repeat(40)),
            size: 10,
            time: 1,
        }
    }

    /// The commit with the letters chosen by the bits of `i` in upper case.
    fn case_variant(i: u32) -> String {
        let mut letter = 0;
        COMMIT
            .chars()
            .map(|c| match c.is_ascii_alphabetic() {
                true => {
                    letter += 1;
                    match i >> (letter - 1) & 1 {
                        1 => c.to_ascii_uppercase(),
                        _ => c,
                    }
                }
                false => c,
            })
            .collect()
    }

    #[test]
    fn spellings_of_one_entry_are_recorded_once_and_compact_to_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = RefsLog::open(dir.path()).unwrap();
        for i in 0..200 {
            let repo = if i % 2 == 0 { "GPT2" } else { "gpt2" };
            log.record(&entry(repo, &case_variant(i)), false);
        }
        log.flush();
        let text = std::fs::read_to_string(refs_path(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let kept = read_refs(dir.path()).unwrap();
        assert_eq!(
            (kept[0].revision.as_str(), kept[0].commit.as_str()),
            (COMMIT, COMMIT)
        );
        // Branch names stay as they are (the Hub's are case-sensitive).
        log.record(&entry("gpt2", "Main"), false);
        log.record(&entry("gpt2", "main"), false);
        log.flush();
        assert_eq!(read_refs(dir.path()).unwrap().len(), 3);

        // A file written before (one line per spelling) compacts to one line per entry.
        let old: Vec<RefEntry> = (0..50).map(|i| entry("GPT2", &case_variant(i))).collect();
        jsonl::rewrite(&refs_path(dir.path()), &old).unwrap();
        assert_eq!(read_refs(dir.path()).unwrap().len(), 1);
    }
}
