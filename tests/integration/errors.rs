//! Bad input and upstream failures: clear statuses, JSON bodies, nothing partial kept.

use serde_json::json;

use crate::harness::{free_port, request, Edge, FakeHub};

#[test]
fn hub_errors_pass_through_with_their_headers() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let cases = [
        ("/gpt2/resolve/main/missing.json", 404, "EntryNotFound"),
        (
            "/gpt2/resolve/no-such-branch/config.json",
            404,
            "RevisionNotFound",
        ),
        (
            "/fake-org/nope/resolve/main/config.json",
            401,
            "RepoNotFound",
        ),
        (
            "/fake-org/gated-model/resolve/main/config.json",
            401,
            "GatedRepo",
        ),
    ];
    for (path, status, code) in cases {
        for r in [edge.get(path, &[]), edge.head(path, &[])] {
            assert_eq!(r.status, status, "{path}");
            assert_eq!(r.header("x-error-code"), Some(code), "{path}");
        }
        let body = edge.get(path, &[]).json();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let missing = edge.head("/gpt2/resolve/main/missing.json", &[]);
    assert_eq!(missing.header("x-repo-commit").map(str::len), Some(40));
}

#[test]
fn malformed_and_traversal_paths_get_400_json() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let paths = [
        "/gpt2/resolve/main/../../../etc/passwd",
        "/gpt2/resolve/main/%2e%2e/%2e%2e/etc/passwd",
        "/gpt2/resolve/main/..%2F..%2Fetc%2Fpasswd",
        "/gpt2/resolve/main/a%5C..%5Cb",
        "/gpt2/resolve/main/a%00b",
        "/gpt2/resolve/main/bad%zzescape",
        "/api/models/../../admin",
        "/gpt2/resolve/main",
    ];
    for p in paths {
        let r = edge.get(p, &[]);
        assert_eq!(r.status, 400, "{p}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{p}");
    }
    assert!(hub.log().is_empty(), "refused paths never reach upstream");
}

#[test]
fn unreachable_upstream_is_502_and_never_404() {
    // Nothing listens on a port that was just free.
    let edge = Edge::start_at(&format!("http://127.0.0.1:{}", free_port()), "");
    for method in ["GET", "HEAD"] {
        let r = request(edge.addr, method, "/gpt2/resolve/main/config.json", &[]);
        assert_eq!(r.status, 502, "{method}");
    }
    let r = edge.get("/api/models/gpt2", &[]);
    assert_eq!(r.status, 502);
    assert!(r.json()["error"].is_string());
}

#[test]
fn slow_upstream_is_504() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(json!({"mode": "slow", "server": "hub", "delay": 5, "times": 2}));
    let r = edge.head("/gpt2/resolve/main/config.json", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
}

#[test]
fn upstream_errors_keep_retry_after() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(
        json!({"mode": "status", "status": 429, "server": "hub", "times": 1,
        "headers": {"Retry-After": "7", "RateLimit": "\"api\";r=0;t=7"}}),
    );
    let r = edge.head("/gpt2/resolve/main/config.json", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("ratelimit"), Some("\"api\";r=0;t=7"));
}

/// Sends raw bytes and returns the status line's code (0 if the server closed without one).
fn raw_status(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn smuggling_shapes_and_oversized_requests_are_refused() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let big = "a".repeat(200_000);
    let long = "a".repeat(20_000);
    let cases: Vec<(String, Vec<u8>, u16)> = vec![
        (
            "two Content-Length".into(),
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            400,
        ),
        (
            "200 KB header".into(),
            format!("GET /gpt2/resolve/main/config.json HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            431,
        ),
        (
            "20 KB URL".into(),
            format!("GET /gpt2/resolve/main/{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
        ),
    ];
    for (what, bytes, status) in cases {
        assert_eq!(raw_status(edge.addr, &bytes), status, "{what}");
    }
    assert!(hub.log().is_empty(), "nothing refused reached upstream");

    // Content-Length with Transfer-Encoding: chunked framing wins and the connection closes
    // after the request, so the request hidden in the "body" is never read.
    let smuggle = b"POST /api/models/gpt2/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_status(edge.addr, smuggle);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let paths: Vec<String> = hub.log().iter().map(|e| e["path"].to_string()).collect();
    assert!(
        !paths.iter().any(|p| p.contains("whoami")),
        "a smuggled request reached upstream: {paths:?}"
    );
    for range in ["bytes=0-99999999999999999999999", "bytes=abc", "bytes=-0-1"] {
        let r = edge.get("/gpt2/resolve/main/config.json", &[("Range", range)]);
        assert_eq!(r.status, 200, "{range}: an absurd range is ignored");
    }
    let health = request(edge.metrics, "GET", "/healthz", &[]);
    assert_eq!(health.status, 200, "the process stays up");
}
