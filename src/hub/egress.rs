//! Egress through the site's HTTP proxy (`upstream.proxy`): https upstreams through a
//! `CONNECT` tunnel (TLS runs end to end inside it, so the proxy never sees a token), http
//! upstreams as absolute-form requests to the proxy; hosts in `upstream.no_proxy` directly.
//!
//! Pingora 0.9's own CONNECT support reaches a proxy only over a Unix socket, so the tunnel is
//! a custom layer-4 connector ([`Tunnel`]) handed to each peer.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::url::Origin;

/// The longest proxy answer to a `CONNECT` read before giving up on it.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// `upstream.proxy` with its exceptions and credentials, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressProxy {
    /// `http://host:port` of the proxy.
    pub proxy: Origin,
    pub no_proxy: Vec<NoProxy>,
    /// `Proxy-Authorization: Basic ...` from `upstream.proxy_credentials_file`.
    pub auth: Option<HeaderValue>,
}

impl EgressProxy {
    /// Parses `upstream.proxy`: an `http://` origin (a proxy spoken to over TLS is not
    /// supported; its tunnels carry TLS anyway). Errors name the key under the section
    /// (`proxy`, `no_proxy[1]`, `proxy_credentials_file`).
    pub fn parse(
        proxy: &str,
        no_proxy: &[String],
        credentials: Option<&str>,
    ) -> Result<EgressProxy, (String, String)> {
        let at = |k: &str, m: String| (k.to_string(), m);
        let origin = Origin::parse(proxy).map_err(|m| at("proxy", m))?;
        if origin.tls || origin.has_path() {
            return Err(at(
                "proxy",
                "must be an http:// origin without a path, like http://proxy.site:3128".into(),
            ));
        }
        let no_proxy = no_proxy
            .iter()
            .enumerate()
            .map(|(i, p)| NoProxy::parse(p).map_err(|m| at(&format!("no_proxy[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = credentials
            .map(|c| basic_auth(c).map_err(|m| at("proxy_credentials_file", m)))
            .transpose()?;
        Ok(EgressProxy {
            proxy: origin,
            no_proxy,
            auth,
        })
    }

    /// Whether requests to `host` go through the proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.iter().any(|p| p.matches(host))
    }
}

/// `user:password` (the file's first line) as a `Basic` credential.
fn basic_auth(credentials: &str) -> Result<HeaderValue, String> {
    let line = credentials.lines().next().unwrap_or("").trim();
    if !line.contains(':') || line.starts_with(':') {
        return Err("must hold `user:password` on its first line".into());
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(line);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| "holds characters a header cannot carry".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// One `upstream.no_proxy` entry, as curl and most tools read `NO_PROXY`: `*` (everything),
/// a host or address (exact), or a domain (`example.org` or `.example.org`: it and its
/// subdomains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoProxy {
    All,
    Domain(String),
}

impl NoProxy {
    pub fn parse(s: &str) -> Result<NoProxy, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Ok(NoProxy::All);
        }
        let domain = s.strip_prefix('.').unwrap_or(&s);
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(format!(
                "{s:?} is not `*`, a host name, a domain or an address"
            ));
        }
        Ok(NoProxy::Domain(domain.trim_matches(['[', ']']).to_string()))
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            NoProxy::All => true,
            NoProxy::Domain(d) => {
                let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
        }
    }
}

/// A connection to the proxy: with a `target` (`host:port`), a `CONNECT` tunnel to it, in
/// which the peer's TLS handshake then runs (the proxy resolves the name: sites behind a proxy
/// often cannot); without, for absolute-form requests. Either way a failure names the proxy.
#[derive(Debug)]
pub struct Tunnel {
    pub proxy: SocketAddr,
    pub proxy_name: String,
    pub target: Option<String>,
    pub auth: Option<HeaderValue>,
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for Tunnel {
    async fn connect(
        &self,
        _addr: &pingora::protocols::l4::socket::SocketAddr,
    ) -> Result<L4Stream> {
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!(
                    "upstream proxy {} did not {} within {:?}",
                    self.proxy_name,
                    match &self.target {
                        Some(t) => format!("open a tunnel to {t}"),
                        None => "accept the connection".into(),
                    },
                    self.timeout
                ),
            ),
        }
    }
}

impl Tunnel {
    async fn open(&self) -> Result<L4Stream> {
        let mut tcp = tokio::net::TcpStream::connect(self.proxy)
            .await
            .or_err_with(ErrorType::ConnectError, || {
                format!("upstream proxy {}: cannot connect", self.proxy_name)
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(target) = &self.target else {
            return Ok(L4Stream::from(tcp));
        };
        let mut req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
            crate::USER_AGENT,
        );
        if let Some(a) = &self.auth {
            req.push_str("Proxy-Authorization: ");
            req.push_str(a.to_str().unwrap_or_default());
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.or_err(
            ErrorType::WriteError,
            "writing CONNECT to the upstream proxy",
        )?;

        // Read the answer's head; what follows it (nothing, with TLS: the client speaks
        // first) is put back for the tunnel's reader.
        let mut buf = Vec::with_capacity(1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() >= MAX_CONNECT_ANSWER {
                return Error::e_explain(
                    ErrorType::ConnectProxyFailure,
                    format!(
                        "upstream proxy {} sent an oversized answer",
                        self.proxy_name
                    ),
                );
            }
            let mut chunk = [0u8; 1024];
            let n = tcp
                .read(&mut chunk)
                .await
                .or_err(ErrorType::ReadError, "reading the upstream proxy's answer")?;
            if n == 0 {
                return Error::e_explain(
                    ErrorType::ConnectProxyFailure,
                    format!(
                        "upstream proxy {} closed the connection before answering CONNECT",
                        self.proxy_name
                    ),
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let status_line = String::from_utf8_lossy(&buf[..end])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let code = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok());
        if !matches!(code, Some(200..=299)) {
            return Error::e_explain(
                ErrorType::ConnectProxyFailure,
                format!(
                    "upstream proxy {} refused CONNECT to {target}: {}",
                    self.proxy_name,
                    status_line.trim()
                ),
            );
        }
        let mut stream = L4Stream::from(tcp);
        stream.rewind(&buf[end..]);
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_entries() {
        let p = |s| NoProxy::parse(s).unwrap();
        assert!(p("*").matches("anything.example"));
        assert!(p("hub.site").matches("hub.site"));
        assert!(p("hub.site").matches("cdn.HUB.site"));
        assert!(!p("hub.site").matches("otherhub.site"));
        assert!(p(".site").matches("hub.site"));
        assert!(!p(".site").matches("site.org"));
        assert!(p("127.0.0.1").matches("127.0.0.1"));
        assert!(!p("127.0.0.1").matches("127.0.0.10"));
        assert!(p("[::1]").matches("[::1]"));
        assert!(NoProxy::parse("bad host/").is_err());
        assert!(NoProxy::parse("").is_err());
    }

    #[test]
    fn proxies_are_plain_http_origins() {
        let e = EgressProxy::parse("https://proxy:3128", &[], None).unwrap_err();
        assert_eq!(e.0, "proxy");
        assert!(EgressProxy::parse("http://proxy:3128/x", &[], None).is_err());
        let ok = EgressProxy::parse("http://proxy:3128", &["hub.site".into()], None).unwrap();
        assert!(ok.applies_to("huggingface.co"));
        assert!(!ok.applies_to("hub.site"));
        let e = EgressProxy::parse("http://p:1", &["a b".into()], None).unwrap_err();
        assert_eq!(e.0, "no_proxy[0]");
    }

    #[test]
    fn proxy_credentials() {
        let p = EgressProxy::parse("http://p:1", &[], Some("edge:s3cret\n")).unwrap();
        // base64("edge:s3cret")
        assert_eq!(p.auth.unwrap().to_str().unwrap(), "Basic ZWRnZTpzM2NyZXQ=");
        for bad in ["", "nocolon", ":pw"] {
            let e = EgressProxy::parse("http://p:1", &[], Some(bad)).unwrap_err();
            assert_eq!(e.0, "proxy_credentials_file", "{bad:?}");
        }
    }
}
