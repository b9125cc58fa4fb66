//! `warm.max_rate`: one budget of bytes per second for every fill warm jobs started, so that
//! warming leaves the WAN link to clients. The cap is lifted for a fill as soon as a client
//! reads it too: a client must never wait on the warming pace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::hub::BlobId;
use crate::store::{BlobStore, Refetch, RefetchBody, RefetchError};

/// Idle time a throttled reader may make up for.
const SLACK: Duration = Duration::from_millis(50);

/// The shared budget: bytes are paid for in order, each piece delaying the next.
pub struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes paid for so far have been sent at the cap.
    next: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// How long the caller waits before passing on `n` bytes it just received.
    fn pay(&self, n: usize) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        let mut next = self.next.lock();
        // Idle time is saved up for at most SLACK: enough that the time a fill spends between
        // pieces (writing, hashing) does not slow it below the cap, too little for a burst.
        let start = (*next).max(now - SLACK);
        *next = start + cost;
        *next - now
    }

    /// `source` read at the cap while the warm job is the fill's only reader.
    pub fn wrap(
        self: &Arc<Self>,
        source: Arc<dyn Refetch>,
        store: &'static BlobStore,
        blob: BlobId,
    ) -> Arc<dyn Refetch> {
        Arc::new(Throttled {
            inner: source,
            throttle: self.clone(),
            store,
            blob,
        })
    }
}

struct Throttled {
    inner: Arc<dyn Refetch>,
    throttle: Arc<Throttle>,
    store: &'static BlobStore,
    blob: BlobId,
}

#[async_trait]
impl Refetch for Throttled {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let body = self.inner.open(offset).await?;
        Ok(Box::new(ThrottledBody {
            body,
            throttle: self.throttle.clone(),
            store: self.store,
            blob: self.blob,
            held: None,
        }))
    }
}

struct ThrottledBody {
    body: Box<dyn RefetchBody>,
    throttle: Arc<Throttle>,
    store: &'static BlobStore,
    blob: BlobId,
    /// A piece received and not yet passed on, and when it may be: the fill polls `chunk`
    /// in a `select!` that may drop it mid-wait, and the piece must not be lost then.
    held: Option<(Bytes, tokio::time::Instant)>,
}

#[async_trait]
impl RefetchBody for ThrottledBody {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RefetchError> {
        if self.held.is_none() {
            let Some(data) = self.body.chunk().await? else {
                return Ok(None);
            };
            // The job's own reader is one; any other is a client.
            let wait = match self.store.fill_readers(&self.blob) {
                0 | 1 => self.throttle.pay(data.len()),
                _ => Duration::ZERO,
            };
            self.held = Some((data, tokio::time::Instant::now() + wait));
        }
        if let Some((_, until)) = &self.held {
            tokio::time::sleep_until(*until).await;
        }
        Ok(self.held.take().map(|(data, _)| data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_paid_for_in_order_at_the_cap() {
        let t = Throttle::new(1000);
        let first = t.pay(500);
        let second = t.pay(500);
        assert!(first <= Duration::from_millis(500) && first > Duration::from_millis(450));
        assert!(second > Duration::from_millis(950) && second <= Duration::from_millis(1000));
        // After a long idle time, only SLACK of it is made up for.
        let idle = Throttle {
            bytes_per_sec: 1000,
            next: Mutex::new(Instant::now() - Duration::from_secs(10)),
        };
        let after_idle = idle.pay(500);
        assert!(
            after_idle <= Duration::from_millis(450) && after_idle > Duration::from_millis(400)
        );
    }
}
