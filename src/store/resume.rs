//! Where a fill's bytes come from, and how often a cut body is asked for again. The fill task
//! (`fill.rs`) opens its origin at offset 0, and after a cut at the first byte it lacks
//! (`Range: bytes={received}-`), keeping its temp file, hash state and bytes; its readers, the
//! request that started it included, just wait a little longer and never see the cut.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Attempts in a row that bring no new byte before a fill is given up.
pub const MAX_IDLE_ATTEMPTS: u32 = 3;
/// Attempts at most, however much each one brings (an origin cutting every response after a
/// few bytes would otherwise be asked forever).
pub const MAX_ATTEMPTS: u32 = 64;

/// Why an origin could not give a fill its bytes. The store logs it and counts the attempt;
/// a failure before the fill's first byte goes to its readers ([`super::FillFailure`]), who
/// may downcast it to the origin's own typed error.
pub type RefetchError = Box<dyn std::error::Error + Send + Sync>;

/// Where a blob's bytes come from: its origin, asked from any offset.
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

/// None after an attempt that brought bytes (a cut connection is usually a passing fault), then
/// 0.2 s, 0.4 s, 0.8 s ... up to 5 s for attempts in a row that brought none.
pub(super) fn backoff(idle: u32) -> Duration {
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
