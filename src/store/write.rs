//! Writing a fill: the body streams into a temp file while it is hashed, one batch at a time
//! on the store's writer threads ([`super::pool`]), so that receiving the next batch overlaps
//! writing this one; [`FillWriter::commit`] checks the size and the content address, fsyncs,
//! and renames the file into place. What happens when the body is cut, wrong or no longer
//! wanted is the fill task's business (`fill.rs`); this only writes.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use sha1::Digest as _;
use tokio::sync::oneshot;

use super::{BlobStore, Fill, Progress};
use crate::hub::BlobId;

/// Computes a blob's content address while it streams.
pub enum ContentHasher {
    Sha256(sha2::Sha256),
    /// Git's blob id: sha1 over `blob {size}\0` followed by the content.
    GitOid(sha1::Sha1),
}

impl ContentHasher {
    pub fn new(id: &BlobId, size: u64) -> ContentHasher {
        match id {
            BlobId::Sha256(_) => ContentHasher::Sha256(sha2::Sha256::new()),
            BlobId::GitOid(_) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                ContentHasher::GitOid(h)
            }
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            ContentHasher::Sha256(h) => h.update(data),
            ContentHasher::GitOid(h) => h.update(data),
        }
    }

    /// The id this content really has, of the same kind as the one it was created for.
    pub fn finish(self) -> BlobId {
        match self {
            ContentHasher::Sha256(h) => BlobId::Sha256(h.finalize().into()),
            ContentHasher::GitOid(h) => BlobId::GitOid(h.finalize().into()),
        }
    }
}

/// The temp file and hash state; moved to a writer thread with each batch and back.
struct WriteState {
    file: File,
    hasher: ContentHasher,
    written: u64,
    /// Bytes already handed to the kernel's writeback.
    handed_back: u64,
}

/// Body bytes gathered before they are handed to a writer thread: upstream bodies arrive in
/// pieces of a few KiB to 64 KiB, and a hand-off per piece would cost more than the piece.
const FLUSH_BYTES: usize = 1 << 20;
/// ... but readers never wait longer than this for bytes that have arrived (a slow upstream
/// would otherwise hold them back until a whole batch gathered).
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);
/// Written bytes handed to the kernel's writeback at a time, so the final fsync has little
/// left to do.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Why a fill's bytes could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Resuming cannot mend these: the body is not the file.
    #[error("upstream sent more than the expected {0} bytes")]
    TooLong(u64),
    #[error("body ended after {got} of {size} bytes")]
    Short { got: u64, size: u64 },
    #[error("content hashes to {0}; discarded")]
    Mismatch(BlobId),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Written = oneshot::Receiver<(WriteState, std::io::Result<()>)>;

pub(super) struct FillWriter {
    store: &'static BlobStore,
    fill: Arc<Fill>,
    /// The file and hash state: `None` while a batch is on a writer thread (`writing`), and
    /// after a write failed.
    state: Option<WriteState>,
    writing: Option<Written>,
    /// Bytes handed to the writer threads.
    queued: u64,
    /// Received, not yet handed over.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// When bytes were last handed over; `None` until the first, which goes at once.
    last_flush: Option<std::time::Instant>,
}

impl FillWriter {
    pub(super) fn new(store: &'static BlobStore, fill: Arc<Fill>, file: File) -> FillWriter {
        let hasher = ContentHasher::new(&fill.id, fill.size);
        FillWriter {
            store,
            fill,
            state: Some(WriteState {
                file,
                hasher,
                written: 0,
                handed_back: 0,
            }),
            writing: None,
            queued: 0,
            pending: Vec::new(),
            pending_len: 0,
            last_flush: None,
        }
    }

    /// Bytes received so far, written or not: where a resumed body starts.
    pub(super) fn received(&self) -> u64 {
        self.queued + self.pending_len as u64
    }

    /// When the bytes received but not yet handed over must be, if no more come before: readers
    /// never wait longer than `FLUSH_AFTER` for bytes that arrived, even when the origin pauses.
    pub(super) fn flush_due(&self) -> Option<std::time::Instant> {
        let since = self.last_flush?;
        (!self.pending.is_empty()).then_some(since + FLUSH_AFTER)
    }

    /// Hands what was received over, due or not.
    pub(super) async fn flush_pending(&mut self) -> Result<(), WriteError> {
        self.flush().await
    }

    /// Takes the next piece of the body.
    pub(super) async fn write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        let received = self.received() + data.len() as u64;
        if received > self.fill.size {
            return Err(WriteError::TooLong(self.fill.size));
        }
        self.pending_len += data.len();
        self.pending.push(data);
        let due = self.last_flush.is_none_or(|t| t.elapsed() >= FLUSH_AFTER);
        if due || self.pending_len >= FLUSH_BYTES || received == self.fill.size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the batch on a writer thread, if any, and takes the state back.
    async fn settle(&mut self) -> Result<WriteState, WriteError> {
        if let Some(writing) = self.writing.take() {
            let (state, result) = writing
                .await
                .map_err(|_| std::io::Error::other("a writer thread failed"))?;
            result?;
            self.state = Some(state);
        }
        self.state
            .take()
            .ok_or_else(|| std::io::Error::other("write after a failed write").into())
    }

    /// Hands the gathered bytes to a writer thread, once the previous batch is written: one
    /// batch written while the next is received bounds a fill's memory to two batches.
    async fn flush(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut state = self.settle().await?;
        let batch = std::mem::take(&mut self.pending);
        self.queued += std::mem::take(&mut self.pending_len) as u64;
        self.last_flush = Some(std::time::Instant::now());
        let fill = self.fill.clone();
        let pool = self.store.writers()?;
        self.writing = Some(pool.run(move || {
            let result = write_batch(&mut state, &batch, &fill);
            (state, result)
        }));
        Ok(())
    }

    /// Writes what is left, checks the size and content address, fsyncs and renames the blob
    /// into place.
    pub(super) async fn commit(mut self) -> Result<(), WriteError> {
        self.flush().await?;
        if self.queued != self.fill.size {
            let (got, size) = (self.queued, self.fill.size);
            return Err(WriteError::Short { got, size });
        }
        let state = self.settle().await?;
        let expected = self.fill.id;
        let (temp, dest) = (self.fill.temp.clone(), self.store.layout.blob(&expected));
        let done = self.store.writers()?.run(move || {
            let actual = state.hasher.finish();
            if actual != expected {
                return Ok(Err(actual));
            }
            let synced = std::time::Instant::now();
            state.file.sync_all()?;
            let file_sync = synced.elapsed();
            std::fs::create_dir_all(dest.parent().expect("blob path has a parent"))?;
            std::fs::rename(&temp, &dest)?;
            // Without it a crash can lose the rename of a blob already served as complete.
            crate::durable::sync_parent(&dest)?;
            Ok::<_, std::io::Error>(Ok((file_sync, synced.elapsed())))
        });
        match done.await {
            Ok(Ok(Ok((file_sync, commit)))) => {
                // What the last byte waits for (readers get it only once the blob is in place),
                // so an operator can tell a slow disk from a slow origin.
                log::info!(
                    "blob {expected}: {} bytes committed; fsync {:.3}s, fsync + rename + directory fsync {:.3}s",
                    self.fill.size,
                    file_sync.as_secs_f64(),
                    commit.as_secs_f64()
                );
                Ok(())
            }
            Ok(Ok(Err(actual))) => Err(WriteError::Mismatch(actual)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(std::io::Error::other("a writer thread failed").into()),
        }
    }
}

/// Writes and hashes one batch, then tells readers how far the file is written.
fn write_batch(state: &mut WriteState, batch: &[Bytes], fill: &Fill) -> std::io::Result<()> {
    for c in batch {
        state.file.write_all(c)?;
        state.hasher.update(c);
        state.written += c.len() as u64;
    }
    let written = state.written;
    // Not after the fill was given up: its readers were told it failed.
    fill.progress.send_if_modified(|p| match p {
        Progress::Written(_) => {
            *p = Progress::Written(written);
            true
        }
        _ => false,
    });
    if written - state.handed_back >= WRITEBACK_STEP {
        start_writeback(&state.file, state.handed_back, written - state.handed_back);
        state.handed_back = written;
    }
    Ok(())
}

/// Starts writing a range of the file back to disk without waiting for it (best effort: a
/// filesystem without it just leaves more to the final fsync).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a valid open fd; the call only schedules writeback of the given range.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}
