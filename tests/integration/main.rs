//! Integration tests: the real `hf-edge` binary in front of the fake Hub, over loopback.
//! Each test starts its own servers (ephemeral ports, one temp dir each). Tests wait for
//! events (a log line, a request in the fake's log, a metric) with a bounded deadline, never
//! for a fixed time window to hold.

// The fixtures: the fake Hub, the edge and its config, a raw HTTP client, the fake's content.
mod fake_hub;
mod fixtures;
mod garage;
mod harness;
mod http;

// The tests, one module per concern.
mod access; // site keys, repo rules, the Hub's answers per identity, token leaks
mod cache_cmd; // `hf-edge cache ...`, on hand-written stores and beside a running serve
mod cli; // config validation, hash-key, exit codes
mod cluster; // peering between three and four nodes: one upstream fetch, a dying owner, a joining node
mod errors; // bad input and upstream failures
mod eviction; // cache.max_size
mod fill_limits; // cache.max_fills, reservations under max_size, the orphan policy
mod fills; // fills under concurrency, disconnects, kills, full disks
mod journals; // refs.jsonl, meta.jsonl and kept API answers: one line per answer, capped
mod limits; // limits.header_timeout (slowloris) and limits.max_connections
mod mounts; // upstreams under path prefixes: routing, tokens, rewritten links, a shared store
mod object_store; // cache.object_store: the shared S3 tier, against a real Garage
mod passthrough; // API routes, pagination links, Xet hints
mod ranges; // one range rule on every body path: over max_size, full disk, miss, hit, fill
mod red_team; // generated hostile requests against every rule at once
mod reload; // SIGHUP and POST /admin/reload: rules, mounts, tokens, the access log
mod resilience; // a slow, failing or absent Hub; offline mode; resumed bodies
mod resolve; // /resolve metadata, bodies, the blob store, ranges
mod security; // hostile clients: credentials, the site token, repo rules, poisoning
mod shutdown; // SIGTERM and shutdown_grace
mod stalled; // a client that stops reading stalls no other client of its fill
mod status; // /readyz through Hub outages, the status page and /status.json
mod store_index; // the persisted store index across restarts, kills and damage
mod tiers; // an hf-edge in front of another: site → region → Hub
mod upgrade; // hf-edge serve --upgrade under load: no failed request, nothing fetched twice
mod warm; // warm jobs, repos kept warm, the warming bandwidth cap, pinned blobs
