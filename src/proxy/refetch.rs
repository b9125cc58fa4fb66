//! The origin of a store fill: the URL the metadata named for the body, asked from offset 0
//! and, after a cut, again with `Range` from the first missing byte. Redirects of the body
//! request are followed (to the Hub or an allowed CDN host only), and a signed CDN URL that
//! expired is signed anew through the resolver, as for a first request. Each answer is
//! counted as a blob upstream request; the first body's bytes as upstream bytes (those of
//! resumes the store counts as resumed bytes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue};
use parking_lot::Mutex;

use super::ctx::Download;
use super::Target;
use crate::hub::grammar::ResolveRequest;
use crate::hub::headers::content_length;
use crate::hub::status;
use crate::hub::upstream::{HostClass, Upstream, UpstreamError, UpstreamResponse};
use crate::hub::BlobId;
use crate::metrics::{Metrics, UpstreamCause, UpstreamKind};
use crate::resolver::{ResolveError, Resolver};
use crate::store::{Refetch, RefetchBody, RefetchError};

/// Why a cut fill could not be continued from its origin.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("signing a new download URL failed: {0}")]
    Resign(#[from] ResolveError),
    #[error("range answer {got:?}, expected {want:?}")]
    WrongRange { got: Option<String>, want: String },
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("the new download URL is on {0}, which is not the Hub or an allowed CDN host")]
    ForeignHost(String),
    #[error("the file changed upstream")]
    FileChanged,
    #[error("upstream answered {status} with {length:?} bytes for a file of {size} bytes")]
    WrongLength {
        status: u16,
        length: Option<u64>,
        size: u64,
    },
    #[error("upstream redirected more than {MAX_BODY_HOPS} times")]
    RedirectLoop,
}

impl ResumeError {
    /// The status a client that is still waiting for its header gets: 504 for a timeout, 502
    /// for everything else (never a 4xx, which clients take as the Hub's final word).
    fn status(&self) -> u16 {
        match self {
            ResumeError::Upstream(e) | ResumeError::Resign(ResolveError::Upstream(e)) => e.status(),
            _ => 502,
        }
    }
}

/// The answer for a client whose fill failed before its first byte.
pub fn answer_for(e: &(dyn std::error::Error + Send + Sync + 'static)) -> (u16, String) {
    let status = e
        .downcast_ref::<ResumeError>()
        .map_or(502, ResumeError::status);
    (status, format!("fetching the file upstream failed: {e}"))
}

/// Redirects followed on a body request (the metadata request follows its own).
pub const MAX_BODY_HOPS: usize = 3;

pub struct UpstreamRefetch {
    pub upstream: Arc<Upstream>,
    pub resolver: Arc<Resolver>,
    pub target: Mutex<Target>,
    /// The credentials of the request that started the fill (sent to the Hub only).
    pub auth: Option<HeaderValue>,
    pub request: ResolveRequest,
    pub raw_path: String,
    pub blob: BlobId,
    pub size: u64,
    pub metrics: Arc<Metrics>,
    /// The first answer was opened: later ones are resumes.
    opened: AtomicBool,
}

impl UpstreamRefetch {
    /// The origin of `download`'s body (blob `blob`), for a fill started by a request with
    /// `auth`.
    pub fn new(
        (upstream, resolver, metrics): (&Arc<Upstream>, &Arc<Resolver>, &Arc<Metrics>),
        (target, auth): (Target, Option<HeaderValue>),
        download: &Download,
        blob: BlobId,
        raw_path: &str,
    ) -> UpstreamRefetch {
        let file = (&download.request, blob, download.meta.size);
        UpstreamRefetch::for_file(
            (upstream, resolver, metrics),
            (target, auth),
            file,
            raw_path,
        )
    }

    /// The origin of file `request` (blob `blob` of `size` bytes), for a fill started with
    /// `auth` by a client's request or a warm job.
    pub fn for_file(
        (upstream, resolver, metrics): (&Arc<Upstream>, &Arc<Resolver>, &Arc<Metrics>),
        (target, auth): (Target, Option<HeaderValue>),
        (request, blob, size): (&ResolveRequest, BlobId, u64),
        raw_path: &str,
    ) -> UpstreamRefetch {
        UpstreamRefetch {
            upstream: upstream.clone(),
            resolver: resolver.clone(),
            target: Mutex::new(target),
            auth,
            request: request.clone(),
            raw_path: raw_path.to_string(),
            blob,
            size,
            metrics: metrics.clone(),
            opened: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Refetch for UpstreamRefetch {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let mut resigned = false;
        let mut hops = 0;
        let first = !self.opened.swap(true, Ordering::Relaxed);
        loop {
            let target = self.target.lock().clone();
            let auth = self
                .auth
                .as_ref()
                .filter(|_| target.class == HostClass::Hub);
            let request = self.upstream.get_from(&target.url, auth, offset);
            let resp = counted(&self.metrics, request).await?;
            let code = resp.header.status.as_u16();
            if resp.header.status.is_redirection() {
                hops += 1;
                self.follow(&resp, &target, hops)?;
                continue;
            }
            let expired = target.class == HostClass::Cdn && status::signature_refused(code);
            if expired && !resigned {
                resigned = true;
                self.resign().await?;
                continue;
            }
            let metrics = first.then(|| self.metrics.clone());
            return body_from(resp, offset, self.size, metrics);
        }
    }
}

/// The body of `resp`, an answer for the bytes of a blob of `size` from `offset` on: a 206
/// with exactly that range, or a whole 200 whose head is skipped. `metrics`: where the bytes
/// are counted (the fill's first answer only).
pub fn body_from(
    resp: UpstreamResponse,
    offset: u64,
    size: u64,
    metrics: Option<Arc<Metrics>>,
) -> Result<Box<dyn RefetchBody>, RefetchError> {
    let code = resp.header.status.as_u16();
    let length = content_length(&resp.header.headers);
    let skip = match code {
        206 if offset > 0 => {
            let want = format!("bytes {offset}-{}/{size}", size - 1);
            let got = resp.header.headers.get(header::CONTENT_RANGE);
            if got.is_none_or(|v| v.as_bytes() != want.as_bytes()) {
                let got = got.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                return Err(ResumeError::WrongRange { got, want }.into());
            }
            0
        }
        // An origin without ranges sends it all again: skip what the fill has.
        200 if length == Some(size) => offset,
        200 => {
            return Err(ResumeError::WrongLength {
                status: code,
                length,
                size,
            }
            .into());
        }
        s => return Err(ResumeError::Status(s).into()),
    };
    Ok(Box::new(Ranged {
        resp,
        skip,
        metrics,
    }))
}

impl UpstreamRefetch {
    /// Retargets at a redirect's `Location` (the Hub moved the file since the metadata
    /// request): to the Hub or an allowed CDN host only, at most `MAX_BODY_HOPS` times.
    fn follow(
        &self,
        resp: &UpstreamResponse,
        from: &Target,
        hops: usize,
    ) -> Result<(), ResumeError> {
        let next = resp
            .header
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| from.url.join(l).ok());
        let next = match next {
            Some(u) if hops <= MAX_BODY_HOPS => u,
            _ => return Err(ResumeError::RedirectLoop),
        };
        let target = Target::to(next, &self.upstream);
        if target.class == HostClass::Foreign {
            return Err(ResumeError::Upstream(UpstreamError::ForeignRedirect {
                host: target.url.origin.host,
            }));
        }
        *self.target.lock() = target;
        Ok(())
    }

    /// A fresh download URL for the same blob.
    async fn resign(&self) -> Result<(), ResumeError> {
        let meta = self
            .resolver
            .refresh(&self.request, &self.raw_path, self.auth.as_ref())
            .await?;
        match meta.download {
            Some(url) if meta.blob == Some(self.blob) => {
                let class = self.upstream.classify(&url);
                if class == HostClass::Foreign {
                    return Err(ResumeError::ForeignHost(url.origin.host));
                }
                *self.target.lock() = Target { url, class };
                Ok(())
            }
            _ => Err(ResumeError::FileChanged),
        }
    }
}

/// Sends a fill's request for blob bytes and counts it: its answer's status and time, or its
/// failure.
pub async fn counted(
    metrics: &Metrics,
    request: impl std::future::Future<Output = Result<UpstreamResponse, UpstreamError>>,
) -> Result<UpstreamResponse, RefetchError> {
    let sent = Instant::now();
    match request.await {
        Ok(resp) => {
            let code = resp.header.status.as_u16();
            metrics.upstream_response(UpstreamKind::Blob, code, sent.elapsed());
            Ok(resp)
        }
        Err(e) => {
            metrics.upstream_error(cause(&e));
            Err(ResumeError::from(e).into())
        }
    }
}

/// How an upstream failure is counted.
pub fn cause(e: &UpstreamError) -> UpstreamCause {
    match e {
        UpstreamError::Timeout { .. } => UpstreamCause::Timeout,
        _ => UpstreamCause::Connect,
    }
}

/// The body from the requested offset: a 206 as is, a whole 200 with its head skipped.
struct Ranged {
    resp: UpstreamResponse,
    skip: u64,
    /// Where the bytes of the fill's first answer are counted.
    metrics: Option<Arc<Metrics>>,
}

#[async_trait]
impl RefetchBody for Ranged {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RefetchError> {
        loop {
            let data = match self.resp.chunk().await {
                Ok(d) => d,
                Err(e) => {
                    let cause = match e {
                        UpstreamError::Timeout { .. } => UpstreamCause::Timeout,
                        _ => UpstreamCause::Reset,
                    };
                    if let Some(m) = &self.metrics {
                        m.upstream_error(cause);
                    }
                    return Err(ResumeError::from(e).into());
                }
            };
            let Some(mut data) = data else {
                return Ok(None);
            };
            if let Some(m) = &self.metrics {
                m.upstream_received(data.len());
            }
            if self.skip >= data.len() as u64 {
                self.skip -= data.len() as u64;
                continue;
            }
            let rest = data.split_off(self.skip as usize);
            self.skip = 0;
            return Ok(Some(rest));
        }
    }
}
