//! Fills under concurrency and failure: ranges during a fill, clients that leave, kills.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Edge, FakeHub};

const LFS: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";

/// Starts a GET and returns the open connection after `bytes` of the response arrived.
fn start_download(edge: &Edge, path: &str, bytes: usize) -> TcpStream {
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = vec![0u8; bytes];
    s.read_exact(&mut got).unwrap();
    s
}

#[test]
fn a_range_during_a_fill_gets_206_with_the_right_bytes() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.3, "times": 1}));
    let filling = start_download(&edge, LFS, 1000);
    let r = edge.get(LFS, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206, "{:?}", r.headers);
    drop(filling);
    let whole = edge.get(LFS, &[]);
    assert_eq!(r.body, whole.body[100..200]);
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn the_first_client_leaving_does_not_cancel_the_fill_for_others() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.2, "times": 1}));
    let first = start_download(&edge, LFS, 1000);
    std::thread::scope(|s| {
        let second = s.spawn(|| edge.get(LFS, &[]));
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        let r = second.join().unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.truncated, "the second client gets the whole file");
        r.assert_whole_lfs_file();
    });
    let again = edge.get(LFS, &[]);
    assert_eq!(again.header("x-hf-edge-cache"), Some("hit"));
    assert_eq!(hub.body_fetches(), 1);
}

#[test]
fn a_kill_during_a_fill_leaves_nothing_half_written() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub, "");
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.5, "times": 1}));
    let filling = start_download(&edge, LFS, 1000);
    let tmp = edge.dir.path().join("cache/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        1,
        "the fill is in progress"
    );
    edge.restart(); // SIGKILL, then start on the same cache
    drop(filling);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "boot removes the temp file"
    );
    let r = edge.get(LFS, &[]);
    assert_eq!(r.header("x-hf-edge-cache"), Some("miss"));
    r.assert_whole_lfs_file();
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a small tmpfs needs root (CI runs as root)");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_serves_through_and_keeps_serving_hits() {
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("cache"), "1m");
    let mut edge = Edge::start_in(dir, &hub.hub, "");

    // 3 MiB cannot fit in 1 MiB: the client still gets every byte, nothing is kept.
    let big = edge.get(LFS, &[]);
    assert_eq!(big.status, 200);
    assert!(!big.truncated);
    big.assert_whole_lfs_file();
    let etag = big.linked_etag();
    let cache = edge.dir.path().join("cache");
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    assert!(!cache
        .join("blobs/sha256")
        .join(&etag[..2])
        .join(&etag)
        .exists());
    let metrics = crate::harness::request(edge.metrics, "GET", "/metrics", &[]).text();
    assert!(
        metrics.contains("hf_edge_store_write_errors_total 1"),
        "the failed write is counted"
    );

    // Small files still fit, and hits keep working.
    let small = "/gpt2/resolve/main/config.json";
    assert_eq!(edge.get(small, &[]).header("x-hf-edge-cache"), Some("miss"));
    assert_eq!(edge.get(small, &[]).header("x-hf-edge-cache"), Some("hit"));
    // Unmount before the temp dir is removed, and after the process let go of it.
    edge.stop();
    drop(disk);
}

#[test]
fn readers_of_a_fill_never_see_the_upstream_cut_it_resumed_from() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    // Two 1 MiB chunks 0.3 s apart, the second cut short: a reader joins in between.
    hub.fault(
        json!({"mode": "drop_after", "server": "cdn", "bytes": 1_100_000, "times": 1,
        "body_delay": 0.3}),
    );
    std::thread::scope(|s| {
        let first = s.spawn(|| edge.get(LFS, &[]));
        std::thread::sleep(Duration::from_millis(450));
        let joined = s.spawn(|| edge.get(LFS, &[]));
        for r in [first.join().unwrap(), joined.join().unwrap()] {
            assert_eq!(r.status, 200);
            r.assert_whole_lfs_file();
        }
    });
    assert_eq!(
        hub.body_fetches(),
        2,
        "the cut fetch and its resume, nothing more"
    );
}
