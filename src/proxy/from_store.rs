//! Answers a download from the store: a complete blob (a hit) or a fill in progress (the
//! request that started it, or a coalesced reader), with ranges, in `request_filter`, before
//! Pingora's proxy phases. A client that reads slowly, or not at all, only holds up its own
//! answer: the fill it reads is written by the store's task.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use http::header;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_cache::HitHandler;
use pingora_proxy::{RangeType, Session};

use super::ctx::Download;
use super::range;
use crate::hub::headers::{apply_resolve_headers, FileMeta};
use crate::hub::BlobId;
use crate::metrics::CacheResult;
use crate::store::BlobStore;

/// A reader of the blob when the store has it or is filling it, with its cache result
/// (`Hit` or `Coalesced`).
pub async fn open(store: &BlobStore, blob: &BlobId) -> Option<(HitHandler, CacheResult)> {
    let reader = store.reader(*blob).await?;
    let result = if reader.is_filling() {
        CacheResult::Coalesced
    } else {
        CacheResult::Hit
    };
    Some((Box::new(reader), result))
}

/// Answers a download from `body`, a reader of its blob, labelled `result`.
pub async fn serve_reader(
    session: &mut Session,
    body: HitHandler,
    download: &Download,
    result: CacheResult,
    request_id: &str,
) -> Result<()> {
    let resp = file_response(&download.meta, &download.file_name)?;
    serve_blob(session, body, resp, result, request_id).await
}

/// A `200` for a blob of `size` bytes: its `Content-Length` and the headers `decorate` sets
/// (its `ETag` among them).
pub fn blob_response(
    size: u64,
    decorate: impl FnOnce(&mut ResponseHeader),
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(12))?;
    resp.insert_header(header::CONTENT_LENGTH, size.to_string())?;
    decorate(&mut resp);
    Ok(resp)
}

/// Distinct file answers whose response headers are kept; past it the set starts over.
const MAX_TEMPLATES: usize = 4096;

/// The `200` of a file, built once per distinct answer (the headers the Hub's metadata and the
/// file name make) and cloned for each request: formatting them is most of a small hit's own
/// work otherwise.
static TEMPLATES: LazyLock<Mutex<Templates>> = LazyLock::new(Default::default);

/// Response headers by the hash of their [`Shape`], which is kept to check a hit against.
type Templates = HashMap<u64, (Shape<String>, ResponseHeader)>;

/// What a file's response headers are made of (`apply_resolve_headers`).
#[derive(Hash, PartialEq)]
struct Shape<S> {
    etag: S,
    commit: S,
    size: u64,
    lfs: bool,
    stale: bool,
    content_type: Option<S>,
    file_name: S,
}

impl<'a> Shape<&'a str> {
    fn of(meta: &'a FileMeta, file_name: &'a str) -> Self {
        Shape {
            etag: &meta.etag,
            commit: &meta.commit,
            size: meta.size,
            lfs: meta.lfs,
            stale: meta.stale,
            content_type: meta.content_type.as_deref(),
            file_name,
        }
    }

    fn key(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn is(&self, kept: &Shape<String>) -> bool {
        *self
            == Shape {
                etag: kept.etag.as_str(),
                commit: &kept.commit,
                size: kept.size,
                lfs: kept.lfs,
                stale: kept.stale,
                content_type: kept.content_type.as_deref(),
                file_name: &kept.file_name,
            }
    }

    fn to_owned(&self) -> Shape<String> {
        Shape {
            etag: self.etag.to_string(),
            commit: self.commit.to_string(),
            size: self.size,
            lfs: self.lfs,
            stale: self.stale,
            content_type: self.content_type.map(str::to_string),
            file_name: self.file_name.to_string(),
        }
    }
}

/// The `200` of the file `meta` describes, served as `file_name`.
fn file_response(meta: &FileMeta, file_name: &str) -> Result<ResponseHeader> {
    let shape = Shape::of(meta, file_name);
    let key = shape.key();
    if let Some((kept, resp)) = TEMPLATES.lock().get(&key) {
        if shape.is(kept) {
            return Ok(resp.clone());
        }
    }
    let resp = blob_response(meta.size, |r| apply_resolve_headers(r, meta, file_name))?;
    let mut templates = TEMPLATES.lock();
    if templates.len() >= MAX_TEMPLATES {
        templates.clear();
    }
    templates.insert(key, (shape.to_owned(), resp.clone()));
    Ok(resp)
}

/// Answers the request from `body`, a reader of a blob, with `resp` (from [`blob_response`]),
/// labelled `result`.
pub async fn serve_blob(
    session: &mut Session,
    mut body: HitHandler,
    mut resp: ResponseHeader,
    result: CacheResult,
    request_id: &str,
) -> Result<()> {
    // The file's headers are in already: an `If-Range` is checked against its ETag.
    let range = range::select(session.req_header(), &mut resp);
    resp.insert_header("x-hf-edge-cache", result.label())?;
    resp.insert_header("x-request-id", request_id)?;
    let header_only = match &range {
        RangeType::Single(r) => {
            body.seek(r.start, Some(r.end))?;
            false
        }
        RangeType::Invalid => true,
        // (The range rule answers several ranges with the whole file, never multipart.)
        RangeType::None | RangeType::Multi(_) => false,
    };
    let header_only = header_only || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), header_only)
        .await?;
    if !header_only {
        loop {
            // While this waits for a fill's next bytes, a client that closes its connection is
            // noticed at once, not at the next write: the fill's orphan policy counts its
            // readers. (For a GET the idle read only ever ends in an error.)
            let chunk = tokio::select! {
                // Bytes first: a client that closes right after its last byte is no error.
                biased;
                chunk = body.read_body() => chunk?,
                Err(gone) = session.downstream_session.read_body_or_idle(true) => return Err(gone),
            };
            let Some(chunk) = chunk else { break };
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::BlobId;

    fn meta(commit: &str, stale: bool) -> FileMeta {
        FileMeta {
            commit: commit.into(),
            blob: BlobId::from_etag(&"b".repeat(64)),
            etag: "b".repeat(64),
            size: 1234,
            lfs: true,
            content_type: None,
            download: None,
            resolved_at: std::time::Instant::now(),
            stale,
            moved_to: None,
        }
    }

    fn lines(resp: &ResponseHeader) -> Vec<(String, String)> {
        let mut v: Vec<_> = resp
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_kept_response_is_the_one_its_file_answer_makes_and_no_other_files() {
        let fresh = |m: &FileMeta, name: &str| {
            blob_response(m.size, |r| apply_resolve_headers(r, m, name)).unwrap()
        };
        let a = meta(&"1".repeat(40), false);
        let kept = file_response(&a, "a.json").unwrap();
        let again = file_response(&a, "a.json").unwrap();
        assert_eq!(lines(&kept), lines(&fresh(&a, "a.json")));
        assert_eq!(lines(&again), lines(&kept));
        // Any part of the answer that shows in a header makes a response of its own.
        let stale = meta(&"1".repeat(40), true);
        let other_commit = meta(&"2".repeat(40), false);
        for (m, name) in [
            (&stale, "a.json"),
            (&other_commit, "a.json"),
            (&a, "b.json"),
        ] {
            let got = file_response(m, name).unwrap();
            assert_eq!(lines(&got), lines(&fresh(m, name)));
            assert_ne!(lines(&got), lines(&kept));
        }
    }
}
