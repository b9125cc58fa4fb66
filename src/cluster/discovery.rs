//! Who the nodes are: every `cluster.peers` entry looked up (an address, or a name resolving to
//! several, such as a headless Kubernetes Service), for pingora-load-balancing's ring.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::ErrorType;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;

use crate::hub::url::Origin;

/// Every address `origins` resolve to, sorted, without duplicates.
pub async fn resolve_all(origins: &[Origin]) -> Result<BTreeSet<SocketAddr>, String> {
    let mut found = BTreeSet::new();
    let mut failures = Vec::new();
    for o in origins {
        match tokio::net::lookup_host((o.host.as_str(), o.port)).await {
            Ok(addrs) => found.extend(addrs),
            Err(e) => failures.push(format!("{}: {e}", o.host_port())),
        }
    }
    // A name that does not resolve for now (a node not yet scheduled) leaves the others.
    if found.is_empty() && !failures.is_empty() {
        return Err(failures.join("; "));
    }
    for f in failures {
        log::warn!("cluster.peers: {f}");
    }
    Ok(found)
}

/// `cluster.peers` as pingora-load-balancing's discovery.
pub struct PeerDiscovery {
    pub peers: Vec<Origin>,
}

#[async_trait]
impl ServiceDiscovery for PeerDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let addrs = resolve_all(&self.peers).await.map_err(|e| {
            pingora::Error::explain(ErrorType::ConnectNoRoute, format!("cluster.peers: {e}"))
        })?;
        let backends = addrs.into_iter().map(backend).collect();
        Ok((backends, HashMap::new()))
    }
}

/// A node on the ring: its address, weight 1 (nodes are sized alike).
pub fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}
