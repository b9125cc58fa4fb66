//! `cache.object_store` against a real Garage: blobs filled from the Hub land in the bucket
//! under their content address; a node with an empty store fills from the bucket without a
//! body request to the Hub or CDN, its readers streaming the object as it arrives; a body
//! cut mid-way is continued from the Hub; an object that hashes wrong cuts its reader and is
//! then skipped and replaced; a Garage that is down costs the client nothing: the Hub serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::object_store::ObjectStore as _;

use crate::fake_hub::FakeHub;
use crate::fixtures::{LFS, LFS_SIZE, MINILM_WEIGHTS, TINY_DS};
use crate::garage::Garage;
use crate::harness::{poll_until, Edge};
use crate::http::{sha256_hex, Download};

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
fn an_object_that_hashes_wrong_cuts_its_reader_then_the_hub_serves_and_replaces_it() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let hub = FakeHub::start();
    let small = hub.expected(TINY_DS, "main", "data/train.parquet");
    // The right size, the wrong bytes: only the hash tells, once the reader was sent them.
    let rt = runtime();
    let s3 = garage.client();
    let key = object("corrupt", &small.sha256);
    rt.block_on(s3.put(&key, vec![7u8; LFS_SIZE].into()))
        .expect("plant the object");

    let edge = edge(&hub, &garage, "corrupt");
    let cut = edge.get(LFS, &[]);
    assert_eq!(cut.status, 200);
    assert!(
        cut.truncated && cut.body.len() < LFS_SIZE,
        "a wrong object must never be served whole: {} bytes",
        cut.body.len()
    );
    assert_eq!(reads(&edge, "corrupt"), 1);
    assert_eq!(
        edge.metric("hf_edge_store_integrity_failures_total", &[]),
        1
    );
    assert_eq!(hub.body_fetches(), 0, "{:?}", hub.log());

    // The next miss skips the distrusted object: the Hub serves, and its bytes replace it.
    let r = edge.get(LFS, &[]);
    r.assert_whole_lfs_file();
    assert_eq!(r.cache(), Some("miss"));
    assert_eq!(hub.body_fetches(), 1, "filled from the Hub");
    assert_eq!(reads(&edge, "skipped"), 1);
    wait_uploads(&edge, "ok", 1);
    let healed = rt
        .block_on(async { s3.get(&key).await?.bytes().await })
        .expect("the object");
    assert_eq!(sha256_hex(&healed), small.sha256);
}

/// A loopback relay in front of Garage that passes the first `budget` bytes of what Garage
/// sends, then holds the connection until [`Relay::cut`] closes it; connections opened after
/// the cut pass freely.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

/// Bound on anything the relay waits for.
const RELAY_DEADLINE: Duration = Duration::from_secs(120);

impl Relay {
    fn start(upstream: &str, budget: usize) -> Relay {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("Garage's address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("relay address");
        let (cut, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let left = Arc::new(AtomicUsize::new(budget));
        let (c, d) = (cut.clone(), done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + RELAY_DEADLINE;
            while !d.load(Ordering::SeqCst) && Instant::now() < deadline {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).expect("blocking");
                let server = TcpStream::connect(upstream).expect("connect to Garage");
                let limited = !c.load(Ordering::SeqCst);
                let (to_server, from_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &from_client, &mut &to_server);
                });
                let (c, left) = (c.clone(), left.clone());
                std::thread::spawn(move || relay_back(server, client, limited.then_some(left), &c));
            }
        });
        Relay { addr, cut, done }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Copies Garage's answer to the client; with a budget, up to it, then holds until `cut`.
fn relay_back(
    mut server: TcpStream,
    mut client: TcpStream,
    budget: Option<Arc<AtomicUsize>>,
    cut: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 << 10];
    let deadline = Instant::now() + RELAY_DEADLINE;
    while Instant::now() < deadline {
        let Ok(n) = server.read(&mut buf) else { break };
        if n == 0 {
            break;
        }
        let pass = match &budget {
            None => n,
            Some(left) => {
                let allowed = left.load(Ordering::SeqCst).min(n);
                left.fetch_sub(allowed, Ordering::SeqCst);
                allowed
            }
        };
        if client.write_all(&buf[..pass]).is_err() {
            break;
        }
        if pass < n {
            while !cut.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_reader_streams_the_object_as_it_arrives_and_the_hub_continues_a_cut_body() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let hub = FakeHub::start();
    let minilm = MINILM_WEIGHTS.trim_start_matches('/');
    let (repo, path) = minilm.split_once("/resolve/main/").unwrap();
    let big = hub.expected(repo, "main", path);
    // The object, put there by a first node that filled it from the Hub.
    let first = edge(&hub, &garage, "stream");
    assert_eq!(first.get(MINILM_WEIGHTS, &[]).status, 200);
    wait_uploads(&first, "ok", 1);

    // Garage's answer passes up to 4 MiB, then is held: the object is far from complete.
    let relay = Relay::start(&garage.endpoint, 4 << 20);
    let edge = Edge::builder(&hub)
        .read_timeout("30s")
        .configure(|c| {
            let mut tier = garage.config("stream");
            tier.endpoint = relay.endpoint();
            // Longer than the test waits for the first bytes: the hold is no stall to it.
            tier.timeout = "60s".into();
            c.cache.object_store = Some(tier);
        })
        .start();
    hub.clear_log();
    let mut download = Download::start(edge.addr, MINILM_WEIGHTS, &[]);
    download.read_body_bytes(1 << 20);
    assert_eq!(hub.body_fetches(), 0, "{:?}", hub.log());

    // Cut mid-way: the same fill goes on from the Hub at the first byte it lacks.
    relay.cut();
    let r = download.finish();
    assert_eq!(r.status, 200);
    assert!(!r.truncated, "{}", edge.log_text());
    assert_eq!(sha256_hex(&r.body), big.sha256);
    let fetches: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.is_body_fetch())
        .collect();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    let from: u64 = fetches[0]
        .header("range")
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("a range from the first missing byte: {fetches:?}"));
    assert!(from >= 1 << 20 && from < big.size, "resumed at {from}");
    assert_eq!(reads(&edge, "error"), 1);
    assert_eq!(reads(&edge, "hit"), 0);
    // Committed whole: a local hit now.
    let again = edge.get(MINILM_WEIGHTS, &[]);
    assert_eq!(again.cache(), Some("hit"));
    assert_eq!(sha256_hex(&again.body), big.sha256);
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
