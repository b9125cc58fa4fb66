//! Routes hf-edge passes through: the API, with pagination links and Xet hints rewritten.

use crate::fake_hub::FakeHub;
use crate::fixtures::{APPROVED, MANY_FILES_TREE, XET_2MIB};
use crate::harness::Edge;
use crate::http::request_with_body;

#[test]
fn tree_pages_link_back_to_the_edge_and_drop_xet_hashes() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let mut next = Some(MANY_FILES_TREE.to_string());
    let (mut pages, mut files) = (0, 0);
    while let Some(path) = next.take() {
        let r = edge.get(&path, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        files += r.json().as_array().unwrap().len();
        pages += 1;
        if let Some(link) = r.header("link") {
            let base = format!("<http://{}/", edge.addr);
            assert!(
                link.starts_with(&base),
                "next page must point at hf-edge: {link}"
            );
            next = Some(link[base.len() - 1..link.find('>').unwrap()].to_string());
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert!(pages >= 3, "{pages} pages");
    assert!(files >= 2500, "{files} entries");

    let tree = edge.get("/api/models/fake-org/xet-model/tree/main", &[]);
    assert!(tree.text().contains("\"lfs\""));
    assert!(!tree.text().contains("xetHash"), "{}", tree.text());
    let info = request_with_body(
        edge.addr,
        "POST",
        "/api/models/fake-org/xet-model/paths-info/main",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"paths=model.safetensors&expand=false",
    );
    assert_eq!(info.status, 200, "{}", info.text());
    assert!(info.text().contains("model.safetensors"));
    assert!(!info.text().contains("xetHash"));
}

#[test]
fn resolve_of_a_xet_file_carries_no_xet_hints() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let r = edge.get(XET_2MIB, &[]);
    assert_eq!(r.status, 200);
    for (k, v) in &r.headers {
        let k = k.to_ascii_lowercase();
        assert!(!k.starts_with("x-xet"), "{k}");
        assert!(!(k == "link" && v.contains("xet")), "{v}");
    }
    let xet_calls = hub
        .log()
        .iter()
        .filter(|e| e.path.contains("xet-read-token") || e.path.starts_with("/_fake/cas"))
        .count();
    assert_eq!(xet_calls, 0);
}

#[test]
fn api_calls_pass_through_with_the_client_identity() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let anon = edge.get("/api/whoami-v2", &[]);
    assert_eq!(anon.status, 401);
    let me = edge.get("/api/whoami-v2", &[APPROVED]);
    assert_eq!(me.status, 200, "{}", me.text());
    let info = edge.get("/api/models/gpt2/revision/main", &[]);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["sha"].as_str().map(str::len), Some(40));
}
