//! When the Hub is slow, failing, rate-limiting or gone: what hf-edge still serves, and how it
//! says so.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{request, request_with_body, Edge, FakeHub};

const LFS: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";
const CONFIG: &str = "/gpt2/resolve/main/config.json";

/// An hf-edge whose branch answers go stale after 1 s.
fn short_ttl(hub: &FakeHub, upstream_extra: &str) -> Edge {
    let edge = Edge::start(hub, upstream_extra);
    let cfg = edge.dir.path().join("hf-edge.yaml");
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("revision_ttl: 60s", "revision_ttl: 1s");
    std::fs::write(&cfg, yaml).unwrap();
    let mut edge = edge;
    edge.restart();
    edge
}

#[test]
fn a_hub_outage_after_a_restart_serves_what_was_known_marked_stale() {
    let hub = FakeHub::start();
    let mut edge = short_ttl(&hub, "");
    let warm = edge.get(LFS, &[]);
    assert_eq!(warm.status, 200);
    let commit = warm.header("x-repo-commit").unwrap().to_string();
    edge.restart(); // metadata must come back from disk
    hub.fault(json!({"mode": "down", "server": "hub"}));

    for r in [edge.head(LFS, &[]), edge.get(LFS, &[])] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-repo-commit"), Some(commit.as_str()));
        assert!(
            r.header("warning").is_some_and(|w| w.contains("stale")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(edge.get(LFS, &[]).body, warm.body);
    // Never seen: a clear 502, not a 404 the client would take as final.
    let cold = edge.get("/gpt2/resolve/main/onnx/model.onnx", &[]);
    assert_eq!(cold.status, 502, "{}", cold.text());
    let metrics = request(edge.metrics, "GET", "/metrics", &[]).text();
    assert!(!metrics.contains("hf_edge_revision_lookups_total{result=\"stale_served\"} 0"));
}

#[test]
fn bursts_of_503_are_retried_and_then_answered_stale() {
    let hub = FakeHub::start();
    let edge = short_ttl(&hub, "");
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    // One 503: retried at once, a fresh answer.
    hub.fault(
        json!({"mode": "status", "status": 503, "server": "hub", "method": "HEAD", "times": 1}),
    );
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("warning").is_none(), "a retry got a fresh answer");
    // A lasting burst: the last known answer, marked stale.
    std::thread::sleep(Duration::from_millis(1100));
    hub.fault(json!({"mode": "status", "status": 503, "server": "hub", "method": "HEAD"}));
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("warning").is_some());
}

#[test]
fn after_a_failure_known_answers_are_served_without_asking_until_the_hold_down_ends() {
    let hub = FakeHub::start();
    let edge = short_ttl(&hub, "  failure_hold_down: 1s\n");
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    hub.fault(json!({"mode": "down", "server": "hub"}));
    hub.clear_log();
    let first = edge.head(CONFIG, &[]);
    assert!(
        first.header("warning").is_some(),
        "stale once the Hub failed"
    );
    let asked = hub.log().len();
    assert_eq!(asked, 3, "one HEAD and its two retries");
    let started = Instant::now();
    for _ in 0..5 {
        let r = edge.head(CONFIG, &[]);
        assert!(r.header("warning").is_some());
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no waiting on the Hub"
    );
    assert_eq!(
        hub.log().len(),
        asked,
        "the Hub is not asked during the hold-down"
    );
    // A file with nothing to fall back on still asks, once.
    assert_eq!(
        edge.head("/gpt2/resolve/main/onnx/model.onnx", &[]).status,
        502
    );
    assert_eq!(hub.log().len(), asked + 1, "no retries while the Hub fails");
    hub.clear_faults();
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = edge.head(CONFIG, &[]);
    assert_eq!(fresh.status, 200);
    assert!(
        fresh.header("warning").is_none(),
        "asked again after the hold-down"
    );
}

#[test]
fn rate_limits_without_an_earlier_answer_pass_through() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(
        json!({"mode": "status", "status": 429, "server": "hub", "times": 1,
        "headers": {"Retry-After": "9"}}),
    );
    let r = edge.head(CONFIG, &[]);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("9")));
}

#[test]
fn offline_mode_serves_the_cache_and_nothing_else() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(&hub, "", "ops:\n  admin_token: t0ken-admin\n");
    let tree = "/api/models/gpt2/tree/main?recursive=true";
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    let online_tree = edge.get(tree, &[]);
    assert_eq!(online_tree.status, 200);
    let admin = ("Authorization", "Bearer t0ken-admin");
    let toggle = |on: bool| {
        let path = format!("/admin/offline?enabled={on}");
        let r = request_with_body(edge.metrics, "POST", &path, &[admin], b"");
        assert_eq!(r.json()["offline"], on);
    };
    // Unauthenticated, or from a web page (a cross-site form post carries Origin): refused.
    let anonymous = request_with_body(
        edge.metrics,
        "POST",
        "/admin/offline?enabled=true",
        &[],
        b"",
    );
    assert_eq!(anonymous.status, 401);
    let wrong = ("Authorization", "Bearer t0ken-admiN");
    let guessed = request_with_body(
        edge.metrics,
        "POST",
        "/admin/offline?enabled=true",
        &[wrong],
        b"",
    );
    assert_eq!(guessed.status, 401);
    let page = ("Origin", "http://evil.test");
    let cross = request_with_body(
        edge.metrics,
        "POST",
        "/admin/offline?enabled=true",
        &[page],
        b"",
    );
    assert_eq!(cross.status, 403);
    let state = request(edge.metrics, "GET", "/admin/offline", &[admin]);
    assert_eq!(
        state.json()["offline"],
        false,
        "nothing refused switched it"
    );
    toggle(true);
    hub.clear_log();
    let cached = edge.get(CONFIG, &[]);
    assert_eq!(cached.status, 200);
    let uncached = edge.get("/gpt2/resolve/main/pytorch_model.bin", &[]);
    assert_eq!(uncached.status, 504);
    assert!(uncached.json()["error"]
        .as_str()
        .unwrap()
        .contains("offline"));
    let stale_tree = edge.get(tree, &[]);
    assert_eq!(stale_tree.status, 200);
    assert_eq!(stale_tree.body, online_tree.body);
    assert!(stale_tree.header("warning").is_some());
    assert_eq!(edge.get("/api/whoami-v2", &[]).status, 504);
    assert!(hub.log().is_empty(), "offline: the Hub is never contacted");
    let ready = request(edge.metrics, "GET", "/readyz", &[]);
    assert_eq!(ready.status, 200, "offline mode counts as ready");
    toggle(false);
    assert_eq!(
        edge.get("/gpt2/resolve/main/pytorch_model.bin", &[]).status,
        200
    );
}

#[test]
fn expired_signed_urls_are_signed_again() {
    let hub = FakeHub::start_with(&["--cdn-url-ttl", "1"]);
    let edge = Edge::start(&hub, "");
    assert_eq!(
        edge.head(LFS, &[]).status,
        200,
        "metadata with a signed URL"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    let cdn = cdn_statuses(&hub);
    assert_eq!(
        cdn,
        vec![403, 200],
        "the expired URL was refused, then a fresh one used"
    );
}

#[test]
fn a_push_to_main_is_seen_within_revision_ttl() {
    let hub = FakeHub::start();
    let edge = short_ttl(&hub, "");
    let before = edge
        .head(CONFIG, &[])
        .header("x-repo-commit")
        .unwrap()
        .to_string();
    let pushed = request_with_body(
        hub.addr(),
        "POST",
        "/_fake/push",
        &[],
        json!({"repo": "gpt2", "files": {"config.json": "{\"pushed\": true}"}})
            .to_string()
            .as_bytes(),
    )
    .json()["commit"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(before, pushed);
    let started = Instant::now();
    loop {
        let r = edge.get(CONFIG, &[]);
        if r.header("x-repo-commit") == Some(pushed.as_str()) {
            assert_eq!(r.text(), "{\"pushed\": true}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "new commit not seen in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

/// Cuts the CDN's next body after 100 000 bytes; the pause before the body lets hf-edge send
/// the response header (and start its fill) first, as it would for any real download.
fn cut_after_header() -> serde_json::Value {
    json!({"mode": "drop_after", "server": "cdn", "bytes": 100_000, "times": 1, "body_delay": 0.2})
}

/// The status of each response the CDN gave, in order.
fn cdn_statuses(hub: &FakeHub) -> Vec<u64> {
    hub.log()
        .iter()
        .filter(|e| e["server"] == "cdn")
        .map(|e| e["status"].as_u64().unwrap())
        .collect()
}

/// The `Range` header of each GET the CDN saw, in order.
fn cdn_get_ranges(hub: &FakeHub) -> Vec<Option<String>> {
    hub.log()
        .iter()
        .filter(|e| e["server"] == "cdn" && e["method"] == "GET")
        .map(|e| e["headers"]["range"].as_str().map(str::to_string))
        .collect()
}

/// The offset a resumed request asked from (`bytes=N-`).
fn resumed_at(range: &Option<String>) -> u64 {
    let r = range.as_deref().expect("the resume carries a Range");
    r.strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an open range: {r}"))
}

#[test]
fn a_cut_upstream_body_resumes_from_the_last_byte_received() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(cut_after_header());
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    let ranges = cdn_get_ranges(&hub);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let offset = resumed_at(&ranges[1]);
    assert!(offset <= 100_000, "{ranges:?}");
    assert_eq!(edge.metric("hf_edge_upstream_resumes_total"), 1);
    assert_eq!(
        edge.metric("hf_edge_upstream_resumed_bytes_total"),
        r.body.len() as u64 - offset,
        "each byte fetched once"
    );
    let log = std::fs::read_to_string(edge.log_path()).unwrap();
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["path"] == LFS)
        .expect("an access line for the download");
    assert_eq!(
        (&line["status"], &line["cache"], &line["error"]),
        (&json!(200), &json!("miss"), &serde_json::Value::Null),
        "{line}"
    );
    let hit = edge.get(LFS, &[]);
    assert_eq!(
        hit.header("x-hf-edge-cache"),
        Some("hit"),
        "the resumed fill was kept"
    );
    hit.assert_whole_lfs_file();
}

#[test]
fn a_ranged_client_gets_its_range_across_a_resume() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(cut_after_header());
    let part = edge.get(LFS, &[("range", "bytes=40000-")]);
    assert_eq!(part.status, 206, "{}", part.text());
    assert!(!part.truncated);
    let whole = edge.get(LFS, &[]);
    whole.assert_whole_lfs_file();
    assert_eq!(part.body, whole.body[40_000..]);
}

#[test]
fn an_origin_without_ranges_is_read_again_from_the_start() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(cut_after_header());
    hub.fault(json!({"mode": "no_ranges", "server": "cdn", "times": 1}));
    let r = edge.get(LFS, &[]);
    assert_eq!(
        r.status,
        200,
        "{} {:?} {}",
        r.text(),
        hub.log(),
        std::fs::read_to_string(edge.log_path()).unwrap_or_default()
    );
    r.assert_whole_lfs_file();
    let ranges = cdn_get_ranges(&hub);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(resumed_at(&ranges[1]) > 0, "{ranges:?}");
    let statuses = cdn_statuses(&hub);
    assert_eq!(statuses, [200, 200], "the second answer ignored the Range");
}

#[test]
fn a_resume_signs_an_expired_url_again() {
    let hub = FakeHub::start_with(&["--cdn-url-ttl", "2"]);
    let edge = Edge::start(&hub, "");
    // The cut comes after the signed URL expired (2.5 s), so the resume is refused once.
    hub.fault(
        json!({"mode": "drop_after", "server": "cdn", "bytes": 100_000, "times": 1,
        "body_delay": 2.5}),
    );
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    let statuses = cdn_statuses(&hub);
    assert_eq!(
        statuses,
        [200, 403, 206],
        "cut, expired, resumed on a fresh URL"
    );
}

#[test]
fn a_body_that_cannot_be_resumed_is_cut_and_never_stored() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(cut_after_header());
    hub.fault(json!({"mode": "status", "status": 503, "server": "cdn"}));
    let cut = edge.get(LFS, &[]);
    assert!(
        cut.status != 200 || cut.truncated,
        "a cut body must not look complete"
    );
    assert_eq!(
        edge.metric("hf_edge_upstream_resumes_total"),
        3,
        "bounded attempts"
    );
    let tmp = edge.dir.path().join("cache/tmp");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the partial blob was not removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(edge.metric("hf_edge_store_abandoned_fills_total"), 1);
    hub.clear_faults();
    let whole = edge.get(LFS, &[]);
    assert_eq!(
        whole.header("x-hf-edge-cache"),
        Some("miss"),
        "fetched again"
    );
    whole.assert_whole_lfs_file();
}

#[test]
fn a_body_cut_before_it_began_is_fetched_again() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(json!({"mode": "drop_after", "server": "cdn", "bytes": 0, "times": 1}));
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    assert_eq!(cdn_get_ranges(&hub).len(), 2);
}

#[test]
fn a_regular_file_cut_by_the_hub_resumes_from_the_hub() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(
        json!({"mode": "drop_after", "server": "hub", "method": "GET",
        "path": "^/api/resolve-cache/", "bytes": 10, "times": 1, "body_delay": 0.2}),
    );
    let r = edge.get(CONFIG, &[]);
    assert_eq!((r.status, r.truncated), (200, false));
    let log = hub.log();
    let ranges: Vec<Option<&str>> = log
        .iter()
        .filter(|e| e["method"] == "GET")
        .map(|e| e["headers"]["range"].as_str())
        .collect();
    assert_eq!(ranges, [None, Some("bytes=10-")]);
    let hit = edge.get(CONFIG, &[]);
    assert_eq!(
        hit.header("x-hf-edge-cache"),
        Some("hit"),
        "stored: its git oid matched"
    );
    assert_eq!(r.body, hit.body);
}
