//! Answers a download from the store: a complete blob (a hit) or a fill in progress (a
//! coalesced reader). Used before Pingora's cache phase for complete hits, just before going
//! upstream for late coalescing, and after a cut upstream body for the fill's resume.
//!
//! Late coalescing: Pingora looks a key up, then takes the cache lock; with streaming partial
//! writes the first writer releases the lock as soon as its fill starts. A request whose
//! lookup missed just before that fill was registered takes the free lock and would fetch a
//! second copy; it is served from the fill here instead.

use http::header;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_cache::trace::Span;
use pingora_cache::Storage;
use pingora_proxy::{RangeType, Session};

use super::ctx::Download;
use super::range;
use crate::hub::headers::apply_resolve_headers;
use crate::metrics::CacheResult;
use crate::store::{cache_key, BlobReader, BlobStore};

/// Serves the request from the store when the blob is there or filling, returning the cache
/// result (`Hit` or `Coalesced`); `None` when the request should go upstream after all.
pub async fn serve(
    session: &mut Session,
    store: &'static BlobStore,
    download: &Download,
    request_id: &str,
) -> Result<Option<CacheResult>> {
    let meta = &download.meta;
    let Some(blob) = meta.blob else {
        return Ok(None);
    };
    let span = Span::inactive().handle();
    let Some((_, mut body)) = store.lookup(&cache_key(&blob), &span).await? else {
        return Ok(None);
    };
    let mut resp = ResponseHeader::build(200, Some(8))?;
    resp.insert_header(header::CONTENT_LENGTH, meta.size.to_string())?;
    // The file's headers first: an `If-Range` is checked against its ETag.
    apply_resolve_headers(&mut resp, meta, &download.file_name);
    let range = range::select(session.req_header(), &mut resp);
    let filling = body
        .as_any()
        .downcast_ref::<BlobReader>()
        .is_some_and(BlobReader::is_filling);
    let result = if filling {
        CacheResult::Coalesced
    } else {
        CacheResult::Hit
    };
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
        while let Some(chunk) = body.read_body().await? {
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
    }
    Ok(Some(result))
}

/// Sends the rest of a response whose upstream body was cut after its header went out, from
/// the fill that is resuming it. `false` when that fails: closing short of `Content-Length`
/// is then the only honest answer left.
pub async fn finish_cut_response(
    session: &mut Session,
    store: &'static BlobStore,
    download: &Download,
    request_id: &str,
) -> bool {
    let (Some(blob), Some(span)) = (download.meta.blob, &download.body_range) else {
        return false;
    };
    let pos = span.start + session.as_downstream().body_bytes_sent() as u64;
    if pos >= span.end {
        return false;
    }
    let trace = Span::inactive().handle();
    let Ok(Some((_, mut body))) = store.lookup(&cache_key(&blob), &trace).await else {
        return false;
    };
    if body.seek(pos as usize, Some(span.end as usize)).is_err() {
        return false;
    }
    loop {
        match body.read_body().await {
            Ok(Some(chunk)) => {
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("{request_id}: resumed fill failed: {e}");
                return false;
            }
        }
    }
    session.write_response_body(None, true).await.is_ok()
}
