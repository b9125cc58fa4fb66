//! Peering between hf-edge nodes (`cluster:`): three nodes on loopback, each with its own
//! store and port, in front of one fake Hub. A blob is fetched upstream by its owner only; a
//! node that does not own it streams it from the owner (then the next node, then the Hub).

use std::net::SocketAddr;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{HELD_AFTER, LFS, LFS_SIZE, TINY_DS};
use crate::harness::{free_port, wait_for, ClusterConfig, Edge, HealthCheckConfig};
use crate::http::{request, Download};

const SECRET: &str = "integration-cluster-secret-0123456789";
const ADMIN: &str = "cluster-admin-token";

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn cluster_config(me: SocketAddr, nodes: &[SocketAddr]) -> ClusterConfig {
    ClusterConfig {
        self_url: url(me),
        peers: nodes.iter().copied().map(url).collect(),
        secret: SECRET.into(),
        replicate: true,
        health_check: HealthCheckConfig {
            interval: "200ms".into(),
            timeout: "500ms".into(),
        },
    }
}

/// `n` nodes peering with each other (read timeouts long enough for a held CDN body); returns
/// once every node sees every node up.
fn start_cluster(hub: &FakeHub, n: usize) -> Vec<Edge> {
    start_cluster_with(hub, n, true)
}

fn start_cluster_with(hub: &FakeHub, n: usize, replicate: bool) -> Vec<Edge> {
    let nodes: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let edges: Vec<Edge> = nodes
        .iter()
        .map(|&me| {
            Edge::builder(hub)
                .read_timeout("30s")
                .configure(|c| {
                    c.listen = me;
                    c.ops.admin_token = Some(ADMIN.into());
                    c.cluster = Some(ClusterConfig {
                        replicate,
                        ..cluster_config(me, &nodes)
                    });
                })
                .start()
        })
        .collect();
    for e in &edges {
        wait_for("every node up", || (nodes_up(e) == n as u64).then_some(()));
    }
    edges
}

fn nodes_up(e: &Edge) -> u64 {
    e.metric("hf_edge_cluster_nodes", &[("health", "up")])
}

/// Blob bodies this node asked upstream for (the Hub or the CDN).
fn upstream_blob_requests(e: &Edge) -> u64 {
    ["2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|s| {
            e.metric_value(
                "hf_edge_upstream_requests_total",
                &[("kind", "blob"), ("status", s)],
            )
            .unwrap_or(0.0) as u64
        })
        .sum()
}

fn peer_requests(e: &Edge, direction: &str, result: &str) -> u64 {
    e.metric(
        "hf_edge_cluster_peer_requests_total",
        &[("direction", direction), ("result", result)],
    )
}

#[test]
fn sixteen_clients_over_three_nodes_cause_one_cdn_fetch() {
    let hub = FakeHub::start();
    let edges = start_cluster(&hub, 3);
    // The CDN holds the body after its first bytes until every client has its header.
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut clients: Vec<Download> = (0..16)
        .map(|i| Download::start(edges[i % 3].addr, LFS, &[]))
        .collect();
    for c in &mut clients {
        let head = c.read_header();
        assert_eq!(head.status, 200, "{:?}", head.headers);
    }
    hub.release();
    for c in clients {
        c.finish().assert_whole_lfs_file();
    }
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 1, "one CDN fetch for the cluster: {gets:?}");
    assert_eq!(gets[0].body_bytes, LFS_SIZE as u64);
    let fetchers: Vec<u64> = edges.iter().map(upstream_blob_requests).collect();
    assert_eq!(fetchers.iter().sum::<u64>(), 1, "{fetchers:?}");
    // The two other nodes each asked the owner once (their clients coalesced) and keep a copy.
    let asked: u64 = edges.iter().map(|e| peer_requests(e, "sent", "ok")).sum();
    assert_eq!(asked, 2);
    for e in &edges {
        assert_eq!(request(e.addr, "GET", LFS, &[]).cache(), Some("hit"));
    }
}

#[test]
fn every_client_completes_when_the_owner_dies_mid_fill() {
    let hub = FakeHub::start();
    let mut edges = start_cluster(&hub, 3);
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut clients: Vec<(usize, Download)> = (0..6)
        .map(|i| (i % 3, Download::start(edges[i % 3].addr, LFS, &[])))
        .collect();
    for (_, c) in &mut clients {
        c.read_header();
    }
    let owner = wait_for("the owner's CDN request", || {
        edges.iter().position(|e| upstream_blob_requests(e) == 1)
    });
    edges[owner].stop();
    hub.release();
    let mut done = 0;
    for (node, c) in clients {
        if node != owner {
            c.finish().assert_whole_lfs_file();
            done += 1;
        }
    }
    assert_eq!(done, 4);
    // The next node on the ring took over the blob: one more upstream fetch, resumed or whole.
    let gets = hub.cdn_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let survivors: u64 = (0..3)
        .filter(|&i| i != owner)
        .map(|i| upstream_blob_requests(&edges[i]))
        .sum();
    assert_eq!(
        survivors, 1,
        "one survivor fetched it, the other got it from that one"
    );
}

#[test]
fn a_fourth_node_takes_about_a_quarter_of_the_blobs() {
    let hub = FakeHub::start();
    let mut edges = start_cluster(&hub, 3);
    let files: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("ring/f{i:03}.txt"),
                format!("blob number {i} of the ring test\n"),
            )
        })
        .collect();
    let pushed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    hub.push("gpt2", &pushed);
    let get_all = |e: &Edge| {
        for (path, content) in &files {
            let r = request(e.addr, "GET", &format!("/gpt2/resolve/main/{path}"), &[]);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.body, content.as_bytes(), "{path}");
        }
    };
    get_all(&edges[0]);
    let owned: Vec<u64> = edges.iter().map(upstream_blob_requests).collect();
    assert_eq!(
        owned.iter().sum::<u64>(),
        100,
        "each blob fetched once, by its owner: {owned:?}"
    );
    assert!(
        owned.iter().all(|&n| n > 10),
        "spread over the nodes: {owned:?}"
    );

    // A fourth node joins; the others learn of it by a config reload.
    let fourth = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut nodes: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();
    nodes.push(fourth);
    for e in &mut edges {
        let before = e.reloads("ok");
        let me = e.addr;
        e.rewrite_config(|c| c.cluster = Some(cluster_config(me, &nodes)));
        e.signal(libc::SIGHUP);
        wait_for("the reload", || (e.reloads("ok") > before).then_some(()));
    }
    let new = Edge::builder(&hub)
        .configure(|c| {
            c.listen = fourth;
            c.cluster = Some(cluster_config(fourth, &nodes));
        })
        .start();
    edges.push(new);
    for e in &edges {
        wait_for("four nodes up", || (nodes_up(e) == 4).then_some(()));
    }
    let fetched_before = hub.body_fetches();
    get_all(&edges[3]);
    // The new node fetched upstream exactly the blobs it now owns; the old owners of the rest
    // served them from their stores.
    let moved = upstream_blob_requests(&edges[3]);
    assert_eq!(hub.body_fetches() - fetched_before, moved as usize);
    assert!(
        (10..=42).contains(&moved),
        "{moved} of 100 blobs moved to the new node"
    );
    assert_eq!(peer_requests(&edges[3], "sent", "ok"), 100 - moved);
}

#[test]
fn without_replication_only_the_owner_keeps_the_blob_and_the_others_stream_it() {
    let hub = FakeHub::start();
    let edges = start_cluster_with(&hub, 3, false);
    let sha = hub.expected(TINY_DS, "main", "data/train.parquet").sha256;
    let stored = |e: &Edge| {
        e.cache_dir()
            .join(format!("blobs/sha256/{}/{sha}", &sha[..2]))
            .is_file()
    };
    let whole: Vec<_> = edges.iter().map(|e| e.get(LFS, &[])).collect();
    for r in &whole {
        r.assert_whole_lfs_file();
    }
    let keepers: Vec<bool> = edges.iter().map(stored).collect();
    assert_eq!(keepers.iter().filter(|&&k| k).count(), 1, "{keepers:?}");
    let owner = keepers.iter().position(|&k| k).unwrap();
    for (i, e) in edges.iter().enumerate() {
        // Ranges are asked of the owner from their first byte.
        let part = e.get(LFS, &[("Range", "bytes=1000-1999")]);
        assert_eq!(part.status, 206);
        assert_eq!(part.body, whole[0].body[1000..2000]);
        let want = if i == owner { "hit" } else { "miss" };
        assert_eq!(part.cache(), Some(want), "node {i}");
    }
    assert_eq!(hub.cdn_gets().len(), 1);
    assert_eq!(edges.iter().map(upstream_blob_requests).sum::<u64>(), 1);
}

#[test]
fn warming_every_node_fetches_each_blob_upstream_once() {
    let hub = FakeHub::start();
    let edges = start_cluster(&hub, 3);
    let warm = |e: &Edge| {
        let r = e.admin("POST", "/admin/warm", "{\"repo\": \"gpt2\"}");
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_u64().expect("a job id");
        wait_for("the warm job", || {
            let j = e.admin("GET", &format!("/admin/jobs/{id}"), "").json();
            (j["state"] == "done").then_some(j)
        })
    };
    let first = warm(&edges[0]);
    let files = first["files_total"].as_u64().unwrap();
    assert!(files > 3, "{first}");
    let fetched = hub.body_fetches();
    assert!(fetched > 0);
    // The other nodes warm the same files from their owners, which hold them now.
    for e in &edges[1..] {
        let j = warm(e);
        assert_eq!(j["files_done"].as_u64(), Some(files), "{j}");
    }
    assert_eq!(
        hub.body_fetches(),
        fetched,
        "nothing fetched upstream twice"
    );
    let asked: u64 = edges.iter().map(|e| peer_requests(e, "sent", "ok")).sum();
    assert!(asked > 0);
}

#[test]
fn peer_endpoints_refuse_requests_without_the_cluster_secret() {
    let hub = FakeHub::start();
    let edges = start_cluster(&hub, 2);
    let blob = format!("/.hf-edge/peer/blobs/sha256/{}", "ab".repeat(32));
    let origin = ("x-hf-edge-peer-origin", "http://127.0.0.2/anything");
    let size = ("x-hf-edge-peer-size", "10");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[origin, size],
        &[origin, size, ("x-hf-edge-peer-auth", "1700000000.00")],
        &[
            origin,
            size,
            ("x-hf-edge-peer-auth", "nonsense"),
            ("Authorization", "Bearer hf_approved"),
        ],
    ];
    for headers in cases {
        let r = request(edges[0].addr, "GET", &blob, headers);
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        assert!(
            r.json_error().contains("peer request refused"),
            "{}",
            r.text()
        );
    }
    assert_eq!(peer_requests(&edges[0], "received", "refused"), 4);
    assert_eq!(peer_requests(&edges[0], "received", "served"), 0);
    assert!(
        hub.log().is_empty(),
        "nothing went upstream: {:?}",
        hub.log()
    );
}
