//! Zero-downtime upgrade: `hf-edge serve --upgrade` takes the listening sockets, the old
//! process drains. Under load: eight clients of a 1 GiB blob whose cold fill is in progress at
//! the upgrade, and a loop of small requests on fresh connections throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, HELD_AFTER};
use crate::harness::Edge;
use crate::http::try_request;

const BLOB_SIZE: u64 = 1 << 30;
const BLOB: &str = "/fake-org/bulk/resolve/main/file-0000.bin";
const CLIENTS: usize = 8;
/// The small-request loop's bounds.
const MAX_SMALL_REQUESTS: usize = 5_000;
const LOOP_LIMIT: Duration = Duration::from_secs(300);

/// A download whose header arrived; the body is hashed as it is read, never kept.
struct Streaming {
    stream: TcpStream,
    status: u16,
    length: u64,
    head_rest: Vec<u8>,
}

/// What a client got: status, body bytes, the body's sha256.
struct Got {
    status: u16,
    bytes: u64,
    sha256: String,
}

fn start(addr: SocketAddr, path: &str) -> Streaming {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        assert!(raw.len() < 64 << 10, "no header end");
        let n = stream.read(&mut buf).expect("read header");
        assert!(n > 0, "closed before the header");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head[9..12].parse().expect("status");
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Streaming {
        stream,
        status,
        length,
        head_rest: raw[end..].to_vec(),
    }
}

fn finish(mut s: Streaming) -> Got {
    let mut hash = sha2::Sha256::new();
    hash.update(&s.head_rest);
    let mut bytes = s.head_rest.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                bytes += n as u64;
            }
        }
    }
    Got {
        status: s.status,
        bytes,
        sha256: hex::encode(hash.finalize()),
    }
}

#[test]
fn an_upgrade_under_load_fails_nothing_and_refetches_nothing() {
    let began = Instant::now();
    let hub = FakeHub::start_with(&["--bulk", &format!("1:{BLOB_SIZE}")]);
    let want = hub.expected("fake-org/bulk", "main", "file-0000.bin");
    // The old process drains for shutdown_grace: longer than the downloads take here.
    let mut edge = Edge::builder(&hub)
        .read_timeout("60s")
        .shutdown_grace("120s")
        .start();
    let addr = edge.addr;

    // A cold fill the CDN holds after its first bytes: in progress at the upgrade.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let downloads: Vec<Streaming> = (0..CLIENTS).map(|_| start(addr, BLOB)).collect();
    for d in &downloads {
        assert_eq!((d.status, d.length), (200, BLOB_SIZE));
    }

    let stop = AtomicBool::new(false);
    let (small, got) = std::thread::scope(|s| {
        let small = s.spawn(|| {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = Instant::now() + LOOP_LIMIT;
            for i in 0..MAX_SMALL_REQUESTS {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let path = if i % 2 == 0 {
                    CONFIG
                } else {
                    "/api/models/gpt2/revision/main"
                };
                match try_request(addr, "GET", path, &[], b"") {
                    Ok(r) if r.status == 200 && !r.truncated && !r.body.is_empty() => ok += 1,
                    Ok(r) => failed.push(format!("{path}: {} {:?}", r.status, r.headers)),
                    Err(e) => failed.push(format!("{path}: {e}")),
                }
                // Steady, not flat out: the machine is shared with the other tests.
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        });
        let readers: Vec<_> = downloads
            .into_iter()
            .map(|d| s.spawn(move || finish(d)))
            .collect();
        edge.upgrade();
        let upgraded_at = Instant::now();
        hub.release();
        let got: Vec<Got> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        eprintln!(
            "upgrade: {CLIENTS} x {BLOB_SIZE} bytes done {:?} after the upgrade",
            upgraded_at.elapsed()
        );
        // A little more of the loop against the new process alone.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (small.join().unwrap(), got)
    });

    for g in &got {
        assert_eq!(g.status, 200);
        assert_eq!(g.bytes, BLOB_SIZE, "a truncated body");
        assert_eq!(g.sha256, want.sha256);
    }
    let (ok, failed) = small;
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    // Answered by both processes: access lines carry each process's request id prefix.
    let prefixes: std::collections::HashSet<String> = edge
        .access_lines()
        .iter()
        .filter(|l| l["path"] == CONFIG)
        .filter_map(|l| {
            l["request_id"]
                .as_str()?
                .split('-')
                .next()
                .map(String::from)
        })
        .collect();
    assert_eq!(prefixes.len(), 2, "{prefixes:?}");

    // The fill finished in the old process; the new one serves the blob from the store.
    let after = edge.get(BLOB, &[("Range", "bytes=0-0")]);
    assert_eq!(after.status, 206);
    assert_eq!(after.cache(), Some("hit"));
    let fetches = hub.cdn_gets();
    let fetched: u64 = fetches.iter().map(|g| g.body_bytes).sum();
    eprintln!(
        "upgrade: {ok} small requests, {} failed; {} client(s) of {BLOB_SIZE} bytes, {} truncated; \
         CDN GETs {}, bytes fetched {fetched}, refetched {}; test took {:?}",
        failed.len(),
        got.len(),
        got.iter().filter(|g| g.bytes != BLOB_SIZE).count(),
        fetches.len(),
        fetched - BLOB_SIZE,
        began.elapsed()
    );
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetched, BLOB_SIZE, "nothing fetched twice");
    assert!(ok > 0);
}

#[test]
fn systemd_is_told_ready_and_the_new_main_pid_after_an_upgrade() {
    let hub = FakeHub::start();
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(crate::harness::PATIENCE))
        .unwrap();
    let notified = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut edge = Edge::builder(&hub)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start();
    assert_eq!(notified(), format!("READY=1\nMAINPID={}\n", edge.pid()));
    edge.upgrade();
    assert_eq!(notified(), format!("READY=1\nMAINPID={}\n", edge.pid()));
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
}
