//! Who the client is, when hf-edge sits behind a load balancer or another proxy
//! (`trusted_proxies`): the PROXY protocol (v1 and v2) and `X-Forwarded-For` /
//! `X-Forwarded-Proto` are believed only from those addresses. From anyone else they are
//! ignored (headers) or refused (a PROXY header is not HTTP: the connection gets a 400), so a
//! client cannot pose as another in the access log or make hf-edge's links point elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncReadExt;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (bytes, bits) = ((len / 8) as usize, len % 8);
    a[..bytes] == b[..bytes]
        && (bits == 0 || {
            let mask = 0xffu8 << (8 - bits);
            a[bytes] & mask == b[bytes] & mask
        })
}

/// `trusted_proxies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client as hf-edge takes it for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// `ip:port` of a direct connection (or the PROXY protocol's source), or the forwarded
    /// client's `ip` (`X-Forwarded-For` from a trusted proxy).
    pub addr: Option<String>,
    /// Whether the client reached the site over https: on hf-edge's TLS listener, or by a
    /// trusted proxy's `X-Forwarded-Proto: https`. Links hf-edge writes use this scheme.
    pub https: bool,
}

/// Reads the client from the connection's peer (`peer`, after any PROXY header), whether that
/// connection is TLS, and the request's forwarding headers, believed only from trusted proxies.
/// `X-Forwarded-For` is read from the right, each hop vouching for the one before it, up to
/// the first address that is not a trusted proxy: the client.
pub fn identify(
    peer: Option<SocketAddr>,
    tls: bool,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Client {
    let direct = Client {
        addr: peer.map(|p| p.to_string()),
        https: tls,
    };
    let Some(peer) = peer.filter(|p| trusted.trusts(p.ip())) else {
        return direct;
    };
    let https = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }) {
        Some(p) if p == "https" => true,
        Some(p) if p == "http" => false,
        _ => tls,
    };
    let mut client = peer.ip();
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        if !trusted.trusts(client) {
            break;
        }
        match parse_forwarded_ip(hop) {
            Some(ip) => client = ip,
            // A hop that is not an address: nothing before it can be believed.
            None => break,
        }
    }
    Client {
        addr: Some(if client == peer.ip() {
            peer.to_string()
        } else {
            client.to_string()
        }),
        https,
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

// ---- The PROXY protocol (haproxy.org/download/2.9/doc/proxy-protocol.txt)

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes; a v2 one is 16 plus its length, which may carry TLVs.
const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 1024;

/// What a complete PROXY header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// The original client (v1 `TCP4`/`TCP6`, v2 `PROXY` over TCP).
    Source(SocketAddr),
    /// A health check of the proxy's own (v1 `UNKNOWN`, v2 `LOCAL`, or a family that is not
    /// TCP over IP): the connection's own peer stands.
    Local,
}

/// The outcome of looking at a connection's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No PROXY signature: the bytes are the request's own.
    NotProxy,
    /// More bytes are needed to decide.
    Incomplete,
    /// A header of `len` bytes.
    Complete(Header, usize),
}

pub fn parse_header(buf: &[u8]) -> Result<Parsed, String> {
    let v1 = b"PROXY ";
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    let could_be_v2 = buf[..sig_len] == V2_SIGNATURE[..sig_len];
    let could_be_v1 = buf[..buf.len().min(v1.len())] == v1[..buf.len().min(v1.len())];
    if !could_be_v1 && !could_be_v2 {
        return Ok(Parsed::NotProxy);
    }
    if could_be_v2 && buf.len() >= 16 {
        return parse_v2(buf);
    }
    if could_be_v1 && buf.len() >= v1.len() {
        return parse_v1(buf);
    }
    Ok(Parsed::Incomplete)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 header longer than 107 bytes".into())
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 header is not text")?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| format!("bad source {src:?}"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(format!("{family} with source {src}"));
            }
            let port: u16 = sport.parse().map_err(|_| format!("bad port {sport:?}"))?;
            Header::Source(SocketAddr::new(ip, port))
        }
        _ => return Err(format!("malformed PROXY v1 header {line:?}")),
    };
    Ok(Parsed::Complete(header, end + 2))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, String> {
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(format!("PROXY v2 header with version {}", ver_cmd >> 4));
    }
    if 16 + len > V2_MAX {
        return Err(format!("PROXY v2 header of {len} bytes"));
    }
    if buf.len() < 16 + len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..16 + len];
    let header = match (ver_cmd & 0x0f, family) {
        (0, _) => Header::Local,
        (1, 0x11) if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Header::Source(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21) if len >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Header::Source(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        (1, 0x11 | 0x21) => return Err("PROXY v2 address block too short".into()),
        (1, _) => Header::Local,
        (cmd, _) => return Err(format!("PROXY v2 command {cmd}")),
    };
    Ok(Parsed::Complete(header, 16 + len))
}

/// Reads a PROXY header, if the connection starts with one and comes from a trusted proxy,
/// within `timeout`, and makes its source the connection's peer address (what the session's
/// `client_addr` and the access log report). Bytes read past the header are put back.
pub async fn accept_proxy_header(
    stream: &mut L4Stream,
    trusted: &TrustedProxies,
    timeout: Duration,
) -> Result<()> {
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(PingoraAddr::as_inet).copied());
    if !peer.is_some_and(|p| trusted.trusts(p.ip())) {
        return Ok(());
    }
    let read = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            match parse_header(&buf) {
                Ok(Parsed::NotProxy) => return Ok((None, buf)),
                Ok(Parsed::Complete(h, len)) => {
                    let rest = buf.split_off(len);
                    return Ok((Some(h), rest));
                }
                Ok(Parsed::Incomplete) => {}
                Err(m) => return Err(m),
            }
            let mut chunk = [0u8; 512];
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok((None, buf)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the PROXY header: {e}")),
            }
        }
    };
    let (header, rest) = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(m)) => return Error::e_explain(ErrorType::InvalidHTTPHeader, m),
        Err(_) => {
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "PROXY header not received within limits.header_timeout",
            )
        }
    };
    stream.rewind(&rest);
    if let Some(Header::Source(src)) = header {
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(src)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

/// [`accept_proxy_header`] before the TLS handshake, on the TLS listener.
pub struct ProxyHeaderBeforeTls {
    pub trusted: TrustedProxies,
    pub timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for ProxyHeaderBeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        accept_proxy_header(stream, &self.trusted, self.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies(blocks.iter().map(|b| Cidr::parse(b).unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn cidr_blocks() {
        let c = |s| Cidr::parse(s).unwrap();
        assert!(c("10.0.0.0/8").contains("10.200.3.4".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(c("192.168.4.0/22").contains("192.168.7.255".parse().unwrap()));
        assert!(!c("192.168.4.0/22").contains("192.168.8.0".parse().unwrap()));
        assert!(c("127.0.0.1").contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(c("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::/8").contains("10.0.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let lb = Some("10.0.0.5:4000".parse().unwrap());
        let outsider = Some("203.0.113.9:5000".parse().unwrap());
        let fwd = headers(&[
            ("x-forwarded-for", "198.51.100.7, 10.0.0.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let t = trusted(&["10.0.0.0/8"]);

        let c = identify(lb, false, &fwd, &t);
        assert_eq!(c.addr.as_deref(), Some("198.51.100.7"));
        assert!(c.https);
        // The same headers from an untrusted peer change nothing.
        let c = identify(outsider, false, &fwd, &t);
        assert_eq!(c.addr.as_deref(), Some("203.0.113.9:5000"));
        assert!(!c.https);
        // Nothing trusted at all: the socket's peer, the listener's scheme.
        let c = identify(lb, true, &fwd, &TrustedProxies::default());
        assert_eq!((c.addr.as_deref(), c.https), (Some("10.0.0.5:4000"), true));
    }

    #[test]
    fn a_spoofed_hop_before_the_client_is_not_believed() {
        // The client wrote "1.1.1.1" itself; the trusted proxy appended the client's address.
        let fwd = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        let c = identify(
            Some("10.0.0.5:1".parse().unwrap()),
            false,
            &fwd,
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(c.addr.as_deref(), Some("198.51.100.7"));
        // Two headers are one list; a hop that is not an address stops the walk.
        let fwd = headers(&[
            ("x-forwarded-for", "garbage"),
            ("x-forwarded-for", "10.0.0.9:80"),
        ]);
        let c = identify(
            Some("10.0.0.5:1".parse().unwrap()),
            false,
            &fwd,
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(c.addr.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn proxy_protocol_v1() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse_header(h).unwrap(),
            Parsed::Complete(Header::Source("198.51.100.7:56324".parse().unwrap()), 45)
        );
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n";
        assert!(matches!(
            parse_header(h6).unwrap(),
            Parsed::Complete(Header::Source(a), 40) if a == "[2001:db8::7]:1".parse().unwrap()
        ));
        assert_eq!(
            parse_header(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Complete(Header::Local, 15)
        );
        assert_eq!(parse_header(b"PRO").unwrap(), Parsed::Incomplete);
        assert_eq!(parse_header(b"PROXY TCP4 1.2").unwrap(), Parsed::Incomplete);
        assert_eq!(parse_header(b"GET / HTTP/1.1").unwrap(), Parsed::NotProxy);
        assert!(parse_header(b"PROXY TCP4 2001:db8::7 1.2.3.4 1 2\r\n").is_err());
        assert!(parse_header(b"PROXY TCP4 1.2.3.4\r\n").is_err());
        assert!(parse_header(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()).is_err());
    }

    #[test]
    fn proxy_protocol_v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x1f, 0x90,
        ]);
        h.extend(b"GET /");
        assert_eq!(
            parse_header(&h).unwrap(),
            Parsed::Complete(Header::Source("198.51.100.7:56324".parse().unwrap()), 28)
        );
        assert_eq!(parse_header(&h[..20]).unwrap(), Parsed::Incomplete);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse_header(&local).unwrap(),
            Parsed::Complete(Header::Local, 16)
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend([0x11, 0x11, 0, 0]);
        assert!(parse_header(&bad).is_err());
    }
}
