//! The download flow: `GET /{repo}/resolve/{rev}/{path}`.
//!
//! resolve (metadata from the resolver) → complete hit | coalesced (a fill another request
//! started) | miss (this request starts the store's fill from the CDN or Hub URL the metadata
//! names) — all three read from the store, the miss like any other reader of its fill, so a
//! client that stops reading holds up nobody else. What the store does not fill (no content
//! address, over `cache.max_size`, `cache.max_fills` fills running, no room, no disk) goes
//! through Pingora upstream and back, uncached. The blob is keyed by content address only.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::{CacheEntryKey, EvictionManager};
use pingora_proxy::{RangeType, Session};

use super::ctx::{Ctx, Download, Flow, Target};
use super::refetch::MAX_BODY_HOPS;
use super::verify::BodyCheck;
use super::{from_store, range, refetch, respond};
use crate::access::Policy;
use crate::hub::grammar::ResolveRequest;
use crate::hub::headers::{self, FileMeta};
use crate::hub::status;
use crate::hub::upstream::{HostClass, Upstream, UpstreamError};
use crate::metrics::{CacheResult, Metrics};
use crate::resolver::{Resolver, DOWNLOAD_URL_TTL};
use crate::store::{cache_key, BlobReader, BlobStore, Fetch, FillFailure, RefEntry, Refused};

/// Body requests asked again after a failure before any byte was used.
const MAX_BODY_RETRIES: usize = 2;
/// Stored blobs never expire: a content address names the same bytes forever.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the download flow works with.
pub struct DownloadFlow {
    pub upstream: Arc<Upstream>,
    pub resolver: Arc<Resolver>,
    pub store: &'static BlobStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub max_blob_size: u64,
    pub metrics: Arc<Metrics>,
    /// With `cluster`: blobs this node does not own are filled from their owner.
    pub peering: Option<super::Peering>,
}

impl DownloadFlow {
    /// `request_filter` for a file: resolves it, answers a `HEAD`, a hit or the store's fill
    /// at once (`true`), or records the download for Pingora's phases (uncached).
    pub async fn start(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        request: ResolveRequest,
        policy: &Policy,
    ) -> Result<bool> {
        let Some((meta, stored)) = self.resolve(session, ctx, &request).await? else {
            return Ok(true);
        };
        // A renamed or transferred repo: the rules hold for where the Hub sent us too.
        if let Some(moved) = &meta.moved_to {
            if let Err(denied) = policy.check_repos(std::slice::from_ref(moved)) {
                return respond::refusal(session, &denied.into(), &ctx.request_id).await;
            }
        }
        let file_name = request.file_name().to_string();
        if session.req_header().method == http::Method::HEAD {
            return respond::head(session, &meta, &file_name, &ctx.request_id).await;
        }
        if range::unsatisfiable(session.req_header(), &meta) {
            return respond::unsatisfiable(session, &meta, &file_name, &ctx.request_id).await;
        }
        if (meta.download.is_none() || self.upstream.is_offline()) && !stored {
            let msg = format!(
                "the Hub cannot be reached and {} is not cached",
                request.path
            );
            return respond::error(session, 504, &msg, &ctx.request_id).await;
        }
        let mut download = Download {
            target: meta.download.clone().map(|u| Target::to(u, &self.upstream)),
            request,
            meta,
            file_name,
            hops: 0,
            reresolved: false,
            cache_result: None,
            upstream_range: None,
            cut: None,
            check: None,
            body_retries: 0,
        };
        let served = self
            .serve_from_store(session, &mut download, ctx, stored)
            .await;
        // Recorded whatever happened (a client gone mid-body included): logging needs the flow
        // and its cache result.
        let answered = download.cache_result.is_some();
        ctx.flow = Flow::Download(Box::new(download));
        served.map(|()| answered)
    }

    /// Answers from the store when it has the blob, is filling it, or starts filling it; sets
    /// the download's cache result as soon as that is known. Leaves it `None` when the request
    /// is to go upstream uncached.
    async fn serve_from_store(
        &self,
        session: &mut Session,
        download: &mut Download,
        ctx: &mut Ctx,
        stored: bool,
    ) -> Result<()> {
        if stored {
            self.serve_complete_hit(session, download, ctx).await?;
        }
        if download.cache_result.is_none() {
            self.serve_from_fill(session, download, ctx).await?;
        }
        Ok(())
    }

    /// Metadata for a GET or HEAD, and whether the store holds its blob; on `Ok(None)` an
    /// error response was already written.
    async fn resolve(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        request: &ResolveRequest,
    ) -> Result<Option<(FileMeta, bool)>> {
        let raw_path = session.req_header().uri.path();
        let auth = ctx.auth.as_ref();
        let stored = |m: &FileMeta| m.blob.is_some_and(|b| self.store.contains(&b));
        let mut meta = self
            .resolver
            .resolve(request, raw_path, auth)
            .await
            .map(|m| (stored(&m), m));
        // A cached answer whose blob must be fetched needs a fresh signed URL.
        if let Ok((false, m)) = &meta {
            if needs_fresh_url(m) {
                meta = self
                    .resolver
                    .refresh(request, raw_path, auth)
                    .await
                    .map(|m| (stored(&m), m));
            }
        }
        match meta {
            Ok((stored, m)) => Ok(Some((m, stored))),
            Err(e) => {
                if let Some(cause) = e.cause() {
                    self.metrics.upstream_error(cause);
                }
                respond::resolve_error(session, &e, &ctx.request_id).await?;
                Ok(None)
            }
        }
    }

    /// Serves a complete blob straight from the store, skipping Pingora's cache phase (its
    /// lock, lookup and meta handling are per-request work a content-addressed hit does not
    /// need). Keeps the eviction manager's LRU order, which Pingora would have updated.
    async fn serve_complete_hit(
        &self,
        session: &mut Session,
        download: &mut Download,
        ctx: &Ctx,
    ) -> Result<()> {
        let Some(blob) = download.meta.blob else {
            return Ok(());
        };
        let Some((body, result)) = from_store::open(self.store, &blob).await else {
            return Ok(());
        };
        download.cache_result = Some(result);
        self.touch(&blob, download.meta.size);
        from_store::serve_reader(session, body, download, result, &ctx.request_id).await
    }

    /// The reader the store gave and the cache result it makes (a hit also moves the blob up
    /// the LRU order); `Err` when the store refused to fill the blob.
    pub(super) fn reader_of(
        &self,
        fetch: Fetch,
        blob: &crate::hub::BlobId,
        size: u64,
    ) -> Result<(BlobReader, CacheResult), Refused> {
        match fetch {
            Fetch::Complete(r) => {
                self.touch(blob, size);
                Ok((r, CacheResult::Hit))
            }
            Fetch::Started(r) => Ok((r, CacheResult::Miss)),
            Fetch::Joined(r) => Ok((r, CacheResult::Coalesced)),
            Fetch::Refused(why) => Err(why),
        }
    }

    /// A hit moves the blob up the eviction manager's LRU order (a pinned blob is not in it).
    pub(super) fn touch(&self, blob: &crate::hub::BlobId, size: u64) {
        if self.store.is_pinned(blob) {
            return;
        }
        let key = CacheEntryKey::key_only(cache_key(blob).to_compact());
        self.eviction
            .access(&key, size as usize, SystemTime::now() + FOREVER);
    }

    /// Serves a blob the store fills (or already holds, or is filling): the store's fill task
    /// reads the origin at its own pace, and this request reads from the store like every
    /// other reader. Leaves the cache result `None` when the store does not take the blob: the
    /// request then goes upstream uncached.
    async fn serve_from_fill(
        &self,
        session: &mut Session,
        download: &mut Download,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let meta = &download.meta;
        let (Some(blob), Some(target)) = (meta.blob, &download.target) else {
            return Ok(());
        };
        let size = meta.size;
        if size > self.max_blob_size {
            return Ok(());
        }
        if let Some(peering) = &self.peering {
            let start = match range::decide(session.req_header(), None, size) {
                RangeType::Single(r) => r.start as u64,
                _ => 0,
            };
            let streamed = peering.stream(blob, size, &target.url, start, &self.metrics);
            match streamed.await {
                None => {}
                Some(Ok(stream)) => {
                    download.cache_result = Some(CacheResult::Miss);
                    let body = Box::new(stream);
                    let (result, id) = (CacheResult::Miss, &ctx.request_id);
                    return from_store::serve_reader(session, body, download, result, id).await;
                }
                Some(Err(e)) => {
                    let path = &download.request.path;
                    log::info!("{}: {path}: {e}; fetching it here", ctx.request_id);
                }
            }
        }
        let source = || -> Arc<dyn crate::store::Refetch> {
            let hub = Arc::new(refetch::UpstreamRefetch::new(
                (&self.upstream, &self.resolver, &self.metrics),
                (target.clone(), ctx.auth.clone()),
                download,
                blob,
                session.req_header().uri.path(),
            ));
            let from_owner = self
                .peering
                .as_ref()
                .and_then(|p| p.source(blob, size, &target.url, hub.clone(), &self.metrics));
            from_owner.unwrap_or(hub)
        };
        let fetch = self.store.read_or_fill(blob, size, source).await;
        let (mut reader, result) = match self.reader_of(fetch, &blob, size) {
            Ok(read) => read,
            Err(why) => {
                let path = &download.request.path;
                log::info!("{}: {path} served uncached: {why}", ctx.request_id);
                return Ok(());
            }
        };
        let asked = Instant::now();
        match reader.wait_opened().await {
            Ok(()) => {}
            Err(FillFailure::Local(why)) => {
                let path = &download.request.path;
                log::warn!("{}: {path} served uncached: {why}", ctx.request_id);
                return Ok(());
            }
            Err(FillFailure::Upstream(e)) => {
                download.cache_result = Some(result);
                let (status, message) = refetch::answer_for(e.as_ref());
                respond::error(session, status, &message, &ctx.request_id).await?;
                return Ok(());
            }
        }
        download.cache_result = Some(result);
        if result == CacheResult::Miss {
            ctx.upstream_time = Some(asked.elapsed());
        }
        let body = Box::new(reader);
        from_store::serve_reader(session, body, download, result, &ctx.request_id).await
    }

    /// `upstream_response_filter`: the body answer must be the file the metadata named.
    pub async fn on_response(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        download: &mut Download,
        auth: Option<&http::HeaderValue>,
    ) -> Result<()> {
        if resp.status.is_redirection() {
            return self.follow_body_redirect(resp, download);
        }
        let to_cdn = download
            .target
            .as_ref()
            .is_some_and(|t| t.class == HostClass::Cdn);
        if to_cdn && status::signature_refused(resp.status.as_u16()) && !download.reresolved {
            return self.reresolve(session, download, auth).await;
        }
        check_body_response(resp, download)?;
        if resp.status.as_u16() == 200 {
            download.check = download
                .meta
                .blob
                .map(|b| BodyCheck::new(&b, download.meta.size));
        }
        keep_only_body_headers(resp);
        Ok(())
    }

    /// A body request that redirects again (the Hub moved the file since the metadata
    /// request): retarget and let Pingora retry the request against the new peer.
    fn follow_body_redirect(&self, resp: &ResponseHeader, download: &mut Download) -> Result<()> {
        let next = download.target.as_ref().and_then(|t| {
            resp.headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| t.url.join(l).ok())
        });
        let next = match next {
            Some(u) if download.hops < MAX_BODY_HOPS => u,
            _ => return Error::e_explain(ErrorType::HTTPStatus(502), "upstream redirect loop"),
        };
        let target = Target::to(next, &self.upstream);
        if target.class == HostClass::Foreign {
            let e = UpstreamError::ForeignRedirect {
                host: target.url.origin.host,
            };
            return Error::e_explain(ErrorType::HTTPStatus(502), e.to_string());
        }
        download.target = Some(target);
        download.hops += 1;
        retry_with("following upstream redirect")
    }

    /// Signs a fresh download URL (cached metadata outlived the old one) and retries.
    async fn reresolve(
        &self,
        session: &Session,
        download: &mut Download,
        auth: Option<&http::HeaderValue>,
    ) -> Result<()> {
        download.reresolved = true;
        let raw = session.req_header().uri.path();
        let fresh = self.resolver.refresh(&download.request, raw, auth).await;
        match fresh {
            Ok(m) if m.blob == download.meta.blob && m.download.is_some() => {
                download.target = m.download.map(|u| Target::to(u, &self.upstream));
                retry_with("download URL expired")
            }
            Ok(_) => Error::e_explain(ErrorType::HTTPStatus(502), "the file changed upstream"),
            Err(e) => Err(Error::because(
                ErrorType::HTTPStatus(502),
                "signing a new download URL failed",
                e,
            )),
        }
    }

    /// `error_while_proxy`: an uncached body that failed before anything reached the client
    /// is simply asked for again; a timeout is not (the client would wait several for a 504).
    pub fn retry_untouched(
        &self,
        session: &mut Session,
        download: &mut Download,
        e: &Error,
    ) -> bool {
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let untouched = session.response_written().is_none();
        let retry = untouched && !timed_out && download.body_retries < MAX_BODY_RETRIES;
        if retry {
            download.body_retries += 1;
        }
        retry
    }

    /// `logging`: what a served download leaves behind: its name in `refs.jsonl`, and the
    /// bytes it moved.
    pub fn finish(&self, session: &Session, download: &Download, status: u16) {
        let result = download.cache_result();
        if status == 200 || status == 206 {
            self.record_ref(download, result == CacheResult::Miss);
        }
        self.metrics.sent(
            result.from_store(),
            session.as_downstream().body_bytes_sent(),
        );
        self.metrics
            .upstream_received(session.upstream_body_bytes_received());
    }

    /// `filled`: this request fetched the blob, so its name is written even if it was before.
    fn record_ref(&self, download: &Download, filled: bool) {
        let (r, meta) = (&download.request, &download.meta);
        let Some(blob) = meta.blob else { return };
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = RefEntry {
            repo: r.repo.to_string(),
            revision: r.revision.clone(),
            commit: meta.commit.clone(),
            path: r.path.clone(),
            blob: blob.to_string(),
            size: meta.size,
            time,
        };
        self.store.record_ref(&entry, filled);
    }
}

/// Whether an answer for a blob the store does not hold must be asked again for a download URL
/// that has not expired.
fn needs_fresh_url(m: &FileMeta) -> bool {
    let url_fresh = m.download.is_some() && m.resolved_at.elapsed() < DOWNLOAD_URL_TTL;
    !url_fresh && !m.stale
}

/// `response_filter`: the Hub's headers for this file, whatever the body's source.
pub fn decorate(resp: &mut ResponseHeader, download: &Download, result: CacheResult) -> Result<()> {
    headers::apply_resolve_headers(resp, &download.meta, &download.file_name);
    resp.insert_header("x-hf-edge-cache", result.label())
}

/// An error Pingora retries (against the target now recorded in the download).
fn retry_with(why: &'static str) -> Result<()> {
    let mut e = Error::explain(ErrorType::HTTPStatus(502), why);
    e.set_retry(true);
    Err(e)
}

/// The body the metadata promised (the whole file, or exactly the range asked of a file
/// hf-edge does not store), or a 502: a short or different body must never be stored or
/// passed off as the file. A whole file sent to a ranged request is cut here.
fn check_body_response(resp: &mut ResponseHeader, download: &mut Download) -> Result<()> {
    let size = download.meta.size;
    match range::upstream_body(resp, download.upstream_range.as_ref(), size) {
        Some(range::UpstreamBody::Whole | range::UpstreamBody::Asked) => Ok(()),
        Some(range::UpstreamBody::CutHere(span)) => {
            let range = range::RangeType::Single(span.start as usize..span.end as usize);
            range::apply(resp, &range, size)?;
            download.cut = Some(range::Cut::new(&span));
            Ok(())
        }
        None => Error::e_explain(
            ErrorType::HTTPStatus(502),
            format!(
                "upstream answered {} with {:?} bytes for a file of {size} bytes",
                resp.status.as_u16(),
                headers::content_length(&resp.headers),
            ),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::BlobId;

    fn meta(size: u64, blob: bool) -> FileMeta {
        FileMeta {
            commit: "0".repeat(40),
            blob: blob.then(|| BlobId::from_etag(&"a".repeat(64)).unwrap()),
            etag: "a".repeat(64),
            size,
            lfs: true,
            content_type: None,
            download: None,
            resolved_at: std::time::Instant::now(),
            stale: false,
            moved_to: None,
        }
    }

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    fn download(meta: FileMeta, asked: Option<std::ops::Range<u64>>) -> Download {
        Download {
            request: crate::hub::grammar::ResolveRequest {
                repo: crate::hub::grammar::Repo::parse_display("org/m").unwrap(),
                revision: "main".into(),
                path: "f.bin".into(),
            },
            meta,
            file_name: "f.bin".into(),
            target: None,
            hops: 0,
            reresolved: false,
            cache_result: None,
            upstream_range: asked,
            cut: None,
            check: None,
            body_retries: 0,
        }
    }

    fn check(mut r: ResponseHeader, d: &mut Download) -> Result<ResponseHeader> {
        check_body_response(&mut r, d).map(|()| r)
    }

    #[test]
    fn only_the_promised_body_is_accepted() {
        let whole = resp(200, &[("content-length", "10")]);
        assert!(check(whole.clone(), &mut download(meta(10, true), None)).is_ok());
        let short = resp(200, &[("content-length", "9")]);
        let e = check(short, &mut download(meta(10, true), None)).unwrap_err();
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(502));
        assert!(e.to_string().contains("9"), "{e}");
        let no_length = resp(200, &[]);
        assert!(check(no_length, &mut download(meta(10, true), None)).is_err());
        // A range answer is accepted only as an answer to the range asked for, which only
        // files hf-edge does not store are fetched with.
        let partial = resp(
            206,
            &[("content-range", "bytes 0-1/10"), ("content-length", "2")],
        );
        assert!(check(partial.clone(), &mut download(meta(10, true), None)).is_err());
        for blob in [true, false] {
            let mut asked = download(meta(10, blob), Some(0..2));
            assert!(check(partial.clone(), &mut asked).is_ok());
            assert!(check(partial.clone(), &mut download(meta(10, blob), Some(1..3))).is_err());
        }
        assert!(check(resp(404, &[]), &mut download(meta(10, true), None)).is_err());
        // The whole file to a ranged request: answered 206, cut here.
        let mut asked = download(meta(10, true), Some(2..5));
        let r = check(whole, &mut asked).unwrap();
        assert_eq!(r.status.as_u16(), 206);
        assert_eq!(r.headers["content-range"], "bytes 2-4/10");
        assert_eq!(r.headers["content-length"], "3");
        assert!(asked.cut.is_some());
    }

    #[test]
    fn cdn_headers_are_dropped() {
        let mut r = resp(
            200,
            &[
                ("content-length", "10"),
                ("set-cookie", "a=b"),
                ("etag", "\"cdn\""),
                ("x-amz-request-id", "1"),
            ],
        );
        keep_only_body_headers(&mut r);
        let names: Vec<_> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }
}
