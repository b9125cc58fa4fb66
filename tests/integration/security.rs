//! Hostile clients against the Hub's permissions and the site's rules: where credentials go,
//! what the site token signs, repo rules under every spelling, re-checked approvals, and
//! stored answers that no client can poison for another.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{request, request_with_body, Edge, FakeHub};

const GATED_LFS: &str = "/fake-org/gated-model/resolve/main/model.safetensors";
const APPROVED: (&str, &str) = ("Authorization", "Bearer hf_approved");
const SITE_TOKEN: &str = "  token: hf_edge_site\n";

fn authorization(entry: &Value) -> Option<&str> {
    entry["headers"]["authorization"].as_str()
}

/// Polls `done` until it holds or `limit` passes (events, not timing windows).
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn credentials_never_reach_a_storage_host_beside_the_hub() {
    // Self-hosted Hubs put their S3 storage on the Hub's host at another port; the fake CDN,
    // which refuses Authorization as S3 does, stands there.
    let hub = FakeHub::start_with(&["--cdn-host", "127.0.0.1"]);
    let edge = Edge::start(&hub, "");
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    let cdn: Vec<Value> = hub
        .log()
        .into_iter()
        .filter(|e| e["server"] == "cdn")
        .collect();
    assert!(!cdn.is_empty(), "the body came from the storage host");
    for e in &cdn {
        assert_eq!(authorization(e), None, "credentials reached storage: {e}");
    }
    let hub_heads = hub
        .log()
        .into_iter()
        .filter(|e| e["server"] == "hub" && e["method"] == "HEAD")
        .collect::<Vec<_>>();
    assert!(hub_heads
        .iter()
        .all(|e| authorization(e) == Some("Bearer hf_approved")));
}

#[test]
fn the_site_token_signs_reads_only() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, SITE_TOKEN);
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
            .find(|e| e["method"] == *method && e["path"] == *path)
            .unwrap_or_else(|| panic!("{method} {path} did not reach the Hub: {log:?}"));
        let is_read = reads
            .iter()
            .any(|(m, p, b)| m == method && p == path && b == body);
        let want = is_read.then_some("Bearer hf_edge_site");
        assert_eq!(authorization(sent), want, "{method} {path}");
    }
    // A client's own token is its identity for everything, writes included.
    hub.clear_log();
    let own = ("Authorization", "Bearer hf_valid");
    request_with_body(edge.addr, "POST", writes[0].1, &[own], b"{}");
    assert_eq!(authorization(&hub.log()[0]), Some("Bearer hf_valid"));
}

#[test]
fn repo_rules_hold_against_every_spelling_and_redirect() {
    let hub = FakeHub::start();
    let rules = "access:\n  repos:\n    deny: [\"fake-org/many-files\"]\n";
    let edge = Edge::start_with(&hub, "", rules);
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
    hub.fault(json!({"mode": "status", "status": 307, "server": "hub",
        "path": "^/gpt2/resolve/main/config.json$",
        "headers": {"Location": "/fake-org/many-files/resolve/main/README.md"}}));
    let moved = edge.get("/gpt2/resolve/main/config.json", &[]);
    assert_eq!(moved.status, 403, "{}", moved.text());
    assert!(moved.text().contains("fake-org/many-files"));
    assert_eq!(
        hub.body_fetches(),
        0,
        "nothing of the denied repo was fetched"
    );

    let allow = "access:\n  repos:\n    allow: [\"fake-org/*\"]\n";
    let edge = Edge::start_with(&hub, "", allow);
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
    let edge = Edge::start_with(&hub, "", "access:\n  auth_ttl: 1s\n");
    let files = [
        "/gpt2/resolve/main/config.json",
        "/gpt2/resolve/main/pytorch_model.bin",
        "/gpt2/resolve/main/onnx/config.json",
    ];
    for f in files {
        assert_eq!(edge.get(f, &[]).status, 200, "{f}");
    }
    // Once the approval expired, one metadata request renews it for the whole repo.
    std::thread::sleep(Duration::from_millis(1200));
    hub.clear_log();
    for f in files {
        assert_eq!(edge.get(f, &[]).status, 200, "{f}");
    }
    let heads = hub
        .log()
        .iter()
        .filter(|e| e["method"] == "HEAD" && e["path"].as_str().unwrap().starts_with("/gpt2/"))
        .count();
    assert_eq!(
        heads,
        1,
        "one approval per repo and identity: {:?}",
        hub.log()
    );

    // The repo turns private: within auth_ttl the cache stops serving it.
    hub.fault(
        json!({"mode": "status", "status": 401, "server": "hub", "path": "^/gpt2/",
        "headers": {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}}),
    );
    let refused = eventually(Duration::from_secs(20), || {
        edge.get(files[0], &[]).status == 401
    });
    assert!(refused, "a private repo was still served from cache");
    for f in files {
        let r = edge.get(f, &[]);
        assert_eq!(r.status, 401, "{f}");
        assert_eq!(r.header("x-error-code"), Some("RepoNotFound"));
    }
}

/// A GET with the client's own `Host` header: status and the `Link` header.
fn get_as_host(addr: std::net::SocketAddr, path: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let link = raw
        .lines()
        .find_map(|l| {
            l.strip_prefix("link: ")
                .or_else(|| l.strip_prefix("Link: "))
        })
        .unwrap_or("")
        .to_string();
    (status, link)
}

#[test]
fn a_hostile_host_header_never_reaches_another_clients_links() {
    let hub = FakeHub::start_with(&["--page-size", "2"]);
    let edge = Edge::start(&hub, "");
    let tree = "/api/models/fake-org/many-files/tree/main?recursive=true";
    let (status, link) = get_as_host(edge.addr, tree, "evil.test");
    assert_eq!(status, 200);
    assert!(link.contains("http://evil.test/"), "{link}");
    // The Hub goes down; another client asks for the same listing and gets the kept answer.
    hub.fault(json!({"mode": "down", "server": "hub"}));
    let host = format!("127.0.0.1:{}", edge.addr.port());
    let kept = edge.get(tree, &[]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert!(
        kept.header("warning").is_some(),
        "served from the kept answer"
    );
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
    let edge = Edge::start(&hub, "");
    assert_eq!(edge.get("/gpt2/resolve/main/config.json", &[]).status, 200);
    let cache = edge.dir.path().join("cache");
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
    let log = std::fs::read_to_string(edge.log_path()).unwrap();
    assert!(!log.contains("Signature="), "a signed URL was logged");
    let metrics = request(edge.metrics, "GET", "/metrics", &[]).text();
    assert!(!metrics.contains("Signature="));
}
