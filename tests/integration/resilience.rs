//! When the Hub is slow, failing, rate-limiting or gone: what hf-edge still serves, and how it
//! says so.
//!
//! Cached answers are made stale without waiting for a clock where possible: a restart
//! reloads them from `meta.jsonl` as known but not fresh. Where a TTL must pass, the test
//! waits past it (`wait_past`), which no slowness can break.

use std::time::{Duration, Instant};

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, GPT2, GPT2_MISSING, GPT2_NEVER_FETCHED, GPT2_WEIGHTS, LFS, TINY_DS};
use crate::harness::{wait_for, wait_past, Edge};
use crate::http::{request, request_with_body, sha256_hex};

const STALE_SERVED: (&str, &[(&str, &str)]) = (
    "hf_edge_revision_lookups_total",
    &[("result", "stale_served")],
);

#[test]
fn a_hub_outage_after_a_restart_serves_what_was_known_marked_stale() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub);
    let warm = edge.get(LFS, &[]);
    assert_eq!(warm.status, 200);
    let commit = warm.header("x-repo-commit").unwrap().to_string();
    edge.restart(); // metadata must come back from disk
    hub.fault(Fault::down().on_hub());

    let head = edge.head(LFS, &[]);
    let gets = [edge.get(LFS, &[]), edge.get(LFS, &[])];
    for r in std::iter::once(&head).chain(&gets) {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-repo-commit"), Some(commit.as_str()));
        assert!(r.is_stale(), "{:?}", r.headers);
    }
    for r in &gets {
        assert_eq!(r.body, warm.body);
    }
    // Never seen: a clear 502, not a 404 the client would take as final.
    let cold = edge.get(GPT2_NEVER_FETCHED, &[]);
    assert_eq!(cold.status, 502, "{}", cold.text());
    assert_eq!(
        edge.metric_value(STALE_SERVED.0, STALE_SERVED.1),
        Some(3.0),
        "three stale answers served"
    );
}

#[test]
fn stale_served_counts_each_stale_answer_served_during_an_outage() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub);
    for path in [CONFIG, GPT2_WEIGHTS, LFS] {
        assert_eq!(edge.get(path, &[]).status, 200, "{path}");
    }
    let commit = edge
        .head(CONFIG, &[])
        .header("x-repo-commit")
        .unwrap()
        .to_string();
    edge.restart(); // known from disk, not fresh: every branch request asks the Hub
    assert_eq!(
        edge.metric_value(STALE_SERVED.0, STALE_SERVED.1),
        Some(0.0),
        "the series is there before anything was served stale"
    );

    hub.fault(Fault::down().on_hub());
    let pinned = format!("/gpt2/resolve/{commit}/config.json");
    let requests = [
        ("HEAD", CONFIG),
        ("GET", CONFIG),
        ("GET", CONFIG),
        ("GET", GPT2_WEIGHTS),
        ("HEAD", LFS),
        ("GET", LFS),
        ("GET", pinned.as_str()),    // commit-pinned: never stale
        ("GET", GPT2_NEVER_FETCHED), // nothing known: 502
    ];
    let mut stale = 0;
    for (method, path) in requests {
        let r = request(edge.addr, method, path, &[]);
        if r.is_stale() {
            assert_eq!(r.status, 200, "{method} {path}");
            stale += 1;
        }
    }
    assert_eq!(stale, 6, "each branch request for a known file");
    assert_eq!(edge.stale_served(), stale);
}

#[test]
fn bursts_of_503_are_retried_and_then_answered_stale() {
    let hub = FakeHub::start();
    let ttl = Duration::from_secs(1);
    let edge = Edge::builder(&hub).revision_ttl("1s").start();
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    wait_past(Instant::now(), ttl);
    // One 503: retried at once, a fresh answer.
    hub.fault(Fault::status(503).on_hub().method("HEAD").once());
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 200);
    assert!(!r.is_stale(), "a retry got a fresh answer");
    // A lasting burst: the last known answer, marked stale.
    wait_past(Instant::now(), ttl);
    hub.fault(Fault::status(503).on_hub().method("HEAD"));
    let r = edge.head(CONFIG, &[]);
    assert_eq!(r.status, 200);
    assert!(r.is_stale(), "{:?}", r.headers);
}

#[test]
fn after_a_failure_known_answers_are_served_without_asking_the_hub() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).failure_hold_down("60s").start();
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    edge.restart(); // the answer is known, not fresh
    hub.fault(Fault::down().on_hub());
    hub.clear_log();
    let first = edge.head(CONFIG, &[]);
    assert!(first.is_stale(), "stale once the Hub failed");
    let asked = hub.log().len();
    assert_eq!(asked, 3, "one HEAD and its two retries");
    for _ in 0..5 {
        let r = edge.head(CONFIG, &[]);
        assert!(r.is_stale());
    }
    assert_eq!(
        hub.log().len(),
        asked,
        "the Hub is not asked (nor waited for) during the hold-down"
    );
    // A file with nothing to fall back on still asks, once.
    assert_eq!(edge.head(GPT2_NEVER_FETCHED, &[]).status, 502);
    assert_eq!(hub.log().len(), asked + 1, "no retries while the Hub fails");
}

#[test]
fn what_the_hub_said_is_missing_stays_missing_during_an_outage() {
    // Clients ask for optional files and folders (transformers: added_tokens.json, chat
    // templates); answered 502 while the Hub is down, each costs a client a minute of retries.
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).start();
    let missing_folder = "/api/models/gpt2/tree/main/no-such-folder";
    assert_eq!(edge.head(GPT2_MISSING, &[]).status, 404);
    assert_eq!(edge.get(missing_folder, &[]).status, 404);
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    hub.fault(Fault::down().on_hub());
    for _ in 0..2 {
        let file = edge.head(GPT2_MISSING, &[]);
        assert_eq!(file.status, 404);
        assert_eq!(file.header("x-error-code"), Some("EntryNotFound"));
        let folder = edge.get(missing_folder, &[]);
        assert_eq!(folder.status, 404, "{}", folder.text());
        assert_eq!(folder.header("x-error-code"), Some("EntryNotFound"));
        assert!(folder.is_stale());
        assert_eq!(
            edge.get(CONFIG, &[]).status,
            200,
            "and what it found, found"
        );
    }
    // A file nobody asked for is not known missing.
    assert_eq!(edge.head(GPT2_NEVER_FETCHED, &[]).status, 502);
}

#[test]
fn the_hub_is_asked_again_once_the_hold_down_ends() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).failure_hold_down("1s").start();
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    edge.restart(); // the answer is known, not fresh
    hub.fault(Fault::down().on_hub());
    assert!(edge.head(CONFIG, &[]).is_stale(), "the Hub failed");
    let failed = Instant::now();
    hub.clear_faults();
    wait_past(failed, Duration::from_secs(1));
    hub.clear_log();
    let fresh = edge.head(CONFIG, &[]);
    assert_eq!(fresh.status, 200);
    assert!(!fresh.is_stale(), "asked again after the hold-down");
    assert!(!hub.log().is_empty(), "the Hub answered it");
}

#[test]
fn rate_limits_without_an_earlier_answer_pass_through() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(
        Fault::status(429)
            .on_hub()
            .once()
            .header("Retry-After", "9"),
    );
    let r = edge.head(CONFIG, &[]);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("9")));
}

#[test]
fn offline_mode_serves_the_cache_and_nothing_else() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).admin_token("t0ken-admin").start();
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
    let switch_on = "/admin/offline?enabled=true";
    let anonymous = request_with_body(edge.metrics, "POST", switch_on, &[], b"");
    assert_eq!(anonymous.status, 401);
    let wrong = ("Authorization", "Bearer t0ken-admiN");
    let guessed = request_with_body(edge.metrics, "POST", switch_on, &[wrong], b"");
    assert_eq!(guessed.status, 401);
    let page = ("Origin", "http://evil.test");
    let cross = request_with_body(edge.metrics, "POST", switch_on, &[page], b"");
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
    let uncached = edge.get(GPT2_WEIGHTS, &[]);
    assert_eq!(uncached.status, 504);
    assert!(
        uncached.json_error().contains("offline"),
        "{}",
        uncached.text()
    );
    let stale_tree = edge.get(tree, &[]);
    assert_eq!(stale_tree.status, 200);
    assert_eq!(stale_tree.body, online_tree.body);
    assert!(stale_tree.is_stale(), "{:?}", stale_tree.headers);
    assert_eq!(edge.get("/api/whoami-v2", &[]).status, 504);
    assert!(hub.log().is_empty(), "offline: the Hub is never contacted");
    let ready = request(edge.metrics, "GET", "/readyz", &[]);
    assert_eq!(ready.status, 200, "offline mode counts as ready");
    toggle(false);
    assert_eq!(edge.get(GPT2_WEIGHTS, &[]).status, 200);
}

#[test]
fn offline_in_the_config_file_serves_the_cache_and_never_contacts_the_hub() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).admin_token("t0ken-admin").start();
    let online: Vec<_> = [CONFIG, LFS].iter().map(|p| edge.get(p, &[])).collect();
    for r in &online {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    edge.restart_with(|c| c.upstream.offline = true);
    hub.clear_log();

    let admin = ("Authorization", "Bearer t0ken-admin");
    let mode = request(edge.metrics, "GET", "/admin/offline", &[admin]);
    assert_eq!(mode.json()["offline"], true, "{}", mode.text());
    for (path, before) in [CONFIG, LFS].iter().zip(&online) {
        let r = edge.get(path, &[]);
        assert_eq!((r.status, r.cache()), (200, Some("hit")), "{path}");
        assert_eq!(r.body, before.body, "{path}");
    }
    for path in [
        GPT2_NEVER_FETCHED,
        GPT2_WEIGHTS,
        "/api/whoami-v2",
        "/api/models/gpt2/tree/main",
    ] {
        let r = edge.get(path, &[]);
        assert_eq!(r.status, 504, "{path}: {}", r.text());
        assert!(r.json_error().contains("offline"), "{path}: {}", r.text());
    }
    assert!(
        hub.log().is_empty(),
        "offline: the Hub is never contacted: {:?}",
        hub.log()
    );
}

#[test]
fn expired_signed_urls_are_signed_again() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    assert_eq!(
        edge.head(LFS, &[]).status,
        200,
        "metadata with a signed URL"
    );
    hub.expire_signed_urls();
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    assert_eq!(
        hub.cdn_statuses(),
        [403, 200],
        "the expired URL was refused, then a fresh one used"
    );
}

#[test]
fn a_push_to_main_is_seen_once_revision_ttl_passed() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).revision_ttl("1s").start();
    let before = edge.head(CONFIG, &[]);
    let answered = Instant::now();
    let before = before.header("x-repo-commit").unwrap().to_string();
    let pushed = hub.push(GPT2, &[("config.json", "{\"pushed\": true}")]);
    assert_ne!(before, pushed);
    wait_past(answered, Duration::from_secs(1));
    let r = edge.get(CONFIG, &[]);
    assert_eq!(r.header("x-repo-commit"), Some(pushed.as_str()));
    assert_eq!(r.text(), "{\"pushed\": true}");
}

/// Cuts the CDN's next body after 100 000 bytes; the pause before the body lets hf-edge send
/// the response header (and start its fill) first, as it would for any real download.
fn cut_after_header() -> Fault {
    Fault::drop_after(100_000)
        .on_cdn()
        .once()
        .body_delay(Duration::from_millis(500))
}

/// The `Range` header of each GET the CDN saw, in order.
fn cdn_get_ranges(hub: &FakeHub) -> Vec<Option<String>> {
    hub.cdn_gets()
        .iter()
        .map(|e| e.header("range").map(str::to_string))
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
    let edge = Edge::start(&hub);
    hub.fault(cut_after_header());
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    let ranges = cdn_get_ranges(&hub);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let offset = resumed_at(&ranges[1]);
    assert!(offset <= 100_000, "{ranges:?}");
    assert_eq!(edge.metric("hf_edge_upstream_resumes_total", &[]), 1);
    assert_eq!(
        edge.metric("hf_edge_upstream_resumed_bytes_total", &[]),
        r.body.len() as u64 - offset,
        "each byte fetched once"
    );
    let line = edge
        .access_lines()
        .into_iter()
        .find(|v| v["path"] == LFS)
        .expect("an access line for the download");
    assert_eq!(
        (&line["status"], &line["cache"], &line["error"]),
        (
            &serde_json::json!(200),
            &serde_json::json!("miss"),
            &serde_json::Value::Null
        ),
        "{line}"
    );
    let hit = edge.get(LFS, &[]);
    assert_eq!(hit.cache(), Some("hit"), "the resumed fill was kept");
    hit.assert_whole_lfs_file();
}

#[test]
fn a_ranged_client_gets_its_range_across_a_resume() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
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
    let edge = Edge::start(&hub);
    hub.fault(cut_after_header());
    hub.fault(Fault::no_ranges().on_cdn().once());
    let r = edge.get(LFS, &[]);
    assert_eq!(
        r.status,
        200,
        "{} {:?} {}",
        r.text(),
        hub.log(),
        edge.log_text()
    );
    r.assert_whole_lfs_file();
    let ranges = cdn_get_ranges(&hub);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(resumed_at(&ranges[1]) > 0, "{ranges:?}");
    assert_eq!(
        hub.cdn_statuses(),
        [200, 200],
        "the second answer ignored the Range"
    );
}

#[test]
fn a_resume_signs_an_expired_url_again() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    // The URL expires with the cut, so the resume is refused once.
    hub.fault(cut_after_header().then_expire_signed_urls());
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    assert_eq!(
        hub.cdn_statuses(),
        [200, 403, 206],
        "cut, expired, resumed on a fresh URL"
    );
    assert_eq!(
        sha256_hex(&r.body),
        hub.expected(TINY_DS, "main", "data/train.parquet").sha256
    );
}

#[test]
fn a_body_that_cannot_be_resumed_is_cut_and_never_stored() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(cut_after_header());
    hub.fault(Fault::status(503).on_cdn());
    let cut = edge.get(LFS, &[]);
    assert!(
        cut.status != 200 || cut.truncated,
        "a cut body must not look complete"
    );
    assert_eq!(
        edge.metric("hf_edge_upstream_resumes_total", &[]),
        3,
        "bounded attempts"
    );
    let tmp = edge.cache_dir().join("tmp");
    wait_for("the partial blob to be removed", || {
        (std::fs::read_dir(&tmp).ok()?.count() == 0).then_some(())
    });
    assert_eq!(edge.metric("hf_edge_store_abandoned_fills_total", &[]), 1);
    hub.clear_faults();
    let whole = edge.get(LFS, &[]);
    assert_eq!(whole.cache(), Some("miss"), "fetched again");
    whole.assert_whole_lfs_file();
}

#[test]
fn a_body_cut_before_it_began_is_fetched_again() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(Fault::drop_after(0).on_cdn().once());
    let r = edge.get(LFS, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_whole_lfs_file();
    assert_eq!(cdn_get_ranges(&hub).len(), 2);
}

#[test]
fn a_regular_file_cut_by_the_hub_resumes_from_the_hub() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    hub.fault(
        Fault::drop_after(10)
            .on_hub()
            .method("GET")
            .on_path("^/api/resolve-cache/")
            .once()
            .body_delay(Duration::from_millis(500)),
    );
    let r = edge.get(CONFIG, &[]);
    assert_eq!((r.status, r.truncated), (200, false));
    let ranges: Vec<Option<String>> = hub
        .log()
        .iter()
        .filter(|e| e.method == "GET")
        .map(|e| e.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [None, Some("bytes=10-".to_string())]);
    let hit = edge.get(CONFIG, &[]);
    assert_eq!(hit.cache(), Some("hit"), "stored: its git oid matched");
    assert_eq!(r.body, hit.body);
}
