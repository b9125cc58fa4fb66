//! Prometheus metrics (`hf_edge_*`) and the operator endpoints on `metrics.listen`:
//! `/metrics`, `/healthz` (alive) and `/readyz` (store writable, upstream reachable).
//!
//! Label values are bounded sets (route kinds, methods, status classes, cache results): no
//! token, client address or file path ever becomes a label. Every known label combination of
//! the small families is created at zero, so dashboards and alerts see a series from the
//! first scrape rather than "no data".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::hub::upstream::Upstream;
use crate::resolver::ResolveError;
use crate::store::BlobStore;

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

const CACHE_RESULTS: [&str; 5] = ["hit", "miss", "coalesced", "stale", "bypass"];
const UPSTREAM_CAUSES: [&str; 5] = ["connect", "timeout", "reset", "5xx", "429"];
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
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
                "Client requests by route kind, method and status class.",
                &["route", "method", "status"],
            )?,
            request_duration: histogram(
                "hf_edge_request_duration_seconds",
                "Client request duration, from request to the last byte sent.",
                &["route", "cache"],
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
            registry,
        };
        for r in CACHE_RESULTS {
            m.cache_lookups.with_label_values(&[r]);
        }
        for s in ["cache", "upstream"] {
            m.sent_bytes.with_label_values(&[s]);
        }
        for c in UPSTREAM_CAUSES {
            m.upstream_errors.with_label_values(&[c]);
        }
        for r in ["fresh", "refreshed", "stale_served"] {
            m.revision_lookups.with_label_values(&[r]);
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
    pub fn request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        cache: Option<&str>,
        duration: Duration,
    ) {
        self.requests
            .with_label_values(&[route, method_label(method), status_class(status)])
            .inc();
        self.request_duration
            .with_label_values(&[route, cache.unwrap_or("none")])
            .observe(duration.as_secs_f64());
        if let Some(c) = cache {
            self.cache_lookups.with_label_values(&[c]).inc();
        }
    }

    /// File body bytes sent to a client; `from_cache` for hits.
    pub fn sent(&self, from_cache: bool, bytes: usize) {
        let source = if from_cache { "cache" } else { "upstream" };
        self.sent_bytes
            .with_label_values(&[source])
            .inc_by(bytes as u64);
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
            429 => self.upstream_errors.with_label_values(&["429"]).inc(),
            500..=599 => self.upstream_errors.with_label_values(&["5xx"]).inc(),
            _ => {}
        }
    }

    /// A metadata request that got no usable answer (a Hub error status is counted by
    /// [`Metrics::upstream_response`]).
    pub fn upstream_error(&self, e: &ResolveError) {
        if let ResolveError::Upstream(u) = e {
            let cause = if u.status() == 504 {
                "timeout"
            } else {
                "connect"
            };
            self.upstream_errors.with_label_values(&[cause]).inc();
        }
    }

    pub fn upstream_failure(&self, e: &pingora::Error) {
        use pingora::ErrorType::*;
        let cause = match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => "timeout",
            ConnectionClosed | ReadError | WriteError => "reset",
            _ => "connect",
        };
        self.upstream_errors.with_label_values(&[cause]).inc();
    }

    pub fn revision_lookup(&self, r: RevisionLookup) {
        let label = match r {
            RevisionLookup::Fresh => "fresh",
            RevisionLookup::Refreshed => "refreshed",
            RevisionLookup::StaleServed => "stale_served",
        };
        self.revision_lookups.with_label_values(&[label]).inc();
    }

    fn gather(&self, store: &BlobStore) -> Vec<u8> {
        let s = &store.stats;
        self.store_bytes.set(s.bytes.load(Ordering::Relaxed) as i64);
        self.store_objects
            .set(s.objects.load(Ordering::Relaxed) as i64);
        // The store counts with atomics; bring the counters up to them.
        let catch_up = |c: &IntCounter, v: &std::sync::atomic::AtomicU64| {
            c.inc_by(v.load(Ordering::Relaxed).saturating_sub(c.get()));
        };
        catch_up(&self.store_evictions, &s.evictions);
        catch_up(&self.store_evicted_bytes, &s.evicted_bytes);
        catch_up(&self.store_integrity_failures, &s.integrity_failures);
        catch_up(&self.store_write_errors, &s.write_errors);
        catch_up(&self.upstream_resumes, &s.resumes);
        catch_up(&self.upstream_resumed_bytes, &s.resumed_bytes);
        catch_up(&self.store_abandoned_fills, &s.abandoned_fills);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of metrics");
        out
    }
}

/// The HTTP app on `metrics.listen`.
pub struct OpsApp {
    pub metrics: Arc<Metrics>,
    pub store: &'static BlobStore,
    pub upstream: Arc<Upstream>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("valid response")
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

impl OpsApp {
    async fn readiness(&self) -> Response<Vec<u8>> {
        let probe = self.store.layout().root().join("tmp/.ready-probe");
        let store = tokio::task::spawn_blocking(move || {
            std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let hub = &self.upstream.hub;
        let upstream = if self.upstream.is_offline() {
            Ok(())
        } else {
            let addr = (hub.host.clone(), hub.port);
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_string()),
            }
        };
        let ready = store.is_ok() && upstream.is_ok();
        json(
            if ready { 200 } else { 503 },
            serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "store": store.map_or_else(|e| format!("not writable: {e}"), |_| "writable".into()),
                "upstream": match (&upstream, self.upstream.is_offline()) {
                    (_, true) => "offline mode".to_string(),
                    (Ok(()), false) => "reachable".to_string(),
                    (Err(e), false) => format!("unreachable: {e}"),
                },
            }),
        )
    }
}

impl OpsApp {
    /// `GET` shows offline mode; `POST ?enabled=true|false` switches it.
    async fn offline(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == http::Method::POST {
            let wanted = req
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("enabled=")));
            match wanted {
                Some("true") => self.upstream.set_offline(true),
                Some("false") => self.upstream.set_offline(false),
                _ => {
                    return json(
                        400,
                        serde_json::json!({"error": "use POST /admin/offline?enabled=true or ?enabled=false"}),
                    )
                }
            }
            log::warn!(
                "offline mode set to {} via the ops listener",
                self.upstream.is_offline()
            );
        } else if req.method != http::Method::GET {
            return json(405, serde_json::json!({"error": "GET or POST"}));
        }
        json(
            200,
            serde_json::json!({"offline": self.upstream.is_offline()}),
        )
    }
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics.gather(self.store),
            ),
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" => self.readiness().await,
            "/admin/offline" => self.offline(session).await,
            _ => json(
                404,
                serde_json::json!({"error": "not found; try /metrics, /healthz or /readyz"}),
            ),
        }
    }
}
