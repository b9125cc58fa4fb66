//! What hf-edge writes down as it serves stays bounded whatever clients send: `refs.jsonl`
//! and `meta.jsonl` record each answer once however it is spelled, `meta.jsonl` and the kept
//! API answers stay under their caps, and only the query forms clients send are kept.
//!
//! Each of these files is written by a thread of its own, which takes what is queued in
//! order: a test asks for a marker last and waits (bounded) for the marker's line or file,
//! after which everything asked before it is written too.

use std::path::Path;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::CONFIG;
use crate::harness::{poll_until, wait_for, Edge};

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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> usize {
    read(path).lines().count()
}

/// A file of a repo no journal test asks for otherwise: its lines in `refs.jsonl` and
/// `meta.jsonl` are the only ones that name [`MARKER_REPO`].
const MARKER: &str = "/datasets/fake-org/tiny-ds/resolve/main/data/train.csv";
const MARKER_REPO: &str = "fake-org/tiny-ds";

/// Asks for [`MARKER`] and waits (bounded) until each of `journals` holds its line: every
/// line queued before it is written by then.
fn write_marker(edge: &Edge, journals: &[&Path]) {
    let r = edge.get(MARKER, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    for journal in journals {
        wait_for(
            &format!("the marker's line in {}", journal.display()),
            || read(journal).contains(MARKER_REPO).then_some(()),
        );
    }
}

/// The lines of `journal` other than the marker's.
fn unmarked(journal: &Path) -> Vec<String> {
    read(journal)
        .lines()
        .filter(|l| !l.contains(MARKER_REPO))
        .map(str::to_string)
        .collect()
}

#[test]
fn case_variants_of_a_commit_and_a_repo_are_recorded_once() {
    let hub = FakeHub::start();
    let mut edge = Edge::start(&hub);
    let head = edge.head(CONFIG, &[]);
    let commit = head
        .header("x-repo-commit")
        .expect("X-Repo-Commit")
        .to_string();
    assert!(commit.chars().filter(char::is_ascii_alphabetic).count() >= 8);
    for i in 0..200 {
        let repo = if i % 3 == 0 { "GPT2" } else { "gpt2" };
        let path = format!("/{repo}/resolve/{}/config.json", case_variant(&commit, i));
        let r = edge.get(&path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let cache = edge.cache_dir();
    let (refs, meta) = (cache.join("refs.jsonl"), cache.join("meta.jsonl"));
    write_marker(&edge, &[&refs, &meta]);
    let recorded = unmarked(&refs);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    // The Hub's one answer (to the HEAD of main), which every variant was served from.
    let answers = unmarked(&meta);
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert!(
        recorded[0].contains(&format!("\"revision\":\"{commit}\"")),
        "{recorded:?}"
    );
    edge.restart();
    let recorded = unmarked(&refs);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
}

#[test]
fn meta_jsonl_keeps_its_newest_answers_and_stays_compacted() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).meta_max_entries(20).start();
    let meta = edge.cache_dir().join("meta.jsonl");
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
    // The last answer is the last line queued: once it is written, every answer is.
    wait_for("the last answer in meta.jsonl", || {
        read(&meta).contains(&file(149)).then_some(())
    });
    assert!(
        lines(&meta) <= 40,
        "{} lines after 150 answers",
        lines(&meta)
    );
    edge.restart();
    let kept = read(&meta);
    assert_eq!(kept.lines().count(), 20, "{kept}");
    assert!(kept.contains(&file(149)), "the newest answers are kept");
    assert!(!kept.contains(&file(0)));
}

/// The kept API answers (`cache/api/*.json`), as the bodies they hold.
fn api_bodies(edge: &Edge) -> Vec<String> {
    let dir = edge.cache_dir().join("api");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        // (Written to a temp file and renamed: a file is whole, unless evicted just now.)
        .filter_map(|p| std::fs::read(p).ok())
        .map(|bytes| {
            let kept: serde_json::Value =
                serde_json::from_slice(&bytes).expect("a kept answer is JSON");
            kept["body"].as_str().expect("a body").to_string()
        })
        .collect()
}

fn api_files(edge: &Edge) -> usize {
    api_bodies(edge).len()
}

#[test]
fn api_answers_are_kept_only_in_the_forms_clients_use() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let tree = "/api/models/gpt2/tree/main?recursive=true&expand=false";
    let listing = edge.get(tree, &[]);
    assert_eq!(listing.status, 200);
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
    // A marker, kept last: once it is written, every answer kept before it is.
    let marker = edge.get("/api/models/gpt2/revision/main", &[]);
    assert_eq!(marker.status, 200);
    let marker = marker.text();
    wait_for("the marker's answer to be kept", || {
        api_bodies(&edge).contains(&marker).then_some(())
    });
    let others: Vec<String> = api_bodies(&edge)
        .into_iter()
        .filter(|b| *b != marker)
        .collect();
    assert_eq!(others, [listing.text()], "one answer kept: the listing's");
    let written = poll_until(
        || edge.metric("hf_edge_api_snapshots_written_total", &[]),
        |w| *w >= 2,
    );
    assert_eq!(written, 2, "the listing once, and the marker");
    // The Hub goes down: the listing is served from what was kept, in any of its spellings
    // (repo ids compare case-insensitively, as on the Hub).
    hub.fault(Fault::down().on_hub());
    let kept = edge.get("/api/models/Gpt2/tree/main?recursive=TRUE", &[]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert!(kept.is_stale(), "{:?}", kept.headers);
}

#[test]
fn kept_api_answers_stay_under_their_caps() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).api_snapshots_max_files(3).start();
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
    // Written (and the oldest removed) by a thread of their own: wait, bounded, until all
    // eight are.
    let state = || {
        (
            edge.metric("hf_edge_api_snapshots_written_total", &[]),
            api_files(&edge),
            edge.metric("hf_edge_api_snapshots_files", &[]),
            edge.metric("hf_edge_api_snapshots_evicted_total", &[]),
        )
    };
    let (written, files, files_gauge, evicted) =
        poll_until(state, |s| s.0 >= 8 && s.3 >= 5 && s.1 == 3 && s.2 == 3);
    assert_eq!(written, 8);
    assert_eq!(files, 3);
    assert_eq!(files_gauge, 3);
    assert_eq!(evicted, 5);
    // The newest are the ones kept.
    hub.fault(Fault::down().on_hub());
    let newest = format!("/api/models/{}/tree/v1.0", repos[3]);
    assert_eq!(edge.get(&newest, &[]).status, 200);
    let gone = edge.get("/api/models/gpt2/tree/main", &[]);
    assert_ne!(gone.status, 200, "{:?} {}", gone.headers, gone.text());
}
