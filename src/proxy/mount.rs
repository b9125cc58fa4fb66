//! Mounts: upstreams under path prefixes, so that `HF_ENDPOINT=http://edge:8080/internal`
//! reaches another Hub than `HF_ENDPOINT=http://edge:8080`. A request is routed by its path's
//! prefix, which is taken off before anything else reads the path; the flows put it back on
//! what they send the client (`Link`, `Location`). Each mount has its own upstream, tokens,
//! rules, resolver (metadata, approvals) and API snapshots; the blob store is shared.
//!
//! What a reload replaces is the [`Live`] set as a whole: a request keeps the mount it was
//! routed to until it ends.

use std::sync::Arc;

use http::HeaderValue;

use super::{DownloadFlow, PassthroughFlow};
use crate::access::Policy;
use crate::access_log::AccessLog;
use crate::cluster::Cluster;
use crate::hub::upstream::Upstream;

/// One upstream under a prefix.
pub struct Mount {
    /// `/`, or `/name[/more]` without a trailing slash. Also its metric and log label
    /// (bounded: one per configured mount).
    pub prefix: String,
    pub upstream: Arc<Upstream>,
    pub policy: Policy,
    /// `Bearer {upstream.token}`, for clients that bring no token.
    pub site_auth: Option<HeaderValue>,
    pub downloads: DownloadFlow,
    pub passthrough: PassthroughFlow,
}

/// What a reload swaps: the mounts and where access lines go.
pub struct Live {
    /// The mount at `/` last: prefixes do not nest (config validation), so the first other
    /// prefix that matches is the only one.
    mounts: Vec<Arc<Mount>>,
    pub access_log: AccessLog,
    /// `cluster`, shared by every mount's downloads.
    cluster: Option<Arc<Cluster>>,
}

impl Live {
    /// `mounts` must hold exactly one mount at `/`.
    pub fn new(
        mut mounts: Vec<Arc<Mount>>,
        access_log: AccessLog,
        cluster: Option<Arc<Cluster>>,
    ) -> Live {
        mounts.sort_by_key(|m| m.prefix == "/");
        assert!(
            mounts.iter().filter(|m| m.prefix == "/").count() == 1,
            "one mount at /"
        );
        Live {
            mounts,
            access_log,
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    pub fn mounts(&self) -> &[Arc<Mount>] {
        &self.mounts
    }

    /// The mount at `/`.
    pub fn root(&self) -> &Arc<Mount> {
        self.mounts.last().expect("one mount at /")
    }

    /// The mount a request path is for, and the path under it (`None`: the path as it is).
    pub fn route<'p>(&self, path: &'p str) -> (&Arc<Mount>, Option<&'p str>) {
        for m in &self.mounts {
            if let Some(inner) = under(&m.prefix, path) {
                return (m, Some(inner));
            }
        }
        (self.root(), None)
    }
}

/// `path` under a non-root `prefix`: `/internal/api/x` under `/internal` is `/api/x`,
/// `/internal` itself is `/`; `/internals` is not under it.
fn under<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    if prefix == "/" {
        return None;
    }
    match path.strip_prefix(prefix)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_under_a_prefix_only_at_a_segment_boundary() {
        assert_eq!(under("/internal", "/internal/api/x"), Some("/api/x"));
        assert_eq!(under("/internal", "/internal"), Some("/"));
        assert_eq!(under("/internal", "/internal/"), Some("/"));
        assert_eq!(under("/internal", "/internals/api"), None);
        assert_eq!(
            under("/a/b", "/a/b/gpt2/resolve/main/x"),
            Some("/gpt2/resolve/main/x")
        );
        assert_eq!(under("/a/b", "/a/gpt2"), None);
        assert_eq!(under("/", "/gpt2"), None);
    }
}
