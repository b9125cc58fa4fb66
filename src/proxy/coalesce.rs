//! Late coalescing. Pingora looks a key up, then takes the cache lock; with streaming partial
//! writes the first writer releases the lock as soon as its fill starts. A request whose
//! lookup missed just before that fill was registered then takes the free lock and would
//! fetch a second copy. Just before such a request goes upstream, this serves it from the
//! fill (or the blob, if it completed meanwhile) instead.

use http::header;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_cache::trace::Span;
use pingora_cache::Storage;
use pingora_proxy::{RangeType, Session};

use super::{select_range, Ctx};
use crate::hub::headers::{apply_resolve_headers, FileMeta};
use crate::store::{cache_key, BlobReader, BlobStore};

/// Serves the request from the store when the blob is there or filling, returning the cache
/// result (`hit` or `coalesced`); `None` when the request should go upstream after all.
pub async fn serve_from_store(
    session: &mut Session,
    ctx: &mut Ctx,
    store: &'static BlobStore,
    meta: &FileMeta,
) -> Result<Option<&'static str>> {
    let Some(blob) = meta.blob else {
        return Ok(None);
    };
    let span = Span::inactive().handle();
    let Some((_, mut body)) = store.lookup(&cache_key(&blob), &span).await? else {
        return Ok(None);
    };
    let mut resp = ResponseHeader::build(200, Some(8))?;
    resp.insert_header(header::CONTENT_LENGTH, meta.size.to_string())?;
    let range = select_range(session.req_header(), &mut resp);
    apply_resolve_headers(&mut resp, meta, &ctx.file_name);
    let label = if body
        .as_any()
        .downcast_ref::<BlobReader>()
        .is_some_and(BlobReader::is_filling)
    {
        "coalesced"
    } else {
        "hit"
    };
    resp.insert_header("x-hf-edge-cache", label)?;
    resp.insert_header("x-request-id", &ctx.request_id)?;
    let header_only = match &range {
        RangeType::Single(r) => {
            body.seek(r.start, Some(r.end))?;
            false
        }
        RangeType::Invalid => true,
        // Clients never ask for multipart ranges; send the whole file as a plain 200.
        RangeType::Multi(_) => {
            resp.set_status(200)?;
            resp.insert_header(header::CONTENT_LENGTH, meta.size.to_string())?;
            resp.remove_header(&header::CONTENT_TYPE);
            resp.remove_header(&header::CONTENT_RANGE);
            false
        }
        RangeType::None => false,
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
    Ok(Some(label))
}
