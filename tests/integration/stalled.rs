//! A client that stops reading stalls nobody else: a fill runs at the upstream's pace into the
//! store, and the request that started it reads from the store like any other reader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{sha256_hex, Edge, FakeHub, Response};

/// The fake Hub's biggest file (90.9 MB): far more than loopback socket buffers hold, so a
/// client that reads nothing really does stop whatever feeds it.
const MODEL: &str = "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors";

/// Sends a GET and reads its response header, then nothing more: the connection stays open
/// and unread, like huggingface_hub 0.36's streaming GET under hf_transfer.
fn stalled_get(edge: &Edge, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

fn linked_etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-linked-etag")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .expect("X-Linked-Etag")
}

/// Runs `n` requests on threads; each must end within `deadline` of the start.
fn all_within<F>(n: usize, deadline: Duration, f: F) -> Vec<Response>
where
    F: Fn(usize) -> Response + Sync,
{
    let started = Instant::now();
    let f = &f;
    let out = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        started.elapsed() < deadline,
        "clients took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn a_client_that_stops_reading_stalls_no_other_client_of_its_fill() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let (stalled, head) = stalled_get(&edge, MODEL);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("x-hf-edge-cache: miss"), "{head}");

    let fast = all_within(8, Duration::from_secs(120), |_| edge.get(MODEL, &[]));
    fast[0].assert_whole_lfs_file();
    assert_eq!(sha256_hex(&fast[0].body), linked_etag(&head));
    for r in &fast {
        assert_eq!((r.status, r.truncated), (200, false));
        assert!(
            r.body == fast[0].body,
            "every fast client got the same bytes"
        );
    }
    assert_eq!(
        hub.body_fetches(),
        1,
        "one CDN GET for the stalled and the fast"
    );
    // The stalled connection is still open, unread, and the blob is complete.
    assert_eq!(edge.get(MODEL, &[]).header("x-hf-edge-cache"), Some("hit"));
    drop(stalled);
}

#[test]
fn hf_transfers_pattern_an_unread_get_then_parallel_ranges_completes() {
    // huggingface_hub 0.36 with HF_HUB_ENABLE_HF_TRANSFER=1: a streaming GET whose body it
    // never reads, then the file in 10 MB ranges, several at a time.
    const PART: usize = 10_000_000;
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let (stalled, head) = stalled_get(&edge, MODEL);
    let size: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    let parts = size.div_ceil(PART);
    let ranges = all_within(parts, Duration::from_secs(120), |i| {
        let (start, end) = (i * PART, ((i + 1) * PART).min(size) - 1);
        edge.get(MODEL, &[("Range", &format!("bytes={start}-{end}"))])
    });
    let mut whole = Vec::with_capacity(size);
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(r.status, 206, "part {i}");
        assert!(!r.truncated, "part {i}");
        whole.extend_from_slice(&r.body);
    }
    assert_eq!(sha256_hex(&whole), linked_etag(&head));
    assert_eq!(hub.body_fetches(), 1);
    drop(stalled);
}
