//! Peering between hf-edge nodes: each blob has an owner on a Ketama ring (pingora-load-balancing's
//! consistent hashing, keyed by the blob's content address), and a node that misses a blob it does
//! not own asks the owner for it, so the owner alone fetches it upstream. This module knows the
//! ring, the nodes' health and how peer requests are signed; the proxy asks it whom to fetch from
//! ([`Cluster::sources`]) and serves peers (`proxy/peer.rs`).
//!
//! Not a consensus: every node builds the same ring from the same list (or the same DNS answer),
//! and a node that is briefly wrong about the membership only costs an extra upstream fetch.

mod auth;
mod discovery;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use pingora_load_balancing::health_check::TcpHealthCheck;
use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::LoadBalancer;

pub use auth::{PeerAuth, PeerAuthError, Signed, AUTH_HEADER};
pub use discovery::{backend, resolve_all};

use crate::config;
use crate::hub::upstream::{Settings, Upstream};
use crate::hub::BlobId;
use crate::metrics::Metrics;

/// Peers asked for a blob before the Hub: its owner, and the next node on the ring (which owns
/// the blob once the owner is gone).
pub const MAX_PEER_SOURCES: usize = 2;
/// Ring positions looked at for distinct nodes (the iterator skips repeats of a node).
const MAX_RING_STEPS: usize = 256;
/// How long startup waits for the first lookup of the nodes before serving without peers.
const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(3);

/// The path peer requests are served under (after a mount's prefix).
pub const PEER_PATH: &str = "/.hf-edge/peer/blobs/";
/// The blob's size and where its bytes come from, sent with a peer request.
pub const SIZE_HEADER: &str = "x-hf-edge-peer-size";
pub const ORIGIN_HEADER: &str = "x-hf-edge-peer-origin";

/// This node's view of the cluster. Replaced whole when a reload changes `cluster`; the
/// replaced one's refresh thread ends with it.
pub struct Cluster {
    pub settings: config::Cluster,
    ring: LoadBalancer<KetamaHashing>,
    /// What `cluster.self` resolves to: where this node sits on the ring.
    me: RwLock<Vec<SocketAddr>>,
    pub auth: PeerAuth,
    /// The client for peer requests: no egress proxy, no CDN hosts, no token.
    pub client: Upstream,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// Builds the cluster view and starts refreshing it (nodes looked up every
    /// `resolve_interval`, health checked every `health_check.interval`) on a thread of its
    /// own; returns once the first lookup is done, or after [`FIRST_LOOKUP_WAIT`].
    /// `read_timeout`: how long a peer may take to send the next bytes (its upstream's).
    pub fn start(
        settings: config::Cluster,
        read_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Cluster>> {
        let discovery = discovery::PeerDiscovery {
            peers: settings.peers.clone(),
        };
        let mut ring =
            LoadBalancer::from_backends(pingora_load_balancing::Backends::new(Box::new(discovery)));
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(settings.health_check.timeout);
        ring.set_health_check(check);
        let client = Upstream::new(Settings {
            hub: settings.self_url.clone(),
            cdn_hosts: Vec::new(),
            connect_timeout: settings.health_check.timeout,
            read_timeout,
            metadata_timeout: read_timeout,
            offline: false,
            ca_file: None,
            egress: None,
        });
        let cluster = Arc::new(Cluster {
            auth: PeerAuth::new(settings.secret.clone()),
            settings,
            ring,
            me: RwLock::new(Vec::new()),
            client,
            metrics,
        });
        let (first, looked_up) = std::sync::mpsc::channel();
        let weak = Arc::downgrade(&cluster);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || rt.block_on(refresh(weak, first)))?;
        let _ = looked_up.recv_timeout(FIRST_LOOKUP_WAIT);
        Ok(cluster)
    }

    /// The peers to fetch `blob` from, in ring order: the healthy nodes before this one, at most
    /// [`MAX_PEER_SOURCES`]. Empty when this node owns the blob (or does not know where it
    /// sits): it fetches upstream itself.
    pub fn sources(&self, blob: &BlobId) -> Vec<SocketAddr> {
        let me = self.me.read().clone();
        if me.is_empty() {
            return Vec::new();
        }
        let found = RefCell::new(Vec::new());
        self.ring
            .select_with(blob.to_string().as_bytes(), MAX_RING_STEPS, |b, healthy| {
                let Some(addr) = b.addr.as_inet().copied() else {
                    return false;
                };
                if me.contains(&addr) {
                    return true;
                }
                let mut found = found.borrow_mut();
                if healthy {
                    found.push(addr);
                }
                found.len() >= MAX_PEER_SOURCES
            });
        found.into_inner()
    }

    /// The node owning `blob`, healthy or not (for the status of the ring).
    pub fn owner(&self, blob: &BlobId) -> Option<SocketAddr> {
        let b = self
            .ring
            .select_with(blob.to_string().as_bytes(), MAX_RING_STEPS, |_, _| true)?;
        b.addr.as_inet().copied()
    }

    /// The nodes on the ring.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        let backends = self.ring.backends().get_backend();
        backends
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }
}

/// Looks the nodes up and checks their health until the cluster is dropped. Sends on `first`
/// after the first round.
async fn refresh(cluster: Weak<Cluster>, first: std::sync::mpsc::Sender<()>) {
    let mut resolved: Option<Instant> = None;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let s = &c.settings;
        if resolved.is_none_or(|t| t.elapsed() >= s.resolve_interval) {
            resolved = Some(Instant::now());
            match resolve_all(std::slice::from_ref(&s.self_url)).await {
                Ok(me) => *c.me.write() = me.into_iter().collect(),
                Err(e) => log::warn!("cluster.self: {e}"),
            }
            if let Err(e) = c.ring.update().await {
                log::warn!("cluster: looking up the nodes failed: {e}");
            }
            let nodes = c.nodes();
            if !c.me.read().iter().any(|m| nodes.contains(m)) {
                log::warn!(
                    "cluster.self ({}) is not among the nodes cluster.peers names ({nodes:?}): this node fetches every blob after asking its owner",
                    s.self_url
                );
            }
        }
        c.ring.backends().run_health_check(true).await;
        let backends = c.ring.backends();
        let up = backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count();
        c.metrics
            .cluster_nodes(up, backends.get_backend().len() - up);
        let _ = first.send(());
        let interval = s.health_check.interval.min(s.resolve_interval);
        drop(c);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pingora_load_balancing::selection::BackendSelection;

    use super::*;

    fn ring(nodes: u8) -> Arc<KetamaHashing> {
        let backends: BTreeSet<_> = (1..=nodes)
            .map(|n| backend(SocketAddr::from(([10, 0, 0, n], 8080))))
            .collect();
        Arc::new(KetamaHashing::build(&backends))
    }

    fn owner(ring: &Arc<KetamaHashing>, blob: &BlobId) -> SocketAddr {
        use pingora_load_balancing::selection::BackendIter;
        let mut it = ring.iter(blob.to_string().as_bytes());
        *it.next().unwrap().addr.as_inet().unwrap()
    }

    fn blobs(n: u32) -> Vec<BlobId> {
        use sha2::Digest;
        (0..n)
            .map(|i| BlobId::Sha256(sha2::Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    #[test]
    fn a_joining_node_takes_about_a_quarter_of_the_keys_from_the_others_only() {
        let (three, four) = (ring(3), ring(4));
        let new = SocketAddr::from(([10, 0, 0, 4], 8080));
        let keys = blobs(10_000);
        let mut moved = 0;
        let mut per_node = std::collections::HashMap::new();
        for k in &keys {
            let (before, after) = (owner(&three, k), owner(&four, k));
            *per_node.entry(after).or_insert(0) += 1;
            if before != after {
                moved += 1;
                assert_eq!(after, new, "a key moved between two old nodes");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.18..0.32).contains(&share), "{share} of the keys moved");
        // And the load is spread: no node owns more than twice its share.
        for (node, n) in per_node {
            assert!(n < keys.len() / 2, "{node} owns {n}");
        }
    }
}
