//! `hf-edge probe URL`: a GET to a running hf-edge's plain-HTTP endpoint (`/readyz`, `/healthz`),
//! for health checks where no HTTP client is installed (the container image has no shell and no
//! curl). Reads only the status line.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The status a `GET url` is answered with, within `timeout` for connecting and for reading.
pub fn status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?}: only http:// URLs (the operator endpoints are plain HTTP)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    // One write: a request in pieces may be answered (and the connection closed) after the
    // first, and the rest then resets the connection before the answer is read.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .and_then(|_| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("{addr}: {e}"))?;
    // "HTTP/1.1 200 OK": the status line is all that is read (at most one small buffer).
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() && !head[..n].contains(&b'\n') {
        match stream
            .read(&mut head[n..])
            .map_err(|e| format!("{addr}: {e}"))?
        {
            0 => break,
            got => n += got,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls() {
        let e = status("https://127.0.0.1:1/readyz", Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("only http://"), "{e}");
    }

    #[test]
    fn reads_the_status_of_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let n = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let got = status(&format!("http://{addr}/readyz"), Duration::from_secs(5));
        assert_eq!(got, Ok(503));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /readyz HTTP/1.1\r\n"));
        let refused = status(&format!("http://{addr}/readyz"), Duration::from_secs(5));
        assert!(refused.is_err());
    }
}
