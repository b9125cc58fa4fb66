//! The status page an operator opens first: `GET /` on the client listener (HTML, readable
//! without JavaScript: the page has none) and the same data at `GET /status.json`. How to point
//! each client at this edge, the version, the upstream's state, offline mode, the store's fill,
//! hit ratio and bytes saved, top repos by bytes and the fills in flight.
//!
//! The URL shown is `public_url`, else the request's `Host` (and `X-Forwarded-Proto`), used for
//! display only and only when it is a plain host name; every text on the page is HTML-escaped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::health::{HubProbe, UpstreamState};
use crate::metrics::{Metrics, Traffic};
use crate::store::{admin, BlobStore, FillView, PinPolicy};

/// Repos listed, most bytes first.
const TOP_REPOS: usize = 10;
/// How long the repo list (read from `refs.jsonl` and the blob directory) is reused.
const REPOS_EVERY: Duration = Duration::from_secs(30);

/// Which document a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Html,
    Json,
}

impl Page {
    /// `/` and `/status.json`: no Hub client asks for either.
    pub fn at(path: &str) -> Option<Page> {
        match path {
            "/" => Some(Page::Html),
            "/status.json" => Some(Page::Json),
            _ => None,
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub commit: &'static str,
    /// The URL clients set as `HF_ENDPOINT`.
    pub url: String,
    pub offline: bool,
    /// Each mount's upstream, the top-level one (`/`) first.
    pub upstreams: Vec<UpstreamState>,
    pub store: StoreStatus,
    pub traffic: TrafficStatus,
    pub top_repos: Vec<RepoBytes>,
    pub fills: Vec<FillView>,
    pub clients: Vec<ClientSetup>,
}

#[derive(Debug, Serialize)]
pub struct StoreStatus {
    pub dir: String,
    pub objects: u64,
    pub bytes: u64,
    pub max_size: u64,
    pub fill_percent: f64,
    /// Reserved under `max_size` by fills in flight.
    pub reserved_bytes: u64,
    /// `cache.object_store`, when one is configured.
    pub object_store: Option<ObjectStoreStatus>,
}

#[derive(Debug, Serialize)]
pub struct ObjectStoreStatus {
    /// `endpoint/bucket/prefix`.
    pub location: String,
    #[serde(flatten)]
    pub counts: crate::metrics::TierCounts,
}

#[derive(Debug, Serialize)]
pub struct TrafficStatus {
    pub lookups: serde_json::Map<String, serde_json::Value>,
    /// Lookups answered from the store; `null` before the first.
    pub hit_ratio: Option<f64>,
    /// File bytes sent from the store: what did not cross the WAN again.
    pub bytes_saved: u64,
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoBytes {
    pub repo: String,
    pub files: u64,
    pub bytes: u64,
}

/// How one client is pointed at this edge: a shell snippet with its URL.
#[derive(Debug, Serialize)]
pub struct ClientSetup {
    pub id: &'static str,
    pub name: &'static str,
    pub snippet: String,
}

/// Where the page's data comes from.
pub struct StatusSource {
    pub store: &'static BlobStore,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<HubProbe>,
    /// `public_url`, as configured at startup.
    pub public_url: Option<String>,
    pub listen: SocketAddr,
    pub max_size: u64,
    repos: tokio::sync::Mutex<Option<(Instant, Vec<RepoBytes>)>>,
}

impl StatusSource {
    pub fn new(
        store: &'static BlobStore,
        metrics: Arc<Metrics>,
        hub: Arc<HubProbe>,
        public_url: Option<String>,
        listen: SocketAddr,
        max_size: u64,
    ) -> StatusSource {
        StatusSource {
            store,
            metrics,
            hub,
            public_url,
            listen,
            max_size,
            repos: tokio::sync::Mutex::new(None),
        }
    }

    /// The status, for a request that came with these `Host` and `X-Forwarded-Proto` headers.
    pub async fn status(&self, host: Option<&str>, proto: Option<&str>) -> Status {
        let url = base_url(self.public_url.as_deref(), host, proto, self.listen);
        let upstreams = self.hub.states();
        let counts = self.store.stats.counts();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("HF_EDGE_GIT_COMMIT"),
            // Offline mode is switched for every mount at once.
            offline: upstreams
                .iter()
                .all(|u| u.state == crate::health::HubState::Offline),
            upstreams,
            store: StoreStatus {
                dir: self.store.layout().root().display().to_string(),
                objects: counts.objects,
                bytes: counts.bytes,
                max_size: self.max_size,
                fill_percent: percent(counts.bytes, self.max_size),
                reserved_bytes: counts.reserved_bytes,
                object_store: self.store.tier().map(|t| ObjectStoreStatus {
                    location: t.location().to_string(),
                    counts: t.stats.counts(),
                }),
            },
            traffic: traffic(&self.metrics.traffic()),
            top_repos: self.top_repos().await,
            fills: self.store.fills_in_flight(),
            clients: clients(&url),
            url,
        }
    }

    /// The repos with most bytes, recomputed at most every [`REPOS_EVERY`] (it reads the
    /// whole refs index); an unreadable index shows none rather than failing the page.
    async fn top_repos(&self) -> Vec<RepoBytes> {
        let mut cached = self.repos.lock().await;
        if let Some((at, repos)) = &*cached {
            if at.elapsed() < REPOS_EVERY {
                return repos.clone();
            }
        }
        let root = self.store.layout().root().to_path_buf();
        let max_size = self.max_size;
        // Pins do not change bytes by repo: the default policy spares reading them.
        let repos = tokio::task::spawn_blocking(move || {
            admin::stats(&root, max_size, &PinPolicy::default())
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map(|stats| {
            stats
                .repos
                .into_iter()
                .filter(|r| r.repo != admin::UNKNOWN_REPO)
                .take(TOP_REPOS)
                .map(|r| RepoBytes {
                    repo: r.repo,
                    files: r.files,
                    bytes: r.bytes,
                })
                .collect()
        })
        .unwrap_or_else(|e| {
            log::warn!("status page: cannot read the store's repo index: {e:#}");
            Vec::new()
        });
        *cached = Some((Instant::now(), repos.clone()));
        repos
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

fn traffic(t: &Traffic) -> TrafficStatus {
    TrafficStatus {
        lookups: t
            .lookups
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        hit_ratio: t.hit_ratio(),
        bytes_saved: t.sent_from_cache,
        bytes_from_upstream: t.sent_from_upstream,
    }
}

/// The URL clients reach this edge at: `public_url`; else the request's `Host` when it is a
/// plain `name[:port]` (anything else could be an injection attempt, and is not shown); else
/// the listen address.
pub fn base_url(
    public_url: Option<&str>,
    host: Option<&str>,
    proto: Option<&str>,
    listen: SocketAddr,
) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_string();
    }
    let plain = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    };
    match host.filter(plain) {
        Some(h) => {
            let scheme = if proto == Some("https") {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{h}")
        }
        None => format!("http://{listen}"),
    }
}

/// The clients the page explains, each with a snippet carrying `url`.
pub fn clients(url: &str) -> Vec<ClientSetup> {
    let setup = |id, name, snippet: String| ClientSetup { id, name, snippet };
    vec![
        setup(
            "huggingface_hub",
            "huggingface_hub and the hf CLI",
            format!("export HF_ENDPOINT={url}\nhf download openai-community/gpt2"),
        ),
        setup(
            "transformers",
            "transformers",
            format!(
                "export HF_ENDPOINT={url}\npython -c 'from transformers import AutoModel; \
                 AutoModel.from_pretrained(\"openai-community/gpt2\")'"
            ),
        ),
        setup(
            "datasets",
            "datasets",
            format!(
                "export HF_ENDPOINT={url}\npython -c 'from datasets import load_dataset; \
                 load_dataset(\"stanfordnlp/imdb\")'"
            ),
        ),
        setup(
            "git",
            "git with git-lfs",
            format!("git lfs install\ngit clone {url}/openai-community/gpt2"),
        ),
        setup(
            "hf_transfer",
            "hf_transfer",
            format!(
                "export HF_ENDPOINT={url} HF_HUB_ENABLE_HF_TRANSFER=1\n\
                 hf download openai-community/gpt2"
            ),
        ),
        setup(
            "tei",
            "Text Embeddings Inference (TEI)",
            format!(
                "docker run -p 8081:80 -e HF_ENDPOINT={url} \\\n  \
                 ghcr.io/huggingface/text-embeddings-inference:cpu-latest \\\n  \
                 --model-id BAAI/bge-small-en-v1.5"
            ),
        ),
        setup(
            "vllm",
            "vLLM",
            format!("HF_ENDPOINT={url} vllm serve Qwen/Qwen2.5-0.5B-Instruct"),
        ),
        setup(
            "llama_cpp",
            "llama.cpp",
            format!("HF_ENDPOINT={url} llama-server -hf ggml-org/gemma-3-1b-it-GGUF"),
        ),
    ]
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A bar for a share in 0..=100 (a `<progress>` element: drawn without script or images).
fn bar(id: &str, value: f64) -> String {
    format!(
        "<progress id=\"{}\" max=\"100\" value=\"{:.1}\">{:.1} %</progress>",
        escape(id),
        value.clamp(0.0, 100.0),
        value
    )
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:62rem;\
padding:0 1rem;color:#1d2330}h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid \
#d6dae3}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .6rem;\
border-bottom:1px solid #eceef3;vertical-align:top}pre{background:#f4f5f8;padding:.6rem;margin:0;\
white-space:pre-wrap;user-select:all}progress{width:14rem;height:1rem}.muted{color:#5b6474}\
.state-reachable{color:#11772d}.state-failing,.state-unreachable{color:#b3261e;font-weight:bold}\
.state-offline,.state-unknown{color:#8a5a00}.num{text-align:right;font-variant-numeric:tabular-nums}";

/// The page. Every value is escaped; the page loads nothing and runs no script.
/// The store table's row for `cache.object_store`.
fn object_store_row(o: &ObjectStoreStatus) -> String {
    let c = &o.counts;
    format!(
        "<tr><th>object store</th><td id=\"object-store\">{}: {} fills served from it ({}), \
         {} missed, {} failed, {} corrupt; {} uploaded ({}), {} failed, {} dropped</td></tr>",
        escape(&o.location),
        c.reads_hit,
        human_bytes(c.bytes_read),
        c.reads_miss,
        c.reads_error + c.reads_skipped,
        c.reads_corrupt,
        c.uploads_ok,
        human_bytes(c.bytes_written),
        c.uploads_failed,
        c.uploads_dropped,
    )
}

pub fn html(s: &Status) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let url = escape(&s.url);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>hf-edge status</title><style>{STYLE}</style></head><body>\n\
         <h1>hf-edge</h1><p class=\"muted\">An edge cache for the Hugging Face Hub. Version \
         <span id=\"version\">{}</span> ({}). This page as JSON: \
         <a href=\"/status.json\">/status.json</a>.</p>\n\
         <p>Endpoint for clients: <code id=\"endpoint\">{url}</code></p>\n",
        escape(s.version),
        escape(s.commit),
    );

    h.push_str("<h2>Point clients at this edge</h2>\n<table id=\"clients\">\n");
    for c in &s.clients {
        let _ = writeln!(
            h,
            "<tr data-client=\"{}\"><th>{}</th><td><pre>{}</pre></td></tr>",
            escape(c.id),
            escape(c.name),
            escape(&c.snippet)
        );
    }
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Upstreams</h2>\n<table id=\"upstreams\"><tr><th>mount</th><th>URL</th>\
         <th>state</th></tr>\n",
    );
    for u in &s.upstreams {
        let _ = writeln!(
            h,
            "<tr data-upstream=\"{mount}\"><td>{mount}</td><td>{}</td>\
             <td class=\"state-{label}\" data-state=\"{label}\">{}</td></tr>",
            escape(&u.url),
            escape(&u.detail),
            mount = escape(&u.mount),
            label = u.state.label(),
        );
    }
    let _ = write!(
        h,
        "</table>\n<p>Offline mode: <strong id=\"offline\">{}</strong></p>\n",
        if s.offline {
            "on (the Hub is never contacted; cached content is served)"
        } else {
            "off"
        }
    );

    let st = &s.store;
    let _ = write!(
        h,
        "<h2>Store</h2>\n<table id=\"store\">\
         <tr><th>directory</th><td>{}</td></tr>\
         <tr><th>fill</th><td>{} <span id=\"store-fill\">{} of {}</span> ({:.1} %)</td></tr>\
         <tr><th>blobs</th><td id=\"store-objects\">{}</td></tr>\
         <tr><th>reserved by fills</th><td>{}</td></tr>{}</table>\n",
        escape(&st.dir),
        bar("store-bar", st.fill_percent),
        human_bytes(st.bytes),
        human_bytes(st.max_size),
        st.fill_percent,
        st.objects,
        human_bytes(st.reserved_bytes),
        st.object_store
            .as_ref()
            .map_or_else(String::new, object_store_row),
    );

    let t = &s.traffic;
    let ratio = match t.hit_ratio {
        Some(r) => format!("{:.1} %", r * 100.0),
        None => "no downloads yet".to_string(),
    };
    let lookups: Vec<String> = t
        .lookups
        .iter()
        .map(|(k, v)| format!("{} {}", escape(k), v))
        .collect();
    let _ = write!(
        h,
        "<h2>Traffic since start</h2>\n<table id=\"traffic\">\
         <tr><th>hit ratio</th><td id=\"hit-ratio\">{ratio}</td></tr>\
         <tr><th>bytes saved (sent from the store)</th><td id=\"bytes-saved\">{}</td></tr>\
         <tr><th>bytes fetched for clients</th><td>{}</td></tr>\
         <tr><th>downloads by result</th><td>{}</td></tr></table>\n",
        human_bytes(t.bytes_saved),
        human_bytes(t.bytes_from_upstream),
        lookups.join(", "),
    );

    h.push_str("<h2>Top repos by bytes</h2>\n");
    if s.top_repos.is_empty() {
        h.push_str("<p id=\"top-repos\" class=\"muted\">Nothing cached yet.</p>\n");
    } else {
        h.push_str(
            "<table id=\"top-repos\"><tr><th>repo</th><th class=\"num\">files</th>\
             <th class=\"num\">bytes</th><th>share of the store</th></tr>",
        );
        for r in &s.top_repos {
            let _ = writeln!(
                h,
                "<tr data-repo=\"{repo}\"><td>{repo}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                r.files,
                human_bytes(r.bytes),
                bar("", percent(r.bytes, st.bytes)),
                repo = escape(&r.repo),
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Fills in progress</h2>\n");
    if s.fills.is_empty() {
        h.push_str("<p id=\"fills\" class=\"muted\">None.</p>\n");
    } else {
        h.push_str(
            "<table id=\"fills\"><tr><th>blob</th><th>progress</th>\
             <th class=\"num\">readers</th></tr>\n",
        );
        for f in &s.fills {
            let done = percent(f.written, f.size);
            let _ = writeln!(
                h,
                "<tr data-blob=\"{blob}\"><td><code>{blob}</code></td>\
                 <td>{} {} of {} ({done:.1} %)</td><td class=\"num\">{}</td></tr>",
                bar("", done),
                human_bytes(f.written),
                human_bytes(f.size),
                f.readers,
                blob = escape(&f.blob),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HubState;

    fn listen() -> SocketAddr {
        "0.0.0.0:8080".parse().unwrap()
    }

    #[test]
    fn the_url_is_public_url_else_a_plain_host_else_the_listen_address() {
        assert_eq!(
            base_url(Some("https://hf.example.org/"), Some("x"), None, listen()),
            "https://hf.example.org"
        );
        assert_eq!(
            base_url(None, Some("edge.lan:8080"), None, listen()),
            "http://edge.lan:8080"
        );
        assert_eq!(
            base_url(None, Some("edge.lan"), Some("https"), listen()),
            "https://edge.lan"
        );
        assert_eq!(
            base_url(None, Some("[::1]:8080"), None, listen()),
            "http://[::1]:8080"
        );
        for hostile in ["a\"><script>alert(1)</script>", "a b", "a/b", "", "x'y"] {
            assert_eq!(
                base_url(None, Some(hostile), None, listen()),
                "http://0.0.0.0:8080",
                "{hostile:?}"
            );
        }
        assert_eq!(base_url(None, None, None, listen()), "http://0.0.0.0:8080");
    }

    #[test]
    fn every_value_on_the_page_is_escaped() {
        let evil = "<img src=x onerror=alert(1)>\"'&";
        let status = Status {
            version: "1",
            commit: "c",
            url: evil.to_string(),
            offline: false,
            upstreams: vec![UpstreamState {
                mount: evil.to_string(),
                url: evil.to_string(),
                state: HubState::Unreachable {
                    error: evil.to_string(),
                },
                detail: evil.to_string(),
            }],
            store: StoreStatus {
                dir: evil.to_string(),
                objects: 1,
                bytes: 10,
                max_size: 100,
                fill_percent: 10.0,
                reserved_bytes: 0,
                object_store: Some(ObjectStoreStatus {
                    location: evil.to_string(),
                    counts: Default::default(),
                }),
            },
            traffic: traffic(&Traffic {
                lookups: vec![("hit", 3), ("miss", 1)],
                from_store: 3,
                sent_from_cache: 3 << 20,
                sent_from_upstream: 1 << 20,
            }),
            top_repos: vec![RepoBytes {
                repo: evil.to_string(),
                files: 1,
                bytes: 10,
            }],
            fills: vec![FillView {
                blob: evil.to_string(),
                size: 100,
                written: 25,
                readers: 1,
            }],
            clients: clients(evil),
        };
        let page = html(&status);
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("\"'&"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
        assert!(!page.contains("<script"));
        assert!(page.contains("id=\"hit-ratio\">75.0 %<"));
        assert!(page.contains("id=\"bytes-saved\">3.0 MiB<"));
        assert!(page.contains("<progress id=\"\" max=\"100\" value=\"25.0\">"));
        assert_eq!(page.matches("<tr data-client=").count(), 8);
    }

    #[test]
    fn each_client_snippet_carries_the_url() {
        for c in clients("http://edge.lan:8080") {
            assert!(c.snippet.contains("http://edge.lan:8080"), "{}", c.id);
        }
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
    }
}
