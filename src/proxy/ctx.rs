//! Per-request state. What every request has is here; what only a download or only a
//! pass-through has lives in its flow's state ([`Download`], [`Passthrough`]), so a
//! pass-through cannot hold a body range nor a download a JSON buffer. The flows' code is
//! in `download.rs` and `passthrough.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, OrErr, Result};

use super::mount::Mount;
use super::range::Cut;
use super::verify::BodyCheck;
use crate::client::Client;
use crate::hub::grammar::{Repo, ResolveRequest, Route};
use crate::hub::headers::FileMeta;
use crate::hub::upstream::{HostClass, Upstream};
use crate::hub::url::Url;
use crate::metrics::CacheResult;

/// Which way a request travels, chosen in `request_filter`.
pub enum Flow {
    /// Answered by hf-edge itself before any upstream body: refusals, bad paths, `HEAD` on a
    /// file (from metadata alone), errors of the metadata request.
    Local,
    /// `GET /{repo}/resolve/{rev}/{path}`: body from the blob store, filled on a miss.
    Download(Box<Download>),
    /// Everything else: to the Hub and back, uncached.
    Passthrough(Box<Passthrough>),
}

impl Flow {
    /// Asks upstream for identity bytes: blobs are stored as such, and listings are
    /// rewritten as plain JSON.
    pub fn wants_identity(&self) -> bool {
        match self {
            Flow::Download(_) => true,
            Flow::Passthrough(p) => p.rewrites_json || p.lfs_batch.is_some(),
            Flow::Local => false,
        }
    }
}

pub struct Ctx {
    pub request_id: String,
    /// Who asked, as `trusted_proxies` lets hf-edge tell.
    pub client: Client,
    /// The mount the path named, set first thing in `request_filter`.
    pub mount: Option<Arc<Mount>>,
    pub started: Instant,
    pub route: Option<Route>,
    /// The credentials used upstream: the client's own, a site key's, else the site token.
    pub auth: Option<HeaderValue>,
    pub flow: Flow,
    pub upstream_sent: Option<Instant>,
    /// Time to the upstream response header.
    pub upstream_time: Option<Duration>,
}

impl Ctx {
    pub fn new(request_id: String) -> Ctx {
        Ctx {
            request_id,
            client: Client::default(),
            mount: None,
            started: Instant::now(),
            route: None,
            auth: None,
            flow: Flow::Local,
            upstream_sent: None,
            upstream_time: None,
        }
    }

    /// Where the upstream request goes; `None` for a download with nowhere to fetch from (a
    /// stale answer whose blob went missing).
    pub fn target(&self) -> Option<&Target> {
        match &self.flow {
            Flow::Download(d) => d.target.as_ref(),
            Flow::Passthrough(p) => Some(&p.target),
            Flow::Local => None,
        }
    }

    pub fn download(&self) -> Option<&Download> {
        match &self.flow {
            Flow::Download(d) => Some(d),
            _ => None,
        }
    }
}

/// Where the upstream request goes, and whether it may carry credentials.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub class: HostClass,
}

impl Target {
    pub fn to(url: Url, upstream: &Upstream) -> Target {
        Target {
            class: upstream.classify(&url),
            url,
        }
    }

    /// Points `req` at this target: its path and query, its `Host`, and credentials only if
    /// it is the Hub (never a CDN: signed URLs need none, and S3 refuses both at once).
    pub fn apply(&self, req: &mut RequestHeader, auth: Option<&HeaderValue>) -> Result<()> {
        let uri = self
            .url
            .path_and_query
            .parse()
            .or_err(ErrorType::InternalError, "invalid upstream URI")?;
        req.set_uri(uri);
        req.insert_header(header::HOST, self.url.origin.host_header())?;
        req.remove_header(&header::AUTHORIZATION);
        req.remove_header(&header::COOKIE);
        match (self.class, auth) {
            (HostClass::Hub, Some(auth)) => req.insert_header(header::AUTHORIZATION, auth.clone()),
            _ => Ok(()),
        }
    }
}

/// The upstream peer failed before a target was known: nowhere to fetch from.
pub fn no_target() -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(504),
        "the Hub cannot be reached and this file is not cached",
    )
}

/// A download's state.
pub struct Download {
    pub request: ResolveRequest,
    /// What the Hub said about the file.
    pub meta: FileMeta,
    pub file_name: String,
    /// Where the body comes from on a miss; `None` when only the store can serve it.
    pub target: Option<Target>,
    /// Redirects followed on the body request.
    pub hops: usize,
    /// The expired download URL was already signed anew once.
    pub reresolved: bool,
    /// How the store answered (hit, miss, coalesced); `None`: not from the store (uncached).
    pub cache_result: Option<CacheResult>,
    /// The range the body request asked upstream for (uncached files only).
    pub upstream_range: Option<std::ops::Range<u64>>,
    /// Cuts a whole upstream body to the client's range (an origin that ignored `Range`).
    pub cut: Option<Cut>,
    /// Checks a whole uncached body against its content address before its last bytes go out.
    pub check: Option<BodyCheck>,
    /// Uncached body requests asked again after failing before any byte was used.
    pub body_retries: usize,
}

impl Download {
    /// The cache result label of this download.
    pub fn cache_result(&self) -> CacheResult {
        self.cache_result.unwrap_or(CacheResult::Bypass)
    }
}

/// A pass-through's state.
pub struct Passthrough {
    pub target: Target,
    /// `scheme://host` as the client reached hf-edge, for rewritten `Link`s.
    pub public_base: Option<String>,
    /// A listing whose JSON is rewritten (tree, paths-info, revision info).
    pub rewrites_json: bool,
    /// The JSON body being collected, once the answer is known to be rewritten.
    pub json: Option<Vec<u8>>,
    /// For the API answers `snapshot_download` needs, in the query forms clients send: the
    /// key its last good answer is kept under (`snapshots::key_for`).
    pub snapshot_key: Option<String>,
    /// The rewritten `Link` of the answer being kept.
    pub snapshot_link: Option<String>,
    /// The answer is the Hub's 404 `EntryNotFound` (its message), kept like a listing.
    pub entry_not_found: Option<String>,
    /// A git-lfs batch request, whose download actions are rewritten to point at hf-edge.
    pub lfs_batch: Option<LfsBatch>,
}

/// A git-lfs batch request being passed through.
pub struct LfsBatch {
    pub repo: Repo,
    /// The client's own `Authorization` (not what hf-edge sends upstream for it), given back
    /// in the rewritten actions so that the object requests carry the same identity.
    pub client_auth: Option<HeaderValue>,
}
