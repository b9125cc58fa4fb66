//! Admission, before anything goes upstream: request sizes no Hub client sends, the Hub's
//! path grammar, and the site's policy (who the client is upstream, which repos it may name).

use std::sync::Arc;

use http::{header, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr};
use pingora_proxy::Session;

use super::mount::{Live, Mount};
use crate::access::{Credentials, Denied, Policy};
use crate::hub::grammar::{self, PathError, Route};
use crate::hub::intent::{self, Intent};

/// Longest request target (path + query) accepted. Hub URLs are far shorter.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names + values) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why a request was refused; each is answered with its status and a JSON error.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("request URL is too long")]
    UriTooLong,
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error(transparent)]
    BadPath(#[from] PathError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("LFS batch request body over {MAX_LFS_BATCH_BYTES} bytes")]
    LfsBatchTooLarge,
    #[error("reading the request body failed")]
    BodyUnreadable,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge => 431,
            Refusal::BadPath(_) => 400,
            Refusal::Denied(d) => d.status(),
            Refusal::LfsBatchTooLarge => 413,
            Refusal::BodyUnreadable => 400,
        }
    }
}

/// Largest LFS batch body read to tell a download from an upload (what Pingora keeps to
/// send on; git-lfs asks for 100 objects per batch, about 10 KB).
const MAX_LFS_BATCH_BYTES: usize = 64 * 1024;

/// An admitted request: its route, the credentials it may use, and what it does.
#[derive(Debug)]
pub struct Admitted {
    pub route: Route,
    pub credentials: Credentials,
    pub intent: Intent,
}

/// The mount the request's path names; from here on its path is the one under the mount's
/// prefix, as the mount's upstream knows it.
pub fn route(req: &mut RequestHeader, live: &Live) -> pingora::Result<Arc<Mount>> {
    let (mount, inner) = live.route(req.uri.path());
    let inner = inner.map(|path| match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    });
    if let Some(path_and_query) = inner {
        let uri = path_and_query
            .parse()
            .or_err(ErrorType::InternalError, "the path under a mount prefix")?;
        req.set_uri(uri);
    }
    Ok(mount.clone())
}

/// Sizes, then the path, then the policy.
pub fn admit(
    req: &RequestHeader,
    policy: &Policy,
    site_auth: Option<&HeaderValue>,
) -> Result<Admitted, Refusal> {
    check_sizes(req)?;
    let route = grammar::parse(req.uri.path())?;
    let credentials = policy.identify(req.headers.get(header::AUTHORIZATION), site_auth)?;
    let intent = intent::of(&req.method, &route, req.uri.path(), req.uri.query());
    let path = req.uri.path();
    let readings = match &route {
        Route::Resolve(r) => vec![r.repo.clone()],
        Route::LfsObject(o) => vec![o.repo.clone()],
        _ => grammar::candidate_repos(path),
    };
    // The status page names no repo (`/status.json` would read as one): repo rules leave it be,
    // a required site key does not.
    let names_no_repo = (readings.is_empty() && grammar::names_no_repo(path))
        || crate::status::Page::at(path).is_some();
    if !names_no_repo {
        policy.check_repos(&readings)?;
    }
    Ok(Admitted {
        route,
        credentials,
        intent,
    })
}

/// The `Authorization` the request goes upstream with: the site's credentials only on reads.
/// An LFS batch signed with them is read first (at most [`MAX_LFS_BATCH_BYTES`], kept by
/// Pingora to send on) to see whether it downloads.
pub async fn sign(
    session: &mut Session,
    admitted: &Admitted,
) -> Result<Option<HeaderValue>, Refusal> {
    let reads_only = match (&admitted.credentials, admitted.intent) {
        (Credentials::Site(_), Intent::LfsBatch) => {
            intent::lfs_batch_reads(&read_body(session).await?)
        }
        (_, intent) => intent == Intent::Read,
    };
    Ok(admitted.credentials.clone().for_request(reads_only))
}

async fn read_body(session: &mut Session) -> Result<Vec<u8>, Refusal> {
    session.enable_retry_buffering();
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| Refusal::BodyUnreadable)?
    {
        if body.len() + chunk.len() > MAX_LFS_BATCH_BYTES {
            return Err(Refusal::LfsBatchTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn check_sizes(req: &RequestHeader) -> Result<(), Refusal> {
    // Framing attacks are Pingora's parser's job: it refuses duplicate Content-Length and bad
    // Transfer-Encoding, and for Content-Length plus Transfer-Encoding drops the length and
    // closes the connection after the request (RFC 9112 §6.1), so nothing is smuggled behind it.
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err(Refusal::UriTooLong);
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(Refusal::HeadersTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn status(r: &RequestHeader, policy: &Policy) -> u16 {
        admit(r, policy, None).map_or_else(|e| e.status(), |_| 200)
    }

    #[test]
    fn refuses_oversized_requests() {
        let open = Policy::default();
        let long = req(&[], &format!("/{}", "a".repeat(MAX_URI_BYTES)));
        assert_eq!(status(&long, &open), 414);
        let big = "b".repeat(MAX_HEADER_BYTES);
        assert_eq!(status(&req(&[("x-big", &big)], "/a"), &open), 431);
        assert_eq!(
            status(&req(&[("content-length", "4")], "/api/x"), &open),
            200
        );
    }

    #[test]
    fn paths_then_policy() {
        let open = Policy::default();
        assert_eq!(status(&req(&[], "/org/m/resolve/main/../x"), &open), 400);
        let deny = Policy {
            deny: vec![crate::access::RepoGlob::parse("org/secret").unwrap()],
            ..Policy::default()
        };
        assert_eq!(
            status(&req(&[], "/org/secret/resolve/main/a.bin"), &deny),
            403
        );
        assert_eq!(
            status(&req(&[], "/api/models/org/secret/tree/main"), &deny),
            403
        );
        let admitted = admit(&req(&[], "/org/m/resolve/main/a.bin"), &deny, None).unwrap();
        assert!(matches!(admitted.route, Route::Resolve(_)));
        assert_eq!(admitted.credentials, Credentials::Anonymous);
        let keyed = Policy {
            require_key: true,
            ..Policy::default()
        };
        assert_eq!(status(&req(&[], "/api/whoami-v2"), &keyed), 401);
    }
}
