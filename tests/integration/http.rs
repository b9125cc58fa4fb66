//! A raw HTTP/1.1 client: sends paths exactly as written (no normalisation of `..`), one
//! request per connection, and reads responses whole or a piece at a time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a read may wait for the server; generous, for a loaded machine.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a response read a piece at a time may take in all.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended before `Content-Length` (the connection was cut).
    pub truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `X-HF-Edge-Cache`: how hf-edge served a file (`hit`, `miss`, `coalesced`, ...).
    pub fn cache(&self) -> Option<&str> {
        self.header("x-hf-edge-cache")
    }

    /// Whether hf-edge marked the answer as stale (`Warning: 110 hf-edge "stale: ..."`).
    pub fn is_stale(&self) -> bool {
        self.header("warning").is_some_and(|w| w.contains("stale"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The normalised `X-Linked-Etag` (an LFS file's sha256).
    pub fn linked_etag(&self) -> String {
        self.header("x-linked-etag")
            .expect("X-Linked-Etag")
            .trim_matches('"')
            .to_string()
    }

    /// Asserts a complete body whose sha256 is its `X-Linked-Etag`.
    pub fn assert_whole_lfs_file(&self) {
        assert!(!self.truncated, "the body was cut");
        assert_eq!(
            sha256_hex(&self.body),
            self.linked_etag(),
            "body does not match its etag"
        );
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error` string of a JSON error body.
    pub fn json_error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string: {}", self.text()))
            .to_string()
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request_with_body(addr, method, path, headers, b"")
}

pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// One request on its own connection (`Connection: close`), read to the end.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = send(addr, method, path, headers, body)?;
    let mut raw = Vec::new();
    // A cut connection may end in a reset; what arrived before it is the response.
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw, method == "HEAD")
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // The caller's own Host, if it gives one (a request with two is malformed).
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    Ok(s)
}

/// Sends raw bytes and reads everything the server sends until it closes the connection
/// (or, at most, a read timeout).
pub fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw
}

/// Sends raw bytes and reads the first response (its header, and its body when it has a
/// `Content-Length`), whether or not the server then keeps the connection open.
pub fn first_response(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    // A server that refuses a request may close before reading all of it: what it answered
    // is still there to read.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = Instant::now() + RESPONSE_DEADLINE;
    while Instant::now() < deadline {
        if let Some(end) = header_end(&raw) {
            let r = parse_response(&raw, false)?;
            let len = r.header("content-length").and_then(|l| l.parse().ok());
            if len.is_some_and(|len: usize| raw.len() - end >= len) {
                return Ok(r);
            }
        }
        let got = s.read(&mut buf)?;
        if got == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..got]);
    }
    parse_response(&raw, false)
}

/// The status codes of the responses in a raw byte stream, in order.
pub fn status_lines(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
        .collect()
}

/// A GET whose response is read a piece at a time: the connection stays open while a test
/// does something else (a second client, a signal, a kill).
pub struct Download {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl Download {
    pub fn start(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Download {
        let stream = send(addr, "GET", path, headers, b"")
            .unwrap_or_else(|e| panic!("GET {path} to {addr}: {e}"));
        Download {
            stream,
            raw: Vec::new(),
        }
    }

    /// Body bytes received so far.
    pub fn body_received(&self) -> usize {
        header_end(&self.raw).map_or(0, |end| self.raw.len() - end)
    }

    /// Reads until the header and at least `n` body bytes arrived.
    pub fn read_body_bytes(&mut self, n: usize) -> &mut Self {
        let mut buf = vec![0u8; 64 << 10];
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        while header_end(&self.raw).is_none() || self.body_received() < n {
            assert!(Instant::now() < deadline, "{n} body bytes took too long");
            let got = self.stream.read(&mut buf).expect("read the download");
            assert!(
                got > 0,
                "the connection closed after {} bytes",
                self.raw.len()
            );
            self.raw.extend_from_slice(&buf[..got]);
        }
        self
    }

    /// Reads until the response header arrived; returns it (without a body).
    pub fn read_header(&mut self) -> Response {
        self.read_body_bytes(0);
        parse_response(&self.raw, true).expect("a response header")
    }

    /// Reads until the response header arrived or `deadline` passed; `None` if it did not
    /// arrive in time (the connection stays usable).
    pub fn read_header_by(&mut self, deadline: Instant) -> Option<Response> {
        let mut buf = vec![0u8; 64 << 10];
        while header_end(&self.raw).is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            let wait = left.clamp(Duration::from_millis(1), Duration::from_millis(200));
            self.stream
                .set_read_timeout(Some(wait))
                .expect("set a read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the connection closed after {} bytes", self.raw.len()),
                Ok(got) => self.raw.extend_from_slice(&buf[..got]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read the download: {e}"),
            }
        }
        self.stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        Some(parse_response(&self.raw, true).expect("a response header"))
    }

    /// Reads the rest of the response, until the server closes the connection.
    pub fn finish(mut self) -> Response {
        let _ = self.stream.read_to_end(&mut self.raw);
        parse_response(&self.raw, false).expect("a response")
    }
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = header_end(raw).ok_or_else(|| bad("no complete response header"))?;
    let head_text = std::str::from_utf8(&raw[..end - 4]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let (body, truncated) = if head || status == 204 || status == 304 {
        (Vec::new(), false)
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        (rest[..rest.len().min(len)].to_vec(), rest.len() < len)
    } else {
        (rest.to_vec(), false)
    };
    Ok(Response {
        status,
        headers,
        body,
        truncated,
    })
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, true);
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else {
            return (out, true);
        };
        b = &b[eol + 2..];
        if size == 0 {
            return (out, false);
        }
        if b.len() < size + 2 {
            out.extend_from_slice(&b[..b.len().min(size)]);
            return (out, true);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The git blob id of `data` (what the Hub's `ETag` is for a regular file).
pub fn git_oid_hex(data: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()));
    h.update(data);
    hex::encode(h.finalize())
}
