//! Readiness that helps (ready while the store is writable, whatever the Hub does; the Hub's
//! state in `/readyz` and in `hf_edge_hub_state`) and the status page's data at `/status.json`.

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, GPT2, HELD_AFTER, LFS, MINILM_WEIGHTS, TINY_DS};
use crate::harness::{free_port, poll_until, Edge};
use crate::http::{request, Download};

fn readyz(edge: &Edge) -> (u16, serde_json::Value) {
    let r = request(edge.metrics, "GET", "/readyz", &[]);
    (r.status, r.json())
}

/// `/readyz` once the background probe has reported the Hub's state.
fn probed(edge: &Edge) -> (u16, serde_json::Value) {
    poll_until(
        || readyz(edge),
        |(_, body)| body["hub"]["state"] != "unknown",
    )
}

#[test]
fn a_hub_outage_keeps_the_edge_ready_and_is_reported() {
    let gone = format!("http://127.0.0.1:{}", free_port()); // nothing listens there
    let edge = Edge::builder_at(&gone).start();
    let (status, body) = probed(&edge);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["store"], "writable");
    assert_eq!(body["hub"]["state"], "unreachable", "{body}");
    assert!(
        body["upstream"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    let state = |s: &str| edge.metric("hf_edge_hub_state", &[("mount", "/"), ("state", s)]);
    assert_eq!((state("unreachable"), state("reachable")), (1, 0));

    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let (status, body) = probed(&edge);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hub"]["state"], "reachable", "{body}");
    assert_eq!(
        edge.metric(
            "hf_edge_hub_state",
            &[("mount", "/"), ("state", "reachable")]
        ),
        1
    );
}

#[test]
fn an_unwritable_store_makes_the_edge_unready() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    assert_eq!(readyz(&edge).0, 200);
    // Root writes through permissions; a file where the store's tmp directory was cannot
    // be written through.
    let tmp = edge.cache_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (status, body) = readyz(&edge);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    assert!(
        body["store"]
            .as_str()
            .unwrap()
            .starts_with("not writable: "),
        "{body}"
    );
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(readyz(&edge).0, 200);
}

#[test]
fn status_json_reports_the_store_traffic_repos_and_fills() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).read_timeout("60s").start();
    for path in [CONFIG, CONFIG, LFS] {
        assert_eq!(edge.get(path, &[]).status, 200, "{path}");
    }
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut filling = Download::start(edge.addr, MINILM_WEIGHTS, &[]);
    assert_eq!(filling.read_header().status, 200);

    let s = poll_until(
        || {
            edge.get("/status.json", &[("Host", "edge.example:8080")])
                .json()
        },
        |s| s["fills"][0]["written"].as_u64() >= Some(HELD_AFTER),
    );
    assert_eq!(s["url"], "http://edge.example:8080", "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["offline"], false);
    assert_eq!(s["upstreams"][0]["mount"], "/");
    assert_eq!(s["upstreams"][0]["url"], format!("http://{}", hub.addr()));
    let store = &s["store"];
    assert_eq!(store["objects"], 2, "{s}");
    assert!(store["bytes"].as_u64().unwrap() > 3 << 20, "{s}");
    assert!(store["reserved_bytes"].as_u64().unwrap() > 0, "{s}");
    let traffic = &s["traffic"];
    assert_eq!(traffic["lookups"]["hit"], 1, "{s}");
    assert!(traffic["hit_ratio"].as_f64().unwrap() > 0.0, "{s}");
    assert!(traffic["bytes_saved"].as_u64().unwrap() > 0, "{s}");
    let repos: Vec<&str> = s["top_repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repo"].as_str().unwrap())
        .collect();
    assert_eq!(repos, [TINY_DS, GPT2], "most bytes first: {s}");
    let fill = &s["fills"][0];
    assert!(fill["blob"].as_str().unwrap().starts_with("sha256/"), "{s}");
    assert!(fill["size"].as_u64().unwrap() > fill["written"].as_u64().unwrap());
    assert_eq!(fill["readers"], 1);
    for c in s["clients"].as_array().unwrap() {
        let snippet = c["snippet"].as_str().unwrap();
        assert!(snippet.contains("http://edge.example:8080"), "{snippet}");
    }
    drop(filling);
    hub.clear_faults();
}

#[test]
fn the_page_is_html_that_never_reflects_a_hostile_host() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    // Quotes and parentheses pass HTTP parsing; a page that reflected them could be scripted.
    let page = edge.get("/", &[("Host", "x'onload=alert(1)//")]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = page.text();
    assert!(!html.contains("onload"), "{html}");
    assert!(
        html.contains(&format!(
            "<code id=\"endpoint\">http://{}</code>",
            edge.addr
        )),
        "the listen address stands in for a Host that is not a plain name"
    );
    // Nothing went to the Hub for it: / no longer proxies the Hub's home page.
    let proxied = hub
        .log()
        .into_iter()
        .any(|l| l.method == "GET" && l.path == "/");
    assert!(!proxied, "{:?}", hub.log());
    let head = edge.head("/", &[]);
    assert_eq!((head.status, head.body.len()), (200, 0));
}

#[test]
fn the_status_page_is_open_under_repo_rules_and_closed_without_a_required_key() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).allow_repos(&["fake-org/*"]).start();
    for path in ["/", "/status.json"] {
        assert_eq!(edge.get(path, &[]).status, 200, "{path}");
    }
    let edge = Edge::builder(&hub)
        .site_key("ops", "k3y-for-the-page", None)
        .require_key()
        .start();
    for path in ["/", "/status.json"] {
        assert_eq!(edge.get(path, &[]).status, 401, "{path}");
        let keyed = edge.get(path, &[("Authorization", "Bearer k3y-for-the-page")]);
        assert_eq!(keyed.status, 200, "{path}");
    }
}
