//! Answers hf-edge writes itself: JSON errors, `HEAD /resolve`, and the Hub's own errors.

use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;

use super::admission::Refusal;
use super::range;
use crate::access::Denied;
use crate::hub::headers::{head_response, json_error, FileMeta};
use crate::resolver::ResolveError;
use crate::status::{self, Page, StatusSource};

/// Writes a whole response; a HEAD gets the headers only.
async fn write(
    session: &mut Session,
    mut resp: ResponseHeader,
    body: Bytes,
    request_id: &str,
) -> Result<bool> {
    if resp.headers.get("x-request-id").is_none() {
        resp.insert_header("x-request-id", request_id)?;
    }
    let header_only = session.req_header().method == Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), header_only)
        .await?;
    if !header_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// `{"error": message}` with `status`.
pub async fn error(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &str,
) -> Result<bool> {
    let (resp, body) = json_error(status, message);
    write(session, resp, body, request_id).await
}

/// A request refused at admission. A repo rule answers like the Hub's `GatedRepo`, so
/// clients fail fast instead of retrying.
pub async fn refusal(session: &mut Session, refusal: &Refusal, request_id: &str) -> Result<bool> {
    let message = refusal.to_string();
    let (mut resp, body) = json_error(refusal.status(), &message);
    match refusal {
        Refusal::Denied(Denied::RepoRule(_) | Denied::UnknownRepo) => {
            resp.insert_header("x-error-code", "GatedRepo")?;
            resp.insert_header("x-error-message", &message)?;
        }
        Refusal::Denied(Denied::KeyRequired) => {
            resp.insert_header("www-authenticate", "Bearer realm=\"hf-edge\"")?;
        }
        _ => {}
    }
    write(session, resp, body, request_id).await
}

/// The answer to `HEAD /resolve/...`, from metadata alone.
pub async fn head(
    session: &mut Session,
    meta: &FileMeta,
    file_name: &str,
    request_id: &str,
) -> Result<bool> {
    write(
        session,
        head_response(meta, file_name),
        Bytes::new(),
        request_id,
    )
    .await
}

/// A `Range` no part of the file satisfies: `416` with the file's headers.
pub async fn unsatisfiable(
    session: &mut Session,
    meta: &FileMeta,
    file_name: &str,
    request_id: &str,
) -> Result<bool> {
    let mut resp = head_response(meta, file_name);
    range::apply(&mut resp, &range::RangeType::Invalid, meta.size)?;
    write(session, resp, Bytes::new(), request_id).await
}

/// A failed resolution: the Hub's own error (status and the headers clients classify by),
/// or 502/504 when the Hub could not be asked.
pub async fn resolve_error(
    session: &mut Session,
    e: &ResolveError,
    request_id: &str,
) -> Result<bool> {
    match e {
        ResolveError::Hub { status, headers } => {
            let message = headers
                .iter()
                .find(|(k, _)| *k == "x-error-message")
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or("the Hub refused the request");
            let (mut resp, body) = json_error(*status, message);
            for (k, v) in headers {
                let _ = resp.insert_header(*k, v.clone());
            }
            write(session, resp, body, request_id).await
        }
        ResolveError::Upstream(u) => error(session, u.status(), &u.to_string(), request_id).await,
        ResolveError::Offline => error(session, 504, &e.to_string(), request_id).await,
    }
}

/// The status page (`/`) or its data (`/status.json`). The page runs no script and loads
/// nothing, and says so in its `Content-Security-Policy`.
pub async fn status_page(
    session: &mut Session,
    source: &StatusSource,
    page: Page,
    request_id: &str,
) -> Result<bool> {
    let req = session.req_header();
    let header =
        |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let host = header(http::header::HOST).map(str::to_string);
    let proto = req
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let s = source.status(host.as_deref(), proto.as_deref()).await;
    let (content_type, body) = match page {
        Page::Html => ("text/html; charset=utf-8", status::html(&s).into_bytes()),
        Page::Json => (
            "application/json",
            serde_json::to_vec(&s).expect("the status serializes"),
        ),
    };
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    )?;
    write(session, resp, Bytes::from(body), request_id).await
}
