//! Operator commands on a blob store (`hf-edge cache ...`): statistics, listing, rehashing,
//! purging by repo and evicting down to a size.
//!
//! They work on the directory alone, so they can run beside a live `hf-edge serve` on the same
//! store. Removing a blob is deleting its file: open readers keep their handle, and the server
//! refetches a blob it finds missing. `refs.jsonl` is replaced atomically under its lock, which
//! the server's appends take too (reopening the replaced file), so neither a crash nor a
//! concurrent append loses a line. Fills in progress (`tmp/`) are never looked at.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{read_refs, refs_path, ContentHasher, Layout, PinPolicy, PinnedSet, RefEntry};
use crate::hub::BlobId;

/// The repo under which blobs that no `refs.jsonl` entry names are counted and listed.
pub const UNKNOWN_REPO: &str = "(unknown)";

/// Read size when rehashing; memory use does not grow with the blob.
const HASH_BUFFER: usize = 1 << 20;

#[derive(Debug, Serialize)]
pub struct Stats {
    pub dir: PathBuf,
    pub objects: u64,
    pub bytes: u64,
    pub max_size: u64,
    /// `bytes` as a percentage of `max_size`.
    pub fill_percent: f64,
    /// Blobs `cache.pin` keeps out of eviction, their bytes, and their bound.
    pub pinned_objects: u64,
    pub pinned_bytes: u64,
    pub max_pinned: u64,
    /// Most bytes first. A blob shared by several repos counts in each.
    pub repos: Vec<RepoUsage>,
}

#[derive(Debug, Serialize)]
pub struct RepoUsage {
    pub repo: String,
    /// Cached (revision, path) names.
    pub files: u64,
    /// Distinct blobs those names point at, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    /// Unix seconds of the latest access to any of its blobs.
    pub last_access: u64,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub dir: PathBuf,
    pub files: Vec<CachedFile>,
}

/// A cached file; for a blob no entry names, `repo` is [`UNKNOWN_REPO`] and the names are empty.
#[derive(Debug, Serialize)]
pub struct CachedFile {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub path: String,
    /// `sha256/<hex>` or `oid/<hex>`.
    pub blob: String,
    pub size: u64,
    /// Unix seconds.
    pub last_access: u64,
    /// Kept out of eviction by `cache.pin`.
    pub pinned: bool,
}

/// Where `verify` is, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct VerifyProgress {
    pub blobs: u64,
    pub blobs_total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub checked: u64,
    pub bytes: u64,
    /// Blobs whose content does not match their address; all removed.
    pub bad: Vec<BadBlob>,
    /// Blobs that could not be read; left in place.
    pub unreadable: Vec<Unreadable>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct BadBlob {
    pub path: PathBuf,
    pub expected: String,
    pub actual: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct PurgeReport {
    pub dir: PathBuf,
    pub repo: String,
    pub revision: Option<String>,
    /// Cached names purged.
    pub files: u64,
    pub removed: Vec<RemovedBlob>,
    pub bytes: u64,
    /// Blobs of the purged names kept because another repo or revision still names them.
    pub kept_shared: u64,
}

#[derive(Debug, Serialize)]
pub struct EvictReport {
    pub dir: PathBuf,
    pub target: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Least recently accessed first.
    pub removed: Vec<RemovedBlob>,
}

#[derive(Debug, Serialize)]
pub struct RemovedBlob {
    pub blob: String,
    pub path: PathBuf,
    pub size: u64,
    /// Unix seconds.
    pub last_access: u64,
}

/// The store as found: complete blobs, and the `refs.jsonl` entries whose blob exists.
struct Snapshot {
    layout: Layout,
    blobs: BTreeMap<BlobId, Blob>,
    refs: Vec<(RefEntry, BlobId)>,
}

struct Blob {
    size: u64,
    last_access: SystemTime,
}

impl Snapshot {
    fn take(root: &Path) -> Result<Snapshot> {
        // Scanning creates nothing, so a mistyped cache.dir is an error, not an empty store.
        if !root.join("blobs").is_dir() {
            bail!(
                "{}: not an hf-edge store (no blobs/ directory); check cache.dir",
                root.display()
            );
        }
        let layout = Layout::new(root);
        let blobs: BTreeMap<_, _> = layout
            .scan()
            .with_context(|| format!("cannot scan {}", root.join("blobs").display()))?
            .into_iter()
            .map(|b| {
                let blob = Blob {
                    size: b.size,
                    last_access: b.last_access,
                };
                (b.id, blob)
            })
            .collect();
        let refs = read_refs(root)
            .with_context(|| format!("cannot read {}", refs_path(root).display()))?
            .into_iter()
            .filter_map(|e| {
                let id = e.blob_id()?;
                blobs.contains_key(&id).then_some((e, id))
            })
            .collect();
        Ok(Snapshot {
            layout,
            blobs,
            refs,
        })
    }

    fn bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }

    /// The blobs a server on this store pins.
    fn pinned(&self, pins: &PinPolicy) -> PinnedSet {
        pins.select(self.refs.iter().map(|(e, _)| e))
    }

    fn removed(&self, id: &BlobId) -> RemovedBlob {
        let b = &self.blobs[id];
        RemovedBlob {
            blob: id.to_string(),
            path: self.layout.blob(id),
            size: b.size,
            last_access: unix(b.last_access),
        }
    }
}

pub fn stats(root: &Path, max_size: u64, pins: &PinPolicy) -> Result<Stats> {
    let snap = Snapshot::take(root)?;
    let (pinned_objects, pinned_bytes) = snap.pinned(pins).totals();
    let mut by_repo: BTreeMap<&str, (u64, BTreeSet<BlobId>)> = BTreeMap::new();
    for (e, id) in &snap.refs {
        let usage = by_repo.entry(&e.repo).or_default();
        usage.0 += 1;
        usage.1.insert(*id);
    }
    let named: HashSet<BlobId> = snap.refs.iter().map(|(_, id)| *id).collect();
    let unnamed: BTreeSet<BlobId> = snap
        .blobs
        .keys()
        .filter(|id| !named.contains(id))
        .copied()
        .collect();
    if !unnamed.is_empty() {
        by_repo.insert(UNKNOWN_REPO, (0, unnamed));
    }
    let mut repos: Vec<RepoUsage> = by_repo
        .into_iter()
        .map(|(repo, (files, ids))| {
            let blobs = ids.iter().map(|id| &snap.blobs[id]);
            RepoUsage {
                repo: repo.to_string(),
                files,
                blobs: ids.len() as u64,
                bytes: blobs.clone().map(|b| b.size).sum(),
                last_access: blobs.map(|b| unix(b.last_access)).max().unwrap_or(0),
            }
        })
        .collect();
    repos.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.repo.cmp(&b.repo)));
    let bytes = snap.bytes();
    Ok(Stats {
        dir: root.to_path_buf(),
        objects: snap.blobs.len() as u64,
        bytes,
        max_size,
        fill_percent: bytes as f64 * 100.0 / max_size.max(1) as f64,
        pinned_objects,
        pinned_bytes,
        max_pinned: pins.max_pinned,
        repos,
    })
}

/// Every cached file, or those of one repo; blobs no entry names are listed (as
/// [`UNKNOWN_REPO`]) when no repo, or that one, is asked for.
pub fn list(root: &Path, repo: Option<&str>, pins: &PinPolicy) -> Result<Listing> {
    let snap = Snapshot::take(root)?;
    let pinned = snap.pinned(pins);
    let mut files: Vec<CachedFile> = snap
        .refs
        .iter()
        .filter(|(e, _)| repo.is_none_or(|r| e.repo.eq_ignore_ascii_case(r)))
        .map(|(e, id)| {
            let b = &snap.blobs[id];
            CachedFile {
                repo: e.repo.clone(),
                revision: e.revision.clone(),
                commit: e.commit.clone(),
                path: e.path.clone(),
                blob: id.to_string(),
                size: b.size,
                last_access: unix(b.last_access),
                pinned: pinned.contains(id),
            }
        })
        .collect();
    if repo.is_none_or(|r| r == UNKNOWN_REPO) {
        let named: HashSet<BlobId> = snap.refs.iter().map(|(_, id)| *id).collect();
        for (id, b) in snap.blobs.iter().filter(|(id, _)| !named.contains(id)) {
            files.push(CachedFile {
                repo: UNKNOWN_REPO.to_string(),
                revision: String::new(),
                commit: String::new(),
                path: String::new(),
                blob: id.to_string(),
                size: b.size,
                last_access: unix(b.last_access),
                pinned: false,
            });
        }
    }
    Ok(Listing {
        dir: root.to_path_buf(),
        files,
    })
}

/// Rehashes every blob against its address, removes those that do not match, and reports.
/// `progress` is called as bytes are hashed. Access times are left as they were: they are
/// the LRU order.
pub fn verify(root: &Path, mut progress: impl FnMut(&VerifyProgress)) -> Result<VerifyReport> {
    let start = Instant::now();
    let snap = Snapshot::take(root)?;
    let mut at = VerifyProgress {
        blobs: 0,
        blobs_total: snap.blobs.len() as u64,
        bytes: 0,
        bytes_total: snap.bytes(),
    };
    let (mut checked, mut bytes) = (0, 0);
    let (mut bad, mut unreadable, mut removed) = (Vec::new(), Vec::new(), HashSet::new());
    let mut buf = vec![0; HASH_BUFFER];
    for id in snap.blobs.keys() {
        let path = snap.layout.blob(id);
        let hashed = hash_file(&path, id, &mut buf, |n| {
            at.bytes += n;
            progress(&at);
        });
        match hashed {
            // Removed meanwhile (by the server's eviction): nothing to check.
            Ok(None) => {}
            Ok(Some((actual, size))) => {
                checked += 1;
                bytes += size;
                if actual != *id {
                    remove_blob(&snap.layout, &path)?;
                    removed.insert(*id);
                    bad.push(BadBlob {
                        path,
                        expected: id.to_string(),
                        actual: actual.to_string(),
                        size,
                    });
                }
            }
            Err(e) => unreadable.push(Unreadable {
                path,
                error: e.to_string(),
            }),
        }
        at.blobs += 1;
        progress(&at);
    }
    drop_refs(root, |e| e.blob_id().is_some_and(|b| removed.contains(&b)))?;
    Ok(VerifyReport {
        dir: root.to_path_buf(),
        checked,
        bytes,
        bad,
        unreadable,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Removes the blobs `repo` names (at `revision` only, if given: a revision as requested or
/// a commit), except those another repo or revision still names, and forgets the purged names.
pub fn purge(root: &Path, repo: &str, revision: Option<&str>) -> Result<PurgeReport> {
    let snap = Snapshot::take(root)?;
    // Repo ids and commits compare as on the Hub: case-insensitively.
    let purged = |e: &RefEntry| {
        e.repo.eq_ignore_ascii_case(repo)
            && revision.is_none_or(|r| e.revision == r || e.commit.eq_ignore_ascii_case(r))
    };
    let (gone, kept): (Vec<_>, Vec<_>) = snap.refs.iter().partition(|(e, _)| purged(e));
    let still_named: HashSet<BlobId> = kept.iter().map(|(_, id)| *id).collect();
    let targets: BTreeSet<BlobId> = gone.iter().map(|(_, id)| *id).collect();
    let mut report = PurgeReport {
        dir: root.to_path_buf(),
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
        files: gone.len() as u64,
        removed: Vec::new(),
        bytes: 0,
        kept_shared: 0,
    };
    let mut removed = HashSet::new();
    for id in &targets {
        if still_named.contains(id) {
            report.kept_shared += 1;
            continue;
        }
        if remove_blob(&snap.layout, &snap.layout.blob(id))? {
            report.bytes += snap.blobs[id].size;
            report.removed.push(snap.removed(id));
        }
        removed.insert(*id);
    }
    drop_refs(root, |e| {
        purged(e) || e.blob_id().is_some_and(|b| removed.contains(&b))
    })?;
    Ok(report)
}

/// Removes the least recently accessed blobs until at most `target` bytes remain.
pub fn evict(root: &Path, target: u64, pins: &PinPolicy) -> Result<EvictReport> {
    let snap = Snapshot::take(root)?;
    let bytes_before = snap.bytes();
    let pinned = snap.pinned(pins);
    // Pinned blobs are never evicted, by the server or by this command.
    let mut order: Vec<(&BlobId, &Blob)> = snap
        .blobs
        .iter()
        .filter(|(id, _)| !pinned.contains(id))
        .collect();
    order.sort_by_key(|(id, b)| (b.last_access, **id));
    let mut bytes = bytes_before;
    let (mut report, mut removed) = (Vec::new(), HashSet::new());
    for (id, b) in order {
        if bytes <= target {
            break;
        }
        // Gone already (the server evicted it) counts as freed, but not as ours.
        if remove_blob(&snap.layout, &snap.layout.blob(id))? {
            report.push(snap.removed(id));
        }
        removed.insert(*id);
        bytes -= b.size;
    }
    drop_refs(root, |e| e.blob_id().is_some_and(|b| removed.contains(&b)))?;
    Ok(EvictReport {
        dir: root.to_path_buf(),
        target,
        bytes_before,
        bytes_after: bytes,
        removed: report,
    })
}

/// Hashes a file as the kind of address `id` is, calling `on_read` with each chunk's length.
/// Returns the content's real address and size, or `None` if the file is gone.
fn hash_file(
    path: &Path,
    id: &BlobId,
    buf: &mut [u8],
    mut on_read: impl FnMut(u64),
) -> io::Result<Option<(BlobId, u64)>> {
    let (mut file, restore) = match open_untouched(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut hasher = ContentHasher::new(id, size);
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        on_read(n as u64);
    }
    if let Some(atime) = restore {
        if let Err(e) = file.set_times(std::fs::FileTimes::new().set_accessed(atime)) {
            log::debug!("cannot restore the access time of {}: {e}", path.display());
        }
    }
    Ok(Some((hasher.finish(), size)))
}

/// Opens a file for reading without moving its access time: with `O_NOATIME` where allowed
/// (the file's owner, or root), else plainly, returning the access time to put back.
fn open_untouched(path: &Path) -> io::Result<(File, Option<SystemTime>)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            opened => return opened.map(|f| (f, None)),
        }
    }
    let file = File::open(path)?;
    let atime = file.metadata()?.accessed()?;
    Ok((file, Some(atime)))
}

/// Deletes a blob file; `false` if it was already gone. The store's persisted index then
/// names a blob that is not there: the next boot reconciles it with the disk.
fn remove_blob(layout: &Layout, path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            super::index::mark_stale(layout.root()).with_context(|| {
                format!(
                    "cannot mark the store index in {} stale",
                    layout.root().display()
                )
            })?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Rewrites `refs.jsonl` in place without the entries `drop` names (and without torn lines).
/// Lines the server appends meanwhile are kept: the file is re-read until nothing new came,
/// then truncated and written back in one append, which concurrent appends land before or
/// after, never inside.
pub(super) fn drop_refs(root: &Path, drop: impl Fn(&RefEntry) -> bool) -> Result<()> {
    let path = refs_path(root);
    crate::jsonl::rewrite_with(&path, |text| {
        let kept = keep_lines(&text, &drop);
        (kept.len() != text.len()).then_some(kept)
    })
    .with_context(|| format!("cannot rewrite {}", path.display()))
}

fn keep_lines(text: &[u8], drop: &impl Fn(&RefEntry) -> bool) -> Vec<u8> {
    let mut kept = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let whole = line.ends_with(b"\n");
        if whole && serde_json::from_slice::<RefEntry>(line).is_ok_and(|e| !drop(&e)) {
            kept.extend_from_slice(line);
        }
    }
    kept
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::fs::FileTimes;
    use std::time::Duration;

    use sha1::Digest as _;

    use super::*;
    use crate::store::RefsLog;

    /// A store in a temp dir, built by writing blob files and `refs.jsonl` lines directly.
    struct Store {
        dir: tempfile::TempDir,
    }

    impl Store {
        fn new() -> Store {
            let dir = tempfile::tempdir().unwrap();
            Layout::new(dir.path()).prepare().unwrap();
            Store { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Writes `data` as an LFS blob (sha256) or a regular file (git oid), accessed `age` ago.
        fn blob(&self, data: &[u8], lfs: bool, age: u64) -> BlobId {
            let id = if lfs {
                BlobId::Sha256(sha2::Sha256::digest(data).into())
            } else {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {}\0", data.len()));
                h.update(data);
                BlobId::GitOid(h.finalize().into())
            };
            let path = self.path(&id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data).unwrap();
            self.touch(&id, age);
            id
        }

        fn touch(&self, id: &BlobId, age: u64) {
            let t = SystemTime::now() - Duration::from_secs(age);
            File::open(self.path(id))
                .unwrap()
                .set_times(FileTimes::new().set_accessed(t))
                .unwrap();
        }

        fn name(&self, repo: &str, revision: &str, path: &str, id: &BlobId) {
            let e = entry(repo, revision, path, id);
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(refs_path(self.root()))
                .unwrap();
            let line = serde_json::to_string(&e).unwrap() + "\n";
            std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
        }

        fn path(&self, id: &BlobId) -> PathBuf {
            Layout::new(self.root()).blob(id)
        }

        fn names(&self) -> Vec<(String, String, String)> {
            read_refs(self.root())
                .unwrap()
                .into_iter()
                .map(|e| (e.repo, e.revision, e.path))
                .collect()
        }
    }

    fn entry(repo: &str, revision: &str, path: &str, id: &BlobId) -> RefEntry {
        RefEntry {
            repo: repo.into(),
            revision: revision.into(),
            commit: format!("{revision:0>40}"),
            path: path.into(),
            blob: id.to_string(),
            size: 0,
            time: 0,
        }
    }

    fn name(repo: &str, revision: &str, path: &str) -> (String, String, String) {
        (repo.into(), revision.into(), path.into())
    }

    #[test]
    fn stats_count_bytes_by_repo_with_shared_and_unnamed_blobs() {
        let s = Store::new();
        let shared = s.blob(&[1; 1000], true, 50);
        let config = s.blob(b"{}", false, 10);
        s.blob(&[2; 300], true, 20);
        s.name("org/a", "main", "model.bin", &shared);
        s.name("org/a", "main", "config.json", &config);
        s.name("datasets/org/b", "main", "data.bin", &shared);
        // Stale: its blob is not on disk.
        s.name("org/gone", "main", "x", &BlobId::Sha256([7; 32]));
        std::fs::write(s.root().join("tmp/abc.1.1.part"), [0; 5000]).unwrap();

        let st = stats(s.root(), 2000, &PinPolicy::default()).unwrap();
        assert_eq!((st.objects, st.bytes), (3, 1302));
        assert!((st.fill_percent - 65.1).abs() < 1e-9);
        let repos: Vec<_> = st
            .repos
            .iter()
            .map(|r| (r.repo.as_str(), r.files, r.blobs, r.bytes))
            .collect();
        assert_eq!(
            repos,
            [
                ("org/a", 2, 2, 1002),
                ("datasets/org/b", 1, 1, 1000),
                (UNKNOWN_REPO, 0, 1, 300)
            ]
        );
        assert!(st.repos[0].last_access >= unix(SystemTime::now()) - 11);
    }

    #[test]
    fn list_shows_live_names_of_one_repo_or_all() {
        let s = Store::new();
        let a = s.blob(b"weights", true, 5);
        let b = s.blob(b"readme", false, 5);
        let unnamed = s.blob(b"orphan", false, 5);
        s.name("org/a", "main", "w.bin", &a);
        s.name("org/a", "v1", "README.md", &b);
        s.name("org/b", "main", "w.bin", &a);
        s.name("org/a", "main", "stale.bin", &BlobId::GitOid([9; 20]));

        let one = list(s.root(), Some("org/a"), &PinPolicy::default()).unwrap();
        let got: Vec<_> = one
            .files
            .iter()
            .map(|f| (f.revision.as_str(), f.path.as_str(), f.size))
            .collect();
        assert_eq!(got, [("main", "w.bin", 7), ("v1", "README.md", 6)]);

        let all = list(s.root(), None, &PinPolicy::default()).unwrap();
        assert_eq!(all.files.len(), 4);
        let last = all.files.last().unwrap();
        assert_eq!(
            (last.repo.as_str(), last.blob.clone()),
            (UNKNOWN_REPO, unnamed.to_string())
        );
        assert!(list(s.root(), Some("org/none"), &PinPolicy::default())
            .unwrap()
            .files
            .is_empty());
    }

    #[test]
    fn verify_removes_bad_blobs_and_keeps_access_times() {
        let s = Store::new();
        let good = s.blob(&vec![3; 3 * HASH_BUFFER + 17], true, 7200);
        let bad_lfs = s.blob(b"lfs content", true, 10);
        let bad_oid = s.blob(b"regular content", false, 10);
        s.name("org/a", "main", "good", &good);
        s.name("org/a", "main", "bad_lfs", &bad_lfs);
        s.name("org/a", "main", "bad_oid", &bad_oid);
        std::fs::write(s.path(&bad_lfs), b"lfs CONTENT").unwrap();
        std::fs::write(s.path(&bad_oid), b"regular").unwrap();
        let atime_before = std::fs::metadata(s.path(&good))
            .unwrap()
            .accessed()
            .unwrap();

        let mut last = None;
        let r = verify(s.root(), |p| last = Some(*p)).unwrap();
        assert_eq!(r.checked, 3);
        let mut bad: Vec<_> = r.bad.iter().map(|b| b.expected.clone()).collect();
        bad.sort();
        let mut want = vec![bad_lfs.to_string(), bad_oid.to_string()];
        want.sort();
        assert_eq!(bad, want);
        assert!(r.bad.iter().all(|b| b.actual != b.expected));
        assert!(!s.path(&bad_lfs).exists() && !s.path(&bad_oid).exists());
        assert!(s.path(&good).exists());
        assert_eq!(s.names(), [name("org/a", "main", "good")]);
        let last = last.unwrap();
        assert_eq!((last.blobs, last.blobs_total), (3, 3));
        assert_eq!(last.bytes, r.bytes);
        let atime_after = std::fs::metadata(s.path(&good))
            .unwrap()
            .accessed()
            .unwrap();
        assert_eq!(
            atime_after, atime_before,
            "verify must not move the LRU order"
        );

        let again = verify(s.root(), |_| {}).unwrap();
        assert_eq!((again.checked, again.bad.len()), (1, 0));
    }

    #[test]
    fn purge_a_repo_keeps_blobs_other_repos_name() {
        let s = Store::new();
        let shared = s.blob(b"shared", true, 5);
        let own = s.blob(b"own", false, 5);
        let other = s.blob(b"other", false, 5);
        s.name("org/a", "main", "shared", &shared);
        s.name("org/a", "v1", "own", &own);
        s.name("org/b", "main", "shared", &shared);
        s.name("org/b", "main", "other", &other);

        let r = purge(s.root(), "org/a", None).unwrap();
        assert_eq!((r.files, r.removed.len(), r.kept_shared), (2, 1, 1));
        assert_eq!(r.removed[0].blob, own.to_string());
        assert_eq!(r.bytes, 3);
        assert!(!s.path(&own).exists());
        assert!(s.path(&shared).exists() && s.path(&other).exists());
        assert_eq!(
            s.names(),
            [
                name("org/b", "main", "other"),
                name("org/b", "main", "shared")
            ]
        );

        // Now nothing else names it: purging org/b removes the shared blob too.
        let r = purge(s.root(), "org/b", None).unwrap();
        assert_eq!((r.removed.len(), r.kept_shared), (2, 0));
        assert!(!s.path(&shared).exists());
        assert!(s.names().is_empty());
    }

    #[test]
    fn purge_a_revision_keeps_blobs_other_revisions_name() {
        let s = Store::new();
        let both = s.blob(b"in both", true, 5);
        let old = s.blob(b"only in v1", true, 5);
        s.name("org/a", "main", "f", &both);
        s.name("org/a", "v1", "f", &both);
        s.name("org/a", "v1", "g", &old);

        let r = purge(s.root(), "org/a", Some("v1")).unwrap();
        assert_eq!((r.files, r.removed.len(), r.kept_shared), (2, 1, 1));
        assert!(!s.path(&old).exists() && s.path(&both).exists());
        assert_eq!(s.names(), [name("org/a", "main", "f")]);

        // A commit matches the names resolved to it.
        let commit = format!("{:0>40}", "main");
        let r = purge(s.root(), "org/a", Some(&commit)).unwrap();
        assert_eq!((r.files, r.removed.len()), (1, 1));
        assert!(!s.path(&both).exists());
    }

    #[test]
    fn evict_removes_least_recently_accessed_first_and_leaves_fills_alone() {
        let s = Store::new();
        let oldest = s.blob(&[1; 100], true, 300);
        let older = s.blob(&[2; 100], false, 200);
        let newest = s.blob(&[3; 100], true, 100);
        s.name("org/a", "main", "oldest", &oldest);
        s.name("org/a", "main", "newest", &newest);
        let part = s.root().join("tmp/abc.1.1.part");
        std::fs::write(&part, [0; 1000]).unwrap();

        let r = evict(s.root(), 150, &PinPolicy::default()).unwrap();
        let removed: Vec<_> = r.removed.iter().map(|b| b.blob.clone()).collect();
        assert_eq!(removed, [oldest.to_string(), older.to_string()]);
        assert_eq!((r.bytes_before, r.bytes_after), (300, 100));
        assert!(s.path(&newest).exists() && part.exists());
        assert_eq!(s.names(), [name("org/a", "main", "newest")]);

        let r = evict(s.root(), 100, &PinPolicy::default()).unwrap();
        assert!(r.removed.is_empty());
        assert!(s.path(&newest).exists());
    }

    #[test]
    fn compaction_keeps_what_a_running_server_appends_afterwards() {
        let s = Store::new();
        let a = s.blob(b"a", true, 5);
        let b = s.blob(b"b", true, 5);
        s.name("org/a", "main", "a", &a);
        let server = RefsLog::open(s.root()).unwrap();

        purge(s.root(), "org/a", None).unwrap();
        server.record(&entry("org/b", "main", "b", &b), false);
        server.flush();
        assert_eq!(s.names(), [name("org/b", "main", "b")]);
    }

    #[test]
    fn a_directory_without_blobs_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let e = stats(&missing, 1, &PinPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(!missing.exists());
    }
}
