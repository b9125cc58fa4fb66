//! A client that stops reading stalls nobody else: a fill runs at the upstream's pace into the
//! store, and the request that started it reads from the store like any other reader.

use std::time::{Duration, Instant};

use crate::fake_hub::FakeHub;
use crate::fixtures::MINILM_WEIGHTS;
use crate::harness::Edge;
use crate::http::{sha256_hex, Download, Response};

/// The bound on the other clients, all of them: far beyond what they take on a loaded
/// machine; behind a stalled reader they would never finish (their reads time out, cut).
const CLIENTS_DEADLINE: Duration = Duration::from_secs(120);

/// Sends a GET and reads its response header, then nothing more: the connection stays open
/// and unread, like huggingface_hub 0.36's streaming GET under hf_transfer. The model is far
/// more than loopback socket buffers hold, so it really does stop whatever feeds it.
fn stalled_get(edge: &Edge) -> (Download, Response) {
    let mut download = Download::start(edge.addr, MINILM_WEIGHTS, &[]);
    let head = download.read_header();
    (download, head)
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
    let edge = Edge::start(&hub);
    let (stalled, head) = stalled_get(&edge);
    assert_eq!(head.status, 200, "{:?}", head.headers);
    assert_eq!(head.cache(), Some("miss"), "{:?}", head.headers);

    let fast = all_within(8, CLIENTS_DEADLINE, |_| edge.get(MINILM_WEIGHTS, &[]));
    fast[0].assert_whole_lfs_file();
    assert_eq!(sha256_hex(&fast[0].body), head.linked_etag());
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
    assert_eq!(edge.get(MINILM_WEIGHTS, &[]).cache(), Some("hit"));
    drop(stalled);
}

#[test]
fn hf_transfers_pattern_an_unread_get_then_parallel_ranges_completes() {
    // huggingface_hub 0.36 with HF_HUB_ENABLE_HF_TRANSFER=1: a streaming GET whose body it
    // never reads, then the file in 10 MB ranges, several at a time.
    const PART: usize = 10_000_000;
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let (stalled, head) = stalled_get(&edge);
    let size: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    let parts = size.div_ceil(PART);
    let ranges = all_within(parts, CLIENTS_DEADLINE, |i| {
        let (start, end) = (i * PART, ((i + 1) * PART).min(size) - 1);
        edge.get(
            MINILM_WEIGHTS,
            &[("Range", &format!("bytes={start}-{end}"))],
        )
    });
    let mut whole = Vec::with_capacity(size);
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(r.status, 206, "part {i}");
        assert!(!r.truncated, "part {i}");
        whole.extend_from_slice(&r.body);
    }
    assert_eq!(sha256_hex(&whole), head.linked_etag());
    assert_eq!(hub.body_fetches(), 1);
    drop(stalled);
}
