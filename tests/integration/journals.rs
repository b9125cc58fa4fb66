//! What hf-edge writes down as it serves stays bounded whatever clients send: `refs.jsonl`
//! and `meta.jsonl` record each answer once however it is spelled, `meta.jsonl` and the kept
//! API answers stay under their caps, and only the query forms clients send are kept.

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
    // (Written by a thread of its own: the last lines land just after the last answer.)
    let deadline = Instant::now() + Duration::from_secs(3);
    while !std::fs::read_to_string(&meta).unwrap().contains(&file(149)) {
        assert!(
            Instant::now() < deadline,
            "the last answer is never written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    edge.restart();
    let kept = std::fs::read_to_string(&meta).unwrap();
    assert_eq!(kept.lines().count(), 20);
    assert!(kept.contains(&file(149)), "the newest answers are kept");
    assert!(!kept.contains(&file(0)));
}

fn api_files(edge: &Edge) -> usize {
    std::fs::read_dir(edge.dir.path().join("cache/api"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".json")
        })
        .count()
}

/// Waits (bounded) until the kept API answers number `want`; returns how many there are.
fn settle_api_files(edge: &Edge, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    while api_files(edge) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    api_files(edge)
}

#[test]
fn api_answers_are_kept_only_in_the_forms_clients_use() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub, "");
    let tree = "/api/models/gpt2/tree/main?recursive=true&expand=false";
    assert_eq!(edge.get(tree, &[]).status, 200);
    for n in 0..100 {
        let junk = format!("/api/models/gpt2/tree/main?recursive=true&z={n}");
        assert_eq!(
            edge.get(&junk, &[]).status,
            200,
            "passed through all the same"
        );
    }
    // The same listing spelled as other clients (and the Hub's own links) do.
    for same in [
        "/api/models/gpt2/tree/main?recursive=True",
        "/api/models/gpt2/tree/main?expand=False&recursive=true",
    ] {
        assert_eq!(edge.get(same, &[]).status, 200);
    }
    assert_eq!(settle_api_files(&edge, 1), 1);
    assert_eq!(edge.metric("hf_edge_api_snapshots_written_total"), 1);
    // The Hub goes down: the listing is served from what was kept, in any of its spellings
    // (repo ids compare case-insensitively, as on the Hub).
    hub.fault(serde_json::json!({"mode": "down", "server": "hub"}));
    let kept = edge.get("/api/models/Gpt2/tree/main?recursive=TRUE", &[]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert!(kept.header("warning").is_some());
}

#[test]
fn kept_api_answers_stay_under_their_caps() {
    let hub = FakeHub::start();
    let edge = edge_with_cache_keys(&hub, "  api_snapshots_max_files: 3\n");
    let repos = [
        "gpt2",
        "fake-org/many-files",
        "fake-org/xet-model",
        "sentence-transformers/all-MiniLM-L6-v2",
    ];
    for repo in repos {
        for rev in ["main", "v1.0"] {
            let r = edge.get(&format!("/api/models/{repo}/tree/{rev}"), &[]);
            assert_eq!(r.status, 200, "{repo}@{rev}");
        }
    }
    // (Written by a thread of their own: wait, bounded, until all eight are.)
    let deadline = Instant::now() + Duration::from_secs(3);
    while edge.metric("hf_edge_api_snapshots_written_total") < 8 {
        assert!(Instant::now() < deadline, "the answers are never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api_files(&edge), 3);
    assert_eq!(edge.metric("hf_edge_api_snapshots_files"), 3);
    assert_eq!(edge.metric("hf_edge_api_snapshots_evicted_total"), 5);
    // The newest are the ones kept.
    hub.fault(serde_json::json!({"mode": "down", "server": "hub"}));
    let newest = format!("/api/models/{}/tree/v1.0", repos[3]);
    assert_eq!(edge.get(&newest, &[]).status, 200);
    let gone = edge.get("/api/models/gpt2/tree/main", &[]);
    assert_ne!(gone.status, 200, "{:?} {}", gone.headers, gone.text());
}
