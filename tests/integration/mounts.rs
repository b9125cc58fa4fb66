//! `mounts:`: two fake Hubs behind one hf-edge, one at `/`, one under `/internal`, each with
//! its own token.

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{GPT2_WEIGHTS, MANY_FILES_TREE, SITE_TOKEN};
use crate::harness::{wait_for, Edge};

const INTERNAL_TOKEN: &str = "hf_approved";

/// The `Authorization` values a fake Hub's own listener received.
fn hub_authorizations(hub: &FakeHub) -> Vec<String> {
    hub.log()
        .iter()
        .filter(|e| e.server == "hub")
        .filter_map(|e| e.header("authorization").map(str::to_string))
        .collect()
}

#[test]
fn each_prefix_reaches_its_own_hub_with_its_own_token_and_blobs_are_shared() {
    let public = FakeHub::start();
    let internal = FakeHub::start();
    let edge = Edge::builder(&public)
        .token(SITE_TOKEN)
        .mount("/internal", &internal, Some(INTERNAL_TOKEN))
        .start();
    public.push("gpt2", &[("only-public.txt", "public side")]);
    internal.push("gpt2", &[("only-internal.txt", "internal side")]);
    public.clear_log();
    internal.clear_log();

    let r = edge.get("/gpt2/resolve/main/only-public.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "public side"));
    let r = edge.get("/internal/gpt2/resolve/main/only-internal.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "internal side"));
    let r = edge.get("/internal/gpt2/resolve/main/only-public.txt", &[]);
    assert_eq!(r.status, 404, "the internal Hub has no such file");
    assert_eq!(r.header("x-error-code"), Some("EntryNotFound"));
    let r = edge.get("/gpt2/resolve/main/only-internal.txt", &[]);
    assert_eq!(r.status, 404, "the public Hub has no such file");

    // The same weights on both Hubs: fetched once, then a hit through the other mount.
    let first = edge.get(GPT2_WEIGHTS, &[]);
    assert_eq!(first.status, 200);
    let second = edge.get(&format!("/internal{GPT2_WEIGHTS}"), &[]);
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body);
    assert_eq!(
        internal.cdn_gets().len(),
        0,
        "stored once, from the public Hub"
    );
    assert_eq!(public.cdn_gets().len(), 1);

    // Each token went to its own Hub only, and never to a CDN.
    let to_public = hub_authorizations(&public);
    let to_internal = hub_authorizations(&internal);
    assert!(!to_public.is_empty() && !to_internal.is_empty());
    assert!(
        to_public
            .iter()
            .all(|a| *a == format!("Bearer {SITE_TOKEN}")),
        "{to_public:?}"
    );
    assert!(
        to_internal
            .iter()
            .all(|a| *a == format!("Bearer {INTERNAL_TOKEN}")),
        "{to_internal:?}"
    );
    for hub in [&public, &internal] {
        for cdn in hub.cdn_gets() {
            assert_eq!(cdn.header("authorization"), None, "{}", cdn.path);
        }
    }

    // Metadata answers are kept per mount: `/internal`'s in cache.dir/mounts/internal.
    let journal = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let internal_journal = edge.cache_dir().join("mounts/internal/meta.jsonl");
    wait_for("the internal mount's journal", || {
        journal(internal_journal.clone())
            .contains("only-internal.txt")
            .then_some(())
    });
    let names = |file: &str| format!("\"path\":\"{file}\"");
    let root_journal = wait_for("the root mount's journal", || {
        let text = journal(edge.cache_dir().join("meta.jsonl"));
        text.contains(&names("only-public.txt")).then_some(text)
    });
    assert!(!root_journal.contains(&names("only-internal.txt")));
    assert!(!journal(internal_journal).contains(&names("only-public.txt")));

    // A bounded mount label on the metrics and the access lines.
    let requests = |mount: &str| {
        edge.metric(
            "hf_edge_requests_total",
            &[
                ("mount", mount),
                ("route", "resolve"),
                ("method", "GET"),
                ("status", "2xx"),
            ],
        )
    };
    assert_eq!((requests("/"), requests("/internal")), (2, 2));
    let mounts: Vec<_> = edge
        .access_lines()
        .iter()
        .filter_map(|l| l["mount"].as_str().map(str::to_string))
        .collect();
    assert!(mounts.iter().any(|m| m == "/internal"), "{mounts:?}");
    assert!(mounts.iter().all(|m| m == "/" || m == "/internal"));
}

#[test]
fn links_and_locations_carry_the_prefix() {
    let public = FakeHub::start();
    let internal = FakeHub::start();
    let edge = Edge::builder(&public)
        .mount("/internal", &internal, None)
        .start();
    let base = format!("<http://{}/internal/", edge.addr);
    let mut next = Some(format!("/internal{MANY_FILES_TREE}"));
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = edge.get(&path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        pages += 1;
        if let Some(link) = r.header("link") {
            assert!(link.starts_with(&base), "{link}");
            next = Some(
                link[1..link.find('>').unwrap()].replace(&format!("http://{}", edge.addr), ""),
            );
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert!(pages >= 3, "{pages} pages");
    assert!(
        public.log().is_empty(),
        "nothing under /internal went to the other Hub"
    );

    internal.fault(
        Fault::status(302)
            .on_hub()
            .on_path("^/api/models/gpt2/revision/v1.0$")
            .header(
                "Location",
                &format!("{}/api/models/gpt2/revision/main", internal.url),
            ),
    );
    let moved = edge.get("/internal/api/models/gpt2/revision/v1.0", &[]);
    assert_eq!(moved.status, 302, "{}", moved.text());
    assert_eq!(
        moved.header("location"),
        Some(
            format!(
                "http://{}/internal/api/models/gpt2/revision/main",
                edge.addr
            )
            .as_str()
        )
    );
}

#[test]
fn a_path_that_only_starts_like_a_prefix_stays_at_the_root() {
    let public = FakeHub::start();
    let internal = FakeHub::start();
    let edge = Edge::builder(&public)
        .mount("/gpt", &internal, None)
        .start();
    let r = edge.get("/gpt2/resolve/main/config.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = edge.get("/gpt/gpt2/resolve/main/config.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(public.log().iter().all(|e| !e.path.starts_with("/gpt/")));
    assert!(internal.log().iter().any(|e| e.path.contains("gpt2")));
}
