//! The persisted store index: a restart serves from it without listing the blobs, a kill
//! loses nothing, and an index that is damaged or does not match the disk never serves a
//! wrong byte.

use std::time::Duration;

use crate::fake_hub::FakeHub;
use crate::fixtures::{LFS, XET_1MIB, XET_2MIB};
use crate::harness::{wait_for, Edge};

fn count(edge: &Edge, needle: &str) -> usize {
    edge.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// SIGTERM, and waits (bounded) for the process to write its index and exit.
fn stop_cleanly(edge: &mut Edge) {
    edge.sigterm();
    let status = edge
        .wait_exit(Duration::from_secs(30))
        .expect("hf-edge exits");
    assert!(status.success(), "{status:?}");
}

/// Every path is a hit with the same bytes as `expected`, and nothing is fetched upstream.
fn all_hits(edge: &Edge, hub: &FakeHub, expected: &[(&str, Vec<u8>)]) {
    hub.clear_log();
    for (path, body) in expected {
        let r = edge.get(path, &[]);
        assert_eq!(r.cache(), Some("hit"), "{path}");
        assert!(r.body == *body, "{path}: the bytes served differ");
    }
    assert_eq!(hub.body_fetches(), 0);
}

#[test]
fn the_index_is_loaded_after_a_clean_stop_and_after_a_kill() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).start();
    let mut bodies = Vec::new();
    for path in [XET_1MIB, XET_2MIB] {
        bodies.push((path, edge.get(path, &[]).body));
    }
    let bytes = edge.metric("hf_edge_store_bytes", &[]);
    stop_cleanly(&mut edge);
    assert!(edge.cache_dir().join("index.snap").exists());

    edge.restart();
    assert_eq!(count(&edge, "store index: 2 blob(s) loaded from"), 1);
    assert_eq!(count(&edge, "may be stale"), 0, "a clean stop: trusted");
    assert_eq!(edge.metric("hf_edge_store_objects", &[]), 2);
    assert_eq!(edge.metric("hf_edge_store_bytes", &[]), bytes);
    all_hits(&edge, &hub, &bodies);

    // Filled after the last snapshot: only the journal has it when the process is killed.
    bodies.push((LFS, edge.get(LFS, &[]).body));
    let bytes = edge.metric("hf_edge_store_bytes", &[]);
    edge.restart(); // SIGKILL
    assert_eq!(count(&edge, "store index: 3 blob(s) loaded from"), 1);
    assert_eq!(edge.metric("hf_edge_store_objects", &[]), 3);
    assert_eq!(edge.metric("hf_edge_store_bytes", &[]), bytes);
    all_hits(&edge, &hub, &bodies);
    // Not shut down cleanly: checked against the disk while serving, which finds it right.
    wait_for("the reconciling scan", || {
        (count(&edge, "reconciled with a scan") == 1).then_some(())
    });
    assert_eq!(count(&edge, "0 blob(s) added, 0 gone"), 1);
}

#[test]
fn a_damaged_index_is_rebuilt_by_a_scan() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).start();
    let mut bodies = Vec::new();
    for path in [XET_1MIB, LFS] {
        bodies.push((path, edge.get(path, &[]).body));
    }
    let bytes = edge.metric("hf_edge_store_bytes", &[]);
    stop_cleanly(&mut edge);
    let snap = edge.cache_dir().join("index.snap");
    let mut damaged = std::fs::read(&snap).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&snap, &damaged).unwrap();

    edge.restart();
    assert_eq!(
        count(&edge, "checksum mismatch): rebuilding it by a scan of"),
        1,
        "{}",
        edge.log_text()
    );
    assert_eq!(edge.metric("hf_edge_store_objects", &[]), 2);
    assert_eq!(edge.metric("hf_edge_store_bytes", &[]), bytes);
    all_hits(&edge, &hub, &bodies);
    wait_for("the rebuilt index on disk", || {
        (std::fs::read(&snap).ok()? != damaged).then_some(())
    });
}

#[test]
fn an_index_that_does_not_match_the_disk_serves_no_wrong_byte() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).start();
    let first = edge.get(XET_1MIB, &[]).body;
    stop_cleanly(&mut edge);
    let snap = edge.cache_dir().join("index.snap");
    let old = std::fs::read(&snap).unwrap();

    edge.restart();
    let second = edge.get(LFS, &[]).body;
    stop_cleanly(&mut edge);
    // An index that names a blob no longer on disk and lacks one that is, and claims a
    // clean stop, so the boot trusts it.
    std::fs::write(&snap, &old).unwrap();
    let blobs = edge.cache_dir().join("blobs");
    let gone = std::fs::read_dir(blobs.join("oid"))
        .unwrap()
        .chain(std::fs::read_dir(blobs.join("sha256")).unwrap())
        .map(|shard| shard.unwrap().path())
        .flat_map(|shard| std::fs::read_dir(shard).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == first.len() as u64)
        .expect("the first blob's file");
    std::fs::remove_file(gone).unwrap();

    edge.restart();
    assert_eq!(count(&edge, "store index: 1 blob(s) loaded from"), 2);
    hub.clear_log();
    let r = edge.get(XET_1MIB, &[]);
    assert_eq!(
        r.cache(),
        Some("miss"),
        "named by the index, gone from disk"
    );
    assert!(r.body == first);
    let r = edge.get(LFS, &[]);
    assert_eq!(
        r.cache(),
        Some("hit"),
        "on disk, missing from the index: adopted"
    );
    assert!(r.body == second);
    assert_eq!(hub.body_fetches(), 1);
    wait_for("the store's counts to match the disk", || {
        (edge.metric("hf_edge_store_objects", &[]) == 2).then_some(())
    });
}
