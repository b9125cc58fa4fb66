//! Fills are bounded: `cache.max_fills` at once (beyond, served uncached), their bytes
//! reserved under `cache.max_size` (resumed fills included), and a fill nobody reads any more
//! is cancelled unless half written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{request_with_body, sha256_hex, Edge, FakeHub};

const MODEL: &str = "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors";
const PARQUET: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";
const ONE_MIB: &str = "/fake-org/xet-model/resolve/v1.0/model.safetensors";

/// An hf-edge whose `cache:` section gets `extra` (and `max_size` replaced by `max_size`).
fn edge_with(hub: &FakeHub, max_size: &str, extra: &str) -> Edge {
    let mut edge = Edge::start(hub, "");
    let cfg = edge.dir.path().join("hf-edge.yaml");
    let yaml = std::fs::read_to_string(&cfg).unwrap().replace(
        "  max_size: 10GiB\n",
        &format!("  max_size: {max_size}\n{extra}"),
    );
    std::fs::write(&cfg, yaml).unwrap();
    edge.restart();
    edge
}

/// Polls `check` every 20 ms for up to `secs` seconds.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a GET and returns the connection once the response header arrived.
fn header_only(edge: &Edge, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    s
}

#[test]
fn beyond_max_fills_requests_are_served_uncached_with_their_ranges() {
    let hub = FakeHub::start();
    let edge = edge_with(&hub, "10GiB", "  max_fills: 1\n");
    // The one fill allowed: the big model, slowly.
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.2, "times": 1}));
    let filling = header_only(&edge, MODEL);
    assert_eq!(edge.metric("hf_edge_store_fills"), 1);

    let whole = edge.get(PARQUET, &[]);
    assert_eq!(whole.status, 200);
    whole.assert_whole_lfs_file();
    assert_eq!(whole.header("x-hf-edge-cache"), Some("bypass"));
    let part = edge.get(PARQUET, &[("Range", "bytes=100-199")]);
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(part.body, whole.body[100..200]);
    assert_eq!(edge.metric("hf_edge_store_fills_over_max_total"), 2);

    drop(filling);
    hub.clear_faults();
    // Once fills are free again, the file is stored like any other.
    eventually(60, "the model's fill ended", || {
        edge.metric("hf_edge_store_fills") == 0
    });
    let again = edge.get(PARQUET, &[]);
    assert_eq!(again.header("x-hf-edge-cache"), Some("miss"));
    assert_eq!(
        edge.get(PARQUET, &[]).header("x-hf-edge-cache"),
        Some("hit")
    );
}

#[test]
fn resumed_fills_count_against_max_size_and_are_evicted_like_any_other() {
    let hub = FakeHub::start();
    let max = 4u64 << 20;
    let edge = edge_with(&hub, "4MiB", "");
    // Seven files of 1.2 MiB; the first two have their CDN body cut once and are resumed.
    let size = 1_258_291;
    let files: Vec<String> = (0..7)
        .map(|i| format!("{i}").repeat(size).chars().take(size).collect())
        .collect();
    let mut push = serde_json::Map::new();
    for (i, f) in files.iter().enumerate() {
        push.insert(format!("fill-{i}.bin"), json!(f));
    }
    let pushed = request_with_body(
        hub.addr(),
        "POST",
        "/_fake/push",
        &[],
        json!({"repo": "gpt2", "files": push})
            .to_string()
            .as_bytes(),
    )
    .json();
    let commit = pushed["commit"].as_str().unwrap().to_string();
    let path = |i: usize| format!("/gpt2/resolve/{commit}/fill-{i}.bin");
    for (i, f) in files.iter().enumerate() {
        if i < 2 {
            let sha = sha256_hex(f.as_bytes());
            hub.fault(json!({"mode": "drop_after", "server": "cdn", "path": sha,
                "bytes": 600_000, "times": 1}));
        }
        let r = edge.get(&path(i), &[]);
        assert_eq!(r.status, 200);
        r.assert_whole_lfs_file();
        eventually(10, "the store stayed over max_size", || {
            edge.metric("hf_edge_store_bytes") <= max
        });
    }
    assert_eq!(edge.metric("hf_edge_upstream_resumes_total"), 2);
    assert_eq!(edge.metric("hf_edge_store_reserved_bytes"), 0);
    // Least recently used first: the two resumed blobs went like the others.
    hub.clear_log();
    for i in [0, 1] {
        let r = edge.get(&path(i), &[]);
        assert_eq!(r.header("x-hf-edge-cache"), Some("miss"), "fill-{i}");
    }
    assert_eq!(hub.body_fetches(), 2);
}

#[test]
fn a_fill_nobody_reads_is_cancelled_unless_half_written() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    // 87 chunks of 1 MiB, 0.3 s apart: far from half written when the grace (10 s) ends.
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.3, "times": 1}));
    drop(header_only(&edge, MODEL));
    assert!(edge.metric("hf_edge_store_reserved_bytes") > 0);
    eventually(30, "the fill was not cancelled", || {
        edge.metric("hf_edge_store_orphaned_fills_cancelled_total") == 1
    });
    assert_eq!(edge.metric("hf_edge_store_fills"), 0);
    assert_eq!(edge.metric("hf_edge_store_reserved_bytes"), 0);
    assert_eq!(edge.metric("hf_edge_store_abandoned_fills_total"), 0);
    let tmp = edge.dir.path().join("cache/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    // The CDN stopped sending: the fill's connection was closed.
    std::thread::sleep(Duration::from_millis(700));
    let sent = |hub: &FakeHub| {
        hub.log()
            .iter()
            .find(|e| e["server"] == "cdn")
            .map(|e| e["body_bytes"].as_u64().unwrap())
    };
    let before = sent(&hub);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(sent(&hub), before, "no more bytes after the cancel");

    // A small file its client leaves is still stored: it is whole long before the grace ends.
    drop(header_only(&edge, ONE_MIB));
    eventually(30, "the small fill did not finish", || {
        edge.metric("hf_edge_store_objects") == 1
    });
}
