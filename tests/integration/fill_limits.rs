//! Fills are bounded: `cache.max_fills` at once (beyond, served uncached), their bytes
//! reserved under `cache.max_size` (resumed fills included), and a fill nobody reads any more
//! is cancelled unless half written.
//!
//! A fill is kept in progress by the fake CDN holding its body until the test releases it:
//! tests act on what they saw (a header, a metric, the fake's log), never on a time window.

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{HELD_AFTER, LFS, MINILM_WEIGHTS, XET_1MIB};
use crate::harness::{poll_until, wait_for, Edge};
use crate::http::{sha256_hex, Download};

/// Starts a GET and reads its response header, then nothing more.
fn header_only(edge: &Edge, path: &str) -> Download {
    let mut download = Download::start(edge.addr, path, &[]);
    let head = download.read_header();
    assert_eq!(head.status, 200, "{path}: {:?}", head.headers);
    download
}

/// A store metric (no labels).
fn store(edge: &Edge, name: &str) -> u64 {
    edge.metric(name, &[])
}

#[test]
fn beyond_max_fills_requests_are_served_uncached_with_their_ranges() {
    let hub = FakeHub::start();
    // The held fill must outlive the default upstream read timeout.
    let edge = Edge::builder(&hub).max_fills(1).read_timeout("60s").start();
    // The one fill allowed: the big model, held by the CDN.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let filling = header_only(&edge, MINILM_WEIGHTS);
    assert_eq!(store(&edge, "hf_edge_store_fills"), 1);

    let whole = edge.get(LFS, &[]);
    assert_eq!(whole.status, 200);
    whole.assert_whole_lfs_file();
    assert_eq!(whole.cache(), Some("bypass"));
    let part = edge.get(LFS, &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(part.body, whole.body[100..200]);
    assert_eq!(store(&edge, "hf_edge_store_fills_over_max_total"), 2);

    drop(filling);
    hub.clear_faults(); // releases the held body too
                        // Once fills are free again, the file is stored like any other.
    let fills = poll_until(|| store(&edge, "hf_edge_store_fills"), |n| *n == 0);
    assert_eq!(fills, 0, "the model's fill ended");
    assert_eq!(edge.get(LFS, &[]).cache(), Some("miss"));
    assert_eq!(edge.get(LFS, &[]).cache(), Some("hit"));
}

#[test]
fn resumed_fills_count_against_max_size_and_are_evicted_like_any_other() {
    let hub = FakeHub::start();
    let max = 4u64 << 20;
    let edge = Edge::builder(&hub).max_size("4MiB").start();
    // Seven files of 1.2 MiB; the first two have their CDN body cut once and are resumed.
    let size = 1_258_291;
    let files: Vec<(String, String)> = (0..7)
        .map(|i| {
            let text = format!("{i}").repeat(size).chars().take(size).collect();
            (format!("fill-{i}.bin"), text)
        })
        .collect();
    let push: Vec<(&str, &str)> = files
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let commit = hub.push("gpt2", &push);
    let path = |i: usize| format!("/gpt2/resolve/{commit}/fill-{i}.bin");
    for (i, (_, text)) in files.iter().enumerate() {
        if i < 2 {
            let sha = sha256_hex(text.as_bytes());
            hub.fault(Fault::drop_after(600_000).on_cdn().on_path(&sha).once());
        }
        let r = edge.get(&path(i), &[]);
        assert_eq!(r.status, 200);
        r.assert_whole_lfs_file();
        let bytes = poll_until(|| store(&edge, "hf_edge_store_bytes"), |b| *b <= max);
        assert!(bytes <= max, "the store stayed over max_size: {bytes}");
    }
    assert_eq!(edge.metric("hf_edge_upstream_resumes_total", &[]), 2);
    assert_eq!(store(&edge, "hf_edge_store_reserved_bytes"), 0);
    // Least recently used first: the two resumed blobs went like the others.
    hub.clear_log();
    for i in [0, 1] {
        let r = edge.get(&path(i), &[]);
        assert_eq!(r.cache(), Some("miss"), "fill-{i}");
    }
    assert_eq!(hub.body_fetches(), 2);
}

#[test]
fn a_fill_nobody_reads_is_cancelled_unless_half_written() {
    let hub = FakeHub::start();
    // The held fill must outlive the orphan grace (10 s), not time out upstream first.
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    // 90.9 MB held after its first 100 kB: far from half written when the grace ends.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    drop(header_only(&edge, MINILM_WEIGHTS));
    assert!(store(&edge, "hf_edge_store_reserved_bytes") > 0);
    let cancelled = poll_until(
        || store(&edge, "hf_edge_store_orphaned_fills_cancelled_total"),
        |n| *n == 1,
    );
    assert_eq!(cancelled, 1, "the fill was not cancelled");
    assert_eq!(store(&edge, "hf_edge_store_fills"), 0);
    assert_eq!(store(&edge, "hf_edge_store_reserved_bytes"), 0);
    assert_eq!(store(&edge, "hf_edge_store_abandoned_fills_total"), 0);
    let tmp = edge.cache_dir().join("tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    // The CDN stopped sending: the fill's connection was closed. Let the held body go on; an
    // open connection would take it all (or keep the fake writing), a closed one ends it.
    let size = hub
        .expected(
            "sentence-transformers/all-MiniLM-L6-v2",
            "main",
            "model.safetensors",
        )
        .size;
    hub.release();
    let fill = wait_for("the CDN to end the cancelled fill's body", || {
        hub.cdn_gets().into_iter().next().filter(|g| g.body_ended)
    });
    assert!(
        fill.body_bytes < size,
        "no more bytes after the cancel: {} of {size}",
        fill.body_bytes
    );
    assert_eq!(hub.cdn_gets().len(), 1, "and no other fetch");

    // A small file its client leaves is still stored: it is whole long before the grace ends.
    drop(header_only(&edge, XET_1MIB));
    let objects = poll_until(|| store(&edge, "hf_edge_store_objects"), |n| *n == 1);
    assert_eq!(objects, 1, "the small fill did not finish");
}
