//! The last good answer to the read-only API calls `snapshot_download` makes (repo revision
//! info and tree listings), and to the repo info transformers asks first, kept on disk so a client with an empty cache can still download
//! an already-cached revision while the Hub is down. Normally the API passes straight
//! through and these are never served; they are written as answers pass by.
//!
//! Bounded three ways:
//! - only the query forms clients send are kept ([`key_for`]), keyed as the Hub reads them
//!   (repo ids case-folded, a commit in any case one commit, percent-encoding decoded,
//!   parameters sorted, `false` flags dropped): junk in a query makes no new snapshot;
//! - `cache.api_snapshots_max_size` / `_max_files`: past either, the least recently written
//!   snapshots are removed;
//! - writes happen on a thread of their own, never on a request's worker thread, through a
//!   queue of [`QUEUE`] answers and [`QUEUE_BYTES`] bytes at most: past that an answer is not
//!   kept (`hf_edge_api_snapshots_dropped_total`), the one kept before stays. An answer waiting in the queue is served like
//!   one on disk.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::access::IdentityKey;
use crate::hub::grammar::{canonical_revision, is_api_subresource};
use crate::metrics::Metrics;

/// Answers waiting to be written at most.
const QUEUE: usize = 64;
/// Bytes of answers waiting to be written at most (a tree page is at most 32 MiB).
const QUEUE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub content_type: String,
    /// The `Link` header with paths only: the base URL is added per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub body: String,
    /// The answer was the Hub's 404 `EntryNotFound` (the listed folder does not exist at that
    /// revision), with its `X-Error-Message`: given again as such, not as a listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_not_found: Option<String>,
}

/// The caps on what is kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: usize,
}

/// The query parameters huggingface_hub sends (`list_repo_tree`, `snapshot_download`,
/// `HfFileSystem`, `repo_info`, and the Hub's own next-page links), by API action.
fn allowed(action: &str, name: &str) -> Option<Param> {
    match (action, name) {
        ("tree", "recursive" | "expand") => Some(Param::Flag),
        ("tree", "cursor") => Some(Param::Text),
        ("tree", "limit") => Some(Param::Number),
        ("revision", "securityStatus" | "blobs") => Some(Param::Flag),
        ("revision" | "info", "expand" | "expand[]") => Some(Param::Text),
        ("info", "securityStatus" | "blobs") => Some(Param::Flag),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Param {
    /// `true` / `false` in any case (Python's `True` too); `false` is the Hub's default.
    Flag,
    /// Decimal digits.
    Number,
    /// Opaque (a cursor, a field name): kept as decoded.
    Text,
}

/// What the answer to `GET path?query` (a tree listing or revision info, as the path grammar
/// told) is kept under; `None` when it is not kept: a parameter clients do not send, or a
/// value whose meaning is not known (the Hub could answer it differently).
pub fn key_for(path: &str, query: Option<&str>) -> Option<String> {
    let segs: Vec<String> = path
        .strip_prefix("/api/")?
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        })
        .collect::<Option<_>>()?;
    // /api/{type}s/{repo (1 or 2 segments)}/{tree|revision}/{rev}[/{path...}], or
    // /api/{type}s/{repo} (repo info: no revision, the default branch's)
    let (plural, rest) = segs.split_first()?;
    let listing = [2, 1]
        .into_iter()
        .find(|n| matches!(rest.get(*n).map(String::as_str), Some("tree" | "revision")));
    let (n, action, revision) = match listing {
        Some(n) => (n, rest[n].as_str(), canonical_revision(rest.get(n + 1)?)),
        None if (1..=2).contains(&rest.len()) && !rest.iter().any(|s| is_api_subresource(s)) => {
            (rest.len(), "info", String::new())
        }
        None => return None,
    };
    let repo = rest[..n].join("/").to_ascii_lowercase();
    // A path inside the repo, however its slashes were encoded.
    let inner: Vec<&str> = rest
        .get(n + 2..)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.split('/'))
        .filter(|s| !s.is_empty())
        .collect();
    let mut params = Vec::new();
    let mut flags = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode_str(&s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
        let (name, value) = (decode(name)?, decode(value)?);
        let kind = allowed(action, &name)?;
        if matches!(kind, Param::Flag) {
            // A flag given twice: which one the Hub reads is not known.
            if flags.contains(&name) {
                return None;
            }
            flags.push(name.clone());
        }
        let value = match kind {
            Param::Flag if value.eq_ignore_ascii_case("false") => continue,
            Param::Flag if value.eq_ignore_ascii_case("true") => "true".to_string(),
            Param::Number if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                value
            }
            Param::Text if !value.is_empty() => value,
            _ => return None,
        };
        params.push((name, value));
    }
    // Stable: repeated parameters keep their order.
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let query = serde_json::to_string(&params).ok()?;
    // Lines: no decoded segment holds a newline (the path grammar refuses control characters).
    Some(format!(
        "{plural}\n{repo}\n{action}\n{revision}\n{}\n{query}",
        inner.join("/")
    ))
}

/// One kept snapshot, as the index knows it.
struct Kept {
    bytes: u64,
    /// Write order (least recent first out).
    seq: u64,
    /// Of the file's bytes, when written by this process: an unchanged answer is not
    /// rewritten.
    digest: Option<[u8; 32]>,
}

#[derive(Default)]
struct Index {
    files: HashMap<String, Kept>,
    order: BTreeMap<u64, String>,
    bytes: u64,
    next_seq: u64,
    /// Answers queued and not yet written, served meanwhile.
    pending: HashMap<String, Arc<Snapshot>>,
}

impl Index {
    fn insert(&mut self, name: String, bytes: u64, digest: Option<[u8; 32]>) {
        self.remove(&name);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, name.clone());
        self.bytes += bytes;
        self.files.insert(name, Kept { bytes, seq, digest });
    }

    fn remove(&mut self, name: &str) -> bool {
        let Some(k) = self.files.remove(name) else {
            return false;
        };
        self.order.remove(&k.seq);
        self.bytes -= k.bytes;
        true
    }

    /// Marks `name` the most recently written.
    fn touch(&mut self, name: &str) {
        if let Some(k) = self.files.get_mut(name) {
            self.order.remove(&k.seq);
            k.seq = self.next_seq;
            self.order.insert(k.seq, name.to_string());
            self.next_seq += 1;
        }
    }

    /// The least recently written snapshot, while over `limits`.
    fn over(&self, limits: &Limits) -> Option<String> {
        let over = self.bytes > limits.max_bytes || self.files.len() > limits.max_files;
        over.then(|| self.order.values().next().cloned()).flatten()
    }
}

struct Job {
    name: String,
    snap: Arc<Snapshot>,
    weight: usize,
}

pub struct ApiSnapshots {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    queue: SyncSender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl ApiSnapshots {
    /// Opens `cache_dir/api`: indexes what is there (oldest first), removes what is over
    /// `limits` and leftovers of interrupted writes, and starts the writer thread.
    pub fn open(
        cache_dir: &Path,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> io::Result<ApiSnapshots> {
        let dir = cache_dir.join("api");
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if name.ends_with(".json") && meta.is_file() {
                let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((written, name, meta.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, bytes) in found {
            index.insert(name, bytes, None);
        }
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        let snapshots = ApiSnapshots {
            dir,
            index: Arc::new(Mutex::new(index)),
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            metrics,
        };
        let writer = Writer {
            dir: snapshots.dir.clone(),
            index: snapshots.index.clone(),
            queued_bytes: snapshots.queued_bytes.clone(),
            metrics: snapshots.metrics.clone(),
            limits,
        };
        writer.evict();
        std::thread::Builder::new()
            .name("api snapshot writer".into())
            .spawn(move || writer.run(jobs))?;
        Ok(snapshots)
    }

    fn name(who: IdentityKey, key: &str) -> String {
        let mut h = sha2::Sha256::new();
        // v3: keyed by `key_for` (v2 files were keyed by the raw path and query, are never
        // read, and go first when over the caps).
        h.update(b"v3\n");
        h.update(who.hex());
        h.update(b"\n");
        h.update(key.as_bytes());
        format!("{}.json", hex::encode(h.finalize()))
    }

    /// Keeps `snap` as the answer to `key` for `who`, unless the writer is too far behind.
    pub fn save(&self, who: IdentityKey, key: &str, snap: Snapshot) {
        let name = Self::name(who, key);
        let weight = snap.body.len();
        let snap = Arc::new(snap);
        // Pending before it is queued: the writer clears it once written, never before.
        let mut index = self.index.lock();
        let earlier = index.pending.insert(name.clone(), snap.clone());
        let queued = self.queued_bytes.fetch_add(weight, Ordering::AcqRel);
        let job = Job {
            name: name.clone(),
            snap,
            weight,
        };
        if queued + weight > QUEUE_BYTES || self.queue.try_send(job).is_err() {
            self.queued_bytes.fetch_sub(weight, Ordering::AcqRel);
            match earlier {
                Some(e) => index.pending.insert(name, e),
                None => index.pending.remove(&name),
            };
            self.metrics.api_snapshot_dropped();
        }
    }

    /// Whether an answer to `key` is kept for `who`.
    pub fn contains(&self, who: IdentityKey, key: &str) -> bool {
        let name = Self::name(who, key);
        let index = self.index.lock();
        index.pending.contains_key(&name) || index.files.contains_key(&name)
    }

    /// The answer kept for `who`, read off the worker thread.
    pub async fn load(&self, who: IdentityKey, key: &str) -> Option<Snapshot> {
        let name = Self::name(who, key);
        if let Some(snap) = self.index.lock().pending.get(&name) {
            return Some(Snapshot::clone(snap));
        }
        let path = self.dir.join(name);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until every answer queued so far is written (tests look at the files).
    #[cfg(test)]
    fn flush(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.index.lock().pending.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

struct Writer {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

impl Writer {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            self.write(&job);
            self.evict();
            self.queued_bytes.fetch_sub(job.weight, Ordering::AcqRel);
            let mut index = self.index.lock();
            // A newer answer queued meanwhile stays served until it is written in turn.
            if index
                .pending
                .get(&job.name)
                .is_some_and(|s| Arc::ptr_eq(s, &job.snap))
            {
                index.pending.remove(&job.name);
            }
        }
    }

    /// Writes a job's answer, unless it is the one kept already.
    fn write(&self, job: &Job) {
        let Ok(bytes) = serde_json::to_vec(&*job.snap) else {
            return;
        };
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        {
            let mut index = self.index.lock();
            let same = index
                .files
                .get(&job.name)
                .is_some_and(|k| k.digest == Some(digest));
            if same {
                index.touch(&job.name);
                return;
            }
        }
        let path = self.dir.join(&job.name);
        match crate::durable::replace_atomic(&path, &bytes) {
            Ok(()) => {
                let mut index = self.index.lock();
                index.insert(job.name.clone(), bytes.len() as u64, Some(digest));
                drop(index);
                self.metrics.api_snapshot_written();
            }
            Err(e) => log::warn!("cannot keep an API snapshot in {}: {e}", path.display()),
        }
    }

    /// Removes the least recently written snapshots while over the caps.
    fn evict(&self) {
        loop {
            let mut index = self.index.lock();
            let Some(name) = index.over(&self.limits) else {
                self.metrics
                    .api_snapshots(index.files.len() as u64, index.bytes);
                return;
            };
            index.remove(&name);
            drop(index);
            self.metrics.api_snapshot_evicted();
            if let Err(e) = std::fs::remove_file(self.dir.join(&name)) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot remove API snapshot {name}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn equivalent_requests_share_a_key_and_junk_is_not_kept() {
        let key = |p: &str, q: Option<&str>| key_for(p, q);
        let tree = key(
            "/api/models/org/m/tree/main",
            Some("recursive=true&expand=false"),
        );
        assert!(tree.is_some());
        for (path, query) in [
            ("/api/models/org/m/tree/main", Some("recursive=true")),
            (
                "/api/models/org/m/tree/main",
                Some("expand=False&recursive=True"),
            ),
            ("/api/models/ORG/M/tree/main", Some("recursive=true")),
            ("/api/models/org/m/tree/%6Dain", Some("recursive=%74rue")),
        ] {
            assert_eq!(key(path, query), tree, "{path}?{query:?}");
        }
        // Not the same answer.
        for (path, query) in [
            ("/api/models/org/m/tree/Main", Some("recursive=true")),
            ("/api/models/org/m/tree/main", None),
            ("/api/models/org/m/tree/main/sub", Some("recursive=true")),
            ("/api/datasets/org/m/tree/main", Some("recursive=true")),
            (
                "/api/models/org/m/tree/main",
                Some("recursive=true&cursor=abc"),
            ),
        ] {
            assert_ne!(key(path, query), tree, "{path}?{query:?}");
        }
        // Repo info: its own answer, not the revision info of main.
        let info = key("/api/models/org/m", Some("expand=sha"));
        assert!(info.is_some());
        assert_eq!(key("/api/models/ORG/M", Some("expand=sha")), info);
        assert_ne!(
            key("/api/models/org/m/revision/main", Some("expand=sha")),
            info
        );
        assert_ne!(key("/api/models/org/m", None), info);
        assert_eq!(key("/api/models/org/refs", None), None);
        assert_eq!(key("/api/models/org/m", Some("cursor=x")), None);
        // A commit is one commit in any case; a path's slashes however encoded.
        assert_eq!(
            key(&format!("/api/models/org/m/tree/{COMMIT}"), None),
            key(
                &format!("/api/models/org/m/tree/{}", COMMIT.to_uppercase()),
                None
            )
        );
        assert_eq!(
            key("/api/models/org/m/tree/main/a%2Fb", None),
            key("/api/models/org/m/tree/main/a/b", None)
        );
        // A revision holding a slash is not a path.
        assert_ne!(
            key("/api/models/org/m/tree/a%2Fb/c", None),
            key("/api/models/org/m/tree/a/b%2Fc", None)
        );
        // Parameters clients do not send, values of unknown meaning: not kept.
        for query in [
            "recursive=true&z=1",
            "recursive=1",
            "recursive=",
            "recursive=true&recursive=false",
            "limit=ten",
            "blobs=true",
        ] {
            assert_eq!(
                key("/api/models/org/m/tree/main", Some(query)),
                None,
                "{query}"
            );
        }
        let info = key("/api/models/gpt2/revision/main", Some("blobs=True"));
        assert!(info.is_some());
        assert_eq!(
            key(
                "/api/models/GPT2/revision/main",
                Some("blobs=true&securityStatus=false")
            ),
            info
        );
        assert!(key(
            "/api/models/gpt2/revision/main",
            Some("expand=downloads&expand=likes")
        )
        .is_some());
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::register(prometheus::Registry::new(), 1).unwrap())
    }

    fn snap(body: &str) -> Snapshot {
        Snapshot {
            content_type: "application/json".into(),
            link: None,
            body: body.into(),
            entry_not_found: None,
        }
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("api")).unwrap().count()
    }

    #[tokio::test]
    async fn kept_answers_stay_under_their_caps_oldest_out_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_files: 3,
        };
        let s = ApiSnapshots::open(dir.path(), limits, metrics()).unwrap();
        let who = IdentityKey::anonymous();
        for i in 0..10 {
            s.save(who, &format!("k{i}"), snap(&format!("[{i}]")));
            s.flush();
        }
        assert_eq!(files(dir.path()), 3);
        assert!(s.load(who, "k0").await.is_none());
        assert_eq!(s.load(who, "k9").await, Some(snap("[9]")));
        // Reopened: the same three, and a smaller byte cap keeps the newest that fit.
        drop(s);
        let limits = Limits {
            max_bytes: 60,
            max_files: 10,
        };
        let s = ApiSnapshots::open(dir.path(), limits, metrics()).unwrap();
        assert_eq!(files(dir.path()), 1);
        assert!(s.contains(who, "k9"));
    }

    #[tokio::test]
    async fn a_queued_answer_is_served_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_files: 10,
        };
        let s = ApiSnapshots::open(dir.path(), limits, metrics()).unwrap();
        let who = IdentityKey::anonymous();
        s.save(who, "k", snap("[1]"));
        assert!(s.contains(who, "k"));
        assert_eq!(s.load(who, "k").await, Some(snap("[1]")));
        assert!(!s.contains(IdentityKey::of(None), "other"));
    }
}
