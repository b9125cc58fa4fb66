//! Resuming a fill whose upstream body was cut. The writer keeps its temp file, hash state
//! and the bytes it has, and a task asks the origin for the rest (`Range: bytes={received}-`)
//! and writes it through the same checks as any fill. Readers of the fill, the request that
//! started it included, just wait a little longer; they never see the cut.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::HandleMiss;

use super::BlobWriter;

/// Attempts in a row that bring no new byte before a fill is given up.
pub const MAX_IDLE_ATTEMPTS: u32 = 3;
/// Attempts at most, however much each one brings (an origin cutting every response after a
/// few bytes would otherwise be asked forever).
pub const MAX_ATTEMPTS: u32 = 64;

/// Why an origin could not continue a fill. The store only logs it and counts the attempt,
/// so each origin keeps its own typed error behind this.
pub type RefetchError = Box<dyn std::error::Error + Send + Sync>;

/// Where the rest of a blob comes from: the origin the fill was reading.
#[async_trait]
pub trait Refetch: Send + Sync {
    /// The blob's bytes from `offset` to its end.
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError>;
}

/// A body being received.
#[async_trait]
pub trait RefetchBody: Send {
    /// The next piece; `None` at the end.
    async fn chunk(&mut self) -> Result<Option<Bytes>, RefetchError>;
}

/// A fill's origin, carried to the store in the `CacheMeta` extensions.
#[derive(Clone)]
pub struct FillSource(pub Arc<dyn Refetch>);

/// How many times a fill was resumed: in all, and in a row without bringing a byte.
#[derive(Default, Clone, Copy)]
pub(super) struct Attempts {
    pub total: u32,
    pub idle: u32,
}

impl Attempts {
    pub fn exhausted(&self) -> bool {
        self.idle >= MAX_IDLE_ATTEMPTS || self.total >= MAX_ATTEMPTS
    }
}

/// Continues the fill from the bytes the writer has. On a new failure the writer is dropped
/// again, which resumes it again or, once attempts are exhausted, abandons it.
pub(super) async fn resume(mut writer: BlobWriter, source: Arc<dyn Refetch>) {
    let attempt = writer.attempts.total;
    tokio::time::sleep(backoff(writer.attempts.idle)).await;
    let (id, offset) = (writer.id(), writer.received());
    log::info!("blob {id}: upstream body cut after {offset} bytes, resuming (attempt {attempt})");
    let mut body = match source.open(offset).await {
        Ok(b) => b,
        Err(e) => {
            log::warn!("blob {id}: resume failed: {e}");
            return;
        }
    };
    loop {
        match body.chunk().await {
            Ok(Some(data)) => {
                writer.note_resumed_bytes(data.len());
                if writer.write_body(data, false).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("blob {id}: resumed body failed: {e}");
                return;
            }
        }
    }
    if Box::new(writer).finish().await.is_ok() {
        log::info!("blob {id}: resumed after {offset} bytes and committed");
    }
}

/// None after an attempt that brought bytes (a cut connection is usually a passing fault), then
/// 0.2 s, 0.4 s, 0.8 s ... up to 5 s for attempts in a row that brought none.
fn backoff(idle: u32) -> Duration {
    match idle {
        0 => Duration::ZERO,
        n => Duration::from_millis(200 << (n - 1).min(5)).min(Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_only_while_attempts_bring_nothing() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [0, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let give_up = |total, idle| Attempts { total, idle }.exhausted();
        assert!(!give_up(2, 2) && give_up(3, 3) && give_up(MAX_ATTEMPTS, 0));
    }
}
