//! The real `hf-edge` binary as a test sees it: a typed config written to YAML in a temp dir
//! of its own, the process on ephemeral loopback ports, its metrics and log, the `hf-edge`
//! command line, and bounded waiting for events.
//!
//! ```ignore
//! let edge = Edge::builder(&hub).revision_ttl("1s").token(SITE_TOKEN).start();
//! ```

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::fake_hub::FakeHub;
use crate::http::{request, try_request, Response};

/// The longest a test waits for an event (a log line, a request, a metric, a process exit):
/// far longer than anything takes on a quiet machine, so that a loaded one passes too.
pub const PATIENCE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives a value, at most [`PATIENCE`] long; panics naming `what`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    let max_polls = PATIENCE.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_polls {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    panic!("waited {PATIENCE:?} for {what}");
}

/// Polls `probe` until `done` accepts its value, at most [`PATIENCE`] long, and returns the
/// last value either way: the caller's assertion then shows what was there instead.
pub fn poll_until<T>(mut probe: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + PATIENCE;
    let max_polls = PATIENCE.as_millis() / POLL.as_millis() + 1;
    let mut last = probe();
    for _ in 0..max_polls {
        if done(&last) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
        last = probe();
    }
    last
}

/// Sleeps until `ttl` (and a little more) has passed since `since`: whatever was cached at
/// `since` or before has expired by then. Waiting longer never changes the outcome.
pub fn wait_past(since: Instant, ttl: Duration) {
    let until = since + ttl + Duration::from_millis(100);
    if let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// A free loopback port for a server that binds it itself. Taken from below the kernel's
/// ephemeral range (32768 and up by default), from a per-process counter: a port released by
/// a port-0 bind could be handed straight to another socket, these cannot.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 400) as u16 * 25,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..2_000 {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

// === config ===

/// hf-edge's config file, typed (see conf/hf-edge.yaml); written to YAML as is. Durations
/// and sizes are written as in YAML (`"1s"`, `"4MiB"`).
#[derive(Debug, Clone, Serialize)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub shutdown_grace: String,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub access: AccessConfig,
    pub ops: OpsConfig,
    pub limits: LimitsConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `cluster:` (peering between hf-edge nodes).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    #[serde(rename = "self")]
    pub self_url: String,
    pub peers: Vec<String>,
    pub secret: String,
    pub replicate: bool,
    pub health_check: HealthCheckConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCheckConfig {
    pub interval: String,
    pub timeout: String,
}

/// `mounts[]`: an upstream under a path prefix.
#[derive(Debug, Clone, Serialize)]
pub struct MountConfig {
    pub prefix: String,
    pub upstream: UpstreamConfig,
    pub access: AccessConfig,
}

/// `warm:` (repos kept warm, the warming bandwidth cap).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WarmConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    pub repos: Vec<WarmRepoConfig>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WarmRepoConfig {
    pub repo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub cdn_hosts: Vec<String>,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub metadata_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_hold_down: Option<String>,
    pub offline: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_size: String,
    pub revision_ttl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_snapshots_max_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_snapshots_max_files: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fills: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pinned: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max_object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreConfig>,
}

/// `cache.object_store`: an S3-compatible tier (a Garage the test started).
#[derive(Debug, Clone, Serialize)]
pub struct ObjectStoreConfig {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key_file: PathBuf,
    pub prefix: String,
    pub allow_http: bool,
    pub timeout: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub access: String,
}

/// Bounds on client connections (hf-edge's defaults when unset).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OpsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AccessConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_restricted: Option<String>,
    pub require_key: bool,
    pub keys: Vec<SiteKeyConfig>,
    pub repos: RepoRulesConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteKeyConfig {
    pub name: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoRulesConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl EdgeConfig {
    /// Loopback listeners on free ports, the cache in `dir/cache`, short upstream timeouts,
    /// the fake CDN's host (127.0.0.2) as the only CDN host, and no shutdown grace.
    fn for_tests(endpoint: &str, dir: &Path) -> EdgeConfig {
        EdgeConfig {
            listen: ([127, 0, 0, 1], free_port()).into(),
            threads: 2,
            shutdown_grace: "0s".into(),
            upstream: UpstreamConfig {
                endpoint: endpoint.into(),
                token: None,
                cdn_hosts: vec!["127.0.0.2".into()],
                connect_timeout: "2s".into(),
                read_timeout: "3s".into(),
                metadata_timeout: "3s".into(),
                failure_hold_down: None,
                offline: false,
            },
            cache: CacheConfig {
                dir: dir.join("cache"),
                max_size: "10GiB".into(),
                revision_ttl: "60s".into(),
                meta_max_entries: None,
                api_snapshots_max_size: None,
                api_snapshots_max_files: None,
                max_fills: None,
                pin: Vec::new(),
                max_pinned: None,
                memory_size: None,
                memory_max_object: None,
                object_store: None,
            },
            metrics: MetricsConfig {
                listen: ([127, 0, 0, 1], free_port()).into(),
            },
            log: LogConfig {
                access: "stderr".into(),
            },
            access: AccessConfig::default(),
            ops: OpsConfig::default(),
            limits: LimitsConfig::default(),
            mounts: Vec::new(),
            warm: None,
            cluster: None,
        }
    }

    /// A mount of `hub` at `prefix`: the top-level upstream's settings with `hub`'s endpoint
    /// and `token` as its `upstream.token`.
    pub fn add_mount(&mut self, prefix: &str, hub: &FakeHub, token: Option<&str>) {
        let mut upstream = self.upstream.clone();
        upstream.endpoint = hub.url.clone();
        upstream.token = token.map(Into::into);
        self.mounts.push(MountConfig {
            prefix: prefix.into(),
            upstream,
            access: AccessConfig::default(),
        })
    }

    fn write(&self, path: &Path) {
        let yaml = serde_yaml::to_string(self).expect("config YAML");
        std::fs::write(path, yaml).expect("write config");
    }
}

/// The sha256 of a site key, as `access.keys[].sha256` stores it.
pub fn key_hash(key: &str) -> String {
    crate::http::sha256_hex(key.as_bytes())
}

// === builder ===

/// An hf-edge to start: [`EdgeConfig::for_tests`] with the changes a test asks for.
pub struct EdgeBuilder {
    dir: tempfile::TempDir,
    config: EdgeConfig,
    env: Vec<(String, String)>,
}

impl EdgeBuilder {
    /// The edge's own temp dir (its cache will be `dir/cache`; prepare it before `start`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Any change the named setters do not cover.
    pub fn configure(mut self, change: impl FnOnce(&mut EdgeConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// An environment variable of the process (and of those an upgrade starts).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn revision_ttl(self, ttl: &str) -> Self {
        self.configure(|c| c.cache.revision_ttl = ttl.into())
    }

    pub fn max_size(self, size: &str) -> Self {
        self.configure(|c| c.cache.max_size = size.into())
    }

    /// `cache.meta_max_entries`: the answers `meta.jsonl` keeps.
    pub fn meta_max_entries(self, entries: usize) -> Self {
        self.configure(|c| c.cache.meta_max_entries = Some(entries))
    }

    /// `cache.api_snapshots_max_files`: the API answers kept in `cache/api`.
    pub fn api_snapshots_max_files(self, files: usize) -> Self {
        self.configure(|c| c.cache.api_snapshots_max_files = Some(files))
    }

    /// `cache.max_fills`: fills running at once (beyond, requests are served uncached).
    pub fn max_fills(self, fills: usize) -> Self {
        self.configure(|c| c.cache.max_fills = Some(fills))
    }

    /// `limits.header_timeout`: the time a client has to send a request header.
    pub fn header_timeout(self, timeout: &str) -> Self {
        self.configure(|c| c.limits.header_timeout = Some(timeout.into()))
    }

    /// `limits.max_connections`: client connections open at once.
    pub fn max_connections(self, connections: usize) -> Self {
        self.configure(|c| c.limits.max_connections = Some(connections))
    }

    pub fn shutdown_grace(self, grace: &str) -> Self {
        self.configure(|c| c.shutdown_grace = grace.into())
    }

    /// `upstream.token`: the identity of clients that bring none.
    pub fn token(self, token: &str) -> Self {
        self.configure(|c| c.upstream.token = Some(token.into()))
    }

    /// `upstream.read_timeout`: longer for tests that hold an upstream body.
    pub fn read_timeout(self, timeout: &str) -> Self {
        self.configure(|c| c.upstream.read_timeout = timeout.into())
    }

    pub fn failure_hold_down(self, hold_down: &str) -> Self {
        self.configure(|c| c.upstream.failure_hold_down = Some(hold_down.into()))
    }

    /// `ops.admin_token`: the bearer token `/admin/*` needs.
    pub fn admin_token(self, token: &str) -> Self {
        self.configure(|c| c.ops.admin_token = Some(token.into()))
    }

    pub fn auth_ttl(self, ttl: &str) -> Self {
        self.configure(|c| c.access.auth_ttl = Some(ttl.into()))
    }

    /// `access.offline_restricted: allow`.
    pub fn offline_restricted_allow(self) -> Self {
        self.configure(|c| c.access.offline_restricted = Some("allow".into()))
    }

    pub fn require_key(self) -> Self {
        self.configure(|c| c.access.require_key = true)
    }

    /// A site key (stored as its sha256) for `upstream_token`, or for anonymous.
    pub fn site_key(self, name: &str, key: &str, upstream_token: Option<&str>) -> Self {
        self.configure(|c| {
            c.access.keys.push(SiteKeyConfig {
                name: name.into(),
                sha256: key_hash(key),
                upstream_token: upstream_token.map(Into::into),
            })
        })
    }

    /// A mount of `hub` at `prefix`, with the test upstream settings and `token` as its
    /// `upstream.token`.
    pub fn mount(self, prefix: &str, hub: &FakeHub, token: Option<&str>) -> Self {
        self.configure(|c| c.add_mount(prefix, hub, token))
    }

    pub fn allow_repos(self, globs: &[&str]) -> Self {
        self.configure(|c| c.access.repos.allow = globs.iter().map(|g| g.to_string()).collect())
    }

    pub fn deny_repos(self, globs: &[&str]) -> Self {
        self.configure(|c| c.access.repos.deny = globs.iter().map(|g| g.to_string()).collect())
    }

    /// Writes the config (`dir/hf-edge.yaml`) without starting anything, for the `hf-edge`
    /// commands that only read it.
    pub fn write_config(self) -> (tempfile::TempDir, PathBuf) {
        let path = self.dir.path().join("hf-edge.yaml");
        self.config.write(&path);
        (self.dir, path)
    }

    /// Writes the config and starts hf-edge; returns once both listeners answer.
    pub fn start(self) -> Edge {
        let config_path = self.dir.path().join("hf-edge.yaml");
        self.config.write(&config_path);
        let child = spawn_edge(&config_path, self.dir.path(), &[], &self.env);
        let mut edge = Edge {
            child,
            retired: Vec::new(),
            env: self.env,
            addr: self.config.listen,
            metrics: self.config.metrics.listen,
            dir: self.dir,
            config_path,
            config: self.config,
        };
        edge.wait_ready();
        edge
    }
}

// === the process ===

pub struct Edge {
    child: Child,
    /// Processes an upgrade replaced, draining; killed with the edge.
    retired: Vec<Child>,
    env: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
    config_path: PathBuf,
    config: EdgeConfig,
}

impl Edge {
    /// An hf-edge in front of `hub`, to configure.
    pub fn builder(hub: &FakeHub) -> EdgeBuilder {
        Edge::builder_at(&hub.url)
    }

    /// An hf-edge in front of `endpoint`, to configure.
    pub fn builder_at(endpoint: &str) -> EdgeBuilder {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = EdgeConfig::for_tests(endpoint, dir.path());
        EdgeBuilder {
            dir,
            config,
            env: Vec::new(),
        }
    }

    /// An hf-edge in front of `hub` with the test defaults.
    pub fn start(hub: &FakeHub) -> Edge {
        Edge::builder(hub).start()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.config.cache.dir.clone()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("hf-edge exited at startup ({status}):\n{}", self.log_text());
            }
            if TcpStream::connect(self.addr).is_ok()
                && try_request(self.metrics, "GET", "/healthz", &[], b"")
                    .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "hf-edge did not become ready; see {}",
            self.log_path().display()
        );
    }

    /// Stops the process (SIGKILL), and any an upgrade replaced.
    pub fn stop(&mut self) {
        for child in self.retired.iter_mut().chain([&mut self.child]) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.retired.clear();
    }

    /// A graceful upgrade: starts `hf-edge serve --upgrade` on the same config, waits until
    /// it asks for the sockets, sends the running process SIGQUIT, and returns once the new
    /// one has them. The old process drains (for `shutdown_grace`) and is killed with the edge.
    pub fn upgrade(&mut self) {
        let log = self.log_path();
        let count = |needle: &str| {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        };
        let bootstrapped = count("Bootstrap done");
        let waiting = count("upgrade: waiting");
        let new = spawn_edge(
            &self.config_path,
            self.dir.path(),
            &["--upgrade"],
            &self.env,
        );
        wait_for("the new process to wait for the sockets", || {
            (count("upgrade: waiting") > waiting).then_some(())
        });
        let old = std::mem::replace(&mut self.child, new);
        self.retired.push(old);
        let pid = libc::pid_t::try_from(self.retired.last().unwrap().id()).expect("pid");
        // SAFETY: kill(2) with a pid this test started and has not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGQUIT) }, 0, "kill -QUIT");
        wait_for("the new process to take the sockets", || {
            (count("Bootstrap done") > bootstrapped).then_some(())
        });
    }

    /// Stops the process (SIGKILL) and starts it again on the same config and cache.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// Stops the process (SIGKILL), changes its config, and starts it again on the same
    /// cache and ports.
    pub fn restart_with(&mut self, change: impl FnOnce(&mut EdgeConfig)) {
        self.stop();
        change(&mut self.config);
        self.config.write(&self.config_path);
        self.child = spawn_edge(&self.config_path, self.dir.path(), &[], &self.env);
        self.wait_ready();
    }

    /// The process id serving now.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid this test started and has not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill -{signal} {pid}");
    }

    /// Changes the config file in place, without telling the process (see `reload`).
    pub fn rewrite_config(&mut self, change: impl FnOnce(&mut EdgeConfig)) {
        change(&mut self.config);
        self.config.write(&self.config_path);
    }

    /// Writes `yaml` as the config file, as is (an invalid config, say).
    pub fn write_raw_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).expect("write config");
    }

    /// `hf_edge_config_reloads_total{result}`.
    pub fn reloads(&self, result: &str) -> u64 {
        self.metric("hf_edge_config_reloads_total", &[("result", result)])
    }

    /// Waits (at most `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    // === logs and metrics ===

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hf-edge.log")
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for a line of the process's log containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for(&format!("a log line with {needle:?}"), || {
            self.log_text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        })
    }

    /// The JSON access lines logged so far.
    pub fn access_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn scrape(&self) -> String {
        let r = request(self.metrics, "GET", "/metrics", &[]);
        assert_eq!(r.status, 200, "/metrics");
        r.text()
    }

    /// The value of the series `name{labels}` (exactly these labels) in a `/metrics` scrape;
    /// `None` when the scrape has no such series.
    pub fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value_in(&self.scrape(), name, labels)
    }

    /// A counter or gauge that must be in the scrape, as an integer.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self
            .metric_value(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} is not in the scrape"));
        assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v}");
        v as u64
    }

    /// `hf_edge_revision_lookups_total{result="stale_served"}`.
    pub fn stale_served(&self) -> u64 {
        self.metric(
            "hf_edge_revision_lookups_total",
            &[("result", "stale_served")],
        )
    }

    // === requests ===

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers)
    }

    pub fn head(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "HEAD", path, headers)
    }

    /// A request to the admin API (`metrics.listen`) with this edge's `ops.admin_token`.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        let token = self
            .config
            .ops
            .admin_token
            .as_deref()
            .expect("an admin token");
        let auth = format!("Bearer {token}");
        crate::http::request_with_body(
            self.metrics,
            method,
            path,
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
    }

    /// `hf-edge warm ARGS --config <this edge's config>` (not a terminal: JSON lines).
    pub fn warm_command(&self, args: &[&str]) -> CliOutput {
        let mut all: Vec<&OsStr> = vec![OsStr::new("warm")];
        all.extend(args.iter().map(OsStr::new));
        all.extend([OsStr::new("--config"), self.config_path.as_os_str()]);
        hf_edge(&all)
    }

    /// `hf-edge cache ARGS --config <this edge's config>`.
    pub fn cache_command(&self, args: &[&str]) -> CliOutput {
        let mut all: Vec<&OsStr> = vec![OsStr::new("cache")];
        all.extend(args.iter().map(OsStr::new));
        all.extend([OsStr::new("--config"), self.config_path.as_os_str()]);
        hf_edge(&all)
    }
}

fn spawn_edge(config: &Path, dir: &Path, extra: &[&str], env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hf-edge.log"))
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_hf-edge"))
        .args(["serve", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("HF_TOKEN")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("start hf-edge")
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
    }
}

// === a small disk ===

/// A tmpfs of `size` mounted at a path for one test (a cache that fills up), unmounted when
/// dropped. Mount it at [`EdgeBuilder::dir`]`/cache` before `start`; stop the edge, then drop
/// it, before the edge's temp dir goes.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("the mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a small tmpfs needs root (CI runs as root)");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// === the command line ===

pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `hf-edge ARGS` to completion (no `HF_TOKEN` from the environment).
pub fn hf_edge<S: AsRef<OsStr>>(args: &[S]) -> CliOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_hf-edge"))
        .args(args)
        .env_remove("HF_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run hf-edge");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// === Prometheus text ===

/// The value of the series `name{labels}` in Prometheus text: the name exactly (not a
/// prefix of a longer one) and exactly these labels, in any order. `None` if absent; a series
/// given twice is a malformed scrape.
pub fn metric_value_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut sample =
            parse_sample(line).unwrap_or_else(|| panic!("not a Prometheus sample line: {line:?}"));
        sample.labels.sort();
        if sample.name != name || sample.labels != want {
            continue;
        }
        assert!(found.is_none(), "{name}{labels:?} appears twice:\n{text}");
        found = Some(sample.value);
    }
    found
}

/// One line of Prometheus text: `name{k="v",...} value [timestamp]`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The metric parser itself: a check on these is only as good as the parser.
mod tests {
    use super::metric_value_in;

    const SCRAPE: &str = "# HELP hf_x_total X.\n# TYPE hf_x_total counter\nhf_x_total 10\nhf_x_total_bytes 1\nhf_y_total{result=\"fresh\"} 3\nhf_y_total{result=\"stale_served\"} 1\nhf_z{a=\"1\",b=\"q\\\"},\"} 2.5\n";

    #[test]
    fn a_metric_is_found_by_its_exact_name_and_value() {
        assert_eq!(metric_value_in(SCRAPE, "hf_x_total", &[]), Some(10.0));
        assert_eq!(metric_value_in(SCRAPE, "hf_x", &[]), None, "not a prefix");
        assert_eq!(metric_value_in(SCRAPE, "hf_x_total_bytes", &[]), Some(1.0));
    }

    #[test]
    fn a_labelled_series_needs_exactly_its_labels() {
        let stale = [("result", "stale_served")];
        assert_eq!(metric_value_in(SCRAPE, "hf_y_total", &stale), Some(1.0));
        assert_eq!(metric_value_in(SCRAPE, "hf_y_total", &[]), None);
        assert_eq!(
            metric_value_in(SCRAPE, "hf_y_total", &[("result", "refreshed")]),
            None,
            "an absent series is absent, not 0"
        );
        let both = [("b", "q\"},"), ("a", "1")];
        assert_eq!(metric_value_in(SCRAPE, "hf_z", &both), Some(2.5));
        assert_eq!(metric_value_in(SCRAPE, "hf_z", &both[1..]), None);
    }
}
