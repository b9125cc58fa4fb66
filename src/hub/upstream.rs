//! Where requests go upstream: which redirect targets may be followed (and with which
//! credentials), and a small client for the metadata requests hf-edge makes itself.
//!
//! It uses Pingora's own connector, so metadata requests share the proxy's TLS stack and
//! connection pool instead of bringing a second HTTP client.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::tls::CaType;
use pingora::tls::{load_native_certs, CertificateDer, RootCertStore};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use pingora::ErrorType;

use super::egress::{EgressProxy, Tunnel};
use super::url::{Origin, Url};

/// A host name, or `*.suffix` for any subdomain of `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let p = s.trim().to_ascii_lowercase();
        let name = p.strip_prefix("*.").unwrap_or(&p);
        let ok = !name.is_empty()
            && !name.contains('*')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if ok {
            Ok(HostPattern(p))
        } else {
            Err(format!("{s:?} is not a host name or a *.domain pattern"))
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => host == self.0,
        }
    }
}

/// Where a URL points, which decides what credentials it may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostClass {
    /// The configured Hub's exact origin: gets the request's `Authorization`.
    Hub,
    /// A Hub CDN host, or the Hub's host on another port or scheme: followed, signed URLs,
    /// never `Authorization`.
    Cdn,
    /// Anywhere else: not followed.
    Foreign,
}

/// An upstream failure, before any HTTP status from the Hub.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {host} timed out")]
    Timeout { host: String },
    #[error("cannot reach upstream {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("upstream redirected to {host}, which is not the Hub or an allowed CDN host")]
    ForeignRedirect { host: String },
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
    #[error("upstream redirected more than {0} times")]
    TooManyRedirects(usize),
}

impl UpstreamError {
    /// 504 for timeouts, 502 for everything else: never a 4xx, which clients would take as
    /// the Hub's final word.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Timeout { .. } => 504,
            _ => 502,
        }
    }

    /// Maps a Pingora error on an upstream connection.
    pub fn from_pingora(host: &str, e: &pingora::Error) -> UpstreamError {
        use ErrorType::*;
        let host = host.to_string();
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                UpstreamError::Timeout { host }
            }
            _ => UpstreamError::Unreachable {
                host,
                reason: explain(e),
            },
        }
    }
}

/// The error's type and the contexts and causes under it, e.g. `TLSHandshakeFailure: TLS
/// connect() failed: ... invalid peer certificate: UnknownIssuer, SNI: ...`: an operator must
/// see why an upstream was refused, not only that it was.
fn explain(e: &pingora::Error) -> String {
    let mut parts = vec![e.etype().as_str().to_string()];
    let mut level = Some(e);
    for _ in 0..8 {
        let Some(err) = level.take() else { break };
        parts.extend(err.context.as_ref().map(|c| c.as_str().trim().to_string()));
        if let Some(cause) = err.cause.as_deref() {
            match cause.downcast_ref::<Box<pingora::Error>>() {
                Some(inner) => level = Some(inner),
                // Pingora's placeholder cause of a failed TLS handshake says only where from.
                None => parts.push(cause.to_string()),
            }
        }
    }
    parts.retain(|p| !p.is_empty() && !p.starts_with("local address "));
    parts.dedup();
    parts.join(": ")
}

/// Certificate authorities trusted for upstream TLS besides the system's (`upstream.ca_file`):
/// the DER certificates of a PEM bundle, each checked to be usable as a trust anchor.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    certs: Vec<Vec<u8>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

impl CaBundle {
    /// Reads a PEM bundle: one or more `CERTIFICATE` blocks (text around them is ignored; any
    /// other block, a private key say, is an error).
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = pem_certificates(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            ));
        }
        for (i, der) in certs.iter().enumerate() {
            let usable = RootCertStore::empty()
                .add(CertificateDer::from(der.as_slice()))
                .map_err(|e| e.to_string())
                .and_then(|()| parse(der).map(drop));
            usable.map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
        }
        Ok(CaBundle {
            path: path.to_path_buf(),
            certs,
        })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// A certificate in the form Pingora's per-peer trust takes. Its parser panics on what it
/// cannot read, hence the catch: certificates are parsed once, at startup.
fn parse(der: &[u8]) -> Result<WrappedX509, String> {
    let der = der.to_vec();
    std::panic::catch_unwind(move || WrappedX509::new(der, parse_x509))
        .map_err(|_| "not a certificate X.509 parsing accepts".to_string())
}

/// The trust roots for upstream TLS with a CA bundle: the system's (which honour
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`) and the bundle's.
fn trust_roots(bundle: &CaBundle) -> Arc<CaType> {
    let system = load_native_certs().unwrap_or_else(|e| {
        log::warn!(
            "upstream TLS: cannot load the system's certificates ({e}); trusting only {}",
            bundle.path.display()
        );
        Vec::new()
    });
    let system = system.iter().filter_map(|der| {
        RootCertStore::empty().add(der.clone()).ok()?;
        parse(der.as_ref()).ok()
    });
    let roots: Vec<WrappedX509> = system
        .chain(bundle.certs.iter().filter_map(|der| parse(der).ok()))
        .collect();
    log::info!(
        "upstream TLS: {} trusted certificates, {} of them from {}",
        roots.len(),
        bundle.len(),
        bundle.path.display()
    );
    roots.into()
}

/// The DER bytes of each `CERTIFICATE` block of a PEM text; any other block (a private key,
/// say) is an error: only certificates belong in a CA file.
fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    for item in rustls_pemfile::read_all(&mut text.as_bytes()) {
        match item.map_err(|e| format!("not a valid PEM file: {e:?}"))? {
            rustls_pemfile::Item::X509Certificate(der) => certs.push(der.to_vec()),
            other => {
                let kind = match other {
                    rustls_pemfile::Item::Pkcs1Key(_)
                    | rustls_pemfile::Item::Pkcs8Key(_)
                    | rustls_pemfile::Item::Sec1Key(_) => "PRIVATE KEY",
                    _ => "non-certificate",
                };
                return Err(format!(
                    "a {kind} block; only CERTIFICATE blocks belong in a CA file"
                ));
            }
        }
    }
    Ok(certs)
}

/// What [`Upstream`] is built from (the config's `upstream.*`, already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub hub: Origin,
    pub cdn_hosts: Vec<HostPattern>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub metadata_timeout: Duration,
    pub offline: bool,
    /// `upstream.ca_file`: CAs trusted besides the system's.
    pub ca_file: Option<CaBundle>,
    /// `upstream.proxy`: the site's HTTP proxy, for every host it applies to.
    pub egress: Option<EgressProxy>,
}

/// The upstream side of hf-edge: the Hub origin, the CDN allowlist and the connector.
pub struct Upstream {
    pub hub: Origin,
    /// Offline mode: never contact the Hub (set by config, toggled at runtime).
    offline: std::sync::atomic::AtomicBool,
    cdn_hosts: Vec<HostPattern>,
    connect_timeout: Duration,
    read_timeout: Duration,
    metadata_timeout: Duration,
    /// With `upstream.ca_file`: the system's trust roots and the file's, for every TLS peer.
    trust: Option<Arc<CaType>>,
    egress: Option<EgressProxy>,
    connector: Connector,
}

impl Upstream {
    pub fn new(cfg: Settings) -> Upstream {
        Upstream {
            hub: cfg.hub,
            offline: std::sync::atomic::AtomicBool::new(cfg.offline),
            cdn_hosts: cfg.cdn_hosts,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            metadata_timeout: cfg.metadata_timeout,
            trust: cfg.ca_file.as_ref().map(trust_roots),
            egress: cfg.egress,
            connector: Connector::new(None),
        }
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_offline(&self, offline: bool) {
        self.offline
            .store(offline, std::sync::atomic::Ordering::Relaxed);
    }

    /// Credentials go only to the Hub's exact origin. Its host on another port or scheme is
    /// followed like a CDN, without them: self-hosted Hubs put their storage (an S3 server)
    /// beside the Hub, and S3 refuses a presigned URL that also carries `Authorization`.
    pub fn classify(&self, url: &Url) -> HostClass {
        if url.origin.same_origin(&self.hub) {
            HostClass::Hub
        } else if url.origin.host == self.hub.host
            || self.cdn_hosts.iter().any(|p| p.matches(&url.origin.host))
        {
            HostClass::Cdn
        } else {
            HostClass::Foreign
        }
    }

    /// A peer for `origin` with hf-edge's timeouts: the origin itself, or the site's proxy
    /// (a tunnel to the origin for https, the proxy as the peer for http). Resolves names
    /// without blocking (`HttpPeer::new` with a host name would call the blocking resolver).
    pub async fn peer(&self, origin: &Origin) -> Result<HttpPeer, UpstreamError> {
        // The Hub answers metadata (API calls, small files): connecting to it may take no longer
        // than a metadata answer, so that a Hub dropping connection attempts costs the API calls
        // that have a last good answer to fall back on no more than the metadata requests.
        let connect = if origin.host == self.hub.host {
            self.connect_timeout.min(self.metadata_timeout)
        } else {
            self.connect_timeout
        };
        let sni = if origin.tls {
            origin.host.clone()
        } else {
            String::new()
        };
        let mut peer = match self.proxy_for(&origin.host) {
            None => HttpPeer::new(resolve(origin, None).await?, origin.tls, sni),
            Some(p) => {
                let proxy = resolve(&p.proxy, Some(origin)).await?;
                // An https origin through a tunnel of its own (pooled tunnels lead to one
                // origin each); http origins share plain connections to the proxy.
                let target = origin.tls.then(|| origin.host_port());
                let mut peer = HttpPeer::new(proxy, origin.tls, sni);
                if let Some(t) = &target {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    t.hash(&mut h);
                    peer.group_key = h.finish();
                }
                peer.options.custom_l4 = Some(Arc::new(Tunnel {
                    proxy,
                    proxy_name: p.proxy.host_port(),
                    target,
                    auth: p.auth.clone(),
                    timeout: connect,
                }));
                peer
            }
        };
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect * 2);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        if origin.tls {
            peer.options.ca = self.trust.clone();
        }
        Ok(peer)
    }

    fn proxy_for(&self, host: &str) -> Option<&EgressProxy> {
        self.egress.as_ref().filter(|p| p.applies_to(host))
    }

    /// A `407` to an http request sent through the proxy is the proxy's refusal, not the
    /// Hub's answer: an upstream failure (502), never passed to a client as if it were.
    pub fn proxy_refusal(&self, url: &Url, status: u16) -> Result<(), UpstreamError> {
        match self.proxy_for(&url.origin.host) {
            Some(p) if status == 407 && !url.origin.tls => Err(UpstreamError::Unreachable {
                host: url.origin.host.clone(),
                reason: format!(
                    "upstream proxy {} refused the request: 407 Proxy Authentication Required \
                     (check upstream.proxy_credentials_file)",
                    p.proxy.host_port()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Readies a request for `url` for the way it travels: through the proxy, an http
    /// request names its whole URL (absolute form) and carries the proxy's credentials;
    /// otherwise no proxy credentials at all (a client's own must not travel on).
    pub fn prepare(&self, url: &Url, req: &mut RequestHeader) -> Result<(), UpstreamError> {
        req.remove_header("proxy-authorization");
        let Some(p) = self.proxy_for(&url.origin.host).filter(|_| !url.origin.tls) else {
            return Ok(());
        };
        let absolute = format!("{}{}", url.origin, url.path_and_query);
        req.set_raw_path(absolute.as_bytes())
            .map_err(|e| UpstreamError::Invalid(format!("request target {absolute}: {e}")))?;
        if let Some(a) = &p.auth {
            req.insert_header("proxy-authorization", a.clone())
                .expect("static header name");
        }
        Ok(())
    }

    /// Sends a `HEAD` (no redirects followed) and returns the response header, all of it,
    /// connecting included, within `metadata_timeout`: a Hub that drops connection attempts
    /// must not cost clients `connect_timeout`, which may be longer than their own patience.
    pub async fn head(
        &self,
        url: &Url,
        auth: Option<&HeaderValue>,
    ) -> Result<ResponseHeader, UpstreamError> {
        let sent = self.send("HEAD", url, auth, None, &[]);
        let (peer, mut resp) = tokio::time::timeout(self.metadata_timeout, sent)
            .await
            .map_err(|_| UpstreamError::Timeout {
                host: url.origin.host.clone(),
            })??;
        // Drain (a HEAD has no body) so the connection can go back to the pool.
        while let Ok(Some(_)) = resp.session.read_response_body().await {}
        self.connector
            .release_http_session(resp.session, &peer, Some(Duration::from_secs(60)))
            .await;
        Ok(resp.header)
    }

    /// Sends a `GET` for the bytes of `url` from `offset` on (`Range: bytes={offset}-`, none
    /// for offset 0; the answer may still be a whole 200) and returns the response, its body
    /// still to be read.
    pub async fn get_from(
        &self,
        url: &Url,
        auth: Option<&HeaderValue>,
        offset: u64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let range = match offset {
            0 => None,
            n => Some(hv(&format!("bytes={n}-"))?),
        };
        let (_, resp) = self.send("GET", url, auth, range, &[]).await?;
        Ok(resp)
    }

    /// As [`Upstream::get_from`], with the `headers` an origin asked to be sent to `url`
    /// (a git-lfs download action's `header`), and no `Authorization` of hf-edge's own.
    pub async fn get_with(
        &self,
        url: &Url,
        headers: &[(HeaderName, HeaderValue)],
        offset: u64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let range = match offset {
            0 => None,
            n => Some(hv(&format!("bytes={n}-"))?),
        };
        let (_, resp) = self.send("GET", url, None, range, headers).await?;
        Ok(resp)
    }

    async fn send(
        &self,
        method: &str,
        url: &Url,
        auth: Option<&HeaderValue>,
        range: Option<HeaderValue>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<(HttpPeer, UpstreamResponse), UpstreamError> {
        // A HEAD is metadata (answered within metadata_timeout); a GET is a body to read.
        let (timeout, retry_stale) = match method {
            "HEAD" => (self.metadata_timeout, false),
            _ => (self.read_timeout, true),
        };
        let host = url.origin.host.clone();
        let peer = self.peer(&url.origin).await?;
        let up = |e: Box<pingora::Error>| UpstreamError::from_pingora(&host, &e);
        let mut req = RequestHeader::build(method, url.path_and_query.as_bytes(), None)
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        let set = |req: &mut RequestHeader, k: &'static str, v: HeaderValue| {
            req.insert_header(k, v).expect("static header name");
        };
        set(&mut req, "host", hv(&url.origin.host_header())?);
        set(
            &mut req,
            "user-agent",
            HeaderValue::from_static(crate::USER_AGENT),
        );
        // Identity, so Content-Length is the real file size (the Hub may compress otherwise).
        set(
            &mut req,
            "accept-encoding",
            HeaderValue::from_static("identity"),
        );
        for (name, value) in extra {
            req.insert_header(name.clone(), value.clone())
                .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        }
        if let Some(a) = auth {
            set(&mut req, "authorization", a.clone());
        }
        if let Some(r) = range {
            set(&mut req, "range", r);
        }
        self.prepare(url, &mut req)?;
        // A kept-alive connection the server (or a proxy) closed meanwhile fails before any
        // answer. A fill's GET, which a failure would abandon, is sent again on
        // the next pooled connection or a new one; a new connection's failure is final. A
        // metadata HEAD is not: its failure is the Hub's state, which the resolver's failure
        // hold-down counts on seeing once per request.
        let mut stale = 0;
        let session = loop {
            let (mut session, reused) = self.connector.get_http_session(&peer).await.map_err(up)?;
            session.set_read_timeout(Some(timeout));
            let sent = async {
                session.write_request_header(Box::new(req.clone())).await?;
                session.finish_request_body().await?;
                session.read_response_header().await
            };
            match sent.await {
                Ok(()) => break session,
                Err(_) if retry_stale && reused && stale < MAX_STALE_CONNECTIONS => stale += 1,
                Err(e) => return Err(up(e)),
            }
        };
        let header = session
            .response_header()
            .cloned()
            .ok_or_else(|| UpstreamError::Invalid("no response header".into()))?;
        self.proxy_refusal(url, header.status.as_u16())?;
        let resp = UpstreamResponse {
            header,
            session,
            host,
        };
        Ok((peer, resp))
    }
}

/// How many pooled connections in a row may turn out closed before a request fails.
const MAX_STALE_CONNECTIONS: usize = 4;

/// The address of `origin`, looked up without blocking. `via`: the upstream this proxy is
/// asked for, named in the error.
async fn resolve(origin: &Origin, via: Option<&Origin>) -> Result<SocketAddr, UpstreamError> {
    let fail = |reason: String| UpstreamError::Unreachable {
        host: via.unwrap_or(origin).host.clone(),
        reason: match via {
            Some(_) => format!("upstream proxy {}: {reason}", origin.host_port()),
            None => reason,
        },
    };
    tokio::net::lookup_host((origin.host.as_str(), origin.port))
        .await
        .map_err(|e| fail(format!("DNS lookup failed: {e}")))?
        .next()
        .ok_or_else(|| fail("DNS lookup returned no address".into()))
}

/// An upstream answer whose body is read as it arrives.
pub struct UpstreamResponse {
    pub header: ResponseHeader,
    session: HttpSession,
    host: String,
}

impl UpstreamResponse {
    /// The next piece of the body; `None` at its end. A connection closed before the
    /// announced length is an error, not an end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| UpstreamError::from_pingora(&self.host, &e))
    }
}

fn hv(s: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(s).map_err(|_| UpstreamError::Invalid(format!("bad header value {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://cdn-lfs.hf.co/repos/ab/cd?Expires=1&Signature=x").unwrap();
        assert_eq!(u.origin.host, "cdn-lfs.hf.co");
        assert_eq!(u.origin.port, 443);
        assert_eq!(u.path(), "/repos/ab/cd");
        assert_eq!(u.path_and_query, "/repos/ab/cd?Expires=1&Signature=x");
        let hub = Url::parse("http://127.0.0.1:8000/gpt2/resolve/main/config.json").unwrap();
        assert_eq!(hub.origin.host_header(), "127.0.0.1:8000");
        let j = hub
            .join("/api/resolve-cache/models/gpt2/abc/config.json?etag=%22x%22")
            .unwrap();
        assert_eq!(
            j.to_string(),
            "http://127.0.0.1:8000/api/resolve-cache/models/gpt2/abc/config.json?etag=%22x%22"
        );
        assert_eq!(
            hub.join("other.json").unwrap().path(),
            "/gpt2/resolve/main/other.json"
        );
        assert_eq!(hub.join("//h.co/x").unwrap().to_string(), "http://h.co/x");
        assert_eq!(
            Url::parse("http://[::1]:81/x")
                .unwrap()
                .origin
                .host_header(),
            "[::1]:81"
        );
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://u:p@x/").is_err());
        assert!(Url::parse("http://x:0/").is_err());
        assert!(Url::parse("http://x:99999/").is_err());
        assert!(Url::parse("http:///x").is_err());
    }

    /// A listener that never accepts, with a listen queue of one that is already full: the
    /// kernel drops further connection attempts, as a blackholed host does.
    fn blackhole() -> (std::net::TcpListener, std::net::TcpStream) {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket this function owns.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, filler)
    }

    /// Settings for `endpoint` with a 10 s connect timeout and `metadata_timeout`.
    fn settings(endpoint: &str, metadata_timeout: Duration) -> Settings {
        Settings {
            hub: Origin::parse(endpoint).unwrap(),
            cdn_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            metadata_timeout,
            offline: false,
            ca_file: None,
            egress: None,
        }
    }

    #[tokio::test]
    async fn a_metadata_request_connects_within_metadata_timeout() {
        let (listener, _filler) = blackhole();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = Upstream::new(settings(&endpoint, Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let url = Url::on(&upstream.hub, "/gpt2/resolve/main/config.json");

        let result = upstream.head(&url, None).await;

        assert!(
            matches!(result, Err(UpstreamError::Timeout { .. })),
            "{result:?}"
        );
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    }

    #[tokio::test]
    async fn connections_to_the_hub_are_bounded_by_metadata_timeout() {
        let upstream = Upstream::new(Settings {
            cdn_hosts: vec![HostPattern::parse("127.0.0.2").unwrap()],
            ..settings("http://127.0.0.1:8000", Duration::from_secs(2))
        });
        let peer = |url: &str| {
            let origin = Url::parse(url).unwrap().origin;
            let upstream = &upstream;
            async move { upstream.peer(&origin).await.unwrap().options }
        };
        let secs = |s| Some(Duration::from_secs(s));

        let hub = peer("http://127.0.0.1:8443/").await; // the Hub's host, any port
        let cdn = peer("http://127.0.0.2:9000/").await;

        assert_eq!(hub.connection_timeout, secs(2));
        assert_eq!(hub.total_connection_timeout, secs(4));
        assert_eq!(cdn.connection_timeout, secs(10));
        assert_eq!(cdn.total_connection_timeout, secs(20));
    }

    /// A self-signed CA certificate (P-256, valid until 2126), only for parsing.
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----
MIIBpTCCAUugAwIBAgIUE4OykVHy9YGGQZTQXh5LaKFI6CkwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUaGYtZWRnZSB1bml0IHRlc3QgQ0EwIBcNMjYxMTMwMTQ1MDEy
WhgPMjEyNjExMDYxNDUwMTJaMB8xHTAbBgNVBAMMFGhmLWVkZ2UgdW5pdCB0ZXN0
IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEe1/4ytZXraajvXCDmbtE4MH5
KABOpDCfaFmsRWIzgZYZk9zCZ6vUV9HYpe/HkqmLE0RazG0ARPvJk0EqaEOwAKNj
MGEwHQYDVR0OBBYEFHxswSZPbEP3woPylpQH1XqRGHf4MB8GA1UdIwQYMBaAFHxs
wSZPbEP3woPylpQH1XqRGHf4MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQD
AgIEMAoGCCqGSM49BAMCA0gAMEUCICG5Ydn1RwdvnvV9Lq3mthQTeSNzvfT+x6Ph
IV1UdhgVAiEA0wF6uRFZgtgfmv0IPs5N3w0oJPAzh0Ur8kU/HkqV4cs=
-----END CERTIFICATE-----
";
    /// sha256 of its DER bytes (`openssl x509 -outform der | sha256sum`).
    const TEST_CA_SHA256: &str = "9e0480c655806a3eb283b23973f77614f467c617b8dcb3200c9bf52d78eeb9d9";

    fn sha256_hex(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    #[test]
    fn pem_bundles() {
        let two = format!("# a comment\n{TEST_CA}\nsome text\n{TEST_CA}\n");
        let certs = pem_certificates(&two).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(sha256_hex(&certs[0]), TEST_CA_SHA256);
        assert_eq!(pem_certificates("no PEM at all").unwrap().len(), 0);
        let key = "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";
        assert!(pem_certificates(key).unwrap_err().contains("PRIVATE KEY"));
        let cut = TEST_CA.replace("-----END CERTIFICATE-----", "");
        assert!(pem_certificates(&cut).is_err());
        let bad = TEST_CA.replace("MIIB", "MI*B");
        assert!(pem_certificates(&bad).is_err());
    }

    #[test]
    fn ca_bundles_are_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = CaBundle::load(&write("good.pem", TEST_CA)).unwrap();
        assert_eq!(good.len(), 1);
        assert!(format!("{good:?}").contains("1 certificates"));
        let trust = trust_roots(&good);
        let ours = trust
            .iter()
            .filter(|c| sha256_hex(c.borrow_raw_cert()) == TEST_CA_SHA256);
        assert_eq!(
            ours.count(),
            1,
            "the bundle's certificate is among the trust roots"
        );

        let missing = CaBundle::load(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.contains("missing.pem"), "{missing}");
        let empty = CaBundle::load(&write("empty.pem", "nothing here\n")).unwrap_err();
        assert!(empty.contains("no certificate"), "{empty}");
        let garbage = TEST_CA.replace("MIIBpTCCAUugAwIBAgIU", "MIIBpTCCAUugAwIBAgIA");
        let not_x509 = CaBundle::load(&write("garbage.pem", &garbage)).unwrap_err();
        assert!(not_x509.contains("certificate 1"), "{not_x509}");
    }

    #[test]
    fn pingora_errors_are_explained() {
        let tls = pingora::Error::because(
            ErrorType::TLSHandshakeFailure,
            "TLS connect() failed: invalid peer certificate: UnknownIssuer, SNI: hub.example",
            std::io::Error::other("local address 127.0.0.1:40000"),
        );
        assert_eq!(
            UpstreamError::from_pingora("hub.example", &tls).to_string(),
            "cannot reach upstream hub.example: TLSHandshakeFailure: TLS connect() failed: \
             invalid peer certificate: UnknownIssuer, SNI: hub.example"
        );
        let refused = pingora::Error::because(
            ErrorType::ConnectRefused,
            "connecting",
            std::io::Error::other("Connection refused (os error 111)"),
        )
        .more_context("upstream hub.example");
        assert_eq!(
            UpstreamError::from_pingora("hub.example", &refused).to_string(),
            "cannot reach upstream hub.example: ConnectRefused: upstream hub.example: connecting: \
             Connection refused (os error 111)"
        );
        let bare = pingora::Error::new(ErrorType::ConnectRefused);
        let up = UpstreamError::from_pingora("hub.example", &bare);
        assert_eq!(
            up.to_string(),
            "cannot reach upstream hub.example: ConnectRefused"
        );
        let timeout = pingora::Error::explain(ErrorType::ConnectTimedout, "slow");
        assert_eq!(UpstreamError::from_pingora("h", &timeout).status(), 504);
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.hf.co").unwrap();
        assert!(p.matches("cdn-lfs.hf.co"));
        assert!(p.matches("cas-bridge.xethub.hf.co"));
        assert!(!p.matches("hf.co"));
        assert!(!p.matches("evilhf.co"));
        assert!(!p.matches("hf.co.evil.com"));
        let exact = HostPattern::parse("127.0.0.2").unwrap();
        assert!(exact.matches("127.0.0.2"));
        assert!(!exact.matches("127.0.0.20"));
        assert!(HostPattern::parse("a*b").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn credentials_go_only_to_the_hubs_exact_origin() {
        let up = Upstream::new(Settings {
            hub: Origin::parse("https://hub.test").unwrap(),
            cdn_hosts: vec![HostPattern::parse("*.hf.co").unwrap()],
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            metadata_timeout: Duration::from_secs(1),
            offline: false,
            ca_file: None,
            egress: None,
        });
        let class = |u: &str| up.classify(&Url::parse(u).unwrap());
        assert_eq!(class("https://hub.test/api/x"), HostClass::Hub);
        assert_eq!(class("https://HUB.test:443/api/x"), HostClass::Hub);
        // The same name on another port or scheme: followed, never given credentials.
        assert_eq!(class("https://hub.test:9000/bucket/x?sig"), HostClass::Cdn);
        assert_eq!(class("http://hub.test/x"), HostClass::Cdn);
        assert_eq!(class("https://cdn-lfs.hf.co/x"), HostClass::Cdn);
        assert_eq!(class("https://evil.test/x"), HostClass::Foreign);
    }

    #[test]
    fn url_errors_never_show_a_signature() {
        let e = Url::parse("ftp://cdn.test/x?Signature=s3cr3t").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = Url::parse("https://bad host/x?Signature=s3cr3t").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
