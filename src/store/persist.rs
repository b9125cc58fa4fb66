//! How the store uses its persisted index ([`index`]): loaded at boot instead of a scan,
//! journaled as blobs come and go, compacted into a new snapshot from time to time and at a
//! clean shutdown, and reconciled with a scan in the background when it may be stale.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::CacheHashKey;

use super::index::{self, LoadError, Writer};
use super::{cache_key, compact_key, BlobStore, FoundBlob, Layout, StoredBlob, FOREVER};

/// How often the index thread looks at the journal's length.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// A journal is compacted into a snapshot once it has more records than this, or than
/// there are blobs (so replaying it never costs more than loading the snapshot).
const MIN_COMPACT_RECORDS: u64 = 100_000;

/// How the index was got at boot.
#[derive(Debug)]
pub(super) struct BootIndex {
    generation: u64,
    /// Why it may not match the disk: reconcile with a scan.
    stale: Option<String>,
    /// Rebuilt by a scan: write a snapshot.
    scanned: bool,
}

/// Access times are kept to the nanosecond, as the file system keeps them: blobs read a
/// moment apart keep their order across a restart.
pub(super) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The blobs, from the persisted index, or from a scan when there is none or it is damaged.
pub(super) fn load_or_scan(layout: &Layout) -> std::io::Result<(index::Blobs, BootIndex)> {
    let root = layout.root();
    let started = Instant::now();
    let why = match index::load(root) {
        Ok(loaded) => {
            log::info!(
                "store index: {} blob(s) loaded from {} in {:.3}s{}",
                loaded.blobs.len(),
                index::snapshot_path(root).display(),
                started.elapsed().as_secs_f64(),
                loaded.stale.as_ref().map_or(String::new(), |why| format!(
                    "; it may be stale ({why}): reconciling it with a scan in the background"
                )),
            );
            let boot = BootIndex {
                generation: loaded.generation,
                stale: loaded.stale,
                scanned: false,
            };
            return Ok((loaded.blobs, boot));
        }
        Err(LoadError::Missing) => "there is none yet".to_string(),
        Err(e) => e.to_string(),
    };
    log::warn!(
        "store index: cannot use it ({why}): rebuilding it by a scan of {}",
        root.display()
    );
    let found: index::Blobs = layout
        .scan()?
        .iter()
        .map(|b| (stored(b).key, stored(b)))
        .collect();
    log::info!(
        "store index: scanned {} blob(s) in {:.3}s",
        found.len(),
        started.elapsed().as_secs_f64()
    );
    let boot = BootIndex {
        generation: 0,
        stale: None,
        scanned: true,
    };
    Ok((found, boot))
}

/// A blob found by a scan, as the index keeps it.
fn stored(b: &FoundBlob) -> StoredBlob {
    StoredBlob {
        id: b.id,
        key: cache_key(&b.id).primary_bin(),
        size: b.size,
        access: unix_nanos(b.last_access),
    }
}

impl BlobStore {
    /// Takes ownership of the persisted index and keeps it up to date from now on: a thread
    /// writes the first snapshot (after a scan), reconciles a stale index with the disk while
    /// the server serves, and compacts the journal. Another hf-edge on the same store (the
    /// process a graceful upgrade replaces) may still own it: the thread waits for it, then
    /// reconciles, since what that process changed meanwhile is not in this one's journal.
    pub fn start_index(&'static self) -> std::io::Result<()> {
        let Some(mut boot) = self.boot.lock().take() else {
            return Ok(());
        };
        let root = self.layout.root().to_path_buf();
        let owned = Writer::acquire(&root, boot.generation)?;
        let waiting = owned.is_none();
        *self.persist.lock() = owned;
        std::thread::Builder::new()
            .name("store-index".into())
            .spawn(move || {
                if waiting {
                    log::info!("store index: another hf-edge owns it; waiting until it exits");
                    let writer = loop {
                        std::thread::sleep(Duration::from_secs(1));
                        match Writer::acquire(&root, boot.generation) {
                            Ok(Some(w)) => break w,
                            Ok(None) => continue,
                            Err(e) => {
                                log::error!("store index: cannot take it: {e}");
                                return;
                            }
                        }
                    };
                    *self.persist.lock() = Some(writer);
                    boot.stale = Some("another hf-edge wrote the store meanwhile".into());
                }
                self.maintain_index(boot);
            })?;
        Ok(())
    }

    fn maintain_index(&'static self, boot: BootIndex) {
        let root = self.layout.root();
        let mut due = boot.scanned;
        if let Some(why) = boot.stale {
            match self.reconcile() {
                Ok(()) => due = true,
                Err(e) => log::error!("store index: reconciling it ({why}) failed: {e}"),
            }
        }
        loop {
            if due {
                if let Err(e) = self.checkpoint() {
                    log::error!("store index: cannot write {}: {e}", root.display());
                }
            }
            std::thread::sleep(CHECK_EVERY);
            let objects = self.stats.objects.load(Ordering::Relaxed);
            due = self
                .persist
                .lock()
                .as_ref()
                .is_some_and(|w| w.records > objects.max(MIN_COMPACT_RECORDS));
        }
    }

    /// Writes a snapshot of the index, and starts a new journal after it.
    fn checkpoint(&self) -> std::io::Result<()> {
        let started = Instant::now();
        let (generation, entries) = {
            let mut persist = self.persist.lock();
            let Some(w) = persist.as_mut() else {
                return Ok(());
            };
            // Under both locks: every change is in the snapshot or in the new journal.
            let index = self.index.lock();
            let generation = w.rotate()?;
            (generation, index.values().copied().collect::<Vec<_>>())
        };
        index::write_snapshot(self.layout.root(), generation, &entries)?;
        log::info!(
            "store index: snapshot of {} blob(s) written in {:.3}s",
            entries.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Writes the index whole at a clean shutdown, so the next boot trusts it.
    pub fn close_index(&self) {
        let root = self.layout.root();
        if self.persist.lock().is_none() {
            return;
        }
        let closed = self
            .checkpoint()
            .and_then(|()| self.persist.lock().take().map_or(Ok(()), Writer::close));
        if let Err(e) = closed {
            log::error!(
                "store index: cannot write it at shutdown in {}: {e}; the next boot reconciles it",
                root.display()
            );
        }
    }

    /// Sets a blob's last access (the LRU order) and journals it.
    pub(super) fn touch(&self, id: crate::hub::BlobId) {
        let now = unix_nanos(SystemTime::now());
        let touched = self
            .index
            .lock()
            .get_mut(&cache_key(&id).primary_bin())
            .map(|e| {
                e.access = now;
                *e
            });
        if let Some(e) = touched {
            self.journal(index::Op::Touch, &e);
        }
    }

    /// Lists the blobs on disk and brings the index in line: blobs it lacks are indexed and
    /// admitted (least recently used first), blobs gone from disk are forgotten. A blob that
    /// the scan missed because it was committed during it is in the index already; one the
    /// index names but the scan did not see is looked at again before it is forgotten.
    fn reconcile(&'static self) -> std::io::Result<()> {
        let started = Instant::now();
        let mut found = self.layout.scan()?;
        found.sort_by_key(|b| b.last_access);
        let on_disk: HashSet<_> = found.iter().map(|b| b.id).collect();
        let mut evicted = Vec::new();
        let mut added = 0;
        for b in found.iter().map(stored) {
            if !self.insert_index(b) {
                continue;
            }
            added += 1;
            self.journal(index::Op::Add, &b);
            if let Some(eviction) = self.policy.eviction.filter(|_| !self.is_pinned(&b.id)) {
                let key = CacheEntryKey::key_only(compact_key(b.key));
                evicted.extend(eviction.admit(key, b.size as usize, SystemTime::now() + FOREVER));
            }
        }
        let unseen: Vec<_> = self
            .index
            .lock()
            .values()
            .filter(|e| !on_disk.contains(&e.id))
            .map(|e| e.id)
            .collect();
        let mut removed = 0;
        for id in unseen {
            if self.layout.blob(&id).exists() {
                continue;
            }
            let key = cache_key(&id).to_compact();
            if self.remove_index(&key).is_some() {
                removed += 1;
                if let Some(eviction) = self.policy.eviction {
                    eviction.remove((&CacheEntryKey::key_only(key)).into());
                }
            }
        }
        index::clear_stale(self.layout.root())?;
        log::info!(
            "store index: reconciled with a scan in {:.3}s: {added} blob(s) added, {removed} gone",
            started.elapsed().as_secs_f64()
        );
        self.evict(evicted);
        Ok(())
    }
}
