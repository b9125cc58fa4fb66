//! Hub-compatible headers and bodies: what `huggingface_hub` reads on a download, the error
//! headers it classifies exceptions by, pagination `Link`s, and the Xet hints hf-edge removes
//! so that clients download over plain HTTP through it instead of going around it.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use serde_json::Value;

use super::grammar::Repo;
use super::url::{Origin, Url};
use super::BlobId;

/// What the Hub said about one file at one commit.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub commit: String,
    /// Normalised ETag (no quotes): the sha256 for LFS files, the git oid otherwise.
    pub etag: String,
    /// The content address, when the ETag is one (it always is on the real Hub).
    pub blob: Option<BlobId>,
    pub size: u64,
    /// An LFS file: `X-Linked-Etag` / `X-Linked-Size` are sent.
    pub lfs: bool,
    pub content_type: Option<String>,
    /// Where the bytes are: a signed CDN URL or a Hub URL, obtained at `resolved_at`.
    /// Signed URLs expire; metadata reloaded from disk has none.
    pub download: Option<Url>,
    pub resolved_at: Instant,
    /// Answered from what hf-edge knew before, because the Hub could not be asked.
    pub stale: bool,
    /// The repo the Hub redirected to, when it is not the one asked for (a renamed or
    /// transferred repo): the site's repo rules are checked against it too.
    pub moved_to: Option<Repo>,
}

/// Marks an answer given from earlier knowledge while the Hub was unreachable (RFC 7234's
/// code 110), so operators and clients can tell.
pub const STALE_WARNING: &str = "110 hf-edge \"stale: the Hub could not be reached\"";

/// Headers from an upstream error that clients read; passed through unchanged.
pub const ERROR_PASSTHROUGH: &[&str] = &[
    "x-error-code",
    "x-error-message",
    "x-repo-commit",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "x-request-id",
    "www-authenticate",
];

/// Xet hints that would send the client around hf-edge, straight to Xet storage.
const XET_HEADERS: &[&str] = &["x-xet-hash", "x-xet-refresh-route", "x-xet-cas-url"];

/// The `Content-Length` of a response, when it has a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sets the headers `hf_hub_download` reads on a `/resolve` answer (HEAD and GET, hit or
/// miss). `Content-Length` is left to the caller: it differs for ranges.
pub fn apply_resolve_headers(resp: &mut ResponseHeader, meta: &FileMeta, file_name: &str) {
    let quoted = format!("\"{}\"", meta.etag);
    let mut set = |name: &'static str, value: String| {
        // Values are built from validated hex, digits and percent-encoded names.
        let _ = resp.insert_header(name, value);
    };
    set("x-repo-commit", meta.commit.clone());
    if meta.stale {
        set("warning", STALE_WARNING.to_string());
    }
    set("etag", quoted.clone());
    if meta.lfs {
        set("x-linked-etag", quoted);
        set("x-linked-size", meta.size.to_string());
    }
    set("accept-ranges", "bytes".into());
    set("content-disposition", content_disposition(file_name));
    set(
        "content-type",
        meta.content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
    );
    strip_xet_headers(resp);
}

/// The answer to `HEAD /resolve/...`: headers only, the body is never fetched.
pub fn head_response(meta: &FileMeta, file_name: &str) -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, Some(8)).expect("valid status");
    let _ = resp.insert_header(header::CONTENT_LENGTH, meta.size.to_string());
    apply_resolve_headers(&mut resp, meta, file_name);
    resp
}

/// Drops Xet headers and the Xet entries of `Link`.
pub fn strip_xet_headers(resp: &mut ResponseHeader) {
    for h in XET_HEADERS {
        resp.remove_header(*h);
    }
    let links: Vec<String> = resp
        .headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_links)
        .filter(|l| !l.contains("rel=\"xet-"))
        .collect();
    resp.remove_header(&header::LINK);
    if !links.is_empty() {
        let _ = resp.insert_header(header::LINK, links.join(", "));
    }
}

/// Splits a `Link` header into entries (commas inside `<...>` do not split).
fn split_links(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (false, 0);
    for (i, c) in v.char_indices() {
        match c {
            '<' => depth = true,
            '>' => depth = false,
            ',' if !depth => {
                out.push(v[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim().to_string());
    out.retain(|s| !s.is_empty());
    out
}

/// Rewrites URLs in a `Link` header that point at the Hub so they point at hf-edge
/// (`public_base`, like `http://hf-edge:8080`): clients fetch next pages verbatim.
pub fn rewrite_links(value: &str, hub: &Origin, public_base: &str) -> String {
    split_links(value)
        .into_iter()
        .map(|entry| {
            let Some((url, rest)) = entry.strip_prefix('<').and_then(|e| e.split_once('>')) else {
                return entry;
            };
            let url = match Url::parse(url) {
                Ok(u) if u.origin.same_origin(hub) => format!("{public_base}{}", u.path_and_query),
                _ if url.starts_with('/') => format!("{public_base}{url}"),
                _ => url.to_string(),
            };
            format!("<{url}>{rest}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `Location` on the Hub's own origin, pointed at hf-edge instead (clients follow it
/// verbatim, and would otherwise leave hf-edge); `None` for anything else.
pub fn rewrite_location(location: &str, hub: &Origin, public_base: &str) -> Option<String> {
    let url = Url::parse(location).ok()?;
    url.origin
        .same_origin(hub)
        .then(|| format!("{public_base}{}", url.path_and_query))
}

/// Removes `xetHash` from `/tree` and `/paths-info` entries, so clients fall back to
/// downloading through `/resolve` (and hf-edge).
pub fn strip_xet_hash(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(strip_xet_hash),
        Value::Object(map) => {
            map.remove("xetHash");
            map.values_mut().for_each(strip_xet_hash);
        }
        _ => {}
    }
}

/// `Content-Disposition` as the Hub writes it: an RFC 5987 UTF-8 name plus an ASCII fallback.
pub fn content_disposition(file_name: &str) -> String {
    let encoded =
        percent_encoding::utf8_percent_encode(file_name, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("inline; filename*=UTF-8''{encoded}; filename=\"{ascii}\";")
}

/// A JSON error response: `{"error": message}` with an exact `Content-Length`.
pub fn json_error(status: u16, message: &str) -> (ResponseHeader, Bytes) {
    let body = Bytes::from(serde_json::json!({ "error": message }).to_string());
    let mut resp = ResponseHeader::build(status, Some(4)).expect("valid status");
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    let _ = resp.insert_header(header::CACHE_CONTROL, "no-store");
    (resp, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(lfs: bool) -> FileMeta {
        FileMeta {
            commit: "c".repeat(40),
            etag: if lfs { "a".repeat(64) } else { "b".repeat(40) },
            blob: None,
            size: 87,
            lfs,
            content_type: None,
            download: Some(Url::parse("https://cdn.hf.co/x?sig=1").unwrap()),
            resolved_at: Instant::now(),
            stale: false,
            moved_to: None,
        }
    }

    fn get<'a>(r: &'a ResponseHeader, k: &str) -> Option<&'a str> {
        r.headers.get(k).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn head_of_lfs_file_has_linked_headers() {
        let r = head_response(&meta(true), "model.safetensors");
        assert_eq!(r.status, 200);
        assert_eq!(get(&r, "x-repo-commit"), Some(&*"c".repeat(40)));
        assert_eq!(
            get(&r, "x-linked-etag"),
            Some(&*format!("\"{}\"", "a".repeat(64)))
        );
        assert_eq!(get(&r, "x-linked-size"), Some("87"));
        assert_eq!(get(&r, "content-length"), Some("87"));
        assert_eq!(get(&r, "accept-ranges"), Some("bytes"));
    }

    #[test]
    fn regular_file_has_no_linked_headers() {
        let r = head_response(&meta(false), "config.json");
        assert_eq!(get(&r, "etag"), Some(&*format!("\"{}\"", "b".repeat(40))));
        assert!(get(&r, "x-linked-etag").is_none());
        assert!(get(&r, "x-linked-size").is_none());
    }

    #[test]
    fn xet_hints_are_removed() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("x-xet-hash", "abc").unwrap();
        r.insert_header("x-xet-refresh-route", "/api/x").unwrap();
        r.insert_header(
            "link",
            "<https://hub/api/x/xet-read-token/c>; rel=\"xet-auth\", <https://cas/v1/r/abc>; rel=\"xet-reconstruction-info\", <https://hub/n>; rel=\"next\"",
        )
        .unwrap();
        strip_xet_headers(&mut r);
        assert!(get(&r, "x-xet-hash").is_none());
        assert!(get(&r, "x-xet-refresh-route").is_none());
        assert_eq!(get(&r, "link"), Some("<https://hub/n>; rel=\"next\""));
    }

    #[test]
    fn next_page_links_point_at_the_edge() {
        let hub = Origin::parse("https://huggingface.co").unwrap();
        let v = "<https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=ZXk%3D>; rel=\"next\"";
        assert_eq!(
            rewrite_links(v, &hub, "http://edge:8080"),
            "<http://edge:8080/api/models/a/b/tree/main?recursive=true&cursor=ZXk%3D>; rel=\"next\""
        );
        let other = "<https://elsewhere.org/x>; rel=\"help\"";
        assert_eq!(rewrite_links(other, &hub, "http://edge:8080"), other);
        // Kept as paths, given each request's own base later.
        let paths = rewrite_links(v, &hub, "");
        assert_eq!(
            paths,
            "</api/models/a/b/tree/main?recursive=true&cursor=ZXk%3D>; rel=\"next\""
        );
        assert_eq!(
            rewrite_links(&paths, &hub, "https://edge.site"),
            "<https://edge.site/api/models/a/b/tree/main?recursive=true&cursor=ZXk%3D>; rel=\"next\""
        );
    }

    #[test]
    fn locations_on_the_hub_point_at_the_edge() {
        let hub = Origin::parse("https://huggingface.co").unwrap();
        let base = "http://edge:8080";
        assert_eq!(
            rewrite_location("https://huggingface.co/api/models/new/m", &hub, base).as_deref(),
            Some("http://edge:8080/api/models/new/m")
        );
        assert_eq!(rewrite_location("/api/models/new/m", &hub, base), None);
        assert_eq!(
            rewrite_location("https://cdn-lfs.hf.co/x?sig", &hub, base),
            None
        );
        assert_eq!(
            rewrite_location("https://huggingface.co:8443/x", &hub, base),
            None
        );
    }

    #[test]
    fn xet_hash_is_removed_from_tree_json() {
        let mut v: Value = serde_json::from_str(
            r#"[{"type":"file","path":"a","xetHash":"x","lfs":{"oid":"o"}},{"type":"directory","path":"d"}]"#,
        )
        .unwrap();
        strip_xet_hash(&mut v);
        assert_eq!(
            v.to_string(),
            r#"[{"type":"file","path":"a","lfs":{"oid":"o"}},{"type":"directory","path":"d"}]"#
        );
    }

    #[test]
    fn content_disposition_quotes_unicode() {
        assert_eq!(
            content_disposition("dé jà+v1.json"),
            "inline; filename*=UTF-8''d%C3%A9%20j%C3%A0%2Bv1%2Ejson; filename=\"d_ j_+v1.json\";"
        );
    }
}
