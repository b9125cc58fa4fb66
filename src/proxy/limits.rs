//! Request sizes no Hub client sends, refused before any routing.

use pingora::http::RequestHeader;

/// Longest request target (path + query) accepted. Hub URLs are far shorter.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names + values) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A refused request: status and message.
pub type Refusal = (u16, &'static str);

pub fn check(req: &RequestHeader) -> Result<(), Refusal> {
    // Framing attacks are Pingora's parser's job: it refuses duplicate Content-Length and bad
    // Transfer-Encoding, and for Content-Length plus Transfer-Encoding drops the length and
    // closes the connection after the request (RFC 9112 §6.1), so nothing is smuggled behind it.
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Err((414, "request URL is too long"));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err((431, "request headers are too large"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn refuses_oversized_requests() {
        let long = req(&[], &format!("/{}", "a".repeat(MAX_URI_BYTES)));
        assert_eq!(check(&long).unwrap_err().0, 414);
        let big = "b".repeat(MAX_HEADER_BYTES);
        assert_eq!(check(&req(&[("x-big", &big)], "/a")).unwrap_err().0, 431);
        assert!(check(&req(&[("content-length", "4")], "/api/x")).is_ok());
    }
}
