//! The YAML configuration: parsed (`RawConfig`, every struct denies unknown keys because the
//! config ships with the binary and a typo must not silently fall back to a default; every key
//! has a default, so a file holds only what differs; `${VAR}` and `${VAR:-default}` are
//! expanded in values), then validated into [`Config`], with the key path in every error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::Deserialize;

use crate::access::{OfflineRestricted, Policy, RepoGlob, SiteKey};
use crate::client::{Cidr, TrustedProxies};
use crate::hub::egress::EgressProxy;
use crate::hub::upstream::{CaBundle, HostPattern};
use crate::hub::url::Origin;
use crate::tls::Certificates;

/// The embedded default, also what `hf-edge serve` runs with no `--config`.
pub const DEFAULT_YAML: &str = include_str!("../conf/hf-edge.yaml");

/// A config error: the dotted key path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// A secret (an upstream token): never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Pingora worker threads for the proxy service.
    pub threads: usize,
    /// After SIGTERM: listeners close at once, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    pub upstream: Upstream,
    pub cache: Cache,
    pub metrics: Metrics,
    /// Access log: `stderr`, `off`, or a file path.
    pub access_log: String,
    pub access: Policy,
    /// The base URL clients reach hf-edge at, for the `Link` and `Location` headers it
    /// rewrites; unset: each request's own `Host`.
    pub public_url: Option<Origin>,
    pub ops: Ops,
    pub limits: Limits,
    /// Upstreams under path prefixes besides the top-level `upstream` and `access` (the
    /// mount at `/`); no two overlap.
    pub mounts: Vec<Mount>,
    pub warm: Warm,
    /// `tls`: a second client listener, speaking TLS.
    pub tls: Option<Tls>,
    /// Peers whose PROXY protocol header and `X-Forwarded-*` headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// `cluster`: the hf-edge nodes sharing blobs by consistent hashing; `None`: this node
    /// alone.
    pub cluster: Option<Cluster>,
}

/// `cluster`: this node's place among hf-edge nodes that fetch each blob upstream once.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// This node's URL as its peers reach it (an `http://` origin).
    pub self_url: Origin,
    /// The nodes, this one included: origins, or names resolving to every node (a headless
    /// Kubernetes Service), looked up again every `resolve_interval`.
    pub peers: Vec<Origin>,
    /// Signs and checks peer requests (HMAC-SHA256); never sent.
    pub secret: Secret,
    /// Keep a verified copy of blobs fetched from their owner (`false`: stream them through).
    pub replicate: bool,
    pub health_check: HealthCheck,
    pub resolve_interval: Duration,
}

/// `cluster.health_check`: a TCP connect to every node.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The TLS client listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// An upstream under a path prefix (`mounts[]`): `HF_ENDPOINT=http://edge/{prefix}` reaches it.
#[derive(Debug, Clone)]
pub struct Mount {
    /// `/` for the top-level upstream; else `/name` or `/name/more`, no trailing slash.
    pub prefix: String,
    pub upstream: Upstream,
    pub access: Policy,
}

impl Mount {
    /// The mount's own directory name under `cache.dir/mounts` (its metadata journal and API
    /// snapshots); `None` for `/`, which keeps them in `cache.dir` as before mounts existed.
    /// Unique: segments hold no `+`.
    pub fn dir_name(&self) -> Option<String> {
        (self.prefix != "/").then(|| self.prefix[1..].replace('/', "+"))
    }
}

impl Config {
    /// Why `next` cannot replace this config in a running process: the first setting bound at
    /// startup (listeners, threads, the store, connection limits, warming) that differs, named
    /// by key.
    pub fn unreloadable(&self, next: &Config) -> Option<&'static str> {
        [
            ("listen", self.listen == next.listen),
            ("metrics.listen", self.metrics == next.metrics),
            ("threads", self.threads == next.threads),
            ("shutdown_grace", self.shutdown_grace == next.shutdown_grace),
            ("cache", self.cache == next.cache),
            ("limits", self.limits == next.limits),
            // The TLS listener's address and files (the files are read again on reload).
            ("tls", self.tls == next.tls),
            (
                "trusted_proxies",
                self.trusted_proxies == next.trusted_proxies,
            ),
            // Warm jobs are scheduled at startup.
            ("warm", self.warm == next.warm),
        ]
        .into_iter()
        .find_map(|(key, same)| (!same).then_some(key))
    }

    /// Every mount, the top-level one (`/`) first.
    pub fn all_mounts(&self) -> Vec<Mount> {
        let root = Mount {
            prefix: "/".into(),
            upstream: self.upstream.clone(),
            access: self.access.clone(),
        };
        std::iter::once(root)
            .chain(self.mounts.iter().cloned())
            .collect()
    }
}

/// Bounds on client connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Time from a connection's start, or a later request's first byte, to the end of the
    /// request header; past it, `408` and the connection closes.
    pub header_timeout: Duration,
    /// Client connections open at most; one more is answered `503` and closed.
    pub max_connections: usize,
}

/// The operator endpoints' own settings.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    /// Bearer token `/admin/*` requires; with none, admin endpoints are refused.
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: Origin,
    /// The site's token, sent for clients that bring none of their own.
    pub token: Option<Secret>,
    /// Hosts whose absolute redirects are followed (without `Authorization`).
    pub cdn_hosts: Vec<HostPattern>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Time allowed for a metadata answer from the Hub: shorter than clients' own (10 s), so
    /// that when the Hub is slow they get what was known before instead of a timeout.
    pub metadata_timeout: Duration,
    /// After the Hub failed to answer, how long requests with an earlier answer get it
    /// without asking (`0s`: ask every time).
    pub failure_hold_down: Duration,
    /// Never contact the Hub; serve what is cached (toggled at runtime on the ops listener).
    pub offline: bool,
    /// Certificate authorities trusted for upstream TLS besides the system's.
    pub ca_file: Option<CaBundle>,
    /// The site's HTTP proxy for upstream connections.
    pub egress: Option<EgressProxy>,
}

impl Upstream {
    /// What the protocol layer needs of this section (it knows nothing of the file).
    pub fn settings(&self) -> crate::hub::upstream::Settings {
        crate::hub::upstream::Settings {
            hub: self.endpoint.clone(),
            cdn_hosts: self.cdn_hosts.clone(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            metadata_timeout: self.metadata_timeout,
            offline: self.offline,
            ca_file: self.ca_file.clone(),
            egress: self.egress.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    pub dir: PathBuf,
    pub max_size: u64,
    /// How long a branch or tag → commit answer is trusted.
    pub revision_ttl: Duration,
    /// Store files readable by the group too (0640/0750 instead of 0600/0700).
    pub group_access: bool,
    /// Answers `meta.jsonl` keeps at most (the newest); the file holds at most about twice
    /// as many lines before it is compacted.
    pub meta_max_entries: usize,
    /// Bytes and files of kept API answers (`cache.dir/api`) at most, least recently written
    /// removed first.
    pub api_snapshots_max_size: u64,
    pub api_snapshots_max_files: usize,
    /// Fills (blobs being fetched into the store) at once; beyond, requests are served
    /// uncached.
    pub max_fills: usize,
    /// `cache.memory_size` and `cache.memory_max_object`: the memory tier of small blobs.
    pub memory: crate::store::MemoryLimits,
    /// `cache.pin` and `cache.max_pinned`: blobs of these repos are never evicted.
    pub pin: crate::store::PinPolicy,
    /// `cache.object_store`: a shared S3-compatible tier below the local store.
    pub object_store: Option<crate::store::ObjectStoreSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub listen: SocketAddr,
}

// === raw (as written) ===
//
// Every section is `#[serde(default)]` from its `Default`, so a file names only what it
// changes; the defaults are conf/hf-edge.yaml's (a test holds the two equal). Every value is
// a `Scalar`: `${VAR}` references are expanded and the text parsed inside the deserializer,
// so that an error there carries the key path and the line.

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    listen: Scalar<String>,
    threads: Option<Scalar<usize>>,
    shutdown_grace: Scalar<Dur>,
    upstream: RawUpstream,
    cache: RawCache,
    metrics: RawMetrics,
    log: RawLog,
    access: RawAccess,
    public_url: Option<Scalar<String>>,
    ops: RawOps,
    limits: RawLimits,
    mounts: Vec<RawMount>,
    warm: RawWarm,
    tls: Option<RawTls>,
    trusted_proxies: Vec<Scalar<String>>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(rename = "self")]
    self_url: Scalar<String>,
    peers: Vec<Scalar<String>>,
    secret: Option<Scalar<String>>,
    secret_file: Option<Scalar<PathBuf>>,
    #[serde(default = "default_replicate")]
    replicate: Scalar<bool>,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default = "default_resolve_interval")]
    resolve_interval: Scalar<Dur>,
}

fn default_replicate() -> Scalar<bool> {
    Scalar(true)
}

fn default_resolve_interval() -> Scalar<Dur> {
    Scalar(Dur::secs(30))
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHealthCheck {
    interval: Scalar<Dur>,
    timeout: Scalar<Dur>,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            interval: Scalar(Dur::secs(5)),
            timeout: Scalar(Dur::secs(1)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default = "default_tls_listen")]
    listen: Scalar<String>,
    cert_file: Scalar<PathBuf>,
    key_file: Scalar<PathBuf>,
}

fn default_tls_listen() -> Scalar<String> {
    text("0.0.0.0:8443")
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: text("127.0.0.1:8080"),
            threads: None,
            shutdown_grace: Scalar(Dur::secs(10)),
            upstream: RawUpstream::default(),
            cache: RawCache::default(),
            metrics: RawMetrics::default(),
            log: RawLog::default(),
            access: RawAccess::default(),
            public_url: None,
            ops: RawOps::default(),
            limits: RawLimits::default(),
            mounts: Vec::new(),
            warm: RawWarm::default(),
            tls: None,
            trusted_proxies: Vec::new(),
            cluster: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    prefix: Scalar<String>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    access: RawAccess,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    header_timeout: Scalar<Dur>,
    max_connections: Scalar<usize>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            header_timeout: Scalar(Dur::secs(10)),
            max_connections: Scalar(10_000),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawOps {
    admin_token: Option<Scalar<String>>,
    admin_token_file: Option<Scalar<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAccess {
    require_key: Scalar<bool>,
    keys: Vec<RawKey>,
    auth_ttl: Scalar<Dur>,
    offline_restricted: Scalar<String>,
    repos: RawRepos,
}

impl Default for RawAccess {
    fn default() -> Self {
        RawAccess {
            require_key: Scalar(false),
            keys: Vec::new(),
            auth_ttl: Scalar(Dur(Policy::default().auth_ttl)),
            offline_restricted: text("deny"),
            repos: RawRepos::default(),
        }
    }
}

/// A site key: only its name and hash are required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Scalar<String>,
    sha256: Scalar<String>,
    #[serde(default)]
    upstream_token: Option<Scalar<String>>,
    #[serde(default)]
    upstream_token_file: Option<Scalar<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawRepos {
    allow: Vec<Scalar<String>>,
    deny: Vec<Scalar<String>>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    access: Scalar<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            access: text("stderr"),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpstream {
    endpoint: Scalar<String>,
    token: Option<Scalar<String>>,
    token_file: Option<Scalar<PathBuf>>,
    cdn_hosts: Vec<Scalar<String>>,
    connect_timeout: Scalar<Dur>,
    read_timeout: Scalar<Dur>,
    metadata_timeout: Scalar<Dur>,
    failure_hold_down: Scalar<Dur>,
    offline: Scalar<bool>,
    ca_file: Option<Scalar<PathBuf>>,
    proxy: Option<Scalar<String>>,
    no_proxy: Vec<Scalar<String>>,
    proxy_credentials_file: Option<Scalar<PathBuf>>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            endpoint: text("https://huggingface.co"),
            token: None,
            token_file: None,
            cdn_hosts: ["*.hf.co", "*.huggingface.co", "*.xethub.hf.co"]
                .map(text)
                .to_vec(),
            connect_timeout: Scalar(Dur::secs(10)),
            read_timeout: Scalar(Dur::secs(60)),
            metadata_timeout: Scalar(Dur::secs(5)),
            failure_hold_down: Scalar(Dur::secs(10)),
            offline: Scalar(false),
            ca_file: None,
            proxy: None,
            no_proxy: Vec::new(),
            proxy_credentials_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCache {
    dir: Scalar<PathBuf>,
    max_size: Scalar<Size>,
    revision_ttl: Scalar<Dur>,
    group_access: Scalar<bool>,
    meta_max_entries: Scalar<usize>,
    api_snapshots_max_size: Scalar<Size>,
    api_snapshots_max_files: Scalar<usize>,
    max_fills: Scalar<usize>,
    memory_size: Scalar<Size>,
    memory_max_object: Scalar<Size>,
    pin: Vec<Scalar<String>>,
    max_pinned: Scalar<Size>,
    object_store: Option<RawObjectStore>,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            dir: Scalar(PathBuf::from("./hf-edge-cache")),
            max_size: Scalar(Size(100 << 30)),
            revision_ttl: Scalar(Dur::secs(60)),
            group_access: Scalar(false),
            meta_max_entries: Scalar(100_000),
            api_snapshots_max_size: Scalar(Size(1 << 30)),
            api_snapshots_max_files: Scalar(100_000),
            max_fills: Scalar(64),
            memory_size: Scalar(Size(256 << 20)),
            memory_max_object: Scalar(Size(1 << 20)),
            pin: Vec::new(),
            max_pinned: Scalar(Size(10 << 30)),
            object_store: None,
        }
    }
}

/// `cache.object_store` as written. No defaults section: absent (or an empty `endpoint`)
/// is no tier.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawObjectStore {
    endpoint: Option<Scalar<String>>,
    bucket: Option<Scalar<String>>,
    region: Option<Scalar<String>>,
    access_key_id: Option<Scalar<String>>,
    secret_access_key: Option<Scalar<String>>,
    secret_access_key_file: Option<Scalar<PathBuf>>,
    credentials_file: Option<Scalar<PathBuf>>,
    prefix: Option<Scalar<String>>,
    allow_http: Option<Scalar<bool>>,
    timeout: Option<Scalar<Dur>>,
    max_uploads: Option<Scalar<usize>>,
    upload_queue: Option<Scalar<usize>>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMetrics {
    listen: Scalar<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: text("127.0.0.1:9090"),
        }
    }
}

// === values: ${VAR} expansion, then parsing ===

/// A value as written (a string, number or boolean), its `${VAR}` references expanded, parsed
/// by `T::from_str`.
#[derive(Clone)]
struct Scalar<T>(T);

fn text(s: &str) -> Scalar<String> {
    Scalar(s.to_string())
}

/// A size: a number of bytes or a number with a unit.
#[derive(Clone, Copy)]
struct Size(u64);

impl FromStr for Size {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
            .map(Size)
            .ok_or("not a size like 100GiB, 500MB or 1048576")
    }
}

/// A duration: seconds as a number, or a number with a unit.
#[derive(Clone, Copy)]
struct Dur(Duration);

impl Dur {
    const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

impl FromStr for Dur {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)
            .map(Dur)
            .ok_or("not a duration like 60s, 5m or 500ms")
    }
}

thread_local! {
    /// The variables the file being parsed refers to, for `Scalar`'s deserializer (derived
    /// `Deserialize` impls cannot be handed a context). Set and cleared by `Config::from_yaml`.
    static VARS: RefCell<HashMap<String, String>> = RefCell::default();
}

/// The values of the variables `text` refers to (`${NAME...`) that `env` has.
fn referenced_vars(text: &str, env: &impl Fn(&str) -> Option<String>) -> HashMap<String, String> {
    text.match_indices("${")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            let name = &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())];
            env(name).map(|v| (name.to_string(), v))
        })
        .collect()
}

/// Expands `${NAME}` (an error when unset) and `${NAME:-default}` (the default when unset or
/// empty); `$${` is a literal `${`. Any other `$` is kept as written.
fn expand(s: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let Some(reference) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = reference
            .find('}')
            .ok_or("has a ${ without its closing } (write $${ for a literal ${)")?;
        let body = &reference[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "${{{body}}}: {name:?} is not a variable name (letters, digits, _)"
            ));
        }
        match (vars.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "${{{name}}}: environment variable {name} is not set \
                     (${{{name}:-default}} gives a default)"
                ))
            }
        }
        rest = &reference[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl<'de, T: FromStr> Deserialize<'de> for Scalar<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData))
    }
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<T: FromStr> Visitor<'_> for ScalarVisitor<T>
where
    T::Err: fmt::Display,
{
    type Value = Scalar<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let value = VARS
            .with(|vars| expand(v, &vars.borrow()))
            .map_err(E::custom)?;
        value
            .parse()
            .map(Scalar)
            .map_err(|e| E::custom(format!("{value:?}: {e}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
}

// === loading and validation ===

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml(&text, &file, |k| std::env::var(k).ok())
    }

    /// The embedded default config.
    pub fn embedded_default() -> Config {
        Self::from_yaml(DEFAULT_YAML, "<embedded default>", |k| {
            std::env::var(k).ok()
        })
        .expect("the embedded default config is valid")
    }

    /// Parses and validates YAML; `env` supplies `HF_TOKEN` and the `${VAR}` references (a
    /// parameter so tests stay pure).
    pub fn from_yaml(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        // A file of comments only (or nothing) is a null document: all defaults.
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        let raw = if blank {
            RawConfig::default()
        } else {
            VARS.with(|v| *v.borrow_mut() = referenced_vars(text, &env));
            let de = serde_yaml::Deserializer::from_str(text);
            let parsed: Result<RawConfig, _> = serde_path_to_error::deserialize(de);
            VARS.with(|v| v.borrow_mut().clear());
            parsed.map_err(|e| {
                let key = match e.path().to_string() {
                    k if k == "." => "<root>".to_string(),
                    k => k,
                };
                // serde_yaml prefixes its own path, the key's or its section's (dropped: the
                // key leads already), and appends " at line N column M" (kept: it finds the key).
                let message = e.into_inner().to_string();
                let message = match message.split_once(": ") {
                    Some((path, rest)) if key.starts_with(path) => rest.to_string(),
                    _ => message,
                };
                invalid(&key, message)
            })?
        };
        raw.validate(env)
            .map_err(|(key, message)| invalid(&key, message))
    }
}

type Invalid = (String, String);

fn bad(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_string(), message.into())
}

/// `{at}.proxy`, `{at}.no_proxy` and `{at}.proxy_credentials_file`.
fn egress(
    at: &str,
    proxy: Option<String>,
    no_proxy: &[String],
    credentials_file: Option<PathBuf>,
) -> Result<Option<EgressProxy>, Invalid> {
    let key = |k: &str| format!("{at}.{k}");
    let Some(proxy) = proxy else {
        let needs = format!("needs {at}.proxy");
        return match (no_proxy.is_empty(), credentials_file) {
            (true, None) => Ok(None),
            (false, _) => Err(bad(&key("no_proxy"), needs)),
            (_, Some(_)) => Err(bad(&key("proxy_credentials_file"), needs)),
        };
    };
    let credentials = credentials_file
        .map(|path| {
            std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    &key("proxy_credentials_file"),
                    format!("{}: {e}", path.display()),
                )
            })
        })
        .transpose()?;
    EgressProxy::parse(&proxy, no_proxy, credentials.as_deref())
        .map(Some)
        .map_err(|(k, m)| (key(&k), m))
}

/// `cache.memory_size` (0: no memory tier) and `cache.memory_max_object`.
fn memory_limits(max_size: u64, max_object: u64) -> Result<crate::store::MemoryLimits, Invalid> {
    if max_object == 0 {
        return Err(bad("cache.memory_max_object", "must be greater than 0"));
    }
    if max_size > 0 && max_object > max_size {
        return Err(bad(
            "cache.memory_max_object",
            "must be at most cache.memory_size",
        ));
    }
    Ok(crate::store::MemoryLimits {
        max_size,
        max_object,
    })
}

/// An optional value, empty (e.g. `${VAR:-}`) counting as unset.
fn given<T: AsRef<std::ffi::OsStr>>(v: Option<Scalar<T>>) -> Option<T> {
    v.map(|s| s.0).filter(|v| !v.as_ref().is_empty())
}

impl RawConfig {
    fn validate(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, Invalid> {
        let listen = parse_addr("listen", &self.listen.0)?;
        let threads = match self.threads {
            Some(Scalar(0)) => return Err(bad("threads", "must be at least 1")),
            Some(Scalar(n)) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let upstream = self.upstream.validate("upstream", env("HF_TOKEN"))?;
        let positive = |key: &str, v: Scalar<Dur>| match v.0 .0 {
            d if d.is_zero() => Err(bad(key, "must be greater than 0")),
            d => Ok(d),
        };

        let c = self.cache;
        if c.dir.0.as_os_str().is_empty() {
            return Err(bad("cache.dir", "must not be empty"));
        }
        let max_size = c.max_size.0 .0;
        if max_size == 0 {
            return Err(bad("cache.max_size", "must be greater than 0"));
        }
        if c.max_fills.0 == 0 {
            return Err(bad("cache.max_fills", "must be at least 1"));
        }
        let cache = Cache {
            dir: c.dir.0,
            max_size,
            revision_ttl: c.revision_ttl.0 .0,
            group_access: c.group_access.0,
            meta_max_entries: match c.meta_max_entries.0 {
                0 => return Err(bad("cache.meta_max_entries", "must be at least 1")),
                n => n,
            },
            api_snapshots_max_size: c.api_snapshots_max_size.0 .0,
            api_snapshots_max_files: c.api_snapshots_max_files.0,
            max_fills: c.max_fills.0,
            memory: memory_limits(c.memory_size.0 .0, c.memory_max_object.0 .0)?,
            pin: pin_policy(&c.pin, c.max_pinned.0)?,
            object_store: c
                .object_store
                .map(|o| o.validate("cache.object_store"))
                .transpose()?
                .flatten(),
        };
        let metrics = Metrics {
            listen: parse_addr("metrics.listen", &self.metrics.listen.0)?,
        };
        if metrics.listen == listen && listen.port() != 0 {
            return Err(bad("metrics.listen", "must differ from listen"));
        }
        let access = self.access.validate("access")?;
        let mut mounts = Vec::with_capacity(self.mounts.len());
        for (i, m) in self.mounts.into_iter().enumerate() {
            let at = format!("mounts[{i}]");
            mounts.push(Mount {
                prefix: mount_prefix(&format!("{at}.prefix"), &m.prefix.0)?,
                upstream: m.upstream.validate(&format!("{at}.upstream"), None)?,
                access: m.access.validate(&format!("{at}.access"))?,
            });
        }
        no_overlap(&mounts)?;
        let access_log = self.log.access.0;
        if access_log.trim().is_empty() {
            return Err(bad("log.access", "must be stderr, off, or a file path"));
        }
        let public_url = match given(self.public_url) {
            Some(u) => Some(
                Origin::parse(&u)
                    .map_err(|m| bad("public_url", m))
                    .and_then(|o| match o.has_path() {
                        true => Err(bad("public_url", "must be an origin, without a path")),
                        false => Ok(o),
                    })?,
            ),
            None => None,
        };
        let admin_token = secret(
            "ops.admin_token",
            given(self.ops.admin_token),
            given(self.ops.admin_token_file),
        )?;
        let limits = Limits {
            header_timeout: positive("limits.header_timeout", self.limits.header_timeout)?,
            max_connections: match self.limits.max_connections.0 {
                0 => return Err(bad("limits.max_connections", "must be at least 1")),
                n => n,
            },
        };
        let tls = match self.tls {
            Some(t) => {
                let tls = Tls {
                    listen: parse_addr("tls.listen", &t.listen.0)?,
                    cert_file: t.cert_file.0,
                    key_file: t.key_file.0,
                };
                if tls.listen == listen {
                    return Err(bad("tls.listen", "must differ from listen"));
                }
                // Loaded here so that check-config and startup name a bad pair.
                Certificates::load(&tls.cert_file, &tls.key_file)
                    .map_err(|m| bad("tls.cert_file", m))?;
                Some(tls)
            }
            None => None,
        };
        let trusted_proxies = TrustedProxies(
            self.trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Cidr::parse(&c.0).map_err(|m| bad(&format!("trusted_proxies[{i}]"), m))
                })
                .collect::<Result<_, _>>()?,
        );
        let warm = self.warm.validate()?;
        let cluster = self.cluster.map(RawCluster::validate).transpose()?;
        for (i, r) in warm.repos.iter().enumerate() {
            // The rules of the mount the entry fetches through.
            let rules = match r.mount.as_str() {
                "/" => &access,
                prefix => match mounts.iter().find(|m| m.prefix == prefix) {
                    Some(m) => &m.access,
                    None => {
                        return Err(bad(
                            &format!("warm.repos[{i}].mount"),
                            format!("no such mount: {prefix:?} (not / nor a mounts[].prefix)"),
                        ))
                    }
                },
            };
            if rules.check_repos(&[r.repo()]).is_err() {
                return Err(bad(
                    &format!("warm.repos[{i}].repo"),
                    "refused by the mount's access.repos: warming it would store what clients may not read",
                ));
            }
        }
        Ok(Config {
            cluster,
            mounts,
            warm,
            tls,
            trusted_proxies,
            limits,
            public_url,
            ops: Ops { admin_token },
            listen,
            threads,
            shutdown_grace: self.shutdown_grace.0 .0,
            upstream,
            cache,
            metrics,
            access_log,
            access,
        })
    }
}

/// Shortest `cluster.secret`: an HMAC key guessable by brute force protects nothing.
const MIN_CLUSTER_SECRET: usize = 16;

impl RawCluster {
    fn validate(self) -> Result<Cluster, Invalid> {
        let node = |key: &str, s: &str| {
            let o = Origin::parse(s).map_err(|m| bad(key, m))?;
            if o.tls || o.has_path() {
                return Err(bad(
                    key,
                    format!("{s:?}: must be an http:// origin without a path, like http://10.0.0.1:8080 (peers talk plain HTTP, authenticated by cluster.secret)"),
                ));
            }
            Ok(o)
        };
        let self_url = node("cluster.self", &self.self_url.0)?;
        if self.peers.is_empty() {
            return Err(bad(
                "cluster.peers",
                "must list the nodes (cluster.self among them) or one name resolving to them",
            ));
        }
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| node(&format!("cluster.peers[{i}]"), &p.0))
            .collect::<Result<Vec<_>, _>>()?;
        let secret = secret(
            "cluster.secret",
            given(self.secret),
            given(self.secret_file),
        )?
        .ok_or_else(|| {
            bad(
                "cluster.secret",
                "is required: set cluster.secret or cluster.secret_file",
            )
        })?;
        if secret.expose().len() < MIN_CLUSTER_SECRET {
            return Err(bad(
                "cluster.secret",
                format!("must be at least {MIN_CLUSTER_SECRET} characters (e.g. `openssl rand -hex 32`)"),
            ));
        }
        let positive = |key: &str, d: Duration| match d.is_zero() {
            true => Err(bad(key, "must be greater than 0")),
            false => Ok(d),
        };
        Ok(Cluster {
            self_url,
            peers,
            secret,
            replicate: self.replicate.0,
            health_check: HealthCheck {
                interval: positive(
                    "cluster.health_check.interval",
                    self.health_check.interval.0 .0,
                )?,
                timeout: positive(
                    "cluster.health_check.timeout",
                    self.health_check.timeout.0 .0,
                )?,
            },
            resolve_interval: positive("cluster.resolve_interval", self.resolve_interval.0 .0)?,
        })
    }
}

impl RawUpstream {
    /// `at` is the section's key path (`upstream`, `mounts[0].upstream`); `env_token` is what
    /// an unset token falls back to (`HF_TOKEN`, for the top-level upstream only).
    fn validate(self, at: &str, env_token: Option<String>) -> Result<Upstream, Invalid> {
        let key = |k: &str| format!("{at}.{k}");
        let u = self;
        let endpoint = Origin::parse(&u.endpoint.0).map_err(|m| bad(&key("endpoint"), m))?;
        if endpoint.has_path() {
            return Err(bad(
                &key("endpoint"),
                "must be an origin without a path, like https://huggingface.co",
            ));
        }
        let (token, token_file) = (given(u.token), given(u.token_file));
        let token = match (&token, &token_file) {
            (None, None) => secret(&key("token"), env_token, None)?,
            _ => secret(&key("token"), token, token_file)?,
        };
        let cdn_hosts = u
            .cdn_hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HostPattern::parse(&h.0).map_err(|m| bad(&key(&format!("cdn_hosts[{i}]")), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let positive = |k: &str, v: Scalar<Dur>| match v.0 .0 {
            d if d.is_zero() => Err(bad(&key(k), "must be greater than 0")),
            d => Ok(d),
        };
        Ok(Upstream {
            endpoint,
            token,
            cdn_hosts,
            connect_timeout: positive("connect_timeout", u.connect_timeout)?,
            read_timeout: positive("read_timeout", u.read_timeout)?,
            metadata_timeout: positive("metadata_timeout", u.metadata_timeout)?,
            failure_hold_down: u.failure_hold_down.0 .0,
            offline: u.offline.0,
            ca_file: given(u.ca_file)
                .map(|path| CaBundle::load(&path).map_err(|m| bad(&key("ca_file"), m)))
                .transpose()?,
            egress: egress(
                at,
                given(u.proxy),
                &u.no_proxy.into_iter().map(|p| p.0).collect::<Vec<_>>(),
                given(u.proxy_credentials_file),
            )?,
        })
    }
}

/// Hub routes at the root a mount's first segment would hide.
const RESERVED_PREFIXES: [&str; 5] = ["api", "models", "datasets", "spaces", "kernels"];

/// Checks a mount prefix: `/name[/name...]`, segments of letters, digits, `-`, `_`, `.`
/// (not `.` or `..` alone), no trailing slash.
fn mount_prefix(key: &str, prefix: &str) -> Result<String, Invalid> {
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(bad(
            key,
            format!("{prefix:?} must start with /, like /internal"),
        ));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let well_formed = segments.iter().all(|s| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !well_formed {
        return Err(bad(
            key,
            format!(
                "{prefix:?} is not a prefix like /internal or /mirrors/site-a \
                 (letters, digits, - _ . in each segment; no empty, . or .. segments)"
            ),
        ));
    }
    if RESERVED_PREFIXES.contains(&segments[0]) {
        return Err(bad(
            key,
            format!("{prefix:?} would hide the Hub's /{} routes", segments[0]),
        ));
    }
    Ok(prefix.to_string())
}

/// Every mount prefix unique, and none inside another (`/a` and `/a/b`): which mount a path
/// names never depends on how specific a prefix is.
fn no_overlap(mounts: &[Mount]) -> Result<(), Invalid> {
    for (i, m) in mounts.iter().enumerate() {
        for (j, other) in mounts.iter().enumerate().take(i) {
            let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if inside(&m.prefix, &other.prefix) || inside(&other.prefix, &m.prefix) {
                return Err(bad(
                    &format!("mounts[{i}].prefix"),
                    format!(
                        "{:?} overlaps mounts[{j}].prefix {:?}; prefixes must not nest",
                        m.prefix, other.prefix
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl RawObjectStore {
    /// `at` is `cache.object_store`. `None`: no endpoint, no tier.
    fn validate(self, at: &str) -> Result<Option<crate::store::ObjectStoreSettings>, Invalid> {
        let key = |k: &str| format!("{at}.{k}");
        let Some(endpoint) = given(self.endpoint) else {
            return Ok(None);
        };
        let origin = Origin::parse(&endpoint).map_err(|m| bad(&key("endpoint"), m))?;
        if origin.has_path() {
            return Err(bad(
                &key("endpoint"),
                "must be an origin (scheme, host, port), no path",
            ));
        }
        let allow_http = self.allow_http.is_some_and(|v| v.0);
        if !origin.tls && !allow_http {
            return Err(bad(
                &key("endpoint"),
                format!("{endpoint} is plain http: set {at}.allow_http: true to send the credentials and blobs unencrypted"),
            ));
        }
        let bucket = given(self.bucket).ok_or_else(|| bad(&key("bucket"), "must be set"))?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(bad(
                &key("bucket"),
                format!("{bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '-', '.')"),
            ));
        }
        let (access_key_id, secret_access_key) = object_store_credentials(
            at,
            given(self.access_key_id),
            secret(
                &key("secret_access_key"),
                given(self.secret_access_key),
                given(self.secret_access_key_file),
            )?,
            given(self.credentials_file),
        )?;
        let prefix = given(self.prefix).unwrap_or_default();
        let prefix = prefix.trim_matches('/');
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !prefix.is_empty() && !prefix.split('/').all(segment_ok) {
            return Err(bad(
                &key("prefix"),
                format!("{prefix:?}: segments of A-Z, a-z, 0-9, '-', '_', '.' separated by '/'"),
            ));
        }
        let timeout = self.timeout.map_or(Duration::from_secs(5), |t| t.0 .0);
        if timeout.is_zero() {
            return Err(bad(&key("timeout"), "must be greater than 0"));
        }
        let max_uploads = self.max_uploads.map_or(4, |n| n.0);
        if max_uploads == 0 {
            return Err(bad(&key("max_uploads"), "must be at least 1"));
        }
        Ok(Some(crate::store::ObjectStoreSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket,
            region: given(self.region).unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key: secret_access_key.expose().to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            allow_http,
            timeout,
            max_uploads,
            upload_queue: self.upload_queue.map_or(1024, |n| n.0),
        }))
    }
}

/// The tier's key pair: `access_key_id` with `secret_access_key` (or its `_file`), or an AWS
/// shared credentials file (`credentials_file`, its `[default]` profile), not both.
fn object_store_credentials(
    at: &str,
    id: Option<String>,
    secret: Option<Secret>,
    file: Option<PathBuf>,
) -> Result<(String, Secret), Invalid> {
    let key = |k: &str| format!("{at}.{k}");
    match (id, secret, file) {
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(&key("credentials_file"), format!("{}: {e}", path.display())))?;
            aws_credentials(&text).map_err(|m| {
                bad(&key("credentials_file"), format!("{}: {m}", path.display()))
            })
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(bad(
            &key("credentials_file"),
            format!("set {at}.credentials_file or {at}.access_key_id and secret_access_key, not both"),
        )),
        (Some(id), Some(secret), None) => Ok((id, secret)),
        (Some(_), None, None) => Err(bad(
            &key("secret_access_key"),
            format!("must be set with {at}.access_key_id (or secret_access_key_file)"),
        )),
        (None, Some(_), None) => Err(bad(
            &key("access_key_id"),
            format!("must be set with {at}.secret_access_key"),
        )),
        (None, None, None) => Err(bad(
            at,
            "needs credentials: access_key_id and secret_access_key (or secret_access_key_file), or credentials_file",
        )),
    }
}

/// `aws_access_key_id` and `aws_secret_access_key` of the `[default]` profile of an AWS shared
/// credentials file (lines before any `[profile]` header count as the default's).
fn aws_credentials(text: &str) -> Result<(String, Secret), String> {
    let mut profile = "default".to_string();
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            profile = name.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if profile != "default" {
            continue;
        }
        match k.trim() {
            "aws_access_key_id" => id = Some(v.trim().to_string()),
            "aws_secret_access_key" => secret = Some(v.trim().to_string()),
            _ => {}
        }
    }
    match (
        id.filter(|v| !v.is_empty()),
        secret.filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => Ok((id, Secret::new(secret))),
        (None, _) => Err("no aws_access_key_id in its [default] profile".into()),
        (_, None) => Err("no aws_secret_access_key in its [default] profile".into()),
    }
}

/// A secret given inline or in a file (`{key}_file`), not both; trimmed; empty is unset.
/// Every secret has both forms, so a mounted file (a Kubernetes Secret, a systemd credential)
/// never has to be copied into the config.
fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Secret>, Invalid> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                &format!("{key}_file"),
                format!("set {key} or {key}_file, not both"),
            ))
        }
        (Some(v), None) => v,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| bad(&format!("{key}_file"), format!("{}: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    let value = value.trim();
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(key, "must not contain whitespace"));
    }
    Ok((!value.is_empty()).then(|| Secret::new(value.to_string())))
}

impl RawAccess {
    /// `at` is the section's key path (`access`, `mounts[0].access`).
    fn validate(self, at: &str) -> Result<Policy, Invalid> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.into_iter().enumerate() {
            let at = |f: &str| format!("{at}.keys[{i}].{f}");
            if k.name.0.trim().is_empty() {
                return Err(bad(&at("name"), "must not be empty"));
            }
            let hex_hash = k.sha256.0.trim().trim_start_matches("sha256:");
            let sha256: [u8; 32] = hex::decode(hex_hash)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    bad(
                        &at("sha256"),
                        "must be 64 hex digits (see `hf-edge hash-key`)",
                    )
                })?;
            let token = secret(
                &at("upstream_token"),
                given(k.upstream_token),
                given(k.upstream_token_file),
            )?;
            let upstream = token
                .map(|t| http::HeaderValue::from_str(&format!("Bearer {}", t.expose())))
                .transpose()
                .map_err(|_| bad(&at("upstream_token"), "not a valid token"))?;
            keys.push(SiteKey {
                name: k.name.0,
                sha256,
                upstream,
            });
        }
        if self.require_key.0 && keys.is_empty() {
            return Err(bad(
                &format!("{at}.require_key"),
                format!("is true but {at}.keys is empty"),
            ));
        }
        let globs = |key: &str, list: Vec<Scalar<String>>| {
            list.iter()
                .enumerate()
                .map(|(i, g)| RepoGlob::parse(&g.0).map_err(|m| bad(&format!("{key}[{i}]"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
        let offline_restricted = match self.offline_restricted.0.as_str() {
            "deny" => OfflineRestricted::Deny,
            "allow" => OfflineRestricted::Allow,
            other => {
                return Err(bad(
                    &format!("{at}.offline_restricted"),
                    format!("{other:?} is not deny or allow"),
                ))
            }
        };
        Ok(Policy {
            require_key: self.require_key.0,
            keys,
            allow: globs(&format!("{at}.repos.allow"), self.repos.allow)?,
            deny: globs(&format!("{at}.repos.deny"), self.repos.deny)?,
            auth_ttl: self.auth_ttl.0 .0,
            offline_restricted,
        })
    }
}

// === warm and pin ===

/// `warm:`: repos kept warm, and the bandwidth warming may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Warm {
    /// How often each entry's revision is resolved again (a moved branch starts a job).
    pub interval: Duration,
    /// Bytes per second all warm fills read at most together (lifted for a fill a client
    /// reads too); `None`: no cap.
    pub max_rate: Option<u64>,
    pub repos: Vec<crate::warm::WarmSpec>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWarm {
    interval: Scalar<Dur>,
    max_rate: Option<Scalar<Size>>,
    repos: Vec<crate::warm::RawSpec>,
}

impl Default for RawWarm {
    fn default() -> Self {
        RawWarm {
            interval: Scalar(Dur::secs(600)),
            max_rate: None,
            repos: Vec::new(),
        }
    }
}

/// Entries in `warm.repos` at most (each costs a Hub request every interval).
const MAX_WARM_REPOS: usize = 256;
/// `cache.pin` patterns at most (each is matched against every name recorded).
const MAX_PINS: usize = 256;

impl RawWarm {
    fn validate(self) -> Result<Warm, Invalid> {
        let interval = self.interval.0 .0;
        if interval < Duration::from_secs(1) {
            return Err(bad("warm.interval", "must be at least 1s"));
        }
        let max_rate = match self.max_rate {
            Some(Scalar(Size(v))) => match v {
                0 => {
                    return Err(bad(
                        "warm.max_rate",
                        "must be greater than 0 (or unset: no cap)",
                    ))
                }
                n => Some(n),
            },
            None => None,
        };
        if self.repos.len() > MAX_WARM_REPOS {
            return Err(bad(
                "warm.repos",
                format!("more than {MAX_WARM_REPOS} entries"),
            ));
        }
        let repos = self
            .repos
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.validate()
                    .map_err(|(field, m)| bad(&format!("warm.repos[{i}].{field}"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Warm {
            interval,
            max_rate,
            repos,
        })
    }
}

fn pin_policy(
    pin: &[Scalar<String>],
    max_pinned: Size,
) -> Result<crate::store::PinPolicy, Invalid> {
    if pin.len() > MAX_PINS {
        return Err(bad("cache.pin", format!("more than {MAX_PINS} patterns")));
    }
    let patterns = pin
        .iter()
        .enumerate()
        .map(|(i, p)| {
            crate::store::PinPattern::parse(&p.0).map_err(|m| bad(&format!("cache.pin[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::store::PinPolicy {
        patterns,
        max_pinned: max_pinned.0,
    })
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, Invalid> {
    s.parse().map_err(|_| {
        bad(
            key,
            format!("{s:?} is not an address like 127.0.0.1:8080 or [::]:8080"),
        )
    })
}

/// Parses `100GiB`, `1.5 GB`, `512MiB`, `1024` (bytes). Decimal units are powers of 1000,
/// binary ones (`KiB`...) powers of 1024.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let bytes = v * mult as f64;
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

/// Parses `60s`, `5m`, `1h`, `500ms`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen: "127.0.0.1:8080"
upstream:
  endpoint: "https://huggingface.co"
cache:
  dir: "/tmp/c"
  max_size: "100GiB"
metrics:
  listen: "127.0.0.1:9090"
"#;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, "t.yaml", |_| None)
    }

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_matches_the_contract() {
        let c = Config::from_yaml(DEFAULT_YAML, "d", |_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream.endpoint.to_string(), "https://huggingface.co");
        assert_eq!(c.cache.dir, PathBuf::from("./hf-edge-cache"));
        assert_eq!(c.cache.max_size, 100 << 30);
        assert_eq!(c.cache.revision_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.max_fills, 64);
        assert_eq!(
            c.cache.memory,
            crate::store::MemoryLimits {
                max_size: 256 << 20,
                max_object: 1 << 20
            }
        );
        assert_eq!(c.upstream.metadata_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.failure_hold_down, Duration::from_secs(10));
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9090");
        assert!(c.upstream.token.is_none());
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.cache.meta_max_entries, 100_000);
        assert_eq!(c.cache.api_snapshots_max_size, 1 << 30);
        assert_eq!(c.cache.api_snapshots_max_files, 100_000);
        // The same defaults when the keys are left out.
        let minimal = parse(MINIMAL).unwrap();
        assert_eq!(minimal.limits.header_timeout, c.limits.header_timeout);
        assert_eq!(minimal.limits.max_connections, c.limits.max_connections);
        assert_eq!(minimal.cache.meta_max_entries, c.cache.meta_max_entries);
        assert_eq!(
            minimal.cache.api_snapshots_max_size,
            c.cache.api_snapshots_max_size
        );
        assert_eq!(
            minimal.cache.api_snapshots_max_files,
            c.cache.api_snapshots_max_files
        );
    }

    #[test]
    fn token_falls_back_to_hf_token_and_is_redacted() {
        let c = Config::from_yaml(MINIMAL, "t", |k| (k == "HF_TOKEN").then(|| "hf_x".into()));
        let c = c.unwrap();
        assert_eq!(c.upstream.token.as_ref().unwrap().expose(), "hf_x");
        assert!(!format!("{c:?}").contains("hf_x"));
        let explicit = MINIMAL.replace(
            "endpoint: \"https://huggingface.co\"",
            "endpoint: \"https://huggingface.co\"\n  token: hf_cfg",
        );
        let c = Config::from_yaml(&explicit, "t", |_| Some("hf_env".into())).unwrap();
        assert_eq!(c.upstream.token.unwrap().expose(), "hf_cfg");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                MINIMAL.replace("dir:", "dirr:"),
                "cache.dirr: unknown field `dirr`",
            ),
            (
                MINIMAL.replace("\"100GiB\"", "\"100 parsecs\""),
                "cache.max_size: \"100 parsecs\": not a size",
            ),
            (
                MINIMAL.replace("\"127.0.0.1:9090\"", "\"nowhere\""),
                "metrics.listen: \"nowhere\" is not an address",
            ),
            (
                MINIMAL.replace("https://huggingface.co", "ftp://x"),
                "upstream.endpoint:",
            ),
            (
                MINIMAL.replace("https://huggingface.co", "https://h.co/api"),
                "upstream.endpoint: must be an origin without a path",
            ),
            (format!("{MINIMAL}\nbogus: 1\n"), "unknown field `bogus`"),
            (
                format!("{MINIMAL}access:\n  keys:\n    - name: ci\n      sha256: xyz\n"),
                "access.keys[0].sha256: must be 64 hex digits",
            ),
            (
                format!("{MINIMAL}access:\n  require_key: true\n"),
                "access.require_key: is true but access.keys is empty",
            ),
            (
                format!("{MINIMAL}access:\n  repos:\n    deny: [\"ok/*\", \"bad pattern\"]\n"),
                "access.repos.deny[1]:",
            ),
            (
                format!("{MINIMAL}access:\n  offline_restricted: maybe\n"),
                "access.offline_restricted:",
            ),
            (
                MINIMAL.replace("max_size: \"100GiB\"", "max_size: 0"),
                "cache.max_size: must be greater than 0",
            ),
            (
                MINIMAL.replace("max_size: \"100GiB\"", "max_size: 1GiB\n  max_fills: 0"),
                "cache.max_fills: must be at least 1",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: 1GiB\n  memory_size: 1MiB\n  memory_max_object: 2MiB",
                ),
                "cache.memory_max_object: must be at most cache.memory_size",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: 1GiB\n  memory_max_object: 0",
                ),
                "cache.memory_max_object: must be greater than 0",
            ),
            (
                MINIMAL.replace(
                    "endpoint: \"https://huggingface.co\"",
                    "endpoint: \"https://huggingface.co\"\n  metadata_timeout: 0s",
                ),
                "upstream.metadata_timeout: must be greater than 0",
            ),
            (
                format!("{MINIMAL}limits:\n  header_timeout: 0s\n"),
                "limits.header_timeout: must be greater than 0",
            ),
            (
                format!("{MINIMAL}limits:\n  max_connections: 0\n"),
                "limits.max_connections: must be at least 1",
            ),
            (
                format!("{MINIMAL}limits:\n  max_conns: 5\n"),
                "limits.max_conns: unknown field `max_conns`",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: \"100GiB\"\n  meta_max_entries: 0",
                ),
                "cache.meta_max_entries: must be at least 1",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: \"100GiB\"\n  api_snapshots_max_size: lots",
                ),
                "cache.api_snapshots_max_size: \"lots\": not a size",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(&yaml);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
            assert!(got.starts_with("t.yaml: "), "{got}");
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }

    #[test]
    fn egress_proxy_keys() {
        let with = |keys: &str| {
            MINIMAL.replace(
                "endpoint: \"https://huggingface.co\"",
                &format!("endpoint: \"https://huggingface.co\"\n  {keys}"),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "edge:pw\n").unwrap();
        let c = parse(&with(&format!(
            "proxy: \"http://proxy:3128\"\n  no_proxy: [\".site\"]\n  proxy_credentials_file: \"{}\"",
            creds.display()
        )))
        .unwrap();
        let egress = c.upstream.egress.unwrap();
        assert!(egress.auth.is_some());
        assert!(!egress.applies_to("hub.site") && egress.applies_to("huggingface.co"));
        assert!(parse(MINIMAL).unwrap().upstream.egress.is_none());
        for (keys, want) in [
            (
                "proxy: \"https://proxy:3128\"",
                "t.yaml: upstream.proxy: must be an http:// origin",
            ),
            (
                "no_proxy: [\"x\"]",
                "t.yaml: upstream.no_proxy: needs upstream.proxy",
            ),
            (
                "proxy: \"http://p:1\"\n  proxy_credentials_file: \"/nonexistent/c\"",
                "t.yaml: upstream.proxy_credentials_file: /nonexistent/c: ",
            ),
        ] {
            let got = err(&with(keys));
            assert!(got.starts_with(want), "{got}");
        }
    }

    #[test]
    fn every_key_has_a_default() {
        let full = format!("{:?}", parse(DEFAULT_YAML).unwrap());
        for empty in ["", "# nothing\n", "{}\n"] {
            assert_eq!(format!("{:?}", parse(empty).unwrap()), full, "{empty:?}");
        }
        let c = parse("cache: {max_size: 10GiB}\n").unwrap();
        assert_eq!(c.cache.max_size, 10 << 30);
        assert_eq!(c.cache.dir, PathBuf::from("./hf-edge-cache"));
        assert_eq!(c.upstream.endpoint.to_string(), "https://huggingface.co");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        let c = parse("listen: \"0.0.0.0:8080\"\nmetrics:\n  listen: \"0.0.0.0:9090\"\n").unwrap();
        assert_eq!(c.metrics.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.upstream.cdn_hosts.len(), 3);
        // Defaults do not loosen the grammar.
        let got = err("cache: {max_size: 10GiB, maxsize: 1}\n");
        assert!(
            got.starts_with("t.yaml: cache.maxsize: unknown field `maxsize`"),
            "{got}"
        );
        assert!(got.contains("at line 1 column"), "{got}");
    }

    #[test]
    fn variables_are_expanded_in_values() {
        let env = |k: &str| match k {
            "DIR" => Some("/srv/cache".to_string()),
            "FILLS" => Some("8".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let yaml = "cache:\n  dir: ${DIR}/hf\n  max_size: ${SIZE:-2GiB}\n  max_fills: ${FILLS}\n\
                    listen: ${LISTEN:-0.0.0.0:8080}\nlog:\n  access: \"${EMPTY:-off}\"\n\
                    access:\n  keys:\n    - {name: \"$${NOT} $HOME $\", sha256: \"${EMPTY}\"}\n";
        let got = Config::from_yaml(yaml, "t.yaml", env)
            .unwrap_err()
            .to_string();
        // Everything before the key list expanded; the sha256 left empty is checked as given.
        assert!(got.contains("access.keys[0].sha256: must be 64"), "{got}");
        let yaml = yaml.replace("\"${EMPTY}\"", &format!("\"{}\"", "ab".repeat(32)));
        let c = Config::from_yaml(&yaml, "t.yaml", env).unwrap();
        assert_eq!(c.cache.dir, PathBuf::from("/srv/cache/hf"));
        assert_eq!(c.cache.max_size, 2 << 30);
        assert_eq!(c.cache.max_fills, 8);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.access_log, "off");
        assert_eq!(c.access.keys[0].name, "${NOT} $HOME $");

        let cases = [
            (
                "cache:\n  max_size: 1GiB\n  dir: ${CACHE_DIR}\n",
                "t.yaml: cache.dir: ${CACHE_DIR}: environment variable CACHE_DIR is not set",
                "at line 3 column 8",
            ),
            (
                "upstream:\n  endpoint: \"${HUB:-https://h.co}/${X\"\n",
                "t.yaml: upstream.endpoint: has a ${ without its closing }",
                "at line 2",
            ),
            (
                "listen: ${1X}\n",
                "t.yaml: listen: ${1X}: \"1X\" is not a variable name",
                "at line 1",
            ),
            (
                "cache:\n  max_fills: ${NO_FILLS:-many}\n",
                "t.yaml: cache.max_fills: \"many\": invalid digit",
                "at line 2",
            ),
        ];
        for (yaml, want, line) in cases {
            let got = Config::from_yaml(yaml, "t.yaml", env)
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
            assert!(got.contains(line), "{got:?} should contain {line:?}");
        }
    }

    #[test]
    fn cluster_keys_are_read_and_checked() {
        let cluster = |body: &str| format!("{MINIMAL}cluster:\n{body}");
        let ok = cluster(
            "  self: \"http://10.0.0.1:8080\"\n  peers: [\"http://hf-edge-peers:8080\"]\n  secret: \"0123456789abcdef\"\n",
        );
        let c = parse(&ok).unwrap().cluster.unwrap();
        assert_eq!(c.self_url.to_string(), "http://10.0.0.1:8080");
        assert_eq!(c.peers.len(), 1);
        assert!(c.replicate);
        assert_eq!(c.health_check.interval, Duration::from_secs(5));
        assert!(parse(MINIMAL).unwrap().cluster.is_none());
        let cases = [
            (
                "  self: \"https://10.0.0.1\"\n  peers: [\"http://a:1\"]\n  secret: \"0123456789abcdef\"\n",
                "t.yaml: cluster.self: \"https://10.0.0.1\": must be an http:// origin",
            ),
            (
                "  self: \"http://a:1\"\n  peers: []\n  secret: \"0123456789abcdef\"\n",
                "t.yaml: cluster.peers: must list the nodes",
            ),
            (
                "  self: \"http://a:1\"\n  peers: [\"http://a:1/x\"]\n  secret: \"0123456789abcdef\"\n",
                "t.yaml: cluster.peers[0]: \"http://a:1/x\": must be an http:// origin",
            ),
            (
                "  self: \"http://a:1\"\n  peers: [\"http://a:1\"]\n",
                "t.yaml: cluster.secret: is required",
            ),
            (
                "  self: \"http://a:1\"\n  peers: [\"http://a:1\"]\n  secret: short\n",
                "t.yaml: cluster.secret: must be at least 16 characters",
            ),
            (
                "  self: \"http://a:1\"\n  peers: [\"http://a:1\"]\n  secret: \"0123456789abcdef\"\n  health_check: {interval: 0s}\n",
                "t.yaml: cluster.health_check.interval: must be greater than 0",
            ),
            (
                "  self: \"http://a:1\"\n  peers: [\"http://a:1\"]\n  secret: \"0123456789abcdef\"\n  replicas: 2\n",
                "t.yaml: cluster.replicas: unknown field `replicas`",
            ),
        ];
        for (body, want) in cases {
            let got = err(&cluster(body));
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn every_secret_has_a_file_form() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [("hub", "hf_hub\n"), ("admin", "adm1n"), ("key", " hf_key ")] {
            std::fs::write(dir.path().join(name), value).unwrap();
        }
        let env = |k: &str| (k == "CREDS").then(|| dir.path().display().to_string());
        let yaml = format!(
            "upstream:\n  token_file: ${{CREDS}}/hub\nops:\n  admin_token_file: ${{CREDS}}/admin\n\
             access:\n  keys:\n    - name: ci\n      sha256: \"{}\"\n      upstream_token_file: ${{CREDS}}/key\n",
            "ab".repeat(32)
        );
        let c = Config::from_yaml(&yaml, "t.yaml", env).unwrap();
        assert_eq!(c.upstream.token.unwrap().expose(), "hf_hub");
        assert_eq!(c.ops.admin_token.unwrap().expose(), "adm1n");
        assert_eq!(
            c.access.keys[0]
                .upstream
                .as_ref()
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer hf_key"
        );
        // An empty value, e.g. `${VAR:-}`, is unset: the HF_TOKEN fallback still applies.
        let c = Config::from_yaml("upstream:\n  token: ${T:-}\n", "t.yaml", |k| {
            (k == "HF_TOKEN").then(|| "hf_env".into())
        })
        .unwrap();
        assert_eq!(c.upstream.token.unwrap().expose(), "hf_env");

        let cases = [
            (
                "upstream:\n  token: a\n  token_file: /x\n".to_string(),
                "t.yaml: upstream.token_file: set upstream.token or upstream.token_file, not both",
            ),
            (
                "ops:\n  admin_token_file: /nonexistent/admin\n".to_string(),
                "t.yaml: ops.admin_token_file: /nonexistent/admin: ",
            ),
            (
                format!(
                    "access:\n  keys:\n    - {{name: ci, sha256: \"{}\", upstream_token: a, upstream_token_file: /x}}\n",
                    "ab".repeat(32)
                ),
                "t.yaml: access.keys[0].upstream_token_file: set access.keys[0].upstream_token or",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(&yaml);
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn object_store_is_validated_with_its_key_paths() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("aws");
        std::fs::write(
            &creds,
            "[other]\naws_access_key_id = NOPE\n[default]\naws_access_key_id = AKID\n\
             aws_secret_access_key = s3cret\n",
        )
        .unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let section = |body: &str| format!("cache:\n  object_store:\n{body}");
        let env = |k: &str| (k == "D").then(|| dir.path().display().to_string());
        let c = Config::from_yaml(
            &section(
                "    endpoint: \"http://garage:3900/\"\n    bucket: blobs\n    region: garage\n\
                 \x20   allow_http: true\n    prefix: /site/a/\n    credentials_file: ${D}/aws\n",
            ),
            "t.yaml",
            env,
        )
        .unwrap();
        let o = c.cache.object_store.unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.bucket.as_str(), o.region.as_str()),
            ("http://garage:3900", "blobs", "garage")
        );
        assert_eq!(
            (o.access_key_id.as_str(), o.secret_access_key.as_str()),
            ("AKID", "s3cret")
        );
        assert_eq!(o.prefix, "site/a/");
        assert_eq!(
            (o.timeout, o.max_uploads, o.upload_queue),
            (Duration::from_secs(5), 4, 1024)
        );
        assert!(
            !format!("{o:?}").contains("s3cret"),
            "the secret is never printed"
        );
        let c = Config::from_yaml(
            &section(
                "    endpoint: \"https://s3.example\"\n    bucket: blobs\n    access_key_id: AK\n\
                 \x20   secret_access_key_file: ${D}/secret\n",
            ),
            "t.yaml",
            env,
        )
        .unwrap();
        let o = c.cache.object_store.unwrap();
        assert_eq!(
            (
                o.secret_access_key.as_str(),
                o.region.as_str(),
                o.prefix.as_str()
            ),
            ("from-file", "us-east-1", "")
        );
        // An empty endpoint (`${VAR:-}`) is no tier.
        let off = parse(&section("    endpoint: \"\"\n    bucket: blobs\n")).unwrap();
        assert!(off.cache.object_store.is_none());

        let keys = "    access_key_id: AK\n    secret_access_key: SK\n";
        let https = "    endpoint: \"https://s3.example\"\n";
        let cases = [
            (
                format!("    endpoint: \"http://s3.example\"\n    bucket: blobs\n{keys}"),
                "t.yaml: cache.object_store.endpoint: http://s3.example is plain http: set cache.object_store.allow_http: true",
            ),
            (
                format!("    endpoint: \"https://s3.example/path\"\n    bucket: blobs\n{keys}"),
                "t.yaml: cache.object_store.endpoint: must be an origin",
            ),
            (format!("{https}{keys}"), "t.yaml: cache.object_store.bucket: must be set"),
            (
                format!("{https}    bucket: Blobs_1\n{keys}"),
                "t.yaml: cache.object_store.bucket: \"Blobs_1\" is not a bucket name",
            ),
            (
                format!("{https}    bucket: blobs\n"),
                "t.yaml: cache.object_store: needs credentials",
            ),
            (
                format!("{https}    bucket: blobs\n    access_key_id: AK\n"),
                "t.yaml: cache.object_store.secret_access_key: must be set with",
            ),
            (
                format!("{https}    bucket: blobs\n{keys}    credentials_file: /x\n"),
                "t.yaml: cache.object_store.credentials_file: set cache.object_store.credentials_file or",
            ),
            (
                format!("{https}    bucket: blobs\n    credentials_file: /nonexistent/aws\n"),
                "t.yaml: cache.object_store.credentials_file: /nonexistent/aws: ",
            ),
            (
                format!("{https}    bucket: blobs\n{keys}    prefix: a/../b\n"),
                "t.yaml: cache.object_store.prefix: \"a/../b\"",
            ),
            (
                format!("{https}    bucket: blobs\n{keys}    timeout: 0s\n"),
                "t.yaml: cache.object_store.timeout: must be greater than 0",
            ),
            (
                format!("{https}    bucket: blobs\n{keys}    max_uploads: 0\n"),
                "t.yaml: cache.object_store.max_uploads: must be at least 1",
            ),
            (
                format!("{https}    bucket: blobs\n{keys}    buckets: x\n"),
                "t.yaml: cache.object_store.buckets: unknown field `buckets`",
            ),
        ];
        for (body, want) in cases {
            let got = err(&section(&body));
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn mounts_are_checked_with_their_key_path() {
        let mount = |prefix: &str, extra: &str| {
            format!(
                "{MINIMAL}mounts:\n  - prefix: \"{prefix}\"\n    upstream:\n      endpoint: \"https://hub.internal\"\n{extra}"
            )
        };
        let ok = parse(&mount("/internal", "      token: hf_int\n")).unwrap();
        let all = ok.all_mounts();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].prefix.as_str(), all[1].prefix.as_str()),
            ("/", "/internal")
        );
        assert_eq!(all[1].upstream.token.as_ref().unwrap().expose(), "hf_int");
        assert_eq!(all[1].dir_name().as_deref(), Some("internal"));
        assert_eq!(all[0].dir_name(), None);
        let nested = parse(&mount("/mirrors/site-a", "")).unwrap();
        assert_eq!(
            nested.mounts[0].dir_name().as_deref(),
            Some("mirrors+site-a")
        );
        // HF_TOKEN is the top-level upstream's fallback only.
        let env = Config::from_yaml(&mount("/internal", ""), "t", |_| Some("hf_env".into()));
        assert!(env.unwrap().mounts[0].upstream.token.is_none());

        let two = format!(
            "{}  - prefix: /internal/sub\n    upstream:\n      endpoint: \"https://b.internal\"\n",
            mount("/internal", "")
        );
        let cases = [
            (
                mount("internal", ""),
                "mounts[0].prefix: \"internal\" must start with /",
            ),
            (mount("/", ""), "mounts[0].prefix: \"/\" is not a prefix"),
            (
                mount("/a/../b", ""),
                "mounts[0].prefix: \"/a/../b\" is not a prefix",
            ),
            (
                mount("/a/", ""),
                "mounts[0].prefix: \"/a/\" is not a prefix",
            ),
            (mount("/a b", ""), "mounts[0].prefix:"),
            (
                mount("/api", ""),
                "mounts[0].prefix: \"/api\" would hide the Hub's /api routes",
            ),
            (
                two,
                "mounts[1].prefix: \"/internal/sub\" overlaps mounts[0].prefix \"/internal\"",
            ),
            (
                mount("/x", "      cdn_hosts: [\"bad host/\"]\n"),
                "mounts[0].upstream.cdn_hosts[0]:",
            ),
            (
                mount("/x", "      connect_timeout: 0s\n"),
                "mounts[0].upstream.connect_timeout: must be greater than 0",
            ),
            (
                mount(
                    "/x",
                    "    access:\n      repos:\n        allow: [\"bad glob\"]\n",
                ),
                "mounts[0].access.repos.allow[0]:",
            ),
            (
                mount("/x", "    bogus: 1\n"),
                "mounts[0].bogus: unknown field `bogus`",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(&yaml);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }

    #[test]
    fn settings_bound_at_startup_are_named_when_a_reload_changes_them() {
        let base = parse(MINIMAL).unwrap();
        assert_eq!(base.unreloadable(&parse(MINIMAL).unwrap()), None);
        let rules = format!("{MINIMAL}access:\n  repos:\n    deny: [\"org/*\"]\n");
        assert_eq!(base.unreloadable(&parse(&rules).unwrap()), None);
        let moved = MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:8081");
        assert_eq!(base.unreloadable(&parse(&moved).unwrap()), Some("listen"));
        let smaller = MINIMAL.replace("100GiB", "1GiB");
        assert_eq!(base.unreloadable(&parse(&smaller).unwrap()), Some("cache"));
    }

    #[test]
    fn ca_file_is_read_and_checked_at_load() {
        let with = |path: &str| {
            MINIMAL.replace(
                "endpoint: \"https://huggingface.co\"",
                &format!("endpoint: \"https://huggingface.co\"\n  ca_file: \"{path}\""),
            )
        };
        assert!(parse(MINIMAL).unwrap().upstream.ca_file.is_none());
        let got = err(&with("/nonexistent/ca.pem"));
        assert!(
            got.starts_with("t.yaml: upstream.ca_file: /nonexistent/ca.pem: "),
            "{got}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let got = err(&with(&empty.display().to_string()));
        assert!(
            got.contains("upstream.ca_file: ") && got.contains("no certificate"),
            "{got}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100GiB"), Some(100 << 30));
        assert_eq!(parse_size("1.5 GB"), Some(1_500_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("10kb"), Some(10_000));
        assert_eq!(parse_size("GiB"), None);
        assert_eq!(parse_size("-1GiB"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn warm_and_pin_keys_are_read_and_checked() {
        let cfg = parse(&format!(
            "{MINIMAL}warm:\n  interval: 30s\n  max_rate: 5MB\n  repos:\n    - repo: org/m\n      include: ['*.json']\n    - repo: org/d\n      type: dataset\n      revision: v1\n"
        ))
        .unwrap();
        assert_eq!(cfg.warm.interval, Duration::from_secs(30));
        assert_eq!(cfg.warm.max_rate, Some(5_000_000));
        let repos: Vec<_> = cfg
            .warm
            .repos
            .iter()
            .map(|r| (r.repo.as_str(), r.revision.as_str()))
            .collect();
        assert_eq!(repos, [("org/m", "main"), ("datasets/org/d", "v1")]);
        let defaults = parse(MINIMAL).unwrap();
        assert_eq!(
            (defaults.warm.interval, defaults.warm.max_rate),
            (Duration::from_secs(600), None)
        );
        assert_eq!(defaults.cache.pin.max_pinned, 10 << 30);
        let pinned = parse(&MINIMAL.replace(
            "max_size: \"100GiB\"",
            "max_size: \"100GiB\"\n  pin: ['org/*', 'other/m@v1.0']\n  max_pinned: 1GiB",
        ))
        .unwrap();
        assert_eq!(
            (pinned.cache.pin.patterns.len(), pinned.cache.pin.max_pinned),
            (2, 1 << 30)
        );
        let cases = [
            (
                format!("{MINIMAL}warm:\n  interval: 0s\n"),
                "warm.interval: must be at least 1s",
            ),
            (
                format!("{MINIMAL}warm:\n  max_rate: 0\n"),
                "warm.max_rate: must be greater than 0",
            ),
            (
                format!("{MINIMAL}warm:\n  repos:\n    - repo: 'a b'\n"),
                "warm.repos[0].repo:",
            ),
            (
                format!("{MINIMAL}warm:\n  repos:\n    - repo: org/m\n      type: kernel\n"),
                "warm.repos[0].type:",
            ),
            (
                format!("{MINIMAL}warm:\n  repos:\n    - repo: org/m\n      branch: main\n"),
                "unknown field `branch`",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: \"100GiB\"\n  pin: ['org/m@']",
                ),
                "cache.pin[0]:",
            ),
            (
                format!("{MINIMAL}access:\n  repos:\n    deny: ['org/*']\nwarm:\n  repos:\n    - repo: org/m\n"),
                "warm.repos[0].repo: refused by the mount's access.repos",
            ),
            (
                format!("{MINIMAL}warm:\n  repos:\n    - repo: org/m\n      mount: /internal\n"),
                "warm.repos[0].mount: no such mount: \"/internal\"",
            ),
            (
                MINIMAL.replace(
                    "max_size: \"100GiB\"",
                    "max_size: \"100GiB\"\n  max_pinned: lots",
                ),
                "cache.max_pinned:",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(&yaml);
            assert!(got.contains(want), "{got} does not contain {want}");
        }
    }
}
