//! `cache.max_size` is a hard bound, enforced least recently used first, across restarts.

use std::time::{Duration, Instant};

use crate::harness::{Edge, FakeHub};

const ONE_MIB: &str = "/fake-org/xet-model/resolve/v1.0/model.safetensors";
const TWO_MIB: &str = "/fake-org/xet-model/resolve/main/model.safetensors";
const THREE_MIB: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";

/// Waits (bounded) for eviction, which runs in the background after a fill.
fn settle(edge: &Edge, max: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric("hf_edge_store_bytes") > max {
        assert!(Instant::now() < deadline, "store stayed over max_size");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cached(edge: &Edge, path: &str) -> bool {
    edge.get(path, &[]).header("x-hf-edge-cache") == Some("hit")
}

#[test]
fn the_least_recently_used_blob_goes_first_even_after_a_restart() {
    let hub = FakeHub::start();
    let max = 4 << 20;
    let mut edge = Edge::start(&hub, "");
    let cfg = edge.dir.path().join("hf-edge.yaml");
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("10GiB", "4MiB");
    std::fs::write(&cfg, yaml).unwrap();
    edge.restart();
    assert_eq!(edge.metric("hf_edge_store_max_bytes"), max);

    for path in [ONE_MIB, TWO_MIB] {
        assert_eq!(edge.get(path, &[]).status, 200);
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        cached(&edge, ONE_MIB),
        "touch the 1 MiB blob: the 2 MiB one is now LRU"
    );

    edge.restart(); // the LRU order must come back from disk
    assert_eq!(edge.get(THREE_MIB, &[]).status, 200);
    settle(&edge, max);
    assert_eq!(edge.metric("hf_edge_store_evictions_total"), 1);
    assert_eq!(edge.metric("hf_edge_store_evicted_bytes_total"), 2 << 20);
    assert!(cached(&edge, ONE_MIB), "recently used: kept");
    assert!(cached(&edge, THREE_MIB), "just filled: kept");
    hub.clear_log();
    assert_eq!(
        edge.get(TWO_MIB, &[]).header("x-hf-edge-cache"),
        Some("miss")
    );
    assert_eq!(hub.body_fetches(), 1, "the evicted blob is fetched again");
    settle(&edge, max);
}
