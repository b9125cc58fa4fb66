//! `cache.object_store`: a shared S3-compatible tier below the local store (Garage, MinIO,
//! S3). Keys are the local layout's (`{prefix}blobs/sha256/ab/ab12…`), so a blob is stored
//! once for every node sharing the bucket.
//!
//! Reads: a fill first asks the tier. An object of the blob's size streams into the fill's
//! temp file like any origin's body: readers stream it as it is written and are held back
//! from the final byte until the blob is verified and committed. A body cut or stalled for
//! `timeout` is continued from the Hub at the first missing byte, in the same fill (the hash
//! covers the bucket's bytes and the Hub's tail). A whole object that hashes wrong fails the
//! fill like a Hub body that does (its readers are cut, nothing is committed): the object is
//! then distrusted, so the next miss of the blob goes to the Hub and its upload replaces the
//! object. A missing object, an object of the wrong size, an error or no answer within
//! `timeout` fall back to the Hub before any byte is published; after an error the tier rests
//! for [`REST`], so an object store that is down costs one timeout, not one per miss.
//!
//! Writes: a blob filled from the Hub is uploaded after it is committed, in the background,
//! at most `max_uploads` at once with at most `upload_queue` more waiting (beyond, the upload
//! is dropped and counted: a client never waits for the tier), streamed from the local file
//! (a multipart upload for blobs over [`PART`]).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::object_store::aws::{AmazonS3, AmazonS3Builder};
use ::object_store::path::Path as ObjectPath;
use ::object_store::{
    BackoffConfig, ClientOptions, ObjectStore as _, PutPayload, RetryConfig, WriteMultipart,
};
use bytes::BytesMut;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use super::write::{FillWriter, WriteError};
use super::{BlobStore, Fill};
use crate::hub::BlobId;

/// Blobs up to this size are uploaded in one request; bigger ones in parts of this size.
const PART: usize = 8 << 20;
/// Parts of one upload in flight at once (each is held in memory while it is sent).
const PARTS_IN_FLIGHT: usize = 2;
/// How long the tier is not asked after an error: a down object store costs one timeout.
pub const REST: Duration = Duration::from_secs(10);
/// One upload request (a part, or a whole small blob) at most.
const UPLOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Blobs whose object is remembered as wrong, at most (the oldest is forgotten first: its
/// next miss reads the object again and fails again, no worse).
const MAX_DISTRUSTED: usize = 1024;

/// `cache.object_store`, validated.
#[derive(Clone, PartialEq)]
pub struct ObjectStoreSettings {
    /// `http(s)://host[:port]` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub allow_http: bool,
    /// Time to an answer, and between body chunks, before a read falls back to the Hub.
    pub timeout: Duration,
    pub max_uploads: usize,
    pub upload_queue: usize,
}

impl fmt::Debug for ObjectStoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreSettings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .field("max_uploads", &self.max_uploads)
            .field("upload_queue", &self.upload_queue)
            .finish()
    }
}

/// The tier's counters (exported as metrics and on the status page).
#[derive(Default, Debug)]
pub struct TierStats {
    pub uploads_ok: AtomicU64,
    pub uploads_failed: AtomicU64,
    /// Not attempted: `max_uploads` were running and `upload_queue` waiting.
    pub uploads_dropped: AtomicU64,
    /// Not needed: the object was there already.
    pub uploads_present: AtomicU64,
    /// Uploads running or waiting (a gauge).
    pub uploads_pending: AtomicUsize,
    pub bytes_written: AtomicU64,
    /// Fills served from the tier.
    pub reads_hit: AtomicU64,
    pub reads_miss: AtomicU64,
    /// Errors and timeouts.
    pub reads_error: AtomicU64,
    /// Objects that were not the blob: the wrong size (filled from the Hub), or the wrong
    /// hash (the fill fails; the object is distrusted until replaced).
    pub reads_corrupt: AtomicU64,
    /// Not asked: the tier rests after an error, or the blob's object is distrusted.
    pub reads_skipped: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl TierStats {
    pub fn counts(&self) -> crate::metrics::TierCounts {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        crate::metrics::TierCounts {
            uploads_ok: get(&self.uploads_ok),
            uploads_failed: get(&self.uploads_failed),
            uploads_dropped: get(&self.uploads_dropped),
            uploads_present: get(&self.uploads_present),
            uploads_pending: self.uploads_pending.load(Ordering::Relaxed) as u64,
            bytes_written: get(&self.bytes_written),
            reads_hit: get(&self.reads_hit),
            reads_miss: get(&self.reads_miss),
            reads_error: get(&self.reads_error),
            reads_corrupt: get(&self.reads_corrupt),
            reads_skipped: get(&self.reads_skipped),
            bytes_read: get(&self.bytes_read),
        }
    }
}

pub struct ObjectTier {
    /// Reads: no retry (the Hub is the fallback), no overall timeout (a big body takes
    /// long; stalls are caught chunk by chunk).
    reads: AmazonS3,
    /// Uploads: a few retries, each request bounded.
    uploads: AmazonS3,
    prefix: String,
    timeout: Duration,
    slots: Arc<Semaphore>,
    max_pending: usize,
    /// Until when reads are not tried (after an error).
    resting_until: Mutex<Option<Instant>>,
    /// Blobs whose object hashed wrong: not read until an upload replaced it; oldest first.
    distrusted: Mutex<VecDeque<BlobId>>,
    /// `endpoint/bucket/prefix`, for logs and the status page.
    location: String,
    pub stats: TierStats,
}

/// How a fill's attempt at the tier ended.
pub(super) enum TierFill {
    /// Verified and committed.
    Committed,
    /// The local disk failed, or the whole object hashed wrong: the fill fails as any fill
    /// whose write does.
    Failed(WriteError),
    /// The origin fills the rest, from `writer.received()` (0 when the tier gave nothing);
    /// `replace`: the object there is not the blob, upload over it; `mixed`: the writer holds
    /// bytes of the object, so a wrong hash may be the object's fault.
    Origin {
        writer: FillWriter,
        replace: bool,
        mixed: bool,
    },
}

/// Why a read from the tier was given up.
enum ReadFailure {
    Missing,
    /// Not the blob's size.
    Wrong(String),
    /// Error, timeout, stall (before or after bytes were received).
    Unavailable(String),
    Local(WriteError),
}

impl ObjectTier {
    pub fn new(s: &ObjectStoreSettings) -> Result<ObjectTier, String> {
        let build = |options: ClientOptions, retry: RetryConfig| {
            AmazonS3Builder::new()
                .with_endpoint(&s.endpoint)
                .with_bucket_name(&s.bucket)
                .with_region(&s.region)
                .with_access_key_id(&s.access_key_id)
                .with_secret_access_key(&s.secret_access_key)
                // Path-style (`endpoint/bucket/key`): what Garage and MinIO serve by default.
                .with_virtual_hosted_style_request(false)
                // (allow_http is a client option: set on the builder, these would undo it.)
                .with_client_options(
                    options
                        .with_allow_http(s.allow_http)
                        .with_connect_timeout(s.timeout),
                )
                .with_retry(retry)
                .build()
                .map_err(|e| e.to_string())
        };
        let reads = build(
            ClientOptions::new().with_timeout_disabled(),
            RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: s.timeout,
            },
        )?;
        let uploads = build(
            ClientOptions::new().with_timeout(UPLOAD_REQUEST_TIMEOUT),
            RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: UPLOAD_REQUEST_TIMEOUT,
            },
        )?;
        Ok(ObjectTier {
            reads,
            uploads,
            prefix: s.prefix.clone(),
            timeout: s.timeout,
            slots: Arc::new(Semaphore::new(s.max_uploads)),
            max_pending: s.max_uploads + s.upload_queue,
            resting_until: Mutex::new(None),
            distrusted: Mutex::new(VecDeque::new()),
            location: format!(
                "{}/{}/{}",
                s.endpoint.trim_end_matches('/'),
                s.bucket,
                s.prefix
            ),
            stats: TierStats::default(),
        })
    }

    /// `endpoint/bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The object of a blob: the local layout's path under `prefix`.
    pub fn key(&self, id: &BlobId) -> ObjectPath {
        let hex = id.hex();
        ObjectPath::from(format!(
            "{}blobs/{}/{}/{hex}",
            self.prefix,
            id.algo(),
            &hex[..2]
        ))
    }

    fn resting(&self) -> bool {
        let mut until = self.resting_until.lock();
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn rest(&self) {
        *self.resting_until.lock() = Some(Instant::now() + REST);
    }

    /// Fills `fill` from the tier into `file` (its temp file) if the tier holds the blob.
    pub(super) async fn fill(
        &self,
        store: &'static BlobStore,
        fill: &Arc<Fill>,
        file: File,
    ) -> TierFill {
        let mut writer = FillWriter::new(store, fill.clone(), file);
        let distrusted = self.is_distrusted(&fill.id);
        if distrusted || self.resting() {
            self.stats.reads_skipped.fetch_add(1, Ordering::Relaxed);
            return TierFill::Origin {
                writer,
                replace: distrusted,
                mixed: false,
            };
        }
        let key = self.key(&fill.id);
        let failure = match self.read_into(&key, fill, &mut writer).await {
            Ok(()) => match writer.commit().await {
                Ok(()) => {
                    self.stats.reads_hit.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_read
                        .fetch_add(fill.size, Ordering::Relaxed);
                    log::info!("blob {}: filled from the object store", fill.id);
                    return TierFill::Committed;
                }
                Err(WriteError::Io(e)) => return TierFill::Failed(WriteError::Io(e)),
                // Its readers were sent bytes of it: they can only be cut, like a Hub fill's.
                Err(wrong) => {
                    self.distrust(fill.id, &wrong.to_string());
                    return TierFill::Failed(wrong);
                }
            },
            Err(failure) => failure,
        };
        let received = writer.received();
        self.stats.bytes_read.fetch_add(received, Ordering::Relaxed);
        let counter = match &failure {
            ReadFailure::Local(_) => None,
            ReadFailure::Missing => Some(&self.stats.reads_miss),
            ReadFailure::Wrong(why) => {
                log::warn!(
                    "blob {}: object {key} in {} is not the blob ({why}); filling from the Hub",
                    fill.id,
                    self.location
                );
                Some(&self.stats.reads_corrupt)
            }
            ReadFailure::Unavailable(why) => {
                log::warn!(
                    "blob {}: object store {} failed after {received} bytes ({why}); the Hub \
                     fills the rest, not asking the object store for {REST:?}",
                    fill.id,
                    self.location
                );
                self.rest();
                Some(&self.stats.reads_error)
            }
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let ReadFailure::Local(e) = failure {
            return TierFill::Failed(e);
        }
        TierFill::Origin {
            writer,
            replace: matches!(failure, ReadFailure::Wrong(_)),
            mixed: received > 0,
        }
    }

    /// Streams the object into `writer`. Readers are told of the fill's progress once the
    /// object is known to have the blob's size: from then on they stream it.
    async fn read_into(
        &self,
        key: &ObjectPath,
        fill: &Fill,
        writer: &mut FillWriter,
    ) -> Result<(), ReadFailure> {
        let size = fill.size;
        let no_answer = || ReadFailure::Unavailable(format!("no answer within {:?}", self.timeout));
        let got = tokio::time::timeout(self.timeout, self.reads.get(key))
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| match e {
                ::object_store::Error::NotFound { .. } => ReadFailure::Missing,
                e => ReadFailure::Unavailable(e.to_string()),
            })?;
        if got.meta.size != size {
            let why = format!("{} bytes, the blob has {size}", got.meta.size);
            return Err(ReadFailure::Wrong(why));
        }
        fill.open();
        let mut body = got.into_stream();
        loop {
            let chunk = tokio::time::timeout(self.timeout, body.next())
                .await
                .map_err(|_| {
                    ReadFailure::Unavailable(format!("body stalled for {:?}", self.timeout))
                })?;
            match chunk {
                // A short body fails here, not in the commit: the Hub fills the rest.
                None if writer.received() == size => return Ok(()),
                None => {
                    let why = format!("the body ended after {} bytes", writer.received());
                    return Err(ReadFailure::Unavailable(why));
                }
                Some(Err(e)) => return Err(ReadFailure::Unavailable(e.to_string())),
                Some(Ok(data)) => writer.write(data).await.map_err(|e| match e {
                    WriteError::Io(e) => ReadFailure::Local(WriteError::Io(e)),
                    // Longer than it said: what came before this piece may still be right.
                    wrong => ReadFailure::Unavailable(wrong.to_string()),
                })?,
            }
        }
    }

    fn is_distrusted(&self, id: &BlobId) -> bool {
        self.distrusted.lock().contains(id)
    }

    /// Remembers that the blob's object is wrong (its content hashed wrong): its next miss
    /// goes to the Hub, and that fill's upload replaces it.
    pub(super) fn distrust(&self, id: BlobId, why: &str) {
        self.stats.reads_corrupt.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "blob {id}: its object in {} is not the blob ({why}); the next fill goes to the Hub \
             and replaces it",
            self.location
        );
        let mut distrusted = self.distrusted.lock();
        if !distrusted.contains(&id) {
            if distrusted.len() >= MAX_DISTRUSTED {
                distrusted.pop_front();
            }
            distrusted.push_back(id);
        }
    }

    /// Uploads a committed blob in the background, or drops it (counted) when the queue is
    /// full. Unless `replace`, an object already there of the blob's size is kept (another
    /// node uploaded it, or this one filled from a cluster peer that did).
    pub(super) fn upload(&'static self, id: BlobId, size: u64, path: PathBuf, replace: bool) {
        let pending = &self.stats.uploads_pending;
        if pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
            pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.uploads_dropped.fetch_add(1, Ordering::Relaxed);
            log::info!("blob {id}: not uploaded to the object store: the upload queue is full");
            return;
        }
        tokio::spawn(async move {
            let uploaded = match self.slots.acquire().await {
                Ok(_slot) => self.put_file(&id, size, &path, replace).await,
                Err(_) => Err("the upload slots are closed".to_string()),
            };
            pending.fetch_sub(1, Ordering::Relaxed);
            match uploaded {
                Ok(Uploaded::Present) => {
                    self.stats.uploads_present.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Uploaded::Put) => {
                    if replace {
                        self.distrusted.lock().retain(|d| *d != id);
                    }
                    self.stats.uploads_ok.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_written.fetch_add(size, Ordering::Relaxed);
                    log::debug!("blob {id}: uploaded to the object store");
                }
                Err(e) => {
                    self.stats.uploads_failed.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "blob {id}: upload to the object store {} failed: {e}",
                        self.location
                    );
                }
            }
        });
    }

    /// Streams the local file to the object (never more than [`PARTS_IN_FLIGHT`] parts in
    /// memory).
    async fn put_file(
        &self,
        id: &BlobId,
        size: u64,
        path: &std::path::Path,
        replace: bool,
    ) -> Result<Uploaded, String> {
        let key = self.key(id);
        if !replace {
            match self.uploads.head(&key).await {
                Ok(meta) if meta.size == size => return Ok(Uploaded::Present),
                Ok(_) | Err(::object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // Opened once: an eviction meanwhile does not cut the upload short.
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if size <= PART as u64 {
            let data = read_part(&mut file, size as usize, path).await?;
            self.uploads
                .put(&key, PutPayload::from(data.freeze()))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Uploaded::Put);
        }
        let upload = self
            .uploads
            .put_multipart(&key)
            .await
            .map_err(|e| e.to_string())?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut left = size;
        while left > 0 {
            let n = left.min(PART as u64);
            let data = match read_part(&mut file, n as usize, path).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = parts.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = parts.abort().await;
                return Err(e.to_string());
            }
            parts.put(data.freeze());
            left -= n;
        }
        parts.finish().await.map_err(|e| e.to_string())?;
        Ok(Uploaded::Put)
    }
}

/// What an upload did.
enum Uploaded {
    Put,
    /// The object was there already.
    Present,
}

/// Reads exactly `n` bytes of the blob file.
async fn read_part(
    file: &mut tokio::fs::File,
    n: usize,
    path: &std::path::Path,
) -> Result<BytesMut, String> {
    let mut buf = BytesMut::zeroed(n);
    file.read_exact(&mut buf)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distrusted_objects_are_bounded_oldest_forgotten_first() {
        let tier = ObjectTier::new(&ObjectStoreSettings {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            region: "r".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            prefix: String::new(),
            allow_http: true,
            timeout: Duration::from_secs(1),
            max_uploads: 1,
            upload_queue: 1,
        })
        .expect("a tier");
        let id = |n: usize| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(n as u64).to_le_bytes());
            BlobId::Sha256(b)
        };
        for n in 0..=MAX_DISTRUSTED {
            tier.distrust(id(n), "test");
            tier.distrust(id(n), "twice: remembered once");
        }
        assert_eq!(tier.distrusted.lock().len(), MAX_DISTRUSTED);
        assert!(!tier.is_distrusted(&id(0)));
        assert!(tier.is_distrusted(&id(1)) && tier.is_distrusted(&id(MAX_DISTRUSTED)));
        let corrupt = tier.stats.reads_corrupt.load(Ordering::Relaxed);
        assert_eq!(corrupt, 2 * (MAX_DISTRUSTED as u64 + 1));
    }
}
