//! Prometheus metrics (`hf_edge_*`): the families, their label sets, and the text exposition.
//! A leaf: it knows no other hf-edge module; callers pass the label enums below and plain
//! numbers (the endpoints that serve it are in [`crate::ops`]).
//!
//! Label values are bounded sets (route kinds, methods, status classes, cache results): no
//! token, client address or file path ever becomes a label. Every known label combination of
//! the small families is created at zero, so dashboards and alerts see a series from the
//! first scrape rather than "no data".

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Where an upstream request went, for `hf_edge_upstream_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    Metadata,
    Blob,
    Api,
}

impl UpstreamKind {
    fn label(self) -> &'static str {
        match self {
            UpstreamKind::Metadata => "metadata",
            UpstreamKind::Blob => "blob",
            UpstreamKind::Api => "api",
        }
    }
}

/// How a branch/tag → commit question was answered.
#[derive(Debug, Clone, Copy)]
pub enum RevisionLookup {
    /// From the revision cache, within `revision_ttl`.
    Fresh,
    /// Asked the Hub.
    Refreshed,
    /// The Hub could not be asked; answered from what was known before.
    StaleServed,
}

/// How a file download's body was found: the `cache` label of metrics and access lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// A complete blob in the store.
    Hit,
    /// Fetched upstream by this request's fill.
    Miss,
    /// Read from a fill another request started.
    Coalesced,
    Stale,
    /// Not cacheable (over `max_size`, no content address, or the fill could not start).
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Coalesced,
        CacheResult::Stale,
        CacheResult::Bypass,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
        }
    }

    /// Bytes served this way came from the store, not from upstream.
    pub fn from_store(self) -> bool {
        matches!(self, CacheResult::Hit | CacheResult::Coalesced)
    }
}

/// Why an upstream request got no usable answer, for `hf_edge_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCause {
    Connect,
    Timeout,
    Reset,
    Status5xx,
    TooManyRequests,
}

impl UpstreamCause {
    const ALL: [UpstreamCause; 5] = [
        UpstreamCause::Connect,
        UpstreamCause::Timeout,
        UpstreamCause::Reset,
        UpstreamCause::Status5xx,
        UpstreamCause::TooManyRequests,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamCause::Connect => "connect",
            UpstreamCause::Timeout => "timeout",
            UpstreamCause::Reset => "reset",
            UpstreamCause::Status5xx => "5xx",
            UpstreamCause::TooManyRequests => "429",
        }
    }
}

/// The store's own counters at one moment (it counts with atomics, these families follow).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCounts {
    pub bytes: u64,
    pub objects: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub integrity_failures: u64,
    pub write_errors: u64,
    pub resumes: u64,
    pub resumed_bytes: u64,
    pub abandoned_fills: u64,
    /// Fills in flight, and the bytes they reserve under `cache.max_size`.
    pub fills: u64,
    pub reserved_bytes: u64,
    pub orphans_cancelled: u64,
    /// Requests served uncached because no fill could start: `cache.max_fills` fills were
    /// running, or fills in flight held all of `cache.max_size`.
    pub over_max_fills: u64,
    pub without_room: u64,
    /// Blobs `cache.pin` keeps out of eviction, and their bytes.
    pub pinned_objects: u64,
    pub pinned_bytes: u64,
    /// Hits answered from the memory tier, and the bytes it keeps.
    pub memory_hits: u64,
    pub memory_bytes: u64,
    /// `cache.object_store`'s counters, when one is configured.
    pub tier: Option<TierCounts>,
}

/// The object-store tier's counters at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TierCounts {
    pub uploads_ok: u64,
    pub uploads_failed: u64,
    pub uploads_dropped: u64,
    pub uploads_present: u64,
    pub uploads_pending: u64,
    pub bytes_written: u64,
    pub reads_hit: u64,
    pub reads_miss: u64,
    pub reads_error: u64,
    pub reads_corrupt: u64,
    pub reads_skipped: u64,
    pub bytes_read: u64,
}
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    config_reloads: IntCounterVec,
    request_duration: HistogramVec,
    cache_lookups: IntCounterVec,
    sent_bytes: IntCounterVec,
    upstream_received_bytes: IntCounter,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    revision_lookups: IntCounterVec,
    store_bytes: IntGauge,
    store_objects: IntGauge,
    store_evictions: IntCounter,
    store_evicted_bytes: IntCounter,
    store_integrity_failures: IntCounter,
    store_write_errors: IntCounter,
    upstream_resumes: IntCounter,
    upstream_resumed_bytes: IntCounter,
    store_abandoned_fills: IntCounter,
    api_snapshots_written: IntCounter,
    api_snapshots_dropped: IntCounter,
    api_snapshots_evicted: IntCounter,
    api_snapshots_files: IntGauge,
    api_snapshots_bytes: IntGauge,
    client_connections: IntGauge,
    client_refused: IntCounter,
    client_header_timeouts: IntCounter,
    store_fills: IntGauge,
    store_reserved_bytes: IntGauge,
    store_orphans_cancelled: IntCounter,
    store_over_max_fills: IntCounter,
    store_without_room: IntCounter,
    hub_state: IntGaugeVec,
    store_pinned_objects: IntGauge,
    store_pinned_bytes: IntGauge,
    store_memory_hits: IntCounter,
    store_memory_bytes: IntGauge,
    warm_files: IntCounterVec,
    tier_uploads: IntCounterVec,
    tier_uploads_pending: IntGauge,
    tier_reads: IntCounterVec,
    tier_bytes: IntCounterVec,
    peer_requests: IntCounterVec,
    peer_received_bytes: IntCounter,
    cluster_nodes: IntGaugeVec,
}

/// A peer request of the cluster: sent to a peer for a blob, or served to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRequest {
    /// Sent, and the peer's body opened.
    SentOk,
    /// Sent, and the peer failed or could not be reached (the next source was tried).
    SentFailed,
    /// Served to an authenticated peer.
    Served,
    /// Refused: no or a wrong cluster signature, or a bad request.
    Refused,
}

impl PeerRequest {
    const ALL: [PeerRequest; 4] = [
        PeerRequest::SentOk,
        PeerRequest::SentFailed,
        PeerRequest::Served,
        PeerRequest::Refused,
    ];

    fn labels(self) -> [&'static str; 2] {
        match self {
            PeerRequest::SentOk => ["sent", "ok"],
            PeerRequest::SentFailed => ["sent", "failed"],
            PeerRequest::Served => ["received", "served"],
            PeerRequest::Refused => ["received", "refused"],
        }
    }
}

/// What a warm job did with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmResult {
    /// Fetched into the store (by the job's fill, or a client's it joined).
    Fetched,
    /// In the store already.
    Stored,
    Failed,
}

impl WarmResult {
    pub const ALL: [WarmResult; 3] = [WarmResult::Fetched, WarmResult::Stored, WarmResult::Failed];

    pub fn label(self) -> &'static str {
        match self {
            WarmResult::Fetched => "fetched",
            WarmResult::Stored => "stored",
            WarmResult::Failed => "failed",
        }
    }
}

/// The Hub's states as the operator endpoints report them (`hf_edge_hub_state`).
pub const HUB_STATES: [&str; 5] = ["unknown", "reachable", "failing", "unreachable", "offline"];

/// What the status page shows of the traffic so far (since start).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Traffic {
    /// File download lookups by result (`hit`, `miss`, ...).
    pub lookups: Vec<(&'static str, u64)>,
    /// Lookups answered from the store: hits, and reads of a fill another request started.
    pub from_store: u64,
    /// File body bytes sent from the store: bytes that did not cross the WAN again.
    pub sent_from_cache: u64,
    pub sent_from_upstream: u64,
}

impl Traffic {
    /// The share of lookups answered from the store; `None` before the first.
    pub fn hit_ratio(&self) -> Option<f64> {
        let all: u64 = self.lookups.iter().map(|(_, n)| n).sum();
        (all > 0).then(|| self.from_store as f64 / all as f64)
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

/// Latency buckets from 1 ms to 5 min: metadata answers and multi-GB downloads alike.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

impl Metrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: Registry, max_size: u64) -> prometheus::Result<Metrics> {
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            reg(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            reg(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            reg(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels)?;
            reg(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };

        let build = IntGaugeVec::new(
            Opts::new("hf_edge_build_info", "Build information; always 1."),
            &["version", "commit"],
        )?;
        reg(Box::new(build.clone()))?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("HF_EDGE_GIT_COMMIT")])
            .set(1);
        let max = gauge(
            "hf_edge_store_max_bytes",
            "The configured cache.max_size in bytes.",
        )?;
        max.set(max_size as i64);

        let m = Metrics {
            requests: counter_vec(
                "hf_edge_requests_total",
                "Client requests by mount (its prefix), route kind, method and status class.",
                &["mount", "route", "method", "status"],
            )?,
            config_reloads: counter_vec(
                "hf_edge_config_reloads_total",
                "Config reloads (SIGHUP, POST /admin/reload), by result: ok or error.",
                &["result"],
            )?,
            request_duration: histogram(
                "hf_edge_request_duration_seconds",
                "Client request duration, from request to the last byte sent, by mount.",
                &["mount", "route", "cache"],
            )?,
            cache_lookups: counter_vec(
                "hf_edge_cache_lookups_total",
                "Blob cache lookups of file downloads, by result.",
                &["result"],
            )?,
            sent_bytes: counter_vec(
                "hf_edge_sent_bytes_total",
                "File body bytes sent to clients, by where they came from.",
                &["source"],
            )?,
            upstream_received_bytes: counter(
                "hf_edge_upstream_received_bytes_total",
                "File body bytes received from upstream.",
            )?,
            upstream_requests: counter_vec(
                "hf_edge_upstream_requests_total",
                "Upstream responses by request kind and status class.",
                &["kind", "status"],
            )?,
            upstream_duration: histogram(
                "hf_edge_upstream_request_duration_seconds",
                "Time from sending an upstream request to its response header.",
                &["kind"],
            )?,
            upstream_errors: counter_vec(
                "hf_edge_upstream_errors_total",
                "Upstream failures, by cause.",
                &["cause"],
            )?,
            revision_lookups: counter_vec(
                "hf_edge_revision_lookups_total",
                "Branch and tag resolutions, by how they were answered.",
                &["result"],
            )?,
            store_bytes: gauge("hf_edge_store_bytes", "Bytes of complete blobs on disk.")?,
            store_objects: gauge("hf_edge_store_objects", "Complete blobs on disk.")?,
            store_evictions: counter(
                "hf_edge_store_evictions_total",
                "Blobs evicted to stay under cache.max_size.",
            )?,
            store_evicted_bytes: counter(
                "hf_edge_store_evicted_bytes_total",
                "Bytes evicted to stay under cache.max_size.",
            )?,
            store_integrity_failures: counter(
                "hf_edge_store_integrity_failures_total",
                "Fills discarded because their content did not match its hash.",
            )?,
            store_write_errors: counter(
                "hf_edge_store_write_errors_total",
                "Cache writes that failed (disk full, I/O errors).",
            )?,
            upstream_resumes: counter(
                "hf_edge_upstream_resumes_total",
                "Cut upstream bodies asked for again from the last byte received.",
            )?,
            upstream_resumed_bytes: counter(
                "hf_edge_upstream_resumed_bytes_total",
                "Body bytes received by resumed requests (not in hf_edge_upstream_received_bytes_total).",
            )?,
            store_abandoned_fills: counter(
                "hf_edge_store_abandoned_fills_total",
                "Fills given up (cut beyond resuming, write errors, wrong content); nothing is stored.",
            )?,
            api_snapshots_written: counter(
                "hf_edge_api_snapshots_written_total",
                "API answers kept for outages written to disk (an answer equal to the one kept is not).",
            )?,
            api_snapshots_dropped: counter(
                "hf_edge_api_snapshots_dropped_total",
                "API answers not kept because their writer was behind (the one kept before stays).",
            )?,
            api_snapshots_evicted: counter(
                "hf_edge_api_snapshots_evicted_total",
                "Kept API answers removed to stay under cache.api_snapshots_max_size / _max_files.",
            )?,
            api_snapshots_files: gauge(
                "hf_edge_api_snapshots_files",
                "API answers kept for outages.",
            )?,
            api_snapshots_bytes: gauge(
                "hf_edge_api_snapshots_bytes",
                "Bytes of API answers kept for outages.",
            )?,
            client_connections: gauge(
                "hf_edge_client_connections",
                "Client connections open (bounded by limits.max_connections).",
            )?,
            client_refused: counter(
                "hf_edge_client_connections_refused_total",
                "Client connections over limits.max_connections, answered 503 and closed.",
            )?,
            client_header_timeouts: counter(
                "hf_edge_client_header_timeouts_total",
                "Client requests whose header did not arrive within limits.header_timeout, answered 408 and closed.",
            )?,
            store_fills: gauge("hf_edge_store_fills", "Fills in flight (bounded by cache.max_fills).")?,
            store_reserved_bytes: gauge(
                "hf_edge_store_reserved_bytes",
                "Bytes reserved under cache.max_size by fills in flight.",
            )?,
            store_orphans_cancelled: counter(
                "hf_edge_store_orphaned_fills_cancelled_total",
                "Fills cancelled because no client read them any more and less than half was written.",
            )?,
            store_over_max_fills: counter(
                "hf_edge_store_fills_over_max_total",
                "Requests served uncached because cache.max_fills fills were running.",
            )?,
            store_without_room: counter(
                "hf_edge_store_fills_without_room_total",
                "Requests served uncached because fills in flight held all of cache.max_size.",
            )?,
            hub_state: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "hf_edge_hub_state",
                        "Each mount's upstream at the last probe (1 for the current state): unknown, reachable, failing (5xx/429), unreachable, offline (offline mode). Readiness does not depend on it.",
                    ),
                    &["mount", "state"],
                )?;
                reg(Box::new(g.clone()))?;
                g
            },
            store_pinned_objects: gauge(
                "hf_edge_store_pinned_objects",
                "Blobs cache.pin keeps out of eviction.",
            )?,
            store_pinned_bytes: gauge(
                "hf_edge_store_pinned_bytes",
                "Bytes of the blobs cache.pin keeps out of eviction (bounded by cache.max_pinned).",
            )?,
            store_memory_hits: counter(
                "hf_edge_store_memory_hits_total",
                "Hits answered from the memory tier (cache.memory_size), without a read.",
            )?,
            store_memory_bytes: gauge(
                "hf_edge_store_memory_bytes",
                "Bytes of small blobs the memory tier keeps (bounded by cache.memory_size).",
            )?,
            warm_files: counter_vec(
                "hf_edge_warm_files_total",
                "Files warm jobs handled: fetched into the store, found stored already, or failed.",
                &["result"],
            )?,
            tier_uploads: counter_vec(
                "hf_edge_object_store_uploads_total",
                "Blobs filled from the Hub (or a peer), to upload to cache.object_store: ok, \
                 failed, present (there already), or dropped (max_uploads running and \
                 upload_queue waiting).",
                &["result"],
            )?,
            tier_uploads_pending: gauge(
                "hf_edge_object_store_uploads_pending",
                "Uploads to cache.object_store running or waiting.",
            )?,
            tier_reads: counter_vec(
                "hf_edge_object_store_reads_total",
                "Fills that asked cache.object_store first: hit (served from it), miss, error \
                 (or timeout; mid-body, the Hub fills the rest), corrupt (not the blob: the \
                 wrong size, filled from the Hub; or the wrong hash, the fill fails and the \
                 object is skipped until replaced), skipped (resting after an error, or the \
                 object distrusted: filled from the Hub).",
                &["result"],
            )?,
            tier_bytes: counter_vec(
                "hf_edge_object_store_bytes_total",
                "Blob bytes read from (filled) and written to (uploaded) cache.object_store.",
                &["direction"],
            )?,
            peer_requests: counter_vec(
                "hf_edge_cluster_peer_requests_total",
                "Blob requests between cluster nodes: sent (ok, or failed and the next source tried) and received (served, or refused).",
                &["direction", "result"],
            )?,
            peer_received_bytes: counter(
                "hf_edge_cluster_peer_received_bytes_total",
                "Blob bytes received from other cluster nodes (not counted as upstream bytes).",
            )?,
            cluster_nodes: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "hf_edge_cluster_nodes",
                        "Cluster nodes on the ring (this one included) by the last health check: up or down.",
                    ),
                    &["health"],
                )?;
                reg(Box::new(g.clone()))?;
                g
            },
            registry,
        };
        for r in PeerRequest::ALL {
            m.peer_requests.with_label_values(&r.labels());
        }
        for r in CacheResult::ALL {
            m.cache_lookups.with_label_values(&[r.label()]);
        }
        for r in WarmResult::ALL {
            m.warm_files.with_label_values(&[r.label()]);
        }
        for s in ["cache", "upstream"] {
            m.sent_bytes.with_label_values(&[s]);
        }
        for c in UpstreamCause::ALL {
            m.upstream_errors.with_label_values(&[c.label()]);
        }
        for r in ["fresh", "refreshed", "stale_served"] {
            m.revision_lookups.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            m.config_reloads.with_label_values(&[r]);
        }
        for k in [
            UpstreamKind::Metadata,
            UpstreamKind::Blob,
            UpstreamKind::Api,
        ] {
            m.upstream_duration.with_label_values(&[k.label()]);
            for s in STATUS_CLASSES {
                m.upstream_requests.with_label_values(&[k.label(), s]);
            }
        }
        Ok(m)
    }

    /// A finished client request. `cache` is the lookup result of a file download.
    /// `mount` is a configured mount's prefix (bounded by the config).
    pub fn request(
        &self,
        mount: &str,
        route: &str,
        method: &str,
        status: u16,
        cache: Option<CacheResult>,
        duration: Duration,
    ) {
        self.requests
            .with_label_values(&[mount, route, method_label(method), status_class(status)])
            .inc();
        let cache_label = cache.map_or("none", CacheResult::label);
        self.request_duration
            .with_label_values(&[mount, route, cache_label])
            .observe(duration.as_secs_f64());
        if cache.is_some() {
            self.cache_lookups.with_label_values(&[cache_label]).inc();
        }
    }

    /// A config reload applied (`ok`) or refused (`error`).
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// File body bytes sent to a client; `from_cache` for hits.
    pub fn warm_file(&self, result: WarmResult) {
        self.warm_files.with_label_values(&[result.label()]).inc();
    }

    pub fn sent(&self, from_cache: bool, bytes: usize) {
        let source = if from_cache { "cache" } else { "upstream" };
        self.sent_bytes
            .with_label_values(&[source])
            .inc_by(bytes as u64);
    }

    pub fn peer_request(&self, r: PeerRequest) {
        self.peer_requests.with_label_values(&r.labels()).inc();
    }

    /// The cluster's nodes after a health check.
    pub fn cluster_nodes(&self, up: usize, down: usize) {
        self.cluster_nodes.with_label_values(&["up"]).set(up as i64);
        self.cluster_nodes
            .with_label_values(&["down"])
            .set(down as i64);
    }

    pub fn peer_received(&self, bytes: usize) {
        self.peer_received_bytes.inc_by(bytes as u64);
    }

    pub fn upstream_received(&self, bytes: usize) {
        self.upstream_received_bytes.inc_by(bytes as u64);
    }

    pub fn upstream_response(&self, kind: UpstreamKind, status: u16, elapsed: Duration) {
        self.upstream_requests
            .with_label_values(&[kind.label(), status_class(status)])
            .inc();
        self.upstream_duration
            .with_label_values(&[kind.label()])
            .observe(elapsed.as_secs_f64());
        match status {
            429 => self.upstream_error(UpstreamCause::TooManyRequests),
            500..=599 => self.upstream_error(UpstreamCause::Status5xx),
            _ => {}
        }
    }

    /// An upstream request that got no usable answer (a Hub error status is counted by
    /// [`Metrics::upstream_response`]).
    pub fn upstream_error(&self, cause: UpstreamCause) {
        self.upstream_errors
            .with_label_values(&[cause.label()])
            .inc();
    }

    pub fn revision_lookup(&self, r: RevisionLookup) {
        let label = match r {
            RevisionLookup::Fresh => "fresh",
            RevisionLookup::Refreshed => "refreshed",
            RevisionLookup::StaleServed => "stale_served",
        };
        self.revision_lookups.with_label_values(&[label]).inc();
    }

    pub fn api_snapshot_written(&self) {
        self.api_snapshots_written.inc();
    }

    pub fn api_snapshot_dropped(&self) {
        self.api_snapshots_dropped.inc();
    }

    pub fn api_snapshot_evicted(&self) {
        self.api_snapshots_evicted.inc();
    }

    /// How many API answers are kept, and their bytes.
    pub fn api_snapshots(&self, files: u64, bytes: u64) {
        self.api_snapshots_files.set(files as i64);
        self.api_snapshots_bytes.set(bytes as i64);
    }

    pub fn client_connections(&self, open: usize) {
        self.client_connections.set(open as i64);
    }

    pub fn client_refused(&self) {
        self.client_refused.inc();
    }

    pub fn client_header_timeout(&self) {
        self.client_header_timeouts.inc();
    }

    /// Sets `hf_edge_hub_state` of the mount at `prefix`: 1 for `state` (one of
    /// [`HUB_STATES`]), 0 for the others.
    pub fn set_hub_state(&self, prefix: &str, state: &str) {
        for s in HUB_STATES {
            self.hub_state
                .with_label_values(&[prefix, s])
                .set(i64::from(s == state));
        }
    }

    pub fn traffic(&self) -> Traffic {
        let lookups: Vec<(&'static str, u64)> = CacheResult::ALL
            .iter()
            .map(|r| {
                (
                    r.label(),
                    self.cache_lookups.with_label_values(&[r.label()]).get(),
                )
            })
            .collect();
        let from_store = CacheResult::ALL
            .iter()
            .zip(&lookups)
            .filter(|(r, _)| r.from_store())
            .map(|(_, (_, n))| n)
            .sum();
        let sent = |source: &str| self.sent_bytes.with_label_values(&[source]).get();
        Traffic {
            lookups,
            from_store,
            sent_from_cache: sent("cache"),
            sent_from_upstream: sent("upstream"),
        }
    }

    /// The text exposition, with the store families brought up to `store`.
    pub fn gather(&self, store: StoreCounts) -> Vec<u8> {
        self.store_bytes.set(store.bytes as i64);
        self.store_objects.set(store.objects as i64);
        let catch_up = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        catch_up(&self.store_evictions, store.evictions);
        catch_up(&self.store_evicted_bytes, store.evicted_bytes);
        catch_up(&self.store_integrity_failures, store.integrity_failures);
        catch_up(&self.store_write_errors, store.write_errors);
        catch_up(&self.upstream_resumes, store.resumes);
        catch_up(&self.upstream_resumed_bytes, store.resumed_bytes);
        catch_up(&self.store_abandoned_fills, store.abandoned_fills);
        catch_up(&self.store_orphans_cancelled, store.orphans_cancelled);
        catch_up(&self.store_over_max_fills, store.over_max_fills);
        catch_up(&self.store_without_room, store.without_room);
        self.store_fills.set(store.fills as i64);
        self.store_reserved_bytes.set(store.reserved_bytes as i64);
        self.store_pinned_objects.set(store.pinned_objects as i64);
        self.store_pinned_bytes.set(store.pinned_bytes as i64);
        catch_up(&self.store_memory_hits, store.memory_hits);
        self.store_memory_bytes.set(store.memory_bytes as i64);
        if let Some(t) = store.tier {
            let by = |family: &IntCounterVec, label: &str, v: u64| {
                catch_up(&family.with_label_values(&[label]), v)
            };
            by(&self.tier_uploads, "ok", t.uploads_ok);
            by(&self.tier_uploads, "failed", t.uploads_failed);
            by(&self.tier_uploads, "dropped", t.uploads_dropped);
            by(&self.tier_uploads, "present", t.uploads_present);
            self.tier_uploads_pending.set(t.uploads_pending as i64);
            by(&self.tier_reads, "hit", t.reads_hit);
            by(&self.tier_reads, "miss", t.reads_miss);
            by(&self.tier_reads, "error", t.reads_error);
            by(&self.tier_reads, "corrupt", t.reads_corrupt);
            by(&self.tier_reads, "skipped", t.reads_skipped);
            by(&self.tier_bytes, "read", t.bytes_read);
            by(&self.tier_bytes, "written", t.bytes_written);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of metrics");
        out
    }
}
