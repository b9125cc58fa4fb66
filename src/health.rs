//! The Hub's state as operators see it (`/readyz`, the status page, `hf_edge_hub_state`), and
//! readiness, which never depends on it: serving what is cached through a Hub outage is the
//! cache's job, so a Hub outage must not take hf-edge out of a load balancer.
//!
//! The Hub is probed with a `HEAD /` on the path requests take (same connector, trust roots
//! and timeouts) when `/readyz` or the status page asks, at most once per [`PROBE_EVERY`], in
//! the background: a probe waits up to `upstream.metadata_timeout`, longer than a load balancer
//! waits for `/readyz`. A scrape of `/metrics` does not probe (the load balancer's `/readyz`
//! keeps `hf_edge_hub_state` current), so nothing goes upstream that no client or probe asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::hub::upstream::{Upstream, Url};
use crate::metrics::Metrics;

/// How long a probe's answer stands before the next request for the state starts another.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum HubState {
    /// Not probed yet.
    Unknown,
    /// Answered with a status below 500 (any answer shows it is up, even a 404).
    Reachable { status: u16 },
    /// Answered 5xx or 429.
    Failing { status: u16 },
    /// No answer: the error says why (DNS, connect, TLS, timeout).
    Unreachable { error: String },
    /// Offline mode: the Hub is never contacted.
    Offline,
}

impl HubState {
    pub fn label(&self) -> &'static str {
        match self {
            HubState::Unknown => "unknown",
            HubState::Reachable { .. } => "reachable",
            HubState::Failing { .. } => "failing",
            HubState::Unreachable { .. } => "unreachable",
            HubState::Offline => "offline",
        }
    }

    /// One line for people: the state and what shows it.
    pub fn describe(&self) -> String {
        match self {
            HubState::Unknown => "unknown (being probed)".into(),
            HubState::Reachable { status } => format!("reachable (HTTP {status})"),
            HubState::Failing { status } => format!("failing (HTTP {status})"),
            HubState::Unreachable { error } => format!("unreachable: {error}"),
            HubState::Offline => "offline mode: never contacted".into(),
        }
    }

    fn of_status(status: u16) -> HubState {
        match status {
            429 | 500..=599 => HubState::Failing { status },
            _ => HubState::Reachable { status },
        }
    }
}

/// The Hub's last probed state, refreshed in the background when asked for after
/// [`PROBE_EVERY`].
pub struct HubProbe {
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    last: Mutex<(Option<Instant>, HubState)>,
    probing: AtomicBool,
}

impl HubProbe {
    pub fn new(upstream: Arc<Upstream>, metrics: Arc<Metrics>) -> Arc<HubProbe> {
        Arc::new(HubProbe {
            upstream,
            metrics,
            last: Mutex::new((None, HubState::Unknown)),
            probing: AtomicBool::new(false),
        })
    }

    /// The state now known, at once; starts a probe if the last is older than
    /// [`PROBE_EVERY`] and none is running.
    pub fn state(self: &Arc<Self>) -> HubState {
        if self.upstream.is_offline() {
            self.metrics.set_hub_state(HubState::Offline.label());
            return HubState::Offline;
        }
        let (at, state) = self.last.lock().clone();
        let stale = at.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if stale && !self.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                let found = this.probe().await;
                this.metrics.set_hub_state(found.label());
                *this.last.lock() = (Some(Instant::now()), found);
                this.probing.store(false, Ordering::Release);
            });
        }
        // Offline mode may have just been switched off: report what was last seen of the Hub.
        self.metrics.set_hub_state(state.label());
        state
    }

    async fn probe(&self) -> HubState {
        let url = Url::on(&self.upstream.hub, "/");
        match self.upstream.head(&url, None).await {
            Ok(resp) => HubState::of_status(resp.status.as_u16()),
            Err(e) => HubState::Unreachable {
                error: e.to_string(),
            },
        }
    }
}

/// Whether hf-edge can serve: its store is writable (a config is loaded, or nothing would be
/// running to ask). The Hub's state is reported beside it, never part of it.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: String,
    pub config: &'static str,
    pub hub: HubState,
    pub hub_detail: String,
}

pub fn readiness(store: Result<(), std::io::Error>, hub: HubState) -> Readiness {
    Readiness {
        ready: store.is_ok(),
        store: store.map_or_else(|e| format!("not writable: {e}"), |_| "writable".into()),
        config: "loaded",
        hub_detail: hub.describe(),
        hub,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_outage_never_makes_the_edge_unready() {
        let down = HubState::Unreachable {
            error: "connect refused".into(),
        };
        let r = readiness(Ok(()), down.clone());
        assert!(r.ready);
        assert_eq!(r.hub, down);
        assert!(readiness(Ok(()), HubState::of_status(503)).ready);
        let r = readiness(Err(std::io::Error::other("read-only")), HubState::Offline);
        assert!(!r.ready);
        assert_eq!(r.store, "not writable: read-only");
    }

    #[test]
    fn any_answer_below_500_shows_the_hub_is_up() {
        assert_eq!(HubState::of_status(404).label(), "reachable");
        assert_eq!(HubState::of_status(200).label(), "reachable");
        assert_eq!(HubState::of_status(429).label(), "failing");
        assert_eq!(HubState::of_status(502).label(), "failing");
    }
}
