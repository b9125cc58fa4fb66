//! What a reload may change, built from the config into the proxy's [`Live`] set: the mounts
//! (upstreams, tokens, rules, and each one's resolver and API snapshots) and the access log.
//! The blob store, eviction and metrics live as long as the process and are shared by all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use http::HeaderValue;
use pingora_cache::eviction::EvictionManager;

use crate::access_log::AccessLog;
use crate::cluster::Cluster;
use crate::config::{self, Config};
use crate::hub::upstream::Upstream;
use crate::metrics::Metrics;
use crate::proxy::{
    DownloadFlow, LfsActions, Live, Mount, PassthroughFlow, Peering, MAX_LFS_ACTIONS,
};
use crate::resolver::{Resolver, ResolverConfig};
use crate::snapshots::{ApiSnapshots, Limits};
use crate::store::BlobStore;
use crate::tls::Certificates;

/// What every mount shares, for the life of the process.
pub struct Shared {
    pub store: &'static BlobStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub metrics: Arc<Metrics>,
}

/// The live set and what it was built from.
pub struct Gateway {
    pub live: Arc<ArcSwap<Live>>,
    shared: Shared,
    /// The config the live set was built from; held while a reload builds the next one, so
    /// two reloads never interleave.
    config: parking_lot::Mutex<Config>,
    /// The file a reload re-reads; `None` for the embedded default.
    path: Option<PathBuf>,
    /// The TLS listener's certificate, re-read by every reload.
    certificates: Option<Arc<Certificates>>,
}

impl Gateway {
    pub fn new(
        cfg: Config,
        path: Option<PathBuf>,
        shared: Shared,
        certificates: Option<Arc<Certificates>>,
    ) -> anyhow::Result<Gateway> {
        let live = build(&cfg, &shared, None)?;
        Ok(Gateway {
            live: Arc::new(ArcSwap::from_pointee(live)),
            shared,
            config: parking_lot::Mutex::new(cfg),
            path,
            certificates,
        })
    }

    /// Re-reads the config file and swaps in what it describes; requests already routed
    /// finish on the mounts they started with. Refused, with the running config kept, when
    /// the file is invalid or changes a setting bound at startup. Logs one line either way and
    /// counts it in `hf_edge_config_reloads_total`.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        self.shared.metrics.config_reload(result.is_ok());
        match &result {
            Ok(path) => log::info!("config reloaded from {}", path.display()),
            Err(e) => log::error!("config reload refused, the running config stays: {e}"),
        }
        result.map(|_| ())
    }

    fn try_reload(&self) -> Result<&Path, String> {
        let path = self.path.as_deref().ok_or(
            "hf-edge runs on the embedded default config (no --config): nothing to re-read",
        )?;
        let next = Config::load(path).map_err(|e| e.to_string())?;
        let mut current = self.config.lock();
        if let Some(key) = current.unreloadable(&next) {
            return Err(format!(
                "{}: {key}: cannot change while running (restart, or upgrade with `hf-edge serve --upgrade`)",
                path.display()
            ));
        }
        let live = build(&next, &self.shared, Some((&current, &self.live.load())))
            .map_err(|e| format!("{}: {e:#}", path.display()))?;
        // Renewed certificate files take effect with the rest; ones that do not load refuse
        // the whole reload, before anything is swapped.
        if let Some(certificates) = &self.certificates {
            certificates
                .reload()
                .map_err(|e| format!("{}: tls.cert_file: {e}", path.display()))?;
        }
        self.live.store(Arc::new(live));
        *current = next;
        Ok(path)
    }

    /// `ops.admin_token` as currently configured.
    pub fn admin_token(&self) -> Option<String> {
        let cfg = self.config.lock();
        cfg.ops.admin_token.as_ref().map(|t| t.expose().to_string())
    }

    /// Every mount's upstream (for readiness and offline mode).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let live = self.live.load();
        live.mounts().iter().map(|m| m.upstream.clone()).collect()
    }
}

/// Builds the live set for `cfg`; with `previous` (the set being replaced and its config), a
/// mount whose prefix stays keeps its API snapshots, and its upstream and resolver too unless
/// their settings changed (its answers, approvals and connections stay warm).
fn build(
    cfg: &Config,
    shared: &Shared,
    previous: Option<(&Config, &Live)>,
) -> anyhow::Result<Live> {
    let cluster = cluster_for(cfg, previous.map(|(_, live)| live), &shared.metrics)?;
    let mut mounts = Vec::new();
    for m in cfg.all_mounts() {
        let before = previous.and_then(|(old_cfg, live)| {
            let c = old_cfg
                .all_mounts()
                .into_iter()
                .find(|o| o.prefix == m.prefix)?;
            let mount = live.mounts().iter().find(|o| o.prefix == m.prefix)?;
            Some((c, mount.clone()))
        });
        let peering = cluster.clone();
        mounts.push(Arc::new(build_mount(cfg, &m, shared, before, peering)?));
    }
    let access_log = AccessLog::open(&cfg.access_log)
        .with_context(|| format!("log.access: cannot open {}", cfg.access_log))?;
    Ok(Live::new(mounts, access_log, cluster))
}

/// The cluster view for `cfg`: the running one while `cluster` is unchanged (its ring and
/// health stay), else a new one (the old one's refresh thread ends when its last request does).
fn cluster_for(
    cfg: &Config,
    previous: Option<&Live>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some(settings) = &cfg.cluster else {
        return Ok(None);
    };
    if let Some(running) = previous.and_then(Live::cluster) {
        if running.settings == *settings {
            return Ok(Some(running.clone()));
        }
    }
    let cluster = Cluster::start(settings.clone(), cfg.upstream.read_timeout, metrics.clone())
        .context("cluster: cannot start the thread that looks up and checks the nodes")?;
    Ok(Some(cluster))
}

/// The key path of a mount's settings in error messages.
fn key_of(m: &config::Mount) -> String {
    match m.prefix.as_str() {
        "/" => String::new(),
        p => format!("mounts[prefix={p}]."),
    }
}

fn resolver_config(cfg: &Config, m: &config::Mount) -> ResolverConfig {
    ResolverConfig {
        revision_ttl: cfg.cache.revision_ttl,
        hold_down: m.upstream.failure_hold_down,
        auth_ttl: m.access.auth_ttl,
        offline_restricted: m.access.offline_restricted,
        meta_max_entries: cfg.cache.meta_max_entries,
    }
}

/// Where a mount keeps its metadata journal and API snapshots: `cache.dir` for `/` (as before
/// mounts existed), `cache.dir/mounts/{name}` for the others.
fn mount_dir(cfg: &Config, m: &config::Mount) -> anyhow::Result<PathBuf> {
    let Some(name) = m.dir_name() else {
        return Ok(cfg.cache.dir.clone());
    };
    let dir = cfg.cache.dir.join("mounts").join(name);
    create_private_dir(&dir, cfg.cache.group_access)
        .with_context(|| format!("cache.dir: cannot create {}", dir.display()))?;
    Ok(dir)
}

fn create_private_dir(dir: &Path, group_access: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::durable::restrict_dir(dir, group_access)?;
    if let Some(parent) = dir.parent() {
        crate::durable::restrict_dir(parent, group_access)?;
    }
    Ok(())
}

fn build_mount(
    cfg: &Config,
    m: &config::Mount,
    shared: &Shared,
    before: Option<(config::Mount, Arc<Mount>)>,
    cluster: Option<Arc<Cluster>>,
) -> anyhow::Result<Mount> {
    let key = key_of(m);
    let settings = m.upstream.settings();
    let resolver_cfg = resolver_config(cfg, m);
    let dir = mount_dir(cfg, m)?;
    let kept = before.as_ref().filter(|(old, _)| {
        old.upstream.settings() == settings && resolver_config(cfg, old) == resolver_cfg
    });
    let (upstream, resolver) = match kept {
        Some((_, old)) => (old.upstream.clone(), old.downloads.resolver.clone()),
        None => {
            let upstream = Arc::new(Upstream::new(settings));
            let resolver = Resolver::new(
                upstream.clone(),
                shared.metrics.clone(),
                resolver_cfg,
                Some(&dir),
            )
            .with_context(|| format!("cache.dir: cannot open {}/meta.jsonl", dir.display()))?;
            (upstream, Arc::new(resolver))
        }
    };
    let snapshots = match &before {
        Some((_, old)) => old.passthrough.snapshots.clone(),
        None => {
            let limits = Limits {
                max_bytes: cfg.cache.api_snapshots_max_size,
                max_files: cfg.cache.api_snapshots_max_files,
            };
            let snapshots = ApiSnapshots::open(&dir, limits, shared.metrics.clone())
                .with_context(|| format!("cache.dir: cannot open {}/api", dir.display()))?;
            Arc::new(snapshots)
        }
    };
    // Kept over a reload while their lifetime bound stands: clients are mid-clone on them.
    let lfs_actions = match &before {
        Some((_, old)) if old.passthrough.lfs_actions.max_ttl == m.access.auth_ttl => {
            old.passthrough.lfs_actions.clone()
        }
        _ => Arc::new(LfsActions::new(m.access.auth_ttl, MAX_LFS_ACTIONS)),
    };
    let site_auth = match &m.upstream.token {
        Some(t) => Some(
            HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .with_context(|| format!("{key}upstream.token: not a valid header value"))?,
        ),
        None => None,
    };
    let mount_base = match m.prefix.as_str() {
        "/" => String::new(),
        p => p.to_string(),
    };
    Ok(Mount {
        prefix: m.prefix.clone(),
        upstream: upstream.clone(),
        policy: m.access.clone(),
        site_auth,
        downloads: DownloadFlow {
            upstream: upstream.clone(),
            resolver: resolver.clone(),
            store: shared.store,
            eviction: shared.eviction,
            max_blob_size: cfg.cache.max_size,
            metrics: shared.metrics.clone(),
            peering: cluster.map(|cluster| Peering {
                cluster,
                mount_base: mount_base.clone(),
            }),
        },
        passthrough: PassthroughFlow {
            public_url: cfg.public_url.as_ref().map(ToString::to_string),
            mount_base,
            upstream,
            resolver,
            snapshots,
            metrics: shared.metrics.clone(),
            lfs_actions,
        },
    })
}

/// Reloads on SIGHUP, from a thread of its own. The handler is installed before this returns,
/// so a SIGHUP after startup never takes the default action (ending the process).
pub fn reload_on_sighup(gateway: Arc<Gateway>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hangups = rt
        .block_on(async { signal(SignalKind::hangup()) })
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            rt.block_on(async {
                while hangups.recv().await.is_some() {
                    let g = gateway.clone();
                    let _ = tokio::task::spawn_blocking(move || g.reload()).await;
                }
            })
        })?;
    Ok(())
}
