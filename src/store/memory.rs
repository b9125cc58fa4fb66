//! The memory tier (`cache.memory_size`, `cache.memory_max_object`): the bytes of small complete
//! blobs, kept with their open handle, so that a hit on them makes no read at all. The bytes
//! are read from the committed blob file once and their content address checked again before
//! they are kept: a blob whose file no longer hashes right is served from disk as before, never
//! from memory. Bounded: a blob is kept only while the tier has room (first come, until its
//! handle is dropped: a purge, the 60 s recheck, or the handle table starting over); what a
//! kept blob holds is released when its handle goes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::write::ContentHasher;
use crate::hub::BlobId;

/// Sizes of the tier, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bytes kept at most in all; 0 turns the tier off.
    pub max_size: u64,
    /// Blobs larger than this are never kept.
    pub max_object: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_size: 256 << 20,
            max_object: 1 << 20,
        }
    }
}

pub struct MemoryTier {
    limits: MemoryLimits,
    /// Bytes charged to kept blobs (a gauge).
    used: Arc<AtomicU64>,
    /// Hits answered from memory (a counter).
    pub hits: AtomicU64,
}

/// A blob's bytes kept in memory; its charge on the tier is released when it is dropped.
pub struct Kept {
    pub bytes: Bytes,
    used: Arc<AtomicU64>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.used
            .fetch_sub(self.bytes.len() as u64, Ordering::Relaxed);
    }
}

impl MemoryTier {
    pub fn new(limits: MemoryLimits) -> MemoryTier {
        MemoryTier {
            limits,
            used: Arc::new(AtomicU64::new(0)),
            hits: AtomicU64::new(0),
        }
    }

    /// Bytes kept now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The bytes of the complete blob `id` of `size` bytes, read from `file` (blocking) and
    /// checked against `id`; `None` when the blob is too big, the tier is full, or the bytes
    /// are not the blob's.
    pub fn load(&self, id: &BlobId, file: &File, size: u64) -> Option<Kept> {
        if size > self.limits.max_object {
            return None;
        }
        // Charged before the read, so racing loads never take the tier past its size.
        let charged = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + size <= self.limits.max_size).then_some(used + size)
            });
        if charged.is_err() {
            return None;
        }
        match read_checked(id, file, size) {
            Some(bytes) => Some(Kept {
                bytes,
                used: self.used.clone(),
            }),
            None => {
                self.used.fetch_sub(size, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The whole blob, if its file holds `size` bytes that hash to `id`.
fn read_checked(id: &BlobId, file: &File, size: u64) -> Option<Bytes> {
    let mut buf = vec![0u8; size as usize];
    if let Err(e) = file.read_exact_at(&mut buf, 0) {
        log::warn!("blob {id}: not kept in memory: read failed: {e}");
        return None;
    }
    let mut hasher = ContentHasher::new(id, size);
    hasher.update(&buf);
    if hasher.finish() != *id {
        log::warn!("blob {id}: not kept in memory: its file does not hash to its address");
        return None;
    }
    Some(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn blob(dir: &std::path::Path, content: &[u8]) -> (BlobId, File) {
        let id = BlobId::Sha256(sha2::Sha256::digest(content).into());
        let path = dir.join(id.hex());
        std::fs::write(&path, content).unwrap();
        (id, File::open(path).unwrap())
    }

    #[test]
    fn small_blobs_are_kept_while_there_is_room_and_released_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tier = MemoryTier::new(MemoryLimits {
            max_size: 100,
            max_object: 60,
        });
        let (a, fa) = blob(dir.path(), &[1u8; 60]);
        let (b, fb) = blob(dir.path(), &[2u8; 50]);
        let (big, fbig) = blob(dir.path(), &[3u8; 61]);
        let kept_a = tier.load(&a, &fa, 60).expect("fits");
        assert_eq!(kept_a.bytes, vec![1u8; 60]);
        assert_eq!(tier.used(), 60);
        assert!(tier.load(&b, &fb, 50).is_none(), "no room left");
        assert!(tier.load(&big, &fbig, 61).is_none(), "over max_object");
        assert_eq!(tier.used(), 60);
        drop(kept_a);
        assert_eq!(tier.used(), 0);
        let kept_b = tier.load(&b, &fb, 50).expect("room again");
        assert_eq!(kept_b.bytes, vec![2u8; 50]);
        assert_eq!(tier.used(), 50);
    }

    #[test]
    fn a_file_that_does_not_hash_to_its_address_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tier = MemoryTier::new(MemoryLimits::default());
        let (id, _) = blob(dir.path(), b"the right bytes");
        let path = dir.path().join(id.hex());
        std::fs::write(&path, b"the wrong bytes").unwrap();
        let file = File::open(&path).unwrap();
        assert!(tier.load(&id, &file, 15).is_none());
        // Shorter than its size: not kept either.
        assert!(tier.load(&id, &file, 16).is_none());
        assert_eq!(tier.used(), 0);
    }
}
