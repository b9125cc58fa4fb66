//! The Pingora `ProxyHttp` implementation. Each phase is thin: it calls into `hub`,
//! `resolver` or `store`, records the result in [`Ctx`], and maps errors.
//!
//! - `/resolve` GET/HEAD: metadata from the resolver; HEAD is answered here; GET is served from
//!   the blob store, filled from the CDN or Hub URL the metadata names.
//! - Everything else: passed through to the Hub, uncached, with `Link`s made absolute to
//!   hf-edge and `xetHash` dropped from tree listings.

mod coalesce;
mod ctx;
mod limits;
mod refetch;
mod respond;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_cache::lock::CacheKeyLockImpl;
use pingora_cache::trace::Span;
use pingora_cache::Storage;
use pingora_cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};
use pingora_proxy::{range_header_filter, FailToProxy, ProxyHttp, RangeType, Session};

pub use ctx::{Ctx, Target};

use crate::access::{Denied, Policy};
use crate::access_log::{AccessEntry, AccessLog};
use crate::hub::grammar::{self, ApiKind, ResolveRequest, Route};
use crate::hub::headers::{self, FileMeta};
use crate::hub::upstream::{HostClass, Upstream, UpstreamError, Url};
use crate::metrics::{Metrics, UpstreamKind};
use crate::resolver::IdentityKey;
use crate::resolver::{Resolver, DOWNLOAD_URL_TTL};
use crate::snapshots::{ApiSnapshots, Snapshot};
use crate::store::{cache_key, BlobReader, BlobStore, FillSource, RefEntry};

/// Redirects followed on a body request (the metadata request follows its own).
const MAX_BODY_HOPS: usize = 3;
/// Largest tree / paths-info JSON page rewritten in memory (the Hub pages at 1000 entries).
const MAX_JSON_BODY: usize = 32 << 20;
/// Body requests asked again after a failure before any byte was used.
const MAX_BODY_RETRIES: usize = 2;
/// Multipart ranges served at most (as Pingora's default).
pub(crate) const MAX_RANGES: usize = 200;
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct EdgeProxy {
    pub upstream: Arc<Upstream>,
    pub resolver: Arc<Resolver>,
    pub store: &'static BlobStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub lock: &'static CacheKeyLockImpl,
    /// `Bearer {upstream.token}`, for clients that bring no token.
    pub site_auth: Option<HeaderValue>,
    pub max_blob_size: u64,
    pub metrics: Arc<Metrics>,
    pub access: Policy,
    pub snapshots: ApiSnapshots,
    pub access_log: AccessLog,
    pub request_ids: RequestIds,
}

/// Request ids unique across restarts: a per-process prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        RequestIds {
            prefix: (now.as_millis() as u64) << 16 ^ u64::from(std::process::id()),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:012x}-{n:08x}", self.prefix & 0xffff_ffff_ffff)
    }
}

impl EdgeProxy {
    /// The credentials sent upstream, and the repo rules, before anything goes upstream.
    fn admit(&self, req: &RequestHeader, route: &Route) -> Result<Option<HeaderValue>, Denied> {
        let auth = self.access.identify(
            req.headers.get(header::AUTHORIZATION),
            self.site_auth.as_ref(),
        )?;
        let repos = match route {
            Route::Resolve(r) => vec![r.repo.clone()],
            _ => grammar::candidate_repos(req.uri.path()),
        };
        self.access.check_repos(&repos)?;
        Ok(auth)
    }

    /// Resolves a file for a GET or HEAD; on `Ok(None)` a response was already written.
    async fn resolve(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        req: &ResolveRequest,
    ) -> Result<Option<FileMeta>> {
        let raw_path = session.req_header().uri.path().to_string();
        let auth = ctx.auth.clone();
        let mut meta = self.resolver.resolve(req, &raw_path, auth.as_ref()).await;
        // A cached answer whose blob must be fetched needs a fresh signed URL.
        if let Ok(m) = &meta {
            let stored = m.blob.is_some_and(|b| self.store.contains(&b));
            let url_fresh = m.download.is_some() && m.resolved_at.elapsed() < DOWNLOAD_URL_TTL;
            if !stored && !url_fresh && !m.stale {
                meta = self.resolver.refresh(req, &raw_path, auth.as_ref()).await;
            }
        }
        match meta {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.metrics.upstream_error(&e);
                respond::resolve_error(session, &e, &ctx.request_id).await?;
                Ok(None)
            }
        }
    }

    fn target(&self, url: Url) -> Target {
        Target {
            class: self.upstream.classify(&url),
            url,
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.request_ids.next())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err((status, message)) = limits::check(session.req_header()) {
            return respond::error(session, status, message, &ctx.request_id).await;
        }
        let req = session.req_header();
        let route = match grammar::parse(req.uri.path()) {
            Ok(r) => r,
            Err(e) => return respond::error(session, 400, &e.to_string(), &ctx.request_id).await,
        };
        ctx.auth = match self.admit(req, &route) {
            Ok(auth) => auth,
            Err(denied) => return respond::denied(session, &denied, &ctx.request_id).await,
        };
        ctx.public_base = public_base(req);
        ctx.route = Some(route.clone());
        let method = req.method.clone();
        match route {
            Route::Resolve(r) if method == Method::GET || method == Method::HEAD => {
                let Some(meta) = self.resolve(session, ctx, &r).await? else {
                    return Ok(true);
                };
                if method == Method::HEAD {
                    return respond::head(session, &meta, r.file_name(), &ctx.request_id).await;
                }
                let stored = meta.blob.is_some_and(|b| self.store.contains(&b));
                if (meta.download.is_none() || self.upstream.is_offline()) && !stored {
                    let msg = format!("the Hub cannot be reached and {} is not cached", r.path);
                    return respond::error(session, 504, &msg, &ctx.request_id).await;
                }
                ctx.file_name = r.file_name().to_string();
                ctx.target = meta.download.clone().map(|u| self.target(u));
                if stored && self.serve_complete_hit(session, ctx, &meta).await? {
                    return Ok(true);
                }
                ctx.file = Some(meta);
            }
            _ => {
                let pq = req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let keeps_snapshot = method == Method::GET
                    && matches!(route, Route::Api(ApiKind::Tree | ApiKind::Revision));
                if keeps_snapshot {
                    ctx.snapshot_key = Some(pq.clone());
                }
                if self.upstream.is_offline() {
                    if self.serve_snapshot(session, ctx).await? {
                        return Ok(true);
                    }
                    let msg = "hf-edge is offline: the Hub is not contacted and no earlier answer is kept";
                    return respond::error(session, 504, msg, &ctx.request_id).await;
                }
                ctx.target = Some(self.target(Url::on(&self.upstream.hub, &pq)));
            }
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let cacheable = ctx
            .file
            .as_ref()
            .is_some_and(|m| m.blob.is_some() && m.size <= self.max_blob_size);
        if cacheable {
            session
                .cache
                .enable(self.store, Some(self.eviction), None, Some(self.lock), None);
            session
                .cache
                .set_max_file_size_bytes(self.max_blob_size as usize);
        }
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        // Keyed by content address only: the signed URL (which changes hourly) and the repo
        // path never enter the key.
        ctx.file
            .as_ref()
            .and_then(|m| m.blob)
            .map(|b| cache_key(&b))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no blob id for cache key"))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(meta) = ctx.file.clone() else {
            return Ok(true);
        };
        if !session.cache.enabled() {
            return Ok(true);
        }
        // `false` makes Pingora drop this request's cache lock; the response is written here.
        let served = coalesce::serve_from_store(session, ctx, self.store, &meta).await?;
        ctx.cache_result_known = served;
        Ok(served.is_none())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let target = ctx.target.as_ref().ok_or_else(|| {
            // A stale answer whose blob went missing: there is nowhere to fetch it from.
            Error::explain(
                ErrorType::HTTPStatus(504),
                "the Hub cannot be reached and this file is not cached",
            )
        })?;
        match self.upstream.peer(&target.url.origin).await {
            Ok(peer) => Ok(Box::new(peer)),
            Err(e) => Err(upstream_failure(e)),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let target = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream target"))?;
        let uri = target
            .url
            .path_and_query
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid upstream URI"))?;
        upstream_request.set_uri(uri);
        ctx.upstream_sent = Some(std::time::Instant::now());
        upstream_request.insert_header(header::HOST, target.url.origin.host_header())?;
        // Credentials go to the Hub only: never to a CDN host (signed URLs need none).
        upstream_request.remove_header(&header::AUTHORIZATION);
        upstream_request.remove_header(&header::COOKIE);
        if target.class == HostClass::Hub {
            if let Some(auth) = &ctx.auth {
                upstream_request.insert_header(header::AUTHORIZATION, auth.clone())?;
            }
        }
        let rewrites_body = matches!(
            ctx.route,
            Some(Route::Api(
                ApiKind::Tree | ApiKind::PathsInfo | ApiKind::Revision
            ))
        );
        if ctx.file.is_some() || rewrites_body {
            // Blobs are stored as identity bytes; JSON is rewritten as plain text.
            upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let elapsed = ctx.upstream_sent.map(|t| t.elapsed()).unwrap_or_default();
        ctx.upstream_time = Some(elapsed);
        let kind = match ctx.file {
            Some(_) => UpstreamKind::Blob,
            None => UpstreamKind::Api,
        };
        self.metrics
            .upstream_response(kind, resp.status.as_u16(), elapsed);
        if let Some(meta) = &ctx.file {
            if resp.status.is_redirection() {
                return self.follow_body_redirect(resp, ctx);
            }
            let to_cdn = ctx
                .target
                .as_ref()
                .is_some_and(|t| t.class == HostClass::Cdn);
            if to_cdn && matches!(resp.status.as_u16(), 401 | 403 | 410) && !ctx.reresolved {
                // A signed URL that expired (cached metadata outlives it): sign a new one.
                return self.reresolve(session, ctx).await;
            }
            check_body_response(resp, meta)?;
            keep_only_body_headers(resp);
            return Ok(());
        }
        let status = resp.status.as_u16();
        if (status >= 500 || status == 429) && self.snapshot_for(ctx).is_some() {
            // fail_to_proxy answers with the last good answer instead.
            return Error::e_explain(ErrorType::HTTPStatus(status), "upstream failed");
        }
        if let (Some(base), Some(link)) = (&ctx.public_base, resp.headers.get(header::LINK)) {
            if let Ok(v) = link.to_str() {
                let rewritten = headers::rewrite_links(v, &self.upstream.hub, base);
                resp.insert_header(header::LINK, &rewritten)?;
                ctx.snapshot_link = Some(rewritten);
            }
        }
        let json = resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if json
            && resp.status.is_success()
            && matches!(
                ctx.route,
                Some(Route::Api(
                    ApiKind::Tree | ApiKind::PathsInfo | ApiKind::Revision
                ))
            )
        {
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::ETAG);
            ctx.json = Some(Vec::new());
        }
        Ok(())
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let Some(meta) = &ctx.file else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        if resp.status.as_u16() != 200 || headers::content_length(&resp.headers) != Some(meta.size)
        {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        }
        let now = SystemTime::now();
        let mut cache_meta = CacheMeta::new(now + FOREVER, now, 0, 0, resp.clone());
        if let Some(source) = self.fill_source(session, ctx) {
            cache_meta.extensions_mut().insert(source);
        }
        Ok(RespCacheable::Cacheable(cache_meta))
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> RangeType {
        let range = select_range(session.req_header(), resp);
        ctx.body_range = ctx.file.as_ref().and_then(|m| match &range {
            RangeType::None => Some(0..m.size),
            RangeType::Single(r) => Some(r.start as u64..r.end as u64),
            RangeType::Multi(_) | RangeType::Invalid => None,
        });
        range
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(meta) = &ctx.file {
            headers::apply_resolve_headers(resp, meta, &ctx.file_name);
            resp.insert_header(
                "x-hf-edge-cache",
                cache_result(session, ctx).unwrap_or("none"),
            )?;
        }
        // The Hub's own request id, when it sent one, passes through unchanged.
        if resp.headers.get("x-request-id").is_none() {
            resp.insert_header("x-request-id", &ctx.request_id)?;
        }
        Ok(())
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        hit_handler: &mut pingora_cache::HitHandler,
        _is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        let filling = hit_handler
            .as_any()
            .downcast_ref::<BlobReader>()
            .is_some_and(BlobReader::is_filling);
        if filling {
            ctx.cache_result_known = Some("coalesced");
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(buf) = ctx.json.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            if buf.len() + chunk.len() > MAX_JSON_BODY {
                return Error::e_explain(ErrorType::InternalError, "tree listing too large");
            }
            buf.extend_from_slice(&chunk);
        }
        if end_of_stream {
            let raw = std::mem::take(buf);
            let out = match serde_json::from_slice::<serde_json::Value>(&raw) {
                Ok(mut v) => {
                    headers::strip_xet_hash(&mut v);
                    Bytes::from(serde_json::to_vec(&v).expect("JSON value serializes"))
                }
                Err(_) => Bytes::from(raw),
            };
            if let Some(key) = &ctx.snapshot_key {
                let snap = Snapshot {
                    content_type: "application/json".into(),
                    link: ctx.snapshot_link.clone(),
                    body: String::from_utf8_lossy(&out).into_owned(),
                };
                self.snapshots
                    .save(IdentityKey::of(ctx.auth.as_ref()), key, &snap);
            }
            *body = Some(out);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        let (status, message) = failure_response(e);
        if ctx.route.is_some() && e.esource() == &ErrorSource::Upstream {
            self.metrics.upstream_failure(e);
        }
        let resumed = if status > 0 && ctx.file.is_some() {
            self.serve_from_resumed_fill(session, ctx).await
        } else {
            None
        };
        if let Some(label) = resumed {
            ctx.resumed = true;
            ctx.cache_result_known = Some(label);
            return FailToProxy {
                error_code: session.response_written().map_or(0, |r| r.status.as_u16()),
                can_reuse_downstream: false,
            };
        }
        let hub_failed = status == 502 || status == 503 || status == 504 || status == 429;
        if hub_failed && session.response_written().is_none() {
            if let Ok(true) = self.serve_snapshot(session, ctx).await {
                return FailToProxy {
                    error_code: 200,
                    can_reuse_downstream: false,
                };
            }
        }
        // Once the header went out, the only honest signal left is closing the connection
        // before Content-Length is reached.
        if status > 0 && session.response_written().is_none() {
            let _ = respond::error(session, status, &message, &ctx.request_id).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let host = ctx
            .target
            .as_ref()
            .map_or("", |t| t.url.origin.host.as_str());
        let mut e = e.more_context(format!("upstream {host} failed"));
        // A body cut before anything reached the client or the store is simply asked for
        // again; a timeout is not (the client would wait several of them for a 504).
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        // (`miss_handler` panics outside the miss phases.)
        let filling = matches!(
            session.cache.phase(),
            CachePhase::Miss | CachePhase::Expired
        ) && session.cache.miss_handler().is_some();
        let untouched = session.response_written().is_none() && !filling;
        if ctx.file.is_some() && untouched && !timed_out && ctx.body_retries < MAX_BODY_RETRIES {
            ctx.body_retries += 1;
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        // The client got its whole body from the resumed fill.
        ctx.resumed
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let cache = cache_result(session, ctx);
        let sent = session.as_downstream().body_bytes_sent();
        if let (Some(Route::Resolve(r)), Some(meta)) = (&ctx.route, &ctx.file) {
            if status == 200 || status == 206 {
                self.record_ref(r, meta);
            }
            let from_cache = matches!(cache, Some("hit" | "coalesced"));
            self.metrics.sent(from_cache, sent);
            self.metrics
                .upstream_received(session.upstream_body_bytes_received());
        }
        let route = ctx.route.as_ref().map_or("invalid", Route::kind);
        let req = session.req_header();
        let total = ctx.started.elapsed();
        self.metrics
            .request(route, req.method.as_str(), status, cache, total);
        if !self.access_log.enabled() {
            return;
        }
        self.access_log.write(&AccessEntry {
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
            path: req.uri.path(),
            route,
            repo: match &ctx.route {
                Some(Route::Resolve(r)) => Some(r.repo.to_string()),
                _ => None,
            },
            status,
            bytes: sent,
            cache,
            upstream_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            total_ms: total.as_secs_f64() * 1e3,
            error: e.filter(|_| !ctx.resumed).map(|e| e.to_string()),
        });
    }
}

impl EdgeProxy {
    /// Serves a complete blob straight from the store, skipping Pingora's cache phase (its
    /// lock, lookup and meta handling are per-request work a content-addressed hit does not
    /// need). Keeps the eviction manager's LRU order, which Pingora would have updated.
    async fn serve_complete_hit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        meta: &FileMeta,
    ) -> Result<bool> {
        let Some(blob) = meta.blob else {
            return Ok(false);
        };
        ctx.file = Some(meta.clone());
        let Some(served) = coalesce::serve_from_store(session, ctx, self.store, meta).await? else {
            return Ok(false);
        };
        ctx.cache_result_known = Some(served);
        let key = CacheEntryKey::key_only(cache_key(&blob).to_compact());
        self.eviction
            .access(&key, meta.size as usize, SystemTime::now() + FOREVER);
        Ok(true)
    }

    /// Where a fill of this response resumes from if its body is cut.
    fn fill_source(&self, session: &Session, ctx: &Ctx) -> Option<FillSource> {
        let (Some(Route::Resolve(r)), Some(meta), Some(target)) =
            (&ctx.route, &ctx.file, &ctx.target)
        else {
            return None;
        };
        Some(FillSource(Arc::new(refetch::UpstreamRefetch {
            upstream: self.upstream.clone(),
            resolver: self.resolver.clone(),
            target: parking_lot::Mutex::new(target.clone()),
            auth: ctx.auth.clone(),
            request: r.clone(),
            raw_path: session.req_header().uri.path().to_string(),
            blob: meta.blob?,
            size: meta.size,
        })))
    }

    /// After the body request failed: the response from the store instead, where the fill
    /// this request started is resuming (or another request's copy is). Returns the cache
    /// result; `None` when there is nothing there: the fill was given up.
    async fn serve_from_resumed_fill(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Option<&'static str> {
        match session.response_written().map(|r| r.status.as_u16()) {
            None => {
                let meta = ctx.file.clone()?;
                coalesce::serve_from_store(session, ctx, self.store, &meta)
                    .await
                    .ok()
                    .flatten()
            }
            Some(200 | 206) => self.finish_from_fill(session, ctx).await.then_some("miss"),
            Some(_) => None,
        }
    }

    /// Sends the rest of a response whose upstream body was cut after its header went out.
    /// When this fails, closing short of `Content-Length` is the only honest answer left.
    async fn finish_from_fill(&self, session: &mut Session, ctx: &Ctx) -> bool {
        let (Some(meta), Some(range)) = (&ctx.file, &ctx.body_range) else {
            return false;
        };
        let Some(blob) = meta.blob else {
            return false;
        };
        let pos = range.start + session.as_downstream().body_bytes_sent() as u64;
        if pos >= range.end {
            return false;
        }
        let span = Span::inactive().handle();
        let Ok(Some((_, mut body))) = self.store.lookup(&cache_key(&blob), &span).await else {
            return false;
        };
        if body.seek(pos as usize, Some(range.end as usize)).is_err() {
            return false;
        }
        loop {
            match body.read_body().await {
                Ok(Some(chunk)) => {
                    if session
                        .write_response_body(Some(chunk), false)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{}: resumed fill failed: {e}", ctx.request_id);
                    return false;
                }
            }
        }
        session.write_response_body(None, true).await.is_ok()
    }

    /// The last good answer to this API request that this client may be given.
    fn snapshot_for(&self, ctx: &Ctx) -> Option<Snapshot> {
        let key = ctx.snapshot_key.as_deref()?;
        let own = self
            .resolver
            .may_serve_stale(ctx.auth.as_ref())
            .then(|| self.snapshots.load(IdentityKey::of(ctx.auth.as_ref()), key))
            .flatten();
        own.or_else(|| self.snapshots.load(IdentityKey::anonymous(), key))
    }

    /// Answers with the last good answer, marked stale; `false` if there is none.
    async fn serve_snapshot(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(snap) = self.snapshot_for(ctx) else {
            return Ok(false);
        };
        self.metrics
            .revision_lookup(crate::metrics::RevisionLookup::StaleServed);
        let mut resp = ResponseHeader::build(200, Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, snap.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, snap.body.len().to_string())?;
        resp.insert_header("warning", headers::STALE_WARNING)?;
        resp.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(link) = snap.link {
            resp.insert_header(header::LINK, link)?;
        }
        let head = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session
                .write_response_body(Some(Bytes::from(snap.body)), true)
                .await?;
        }
        Ok(true)
    }

    /// Re-resolves the file for a fresh download URL and retries the body request.
    async fn reresolve(&self, session: &Session, ctx: &mut Ctx) -> Result<()> {
        ctx.reresolved = true;
        let Some(Route::Resolve(r)) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "download URL refused");
        };
        let raw = session.req_header().uri.path().to_string();
        let fresh = self.resolver.refresh(&r, &raw, ctx.auth.as_ref()).await;
        let same_blob = |m: &FileMeta| ctx.file.as_ref().is_some_and(|f| f.blob == m.blob);
        match fresh {
            Ok(m) if same_blob(&m) && m.download.is_some() => {
                ctx.target = m.download.clone().map(|u| self.target(u));
                let mut e = Error::explain(ErrorType::HTTPStatus(502), "download URL expired");
                e.set_retry(true);
                Err(e)
            }
            Ok(_) => Error::e_explain(ErrorType::HTTPStatus(502), "the file changed upstream"),
            Err(e) => Error::e_explain(ErrorType::HTTPStatus(502), e.to_string()),
        }
    }

    fn record_ref(&self, r: &ResolveRequest, meta: &FileMeta) {
        let Some(blob) = meta.blob else { return };
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.store.record_ref(&RefEntry {
            repo: r.repo.to_string(),
            revision: r.revision.clone(),
            commit: meta.commit.clone(),
            path: r.path.clone(),
            blob: blob.to_string(),
            size: meta.size,
            time,
        });
    }

    /// A body request that redirects again (the Hub moved the file since the metadata
    /// request): retarget and let Pingora retry the request against the new peer.
    fn follow_body_redirect(&self, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let base = &ctx.target.as_ref().expect("target set with file").url;
        let next = resp
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| base.join(l).ok());
        let next = match next {
            Some(u) if ctx.hops < MAX_BODY_HOPS => u,
            _ => return Error::e_explain(ErrorType::HTTPStatus(502), "upstream redirect loop"),
        };
        let target = self.target(next);
        if target.class == HostClass::Foreign {
            let e = UpstreamError::ForeignRedirect {
                host: target.url.origin.host,
            };
            return Error::e_explain(ErrorType::HTTPStatus(502), e.to_string());
        }
        ctx.target = Some(target);
        ctx.hops += 1;
        let mut e = Error::explain(ErrorType::HTTPStatus(502), "following upstream redirect");
        e.set_retry(true);
        Err(e)
    }
}

/// The range a file response serves (adjusting `resp`'s status and headers), for every path
/// that serves file bodies. RFC 9110 §14.2: a syntactically invalid `Range` is ignored (a
/// full 200), not a 416; 416 is only for a start at or past the end.
pub(crate) fn select_range(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    let range = req.headers.get(header::RANGE).map(|v| v.as_bytes());
    if range.is_some_and(|r| !headers::is_satisfiable_syntax(r)) {
        let _ = resp.insert_header(header::ACCEPT_RANGES, "bytes");
        return RangeType::None;
    }
    range_header_filter(req, resp, Some(MAX_RANGES))
}

/// The cache result label of a file download; `None` when the cache was not involved.
fn cache_result(session: &Session, ctx: &Ctx) -> Option<&'static str> {
    ctx.file.as_ref()?;
    if let Some(served) = ctx.cache_result_known {
        return Some(served);
    }
    Some(match session.cache.phase() {
        CachePhase::Hit => "hit",
        CachePhase::Miss => "miss",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        _ => "bypass",
    })
}

/// RFC 3339 UTC time with milliseconds, for log lines.
fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The body the metadata promised, or a 502: a short or different body must never be stored
/// or passed off as the file.
fn check_body_response(resp: &ResponseHeader, meta: &FileMeta) -> Result<()> {
    let status = resp.status.as_u16();
    let expected = match status {
        200 => headers::content_length(&resp.headers) == Some(meta.size),
        // Only uncacheable files are requested with the client's Range.
        206 => meta.blob.is_none(),
        _ => false,
    };
    if expected {
        Ok(())
    } else {
        Error::e_explain(
            ErrorType::HTTPStatus(502),
            format!(
                "upstream answered {status} with {:?} bytes for a file of {} bytes",
                headers::content_length(&resp.headers),
                meta.size
            ),
        )
    }
}

/// Drops the CDN's own headers (cookies, storage ids, its ETag); hf-edge sets the Hub's.
fn keep_only_body_headers(resp: &mut ResponseHeader) {
    const KEEP: &[header::HeaderName] = &[
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
    ];
    let drop: Vec<header::HeaderName> = resp
        .headers
        .keys()
        .filter(|k| !KEEP.contains(k))
        .cloned()
        .collect();
    for k in drop {
        resp.remove_header(&k);
    }
}

/// `scheme://host` the client used, for `Link` rewriting.
fn public_base(req: &RequestHeader) -> Option<String> {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let proto = req
        .headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    Some(format!("{proto}://{host}"))
}

fn upstream_failure(e: UpstreamError) -> Box<Error> {
    let mut err = Error::explain(ErrorType::HTTPStatus(e.status()), e.to_string());
    err.esource = ErrorSource::Upstream;
    err
}

/// The status and message for a failed request; 0 when the client is already gone.
fn failure_response(e: &Error) -> (u16, String) {
    use ErrorType::*;
    let status = match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    };
    let message = match (status, e.context.as_ref()) {
        (502, None) => "upstream failed".to_string(),
        (504, _) => "upstream timed out".to_string(),
        (_, Some(ctx)) => ctx.as_str().to_string(),
        (_, None) => e.etype().as_str().to_string(),
    };
    (status, message)
}
