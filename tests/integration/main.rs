//! Integration tests: the real `hf-edge` binary in front of the fake Hub, over loopback.
//! Each test starts its own servers (ephemeral ports, one temp dir each).

mod harness;

mod access;
mod cache_cmd;
mod cli;
mod errors;
mod eviction;
mod fill_limits;
mod fills;
mod passthrough;
mod resilience;
mod resolve;
mod stalled;
