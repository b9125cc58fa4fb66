//! Access control: site keys, repo rules, the Hub's answers per identity, no token leaks.

use std::time::{Duration, Instant};

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{
    APPROVED, GATED, GATED_LFS, LFS, MANY_FILES_README, NOT_APPROVED, SITE_TOKEN, TINY_DS,
};
use crate::harness::{wait_past, Edge};
use crate::http::{git_oid_hex, request};

#[test]
fn site_keys_are_required_and_mapped_to_upstream_identities() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .require_key()
        .site_key("team", "hfe_team", Some("hf_approved"))
        .site_key("guest", "hfe_guest", None)
        .start();
    let none = edge.get(GATED, &[]);
    assert_eq!(none.status, 401);
    assert!(none.json_error().contains("site key"), "{}", none.text());
    let wrong = edge.get(GATED, &[APPROVED]);
    assert_eq!(wrong.status, 401, "an HF token is not a site key");
    assert_eq!(
        edge.get("/api/whoami-v2", &[]).status,
        401,
        "API routes need a key too"
    );
    assert!(
        hub.log().is_empty(),
        "refused before anything goes upstream"
    );

    let team = edge.get(GATED, &[("Authorization", "Bearer hfe_team")]);
    assert_eq!(team.status, 200, "{}", team.text());
    let guest = edge.get(GATED, &[("Authorization", "Bearer hfe_guest")]);
    assert_eq!(guest.status, 401, "the guest key is anonymous upstream");
    assert_eq!(guest.header("x-error-code"), Some("GatedRepo"));
    for e in hub.log() {
        let auth = e.header("authorization").unwrap_or("");
        assert!(!auth.contains("hfe_"), "a site key reached the Hub: {e:?}");
    }
}

#[test]
fn repo_rules_refuse_before_the_hub_is_asked() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .allow_repos(&["fake-org/*", "datasets/fake-org/*"])
        .deny_repos(&["*/private-*"])
        .start();
    let refused = [
        "/gpt2/resolve/main/config.json",
        "/fake-org/private-model/resolve/main/config.json",
        "/api/models/fake-org/private-model/tree/main",
        "/api/models/gpt2/revision/main",
        "/api/resolve-cache/models/fake-org/private-model/0123456789abcdef0123456789abcdef01234567/config.json",
        "/fake-org/private-model.git/info/lfs/objects/batch",
    ];
    for path in refused {
        let r = edge.get(path, &[APPROVED]);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.header("x-error-code"), Some("GatedRepo"), "{path}");
    }
    assert!(hub.log().is_empty());

    let allowed = edge.get(MANY_FILES_README, &[]);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let want = hub.expected("fake-org/many-files", "main", "README.md");
    assert_eq!(git_oid_hex(&allowed.body), want.oid);
    let dataset = edge.get(LFS, &[]);
    assert_eq!(dataset.status, 200);
    dataset.assert_whole_lfs_file();
    assert_eq!(
        dataset.linked_etag(),
        hub.expected(TINY_DS, "main", "data/train.parquet").sha256
    );
}

#[test]
fn a_hubs_yes_is_reused_within_auth_ttl_and_only_for_that_identity() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).auth_ttl("60s").start();
    let first = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(first.status, 200);
    // Another identity never gets the cached bytes without the Hub's yes.
    let anon = edge.get(GATED_LFS, &[]);
    assert_eq!(
        (anon.status, anon.header("x-error-code")),
        (401, Some("GatedRepo"))
    );
    let valid = edge.get(GATED_LFS, &[NOT_APPROVED]);
    assert_eq!(
        (valid.status, valid.header("x-error-code")),
        (403, Some("GatedRepo"))
    );

    hub.clear_log();
    let again = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(again.status, 200);
    assert_eq!(again.cache(), Some("hit"));
    assert_eq!(again.body, first.body);
    assert!(
        hub.log().is_empty(),
        "within auth_ttl the approval is reused: {:?}",
        hub.log()
    );
}

#[test]
fn past_auth_ttl_the_hub_is_asked_again_and_restricted_content_fails_closed() {
    let hub = FakeHub::start();
    let ttl = Duration::from_secs(1);
    let edge = Edge::builder(&hub).auth_ttl("1s").start();
    assert_eq!(edge.get(GATED_LFS, &[APPROVED]).status, 200);
    wait_past(Instant::now(), ttl);

    hub.clear_log();
    let again = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(again.status, 200);
    assert_eq!(again.cache(), Some("hit"));
    let asked: Vec<_> = hub
        .log()
        .iter()
        .map(|e| (e.server.clone(), e.method.clone()))
        .collect();
    assert_eq!(
        asked,
        [("hub".to_string(), "HEAD".to_string())],
        "past auth_ttl the Hub is asked again, once"
    );

    // Past auth_ttl with the Hub down: restricted content fails closed.
    wait_past(Instant::now(), ttl);
    hub.fault(Fault::down().on_hub());
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.json_error().is_empty());
}

#[test]
fn offline_restricted_allow_serves_earlier_approvals_when_the_hub_is_down() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .auth_ttl("1s")
        .offline_restricted_allow()
        .start();
    let first = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(first.status, 200);
    wait_past(Instant::now(), Duration::from_secs(1));
    hub.fault(Fault::down().on_hub());
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.is_stale(), "{:?}", r.headers);
    assert_eq!(r.body, first.body);
    let anon = edge.get(GATED_LFS, &[]);
    assert_eq!(anon.status, 502, "never approved: still refused");
}

#[test]
fn the_site_token_never_leaks() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).token(SITE_TOKEN).start();
    let mut seen = Vec::new();
    for path in [
        GATED,
        GATED_LFS,
        "/fake-org/gated-model/resolve/main/missing.json",
        "/fake-org/gated-model/resolve/nope/config.json",
        "/api/whoami-v2",
        "/api/models/fake-org/gated-model/tree/main",
        "/gpt2/resolve/main/../x",
    ] {
        for r in [edge.get(path, &[]), edge.head(path, &[])] {
            seen.push(format!("{} {:?} {}", r.status, r.headers, r.text()));
        }
    }
    assert_eq!(
        edge.get(GATED, &[]).status,
        200,
        "anonymous clients read as the site"
    );
    hub.fault(Fault::down().on_hub());
    let down = edge.get("/fake-org/gated-model/resolve/main/other.json", &[]);
    seen.push(format!("{:?} {}", down.headers, down.text()));
    let metrics = request(edge.metrics, "GET", "/metrics", &[]).text();
    let log = edge.log_text();
    for (what, text) in [
        ("responses", seen.join("\n")),
        ("metrics", metrics),
        ("log", log),
    ] {
        assert!(
            !text.contains(SITE_TOKEN),
            "the upstream token appears in {what}"
        );
    }
    for e in hub.log() {
        if e.server == "cdn" {
            assert_eq!(e.header("authorization"), None, "{e:?}");
        }
    }
}
