//! `meta.jsonl`: the resolver's answers on disk, so a restart (or a Hub outage right after
//! one) still knows which commit a branch named and what each file at a commit is.
//!
//! One JSON line per answer, appended; later lines win; compacted at boot. Identities are
//! stored as the resolver's hash of the credentials, never the credentials.

use std::io;
use std::path::Path;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::access::IdentityKey;
use crate::hub::grammar::{canonical_revision, Repo};
use crate::hub::headers::FileMeta;
use crate::hub::BlobId;
use crate::jsonl::{self, Appender, Compaction};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Hex of the identity hash.
    pub who: String,
    pub repo: String,
    /// As requested: a branch, tag or commit.
    pub revision: String,
    pub commit: String,
    pub path: String,
    pub etag: String,
    pub size: u64,
    pub lfs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    pub time: u64,
}

impl Entry {
    pub fn new(who: IdentityKey, repo: &Repo, revision: &str, path: &str, m: &FileMeta) -> Entry {
        Entry {
            who: hex::encode(who.0),
            // As the Hub compares them: a client's spelling never makes a second line.
            repo: repo.folded().to_string(),
            revision: canonical_revision(revision),
            commit: m.commit.clone(),
            path: path.to_string(),
            etag: m.etag.clone(),
            size: m.size,
            lfs: m.lfs,
            content_type: m.content_type.clone(),
            moved_to: m.moved_to.as_ref().map(Repo::to_string),
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The identity, repo and metadata this line records (no download URL: those expire).
    pub fn decode(&self) -> Option<(IdentityKey, Repo, FileMeta)> {
        let who = IdentityKey(hex::decode(&self.who).ok()?.try_into().ok()?);
        let repo = Repo::parse_display(&self.repo)?;
        let meta = FileMeta {
            commit: self.commit.clone(),
            etag: self.etag.clone(),
            blob: BlobId::from_etag(&self.etag),
            size: self.size,
            lfs: self.lfs,
            content_type: self.content_type.clone(),
            download: None,
            resolved_at: Instant::now(),
            stale: false,
            moved_to: self.moved_to.as_deref().and_then(Repo::parse_display),
        };
        Some((who, repo, meta))
    }

    /// One answer per identity, repo, revision and path (repo and revision as the Hub reads
    /// them, so lines written before they were recorded that way compact to one).
    fn key(&self) -> (String, String, String, String) {
        (
            self.who.clone(),
            self.repo.to_ascii_lowercase(),
            canonical_revision(&self.revision),
            self.path.clone(),
        )
    }
}

pub struct Journal(Appender<Entry>);

impl Journal {
    /// Reads the journal (later lines win), compacts it to its newest `max_entries` answers,
    /// and opens it for appending (kept under about twice that as it grows).
    pub fn open(dir: &Path, max_entries: usize) -> io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join("meta.jsonl");
        let mut entries = jsonl::read_latest(&path, Entry::key)?;
        entries.sort_by_key(|e| e.time);
        entries.drain(..entries.len().saturating_sub(max_entries));
        jsonl::rewrite(&path, &entries)?;
        let compaction = Compaction::new(Entry::key, max_entries);
        Ok((
            Journal(Appender::open(&path, compaction, max_entries)?),
            entries,
        ))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Appends an answer unless this process already wrote the same one (whenever).
    pub fn record(&self, e: Entry) {
        let key = Entry {
            time: 0,
            ..e.clone()
        };
        self.0.append(key, &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_answer_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 10).unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let meta = FileMeta {
            commit: commit.into(),
            etag: "b".repeat(40),
            blob: None,
            size: 10,
            lfs: false,
            content_type: None,
            download: None,
            resolved_at: Instant::now(),
            stale: false,
            moved_to: None,
        };
        for (repo, revision) in [
            ("gpt2", commit.to_string()),
            ("GPT2", commit.to_ascii_uppercase()),
            ("Gpt2", commit.to_string()),
        ] {
            let repo = Repo::parse_display(repo).unwrap();
            let who = IdentityKey::anonymous();
            journal.record(Entry::new(who, &repo, &revision, "config.json", &meta));
        }
        journal.0.flush();
        let text = std::fs::read_to_string(journal.path()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let (_, entries) = Journal::open(dir.path(), 10).unwrap();
        assert_eq!(entries[0].revision, commit);
        assert_eq!(entries[0].repo, "gpt2");
    }
}
