//! The Hub's state as operators see it (`/readyz`, the status page, `hf_edge_hub_state`), and
//! readiness, which never depends on it: serving what is cached through a Hub outage is the
//! cache's job, so a Hub outage must not take hf-edge out of a load balancer.
//!
//! The Hub is probed with a `HEAD /` on the path requests take (same connector, trust roots
//! and timeouts) when `/readyz` or the status page asks, at most once per [`PROBE_EVERY`], in
//! the background: a probe waits up to `upstream.metadata_timeout`, longer than a load balancer
//! waits for `/readyz`. A scrape of `/metrics` does not probe (the load balancer's `/readyz`
//! keeps `hf_edge_hub_state` current), so nothing goes upstream that no client or probe asked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::hub::upstream::Upstream;
use crate::hub::url::Url;
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

/// One mount's upstream and what its last probe found.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamState {
    /// The mount's prefix (`/` for the top-level upstream).
    pub mount: String,
    /// The upstream's origin.
    pub url: String,
    #[serde(flatten)]
    pub state: HubState,
    pub detail: String,
}

/// The mounts' upstreams as configured now: (prefix, upstream) pairs.
pub type Upstreams = Box<dyn Fn() -> Vec<(String, Arc<Upstream>)> + Send + Sync>;

/// Every mount's upstream, each probed in the background when its state is asked for after
/// [`PROBE_EVERY`]. Mounts come and go with reloads: `upstreams` is asked at each ask.
pub struct HubProbe {
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    /// By mount prefix: when last probed, and the answer. Bounded by the prefixes configured.
    last: Mutex<HashMap<String, (Instant, HubState)>>,
    probing: Mutex<HashSet<String>>,
}

impl HubProbe {
    pub fn new(upstreams: Upstreams, metrics: Arc<Metrics>) -> Arc<HubProbe> {
        for (prefix, _) in upstreams() {
            metrics.set_hub_state(&prefix, HubState::Unknown.label());
        }
        Arc::new(HubProbe {
            upstreams,
            metrics,
            last: Mutex::new(HashMap::new()),
            probing: Mutex::new(HashSet::new()),
        })
    }

    /// Every mount's upstream state now known, at once, the top-level one (`/`) first; starts
    /// a probe of each whose last is older than [`PROBE_EVERY`] and that none is running for.
    pub fn states(self: &Arc<Self>) -> Vec<UpstreamState> {
        let mut states: Vec<UpstreamState> = (self.upstreams)()
            .into_iter()
            .map(|(prefix, upstream)| {
                let state = self.state_of(&prefix, &upstream);
                UpstreamState {
                    url: upstream.hub.to_string(),
                    mount: prefix,
                    detail: state.describe(),
                    state,
                }
            })
            .collect();
        states.sort_by_key(|s| s.mount != "/");
        states
    }

    fn state_of(self: &Arc<Self>, prefix: &str, upstream: &Arc<Upstream>) -> HubState {
        if upstream.is_offline() {
            self.metrics
                .set_hub_state(prefix, HubState::Offline.label());
            return HubState::Offline;
        }
        let last = self.last.lock().get(prefix).cloned();
        let stale = last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= PROBE_EVERY);
        if stale && self.probing.lock().insert(prefix.to_string()) {
            let (this, prefix, upstream) = (self.clone(), prefix.to_string(), upstream.clone());
            tokio::spawn(async move {
                let found = probe(&upstream).await;
                this.metrics.set_hub_state(&prefix, found.label());
                this.last
                    .lock()
                    .insert(prefix.clone(), (Instant::now(), found));
                this.probing.lock().remove(&prefix);
            });
        }
        // Offline mode may have just been switched off: report what was last seen of the Hub.
        let state = last.map_or(HubState::Unknown, |(_, s)| s);
        self.metrics.set_hub_state(prefix, state.label());
        state
    }
}

async fn probe(upstream: &Upstream) -> HubState {
    let url = Url::on(&upstream.hub, "/");
    match upstream.head(&url, None).await {
        Ok(resp) => HubState::of_status(resp.status.as_u16()),
        Err(e) => HubState::Unreachable {
            error: e.to_string(),
        },
    }
}

/// Whether hf-edge can serve: its store is writable (a config is loaded, or nothing would be
/// running to ask). The upstreams' states are reported beside it, never part of it.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: String,
    pub config: &'static str,
}

pub fn readiness(store: Result<(), std::io::Error>) -> Readiness {
    Readiness {
        ready: store.is_ok(),
        store: store.map_or_else(|e| format!("not writable: {e}"), |_| "writable".into()),
        config: "loaded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_the_stores() {
        assert!(readiness(Ok(())).ready);
        let r = readiness(Err(std::io::Error::other("read-only")));
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
