//! What hf-edge writes down as it serves stays bounded whatever clients send: `refs.jsonl`
//! and `meta.jsonl` record each answer once however it is spelled.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Edge, FakeHub};

/// `commit` with the letters chosen by the bits of `i` in upper case.
fn case_variant(commit: &str, i: u32) -> String {
    let mut letter = 0;
    commit
        .chars()
        .map(|c| {
            if !c.is_ascii_alphabetic() {
                return c;
            }
            letter += 1;
            match (i >> (letter - 1)) & 1 {
                1 => c.to_ascii_uppercase(),
                _ => c,
            }
        })
        .collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Waits (bounded) until `path` has `want` lines; returns how many it has.
fn settle(path: &Path, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    while lines(path) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    lines(path)
}

#[test]
fn case_variants_of_a_commit_and_a_repo_are_recorded_once() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub, "");
    let head = edge.head("/gpt2/resolve/main/config.json", &[]);
    let commit = head.header("x-repo-commit").unwrap().to_string();
    assert!(commit.chars().filter(char::is_ascii_alphabetic).count() >= 8);
    for i in 0..200 {
        let repo = if i % 3 == 0 { "GPT2" } else { "gpt2" };
        let path = format!("/{repo}/resolve/{}/config.json", case_variant(&commit, i));
        let r = edge.get(&path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let cache = edge.dir.path().join("cache");
    assert_eq!(settle(&cache.join("refs.jsonl"), 1), 1);
    // The Hub's one answer (to the HEAD of main), which every variant was served from.
    assert_eq!(settle(&cache.join("meta.jsonl"), 1), 1);
    let refs = std::fs::read_to_string(cache.join("refs.jsonl")).unwrap();
    assert!(
        refs.contains(&format!("\"revision\":\"{commit}\"")),
        "{refs}"
    );
    edge.restart();
    assert_eq!(lines(&cache.join("refs.jsonl")), 1);
}

/// An hf-edge with `extra` added to its `cache:` section.
fn edge_with_cache_keys(hub: &FakeHub, extra: &str) -> Edge {
    let mut edge = Edge::start(hub, "");
    let cfg = edge.dir.path().join("hf-edge.yaml");
    let yaml = std::fs::read_to_string(&cfg).unwrap().replace(
        "revision_ttl: 60s\n",
        &format!("revision_ttl: 60s\n{extra}"),
    );
    std::fs::write(&cfg, yaml).unwrap();
    edge.restart();
    edge
}

#[test]
fn meta_jsonl_keeps_its_newest_answers_and_stays_compacted() {
    let hub = FakeHub::start();
    let mut edge = edge_with_cache_keys(&hub, "  meta_max_entries: 20\n");
    let meta = edge.dir.path().join("cache/meta.jsonl");
    let file = |i: usize| format!("shard-{:02}/file-{i:04}.txt", i / 100);
    for i in 0..150 {
        let r = edge.head(
            &format!("/fake-org/many-files/resolve/v1.0/{}", file(i)),
            &[],
        );
        assert_eq!(r.status, 200);
        assert!(
            lines(&meta) <= 40,
            "{} lines after {i} answers",
            lines(&meta)
        );
    }
    edge.restart();
    let kept = std::fs::read_to_string(&meta).unwrap();
    assert_eq!(kept.lines().count(), 20);
    assert!(kept.contains(&file(149)), "the newest answers are kept");
    assert!(!kept.contains(&file(0)));
}
