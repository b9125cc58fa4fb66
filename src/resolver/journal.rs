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
use crate::hub::grammar::Repo;
use crate::hub::headers::FileMeta;
use crate::hub::BlobId;
use crate::jsonl::{self, Appender};

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
            repo: repo.to_string(),
            revision: revision.to_string(),
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

    fn key(&self) -> (String, String, String, String) {
        (
            self.who.clone(),
            self.repo.clone(),
            self.revision.clone(),
            self.path.clone(),
        )
    }
}

pub struct Journal(Appender<Entry>);

impl Journal {
    /// Reads the journal (later lines win), compacts it, and opens it for appending.
    pub fn open(dir: &Path) -> io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join("meta.jsonl");
        let mut entries = jsonl::read_latest(&path, Entry::key)?;
        entries.sort_by_key(|e| e.time);
        jsonl::rewrite(&path, &entries)?;
        Ok((Journal(Appender::open(&path)?), entries))
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
