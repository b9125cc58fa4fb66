//! The blob store: hf-edge's on-disk pingora-cache [`Storage`].
//!
//! Content-addressed: the cache key is a [`BlobId`], so a file shared by many repos or
//! revisions is stored once, and nothing repo- or revision-specific is stored with it (those
//! headers come from the resolver per request). The stored "meta" is therefore derived from
//! the blob itself and nothing but the body is written to disk.
//!
//! Fills are the store's own ([`BlobStore::read_or_fill`]): a task per blob reads the origin
//! into a temp file at the origin's pace, and every request for the blob, the one that
//! started the fill included, reads that file as bytes arrive. Pingora's cache phase is not
//! used for fills: there a miss is one loop per request (upstream body, cache write,
//! downstream write), so a client that stops reading stops the fill for every reader.
//!
//! Fills are bounded: at most `cache.max_fills` at once, their bytes reserved under
//! `cache.max_size` (eviction makes room before the first byte is fetched), their writes on a
//! fixed set of writer threads ([`pool`]).

pub mod admin;
mod evict;
mod fill;
mod hit;
mod index;
mod layout;
mod memory;
mod object_store;
mod persist;
mod pin;
mod pool;
mod refs;
mod resume;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::header;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, Storage};
use tokio::sync::watch;

pub use self::object_store::{ObjectStoreSettings, ObjectTier, TierStats};
pub use hit::{seek_span, BlobReader};
pub use index::Entry as StoredBlob;
pub use layout::{FoundBlob, Layout};
pub use memory::MemoryLimits;
pub use pin::{PinPattern, PinPolicy, PinnedSet};
pub use refs::{read_refs, refs_path, rewrite_refs, RefEntry, RefsLog};
pub use resume::{Refetch, RefetchBody, RefetchError};
pub use write::ContentHasher;

use persist::{load_or_scan, unix_nanos, BootIndex};
use pool::WriterPool;
use write::WriteError;

use crate::hub::BlobId;

/// An open complete blob: its file, size, when it was last checked on disk, and its bytes
/// when the memory tier keeps them.
type KeptHandle = (
    Arc<std::fs::File>,
    u64,
    std::time::Instant,
    Option<Arc<memory::Kept>>,
);

/// How long a kept handle is trusted before the blob is looked at on disk again (and its
/// access time, the LRU order rebuilt at boot, is set): `hf-edge cache` commands may remove
/// blobs from another process.
const HANDLE_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);
/// Open blob handles kept at most (file descriptors are a bounded resource).
const MAX_HANDLES: usize = 4096;

/// Blobs never go stale: their address is their content.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far a fill has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The origin has not yet answered with the body: readers send no header before it did.
    Opening,
    Written(u64),
    Committed,
    Failed,
}

/// One fill, shared by its task and every reader of the partial blob.
pub struct Fill {
    id: BlobId,
    size: u64,
    temp: std::path::PathBuf,
    /// The temp file, for readers (positional reads; the writer has its own handle).
    file: Arc<std::fs::File>,
    progress: watch::Sender<Progress>,
    /// Requests reading this fill: the orphan policy acts when there are none.
    readers: watch::Sender<usize>,
    /// Why the fill failed, once it did.
    failure: OnceLock<FillFailure>,
}

/// Why a fill failed.
#[derive(Debug, Clone)]
pub enum FillFailure {
    /// This store could not keep the blob (disk, I/O) or stopped filling it: a reader that
    /// has not answered yet may still fetch the file uncached.
    Local(String),
    /// The origin failed, or sent a body that is not the file: the origin's error, which a
    /// reader may downcast to its own type.
    Upstream(Arc<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for FillFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillFailure::Local(why) => f.write_str(why),
            FillFailure::Upstream(e) => e.fmt(f),
        }
    }
}

impl Fill {
    /// The origin answered with the body: readers answer and stream it as it is written.
    fn open(&self) {
        self.progress.send_if_modified(|p| {
            let opening = *p == Progress::Opening;
            if opening {
                *p = Progress::Written(0);
            }
            opening
        });
    }
}

/// A reader's place in a fill's reader count, given back when the reader is dropped.
struct ReaderSlot(Arc<Fill>);

impl ReaderSlot {
    /// Counts a new reader; under the fills lock, so that the orphan policy never cancels a
    /// fill a request has just joined.
    fn join(fill: &Arc<Fill>) -> ReaderSlot {
        fill.readers.send_modify(|n| *n += 1);
        ReaderSlot(fill.clone())
    }

    fn fill(&self) -> &Fill {
        &self.0
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.0.readers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What [`BlobStore::read_or_fill`] found or started.
pub enum Fetch {
    /// A complete blob.
    Complete(BlobReader),
    /// A fill this request started.
    Started(BlobReader),
    /// A fill another request started.
    Joined(BlobReader),
    /// No fill could start: the request is served uncached.
    Refused(Refused),
}

/// Why a fill could not start.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("cache.max_fills fills are running")]
    MaxFills,
    #[error("fills in flight hold all of cache.max_size")]
    NoRoom,
    #[error("cannot create the temp file: {0}")]
    Disk(std::io::Error),
}

/// A fill in flight as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FillView {
    /// `sha256/<hex>` or `oid/<hex>`.
    pub blob: String,
    pub size: u64,
    /// Bytes written so far.
    pub written: u64,
    /// Requests reading it.
    pub readers: usize,
}

/// How fills are bounded (from `cache.*`).
pub struct FillPolicy {
    /// Fills running at once at most.
    pub max_fills: usize,
    /// `cache.max_size`: complete blobs and the bytes reserved by fills in flight together.
    pub max_size: u64,
    /// Writer threads.
    pub writers: usize,
    /// How long a fill without readers keeps going before the orphan policy decides.
    pub orphan_grace: std::time::Duration,
    /// Where complete blobs are admitted and reservations make room; `None`: no eviction
    /// (the `hf-edge cache` commands, tests).
    pub eviction: Option<&'static (dyn EvictionManager + Sync)>,
}

impl Default for FillPolicy {
    fn default() -> FillPolicy {
        FillPolicy {
            max_fills: 64,
            max_size: u64::MAX,
            writers: default_writers(),
            orphan_grace: fill::ORPHAN_GRACE,
            eviction: None,
        }
    }
}

/// Writer threads: hashing is CPU work and writes go to the page cache, so one per CPU keeps
/// every fill at disk speed; at least two, so that an fsync never holds up every other fill.
fn default_writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The fills in flight, and fills between their admission and their registration (their
/// temp file is being created), which count against `max_fills` too.
#[derive(Default)]
struct Fills {
    running: HashMap<BlobId, Arc<Fill>>,
    starting: usize,
}

/// Counters an operator wants (exported as metrics).
#[derive(Default, Debug)]
pub struct StoreStats {
    pub bytes: AtomicU64,
    pub objects: AtomicU64,
    pub write_errors: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Cut upstream bodies asked for again from where they stopped.
    pub resumes: AtomicU64,
    /// Body bytes those resumed requests brought.
    pub resumed_bytes: AtomicU64,
    /// Fills given up: cut beyond resuming, write errors, wrong content.
    pub abandoned_fills: AtomicU64,
    /// Fills cancelled by the orphan policy (no reader left, less than half written).
    pub orphans_cancelled: AtomicU64,
    /// Requests served uncached: `max_fills` fills were running; their reservations held all
    /// of `max_size`. (A temp file that cannot be created is a write error.)
    pub over_max_fills: AtomicU64,
    pub without_room: AtomicU64,
    /// Fills in flight, and the bytes they reserve under `cache.max_size` (gauges).
    pub fills: AtomicU64,
    pub reserved_bytes: AtomicU64,
}

impl StoreStats {
    pub fn counts(&self) -> crate::metrics::StoreCounts {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        crate::metrics::StoreCounts {
            bytes: get(&self.bytes),
            objects: get(&self.objects),
            evictions: get(&self.evictions),
            evicted_bytes: get(&self.evicted_bytes),
            integrity_failures: get(&self.integrity_failures),
            write_errors: get(&self.write_errors),
            resumes: get(&self.resumes),
            resumed_bytes: get(&self.resumed_bytes),
            abandoned_fills: get(&self.abandoned_fills),
            orphans_cancelled: get(&self.orphans_cancelled),
            over_max_fills: get(&self.over_max_fills),
            without_room: get(&self.without_room),
            fills: get(&self.fills),
            reserved_bytes: get(&self.reserved_bytes),
            pinned_objects: 0,
            pinned_bytes: 0,
            memory_hits: 0,
            memory_bytes: 0,
            tier: None,
        }
    }
}

pub struct BlobStore {
    layout: Layout,
    /// Complete blobs by cache-key hash (what eviction hands back), with their size and last
    /// access.
    index: Mutex<HashMap<HashBinary, index::Entry>>,
    /// Where changes to `index` are journaled, once this process owns the persisted index.
    persist: Mutex<Option<index::Writer>>,
    /// How the index was got at boot, for [`BlobStore::start_index`].
    boot: Mutex<Option<BootIndex>>,
    fills: Mutex<Fills>,
    policy: FillPolicy,
    /// Bytes reserved by fills in flight (their whole size, from start to commit).
    reserved: Mutex<u64>,
    /// Started with the first fill (the `hf-edge cache` commands never need it).
    pool: OnceLock<WriterPool>,
    /// Started with the first eviction.
    deleter: OnceLock<evict::Deleter>,
    /// Open handles of complete blobs (immutable, so a kept handle is always right), with
    /// when the blob was last checked on disk and its access time set.
    handles: Mutex<HashMap<BlobId, KeptHandle>>,
    /// `cache.memory_size`: the bytes of small complete blobs, kept with their handle.
    memory: Arc<memory::MemoryTier>,
    refs: RefsLog,
    /// `cache.pin`: blobs kept out of the eviction manager, under `cache.max_pinned`.
    pins: PinPolicy,
    pinned: PinnedSet,
    /// `cache.object_store`: read before the origin, written after a fill from it.
    tier: Option<ObjectTier>,
    pub stats: StoreStats,
}

/// The cache key of a blob; `BlobId`'s `Display` form is the primary key.
pub fn cache_key(id: &BlobId) -> CacheKey {
    CacheKey::new(id.to_string(), "")
}

/// The compact form of a blob's cache key, from its hash (no variance, no user tag: as
/// `cache_key(id).to_compact()`).
fn compact_key(primary: HashBinary) -> CompactCacheKey {
    CompactCacheKey {
        primary,
        variance: None,
        user_tag: "".into(),
    }
}

impl BlobStore {
    /// Opens the store at `dir`: creates it, removes stale temp files and indexes the blobs,
    /// from the persisted index when there is a sound one, else by listing them.
    pub fn open(dir: &std::path::Path) -> std::io::Result<BlobStore> {
        let layout = Layout::new(dir);
        let removed = layout.prepare()?;
        if removed > 0 {
            log::info!(
                "removed {removed} unfinished blob(s) from {}",
                dir.display()
            );
        }
        let (index, boot) = load_or_scan(&layout)?;
        let stats = StoreStats::default();
        stats.objects.store(index.len() as u64, Ordering::Relaxed);
        let bytes = index.values().map(|b| b.size).sum();
        stats.bytes.store(bytes, Ordering::Relaxed);
        let store = BlobStore {
            refs: RefsLog::open(layout.root())?,
            layout,
            index: Mutex::new(index),
            persist: Mutex::new(None),
            boot: Mutex::new(Some(boot)),
            fills: Mutex::new(Fills::default()),
            policy: FillPolicy::default(),
            reserved: Mutex::new(0),
            pool: OnceLock::new(),
            deleter: OnceLock::new(),
            handles: Mutex::new(HashMap::new()),
            memory: Arc::new(memory::MemoryTier::new(MemoryLimits::default())),
            pins: PinPolicy::default(),
            pinned: PinnedSet::default(),
            tier: None,
            stats,
        };
        Ok(store)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Records that a repo path names a blob (for operators' `cache ls/stats/purge`), and pins
    /// the blob if `cache.pin` names it and it is stored.
    pub fn record_ref(&self, entry: &RefEntry, filled: bool) {
        self.refs.record(entry, filled);
        if !self.pins.matches(entry) {
            return;
        }
        let Some(id) = entry.blob_id().filter(|id| self.contains(id)) else {
            return;
        };
        let (pinned, now) = self.pinned.try_pin(id, entry.size, self.pins.max_pinned);
        if now {
            if let Some(eviction) = self.policy.eviction {
                eviction.remove((&CacheEntryKey::key_only(cache_key(&id).to_compact())).into());
            }
        } else if !pinned {
            log::warn!(
                "{} {}: not pinned: cache.max_pinned is reached",
                entry.repo,
                entry.path
            );
        }
    }

    /// Sets `cache.pin` and pins the stored blobs `refs.jsonl` names under it; before the
    /// store is shared and its eviction seeded.
    pub fn set_pins(&mut self, pins: PinPolicy) -> std::io::Result<()> {
        if pins.patterns.is_empty() {
            // Nothing to pin: `refs.jsonl` (a line per name served) need not be read.
            return Ok(());
        }
        let entries = read_refs(self.layout.root())?;
        let present = entries
            .iter()
            .filter(|e| e.blob_id().is_some_and(|id| self.contains(&id)));
        self.pinned = pins.select(present);
        self.pins = pins;
        Ok(())
    }

    /// The counters, and the pinned blobs and bytes.
    pub fn counts(&self) -> crate::metrics::StoreCounts {
        let (pinned_objects, pinned_bytes) = self.pinned.totals();
        crate::metrics::StoreCounts {
            pinned_objects,
            pinned_bytes,
            memory_hits: self.memory.hits.load(Ordering::Relaxed),
            memory_bytes: self.memory.used(),
            tier: self.tier.as_ref().map(|t| t.stats.counts()),
            ..self.stats.counts()
        }
    }

    /// Requests (and warm jobs) reading the fill of `id`; 0 when none runs.
    pub fn fill_readers(&self, id: &BlobId) -> usize {
        self.fills
            .lock()
            .running
            .get(id)
            .map_or(0, |f| *f.readers.borrow())
    }

    /// Whether the blob is pinned (`cache.pin`): never evicted.
    pub fn is_pinned(&self, id: &BlobId) -> bool {
        self.pinned.contains(id)
    }

    /// Whether a complete copy of the blob is on disk (per the index).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.index.lock().contains_key(&cache_key(id).primary_bin())
    }

    /// Admits the blobs found at boot into the eviction manager, oldest access first.
    /// Returns what no longer fits, for [`BlobStore::evict`].
    pub fn seed_eviction(&self, eviction: &(dyn EvictionManager + Sync)) -> Vec<CacheEntryKey> {
        let mut found: Vec<StoredBlob> = self.index.lock().values().copied().collect();
        found.sort_unstable_by_key(|b| b.access);
        let mut evict = Vec::new();
        for b in found.iter().filter(|b| !self.is_pinned(&b.id)) {
            let key = CacheEntryKey::key_only(compact_key(b.key));
            evict.extend(eviction.admit(key, b.size as usize, SystemTime::now() + FOREVER));
        }
        evict
    }

    /// Forgets the blobs the eviction manager gave up on, in one lock of the index, and has
    /// their files deleted in the background ([`evict`]).
    pub fn evict(&self, evicted: Vec<CacheEntryKey>) {
        if evicted.is_empty() {
            return;
        }
        let removed: Vec<StoredBlob> = {
            let mut index = self.index.lock();
            evicted
                .iter()
                .filter_map(|k| index.remove(&k.key().primary))
                .collect()
        };
        if removed.is_empty() {
            return;
        }
        {
            let mut handles = self.handles.lock();
            for b in &removed {
                handles.remove(&b.id);
            }
        }
        for b in &removed {
            self.pinned.unpin(&b.id);
        }
        let (n, bytes) = (removed.len() as u64, removed.iter().map(|b| b.size).sum());
        self.stats.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.stats.objects.fetch_sub(n, Ordering::Relaxed);
        self.stats.evictions.fetch_add(n, Ordering::Relaxed);
        self.stats.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.journal_all(index::Op::Remove, &removed);
        let paths = removed.iter().map(|b| self.layout.blob(&b.id)).collect();
        match self.deleter() {
            Ok(deleter) => deleter.delete(paths),
            Err(e) => log::error!("cannot start the eviction thread: {e}; evicted blobs stay on disk until the next boot's reconciling scan"),
        }
    }

    fn deleter(&self) -> std::io::Result<&evict::Deleter> {
        if let Some(d) = self.deleter.get() {
            return Ok(d);
        }
        // Two first evictions may race here; the loser's thread ends with its queue.
        let _ = self.deleter.set(evict::Deleter::start()?);
        Ok(self.deleter.get().expect("set above"))
    }

    fn insert_index(&self, entry: StoredBlob) -> bool {
        let prev = self.index.lock().insert(entry.key, entry);
        if prev.is_none() {
            self.stats.bytes.fetch_add(entry.size, Ordering::Relaxed);
            self.stats.objects.fetch_add(1, Ordering::Relaxed);
        }
        prev.is_none()
    }

    /// Indexes a blob that became complete on disk, and journals it.
    fn add_blob(&self, id: BlobId, size: u64) {
        let entry = StoredBlob {
            id,
            key: cache_key(&id).primary_bin(),
            size,
            access: unix_nanos(SystemTime::now()),
        };
        self.insert_index(entry);
        self.journal(index::Op::Add, &entry);
    }

    fn remove_index(&self, key: &CompactCacheKey) -> Option<(BlobId, u64)> {
        let removed = self.index.lock().remove(&key.primary);
        let e = removed?;
        self.pinned.unpin(&e.id);
        self.stats.bytes.fetch_sub(e.size, Ordering::Relaxed);
        self.stats.objects.fetch_sub(1, Ordering::Relaxed);
        self.journal(index::Op::Remove, &e);
        Some((e.id, e.size))
    }

    /// Records a change in the persisted index's journal (once this process owns it). A
    /// journal that cannot be written is given up: the index is then stale, and the next
    /// boot reconciles it with a scan (`index.dirty` stays).
    fn journal(&self, op: index::Op, e: &index::Entry) {
        self.journal_all(op, std::slice::from_ref(e));
    }

    fn journal_all(&self, op: index::Op, entries: &[index::Entry]) {
        let mut persist = self.persist.lock();
        if let Some(w) = persist.as_mut() {
            if let Err(err) = w.append_all(op, entries) {
                log::error!(
                    "store index: cannot append to the journal in {}: {err}; not journaling until the next restart",
                    self.layout.root().display()
                );
                *persist = None;
            }
        }
    }

    /// Sets the object-store tier; before the store is shared.
    pub fn set_tier(&mut self, tier: ObjectTier) {
        self.tier = Some(tier);
    }

    pub fn tier(&self) -> Option<&ObjectTier> {
        self.tier.as_ref()
    }

    /// Sets how fills are bounded; before the store is shared.
    pub fn set_fill_policy(&mut self, policy: FillPolicy) {
        self.policy = policy;
    }

    /// Sets `cache.memory_size` and `cache.memory_max_object`, before the store is shared.
    pub fn set_memory_limits(&mut self, limits: MemoryLimits) {
        self.memory = Arc::new(memory::MemoryTier::new(limits));
    }

    fn writers(&self) -> std::io::Result<&WriterPool> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        // Two first fills may race here; the loser's pool is dropped and its threads end.
        let _ = self.pool.set(WriterPool::start(self.policy.writers)?);
        Ok(self.pool.get().expect("set above"))
    }

    /// A reader of blob `id`: complete, filling, or filled from now on by a task of the store
    /// that reads `source` (called only then). Coalescing happens here: one fill per blob,
    /// whatever the number of requests.
    pub async fn read_or_fill(
        &'static self,
        id: BlobId,
        size: u64,
        source: impl FnOnce() -> Arc<dyn Refetch>,
    ) -> Fetch {
        if !self.contains(&id) {
            self.adopt(id, size).await;
        }
        {
            let mut fills = self.fills.lock();
            if let Some(fill) = fills.running.get(&id) {
                return Fetch::Joined(BlobReader::filling(ReaderSlot::join(fill)));
            }
            // Checked under the fills lock: a commit indexes the blob before it leaves the
            // map, so a blob is always found in one or the other.
            if !self.contains(&id) {
                if fills.running.len() + fills.starting >= self.policy.max_fills {
                    return self.refuse(Refused::MaxFills);
                }
                fills.starting += 1;
            }
        }
        if self.contains(&id) {
            if let Some(reader) = self.open_complete(id).await {
                return Fetch::Complete(reader);
            }
            // Removed under us: fill it after all.
            self.fills.lock().starting += 1;
        }
        if !self.reserve(size) {
            self.fills.lock().starting -= 1;
            return self.refuse(Refused::NoRoom);
        }
        let temp = self.layout.temp(&id);
        let path = temp.clone();
        // On a writer thread, like the rest of the fill's disk work: a burst of cold requests
        // must not grow tokio's blocking pool by a thread each.
        let created = match self.writers() {
            Ok(pool) => pool
                .run(move || {
                    let file = create_reserved(&path, size)?;
                    let read = file.try_clone()?;
                    Ok((file, read))
                })
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("a writer thread failed"))),
            Err(e) => Err(e),
        };
        let mut fills = self.fills.lock();
        fills.starting -= 1;
        let (file, read) = match created {
            Ok(files) => files,
            Err(e) => {
                drop(fills);
                self.release(size);
                self.note_write_error(&e);
                return self.refuse(Refused::Disk(e));
            }
        };
        if let Some(fill) = fills.running.get(&id) {
            // Another request started the same fill meanwhile.
            let slot = ReaderSlot::join(fill);
            drop(fills);
            drop(file);
            let _ = std::fs::remove_file(&temp);
            self.release(size);
            return Fetch::Joined(BlobReader::filling(slot));
        }
        let fill = Arc::new(Fill {
            id,
            size,
            temp,
            file: Arc::new(read),
            progress: watch::channel(Progress::Opening).0,
            readers: watch::channel(0).0,
            failure: OnceLock::new(),
        });
        let slot = ReaderSlot::join(&fill);
        fills.running.insert(id, fill.clone());
        self.stats
            .fills
            .store(fills.running.len() as u64, Ordering::Relaxed);
        drop(fills);
        tokio::spawn(fill::run(self, fill, file, source()));
        Fetch::Started(BlobReader::filling(slot))
    }

    /// The fills in flight, for the status page: largest first.
    pub fn fills_in_flight(&self) -> Vec<FillView> {
        let mut fills: Vec<FillView> = self
            .fills
            .lock()
            .running
            .values()
            .map(|f| FillView {
                blob: f.id.to_string(),
                size: f.size,
                written: match *f.progress.borrow() {
                    Progress::Written(n) => n,
                    Progress::Committed => f.size,
                    Progress::Opening | Progress::Failed => 0,
                },
                readers: *f.readers.borrow(),
            })
            .collect();
        fills.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.blob.cmp(&b.blob)));
        fills
    }

    fn refuse(&self, why: Refused) -> Fetch {
        let counter = match why {
            Refused::MaxFills => &self.stats.over_max_fills,
            Refused::NoRoom => &self.stats.without_room,
            Refused::Disk(_) => return Fetch::Refused(why),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Fetch::Refused(why)
    }

    /// The fill task verified and renamed the blob into place.
    fn commit(&'static self, fill: &Arc<Fill>) {
        self.add_blob(fill.id, fill.size);
        self.remove_fill(fill);
        fill.progress.send_replace(Progress::Committed);
        self.admit_committed(fill);
    }

    /// The fill is given up: readers fail, the temp file and the reservation go.
    fn abandon(&'static self, fill: &Arc<Fill>, failure: FillFailure) {
        log::warn!("blob {}: fill abandoned: {failure}", fill.id);
        self.stats.abandoned_fills.fetch_add(1, Ordering::Relaxed);
        self.remove_fill(fill);
        self.discard(fill, failure);
    }

    /// Takes a fill without readers out of the map, unless a reader came back: from then on a
    /// request for the blob starts a new fill.
    fn detach_orphan(&self, fill: &Arc<Fill>) -> bool {
        let mut fills = self.fills.lock();
        if *fill.readers.borrow() > 0 {
            return false;
        }
        self.unregister(&mut fills, fill);
        true
    }

    /// The orphan policy cancelled a (detached) fill.
    fn cancel_orphan(&'static self, fill: &Arc<Fill>) {
        self.stats.orphans_cancelled.fetch_add(1, Ordering::Relaxed);
        self.discard(fill, FillFailure::Local("cancelled: no reader left".into()));
    }

    fn discard(&'static self, fill: &Arc<Fill>, failure: FillFailure) {
        let _ = fill.failure.set(failure);
        fill.progress.send_replace(Progress::Failed);
        if let Err(e) = std::fs::remove_file(&fill.temp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", fill.temp.display());
            }
        }
        self.release(fill.size);
    }

    fn remove_fill(&self, fill: &Arc<Fill>) {
        self.unregister(&mut self.fills.lock(), fill);
    }

    /// Takes `fill` out of the running fills (if it is still the one registered for its blob).
    fn unregister(&self, fills: &mut Fills, fill: &Arc<Fill>) {
        if fills
            .running
            .get(&fill.id)
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            fills.running.remove(&fill.id);
            self.stats
                .fills
                .store(fills.running.len() as u64, Ordering::Relaxed);
        }
    }

    /// How a write error is counted, and what readers are told.
    fn write_failure(&self, fill: &Fill, e: WriteError) -> FillFailure {
        match e {
            WriteError::Io(e) => {
                self.note_write_error(&e);
                FillFailure::Local(format!("write to {} failed: {e}", fill.temp.display()))
            }
            wrong => {
                if matches!(wrong, WriteError::Mismatch(_)) {
                    self.note_integrity_failure();
                }
                FillFailure::Upstream(Arc::new(wrong))
            }
        }
    }

    /// Reserves `size` bytes under `max_size` for a fill, evicting complete blobs to make
    /// room; `false` when fills in flight already hold too much of it.
    fn reserve(&'static self, size: u64) -> bool {
        let mut reserved = self.reserved.lock();
        if reserved.saturating_add(size) > self.policy.max_size {
            return false;
        }
        *reserved += size;
        let evicted = self.resize_reservation(*reserved);
        drop(reserved);
        self.evict(evicted);
        true
    }

    fn release(&'static self, size: u64) {
        let mut reserved = self.reserved.lock();
        *reserved = reserved.saturating_sub(size);
        let evicted = self.resize_reservation(*reserved);
        drop(reserved);
        self.evict(evicted);
    }

    /// A committed blob trades its reservation for its place in the LRU.
    /// Indexes a complete blob this process did not write: another hf-edge on the same
    /// `cache.dir` committed it, such as the process a graceful upgrade replaced, which
    /// finishes its fills while it drains. One `stat` per miss, so those bytes are not fetched
    /// upstream again.
    async fn adopt(&'static self, id: BlobId, size: u64) {
        let path = self.layout.blob(&id);
        match tokio::fs::metadata(&path).await {
            Ok(md) if md.is_file() && md.len() == size => {
                self.add_blob(id, size);
                if let Some(eviction) = self.policy.eviction {
                    let key = CacheEntryKey::key_only(cache_key(&id).to_compact());
                    let evicted = eviction.admit(key, size as usize, SystemTime::now() + FOREVER);
                    self.evict(evicted);
                }
                log::info!("blob {id}: complete on disk, written by another process; adopted");
            }
            _ => {}
        }
    }

    fn admit_committed(&'static self, fill: &Fill) {
        let mut reserved = self.reserved.lock();
        *reserved = reserved.saturating_sub(fill.size);
        let mut evicted = Vec::new();
        if let Some(eviction) = self.policy.eviction.filter(|_| !self.is_pinned(&fill.id)) {
            eviction.remove((&reservation_key()).into());
            let key = CacheEntryKey::key_only(cache_key(&fill.id).to_compact());
            let expires = SystemTime::now() + FOREVER;
            evicted = eviction.admit(key, fill.size as usize, expires);
        }
        evicted.extend(self.resize_reservation(*reserved));
        drop(reserved);
        self.evict(evicted);
    }

    /// The bytes of fills in flight stand in the eviction manager as one entry, re-admitted as
    /// its most recently used on every change: admitting it evicts least recently used blobs
    /// until complete blobs and reservations fit `max_size` together, and it is never evicted
    /// itself, since it never exceeds `max_size` (checked in `reserve`). Called under the
    /// `reserved` lock.
    fn resize_reservation(&self, reserved: u64) -> Vec<CacheEntryKey> {
        self.stats.reserved_bytes.store(reserved, Ordering::Relaxed);
        let Some(eviction) = self.policy.eviction else {
            return Vec::new();
        };
        let key = reservation_key();
        eviction.remove((&key).into());
        if reserved == 0 {
            return Vec::new();
        }
        eviction.admit(key, reserved as usize, SystemTime::now() + FOREVER)
    }

    fn note_write_error(&self, e: &std::io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        log::error!("cache write failed: {e}");
    }

    fn note_resume(&self) {
        self.stats.resumes.fetch_add(1, Ordering::Relaxed);
    }

    fn note_resumed_bytes(&self, n: usize) {
        self.stats
            .resumed_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn note_integrity_failure(&self) {
        self.stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A reader of the blob when it is stored or being filled: [`Storage::lookup`] without
    /// the cache key (text, then parsed back) and the meta a hit answered here never reads.
    pub async fn reader(&self, id: BlobId) -> Option<BlobReader> {
        // A fill in progress first: its rename may happen at any moment, and the temp file
        // stays readable through an open handle either way.
        let joined = self.fills.lock().running.get(&id).map(ReaderSlot::join);
        match joined {
            Some(slot) => Some(BlobReader::filling(slot)),
            None => self.open_complete(id).await,
        }
    }

    async fn open_complete(&self, id: BlobId) -> Option<BlobReader> {
        let kept = self.handles.lock().get(&id).cloned();
        if let Some((file, size, checked, in_memory)) = kept {
            if checked.elapsed() < HANDLE_RECHECK {
                return Some(match in_memory {
                    Some(bytes) => {
                        self.memory.hits.fetch_add(1, Ordering::Relaxed);
                        BlobReader::from_memory(id, file, bytes)
                    }
                    None => BlobReader::complete(id, file, size),
                });
            }
            self.handles.lock().remove(&id);
        }
        let path = self.layout.blob(&id);
        let tier = self.memory.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            // The access time is the LRU order rebuilt at boot; relatime would not keep it.
            let now = std::fs::FileTimes::new().set_accessed(SystemTime::now());
            if let Err(e) = f.set_times(now) {
                log::debug!("cannot set access time of {}: {e}", path.display());
            }
            let in_memory = tier.load(&id, &f, len).map(Arc::new);
            Ok::<_, std::io::Error>((f, len, in_memory))
        })
        .await
        .ok()?;
        match opened {
            Ok((file, size, in_memory)) => {
                self.touch(id);
                let file = Arc::new(file);
                let mut handles = self.handles.lock();
                if handles.len() >= MAX_HANDLES {
                    handles.clear();
                }
                let now = std::time::Instant::now();
                handles.insert(id, (file.clone(), size, now, in_memory.clone()));
                drop(handles);
                Some(match in_memory {
                    Some(bytes) => BlobReader::from_memory(id, file, bytes),
                    None => BlobReader::complete(id, file, size),
                })
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // Removed behind our back (an operator, a purge): forget it.
                    self.remove_index(&cache_key(&id).to_compact());
                } else {
                    log::warn!("cannot open blob {id}: {e}");
                }
                None
            }
        }
    }
}

/// Creates a temp file with `size` bytes reserved on disk. A disk too full for the blob fails
/// here, before anything is fetched, so the request is served straight through uncached
/// instead of cutting readers off mid-body when a later write would hit ENOSPC.
fn create_reserved(path: &std::path::Path, size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    // Readable too: readers of the fill read through a duplicate of this handle.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // Held until the file is renamed or dropped: `Layout::prepare` in another process sees a
    // locked temp file as a live writer's, whatever PID namespace either runs in.
    file.try_lock().map_err(std::io::Error::other)?;
    if size == 0 {
        return Ok(file);
    }
    let len = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
    // SAFETY: a valid open fd and a non-negative length.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Filesystems without fallocate are written as usual; anything else is a failure.
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(file)
}

/// The response header stored for a blob: identity body of a known length. Everything
/// repo-specific is added per request.
fn blob_meta(id: &BlobId, size: u64) -> CacheMeta {
    let mut h = ResponseHeader::build(200, Some(4)).expect("valid status");
    h.insert_header(header::CONTENT_LENGTH, size.to_string())
        .expect("valid header");
    h.insert_header(header::ETAG, format!("\"{}\"", id.hex()))
        .expect("valid header");
    h.insert_header(header::CONTENT_TYPE, "application/octet-stream")
        .expect("valid header");
    let now = SystemTime::now();
    CacheMeta::new(now + FOREVER, now, 0, 0, h)
}

/// The eviction manager's entry for the bytes reserved by fills in flight.
fn reservation_key() -> CacheEntryKey {
    CacheEntryKey::key_only(CacheKey::new("hf-edge:reserved-by-fills", "").to_compact())
}

fn blob_id(key: &CacheKey) -> Result<BlobId> {
    key.primary_key_str()
        .and_then(BlobId::parse_key)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key is not a blob id"))
}

#[async_trait]
impl Storage for BlobStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = blob_id(key)?;
        let reader = self.reader(id).await;
        Ok(reader.map(|r| (blob_meta(&id, r.size()), Box::new(r) as HitHandler)))
    }

    async fn get_miss_handler(
        &'static self,
        _key: &CacheKey,
        _meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // Fills are the store's own (`read_or_fill`); the proxy never enables Pingora's cache
        // phase, which would make a miss one loop per request.
        Error::e_explain(
            ErrorType::InternalError,
            "blobs are filled by BlobStore::read_or_fill, not by Pingora's cache phase",
        )
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some((id, size)) = self.remove_index(target.key()) else {
            return Ok(PurgeOutcome::NotFound);
        };
        self.handles.lock().remove(&id);
        if matches!(purge_type, PurgeType::Eviction) {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.stats.evicted_bytes.fetch_add(size, Ordering::Relaxed);
        }
        let path = self.layout.blob(&id);
        match tokio::fs::remove_file(&path).await {
            // Open readers keep their handle: a blob is never cut off under a reader.
            Ok(()) => Ok(PurgeOutcome::Purged(None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PurgeOutcome::NotFound),
            Err(e) => Err(Error::explain(
                ErrorType::InternalError,
                format!("cannot remove {}: {e}", path.display()),
            )),
        }
    }

    async fn update_meta(
        &'static self,
        _key: &CacheKey,
        _meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        // Nothing to update: blobs are immutable and their meta is derived.
        Ok(true)
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests;
