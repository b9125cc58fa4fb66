//! The Pingora `ProxyHttp` implementation. This file only sequences: each phase matches on
//! the request's [`Flow`] and calls one named function of that flow.
//!
//! - [`admission`]: sizes, the path grammar and the site's policy, before anything else;
//! - [`download`]: `GET /{repo}/resolve/{rev}/{path}` from the blob store, filled on a miss
//!   by the store's own task (with [`from_store`], [`range`] and [`refetch`]), so Pingora's
//!   cache phase is never enabled;
//! - [`lfs`]: git-lfs objects named by rewritten batch answers, from the same store;
//! - [`peer`]: blobs between cluster nodes, asked of the owner and served to peers;
//! - [`passthrough`]: everything else, to the Hub and back, uncached;
//! - [`failure`]: how failures are answered and retried; [`respond`]: answers hf-edge writes;
//! - [`log`]: request ids, metrics and access lines;
//! - [`mount`]: which upstream a path prefix names; what a reload swaps.

mod admission;
mod ctx;
mod download;
mod failure;
mod from_store;
mod lfs;
mod log;
pub mod mount;
mod passthrough;
mod peer;
pub mod range;
mod refetch;
mod respond;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, RangeType, Session};

pub use ctx::{Ctx, Flow, Target};
pub use download::DownloadFlow;
pub use lfs::{LfsActions, MAX_ACTIONS as MAX_LFS_ACTIONS};
pub use log::RequestIds;
pub use mount::{Live, Mount};
pub use passthrough::PassthroughFlow;
pub use peer::Peering;
pub use refetch::{answer_for, UpstreamRefetch};

use crate::client::{self, TrustedProxies};
use crate::downstream;
use crate::hub::grammar::Route;
use crate::metrics::{Metrics, UpstreamKind};
use crate::status::{Page, StatusSource};

pub struct EdgeProxy {
    /// The mounts and access log; swapped whole by a reload.
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    pub request_ids: RequestIds,
    /// Whose forwarding headers are believed (`trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// `GET /` and `/status.json`: the status page.
    pub status: Arc<StatusSource>,
}

impl EdgeProxy {
    /// The mount this request was routed to; the current root before routing.
    fn mount(&self, ctx: &Ctx) -> Arc<Mount> {
        ctx.mount
            .clone()
            .unwrap_or_else(|| self.live.load().root().clone())
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.request_ids.next())
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        downstream::header_received(session);
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.client = client::identify(
            peer,
            tls,
            &session.req_header().headers,
            &self.trusted_proxies,
        );
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let mount = admission::route(session.req_header_mut(), &self.live.load())?;
        ctx.mount = Some(mount.clone());
        if peer::is_peer_path(session.req_header().uri.path()) {
            return mount.downloads.serve_peer(session, ctx).await;
        }
        let req = session.req_header();
        let admitted = match admission::admit(req, &mount.policy, mount.site_auth.as_ref()) {
            Ok(a) => a,
            Err(r) => return respond::refusal(session, &r, &ctx.request_id).await,
        };
        let is_file_read = matches!(req.method, Method::GET | Method::HEAD);
        ctx.auth = match admission::sign(session, &admitted).await {
            Ok(auth) => auth,
            Err(r) => return respond::refusal(session, &r, &ctx.request_id).await,
        };
        ctx.route = Some(admitted.route.clone());
        // The status page is the edge's own, at its top level only.
        let page = Page::at(session.req_header().uri.path());
        if let Some(page) = page.filter(|_| is_file_read && mount.prefix == "/") {
            return respond::status_page(session, &self.status, page, &ctx.request_id).await;
        }
        match admitted.route {
            Route::Resolve(r) if is_file_read => {
                mount.downloads.start(session, ctx, r, &mount.policy).await
            }
            Route::LfsObject(o) if is_file_read => {
                let actions = &mount.passthrough.lfs_actions;
                mount
                    .downloads
                    .serve_lfs_object(session, ctx, o, actions)
                    .await
            }
            route => mount.passthrough.start(session, ctx, &route).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let target = ctx.target().ok_or_else(ctx::no_target)?;
        match self.mount(ctx).upstream.peer(&target.url.origin).await {
            Ok(peer) => Ok(Box::new(peer)),
            Err(e) => Err(failure::unreachable(e)),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let target = ctx.target().ok_or_else(ctx::no_target)?;
        target.apply(upstream_request, ctx.auth.as_ref())?;
        self.mount(ctx)
            .upstream
            .prepare(&target.url, upstream_request)
            .map_err(failure::unreachable)?;
        if ctx.flow.wants_identity() {
            upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        // A file Pingora caches is fetched whole; any other carries the client's range.
        if let Flow::Download(d) = &mut ctx.flow {
            if !session.upstream_headers_mutated_for_cache() {
                let client = session.req_header();
                d.upstream_range = range::ask_upstream(client, upstream_request, &d.meta)?;
            }
        }
        ctx.upstream_sent = Some(std::time::Instant::now());
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
        let code = resp.status.as_u16();
        let mount = self.mount(ctx);
        if let Some(target) = ctx.target() {
            mount
                .upstream
                .proxy_refusal(&target.url, code)
                .map_err(failure::unreachable)?;
        }
        let auth = ctx.auth.as_ref();
        match &mut ctx.flow {
            Flow::Download(d) => {
                self.metrics
                    .upstream_response(UpstreamKind::Blob, code, elapsed);
                mount.downloads.on_response(session, resp, d, auth).await
            }
            Flow::Passthrough(p) => {
                self.metrics
                    .upstream_response(UpstreamKind::Api, code, elapsed);
                mount.passthrough.on_response(resp, p, auth)
            }
            Flow::Local => Ok(()),
        }
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> RangeType {
        range::select(session.req_header(), resp)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Flow::Download(d) = &ctx.flow {
            download::decorate(resp, d, d.cache_result())?;
        }
        // The Hub's own request id, when it sent one, passes through unchanged.
        if resp.headers.get("x-request-id").is_none() {
            resp.insert_header("x-request-id", &ctx.request_id)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let mount = self.mount(ctx);
        match &mut ctx.flow {
            Flow::Passthrough(p) => {
                let auth = ctx.auth.as_ref();
                mount.passthrough.on_body(body, end_of_stream, p, auth)?;
            }
            Flow::Download(d) => {
                if let Some(cut) = &mut d.cut {
                    cut.filter(body);
                }
                if let Some(check) = &mut d.check {
                    check.filter(body, end_of_stream)?;
                }
            }
            Flow::Local => {}
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        let mount = self.mount(ctx);
        failure::answer(session, e, ctx, &mount.passthrough, &self.metrics).await
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mount = self.mount(ctx);
        failure::retry(session, e, ctx, &mount.downloads, client_reused)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let mount = self.mount(ctx);
        if let Flow::Download(d) = &ctx.flow {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            mount.downloads.finish(session, d, status);
        }
        // The current access log, not the one at the request's start: after a reload (a
        // rotated file reopened) every line goes to the new one.
        let live = self.live.load();
        log::record(
            &self.metrics,
            &live.access_log,
            session,
            e,
            ctx,
            &mount.prefix,
        );
        downstream::request_done(session);
    }
}
