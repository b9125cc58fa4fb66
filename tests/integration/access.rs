//! Access control: site keys, repo rules, the Hub's answers per identity, no token leaks.

use std::time::Duration;

use serde_json::json;

use crate::harness::{request, Edge, FakeHub};

const GATED: &str = "/fake-org/gated-model/resolve/main/config.json";
const GATED_LFS: &str = "/fake-org/gated-model/resolve/main/model.safetensors";
const APPROVED: (&str, &str) = ("Authorization", "Bearer hf_approved");

fn key_hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[test]
fn site_keys_are_required_and_mapped_to_upstream_identities() {
    let hub = FakeHub::start();
    let access = format!(
        "access:\n  require_key: true\n  keys:\n    - name: team\n      sha256: \"{}\"\n      upstream_token: hf_approved\n    - name: guest\n      sha256: \"{}\"\n",
        key_hash("hfe_team"),
        key_hash("hfe_guest")
    );
    let edge = Edge::start_with(&hub, "", &access);
    let none = edge.get(GATED, &[]);
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].as_str().unwrap().contains("site key"));
    let wrong = edge.get(GATED, &[("Authorization", "Bearer hf_approved")]);
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
        let auth = e["headers"]["authorization"].as_str().unwrap_or("");
        assert!(!auth.contains("hfe_"), "a site key reached the Hub: {e}");
    }
}

#[test]
fn repo_rules_refuse_before_the_hub_is_asked() {
    let hub = FakeHub::start();
    let rules = "access:\n  repos:\n    allow: [\"fake-org/*\", \"datasets/fake-org/*\"]\n    deny: [\"*/private-*\"]\n";
    let edge = Edge::start_with(&hub, "", rules);
    let cases = [
        ("/gpt2/resolve/main/config.json", 403),
        ("/fake-org/private-model/resolve/main/config.json", 403),
        ("/api/models/fake-org/private-model/tree/main", 403),
        ("/api/models/gpt2/revision/main", 403),
        ("/api/resolve-cache/models/fake-org/private-model/0123456789abcdef0123456789abcdef01234567/config.json", 403),
        ("/fake-org/private-model.git/info/lfs/objects/batch", 403),
    ];
    for (path, status) in cases {
        let r = edge.get(path, &[APPROVED]);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("x-error-code"), Some("GatedRepo"), "{path}");
    }
    assert!(hub.log().is_empty());
    let ok = edge.get("/fake-org/many-files/resolve/main/README.md", &[]);
    assert_ne!(ok.status, 403);
    assert_eq!(
        edge.get(
            "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet",
            &[]
        )
        .status,
        200
    );
}

#[test]
fn cached_restricted_content_needs_the_hubs_fresh_yes_for_this_identity() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(&hub, "", "access:\n  auth_ttl: 1s\n");
    assert_eq!(edge.get(GATED_LFS, &[APPROVED]).status, 200);
    // Another identity never gets the cached bytes without the Hub's yes.
    let anon = edge.get(GATED_LFS, &[]);
    assert_eq!(
        (anon.status, anon.header("x-error-code")),
        (401, Some("GatedRepo"))
    );
    let valid = edge.get(GATED_LFS, &[("Authorization", "Bearer hf_valid")]);
    assert_eq!(
        (valid.status, valid.header("x-error-code")),
        (403, Some("GatedRepo"))
    );

    hub.clear_log();
    assert_eq!(edge.get(GATED_LFS, &[APPROVED]).status, 200);
    assert!(
        hub.log().is_empty(),
        "within auth_ttl the approval is reused"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let again = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(again.header("x-hf-edge-cache"), Some("hit"));
    assert_eq!(
        hub.log().len(),
        1,
        "past auth_ttl the Hub is asked again (one HEAD)"
    );

    // Past auth_ttl with the Hub down: restricted content fails closed.
    std::thread::sleep(Duration::from_millis(1100));
    hub.fault(json!({"mode": "down", "server": "hub"}));
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert!(
        r.status == 502 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(r.json()["error"].is_string());
}

#[test]
fn offline_restricted_allow_serves_earlier_approvals_when_the_hub_is_down() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(
        &hub,
        "",
        "access:\n  auth_ttl: 1s\n  offline_restricted: allow\n",
    );
    let first = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(first.status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    hub.fault(json!({"mode": "down", "server": "hub"}));
    let r = edge.get(GATED_LFS, &[APPROVED]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, first.body);
    let anon = edge.get(GATED_LFS, &[]);
    assert_ne!(anon.status, 200, "never approved: still refused");
}

#[test]
fn the_site_token_never_leaks() {
    let hub = FakeHub::start();
    let secret = "hf_edge_site";
    let edge = Edge::start(&hub, &format!("  token: {secret}\n"));
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
    hub.fault(json!({"mode": "down", "server": "hub"}));
    let down = edge.get("/fake-org/gated-model/resolve/main/other.json", &[]);
    seen.push(format!("{:?} {}", down.headers, down.text()));
    let metrics = request(edge.metrics, "GET", "/metrics", &[]).text();
    let log = std::fs::read_to_string(edge.log_path()).unwrap();
    for (what, text) in [
        ("responses", seen.join("\n")),
        ("metrics", metrics),
        ("log", log),
    ] {
        assert!(
            !text.contains(secret),
            "the upstream token appears in {what}"
        );
    }
    for e in hub.log() {
        if e["server"] == "cdn" {
            assert!(e["headers"]["authorization"].is_null(), "{e}");
        }
    }
}
