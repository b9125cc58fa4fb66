//! hf-edge: an edge cache for the Hugging Face Hub, on Pingora.
//!
//! A request flows through these modules, one way:
//!
//! - [`hub::grammar`] turns the raw path into a [`hub::grammar::Route`];
//! - [`resolver`] asks the Hub (or its caches) what a `/resolve` URL names: commit, blob id,
//!   size, download URL;
//! - [`store`] is the pingora-cache storage holding blobs by content address;
//! - [`proxy`] is the `ProxyHttp` implementation tying them together, phase by phase;
//! - [`config`] and [`server`] build it all from one YAML file; [`gateway`] holds what a live
//!   reload swaps (mounts, rules, tokens, the access log); [`metrics`] reports on it.

pub mod access;
pub mod access_log;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod durable;
pub mod gateway;
pub mod health;
pub mod hub;
pub mod jsonl;
pub mod metrics;
pub mod ops;
pub mod probe;
pub mod proxy;
pub mod resolver;
pub mod server;
pub mod snapshots;
pub mod status;
pub mod store;
pub mod tls;
pub mod warm;

/// Sent upstream on hf-edge's own requests.
pub const USER_AGENT: &str = concat!("hf-edge/", env!("CARGO_PKG_VERSION"));
