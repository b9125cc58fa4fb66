//! Filling a blob: the body streams into a temp file while it is hashed; `finish` checks the
//! size and the content address, fsyncs, and renames the file into place. A writer dropped
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

/// The temp file and hash state, moved into blocking tasks and back.
struct WriteState {
    file: File,
    hasher: ContentHasher,
}

/// Body bytes gathered before one blocking write: Pingora hands the body over in 64 KiB
/// pieces, and a blocking-pool round trip per piece serialises the whole fill on hand-offs.
const FLUSH_BYTES: usize = 1 << 20;
/// ... but readers never wait longer than this for bytes that have arrived (a slow upstream
/// would otherwise hold them back until a whole batch gathered).
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

pub struct BlobWriter {
    store: &'static BlobStore,
    fill: Arc<Fill>,
    state: Option<WriteState>,
    /// Bytes written to the temp file (and visible to readers).
    written: u64,
    /// Received, not yet written.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// When bytes last became visible; `None` until the first, which goes out at once.
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
    ) -> BlobWriter {
        let hasher = ContentHasher::new(&fill.id, fill.size);
        BlobWriter {
            store,
            fill,
            state: Some(WriteState { file, hasher }),
            written: 0,
            pending: Vec::new(),
            pending_len: 0,
            last_flush: None,
            committed: false,
            poisoned: false,
            source,
            attempts: Attempts::default(),
            attempt_start: 0,
        }
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
        self.written + self.pending_len as u64
    }

    /// Hands this fill to a resume task, if it can be mended and attempts remain.
    fn resume(&mut self) -> bool {
        let Some(source) = self.source.clone() else {
            return false;
        };
        if self.poisoned || self.state.is_none() {
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
            state: self.state.take(),
            written: self.written,
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

    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut WriteState) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut st = self
            .state
            .take()
            .ok_or_else(|| self.fail("write after a failed write".into()))?;
        let (st, res) = tokio::task::spawn_blocking(move || {
            let r = f(&mut st);
            (st, r)
        })
        .await
        .map_err(|e| self.fail(format!("write task failed: {e}")))?;
        self.state = Some(st);
        res.map_err(|e| {
            self.store.note_write_error(&e);
            self.fail(format!("write to {} failed: {e}", self.fill.temp.display()))
        })
    }
}

impl BlobWriter {
    /// Writes and hashes the gathered bytes in one blocking call, then lets readers see them.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.pending);
        let len = std::mem::take(&mut self.pending_len) as u64;
        self.blocking(move |st| {
            for c in &chunks {
                st.file.write_all(c)?;
                st.hasher.update(c);
            }
            Ok(())
        })
        .await?;
        self.written += len;
        self.last_flush = Some(std::time::Instant::now());
        self.fill
            .progress
            .send_replace(Progress::Written(self.written));
        Ok(())
    }
}

#[async_trait]
impl HandleMiss for BlobWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let received = self.written + (self.pending_len + data.len()) as u64;
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
        if self.written != self.fill.size {
            return Err(self.fail(format!(
                "body ended after {} of {} bytes",
                self.written, self.fill.size
            )));
        }
        let st = self
            .state
            .take()
            .ok_or_else(|| self.fail("finish after a failed write".into()))?;
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
