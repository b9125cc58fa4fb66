//! Bad input and upstream failures: clear statuses, JSON bodies, nothing partial kept.

use std::time::Duration;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, GATED, GPT2_MISSING};
use crate::harness::{free_port, Edge};
use crate::http::{exchange_raw, first_response, request, status_lines};

#[test]
fn hub_errors_pass_through_with_their_headers() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let cases = [
        (GPT2_MISSING, 404, "EntryNotFound"),
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
        (GATED, 401, "GatedRepo"),
    ];
    for (path, status, code) in cases {
        for r in [edge.get(path, &[]), edge.head(path, &[])] {
            assert_eq!(r.status, status, "{path}");
            assert_eq!(r.header("x-error-code"), Some(code), "{path}");
        }
        let body = edge.get(path, &[]).json();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let missing = edge.head(GPT2_MISSING, &[]);
    assert_eq!(missing.header("x-repo-commit").map(str::len), Some(40));
}

#[test]
fn malformed_and_traversal_paths_get_400_json() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
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
        assert!(!r.json_error().is_empty(), "{p}");
    }
    assert!(hub.log().is_empty(), "refused paths never reach upstream");
}

#[test]
fn unreachable_upstream_is_502_and_never_404() {
    // Nothing listens on a port that was just free.
    let edge = Edge::builder_at(&format!("http://127.0.0.1:{}", free_port())).start();
    for method in ["GET", "HEAD"] {
        let r = request(edge.addr, method, CONFIG, &[]);
        assert_eq!(r.status, 502, "{method}");
    }
    let r = edge.get("/api/models/gpt2", &[]);
    assert_eq!(r.status, 502);
    assert!(!r.json_error().is_empty());
}

#[test]
fn slow_upstream_is_504() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(Fault::slow(Duration::from_secs(5)).on_hub().times(2));
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 504, "{}", r.text());
}

#[test]
fn upstream_errors_keep_retry_after() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(
        Fault::status(429)
            .on_hub()
            .once()
            .header("Retry-After", "7")
            .header("RateLimit", "\"api\";r=0;t=7"),
    );
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("ratelimit"), Some("\"api\";r=0;t=7"));
}

#[test]
fn oversized_and_ambiguous_requests_are_refused_before_upstream() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let big = "a".repeat(200_000);
    let long = "a".repeat(20_000);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "two Content-Length",
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            400,
        ),
        (
            "200 KB header",
            format!("GET /gpt2/resolve/main/config.json HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            431,
        ),
        (
            "20 KB URL",
            format!("GET /gpt2/resolve/main/{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
        ),
    ];
    for (what, bytes, status) in cases {
        let r = first_response(edge.addr, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, status, "{what}");
    }
    assert!(hub.log().is_empty(), "nothing refused reached upstream");

    for range in ["bytes=0-99999999999999999999999", "bytes=abc", "bytes=-0-1"] {
        let r = edge.get(CONFIG, &[("Range", range)]);
        assert_eq!(r.status, 200, "{range}: an absurd range is ignored");
    }
    let health = request(edge.metrics, "GET", "/healthz", &[]);
    assert_eq!(health.status, 200, "the process stays up");
}

#[test]
fn a_request_smuggled_behind_content_length_and_chunked_never_reaches_the_hub() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    // Framed by chunked (which wins over Content-Length), the body is empty and a second
    // request follows on the same connection; framed by Content-Length, it would be hidden in
    // the body.
    let smuggle = b"POST /api/models/gpt2/paths-info/main HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = exchange_raw(edge.addr, smuggle);
    assert_eq!(
        status_lines(&raw),
        [200],
        "the POST is answered, then the connection closes:\n{}",
        String::from_utf8_lossy(&raw)
    );
    let seen = hub.log();
    let asked: Vec<(&str, &str)> = seen
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        asked,
        [("POST", "/api/models/gpt2/paths-info/main")],
        "only the POST reached the Hub"
    );
    let post = &seen[0];
    assert_eq!(
        (
            post.header("transfer-encoding"),
            post.header("content-length")
        ),
        (Some("chunked"), None),
        "forwarded framed by chunked alone: {post:?}"
    );
}
