//! `/resolve`: metadata, bodies, the blob store, ranges.

use serde_json::json;

use crate::harness::{Edge, FakeHub};

const MODEL: &str = "/sentence-transformers/all-MiniLM-L6-v2";
const LFS: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";

#[test]
fn head_answers_from_metadata_without_fetching_the_body() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let r = edge.head(&format!("{MODEL}/resolve/main/model.safetensors"), &[]);
    assert_eq!(r.status, 200);
    let etag = r
        .header("x-linked-etag")
        .expect("x-linked-etag")
        .to_string();
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-length"), r.header("x-linked-size"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("x-repo-commit").map(str::len), Some(40));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains("model.safetensors"));
    assert_eq!(hub.body_fetches(), 0, "a HEAD must not fetch the body");
}

#[test]
fn lfs_blob_is_fetched_once_verified_and_survives_a_restart() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub, "");
    let first = edge.get(LFS, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-hf-edge-cache"), Some("miss"));
    first.assert_whole_lfs_file();
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );

    let second = edge.get(LFS, &[]);
    assert_eq!(second.header("x-hf-edge-cache"), Some("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(hub.body_fetches(), 1);

    edge.restart();
    hub.clear_log();
    let third = edge.get(LFS, &[]);
    assert_eq!(third.header("x-hf-edge-cache"), Some("hit"));
    assert_eq!(third.body, first.body);
    assert_eq!(hub.body_fetches(), 0, "a restart keeps the blob");
}

#[test]
fn regular_file_follows_the_relative_redirect_and_is_cached_by_git_oid() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let r = edge.get("/gpt2/resolve/main/config.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-linked-etag").is_none());
    let oid = r.header("etag").unwrap().trim_matches('"').to_string();
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", r.body.len()));
    h.update(&r.body);
    assert_eq!(
        hex::encode(h.finalize()),
        oid,
        "etag is the git blob id of the body"
    );
    let blob = edge
        .dir
        .path()
        .join(format!("cache/blobs/oid/{}/{oid}", &oid[..2]));
    assert!(blob.is_file(), "stored under its git oid");
}

#[test]
fn one_blob_shared_by_revisions_is_fetched_once() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let main = edge.get(&format!("{MODEL}/resolve/main/config.json"), &[]);
    let commit = main.header("x-repo-commit").unwrap().to_string();
    let pinned = edge.get(&format!("{MODEL}/resolve/{commit}/config.json"), &[]);
    assert_eq!(pinned.body, main.body);
    assert_eq!(pinned.header("x-hf-edge-cache"), Some("hit"));
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn concurrent_cold_requests_make_one_upstream_fetch() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    // Slow the CDN so every client arrives while the fill is in flight.
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.05, "times": 1}));
    let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| edge.get(LFS, &[]))).collect();
        handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200);
                assert!(!r.truncated);
                r.body
            })
            .collect()
    });
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn ranges_on_miss_and_on_hit() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let full = {
        let r = edge.get(LFS, &[("Range", "bytes=10-19")]);
        assert_eq!(r.status, 206, "range on a cold miss");
        assert_eq!(r.body.len(), 10);
        edge.get(LFS, &[]).body
    };
    let n = full.len();
    let cases: &[(&str, u16, std::ops::Range<usize>)] = &[
        ("bytes=0-0", 206, 0..1),
        ("bytes=100-", 206, 100..n),
        ("bytes=-7", 206, n - 7..n),
        ("bytes=5-99999999999", 206, 5..n),
        ("bytes=5-3", 200, 0..n),
    ];
    for (range, status, want) in cases {
        let r = edge.get(LFS, &[("Range", range)]);
        assert_eq!(r.status, *status, "{range}");
        assert_eq!(r.body, full[want.clone()], "{range}");
        if *status == 206 {
            let cr = format!("bytes {}-{}/{n}", want.start, want.end - 1);
            assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
            assert!(r.header("x-repo-commit").is_some());
        }
    }
    let r = edge.get(LFS, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );
}

#[test]
fn authorization_goes_to_the_hub_but_never_to_the_cdn() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "  token: hf_edge_site\n");
    let r = edge.get(LFS, &[("Authorization", "Bearer hf_approved")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let anon = edge.get("/gpt2/resolve/main/pytorch_model.bin", &[]);
    assert_eq!(anon.status, 200, "{}", anon.text());
    let log = hub.log();
    let auth_of = |e: &serde_json::Value| e["headers"]["authorization"].as_str().map(String::from);
    for e in &log {
        if e["server"] == "cdn" {
            assert_eq!(auth_of(e), None, "CDN got credentials: {e}");
        }
    }
    let hub_auth: Vec<_> = log
        .iter()
        .filter(|e| e["server"] == "hub")
        .filter_map(auth_of)
        .collect();
    assert!(
        hub_auth.contains(&"Bearer hf_approved".to_string()),
        "client's own token"
    );
    assert!(
        hub_auth.contains(&"Bearer hf_edge_site".to_string()),
        "site token for anonymous"
    );
    for resp in [&r, &anon] {
        assert!(!format!("{:?}", resp.headers).contains("hf_edge_site"));
    }
}

#[test]
fn branch_answers_are_cached_and_commit_pins_need_no_hub() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let path = format!("{MODEL}/resolve/main/config.json");
    let commit = edge
        .head(&path, &[])
        .header("x-repo-commit")
        .unwrap()
        .to_string();
    edge.get(&path, &[]);
    hub.clear_log();
    assert_eq!(edge.head(&path, &[]).status, 200);
    assert!(
        hub.log().is_empty(),
        "a fresh branch answer needs no Hub request"
    );
    let pinned = format!("{MODEL}/resolve/{commit}/config.json");
    assert_eq!(edge.get(&pinned, &[]).status, 200);
    assert!(
        hub.log().is_empty(),
        "a commit-pinned cached file needs no Hub request"
    );
}
