//! The cluster's blob requests, both ends. Asking: a node missing a blob it does not own fills
//! it from the owner ([`PeerRefetch`], the store's fill source), then from the next node on the
//! ring, then from the Hub as usual. Serving: a peer's signed request for a blob
//! (`{mount}/.hf-edge/peer/blobs/{algo}/{hex}`) is answered from the store, joining a fill in
//! progress or starting one from the origin URL the peer sent ([`OriginRefetch`]), so the
//! owner fetches each blob upstream once for the whole cluster.
//!
//! Credentials: a peer request carries the cluster's signature, never a client's token; the
//! owner fetches the origin URL (a signed CDN URL, or the Hub's) without any. Each node checks
//! its own clients against the Hub before it asks a peer, and a peer serves bytes by content
//! address only to a node that signed with the cluster's secret.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::Result;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_proxy::Session;

use super::ctx::Ctx;
use super::refetch::{body_from, counted, ResumeError, MAX_BODY_HOPS};
use super::{from_store, respond, DownloadFlow};
use crate::cluster::{
    Cluster, Signed, AUTH_HEADER, MAX_PEER_SOURCES, ORIGIN_HEADER, PEER_PATH, SIZE_HEADER,
};
use crate::hub::upstream::{HostClass, Upstream};
use crate::hub::url::{Origin, Url};
use crate::hub::BlobId;
use crate::metrics::{Metrics, PeerRequest};
use crate::store::{seek_span, FillFailure, Refetch, RefetchBody, RefetchError};

/// A mount's place in the cluster.
#[derive(Clone)]
pub struct Peering {
    pub cluster: Arc<Cluster>,
    /// The mount's prefix as it starts a path (`""` for `/`): peers serve the same mounts.
    pub mount_base: String,
}

impl Peering {
    /// Where `blob`'s bytes come from when this node does not own it and keeps a copy: its
    /// owner, then the next node, then `hub`. `None` when this node owns it, or does not keep
    /// copies (`replicate: false`, see [`Peering::stream`]).
    pub fn source(
        &self,
        blob: BlobId,
        size: u64,
        origin: &Url,
        hub: Arc<dyn Refetch>,
        metrics: &Arc<Metrics>,
    ) -> Option<Arc<dyn Refetch>> {
        if !self.cluster.settings.replicate {
            return None;
        }
        let peers = self.peers_for(blob, size, origin, Some(hub), metrics)?;
        Some(Arc::new(peers))
    }

    /// With `replicate: false`, a blob this node does not own, streamed from its owner (then
    /// the next node) without being kept: open at `offset`, the first byte the client asked
    /// for. `None` when this node owns it or keeps copies; `Err` when no peer could send it
    /// (the caller then fills it itself).
    pub async fn stream(
        &self,
        blob: BlobId,
        size: u64,
        origin: &Url,
        offset: u64,
        metrics: &Arc<Metrics>,
    ) -> Option<Result<PeerStream, RefetchError>> {
        if self.cluster.settings.replicate {
            return None;
        }
        let source = self.peers_for(blob, size, origin, None, metrics)?;
        let opened = source.open(offset).await;
        Some(opened.map(|body| PeerStream {
            source,
            body: std::sync::Mutex::new(Some(body)),
            pos: offset,
            end: size,
            blob,
            resumes: 0,
        }))
    }

    fn peers_for(
        &self,
        blob: BlobId,
        size: u64,
        origin: &Url,
        hub: Option<Arc<dyn Refetch>>,
        metrics: &Arc<Metrics>,
    ) -> Option<PeerRefetch> {
        let peers = self.cluster.sources(&blob);
        if peers.is_empty() {
            return None;
        }
        Some(PeerRefetch {
            cluster: self.cluster.clone(),
            peers,
            path: format!("{}{PEER_PATH}{}", self.mount_base, blob),
            origin: origin.to_string(),
            size,
            hub,
            cursor: Mutex::new(None),
            metrics: metrics.clone(),
        })
    }
}

/// Whether `path` (under its mount) is a peer request.
pub fn is_peer_path(path: &str) -> bool {
    path.starts_with(PEER_PATH)
}

// === asking ===

/// A fill's source on a node that does not own the blob: the peers in ring order, then the
/// Hub. A body that is cut (the peer went away mid-fill) is resumed from the next source.
struct PeerRefetch {
    cluster: Arc<Cluster>,
    peers: Vec<SocketAddr>,
    /// The peer request's path, mount prefix included.
    path: String,
    /// Where the owner fetches the blob if it has not got it: the URL this node's metadata named.
    origin: String,
    size: u64,
    /// After the peers; `None`: no other source (a blob streamed through, not kept).
    hub: Option<Arc<dyn Refetch>>,
    /// The source the last body came from (an index into `peers`; `peers.len()`: the Hub);
    /// `None` before the first.
    cursor: Mutex<Option<usize>>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Refetch for PeerRefetch {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let hub = self.peers.len();
        // After a cut, the source that cut is passed over; the Hub resumes its own bodies.
        let mut next = match *self.cursor.lock() {
            None => 0,
            Some(i) => (i + 1).min(hub),
        };
        while next < hub {
            *self.cursor.lock() = Some(next);
            let peer = self.peers[next];
            match self.ask(peer, offset).await {
                Ok(body) => {
                    self.metrics.peer_request(PeerRequest::SentOk);
                    return Ok(body);
                }
                Err(e) => {
                    self.metrics.peer_request(PeerRequest::SentFailed);
                    log::info!("peer {peer}: {}: {e}; trying the next source", self.path);
                }
            }
            next += 1;
        }
        *self.cursor.lock() = Some(hub);
        match &self.hub {
            Some(h) => h.open(offset).await,
            None => Err(format!("no peer could send {}", self.path).into()),
        }
    }
}

impl PeerRefetch {
    async fn ask(
        &self,
        peer: SocketAddr,
        offset: u64,
    ) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let url = Url::on(&Origin::parse(&format!("http://{peer}"))?, &self.path);
        let signature = self.cluster.auth.sign(&Signed {
            method: "GET",
            path: &self.path,
            size: self.size,
            origin: &self.origin,
        });
        let value = |s: &str| HeaderValue::from_str(s).map_err(|e| format!("{s:?}: {e}"));
        let headers = [
            (HeaderName::from_static(AUTH_HEADER), value(&signature)?),
            (
                HeaderName::from_static(SIZE_HEADER),
                value(&self.size.to_string())?,
            ),
            (HeaderName::from_static(ORIGIN_HEADER), value(&self.origin)?),
        ];
        let resp = self.cluster.client.get_with(&url, &headers, offset).await?;
        let body = body_from(resp, offset, self.size, None)?;
        Ok(Box::new(Counted {
            body,
            metrics: self.metrics.clone(),
        }))
    }
}

/// A peer's body, its bytes counted as received from peers.
struct Counted {
    body: Box<dyn RefetchBody>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl RefetchBody for Counted {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RefetchError> {
        let chunk = self.body.chunk().await?;
        if let Some(c) = &chunk {
            self.metrics.peer_received(c.len());
        }
        Ok(chunk)
    }
}

/// A blob streamed from peers to one client without being kept (`replicate: false`). A body
/// cut mid-way is resumed from the next peer at the first byte not sent; seeking (a client's
/// range) reopens there. Its bytes were verified by the peer that stores them: a peer's reader
/// of a fill in progress is handed the last byte only once the blob is verified.
pub struct PeerStream {
    source: PeerRefetch,
    /// Only ever reached through `&mut self` (`get_mut`, never locked): the mutex makes the
    /// stream `Sync`, as a hit handler must be, around a body that is only `Send`.
    body: std::sync::Mutex<Option<Box<dyn RefetchBody>>>,
    pos: u64,
    /// Exclusive end of what is served.
    end: u64,
    blob: BlobId,
    resumes: u32,
}

impl PeerStream {
    fn body(&mut self) -> &mut Option<Box<dyn RefetchBody>> {
        self.body
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, what: impl std::fmt::Display) -> Box<pingora::Error> {
        pingora::Error::explain(
            pingora::ErrorType::ReadError,
            format!("blob {} from peers: {what}", self.blob),
        )
    }
}

#[async_trait]
impl HandleHit for PeerStream {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        while self.pos < self.end {
            let mut body = match self.body().take() {
                Some(b) => b,
                None => {
                    let opened = self.source.open(self.pos).await;
                    opened.map_err(|e| self.error(e))?
                }
            };
            match body.chunk().await {
                Ok(Some(mut data)) => {
                    data.truncate((self.end - self.pos).min(data.len() as u64) as usize);
                    self.pos += data.len() as u64;
                    *self.body() = Some(body);
                    return Ok(Some(data));
                }
                // Cut: the next source, from the first byte not sent.
                Ok(None) | Err(_) => {
                    self.resumes += 1;
                    if self.resumes > MAX_PEER_SOURCES as u32 {
                        return Err(self.error(format!("cut at byte {}", self.pos)));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let Some((start, end)) = seek_span(self.source.size, start, end) else {
            return Err(self.error("seek past the end"));
        };
        if start != self.pos {
            *self.body() = None;
        }
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}

// === serving ===

/// What a peer asked for, once its signature checked out.
struct PeerAsk {
    blob: BlobId,
    size: u64,
    origin: Url,
}

/// Why a peer request is refused, with its status.
fn refuse(status: u16, why: impl std::fmt::Display) -> (u16, String) {
    (status, format!("peer request refused: {why}"))
}

/// Checks a peer request under `mount_base`: its signature, then what it names.
fn admit_peer(
    session: &Session,
    cluster: &Cluster,
    mount_base: &str,
    upstream: &Upstream,
) -> std::result::Result<PeerAsk, (u16, String)> {
    let req = session.req_header();
    let inner = req.uri.path();
    let text = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let (size_text, origin_text) = (
        text(SIZE_HEADER).unwrap_or(""),
        text(ORIGIN_HEADER).unwrap_or(""),
    );
    let path = format!("{mount_base}{inner}");
    let signed = Signed {
        method: req.method.as_str(),
        path: &path,
        size: size_text.parse().unwrap_or(u64::MAX),
        origin: origin_text,
    };
    let auth = req.headers.get(AUTH_HEADER).map(HeaderValue::as_bytes);
    cluster
        .auth
        .verify(auth, &signed)
        .map_err(|e| refuse(403, e))?;
    if req.method != http::Method::GET {
        return Err(refuse(405, "peer requests are GETs"));
    }
    let blob = inner
        .strip_prefix(PEER_PATH)
        .and_then(BlobId::parse_key)
        .ok_or_else(|| refuse(400, format!("{inner}: not a blob address")))?;
    let size = size_text
        .parse()
        .map_err(|_| refuse(400, format!("{SIZE_HEADER}: not a size")))?;
    let origin =
        Url::parse(origin_text).map_err(|e| refuse(400, format!("{ORIGIN_HEADER}: {e}")))?;
    if upstream.classify(&origin) == HostClass::Foreign {
        let host = &origin.origin.host;
        return Err(refuse(
            400,
            format!("{ORIGIN_HEADER}: {host} is not this mount's Hub or a CDN host"),
        ));
    }
    Ok(PeerAsk { blob, size, origin })
}

impl DownloadFlow {
    /// `request_filter` for a peer request: the blob from the store, filled from the origin the
    /// peer named when this node has not got it. Always answered here.
    pub async fn serve_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let id = ctx.request_id.clone();
        let Some(peering) = &self.peering else {
            return respond::error(session, 404, "this node is not in a cluster", &id).await;
        };
        let ask = match admit_peer(
            session,
            &peering.cluster,
            &peering.mount_base,
            &self.upstream,
        ) {
            Ok(a) => a,
            Err((status, message)) => {
                self.metrics.peer_request(PeerRequest::Refused);
                log::warn!("{id}: {message}");
                return respond::error(session, status, &message, &id).await;
            }
        };
        self.metrics.peer_request(PeerRequest::Served);
        if ask.size > self.max_blob_size {
            let msg = format!("{} is over cache.max_size here", ask.blob);
            return respond::error(session, 503, &msg, &id).await;
        }
        let source = || -> Arc<dyn Refetch> {
            Arc::new(OriginRefetch {
                upstream: self.upstream.clone(),
                url: Mutex::new(ask.origin.clone()),
                size: ask.size,
                metrics: self.metrics.clone(),
                opened: AtomicBool::new(false),
            })
        };
        let fetch = self.store.read_or_fill(ask.blob, ask.size, source).await;
        let (mut reader, result) = match self.reader_of(fetch, &ask.blob, ask.size) {
            Ok(read) => read,
            Err(why) => return respond::error(session, 503, &why.to_string(), &id).await,
        };
        match reader.wait_opened().await {
            Ok(()) => {}
            Err(FillFailure::Local(why)) => return respond::error(session, 503, &why, &id).await,
            Err(FillFailure::Upstream(e)) => {
                let (status, message) = super::refetch::answer_for(e.as_ref());
                return respond::error(session, status, &message, &id).await;
            }
        }
        let etag = format!("\"{}\"", ask.blob.hex());
        let decorate = |resp: &mut pingora::http::ResponseHeader| {
            let _ = resp.insert_header(header::ETAG, etag);
        };
        let resp = from_store::blob_response(ask.size, decorate)?;
        from_store::serve_blob(session, Box::new(reader), resp, result, &id).await?;
        Ok(true)
    }
}

/// The owner's fill source: the origin URL a peer sent (a CDN or Hub URL its metadata named),
/// asked without credentials; redirects followed to the Hub or a CDN host only.
struct OriginRefetch {
    upstream: Arc<Upstream>,
    url: Mutex<Url>,
    size: u64,
    metrics: Arc<Metrics>,
    opened: AtomicBool,
}

#[async_trait]
impl Refetch for OriginRefetch {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let first = !self.opened.swap(true, Ordering::Relaxed);
        for _ in 0..=MAX_BODY_HOPS {
            let url = self.url.lock().clone();
            let resp = counted(&self.metrics, self.upstream.get_from(&url, None, offset)).await?;
            if !resp.header.status.is_redirection() {
                let metrics = first.then(|| self.metrics.clone());
                return body_from(resp, offset, self.size, metrics);
            }
            let next = resp
                .header
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|u| self.upstream.classify(u) != HostClass::Foreign)
                .ok_or(ResumeError::Status(resp.header.status.as_u16()))?;
            *self.url.lock() = next;
        }
        Err(ResumeError::RedirectLoop.into())
    }
}
