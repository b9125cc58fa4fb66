//! The fill task: one per blob being filled, owned by the store rather than by any request.
//! It reads the origin at the origin's pace into the temp file (bounded by the disk, never by
//! a client socket), resumes a cut body from the first byte it lacks, and commits or
//! abandons the fill. Requests, the one that started the fill included, only read the temp
//! file, so a client that stops reading stalls nobody but itself.
//!
//! A fill left without readers keeps going for a grace period ([`ORPHAN_GRACE`] by default: a
//! client's next range, or its retry after a timeout, usually comes within it); if it is still
//! without readers then, it is finished when at least half of it was received (the rest costs
//! less WAN than what was fetched, and the next client gets a hit) and cancelled otherwise,
//! which frees its reservation under `cache.max_size` and its place under `cache.max_fills`.

use std::sync::Arc;
use std::time::Duration;

use super::object_store::TierFill;
use super::resume::{backoff, Attempts, Refetch};
use super::write::{FillWriter, WriteError};
use super::{BlobStore, Fill, FillFailure, Progress};

/// How long a fill without readers keeps going before its fate is decided, by default.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// How a fill ended without committing.
enum End {
    /// Given up: its readers fail.
    Failed(FillFailure),
    /// Cancelled by the orphan policy (already out of the fills map).
    Orphaned,
}

/// Runs a fill to its end: committed, abandoned or cancelled.
pub(super) async fn run(
    store: &'static BlobStore,
    fill: Arc<Fill>,
    file: std::fs::File,
    source: Arc<dyn Refetch>,
) {
    // A task dropped mid-fill (the runtime shutting down) still tells its readers.
    let mut guard = Unfinished(Some((store, fill.clone())));
    let (mut writer, replace, mixed) = match &store.tier {
        None => (FillWriter::new(store, fill.clone(), file), false, false),
        Some(tier) => match tier.fill(store, &fill, file).await {
            TierFill::Origin {
                writer,
                replace,
                mixed,
            } => (writer, replace, mixed),
            TierFill::Committed => {
                guard.0 = None;
                store.commit(&fill);
                return;
            }
            TierFill::Failed(e) => {
                guard.0 = None;
                store.abandon(&fill, store.write_failure(&fill, e));
                return;
            }
        },
    };
    let end = match receive(store, &fill, &mut writer, source.as_ref()).await {
        Ok(()) => match writer.commit().await {
            Ok(()) => {
                guard.0 = None;
                store.commit(&fill);
                log::debug!("blob {}: filled and committed", fill.id);
                if let Some(tier) = &store.tier {
                    tier.upload(fill.id, fill.size, store.layout.blob(&fill.id), replace);
                }
                return;
            }
            Err(e) => {
                if let (Some(tier), true, WriteError::Mismatch(_)) = (&store.tier, mixed, &e) {
                    // Which of the object's head or the Hub's tail was wrong is unknown: the
                    // object is not read again until a Hub fill replaced it.
                    tier.distrust(fill.id, &e.to_string());
                }
                End::Failed(store.write_failure(&fill, e))
            }
        },
        Err(end) => end,
    };
    guard.0 = None;
    match end {
        End::Failed(failure) => store.abandon(&fill, failure),
        End::Orphaned => store.cancel_orphan(&fill),
    }
}

/// Abandons the fill when dropped armed: the fill task ended without deciding its fate.
struct Unfinished(Option<(&'static BlobStore, Arc<Fill>)>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((store, fill)) = self.0.take() {
            store.abandon(&fill, FillFailure::Local("the fill task ended".into()));
        }
    }
}

/// Receives the (rest of the) body into `writer`, from `writer.received()` (where the object
/// store's body was cut, if it was), resuming cut bodies while attempts remain.
async fn receive(
    store: &'static BlobStore,
    fill: &Arc<Fill>,
    writer: &mut FillWriter,
    source: &dyn Refetch,
) -> Result<(), End> {
    let (id, size) = (fill.id, fill.size);
    let mut attempts = Attempts::default();
    let mut attempt_start = 0;
    let grace = store.policy.orphan_grace;
    let orphaned = orphaned(fill, grace);
    tokio::pin!(orphaned);
    // Off once the policy decided to finish this fill whatever happens to its readers.
    let mut watching = true;
    loop {
        let offset = writer.received();
        let opened = source.open(offset).await;
        let first = attempts.total == 0;
        // Readers not yet answered get the origin's error; once they were, a failed open is
        // a cut like any other.
        let unanswered = first && *fill.progress.borrow() == Progress::Opening;
        let resumed = !first || offset > 0;
        match opened {
            Err(e) if unanswered => return Err(End::Failed(FillFailure::Upstream(Arc::from(e)))),
            Err(e) => log::warn!("blob {id}: resume failed: {e}"),
            Ok(mut body) => {
                fill.open();
                loop {
                    let flush_due = writer.flush_due();
                    tokio::select! {
                        () = &mut orphaned, if watching => {
                            if finish_orphan(fill, writer.received(), grace) {
                                watching = false;
                            } else if store.detach_orphan(fill) {
                                return Err(End::Orphaned);
                            } else {
                                // A reader came back just now.
                                orphaned.set(self::orphaned(fill, grace));
                            }
                        }
                        () = sleep_until(flush_due), if flush_due.is_some() => {
                            if let Err(e) = writer.flush_pending().await {
                                return Err(End::Failed(store.write_failure(fill, e)));
                            }
                        }
                        chunk = body.chunk() => match chunk {
                            Ok(Some(data)) => {
                                if resumed {
                                    store.note_resumed_bytes(data.len());
                                }
                                if let Err(e) = writer.write(data).await {
                                    return Err(End::Failed(store.write_failure(fill, e)));
                                }
                                // Whole: no need to wait for the origin to end the body.
                                if writer.received() == size {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                log::info!("blob {id}: upstream body failed: {e}");
                                break;
                            }
                        },
                    }
                }
            }
        }
        let received = writer.received();
        if received == size {
            return Ok(());
        }
        // Cut (or the resume could not even start): ask again from the first missing byte.
        attempts.total += 1;
        if received > attempt_start {
            attempts.idle = 0;
        } else {
            attempts.idle += 1;
        }
        if attempts.exhausted() {
            log::warn!(
                "blob {id}: upstream body cut after {received} bytes; giving up after {} attempts",
                attempts.total
            );
            let why = format!("the upstream body was cut after {received} of {size} bytes");
            return Err(End::Failed(FillFailure::Upstream(Arc::new(GaveUp(why)))));
        }
        store.note_resume();
        attempt_start = received;
        tokio::time::sleep(backoff(attempts.idle)).await;
        log::info!(
            "blob {id}: upstream body cut after {received} bytes, resuming (attempt {})",
            attempts.total
        );
    }
}

/// A cut body that attempts no longer mend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GaveUp(String);

/// Resolves once the fill has been without readers for `grace`.
async fn orphaned(fill: &Fill, grace: Duration) {
    let mut readers = fill.readers.subscribe();
    loop {
        if readers.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        let back = tokio::time::timeout(grace, readers.wait_for(|n| *n > 0)).await;
        if back.is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// The orphan policy: finish a fill of which at least half was received.
fn finish_orphan(fill: &Fill, received: u64, grace: Duration) -> bool {
    let finish = received.saturating_mul(2) >= fill.size;
    log::info!(
        "blob {}: no reader for {grace:?} at {received} of {} bytes: {}",
        fill.id,
        fill.size,
        if finish {
            "finishing it"
        } else {
            "cancelling it"
        }
    );
    finish
}
