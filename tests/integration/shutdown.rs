//! SIGTERM and `shutdown_grace`: the listeners close at once, downloads in flight get the
//! grace to finish, and the process exits 0.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{HELD_AFTER, LFS, TINY_DS};
use crate::harness::{wait_for, Edge};
use crate::http::{sha256_hex, Download};

/// Time Pingora may take after the grace to stop its runtimes (5 s), and some more.
const EXIT_MARGIN: Duration = Duration::from_secs(10);

#[test]
fn sigterm_lets_a_download_in_flight_finish_refuses_new_connections_and_exits_0() {
    let hub = FakeHub::start();
    let grace = Duration::from_secs(8);
    let mut edge = Edge::builder(&hub)
        .shutdown_grace("8s")
        .read_timeout("60s")
        .start();
    // The CDN holds the body until the listener is seen closed: the download is in flight
    // when the signal arrives, and goes on within the grace.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut download = Download::start(edge.addr, LFS, &[]);
    assert_eq!(download.read_header().status, 200);

    let signalled = Instant::now();
    edge.sigterm();
    edge.wait_for_log(&format!("Shutting down {}", edge.addr));
    wait_for(
        "new connections to be refused",
        || match TcpStream::connect(edge.addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    // The fake logs the bytes it sent as it goes: on a loaded machine, a little after hf-edge
    // answered the header.
    let cdn = crate::harness::poll_until(
        || hub.cdn_gets(),
        |cdn| cdn.len() == 1 && cdn[0].body_bytes == HELD_AFTER,
    );
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(
        cdn[0].body_bytes, HELD_AFTER,
        "held: still in flight: {cdn:?}"
    );
    hub.release();

    let r = download.finish();
    assert_eq!(r.status, 200);
    r.assert_whole_lfs_file();
    assert_eq!(
        sha256_hex(&r.body),
        hub.expected(TINY_DS, "main", "data/train.parquet").sha256
    );
    let left = (signalled + grace + EXIT_MARGIN).saturating_duration_since(Instant::now());
    let status = edge
        .wait_exit(left)
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", grace + EXIT_MARGIN));
    assert_eq!(status.code(), Some(0), "{}", edge.log_text());
}
