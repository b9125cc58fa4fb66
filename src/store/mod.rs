//! The blob store: hf-edge's on-disk pingora-cache [`Storage`].
//!
//! Content-addressed: the cache key is a [`BlobId`], so a file shared by many repos or
//! revisions is stored once, and nothing repo- or revision-specific is stored with it (those
//! headers come from the resolver per request). The stored "meta" is therefore derived from
//! the blob itself and nothing but the body is written to disk.
//!
//! Streaming partial writes are supported: while a blob fills, other requests for it read the
//! same temp file as bytes arrive, instead of waiting for the whole download.

pub mod admin;
mod hit;
mod layout;
mod miss;
mod refs;
mod resume;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::header;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    streaming_write::U64WriteId, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta, Storage};
use tokio::sync::watch;

pub use hit::BlobReader;
pub use layout::{FoundBlob, Layout};
pub use miss::{BlobWriter, ContentHasher};
pub use refs::{read_refs, refs_path, rewrite_refs, RefEntry, RefsLog};
pub use resume::{FillSource, Refetch, RefetchBody, RefetchError};

use crate::hub::BlobId;

/// An open complete blob: its file, size, and when it was last checked on disk.
type KeptHandle = (Arc<std::fs::File>, u64, std::time::Instant);

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
    Written(u64),
    Committed,
    Failed,
}

/// One in-flight write, shared by its writer and every reader of the partial blob.
pub struct Fill {
    id: BlobId,
    tag: U64WriteId,
    size: u64,
    temp: std::path::PathBuf,
    progress: watch::Sender<Progress>,
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
        }
    }
}

pub struct BlobStore {
    layout: Layout,
    /// Complete blobs by cache-key hash (what eviction hands back), with their size.
    index: Mutex<HashMap<HashBinary, (BlobId, u64)>>,
    fills: Mutex<HashMap<BlobId, Arc<Fill>>>,
    /// Open handles of complete blobs (immutable, so a kept handle is always right), with
    /// when the blob was last checked on disk and its access time set.
    handles: Mutex<HashMap<BlobId, KeptHandle>>,
    /// Streaming-write tags: tell this process's concurrent fills of one key apart.
    next_write: AtomicU64,
    refs: RefsLog,
    pub stats: StoreStats,
}

/// The cache key of a blob; `BlobId`'s `Display` form is the primary key.
pub fn cache_key(id: &BlobId) -> CacheKey {
    CacheKey::new(id.to_string(), "")
}

impl BlobStore {
    /// Opens the store at `dir`: creates it, removes stale temp files and indexes the blobs.
    /// Returns the blobs found, least recently used first, for the eviction manager.
    pub fn open(dir: &std::path::Path) -> std::io::Result<(BlobStore, Vec<FoundBlob>)> {
        let layout = Layout::new(dir);
        let removed = layout.prepare()?;
        if removed > 0 {
            log::info!(
                "removed {removed} unfinished blob(s) from {}",
                dir.display()
            );
        }
        let mut found = layout.scan()?;
        found.sort_by_key(|b| b.last_access);
        let present = found.iter().map(|b| b.id).collect();
        let store = BlobStore {
            refs: RefsLog::open(layout.root(), &present)?,
            layout,
            index: Mutex::new(HashMap::new()),
            fills: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_write: AtomicU64::new(1),
            stats: StoreStats::default(),
        };
        for b in &found {
            store.insert_index(b.id, b.size);
        }
        Ok((store, found))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Records that a repo path names a blob (for operators' `cache ls/stats/purge`).
    pub fn record_ref(&self, entry: &RefEntry, filled: bool) {
        self.refs.record(entry, filled);
    }

    /// Whether a complete copy of the blob is on disk (per the index).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.index.lock().contains_key(&cache_key(id).primary_bin())
    }

    /// Admits the blobs found at boot into the eviction manager, oldest access first.
    /// Returns what no longer fits, for [`BlobStore::purge_evicted`].
    pub fn seed_eviction(
        &self,
        found: &[FoundBlob],
        eviction: &(dyn EvictionManager + Sync),
    ) -> Vec<CacheEntryKey> {
        let mut evict = Vec::new();
        for b in found {
            let key = CacheEntryKey::key_only(cache_key(&b.id).to_compact());
            evict.extend(eviction.admit(key, b.size as usize, SystemTime::now() + FOREVER));
        }
        evict
    }

    /// Deletes blobs the eviction manager gave up on.
    pub async fn purge_evicted(&'static self, evict: Vec<CacheEntryKey>) {
        for key in evict {
            let _ = self
                .purge(
                    PurgeTarget::Exact(&key),
                    PurgeType::Eviction,
                    &pingora_cache::trace::Span::inactive().handle(),
                )
                .await;
        }
    }

    fn insert_index(&self, id: BlobId, size: u64) {
        let prev = self
            .index
            .lock()
            .insert(cache_key(&id).primary_bin(), (id, size));
        if prev.is_none() {
            self.stats.bytes.fetch_add(size, Ordering::Relaxed);
            self.stats.objects.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove_index(&self, key: &CompactCacheKey) -> Option<(BlobId, u64)> {
        let removed = self.index.lock().remove(&key.primary);
        if let Some((_, size)) = removed {
            self.stats.bytes.fetch_sub(size, Ordering::Relaxed);
            self.stats.objects.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The writer verified and renamed the blob into place.
    fn commit(&self, fill: &Arc<Fill>) {
        self.insert_index(fill.id, fill.size);
        self.remove_fill(fill);
        fill.progress.send_replace(Progress::Committed);
    }

    /// The writer is gone without committing: readers must fail, the temp file goes.
    fn abandon(&self, fill: &Arc<Fill>) {
        self.stats.abandoned_fills.fetch_add(1, Ordering::Relaxed);
        self.remove_fill(fill);
        fill.progress.send_replace(Progress::Failed);
        if let Err(e) = std::fs::remove_file(&fill.temp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", fill.temp.display());
            }
        }
    }

    fn remove_fill(&self, fill: &Arc<Fill>) {
        let mut fills = self.fills.lock();
        if fills.get(&fill.id).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            fills.remove(&fill.id);
        }
    }

    fn note_write_error(&self, e: &std::io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        log::error!("cache write failed: {e}");
    }

    fn note_resume(&self) {
        self.stats.resumes.fetch_add(1, Ordering::Relaxed);
    }

    fn note_integrity_failure(&self) {
        self.stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn open_complete(&self, id: BlobId) -> Option<(CacheMeta, HitHandler)> {
        let kept = self.handles.lock().get(&id).cloned();
        if let Some((file, size, checked)) = kept {
            if checked.elapsed() < HANDLE_RECHECK {
                return Some((
                    blob_meta(&id, size),
                    Box::new(BlobReader::complete(id, file, size)),
                ));
            }
            self.handles.lock().remove(&id);
        }
        let path = self.layout.blob(&id);
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            // The access time is the LRU order rebuilt at boot; relatime would not keep it.
            let now = std::fs::FileTimes::new().set_accessed(SystemTime::now());
            if let Err(e) = f.set_times(now) {
                log::debug!("cannot set access time of {}: {e}", path.display());
            }
            Ok::<_, std::io::Error>((f, len))
        })
        .await
        .ok()?;
        match opened {
            Ok((file, size)) => {
                let file = Arc::new(file);
                let mut handles = self.handles.lock();
                if handles.len() >= MAX_HANDLES {
                    handles.clear();
                }
                handles.insert(id, (file.clone(), size, std::time::Instant::now()));
                drop(handles);
                Some((
                    blob_meta(&id, size),
                    Box::new(BlobReader::complete(id, file, size)),
                ))
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

    fn open_filling(&self, fill: &Arc<Fill>) -> Option<(CacheMeta, HitHandler)> {
        // Subscribe before opening, so no progress is missed; a failed fill shows as Failed.
        let rx = fill.progress.subscribe();
        let file = std::fs::File::open(&fill.temp).ok()?;
        Some((
            blob_meta(&fill.id, fill.size),
            Box::new(BlobReader::filling(fill.id, file, fill.size, rx)),
        ))
    }
}

/// Creates a temp file with `size` bytes reserved on disk. A disk too full for the blob fails
/// here, before any byte is served, so Pingora serves the request straight through uncached
/// instead of cutting readers off mid-body when a later write would hit ENOSPC.
fn create_reserved(path: &std::path::Path, size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path)?;
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
        // A fill in progress first: its rename may happen at any moment, and the temp file
        // stays readable through an open handle either way.
        let fill = self.fills.lock().get(&id).cloned();
        if let Some(fill) = fill {
            if let Some(hit) = self.open_filling(&fill) {
                return Ok(Some(hit));
            }
        }
        Ok(self.open_complete(id).await)
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = tag else {
            return self.lookup(key, trace).await;
        };
        let id = blob_id(key)?;
        let fill = self.fills.lock().get(&id).cloned();
        Ok(fill
            .filter(|f| f.tag.as_bytes() == tag)
            .and_then(|f| self.open_filling(&f)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let id = blob_id(key)?;
        let size = crate::hub::headers::content_length(meta.headers()).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "blob response has no Content-Length",
            )
        })?;
        let seq = self.next_write.fetch_add(1, Ordering::Relaxed);
        let temp = self.layout.temp(&id);
        let path = temp.clone();
        let file = tokio::task::spawn_blocking(move || create_reserved(&path, size))
            .await
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?
            .map_err(|e| {
                self.note_write_error(&e);
                Error::explain(
                    ErrorType::InternalError,
                    format!("cannot create {}: {e}", temp.display()),
                )
            })?;
        let (progress, _) = watch::channel(Progress::Written(0));
        let fill = Arc::new(Fill {
            id,
            tag: U64WriteId::from(seq),
            size,
            temp,
            progress,
        });
        let source = meta.extensions().get::<FillSource>().map(|s| s.0.clone());
        let writer = BlobWriter::new(self, fill.clone(), file, source).map_err(|e| {
            let _ = std::fs::remove_file(&fill.temp);
            self.note_write_error(&e);
            Error::explain(
                ErrorType::InternalError,
                format!("cannot start the writer of {}: {e}", fill.temp.display()),
            )
        })?;
        // The cache lock lets one writer per key through; a leftover entry is a dead fill.
        self.fills.lock().insert(id, fill);
        Ok(Box::new(writer))
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

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests;
