//! `meta.jsonl`: the resolver's answers on disk, so a restart (or a Hub outage right after
//! one) still knows which commit a branch named and what each file at a commit is.
//!
//! One JSON line per answer, appended; later lines win; compacted at boot. Identities are
//! stored as the resolver's hash of the credentials, never the credentials.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::IdentityKey;
use crate::hub::grammar::Repo;
use crate::hub::headers::FileMeta;
use crate::hub::BlobId;

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

pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    written: Mutex<HashSet<Entry>>,
}

impl Journal {
    /// Reads the journal (later lines win), compacts it, and opens it for appending.
    pub fn open(dir: &Path) -> io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join("meta.jsonl");
        let mut latest = std::collections::HashMap::new();
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    // A torn last line (a crash mid-append) is skipped.
                    if let Ok(e) = serde_json::from_str::<Entry>(&line?) {
                        latest.insert(e.key(), e);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut entries: Vec<Entry> = latest.into_values().collect();
        entries.sort_by_key(|e| e.time);
        let tmp = dir.join(format!("meta.jsonl.{}.tmp", std::process::id()));
        {
            let mut f = File::create(&tmp)?;
            for e in &entries {
                serde_json::to_writer(&mut f, e)?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let journal = Journal {
            path,
            file: Mutex::new(file),
            written: Mutex::new(HashSet::new()),
        };
        Ok((journal, entries))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an answer unless this process already wrote the same one.
    pub fn record(&self, mut e: Entry) {
        let time = e.time;
        e.time = 0;
        if !self.written.lock().insert(e.clone()) {
            return;
        }
        e.time = time;
        let Ok(mut line) = serde_json::to_vec(&e) else {
            return;
        };
        line.push(b'\n');
        if let Err(err) = self.file.lock().write_all(&line) {
            log::warn!("cannot append to {}: {err}", self.path.display());
        }
    }
}
