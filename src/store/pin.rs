//! Pinned blobs (`cache.pin`): blobs a repo pattern names are kept out of LRU eviction, under
//! a bound of their own (`cache.max_pinned`).
//!
//! Blobs know nothing of repos, so a blob is pinned when a `refs.jsonl` entry naming it
//! matches a pattern: at boot for the entries on disk (in file order), and then as requests
//! and warm jobs record names. A pinned blob leaves the eviction manager altogether, so the
//! LRU never hands it back: the store holds at most `cache.max_size` of unpinned blobs plus
//! `cache.max_pinned` of pinned ones. A blob that would take pinned bytes over
//! `max_pinned` stays an ordinary, evictable blob.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::RefEntry;
use crate::access::RepoGlob;
use crate::hub::grammar::{canonical_revision, Repo};
use crate::hub::BlobId;

/// One `cache.pin` entry: a repo glob (`org/*`, `datasets/org/name`), optionally `@revision`
/// (a branch or tag as clients name it, or a commit).
#[derive(Debug, Clone, PartialEq)]
pub struct PinPattern {
    repo: RepoGlob,
    revision: Option<String>,
}

impl PinPattern {
    pub fn parse(s: &str) -> Result<PinPattern, String> {
        let (repo, revision) = match s.split_once('@') {
            Some((_, "")) => return Err(format!("{s:?}: no revision after @")),
            Some((repo, rev)) => (repo, Some(canonical_revision(rev))),
            None => (s, None),
        };
        Ok(PinPattern {
            repo: RepoGlob::parse(repo)?,
            revision,
        })
    }

    /// Whether a cached name falls under this pattern: its repo matches the glob and, with a
    /// revision, the name was asked for under that revision or is of that commit.
    pub fn matches(&self, e: &RefEntry) -> bool {
        let Some(repo) = Repo::parse_display(&e.repo) else {
            return false;
        };
        self.repo.matches(&repo)
            && self.revision.as_ref().is_none_or(|rev| {
                *rev == canonical_revision(&e.revision) || rev.eq_ignore_ascii_case(&e.commit)
            })
    }
}

/// What `cache.pin` and `cache.max_pinned` say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PinPolicy {
    pub patterns: Vec<PinPattern>,
    pub max_pinned: u64,
}

impl PinPolicy {
    pub fn matches(&self, e: &RefEntry) -> bool {
        self.patterns.iter().any(|p| p.matches(e))
    }

    /// The blobs pinned for these entries, in order, while they fit under `max_pinned`: what
    /// a server booting on this store pins, and what `hf-edge cache` shows as pinned.
    pub fn select<'a>(&self, entries: impl IntoIterator<Item = &'a RefEntry>) -> PinnedSet {
        let set = PinnedSet::default();
        for e in entries {
            if self.matches(e) {
                if let Some(id) = e.blob_id() {
                    set.try_pin(id, e.size, self.max_pinned);
                }
            }
        }
        set
    }
}

/// The pinned blobs and their bytes.
#[derive(Debug, Default)]
pub struct PinnedSet {
    blobs: Mutex<HashMap<BlobId, u64>>,
}

impl PinnedSet {
    /// Pins `id` unless that takes pinned bytes over `max`; whether it is pinned now, and
    /// whether this call pinned it.
    pub fn try_pin(&self, id: BlobId, size: u64, max: u64) -> (bool, bool) {
        let mut blobs = self.blobs.lock();
        if blobs.contains_key(&id) {
            return (true, false);
        }
        let bytes: u64 = blobs.values().sum();
        if bytes.saturating_add(size) > max {
            return (false, false);
        }
        blobs.insert(id, size);
        (true, true)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.lock().contains_key(id)
    }

    /// A pinned blob removed from disk (purged by an operator) is pinned no more.
    pub fn unpin(&self, id: &BlobId) {
        self.blobs.lock().remove(id);
    }

    /// Pinned blobs and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        let blobs = self.blobs.lock();
        (blobs.len() as u64, blobs.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(repo: &str, revision: &str, commit: &str, blob: char, size: u64) -> RefEntry {
        RefEntry {
            repo: repo.into(),
            revision: revision.into(),
            commit: commit.into(),
            path: "f.bin".into(),
            blob: format!("sha256/{}", blob.to_string().repeat(64)),
            size,
            time: 0,
        }
    }

    #[test]
    fn patterns_match_repo_globs_and_revisions() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let p = |s: &str| PinPattern::parse(s).unwrap();
        assert!(p("org/*").matches(&entry("org/m", "main", c, 'a', 1)));
        assert!(p("ORG/M").matches(&entry("org/m", "main", c, 'a', 1)));
        assert!(!p("org/*").matches(&entry("other/m", "main", c, 'a', 1)));
        assert!(p("datasets/org/*").matches(&entry("datasets/org/d", "main", c, 'a', 1)));
        assert!(!p("datasets/org/*").matches(&entry("org/d", "main", c, 'a', 1)));
        assert!(p("org/m@main").matches(&entry("org/m", "main", c, 'a', 1)));
        assert!(!p("org/m@v1.0").matches(&entry("org/m", "main", c, 'a', 1)));
        assert!(
            p(&format!("org/m@{}", c.to_uppercase())).matches(&entry("org/m", "main", c, 'a', 1))
        );
        assert!(PinPattern::parse("org/m@").is_err());
        assert!(PinPattern::parse("org/m m").is_err());
    }

    #[test]
    fn pinned_bytes_stay_under_max_pinned_in_order() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let policy = PinPolicy {
            patterns: vec![PinPattern::parse("org/*").unwrap()],
            max_pinned: 10,
        };
        let entries = [
            entry("org/a", "main", c, 'a', 6),
            entry("other/b", "main", c, 'b', 1),
            entry("org/c", "main", c, 'c', 5),
            entry("org/d", "main", c, 'd', 4),
            entry("org/a", "v1", c, 'a', 6),
        ];
        let set = policy.select(&entries);
        assert_eq!(set.totals(), (2, 10));
        let id = |ch: char| {
            entries
                .iter()
                .find_map(|e| e.blob_id().filter(|_| e.blob.ends_with(ch)))
                .unwrap()
        };
        assert!(set.contains(&id('a')) && set.contains(&id('d')));
        assert!(!set.contains(&id('b')) && !set.contains(&id('c')));
        set.unpin(&id('a'));
        assert_eq!(set.try_pin(id('c'), 5, 10), (true, true));
        assert_eq!(set.try_pin(id('c'), 5, 10), (true, false));
    }
}
