//! `cache.max_size` is a hard bound, enforced least recently used first, across restarts.

use std::time::Duration;

use crate::fake_hub::FakeHub;
use crate::fixtures::{LFS, XET_1MIB, XET_2MIB};
use crate::harness::{wait_for, Edge};

/// Waits (bounded) for eviction, which runs in the background after a fill.
fn settle(edge: &Edge, max: u64) {
    wait_for("the store to be back under max_size", || {
        (edge.metric("hf_edge_store_bytes", &[]) <= max).then_some(())
    });
}

fn cached(edge: &Edge, path: &str) -> bool {
    edge.get(path, &[]).cache() == Some("hit")
}

#[test]
fn the_least_recently_used_blob_goes_first_even_after_a_restart() {
    let hub = FakeHub::start();
    let max = 4 << 20;
    let mut edge = Edge::builder(&hub).max_size("4MiB").start();
    assert_eq!(edge.metric("hf_edge_store_max_bytes", &[]), max);

    for path in [XET_1MIB, XET_2MIB] {
        assert_eq!(edge.get(path, &[]).status, 200);
    }
    // Access times a clock tick apart.
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        cached(&edge, XET_1MIB),
        "touch the 1 MiB blob: the 2 MiB one is now LRU"
    );

    edge.restart(); // the LRU order must come back from disk
    assert_eq!(edge.get(LFS, &[]).status, 200);
    settle(&edge, max);
    assert_eq!(edge.metric("hf_edge_store_evictions_total", &[]), 1);
    assert_eq!(
        edge.metric("hf_edge_store_evicted_bytes_total", &[]),
        2 << 20
    );
    assert!(cached(&edge, XET_1MIB), "recently used: kept");
    assert!(cached(&edge, LFS), "just filled: kept");
    hub.clear_log();
    assert_eq!(edge.get(XET_2MIB, &[]).cache(), Some("miss"));
    assert_eq!(hub.body_fetches(), 1, "the evicted blob is fetched again");
    settle(&edge, max);
}
