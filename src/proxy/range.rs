//! One range rule for every path that serves a file body: a complete hit, a fill in progress,
//! a miss (Pingora slices the fill's full body with the range chosen here), and a file hf-edge
//! does not store (over `cache.max_size`, or without a content address), whose range is asked
//! of the CDN itself.
//!
//! The rule is hf-edge's own, not Pingora's `range_header_filter`: that one answers a suffix
//! range of an empty body with `Content-Range: bytes 0-18446744073709551615/0` and `bytes=-0`
//! with an inverted range; and for a file Pingora does not cache it is never asked at all.
//!
//! - no `Range`, a method other than GET/HEAD, an `If-Range` that is not the file's ETag, a
//!   header that is not one well-formed `bytes=` range (numbers past `u64::MAX` included;
//!   RFC 9110 §14.2 lets a server ignore it; clients never send multipart ranges): the whole
//!   file, `200`;
//! - `a-b` / `a-` with `a < size`: `206` of `a..=min(b, size-1)`;
//! - `-n` with `n > 0` and `size > 0`: `206` of the last `min(n, size)` bytes;
//! - anything else (`a >= size`, `-0`, any suffix of an empty file): `416`, `bytes */size`.

use std::ops::Range;

use bytes::Bytes;
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
pub use pingora_proxy::RangeType;

use crate::hub::headers::{self, FileMeta};

/// One well-formed byte-range-spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// What `req` asks of a file of `size` bytes whose ETag, as clients see it (quoted), is `etag`.
/// Never [`RangeType::Multi`].
pub fn decide(req: &RequestHeader, etag: Option<&[u8]>, size: u64) -> RangeType {
    if !matches!(req.method, Method::GET | Method::HEAD) {
        return RangeType::None;
    }
    let Some(range) = req.headers.get(header::RANGE) else {
        return RangeType::None;
    };
    // RFC 9110 §13.1.5: ranges only of the representation the client already has part of.
    if let Some(if_range) = req.headers.get(header::IF_RANGE) {
        if etag != Some(if_range.as_bytes()) {
            return RangeType::None;
        }
    }
    let span = match parse(range.as_bytes()) {
        None => return RangeType::None,
        Some(Spec::From { first, .. }) if first >= size => None,
        Some(Spec::From { first, last }) => {
            let end = last.map_or(size, |l| l.saturating_add(1).min(size));
            Some(first..end)
        }
        Some(Spec::Suffix(n)) if n == 0 || size == 0 => None,
        Some(Spec::Suffix(n)) => Some(size - n.min(size)..size),
    };
    match span {
        Some(r) => RangeType::Single(r.start as usize..r.end as usize),
        None => RangeType::Invalid,
    }
}

/// A `Range` value holding exactly one well-formed spec; `None` for anything else.
fn parse(value: &[u8]) -> Option<Spec> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (number(first), number(last)) {
        (Some(first), None) if last.trim().is_empty() => Some(Spec::From { first, last: None }),
        (Some(first), Some(last)) if first <= last => Some(Spec::From {
            first,
            last: Some(last),
        }),
        (None, Some(n)) if first.trim().is_empty() => Some(Spec::Suffix(n)),
        _ => None,
    }
}

/// Decimal digits. A number past `u64::MAX` names no offset of any file: malformed.
fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Turns `resp`, the headers of the whole file of `size` bytes, into the answer to `range`.
pub fn apply(resp: &mut ResponseHeader, range: &RangeType, size: u64) -> Result<()> {
    match range {
        RangeType::Single(r) => {
            resp.set_status(206)?;
            resp.insert_header(header::CONTENT_LENGTH, (r.end - r.start).to_string())?;
            let last = r.end - 1;
            let content_range = format!("bytes {}-{last}/{size}", r.start);
            resp.insert_header(header::CONTENT_RANGE, content_range)?;
        }
        RangeType::Invalid => {
            resp.set_status(416)?;
            resp.insert_header(header::CONTENT_LENGTH, "0")?;
            resp.insert_header(header::CONTENT_RANGE, format!("bytes */{size}"))?;
            resp.remove_header(&header::CONTENT_TYPE);
            resp.remove_header(&header::ACCEPT_RANGES);
            return Ok(());
        }
        RangeType::None | RangeType::Multi(_) => {}
    }
    resp.insert_header(header::ACCEPT_RANGES, "bytes")?;
    Ok(())
}

/// The range a file response serves, adjusting `resp` (a `200` of the whole file, with its
/// `Content-Length`) to it. Anything else is answered as it is.
pub fn select(req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
    let size = headers::content_length(&resp.headers);
    let Some(size) = size.filter(|_| resp.status.as_u16() == 200) else {
        return RangeType::None;
    };
    let etag = resp.headers.get(header::ETAG).map(|v| v.as_bytes());
    let range = decide(req, etag, size);
    match apply(resp, &range, size) {
        Ok(()) => range,
        Err(_) => RangeType::None,
    }
}

/// What `req` asks of the file `meta` describes.
fn decide_for(req: &RequestHeader, meta: &FileMeta) -> RangeType {
    // Most requests have no range: no quoted ETag to build for them.
    if !req.headers.contains_key(header::RANGE) {
        return RangeType::None;
    }
    decide(
        req,
        Some(format!("\"{}\"", meta.etag).as_bytes()),
        meta.size,
    )
}

/// Whether `req`'s range is one no part of the file satisfies: answered `416` before any
/// upstream request or store lookup, whatever path the body would have taken.
pub fn unsatisfiable(req: &RequestHeader, meta: &FileMeta) -> bool {
    matches!(decide_for(req, meta), RangeType::Invalid)
}

/// The body request for a file hf-edge does not store carries the client's range, in the
/// rule's form (the CDN's own reading of a malformed `Range` could differ), or none. Returns
/// the range asked for. A file Pingora caches is fetched whole (Pingora drops `Range` and
/// slices the body itself).
pub fn ask_upstream(
    client: &RequestHeader,
    upstream: &mut RequestHeader,
    meta: &FileMeta,
) -> Result<Option<Range<u64>>> {
    upstream.remove_header(&header::RANGE);
    upstream.remove_header(&header::IF_RANGE);
    match decide_for(client, meta) {
        RangeType::Single(r) => {
            let value = format!("bytes={}-{}", r.start, r.end - 1);
            upstream.insert_header(header::RANGE, value)?;
            Ok(Some(r.start as u64..r.end as u64))
        }
        _ => Ok(None),
    }
}

/// How an upstream body answer serves the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamBody {
    /// The whole file, as asked.
    Whole,
    /// Exactly the range asked for.
    Asked,
    /// The whole file to a ranged request (an origin that ignores `Range`): hf-edge answers
    /// `206` and cuts the body to this span itself.
    CutHere(Range<u64>),
}

/// Checks an upstream answer against what was asked (`asked`: the range, or the whole file)
/// of a file of `size` bytes; `None` when it is not that (a short or different body).
pub fn upstream_body(
    resp: &ResponseHeader,
    asked: Option<&Range<u64>>,
    size: u64,
) -> Option<UpstreamBody> {
    let length = headers::content_length(&resp.headers);
    match (resp.status.as_u16(), asked) {
        (200, None) if length == Some(size) => Some(UpstreamBody::Whole),
        (200, Some(r)) if length == Some(size) => Some(UpstreamBody::CutHere(r.clone())),
        (206, Some(r)) => {
            let content_range = resp.headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
            let exact = content_range_of(content_range) == Some((r.start, r.end - 1, size));
            (exact && length == Some(r.end - r.start)).then_some(UpstreamBody::Asked)
        }
        _ => None,
    }
}

/// `bytes first-last/size` as numbers.
fn content_range_of(v: &str) -> Option<(u64, u64, u64)> {
    let (unit, rest) = v.trim().split_once(' ')?;
    let (span, size) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let exact = |s: &str| s.trim().parse::<u64>().ok();
    unit.eq_ignore_ascii_case("bytes")
        .then(|| Some((exact(first)?, exact(last)?, exact(size)?)))
        .flatten()
}

/// Cuts a whole upstream body down to one span, as it streams through.
#[derive(Debug)]
pub struct Cut {
    /// Bytes still to drop before the span.
    skip: u64,
    /// Bytes of the span still to pass.
    take: u64,
}

impl Cut {
    pub fn new(span: &Range<u64>) -> Cut {
        Cut {
            skip: span.start,
            take: span.end - span.start,
        }
    }

    pub fn filter(&mut self, body: &mut Option<Bytes>) {
        let Some(mut chunk) = body.take() else {
            return;
        };
        let skip = self.skip.min(chunk.len() as u64);
        self.skip -= skip;
        let _ = chunk.split_to(skip as usize);
        let take = self.take.min(chunk.len() as u64);
        self.take -= take;
        chunk.truncate(take as usize);
        *body = (!chunk.is_empty()).then_some(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(range: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        if let Some(r) = range {
            req.insert_header(header::RANGE, r).unwrap();
        }
        req
    }

    /// The status, `Content-Range` and body span the rule gives.
    type Answer = (u16, Option<String>, Option<Range<u64>>);

    fn answer(range: Option<&str>, size: u64) -> Answer {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(header::CONTENT_LENGTH, size.to_string())
            .unwrap();
        let range = select(&req(range), &mut resp);
        let content_range = resp
            .headers
            .get(header::CONTENT_RANGE)
            .map(|v| v.to_str().unwrap().to_string());
        let length = headers::content_length(&resp.headers).unwrap();
        let span = match &range {
            RangeType::None => Some(0..size),
            RangeType::Single(r) => Some(r.start as u64..r.end as u64),
            RangeType::Multi(_) | RangeType::Invalid => None,
        };
        if let Some(s) = &span {
            assert_eq!(length, s.end - s.start, "Content-Length is the span's");
        }
        (resp.status.as_u16(), content_range, span)
    }

    #[test]
    fn the_range_rule_for_every_size_and_form() {
        const N: u64 = 100;
        let whole = |size: u64| (200, None, Some(0..size));
        let part = |a: u64, b: u64, size: u64| {
            (206, Some(format!("bytes {a}-{}/{size}", b - 1)), Some(a..b))
        };
        let refused = |size: u64| (416, Some(format!("bytes */{size}")), None);
        let table: &[(Option<&str>, u64, Answer)] = &[
            (None, 0, whole(0)),
            (None, N, whole(N)),
            // bytes=0-0
            (Some("bytes=0-0"), 0, refused(0)),
            (Some("bytes=0-0"), 1, part(0, 1, 1)),
            (Some("bytes=0-0"), N, part(0, 1, N)),
            // a-b
            (Some("bytes=10-19"), N, part(10, 20, N)),
            (Some("bytes=10-19"), 1, refused(1)),
            (Some("bytes = 10 - 19"), N, part(10, 20, N)),
            (Some("BYTES=10-19"), N, part(10, 20, N)),
            // a-
            (Some("bytes=0-"), 0, refused(0)),
            (Some("bytes=0-"), 1, part(0, 1, 1)),
            (Some("bytes=37-"), N, part(37, N, N)),
            // -n
            (Some("bytes=-5"), 0, refused(0)),
            (Some("bytes=-5"), 1, part(0, 1, 1)),
            (Some("bytes=-5"), N, part(N - 5, N, N)),
            (Some("bytes=-500"), N, part(0, N, N)),
            // -0
            (Some("bytes=-0"), 0, refused(0)),
            (Some("bytes=-0"), 1, refused(1)),
            (Some("bytes=-0"), N, refused(N)),
            // start >= size
            (Some("bytes=100-"), N, refused(N)),
            (Some("bytes=100-200"), N, refused(N)),
            (Some("bytes=1-"), 1, refused(1)),
            (Some("bytes=18446744073709551615-"), N, refused(N)),
            // end >= size: clamped
            (Some("bytes=90-200"), N, part(90, N, N)),
            (Some("bytes=0-18446744073709551615"), N, part(0, N, N)),
            (Some("bytes=0-0"), u64::MAX, part(0, 1, u64::MAX)),
            (Some("bytes=-18446744073709551615"), N, part(0, N, N)),
            // inverted: malformed, ignored
            (Some("bytes=19-10"), N, whole(N)),
            (Some("bytes=5-3"), 0, whole(0)),
            // multiple: ignored, the whole file
            (Some("bytes=0-1,5-9"), N, whole(N)),
            (Some("bytes=200-300,400-500"), N, whole(N)),
            (Some("bytes=-5,-1"), 0, whole(0)),
            // garbage
            (Some("bytes="), N, whole(N)),
            (Some("bytes=-"), N, whole(N)),
            (Some("bytes=a-b"), N, whole(N)),
            (Some("bytes=1-2-3"), N, whole(N)),
            (Some("bytes=+1-2"), N, whole(N)),
            (Some("bytes=0-18446744073709551616"), N, whole(N)),
            (Some("bytes=-0-1"), N, whole(N)),
            (Some("items=0-1"), N, whole(N)),
            (Some("0-1"), N, whole(N)),
            (Some(""), N, whole(N)),
        ];
        for (range, size, want) in table {
            assert_eq!(&answer(*range, *size), want, "{range:?} of {size} bytes");
        }
    }

    #[test]
    fn if_range_must_name_the_file() {
        let mut r = req(Some("bytes=1-2"));
        r.insert_header(header::IF_RANGE, "\"abc\"").unwrap();
        assert_eq!(decide(&r, Some(b"\"abc\""), 10), RangeType::Single(1..3));
        assert_eq!(decide(&r, Some(b"\"def\""), 10), RangeType::None);
        assert_eq!(decide(&r, None, 10), RangeType::None);
        let mut post = req(Some("bytes=1-2"));
        post.set_method(Method::POST);
        assert_eq!(decide(&post, None, 10), RangeType::None);
    }

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn upstream_answers_must_be_what_was_asked() {
        let asked = 10..20;
        let exact = resp(
            206,
            &[
                ("content-range", "bytes 10-19/100"),
                ("content-length", "10"),
            ],
        );
        assert_eq!(
            upstream_body(&exact, Some(&asked), 100),
            Some(UpstreamBody::Asked)
        );
        // Not asked for a range, a 206 is never the file.
        assert_eq!(upstream_body(&exact, None, 100), None);
        for (content_range, length) in [
            ("bytes 10-19/101", "10"),
            ("bytes 11-20/100", "10"),
            ("bytes 10-18/100", "9"),
            ("bytes 10-19/100", "9"),
            ("bytes */100", "0"),
        ] {
            let wrong = resp(
                206,
                &[("content-range", content_range), ("content-length", length)],
            );
            assert_eq!(
                upstream_body(&wrong, Some(&asked), 100),
                None,
                "{content_range}"
            );
        }
        let whole = resp(200, &[("content-length", "100")]);
        assert_eq!(upstream_body(&whole, None, 100), Some(UpstreamBody::Whole));
        assert_eq!(
            upstream_body(&whole, Some(&asked), 100),
            Some(UpstreamBody::CutHere(10..20))
        );
        let short = resp(200, &[("content-length", "99")]);
        assert_eq!(upstream_body(&short, Some(&asked), 100), None);
        assert_eq!(upstream_body(&resp(416, &[]), Some(&asked), 100), None);
    }

    #[test]
    fn a_cut_passes_only_its_span_whatever_the_chunks() {
        let data: Vec<u8> = (0..100).collect();
        for chunk in [1, 3, 7, 10, 64, 100] {
            let mut cut = Cut::new(&(10..20));
            let mut out = Vec::new();
            for piece in data.chunks(chunk) {
                let mut body = Some(Bytes::copy_from_slice(piece));
                cut.filter(&mut body);
                out.extend(body.unwrap_or_default());
            }
            assert_eq!(out, &data[10..20], "chunks of {chunk}");
        }
    }
}
