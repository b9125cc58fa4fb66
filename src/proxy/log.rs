//! What each request leaves behind: its id, its `hf_edge_requests_*` metrics and its JSON
//! access line (never a token or a signed URL: only the client's own path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use pingora::Error;
use pingora_proxy::Session;

use super::ctx::Ctx;
use crate::access_log::{AccessEntry, AccessLog};
use crate::hub::grammar::Route;
use crate::metrics::Metrics;

/// Request ids unique across restarts: a per-process random prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: rand::random::<u64>() & 0xffff_ffff_ffff,
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:012x}-{n:08x}", self.prefix)
    }
}

/// `logging`: the request's metrics and access line.
pub fn record(
    metrics: &Metrics,
    access_log: &AccessLog,
    session: &Session,
    e: Option<&Error>,
    ctx: &Ctx,
    mount: &str,
) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let download = ctx.download();
    let cache = download.map(|d| d.cache_result());
    let route = ctx.route.as_ref().map_or("invalid", Route::kind);
    let req = session.req_header();
    let total = ctx.started.elapsed();
    metrics.request(mount, route, req.method.as_str(), status, cache, total);
    if !access_log.enabled() {
        return;
    }
    access_log.write(&AccessEntry {
        time: rfc3339(SystemTime::now()),
        request_id: &ctx.request_id,
        upstream_request_id: session
            .response_written()
            .and_then(|r| r.headers.get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .filter(|id| *id != ctx.request_id)
            .map(str::to_string),
        client: session
            .client_addr()
            .map_or_else(String::new, |a| a.to_string()),
        method: req.method.as_str(),
        mount,
        path: req.uri.path(),
        route,
        repo: match &ctx.route {
            Some(Route::Resolve(r)) => Some(r.repo.to_string()),
            Some(Route::LfsObject(o)) => Some(o.repo.to_string()),
            _ => None,
        },
        status,
        bytes: session.as_downstream().body_bytes_sent(),
        cache: cache.map(|c| c.label()),
        upstream_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1e3),
        total_ms: total.as_secs_f64() * 1e3,
        error: e.map(|e| e.to_string()),
    });
}

/// RFC 3339 UTC time with milliseconds, for log lines.
fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_times_are_rfc3339() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 21);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_320_600_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:10:00.123Z");
    }
}
