//! Answers a download from the store: a complete blob (a hit) or a fill in progress (the
//! request that started it, or a coalesced reader), with ranges, in `request_filter`, before
//! Pingora's proxy phases. A client that reads slowly, or not at all, only holds up its own
//! answer: the fill it reads is written by the store's task.

use http::header;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_cache::HitHandler;
use pingora_proxy::{RangeType, Session};

use super::ctx::Download;
use super::range;
use crate::hub::headers::apply_resolve_headers;
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
    let meta = &download.meta;
    let file_name = &download.file_name;
    let decorate = |resp: &mut ResponseHeader| apply_resolve_headers(resp, meta, file_name);
    serve_blob(session, body, meta.size, decorate, result, request_id).await
}

/// Answers the request from `body`, a reader of a blob of `size` bytes, with the headers
/// `decorate` sets (its `ETag` among them), labelled `result`.
pub async fn serve_blob(
    session: &mut Session,
    mut body: HitHandler,
    size: u64,
    decorate: impl FnOnce(&mut ResponseHeader),
    result: CacheResult,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(8))?;
    resp.insert_header(header::CONTENT_LENGTH, size.to_string())?;
    // The file's headers first: an `If-Range` is checked against its ETag.
    decorate(&mut resp);
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
