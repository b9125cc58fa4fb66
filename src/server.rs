//! Builds the Pingora server from a [`Config`]: the store (and how its fills are bounded),
//! eviction, resolver, proxy service, the operator endpoints and warm jobs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora_cache::eviction::{simple_lru, EvictionManager};

use crate::client::ProxyHeaderBeforeTls;
use crate::config::Config;
use crate::downstream;
use crate::gateway::{Gateway, Shared};
use crate::health::HubProbe;
use crate::metrics::Metrics;
use crate::ops::OpsApp;
use crate::proxy::{EdgeProxy, RequestIds};
use crate::status::StatusSource;
use crate::store::{BlobStore, FillPolicy, ObjectTier};
use crate::tls::Certificates;
use crate::warm::{Jobs, Schedule, Throttle, Warmer};

/// The read buffer of a client connection (see where the listener is added).
const CLIENT_READ_BUFFER: usize = 4096;

/// How long a process started with `--upgrade` waits for the running one's sockets (it sends
/// them once it gets SIGQUIT), and the running one tries to hand them over, in seconds.
const UPGRADE_WAIT_SECS: usize = 30;

/// Where the running process hands its listening sockets to its successor: one path per
/// store, so two hf-edge on one host never take each other's.
pub fn upgrade_sock(cfg: &Config) -> PathBuf {
    cfg.cache.dir.join("upgrade.sock")
}

/// Starts hf-edge and serves until a signal stops it. `config_path` is the file a reload
/// (SIGHUP, `POST /admin/reload`) re-reads; `None`: the embedded default, not reloadable.
/// With `upgrade`, the listening sockets are taken from the running hf-edge (see
/// [`upgrade_sock`]) once the store and mounts are ready.
pub fn run(cfg: Config, config_path: Option<PathBuf>, upgrade: bool) -> anyhow::Result<()> {
    crate::durable::restrict_new_files(cfg.cache.group_access);
    let mut store = BlobStore::open(&cfg.cache.dir)
        .with_context(|| format!("cache.dir: cannot open {}", cfg.cache.dir.display()))?;
    crate::durable::restrict_dir(&cfg.cache.dir, cfg.cache.group_access)
        .with_context(|| format!("cache.dir: cannot restrict {}", cfg.cache.dir.display()))?;
    let counts = store.stats.counts();
    log::info!(
        "cache {}: {} blob(s), {} bytes",
        cfg.cache.dir.display(),
        counts.objects,
        counts.bytes
    );
    // The store's fill tasks and Pingora's `Storage` API take `&'static` store and eviction;
    // they live as long as the process.
    let eviction: &'static simple_lru::Manager = Box::leak(Box::new(simple_lru::Manager::new(
        cfg.cache.max_size as usize,
    )));
    let eviction_dyn: &'static (dyn EvictionManager + Sync) = eviction;
    store.set_pins(cfg.cache.pin.clone()).with_context(|| {
        format!(
            "cache.dir: cannot read {}/refs.jsonl",
            cfg.cache.dir.display()
        )
    })?;
    store.set_memory_limits(cfg.cache.memory);
    store.set_fill_policy(FillPolicy {
        max_fills: cfg.cache.max_fills,
        max_size: cfg.cache.max_size,
        eviction: Some(eviction_dyn),
        ..FillPolicy::default()
    });
    if let Some(settings) = &cfg.cache.object_store {
        let tier =
            ObjectTier::new(settings).map_err(|e| anyhow::anyhow!("cache.object_store: {e}"))?;
        log::info!("object store tier: {}", tier.location());
        store.set_tier(tier);
    }
    let store: &'static BlobStore = Box::leak(Box::new(store));
    store.start_index().with_context(|| {
        format!(
            "cache.dir: cannot own the store index in {}",
            cfg.cache.dir.display()
        )
    })?;

    let metrics = Arc::new(Metrics::register(
        prometheus::Registry::new(),
        cfg.cache.max_size,
    )?);
    let shared = Shared {
        store,
        eviction: eviction_dyn,
        metrics: metrics.clone(),
    };
    let certificates = match &cfg.tls {
        Some(tls) => Some(Arc::new(
            Certificates::load(&tls.cert_file, &tls.key_file)
                .map_err(|m| anyhow::anyhow!("tls.cert_file: {m}"))?,
        )),
        None => None,
    };
    let gateway = Arc::new(Gateway::new(
        cfg.clone(),
        config_path,
        shared,
        certificates.clone(),
    )?);
    crate::gateway::reload_on_sighup(gateway.clone())?;
    release_boot_memory();
    let live = gateway.live.clone();
    let upstreams = move || {
        let live = live.load();
        let mounts = live.mounts().iter();
        mounts
            .map(|m| (m.prefix.clone(), m.upstream.clone()))
            .collect()
    };
    let hub = HubProbe::new(Box::new(upstreams), metrics.clone());
    let status = Arc::new(StatusSource::new(
        store,
        metrics.clone(),
        hub.clone(),
        cfg.public_url.as_ref().map(ToString::to_string),
        cfg.listen,
        cfg.cache.max_size,
    ));
    // Warm jobs fetch through the live mount they name (`/` unless told otherwise).
    let warmer = Arc::new(Warmer {
        live: gateway.live.clone(),
        store,
        metrics: metrics.clone(),
        throttle: cfg.warm.max_rate.map(|r| Arc::new(Throttle::new(r))),
        max_blob_size: cfg.cache.max_size,
        jobs: Jobs::open(&cfg.cache.dir).with_context(|| {
            format!(
                "cache.dir: cannot read {}/warm-jobs.json",
                cfg.cache.dir.display()
            )
        })?,
    });
    let schedule = Schedule {
        warmer: warmer.clone(),
        interval: cfg.warm.interval,
        repos: cfg.warm.repos.clone(),
    };
    let proxy = EdgeProxy {
        live: gateway.live.clone(),
        metrics: metrics.clone(),
        request_ids: RequestIds::default(),
        trusted_proxies: cfg.trusted_proxies.clone(),
        status,
    };

    let conf = ServerConf {
        threads: cfg.threads,
        grace_period_seconds: Some(cfg.shutdown_grace.as_secs()),
        upgrade_sock: upgrade_sock(&cfg).display().to_string(),
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_SECS),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        log::info!(
            "upgrade: waiting up to {UPGRADE_WAIT_SECS}s for the running hf-edge's sockets on {} (send it SIGQUIT)",
            upgrade_sock(&cfg).display()
        );
    }
    server.bootstrap();
    notify_systemd();

    // Admit what is on disk, least recently used first, and delete what no longer fits, in the
    // background: a store of millions of blobs does not hold up serving (the hits need only
    // the index; fills admitted meanwhile rank as the most recently used, as they are).
    std::thread::Builder::new()
        .name("boot-eviction".into())
        .spawn(move || {
            let evict = store.seed_eviction(eviction_dyn);
            if !evict.is_empty() {
                log::info!("evicting {} blob(s) over cache.max_size", evict.len());
                store.evict(evict);
            }
        })?;

    let proxy = pingora_proxy::http_proxy(&server.configuration, proxy);
    let limits = downstream::Limits {
        header_timeout: cfg.limits.header_timeout,
        max_connections: cfg.limits.max_connections,
    };
    let bounded = downstream::Bounded::new(proxy, limits, metrics.clone())
        .trusting(cfg.trusted_proxies.clone());
    let mut svc = Service::new("hf-edge proxy".to_string(), bounded);
    // Pingora gives each accepted connection a 64 KiB read buffer for its whole life by
    // default; requests here are headers (read into a buffer of Pingora's own) and rarely a
    // body, so 10k idle keep-alive connections would hold hundreds of MiB for nothing.
    svc.add_listener(
        ListenerConfig::tcp(cfg.listen.to_string())
            .l4_buffer(L4BufferSettings::default().read(CLIENT_READ_BUFFER)),
    );
    if let (Some(tls), Some(certificates)) = (&cfg.tls, certificates) {
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(certificates);
        settings.enable_h2();
        svc.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        if !cfg.trusted_proxies.is_empty() {
            svc.endpoints()
                .set_pre_tls_callback(Arc::new(ProxyHeaderBeforeTls {
                    trusted: cfg.trusted_proxies.clone(),
                    timeout: cfg.limits.header_timeout,
                }));
        }
    }
    let mut ops = Service::new(
        "hf-edge ops".to_string(),
        HttpServer::new_app(OpsApp {
            metrics,
            store,
            hub: hub.clone(),
            gateway,
            warmer,
        }),
    );
    ops.add_tcp(&cfg.metrics.listen.to_string());
    server.add_service(svc);
    server.add_service(ops);
    server.add_service(background_service("warm", schedule));
    log::info!(
        "hf-edge listening on {}{} (metrics on {}), upstream {}",
        cfg.listen,
        cfg.tls
            .as_ref()
            .map_or_else(String::new, |t| format!(" and {} (TLS)", t.listen)),
        cfg.metrics.listen,
        cfg.upstream.endpoint
    );
    server.run(RunArgs::default());
    // Every runtime has stopped, so no fill commits any more: the index written now is whole.
    store.close_index();
    std::process::exit(0)
}

/// Gives back to the system the heap that reading the journals at boot used and freed (a
/// million `meta.jsonl` lines are parsed, deduplicated and rewritten): glibc keeps freed small
/// allocations for reuse, which would leave hundreds of MiB resident for nothing.
fn release_boot_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells systemd (`Type=notify` with `NotifyAccess=all`) that this process is ready and is the
/// service's main process, so that after an upgrade started by `ExecReload` the unit follows
/// the new process while the old one drains. Sent once the sockets are ours (an upgrade) or
/// about to be bound (a fresh start). Nothing to do outside systemd (no `NOTIFY_SOCKET`).
fn notify_systemd() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let state = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let addr = match target.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        log::warn!("cannot notify systemd at {}: {e}", target.display());
    }
}
