//! Origins and URLs as hf-edge reads them from its config and from the Hub's answers
//! (`Location`, signed CDN URLs): plain values, shared by the upstream client and the egress
//! proxy.

use std::fmt;

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

    /// `host:port`, as a `CONNECT` request names its target.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
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

    /// Same scheme, host and port (the path, if any, aside).
    pub fn same_origin(&self, other: &Origin) -> bool {
        (self.tls, &self.host, self.port) == (other.tls, &other.host, other.port)
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
            return Err(format!(
                "{:?} is not an http:// or https:// URL",
                without_query(s)
            ));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!(
                "{:?}: credentials in URLs are not supported",
                without_query(s)
            ));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{:?} has an invalid host or port", without_query(s)))?;
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

/// A URL for a message: a signed URL's query is a credential, never logged or shown.
fn without_query(s: &str) -> String {
    match s.split_once('?') {
        Some((head, _)) => format!("{head}?…"),
        None => s.to_string(),
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
