//! Reading a blob, complete or still filling. Reads are positional (`pread`) in chunks on the
//! blocking pool, so memory stays flat whatever the blob size. A reader of a fill waits for the
//! bytes it needs; it is handed the last byte only once the writer has verified and committed
//! the blob, so a fill that fails or hashes wrong is never seen as a complete body.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::{Error, ErrorType, Result};
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use tokio::sync::watch;

use super::memory::Kept;
use super::{FillFailure, Progress, ReaderSlot};
use crate::hub::BlobId;

/// Bytes per `read_body` chunk.
const CHUNK: u64 = 256 * 1024;

pub struct BlobReader {
    id: BlobId,
    file: Arc<File>,
    size: u64,
    pos: u64,
    /// Exclusive end of what this reader serves (the blob's size unless a range seeked).
    end: u64,
    /// Progress of the fill; `None` once the blob is known complete.
    fill: Option<watch::Receiver<Progress>>,
    /// This reader's place among the fill's readers (for the orphan policy), and why the
    /// fill failed if it does.
    slot: Option<ReaderSlot>,
    /// The blob's bytes, when the memory tier keeps them: read from there, not the file.
    memory: Option<Arc<Kept>>,
}

impl BlobReader {
    pub(super) fn complete(id: BlobId, file: Arc<File>, size: u64) -> BlobReader {
        BlobReader {
            id,
            file,
            size,
            pos: 0,
            end: size,
            fill: None,
            slot: None,
            memory: None,
        }
    }

    /// A reader of a complete blob whose bytes the memory tier keeps.
    pub(super) fn from_memory(id: BlobId, file: Arc<File>, kept: Arc<Kept>) -> BlobReader {
        let size = kept.bytes.len() as u64;
        BlobReader {
            memory: Some(kept),
            ..BlobReader::complete(id, file, size)
        }
    }

    pub(super) fn filling(slot: ReaderSlot) -> BlobReader {
        let fill = slot.fill();
        BlobReader {
            fill: Some(fill.progress.subscribe()),
            ..BlobReader::complete(fill.id, fill.file.clone(), fill.size)
        }
        .with_slot(slot)
    }

    fn with_slot(mut self, slot: ReaderSlot) -> BlobReader {
        self.slot = Some(slot);
        self
    }

    /// Whether this reader streams a fill still in progress.
    pub fn is_filling(&self) -> bool {
        self.fill.is_some()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Waits until the fill's origin answered with the body, before anything is sent to the
    /// client: a fill that fails before its first byte gets its reader an error answer (or an
    /// uncached fetch), never a header followed by a cut.
    pub async fn wait_opened(&mut self) -> std::result::Result<(), FillFailure> {
        let Some(rx) = self.fill.as_mut() else {
            return Ok(());
        };
        let state = rx.wait_for(|p| *p != Progress::Opening).await.map(|p| *p);
        match state {
            Ok(Progress::Failed) | Err(_) => Err(self.failure()),
            Ok(_) => Ok(()),
        }
    }

    /// Waits until the blob is committed (at once for a complete one), telling `progress` the
    /// bytes written as they grow; for whoever wants the blob stored rather than its bytes.
    pub async fn wait_committed(
        &mut self,
        mut progress: impl FnMut(u64),
    ) -> std::result::Result<(), FillFailure> {
        let Some(rx) = self.fill.as_mut() else {
            return Ok(());
        };
        loop {
            let state = *rx.borrow_and_update();
            match state {
                Progress::Committed => {
                    progress(self.size);
                    return Ok(());
                }
                Progress::Failed => return Err(self.failure()),
                Progress::Written(n) => progress(n),
                Progress::Opening => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.failure());
            }
        }
    }

    fn failure(&self) -> FillFailure {
        self.slot
            .as_ref()
            .and_then(|s| s.fill().failure.get().cloned())
            .unwrap_or_else(|| FillFailure::Local("the fill ended without committing".into()))
    }

    fn error(&self, what: &str) -> Box<Error> {
        Error::explain(ErrorType::ReadError, format!("blob {}: {what}", self.id))
    }

    /// Waits until bytes past `self.pos` may be read; returns how far.
    async fn readable_until(&mut self) -> Result<u64> {
        let Some(rx) = self.fill.as_mut() else {
            return Ok(self.size);
        };
        loop {
            let state = *rx.borrow_and_update();
            match state {
                Progress::Committed => {
                    self.fill = None;
                    return Ok(self.size);
                }
                Progress::Failed => {
                    let why = self.failure();
                    return Err(self.error(&format!("the fill failed: {why}")));
                }
                // Hold back the final byte until the blob is verified and committed.
                Progress::Written(n) if n.min(self.size.saturating_sub(1)) > self.pos => {
                    return Ok(n.min(self.size - 1))
                }
                Progress::Written(_) | Progress::Opening => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.error("the fill ended without committing"));
            }
        }
    }
}

/// Reads up to `len` bytes at `pos` on the calling (worker) thread if they are in the page
/// cache (`preadv2` with `RWF_NOWAIT`), into a buffer that is never zeroed. `None` when they
/// are not, and the read must go to the blocking pool: a worker thread never waits on a disk.
fn read_cached(file: &File, len: usize, pos: u64) -> std::io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let mut buf = bytes::BytesMut::with_capacity(len);
    let spare = &mut buf.spare_capacity_mut()[..len];
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
    // SAFETY: `iov` points at `len` bytes of `buf`'s spare capacity, valid for writes; the
    // kernel writes at most `len` bytes and reports how many.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n as usize) };
    Ok(Some(buf.freeze()))
}

/// The bytes `[start, end)` a hit handler's `seek` asks for in a body of `size` bytes: `end`
/// defaults to and is clamped at `size`; `None` when `start` is past it.
pub fn seek_span(size: u64, start: usize, end: Option<usize>) -> Option<(u64, u64)> {
    let end = end.map_or(size, |e| (e as u64).min(size));
    (start as u64 <= end).then_some((start as u64, end))
}

#[async_trait]
impl HandleHit for BlobReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            // Only an empty blob gets here mid-fill: its end is still its commit.
            if self.end == self.size && self.fill.is_some() {
                self.readable_until().await?;
            }
            return Ok(None);
        }
        let limit = self.readable_until().await?.min(self.end);
        let len = (limit - self.pos).min(CHUNK) as usize;
        if let Some(kept) = &self.memory {
            let start = self.pos as usize;
            self.pos += len as u64;
            return Ok(Some(kept.bytes.slice(start..start + len)));
        }
        let cached = read_cached(&self.file, len, self.pos)
            .map_err(|e| self.error(&format!("read failed: {e}")))?;
        if let Some(buf) = cached {
            if buf.is_empty() {
                return Err(self.error("blob file is truncated"));
            }
            self.pos += buf.len() as u64;
            return Ok(Some(buf));
        }
        let (file, pos) = (self.file.clone(), self.pos);
        let buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], pos + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .map_err(|e| self.error(&format!("read task failed: {e}")))?
        .map_err(|e| self.error(&format!("read failed: {e}")))?;
        if buf.is_empty() {
            // The file is shorter than its size: never end such a body as if it were whole.
            return Err(self.error("blob file is truncated"));
        }
        self.pos += buf.len() as u64;
        Ok(Some(Bytes::from(buf)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let Some((start, end)) = seek_span(self.size, start, end) else {
            return Err(self.error("seek past the end"));
        };
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.size as usize
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}
