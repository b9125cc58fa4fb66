//! `cache.object_store` against a real Garage: blobs filled from the Hub land in the bucket
//! under their content address; a node with an empty store fills from the bucket without a
//! body request to the Hub or CDN; an object that is not the blob, or a Garage that is down,
//! costs the client nothing: the Hub serves.

use ::object_store::ObjectStore as _;

use crate::fake_hub::FakeHub;
use crate::fixtures::{LFS, LFS_SIZE, MINILM_WEIGHTS, TINY_DS};
use crate::garage::Garage;
use crate::harness::{poll_until, Edge};
use crate::http::sha256_hex;

/// An edge on an empty store of its own, its tier in `garage` under `prefix`.
fn edge(hub: &FakeHub, garage: &Garage, prefix: &str) -> Edge {
    Edge::builder(hub)
        .read_timeout("30s")
        .configure(|c| c.cache.object_store = Some(garage.config(prefix)))
        .start()
}

fn object(prefix: &str, sha256: &str) -> ::object_store::path::Path {
    ::object_store::path::Path::from(format!("{prefix}/blobs/sha256/{}/{sha256}", &sha256[..2]))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until the edge counted `n` uploads with `result`.
fn wait_uploads(edge: &Edge, result: &str, n: u64) {
    let name = "hf_edge_object_store_uploads_total";
    let got = poll_until(|| edge.metric(name, &[("result", result)]), |v| *v >= n);
    assert_eq!(got, n, "uploads {result}; log:\n{}", edge.log_text());
}

fn reads(edge: &Edge, result: &str) -> u64 {
    edge.metric("hf_edge_object_store_reads_total", &[("result", result)])
}

#[test]
fn a_blob_filled_once_is_served_from_the_bucket_to_a_new_node_and_after_a_wipe() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let hub = FakeHub::start();
    let mut a = edge(&hub, &garage, "site");
    let minilm = MINILM_WEIGHTS.trim_start_matches('/');
    let (repo, path) = minilm.split_once("/resolve/main/").unwrap();
    let big = hub.expected(repo, "main", path);
    let small = hub.expected(TINY_DS, "main", "data/train.parquet");

    let first = a.get(LFS, &[]);
    first.assert_whole_lfs_file();
    assert_eq!(first.cache(), Some("miss"));
    // Over the tier's part size: a multipart upload.
    let weights = a.get(MINILM_WEIGHTS, &[]);
    assert_eq!(weights.status, 200);
    assert_eq!(sha256_hex(&weights.body), big.sha256);
    assert_eq!(
        reads(&a, "miss"),
        2,
        "asked the bucket first: {}",
        a.log_text()
    );
    wait_uploads(&a, "ok", 2);

    // In the bucket, under the content address, whole.
    let rt = runtime();
    let s3 = garage.client();
    for f in [&small, &big] {
        let got = rt.block_on(async {
            let r = s3.get(&object("site", &f.sha256)).await?;
            r.bytes().await
        });
        let got = got.unwrap_or_else(|e| panic!("object of {}: {e}", f.sha256));
        assert_eq!(sha256_hex(&got), f.sha256);
    }

    // A second node, its store empty, sharing the bucket: no body from the Hub or CDN.
    let b = edge(&hub, &garage, "site");
    hub.clear_log();
    let from_bucket = b.get(LFS, &[]);
    from_bucket.assert_whole_lfs_file();
    assert_eq!(from_bucket.body.len(), LFS_SIZE);
    let weights = b.get(MINILM_WEIGHTS, &[]);
    assert_eq!(sha256_hex(&weights.body), big.sha256);
    assert_eq!(hub.body_fetches(), 0, "{:?}", hub.log());
    assert_eq!(reads(&b, "hit"), 2);
    assert_eq!(
        b.metric("hf_edge_object_store_bytes_total", &[("direction", "read")]),
        big.size + small.size
    );
    // Filled from the bucket, so not uploaded back.
    assert_eq!(
        b.metric("hf_edge_object_store_uploads_total", &[("result", "ok")]),
        0
    );
    // Kept locally like any fill: the next request is a local hit.
    assert_eq!(b.get(LFS, &[]).cache(), Some("hit"));
    // The first node, its store wiped while it was down: the bucket again, not the Hub.
    a.stop();
    std::fs::remove_dir_all(a.cache_dir()).expect("wipe the store");
    a.restart();
    hub.clear_log();
    let after_wipe = a.get(LFS, &[]);
    after_wipe.assert_whole_lfs_file();
    assert_eq!(hub.body_fetches(), 0, "{:?}", hub.log());
    assert_eq!(reads(&a, "hit"), 1);

    let status = b.get("/status.json", &[]).json();
    let tier = &status["store"]["object_store"];
    assert_eq!(tier["reads_hit"], 2, "{tier}");
    assert!(
        tier["location"]
            .as_str()
            .unwrap()
            .ends_with("/hf-edge-blobs/site/"),
        "{tier}"
    );
}

#[test]
fn an_object_that_is_not_the_blob_is_discarded_and_the_hub_serves() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let hub = FakeHub::start();
    let small = hub.expected(TINY_DS, "main", "data/train.parquet");
    // The right size, the wrong bytes: only the hash tells.
    let rt = runtime();
    let s3 = garage.client();
    let key = object("corrupt", &small.sha256);
    rt.block_on(s3.put(&key, vec![7u8; LFS_SIZE].into()))
        .expect("plant the object");

    let edge = edge(&hub, &garage, "corrupt");
    let r = edge.get(LFS, &[]);
    r.assert_whole_lfs_file();
    assert_eq!(r.cache(), Some("miss"));
    assert_eq!(reads(&edge, "corrupt"), 1);
    assert_eq!(hub.body_fetches(), 1, "filled from the Hub");
    assert_eq!(
        edge.metric("hf_edge_store_integrity_failures_total", &[]),
        0,
        "the Hub's body was right"
    );
    // The Hub's bytes replace the bad object.
    wait_uploads(&edge, "ok", 1);
    let healed = rt
        .block_on(async { s3.get(&key).await?.bytes().await })
        .expect("the object");
    assert_eq!(sha256_hex(&healed), small.sha256);
}

#[test]
fn with_the_object_store_down_the_hub_serves() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let hub = FakeHub::start();
    let edge = edge(&hub, &garage, "down");
    garage.kill();
    let r = edge.get(LFS, &[]);
    r.assert_whole_lfs_file();
    assert_eq!(reads(&edge, "error"), 1, "{}", edge.log_text());
    assert_eq!(hub.body_fetches(), 1);
    wait_uploads(&edge, "failed", 1);
    // Resting after the error: the next miss does not wait on the object store again.
    let weights = edge.get(MINILM_WEIGHTS, &[]);
    assert_eq!(weights.status, 200);
    assert_eq!(reads(&edge, "skipped"), 1);
}
