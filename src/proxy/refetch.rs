//! The origin a cut fill resumes from: the URL the body was being read from, asked again
//! with `Range`. A signed CDN URL that expired meanwhile is signed anew through the resolver,
//! as for a first request.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue};
use parking_lot::Mutex;

use super::Target;
use crate::hub::grammar::ResolveRequest;
use crate::hub::headers::content_length;
use crate::hub::status;
use crate::hub::upstream::{HostClass, Upstream, UpstreamError, UpstreamResponse};
use crate::hub::BlobId;
use crate::resolver::{ResolveError, Resolver};
use crate::store::{Refetch, RefetchBody, RefetchError};

/// Why a cut fill could not be continued from its origin.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("signing a new download URL failed: {0}")]
    Resign(#[from] ResolveError),
    #[error("range answer {got:?}, expected {want:?}")]
    WrongRange { got: Option<String>, want: String },
    #[error("upstream answered {0} to a range request")]
    Status(u16),
    #[error("the new download URL is on {0}, which is not the Hub or an allowed CDN host")]
    ForeignHost(String),
    #[error("the file changed upstream")]
    FileChanged,
}

pub struct UpstreamRefetch {
    pub upstream: Arc<Upstream>,
    pub resolver: Arc<Resolver>,
    pub target: Mutex<Target>,
    /// The credentials of the request that started the fill (sent to the Hub only).
    pub auth: Option<HeaderValue>,
    pub request: ResolveRequest,
    pub raw_path: String,
    pub blob: BlobId,
    pub size: u64,
}

#[async_trait]
impl Refetch for UpstreamRefetch {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        let mut resigned = false;
        loop {
            let target = self.target.lock().clone();
            let auth = self
                .auth
                .as_ref()
                .filter(|_| target.class == HostClass::Hub);
            let resp = self
                .upstream
                .get_from(&target.url, auth, offset)
                .await
                .map_err(ResumeError::from)?;
            let code = resp.header.status.as_u16();
            let expired = target.class == HostClass::Cdn && status::signature_refused(code);
            if expired && !resigned {
                resigned = true;
                self.resign().await?;
                continue;
            }
            return match code {
                206 => {
                    let want = format!("bytes {offset}-{}/{}", self.size - 1, self.size);
                    let got = resp.header.headers.get(header::CONTENT_RANGE);
                    if got.is_some_and(|v| v.as_bytes() == want.as_bytes()) {
                        Ok(Box::new(Ranged { resp, skip: 0 }))
                    } else {
                        let got = got.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                        Err(ResumeError::WrongRange { got, want }.into())
                    }
                }
                // An origin without ranges sends it all again: skip what the fill has.
                200 if content_length(&resp.header.headers) == Some(self.size) => {
                    Ok(Box::new(Ranged { resp, skip: offset }))
                }
                s => Err(ResumeError::Status(s).into()),
            };
        }
    }
}

impl UpstreamRefetch {
    /// A fresh download URL for the same blob.
    async fn resign(&self) -> Result<(), ResumeError> {
        let meta = self
            .resolver
            .refresh(&self.request, &self.raw_path, self.auth.as_ref())
            .await?;
        match meta.download {
            Some(url) if meta.blob == Some(self.blob) => {
                let class = self.upstream.classify(&url);
                if class == HostClass::Foreign {
                    return Err(ResumeError::ForeignHost(url.origin.host));
                }
                *self.target.lock() = Target { url, class };
                Ok(())
            }
            _ => Err(ResumeError::FileChanged),
        }
    }
}

/// The body from the resume offset: a 206 as is, a whole 200 with its head skipped.
struct Ranged {
    resp: UpstreamResponse,
    skip: u64,
}

#[async_trait]
impl RefetchBody for Ranged {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RefetchError> {
        loop {
            let Some(mut data) = self.resp.chunk().await.map_err(ResumeError::from)? else {
                return Ok(None);
            };
            if self.skip >= data.len() as u64 {
                self.skip -= data.len() as u64;
                continue;
            }
            let rest = data.split_off(self.skip as usize);
            self.skip = 0;
            return Ok(Some(rest));
        }
    }
}
