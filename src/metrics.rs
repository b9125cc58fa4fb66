//! Prometheus metrics (`hf_edge_*`) and the operator endpoints on `metrics.listen`:
//! `/metrics`, `/healthz` (alive) and `/readyz` (store writable).
//!
//! Label values are bounded sets (route kinds, methods, status classes, cache phases): no
//! token, client address or file path ever becomes a label.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::hub::grammar::Route;
use crate::resolver::ResolveError;
use crate::store::BlobStore;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_responses: IntCounterVec,
    upstream_errors: IntCounterVec,
    store_bytes: IntGauge,
    store_objects: IntGauge,
    store_max_bytes: IntGauge,
    store_write_errors: IntGauge,
    store_integrity_failures: IntGauge,
}

fn status_class(status: u16) -> &'static str {
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

impl Metrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: Registry, max_size: u64) -> prometheus::Result<Metrics> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let build = IntGaugeVec::new(
            Opts::new("hf_edge_build_info", "Build information; always 1."),
            &["version"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            requests: counter(
                "hf_edge_requests_total",
                "Client requests by route kind, method, status class and cache result.",
                &["route", "method", "status", "cache"],
            )?,
            upstream_responses: counter(
                "hf_edge_upstream_responses_total",
                "Responses received from upstream by route kind and status class.",
                &["route", "status"],
            )?,
            upstream_errors: counter(
                "hf_edge_upstream_errors_total",
                "Upstream failures before a usable response, by cause.",
                &["cause"],
            )?,
            store_bytes: gauge("hf_edge_store_bytes", "Bytes of complete blobs on disk.")?,
            store_objects: gauge("hf_edge_store_objects", "Complete blobs on disk.")?,
            store_max_bytes: gauge("hf_edge_store_max_bytes", "The configured cache.max_size.")?,
            store_write_errors: gauge(
                "hf_edge_store_write_errors",
                "Cache writes that failed since start (disk full, I/O errors).",
            )?,
            store_integrity_failures: gauge(
                "hf_edge_store_integrity_failures",
                "Fills discarded because the content did not match its hash, since start.",
            )?,
            registry,
        };
        m.store_max_bytes.set(max_size as i64);
        Ok(m)
    }

    pub fn request(&self, route: &str, method: &str, status: u16, cache: Option<&str>) {
        self.requests
            .with_label_values(&[
                route,
                method_label(method),
                status_class(status),
                cache.unwrap_or("none"),
            ])
            .inc();
    }

    pub fn upstream_response(&self, route: Option<&Route>, status: u16) {
        self.upstream_responses
            .with_label_values(&[route.map_or("other", Route::kind), status_class(status)])
            .inc();
    }

    pub fn upstream_error(&self, e: &ResolveError) {
        let cause = match e {
            ResolveError::Hub { status: 429, .. } => "429",
            ResolveError::Hub { status, .. } if *status >= 500 => "5xx",
            ResolveError::Hub { .. } => return,
            ResolveError::Upstream(u) if u.status() == 504 => "timeout",
            ResolveError::Upstream(_) => "connect",
        };
        self.upstream_errors.with_label_values(&[cause]).inc();
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

    fn gather(&self, store: &BlobStore) -> Vec<u8> {
        let s = &store.stats;
        self.store_bytes.set(s.bytes.load(Ordering::Relaxed) as i64);
        self.store_objects
            .set(s.objects.load(Ordering::Relaxed) as i64);
        self.store_write_errors
            .set(s.write_errors.load(Ordering::Relaxed) as i64);
        self.store_integrity_failures
            .set(s.integrity_failures.load(Ordering::Relaxed) as i64);
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
            "/readyz" => {
                let probe = self.store.layout().root().join("tmp/.ready-probe");
                match std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
                    Ok(()) => json(200, serde_json::json!({"status": "ready"})),
                    Err(e) => json(
                        503,
                        serde_json::json!({"status": "not ready", "error": format!("cache dir not writable: {e}")}),
                    ),
                }
            }
            _ => json(
                404,
                serde_json::json!({"error": "not found; try /metrics, /healthz or /readyz"}),
            ),
        }
    }
}
