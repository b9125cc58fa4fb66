//! Per-request state the proxy phases share.

use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::hub::grammar::Route;
use crate::hub::headers::FileMeta;
use crate::hub::upstream::{HostClass, Url};

/// Where the upstream request goes, and whether it may carry credentials.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub class: HostClass,
}

pub struct Ctx {
    pub request_id: String,
    pub started: Instant,
    pub route: Option<Route>,
    /// The credentials used upstream: the client's own, else the site token.
    pub auth: Option<HeaderValue>,
    /// For a `/resolve` GET: what the Hub said about the file.
    pub file: Option<FileMeta>,
    pub file_name: String,
    pub target: Option<Target>,
    /// Redirects followed on the body request.
    pub hops: usize,
    /// A JSON body being collected to drop `xetHash` (tree and paths-info answers).
    pub json: Option<Vec<u8>>,
    /// `scheme://host` as the client reached hf-edge, for rewritten `Link`s.
    pub public_base: Option<String>,
    /// The cache result where hf-edge knows it better than Pingora's phase: `coalesced` (a
    /// fill another request started) or `hit` (served from the store outside the cache phase).
    pub cache_result_known: Option<&'static str>,
    /// For the API answers `snapshot_download` needs: the key its last good answer is kept
    /// under (path and query).
    pub snapshot_key: Option<String>,
    /// The rewritten `Link` of the answer being kept.
    pub snapshot_link: Option<String>,
    /// The expired download URL was already re-resolved once.
    pub reresolved: bool,
    pub upstream_sent: Option<Instant>,
    /// Time to the upstream response header (body request or metadata).
    pub upstream_time: Option<Duration>,
    /// The part of the file this response carries (blob offsets), once its header is built.
    pub body_range: Option<std::ops::Range<u64>>,
    /// The upstream body was cut and the rest came from the store's resumed fill.
    pub resumed: bool,
    /// Body requests asked again after failing before any byte was used.
    pub body_retries: usize,
}

impl Ctx {
    pub fn new(request_id: String) -> Ctx {
        Ctx {
            request_id,
            started: Instant::now(),
            route: None,
            auth: None,
            file: None,
            file_name: String::new(),
            target: None,
            hops: 0,
            json: None,
            public_base: None,
            cache_result_known: None,
            snapshot_key: None,
            snapshot_link: None,
            reresolved: false,
            upstream_sent: None,
            upstream_time: None,
            body_range: None,
            resumed: false,
            body_retries: 0,
        }
    }
}
