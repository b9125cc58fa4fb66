//! Fills under concurrency and failure: ranges during a fill, clients that leave, kills.
//!
//! A fill is kept in progress by the fake CDN: it holds the body until the test releases it,
//! or waits before each 1 MiB chunk of the 3 MiB file. Tests act on what they saw (a header,
//! bytes, a temp file), never on a time window.

use std::time::Duration;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, HELD_AFTER, LFS, LFS_SIZE, TINY_DS};
use crate::harness::{wait_for, Edge, SmallDisk};
use crate::http::{sha256_hex, Download};

#[test]
fn a_range_during_a_fill_gets_206_with_the_right_bytes() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut filling = Download::start(edge.addr, LFS, &[]);
    assert_eq!(filling.read_header().cache(), Some("miss"));
    // Bytes 100-199 arrived; the CDN holds the rest of the file.
    let part = edge.get(LFS, &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.cache(), Some("coalesced"), "served from the fill");
    let content_range = format!("bytes 100-199/{LFS_SIZE}");
    assert_eq!(part.header("content-range"), Some(content_range.as_str()));
    assert_eq!(
        hub.cdn_gets()[0].body_bytes,
        HELD_AFTER,
        "the fill is still held"
    );
    hub.release();
    let whole = filling.finish();
    whole.assert_whole_lfs_file();
    assert_eq!(part.body, whole.body[100..200]);
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn the_first_client_leaving_does_not_cancel_the_fill_for_others() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut first = Download::start(edge.addr, LFS, &[]);
    assert_eq!(first.read_header().cache(), Some("miss"));
    let mut second = Download::start(edge.addr, LFS, &[]);
    assert_eq!(
        second.read_header().cache(),
        Some("coalesced"),
        "joined the fill"
    );
    drop(first);
    hub.release();
    let r = second.finish();
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].body_bytes, LFS_SIZE as u64, "the fill read it all");
    assert_eq!(edge.get(LFS, &[]).cache(), Some("hit"), "and kept it");
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn a_kill_during_a_fill_leaves_nothing_half_written() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub)
        .configure(|c| c.upstream.read_timeout = "60s".into())
        .start();
    // A fill that cannot end before the kill: 10 s before each chunk.
    hub.fault(Fault::slow_body(Duration::from_secs(10)).on_cdn().once());
    let filling = Download::start(edge.addr, LFS, &[]);
    let tmp = edge.cache_dir().join("tmp");
    wait_for("the fill's temp file", || {
        (std::fs::read_dir(&tmp).ok()?.count() == 1).then_some(())
    });
    edge.restart(); // SIGKILL, then start on the same cache
    drop(filling);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "boot removes the temp file"
    );
    let r = edge.get(LFS, &[]);
    assert_eq!(r.cache(), Some("miss"));
    r.assert_whole_lfs_file();
}

#[test]
fn a_full_disk_serves_through_and_keeps_serving_hits() {
    let hub = FakeHub::start();
    let builder = Edge::builder(&hub);
    let disk = SmallDisk::mount(&builder.dir().join("cache"), "1m");
    let mut edge = builder.start();

    // 3 MiB cannot fit in 1 MiB: the client still gets every byte, nothing is kept.
    let big = edge.get(LFS, &[]);
    assert_eq!(big.status, 200);
    big.assert_whole_lfs_file();
    assert_eq!(
        big.linked_etag(),
        hub.expected(TINY_DS, "main", "data/train.parquet").sha256
    );
    let etag = big.linked_etag();
    let cache = edge.cache_dir();
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    assert!(!cache
        .join("blobs/sha256")
        .join(&etag[..2])
        .join(&etag)
        .exists());
    assert_eq!(
        edge.metric_value("hf_edge_store_write_errors_total", &[]),
        Some(1.0),
        "the failed write is counted, once"
    );

    // Small files still fit, and hits keep working.
    assert_eq!(edge.get(CONFIG, &[]).cache(), Some("miss"));
    assert_eq!(edge.get(CONFIG, &[]).cache(), Some("hit"));
    // Unmount before the temp dir is removed, and after the process let go of it.
    edge.stop();
    drop(disk);
}

#[test]
fn readers_of_a_fill_never_see_the_upstream_cut_it_resumed_from() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    // Two 1 MiB chunks 2 s apart, the second cut short: a reader joins in between.
    hub.fault(
        Fault::drop_after(1_100_000)
            .on_cdn()
            .once()
            .body_delay(Duration::from_secs(2)),
    );
    let mut first = Download::start(edge.addr, LFS, &[]);
    first.read_body_bytes(1 << 20);
    let mut joined = Download::start(edge.addr, LFS, &[]);
    joined.read_body_bytes(1000);
    let (first, joined) = (first.finish(), joined.finish());
    assert_eq!(joined.cache(), Some("coalesced"), "joined before the cut");
    let want = hub.expected(TINY_DS, "main", "data/train.parquet").sha256;
    for r in [first, joined] {
        assert_eq!(r.status, 200);
        r.assert_whole_lfs_file();
        assert_eq!(sha256_hex(&r.body), want);
    }
    let gets = hub.cdn_gets();
    assert_eq!(
        gets.len(),
        2,
        "the cut fetch and its resume, nothing more: {gets:?}"
    );
    assert_eq!(gets[0].body_bytes, 1_100_000);
}
