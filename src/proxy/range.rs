//! One range rule for every path that serves a file body (hit, coalesced fill, miss).

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora_proxy::{range_header_filter, RangeType};

use crate::hub::headers;

/// Multipart ranges served at most (as Pingora's default).
const MAX_RANGES: usize = 200;

/// The range a file response serves, adjusting `resp`'s status and headers. RFC 9110 §14.2: a
/// syntactically invalid `Range` is ignored (a full 200), not a 416; 416 is only for a start
/// at or past the end.
pub fn select(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    let range = req.headers.get(header::RANGE).map(|v| v.as_bytes());
    if range.is_some_and(|r| !headers::is_satisfiable_syntax(r)) {
        let _ = resp.insert_header(header::ACCEPT_RANGES, "bytes");
        return RangeType::None;
    }
    range_header_filter(req, resp, Some(MAX_RANGES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(range: Option<&str>, size: u64) -> (u16, RangeType, ResponseHeader) {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        if let Some(r) = range {
            req.insert_header(header::RANGE, r).unwrap();
        }
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(header::CONTENT_LENGTH, size.to_string())
            .unwrap();
        let range = select(&req, &mut resp);
        (resp.status.as_u16(), range, resp)
    }

    #[test]
    fn ranges_map_to_statuses() {
        let (status, range, resp) = answer(Some("bytes=10-19"), 100);
        assert_eq!(status, 206);
        assert!(matches!(range, RangeType::Single(r) if r == (10..20)));
        assert_eq!(resp.headers["content-range"], "bytes 10-19/100");
        let (status, range, _) = answer(None, 100);
        assert_eq!((status, range), (200, RangeType::None));
        let (status, range, _) = answer(Some("bytes=200-"), 100);
        assert_eq!((status, range), (416, RangeType::Invalid));
        // Not a range at all: ignored, the whole file.
        let (status, range, _) = answer(Some("items=1-2"), 100);
        assert_eq!((status, range), (200, RangeType::None));
    }
}
