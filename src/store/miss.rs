//! Filling a blob: the body streams into a temp file while it is hashed, on a writer thread
//! per fill so that receiving overlaps hashing and writing; `finish` checks the size and the
//! content address, fsyncs, and renames the file into place. A writer dropped
//! before its body is whole (the upstream connection was cut) hands its state to a resume
//! task ([`super::resume`]) while attempts remain; otherwise, and after a write error or wrong
//! content, the fill is discarded and every reader of it is told the body failed.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::{Error, ErrorType, Result};
use pingora_cache::storage::{HandleMiss, MissFinishType};
use sha1::Digest as _;
use tokio::sync::{mpsc, oneshot};

use super::resume::{self, Attempts, Refetch};
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

/// The temp file and hash state, owned by the fill's writer task.
struct WriteState {
    file: File,
    hasher: ContentHasher,
}

/// Body bytes gathered before they are handed to the writer task: Pingora hands the body over
/// in 64 KiB pieces, and a hand-off per piece would cost more than the piece.
const FLUSH_BYTES: usize = 1 << 20;
/// ... but readers never wait longer than this for bytes that have arrived (a slow upstream
/// would otherwise hold them back until a whole batch gathered).
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);
/// Batches queued for the writer task at most: receiving runs ahead of hashing and writing by
/// this much (memory per fill stays bounded), then waits for them.
const IN_FLIGHT: usize = 2;
/// Written bytes handed to the kernel's writeback at a time, so the final fsync has little
/// left to do.
const WRITEBACK_STEP: u64 = 8 << 20;

/// The writer of a fill: a thread of its own (not the blocking pool, which hit reads need and
/// a slow fill could hold for hours) that writes and hashes batches while the next ones are
/// received, and tells readers how far the file is written.
struct Sink {
    batches: mpsc::Sender<Vec<Bytes>>,
    /// The file and hash state once `batches` is closed and all of them were written.
    done: oneshot::Receiver<std::io::Result<WriteState>>,
}

impl Sink {
    fn start(
        store: &'static BlobStore,
        fill: Arc<Fill>,
        state: WriteState,
    ) -> std::io::Result<Sink> {
        let (batches, rx) = mpsc::channel(IN_FLIGHT);
        let (tx, done) = oneshot::channel();
        // Thread names are cut at 15 bytes.
        let name = format!("fill-{}", fill.id.hex().get(..10).unwrap_or_default());
        std::thread::Builder::new().name(name).spawn(move || {
            let mut state = state;
            let result = write_batches(&mut state, rx, &fill).map(|()| state);
            if let Err(e) = &result {
                store.note_write_error(e);
                log::warn!(
                    "blob {}: write to {} failed: {e}",
                    fill.id,
                    fill.temp.display()
                );
            }
            let _ = tx.send(result);
        })?;
        Ok(Sink { batches, done })
    }
}

/// The writer task's loop: until the sender is dropped.
fn write_batches(
    state: &mut WriteState,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    fill: &Fill,
) -> std::io::Result<()> {
    let (mut written, mut handed_back) = (0u64, 0u64);
    while let Some(batch) = rx.blocking_recv() {
        for c in &batch {
            state.file.write_all(c)?;
            state.hasher.update(c);
            written += c.len() as u64;
        }
        // Not after the fill was given up: its readers were told it failed.
        fill.progress.send_if_modified(|p| match p {
            Progress::Written(_) => {
                *p = Progress::Written(written);
                true
            }
            _ => false,
        });
        if written - handed_back >= WRITEBACK_STEP {
            start_writeback(&state.file, handed_back, written - handed_back);
            handed_back = written;
        }
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

pub struct BlobWriter {
    store: &'static BlobStore,
    fill: Arc<Fill>,
    /// `None` after a write failed.
    sink: Option<Sink>,
    /// Bytes handed to the writer task.
    queued: u64,
    /// Received, not yet handed over.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// When bytes were last handed over; `None` until the first, which goes at once.
    last_flush: Option<std::time::Instant>,
    committed: bool,
    /// The body is wrong (too long, or hashes to another id): resuming cannot mend it.
    poisoned: bool,
    /// Where the rest comes from if the body is cut.
    source: Option<Arc<dyn Refetch>>,
    pub(super) attempts: Attempts,
    /// Bytes received when the current attempt started.
    attempt_start: u64,
}

impl BlobWriter {
    pub(super) fn new(
        store: &'static BlobStore,
        fill: Arc<Fill>,
        file: File,
        source: Option<Arc<dyn Refetch>>,
    ) -> std::io::Result<BlobWriter> {
        let hasher = ContentHasher::new(&fill.id, fill.size);
        let sink = Sink::start(store, fill.clone(), WriteState { file, hasher })?;
        Ok(BlobWriter {
            store,
            fill,
            sink: Some(sink),
            queued: 0,
            pending: Vec::new(),
            pending_len: 0,
            last_flush: None,
            committed: false,
            poisoned: false,
            source,
            attempts: Attempts::default(),
            attempt_start: 0,
        })
    }

    pub(super) fn id(&self) -> BlobId {
        self.fill.id
    }

    pub(super) fn note_resumed_bytes(&self, n: usize) {
        self.store
            .stats
            .resumed_bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes received so far, written or not: where a resumed body starts.
    pub(super) fn received(&self) -> u64 {
        self.queued + self.pending_len as u64
    }

    /// Hands this fill to a resume task, if it can be mended and attempts remain.
    fn resume(&mut self) -> bool {
        let Some(source) = self.source.clone() else {
            return false;
        };
        if self.poisoned || self.sink.is_none() {
            return false;
        }
        let received = self.received();
        let mut attempts = self.attempts;
        attempts.total += 1;
        if received > self.attempt_start {
            attempts.idle = 0;
        } else {
            attempts.idle += 1;
        }
        if attempts.exhausted() {
            log::warn!(
                "blob {}: upstream body cut after {} bytes; giving up after {} attempts",
                self.fill.id,
                received,
                attempts.total
            );
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let next = BlobWriter {
            store: self.store,
            fill: self.fill.clone(),
            sink: self.sink.take(),
            queued: self.queued,
            pending: std::mem::take(&mut self.pending),
            pending_len: std::mem::take(&mut self.pending_len),
            last_flush: self.last_flush,
            committed: false,
            poisoned: false,
            source: self.source.take(),
            attempts,
            attempt_start: received,
        };
        self.store.note_resume();
        runtime.spawn(resume::resume(next, source));
        true
    }

    fn fail(&self, what: String) -> Box<Error> {
        log::warn!("blob {}: {what}", self.fill.id);
        Error::explain(
            ErrorType::InternalError,
            format!("blob {}: {what}", self.fill.id),
        )
    }

    /// Hands the gathered bytes to the writer task (waiting while it is `IN_FLIGHT` batches
    /// behind).
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| self.fail("write after a failed write".into()))?;
        let len = std::mem::take(&mut self.pending_len) as u64;
        if sink
            .batches
            .send(std::mem::take(&mut self.pending))
            .await
            .is_err()
        {
            // The task stopped at a write error (logged and counted there).
            self.sink = None;
            return Err(self.fail(format!("write to {} failed", self.fill.temp.display())));
        }
        self.queued += len;
        self.last_flush = Some(std::time::Instant::now());
        Ok(())
    }

    /// Waits for the writer task to write everything handed to it.
    async fn drain(&mut self) -> Result<WriteState> {
        let sink = self
            .sink
            .take()
            .ok_or_else(|| self.fail("finish after a failed write".into()))?;
        drop(sink.batches);
        match sink.done.await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => {
                Err(self.fail(format!("write to {} failed: {e}", self.fill.temp.display())))
            }
            Err(_) => Err(self.fail("the write task ended without a result".into())),
        }
    }
}

#[async_trait]
impl HandleMiss for BlobWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let received = self.received() + data.len() as u64;
        if received > self.fill.size {
            self.poisoned = true;
            return Err(self.fail(format!(
                "upstream sent more than the expected {} bytes",
                self.fill.size
            )));
        }
        self.pending_len += data.len();
        self.pending.push(data);
        let due = self.last_flush.is_none_or(|t| t.elapsed() >= FLUSH_AFTER);
        if due || self.pending_len >= FLUSH_BYTES || received == self.fill.size {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.flush().await?;
        if self.queued != self.fill.size {
            return Err(self.fail(format!(
                "body ended after {} of {} bytes",
                self.queued, self.fill.size
            )));
        }
        let st = self.drain().await?;
        let expected = self.fill.id;
        let (temp, dest) = (self.fill.temp.clone(), self.store.layout.blob(&expected));
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<Option<BlobId>> {
            let actual = st.hasher.finish();
            if actual != expected {
                return Ok(Some(actual));
            }
            st.file.sync_all()?;
            std::fs::create_dir_all(dest.parent().expect("blob path has a parent"))?;
            std::fs::rename(&temp, &dest)?;
            // Without it a crash can lose the rename of a blob already served as complete.
            crate::durable::sync_parent(&dest)?;
            Ok(None)
        })
        .await
        .map_err(|e| self.fail(format!("commit task failed: {e}")))?;
        match res {
            Ok(None) => {
                self.committed = true;
                self.store.commit(&self.fill);
                Ok(MissFinishType::Created(self.fill.size as usize))
            }
            Ok(Some(actual)) => {
                self.poisoned = true;
                self.store.note_integrity_failure();
                Err(self.fail(format!("content hashes to {actual}; discarded")))
            }
            Err(e) => {
                self.store.note_write_error(&e);
                Err(self.fail(format!("commit failed: {e}")))
            }
        }
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.fill.tag.as_bytes())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed && !self.resume() {
            self.store.abandon(&self.fill);
        }
    }
}
