//! Per-request state the proxy phases share.

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

#[derive(Default)]
pub struct Ctx {
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
}
