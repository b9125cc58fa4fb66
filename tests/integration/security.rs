//! Hostile clients against the Hub's permissions and the site's rules: where credentials go,
//! what the site token signs, repo rules under every spelling, re-checked approvals, and
//! stored answers that no client can poison for another.

use std::time::{Duration, Instant};

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{
    APPROVED, CONFIG, GATED_LFS, GPT2_NEVER_FETCHED, GPT2_WEIGHTS, MANY_FILES_TREE, NOT_APPROVED,
    SITE_TOKEN,
};
use crate::harness::{poll_until, wait_past, Edge};
use crate::http::{first_response, request, request_with_body};

#[test]
fn credentials_never_reach_a_storage_host_beside_the_hub() {
    // Self-hosted Hubs put their S3 storage on the Hub's host at another port; the fake CDN,
    // which refuses Authorization as S3 does, stands there.
    let hub = FakeHub::start_with(&["--cdn-host", "127.0.0.1"]);
    let edge = Edge::start(&hub);
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    let log = hub.log();
    let cdn: Vec<_> = log.iter().filter(|e| e.server == "cdn").collect();
    assert!(!cdn.is_empty(), "the body came from the storage host");
    for e in &cdn {
        assert_eq!(
            e.header("authorization"),
            None,
            "credentials reached storage: {e:?}"
        );
    }
    let hub_heads: Vec<_> = log
        .iter()
        .filter(|e| e.server == "hub" && e.method == "HEAD")
        .collect();
    assert!(!hub_heads.is_empty());
    assert!(hub_heads
        .iter()
        .all(|e| e.header("authorization") == Some(APPROVED.1)));
}

#[test]
fn the_site_token_signs_reads_only() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).token(SITE_TOKEN).start();
    let writes: [(&str, &str, &[u8]); 6] = [
        ("POST", "/api/models/fake-org/many-files/commit/main", b"{}"),
        (
            "POST",
            "/api/models/fake-org/many-files/preupload/main",
            b"{}",
        ),
        ("PUT", "/api/models/fake-org/many-files/settings", b"{}"),
        ("DELETE", "/api/repos/delete", b"{}"),
        (
            "POST",
            "/fake-org/many-files.git/info/lfs/objects/batch",
            br#"{"operation":"upload","objects":[]}"#,
        ),
        ("POST", "/fake-org/many-files.git/git-receive-pack", b"0000"),
    ];
    let reads: [(&str, &str, &[u8]); 3] = [
        (
            "POST",
            "/fake-org/many-files.git/info/lfs/objects/batch",
            br#"{"operation":"download","objects":[]}"#,
        ),
        (
            "POST",
            "/api/models/fake-org/many-files/paths-info/main",
            b"paths=README.md",
        ),
        ("GET", "/api/models/fake-org/many-files/revision/main", b""),
    ];
    for (method, path, body) in writes.iter().chain(&reads) {
        hub.clear_log();
        let r = request_with_body(edge.addr, method, path, &[], body);
        assert_ne!(r.status, 0, "{method} {path}");
        let log = hub.log();
        let sent = log
            .iter()
            .find(|e| e.method == *method && e.path == *path)
            .unwrap_or_else(|| panic!("{method} {path} did not reach the Hub: {log:?}"));
        let is_read = reads
            .iter()
            .any(|(m, p, b)| m == method && p == path && b == body);
        let site = format!("Bearer {SITE_TOKEN}");
        let want = is_read.then_some(site.as_str());
        assert_eq!(sent.header("authorization"), want, "{method} {path}");
    }
    // A client's own token is its identity for everything, writes included.
    hub.clear_log();
    request_with_body(edge.addr, "POST", writes[0].1, &[NOT_APPROVED], b"{}");
    assert_eq!(hub.log()[0].header("authorization"), Some(NOT_APPROVED.1));
}

#[test]
fn repo_rules_hold_against_every_spelling_and_redirect() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .deny_repos(&["fake-org/many-files"])
        .start();
    for path in [
        "/FAKE-ORG/Many-Files/resolve/main/README.md",
        "/api/models/Fake-Org/many-files/tree/main",
        "/fake-org/MANY-FILES.git/info/lfs/objects/batch",
    ] {
        let r = edge.get(path, &[]);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.header("x-error-code"), Some("GatedRepo"), "{path}");
    }
    assert!(
        hub.log().is_empty(),
        "refused before anything went upstream"
    );

    // A repo renamed to a denied one: the Hub's redirect is checked against the rules too.
    hub.fault(
        Fault::status(307)
            .on_hub()
            .on_path("^/gpt2/resolve/main/config.json$")
            .header("Location", "/fake-org/many-files/resolve/main/README.md"),
    );
    let moved = edge.get(CONFIG, &[]);
    assert_eq!(moved.status, 403, "{}", moved.text());
    assert!(moved.text().contains("fake-org/many-files"));
    assert_eq!(
        hub.body_fetches(),
        0,
        "nothing of the denied repo was fetched"
    );

    let edge = Edge::builder(&hub).allow_repos(&["fake-org/*"]).start();
    hub.clear_log();
    for path in [
        "/api/repos/create",
        "/api/unknown-route",
        "/api/models/gpt2/tree/main",
    ] {
        assert_eq!(edge.get(path, &[]).status, 403, "{path}");
    }
    assert!(hub.log().is_empty());
    assert_eq!(edge.get("/api/whoami-v2", &[APPROVED]).status, 200);
    let listed = edge.get("/api/models/fake-org/many-files/tree/main", &[]);
    assert_eq!(listed.status, 200, "{}", listed.text());
}

#[test]
fn a_repo_made_private_stops_being_served_within_auth_ttl() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).auth_ttl("1s").start();
    let files = [CONFIG, GPT2_WEIGHTS, GPT2_NEVER_FETCHED];
    for f in files {
        assert_eq!(edge.get(f, &[]).status, 200, "{f}");
    }
    // Once the approval expired, one metadata request renews it for the whole repo.
    wait_past(Instant::now(), Duration::from_secs(1));
    hub.clear_log();
    for f in files {
        assert_eq!(edge.get(f, &[]).status, 200, "{f}");
    }
    let heads = hub
        .log()
        .iter()
        .filter(|e| e.method == "HEAD" && e.path.starts_with("/gpt2/"))
        .count();
    assert_eq!(
        heads,
        1,
        "one approval per repo and identity: {:?}",
        hub.log()
    );

    // The repo turns private: within auth_ttl the cache stops serving it.
    hub.fault(
        Fault::status(401)
            .on_hub()
            .on_path("^/gpt2/")
            .header("X-Error-Code", "RepoNotFound")
            .header("X-Error-Message", "Repository not found"),
    );
    let refused = poll_until(|| edge.get(files[0], &[]).status, |s| *s == 401);
    assert_eq!(refused, 401, "a private repo was still served from cache");
    for f in files {
        let r = edge.get(f, &[]);
        assert_eq!(r.status, 401, "{f}");
        assert_eq!(r.header("x-error-code"), Some("RepoNotFound"));
    }
}

/// A GET with the client's own `Host` header: status and the `Link` header.
fn get_as_host(addr: std::net::SocketAddr, path: &str, host: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let r = first_response(addr, req.as_bytes()).expect("a response");
    (r.status, r.header("link").unwrap_or_default().to_string())
}

#[test]
fn a_hostile_host_header_never_reaches_another_clients_links() {
    let hub = FakeHub::start_with(&["--page-size", "2"]);
    let edge = Edge::start(&hub);
    let tree = MANY_FILES_TREE;
    let (status, link) = get_as_host(edge.addr, tree, "evil.test");
    assert_eq!(status, 200);
    assert!(link.contains("http://evil.test/"), "{link}");
    // The Hub goes down; another client asks for the same listing and gets the kept answer.
    hub.fault(Fault::down().on_hub());
    let host = format!("127.0.0.1:{}", edge.addr.port());
    let kept = edge.get(tree, &[]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert!(kept.is_stale(), "served from the kept answer");
    let link = kept.header("link").unwrap();
    assert!(!link.contains("evil.test"), "{link}");
    assert!(
        link.starts_with(&format!("<http://{host}/api/models/")),
        "{link}"
    );
}

#[test]
fn store_files_are_private_to_the_service() {
    use std::os::unix::fs::PermissionsExt;
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    let cache = edge.cache_dir();
    let mut checked = 0;
    let mut stack = vec![cache.clone()];
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "a blob and the journals were checked");
    // No signed URL in the access log or the server's own log.
    let log = edge.log_text();
    assert!(!log.contains("Signature="), "a signed URL was logged");
    let metrics = request(edge.metrics, "GET", "/metrics", &[]).text();
    assert!(!metrics.contains("Signature="));
}
