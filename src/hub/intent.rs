//! Whether a request only reads: what a site's shared token may sign. Writes (commits,
//! settings, deletes, LFS uploads, git pushes) go upstream with the client's own token or
//! none, never as the site account.

use http::Method;

use super::grammar::{ApiKind, Route};

/// What a request does to the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Read,
    Write,
    /// An LFS batch request: a read for `"operation": "download"`, a write for uploads. Its
    /// body decides ([`lfs_batch_reads`]).
    LfsBatch,
}

pub fn of(method: &Method, route: &Route, path: &str, query: Option<&str>) -> Intent {
    let pushes = query.is_some_and(|q| q.split('&').any(|kv| kv == "service=git-receive-pack"));
    match *method {
        // `info/refs?service=git-receive-pack` starts a push.
        Method::GET | Method::HEAD | Method::OPTIONS if !pushes => Intent::Read,
        Method::POST if *route == Route::Api(ApiKind::PathsInfo) => Intent::Read,
        Method::POST if path.ends_with("/git-upload-pack") => Intent::Read,
        Method::POST if path.ends_with("/info/lfs/objects/batch") => Intent::LfsBatch,
        _ => Intent::Write,
    }
}

/// An LFS batch body asking to download (anything else, or no JSON, is not a read).
pub fn lfs_batch_reads(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("operation")?.as_str().map(|op| op == "download"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::grammar;

    fn intent(method: &str, path_and_query: &str) -> Intent {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let route = grammar::parse(path).unwrap();
        of(&method.parse().unwrap(), &route, path, query)
    }

    #[test]
    fn reads_and_writes() {
        use Intent::*;
        let table = [
            ("GET", "/org/m/resolve/main/config.json", Read),
            ("HEAD", "/org/m/resolve/main/config.json", Read),
            ("GET", "/api/models/org/m/tree/main", Read),
            ("POST", "/api/models/org/m/paths-info/main", Read),
            ("GET", "/org/m.git/info/refs?service=git-upload-pack", Read),
            ("POST", "/org/m.git/git-upload-pack", Read),
            ("POST", "/org/m/git-upload-pack", Read),
            (
                "GET",
                "/org/m.git/info/refs?service=git-receive-pack",
                Write,
            ),
            ("POST", "/org/m.git/git-receive-pack", Write),
            ("POST", "/org/m.git/info/lfs/objects/batch", LfsBatch),
            ("POST", "/api/models/org/m/commit/main", Write),
            ("POST", "/api/models/org/m/preupload/main", Write),
            ("PUT", "/api/models/org/m/settings", Write),
            ("DELETE", "/api/repos/delete", Write),
            ("POST", "/api/repos/create", Write),
        ];
        for (method, path, want) in table {
            assert_eq!(intent(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn lfs_batches_read_only_when_downloading() {
        assert!(lfs_batch_reads(br#"{"operation":"download","objects":[]}"#));
        assert!(!lfs_batch_reads(br#"{"operation":"upload","objects":[]}"#));
        assert!(!lfs_batch_reads(br#"{"objects":[]}"#));
        assert!(!lfs_batch_reads(b"not json"));
    }
}
