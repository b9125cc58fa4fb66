//! `/resolve`: metadata, bodies, the blob store, ranges.

use std::sync::Barrier;
use std::time::Instant;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{
    APPROVED, CONFIG, GPT2, GPT2_WEIGHTS, HELD_AFTER, LFS, LFS_SIZE, MINILM as MODEL, SITE_TOKEN,
    TINY_DS,
};
use crate::harness::{wait_for, Edge, PATIENCE};
use crate::http::{git_oid_hex, sha256_hex, Download};

#[test]
fn head_answers_from_metadata_without_fetching_the_body() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
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
    let mut edge = Edge::start(&hub);
    let first = edge.get(LFS, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.cache(), Some("miss"));
    first.assert_whole_lfs_file();
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );

    let second = edge.get(LFS, &[]);
    assert_eq!(second.cache(), Some("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(hub.body_fetches(), 1);

    edge.restart();
    hub.clear_log();
    let third = edge.get(LFS, &[]);
    assert_eq!(third.cache(), Some("hit"));
    assert_eq!(third.body, first.body);
    assert_eq!(hub.body_fetches(), 0, "a restart keeps the blob");
}

#[test]
fn regular_file_follows_the_relative_redirect_and_is_cached_by_git_oid() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let r = edge.get(CONFIG, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-linked-etag").is_none());
    let oid = r.header("etag").unwrap().trim_matches('"').to_string();
    assert_eq!(
        git_oid_hex(&r.body),
        oid,
        "etag is the git blob id of the body"
    );
    assert_eq!(oid, hub.expected(GPT2, "main", "config.json").oid);
    let blob = edge
        .cache_dir()
        .join(format!("blobs/oid/{}/{oid}", &oid[..2]));
    assert!(blob.is_file(), "stored under its git oid");
}

#[test]
fn one_blob_shared_by_revisions_is_fetched_once() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let main = edge.get(&format!("{MODEL}/resolve/main/config.json"), &[]);
    let commit = main.header("x-repo-commit").unwrap().to_string();
    let pinned = edge.get(&format!("{MODEL}/resolve/{commit}/config.json"), &[]);
    assert_eq!(pinned.body, main.body);
    assert_eq!(pinned.cache(), Some("hit"));
    assert_eq!(hub.body_fetches(), 1);
}

/// Clients sending the same cold GET at the same moment; each request is sent on return.
fn start_together(edge: &Edge, path: &str, clients: usize) -> Vec<Download> {
    let start = Barrier::new(clients);
    std::thread::scope(|s| {
        let started: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    Download::start(edge.addr, path, &[])
                })
            })
            .collect();
        started.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// Reads each download to its end: each must be the whole, right file; returns how each was
/// served (`X-HF-Edge-Cache`).
fn finish_all(hub: &FakeHub, downloads: Vec<Download>) -> Vec<String> {
    let want = hub.expected(TINY_DS, "main", "data/train.parquet");
    downloads
        .into_iter()
        .map(|d| {
            let r = d.finish();
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(!r.truncated);
            assert_eq!(r.body.len(), LFS_SIZE);
            assert_eq!(sha256_hex(&r.body), want.sha256, "the whole right body");
            r.cache().unwrap_or("none").to_string()
        })
        .collect()
}

#[test]
fn concurrent_cold_requests_make_one_upstream_fetch() {
    const CLIENTS: usize = 16;
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    // The CDN holds the rest of the body after its first bytes: every client has sent its
    // request while the one fill is in flight.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let downloads = start_together(&edge, LFS, CLIENTS);
    wait_for("the fill to start", || {
        (hub.cdn_gets().first()?.body_bytes == HELD_AFTER).then_some(())
    });
    hub.release();
    let served = finish_all(&hub, downloads);
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 1, "one CDN GET for {CLIENTS} clients: {gets:?}");
    assert_eq!(hub.body_fetches(), 1);
    let misses = served.iter().filter(|s| *s == "miss").count();
    assert_eq!(misses, 1, "one fill, the others served from it: {served:?}");
    assert!(
        served
            .iter()
            .all(|s| ["miss", "coalesced", "hit"].contains(&s.as_str())),
        "{served:?}"
    );
}

#[test]
fn every_concurrent_cold_client_streams_from_the_fill_while_it_runs() {
    const CLIENTS: usize = 16;
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    // The CDN holds the rest of the body after its first bytes until every client has its
    // answer's header: each must be streaming from the one fill, however late it came.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut downloads = start_together(&edge, LFS, CLIENTS);
    let deadline = Instant::now() + PATIENCE;
    let mut streaming: Vec<Option<String>> = downloads
        .iter_mut()
        .map(|d| {
            let head = d.read_header_by(deadline)?;
            Some(head.cache().unwrap_or("none").to_string())
        })
        .collect();
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].body_bytes, HELD_AFTER, "the rest is still held");
    streaming.sort();
    let mut expected = vec![Some("coalesced".to_string()); CLIENTS - 1];
    expected.push(Some("miss".to_string()));
    assert_eq!(
        streaming, expected,
        "every client answered from the fill while it runs (None: no header until it completed)"
    );
    hub.release();
    finish_all(&hub, downloads);
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn ranges_on_miss_and_on_hit() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
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
    let edge = Edge::builder(&hub).token(SITE_TOKEN).start();
    let r = edge.get(LFS, &[APPROVED]);
    assert_eq!(r.status, 200, "{}", r.text());
    let anon = edge.get(GPT2_WEIGHTS, &[]);
    assert_eq!(anon.status, 200, "{}", anon.text());
    let log = hub.log();
    for e in &log {
        if e.server == "cdn" {
            assert_eq!(
                e.header("authorization"),
                None,
                "CDN got credentials: {e:?}"
            );
        }
    }
    let hub_auth: Vec<_> = log
        .iter()
        .filter(|e| e.server == "hub")
        .filter_map(|e| e.header("authorization"))
        .collect();
    assert!(hub_auth.contains(&APPROVED.1), "client's own token");
    assert!(
        hub_auth.contains(&format!("Bearer {SITE_TOKEN}").as_str()),
        "site token for anonymous"
    );
    for resp in [&r, &anon] {
        assert!(!format!("{:?}", resp.headers).contains(SITE_TOKEN));
    }
}

#[test]
fn branch_answers_are_cached_and_commit_pins_need_no_hub() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
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
