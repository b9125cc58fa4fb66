//! Where requests go upstream: origins and URLs, which redirect targets may be followed (and
//! with which credentials), and a small client for the metadata requests hf-edge makes itself.
//!
//! It uses Pingora's own connector, so metadata requests share the proxy's TLS stack and
//! connection pool instead of bringing a second HTTP client.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;

/// `scheme://host[:port]` (plus a path when parsed from a full URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    path: String,
}

impl Origin {
    /// Parses `http(s)://host[:port][/path]`.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let url = Url::parse(s)?;
        Ok(Origin {
            path: url.path_and_query.trim_end_matches('/').to_string(),
            ..url.origin
        })
    }

    pub fn has_path(&self) -> bool {
        !self.path.is_empty()
    }

    /// The `Host` header value: the port is omitted when it is the scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    fn without_path(&self) -> Origin {
        Origin {
            path: String::new(),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.path)
    }
}

/// An absolute URL split into origin and `path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub origin: Origin,
    pub path_and_query: String,
}

impl Url {
    /// Parses an absolute `http(s)://` URL.
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{s:?} is not an http:// or https:// URL"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!("{s:?}: credentials in URLs are not supported"));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{s:?} has an invalid host or port"))?;
        let default = if tls { 443 } else { 80 };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url {
            origin: Origin {
                tls,
                host: host.to_ascii_lowercase(),
                port: port.unwrap_or(default),
                path: String::new(),
            },
            path_and_query: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// `origin` + an absolute path.
    pub fn on(origin: &Origin, path_and_query: &str) -> Url {
        Url {
            origin: origin.without_path(),
            path_and_query: path_and_query.to_string(),
        }
    }

    /// Resolves a `Location` against this URL (absolute, scheme-relative or path-absolute).
    pub fn join(&self, location: &str) -> Result<Url, String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if let Some(rest) = location.strip_prefix("//") {
            let scheme = if self.origin.tls { "https" } else { "http" };
            Url::parse(&format!("{scheme}://{rest}"))
        } else if location.starts_with('/') {
            Ok(Url::on(&self.origin, location))
        } else {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            Ok(Url::on(&self.origin, &format!("{dir}{location}")))
        }
    }

    /// The path without the query: signed CDN URLs differ only in their query, which must
    /// never become part of a cache key or a log line.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("/")
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path_and_query)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        match &rest[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    if !valid_host {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(|p| (host, Some(p))),
    }
}

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
    /// The configured Hub (any port): gets the request's `Authorization`.
    Hub,
    /// A Hub CDN host: signed URLs, never `Authorization`.
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
                reason: e.etype().as_str().to_string(),
            },
        }
    }
}

/// What [`Upstream`] is built from (the config's `upstream.*`, already validated).
#[derive(Debug, Clone)]
pub struct Settings {
    pub hub: Origin,
    pub cdn_hosts: Vec<HostPattern>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub metadata_timeout: Duration,
    pub offline: bool,
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

    pub fn classify(&self, url: &Url) -> HostClass {
        if url.origin.host == self.hub.host {
            HostClass::Hub
        } else if self.cdn_hosts.iter().any(|p| p.matches(&url.origin.host)) {
            HostClass::Cdn
        } else {
            HostClass::Foreign
        }
    }

    /// A peer for `origin` with hf-edge's timeouts. Resolves the name without blocking
    /// (`HttpPeer::new` with a host name would call the blocking resolver).
    pub async fn peer(&self, origin: &Origin) -> Result<HttpPeer, UpstreamError> {
        let addr: SocketAddr = tokio::net::lookup_host((origin.host.as_str(), origin.port))
            .await
            .map_err(|e| UpstreamError::Unreachable {
                host: origin.host.clone(),
                reason: format!("DNS lookup failed: {e}"),
            })?
            .next()
            .ok_or_else(|| UpstreamError::Unreachable {
                host: origin.host.clone(),
                reason: "DNS lookup returned no address".into(),
            })?;
        let sni = if origin.tls {
            origin.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, origin.tls, sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout * 2);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        Ok(peer)
    }

    /// Sends a `HEAD` (no redirects followed) and returns the response header.
    pub async fn head(
        &self,
        url: &Url,
        auth: Option<&HeaderValue>,
    ) -> Result<ResponseHeader, UpstreamError> {
        let (peer, mut resp) = self
            .send("HEAD", url, auth, None, self.metadata_timeout)
            .await?;
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
        let (_, resp) = self
            .send("GET", url, auth, range, self.read_timeout)
            .await?;
        Ok(resp)
    }

    async fn send(
        &self,
        method: &str,
        url: &Url,
        auth: Option<&HeaderValue>,
        range: Option<HeaderValue>,
        timeout: Duration,
    ) -> Result<(HttpPeer, UpstreamResponse), UpstreamError> {
        let host = url.origin.host.clone();
        let peer = self.peer(&url.origin).await?;
        let up = |e: Box<pingora::Error>| UpstreamError::from_pingora(&host, &e);
        let (mut session, _reused) = self.connector.get_http_session(&peer).await.map_err(up)?;
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
        if let Some(a) = auth {
            set(&mut req, "authorization", a.clone());
        }
        if let Some(r) = range {
            set(&mut req, "range", r);
        }
        session.set_read_timeout(Some(timeout));
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(up)?;
        session.finish_request_body().await.map_err(up)?;
        session.read_response_header().await.map_err(up)?;
        let header = session
            .response_header()
            .cloned()
            .ok_or_else(|| UpstreamError::Invalid("no response header".into()))?;
        let resp = UpstreamResponse {
            header,
            session,
            host,
        };
        Ok((peer, resp))
    }
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
}
