//! git-lfs through the cache. The Hub's batch answers to downloads are rewritten (by the
//! pass-through flow, with [`crate::hub::lfs`]) so that each object's `href` is hf-edge's
//! `/{repo}.git/info/lfs/objects/{oid}`; the Hub's own action (CDN `href` and any `header`
//! auth for it) is kept here, in [`LfsActions`]: in memory only, per identity, repo and oid,
//! for at most `access.auth_ttl` (or the Hub's expiry, when sooner) and at most
//! [`MAX_ACTIONS`] of them. An object request is served only to the identity whose batch the
//! Hub answered for that repo within that time — the Hub's yes, as for a `/resolve` — from the
//! content-addressed store (an LFS oid is the sha256 blobs are stored under), filled from the
//! kept `href` on a miss, coalesced and verified like any fill. The `header` auth goes only to
//! that `href`, and never to the client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{header, HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;

use super::download::DownloadFlow;
use super::from_store::{blob_response, serve_blob};
use super::refetch::{answer_for, body_from, counted, ResumeError};
use super::{respond, Ctx};
use crate::access::IdentityKey;
use crate::hub::grammar::{LfsObjectRequest, Repo};
use crate::hub::lfs::DownloadAction;
use crate::hub::upstream::{HostClass, Upstream};
use crate::hub::url::Url;
use crate::hub::BlobId;
use crate::metrics::Metrics;
use crate::store::{FillFailure, Refetch, RefetchBody, RefetchError};

/// Most download actions kept at once (git-lfs asks for 100 objects per batch); the oldest
/// go first.
pub const MAX_ACTIONS: usize = 10_000;

/// Headers of a Hub action that hf-edge sets itself on the request to its `href`.
const OWN_HEADERS: &[&str] = &[
    "host",
    "range",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept-encoding",
];

/// The Hub's download action for one object, as kept.
#[derive(Clone)]
struct Kept {
    href: Url,
    header: Vec<(HeaderName, HeaderValue)>,
    size: u64,
    expires: Instant,
    /// Insertion number, to tell the current entry from an older one in the eviction order.
    seq: u64,
}

type Key = (IdentityKey, Repo, String);

#[derive(Default)]
struct Table {
    map: HashMap<Key, Kept>,
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

/// The download actions of the Hub's batch answers, per identity, repo (case-folded) and oid.
pub struct LfsActions {
    table: Mutex<Table>,
    /// Longest time an action is kept: `access.auth_ttl`.
    pub max_ttl: Duration,
    max_entries: usize,
}

impl LfsActions {
    pub fn new(max_ttl: Duration, max_entries: usize) -> LfsActions {
        LfsActions {
            table: Mutex::new(Table::default()),
            max_ttl,
            max_entries,
        }
    }

    /// Keeps the actions the Hub gave `identity` for `repo`. Actions whose `href` or `header`
    /// cannot be used are not kept (their objects then get a 404 from hf-edge).
    pub fn keep(&self, identity: IdentityKey, repo: &Repo, actions: Vec<DownloadAction>) {
        let now = Instant::now();
        let mut t = self.table.lock();
        for a in actions {
            let Some(kept) = usable(&a, now) else {
                continue;
            };
            t.seq += 1;
            let seq = t.seq;
            let key = (identity, repo.folded(), a.oid);
            t.order.push_back((key.clone(), seq));
            t.map.insert(key, Kept { seq, ..kept });
            while t.map.len() > self.max_entries {
                let Some((old, old_seq)) = t.order.pop_front() else {
                    break;
                };
                if t.map.get(&old).is_some_and(|k| k.seq == old_seq) {
                    t.map.remove(&old);
                }
            }
        }
        // Entries replaced by a newer action leave stale order slots; drop them so the
        // order stays bounded too.
        if t.order.len() > 2 * self.max_entries {
            let Table { map, order, .. } = &mut *t;
            order.retain(|(k, s)| map.get(k).is_some_and(|kept| kept.seq == *s));
        }
    }

    /// The action the Hub gave `identity` for this object of `repo`, while it is fresh.
    fn get(&self, identity: IdentityKey, repo: &Repo, oid: &str) -> Option<Kept> {
        let key = (identity, repo.folded(), oid.to_string());
        let mut t = self.table.lock();
        let kept = t.map.get(&key)?;
        if kept.expires <= Instant::now() {
            t.map.remove(&key);
            return None;
        }
        Some(kept.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().map.len()
    }
}

/// The action as kept: a parsed `href` and valid header names and values.
fn usable(a: &DownloadAction, now: Instant) -> Option<Kept> {
    let href = Url::parse(&a.href).ok()?;
    let header = a
        .header
        .iter()
        .filter(|(k, _)| !OWN_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| Some((k.parse().ok()?, HeaderValue::from_str(v).ok()?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Kept {
        href,
        header,
        size: a.size,
        expires: now + a.ttl,
        seq: 0,
    })
}

impl DownloadFlow {
    /// `request_filter` for `GET`/`HEAD /{repo}.git/info/lfs/objects/{oid}`: always answers.
    pub async fn serve_lfs_object(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        req: LfsObjectRequest,
        actions: &LfsActions,
    ) -> Result<bool> {
        let identity = IdentityKey::of(ctx.auth.as_ref());
        let Some(kept) = actions.get(identity, &req.repo, &req.oid) else {
            let msg = format!(
                "no LFS batch answer of the Hub for object {} of {} to these credentials in the \
                 last {} s: ask the batch API first",
                req.oid,
                req.repo,
                actions.max_ttl.as_secs()
            );
            return respond::error(session, 404, &msg, &ctx.request_id).await;
        };
        let blob = BlobId::from_etag(&req.oid).expect("the grammar checked the oid");
        let etag = format!("\"{}\"", req.oid);
        let decorate = |resp: &mut ResponseHeader| {
            // Values built from hex digits.
            let _ = resp.insert_header(header::ETAG, &etag);
            let _ = resp.insert_header(header::ACCEPT_RANGES, "bytes");
            let _ = resp.insert_header(header::CONTENT_TYPE, "application/octet-stream");
        };
        if session.req_header().method == http::Method::HEAD {
            let mut resp = ResponseHeader::build(200, Some(4))?;
            resp.insert_header(header::CONTENT_LENGTH, kept.size.to_string())?;
            decorate(&mut resp);
            resp.insert_header("x-request-id", &ctx.request_id)?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        if kept.size > self.max_blob_size {
            let msg = format!("LFS object {} is larger than cache.max_size", req.oid);
            return respond::error(session, 507, &msg, &ctx.request_id).await;
        }
        let size = kept.size;
        let source = || -> Arc<dyn Refetch> {
            Arc::new(LfsRefetch {
                upstream: self.upstream.clone(),
                metrics: self.metrics.clone(),
                class: self.upstream.classify(&kept.href),
                href: kept.href.clone(),
                header: kept.header.clone(),
                size,
                opened: AtomicBool::new(false),
            })
        };
        let fetch = self.store.read_or_fill(blob, size, source).await;
        let (mut reader, result) = match self.reader_of(fetch, &blob, size) {
            Ok(read) => read,
            Err(why) => {
                let msg = format!("LFS object {} cannot be fetched now: {why}", req.oid);
                return busy(session, &msg, &ctx.request_id).await;
            }
        };
        match reader.wait_opened().await {
            Ok(()) => {}
            Err(FillFailure::Local(why)) => {
                let msg = format!("LFS object {} cannot be fetched now: {why}", req.oid);
                return busy(session, &msg, &ctx.request_id).await;
            }
            Err(FillFailure::Upstream(e)) => {
                let (status, message) = answer_for(e.as_ref());
                return respond::error(session, status, &message, &ctx.request_id).await;
            }
        }
        let body = Box::new(reader);
        let resp = blob_response(size, decorate)?;
        serve_blob(session, body, resp, result, &ctx.request_id).await?;
        Ok(true)
    }
}

/// 503 with `Retry-After`: git-lfs retries it.
async fn busy(session: &mut Session, message: &str, request_id: &str) -> Result<bool> {
    let (mut resp, body) = crate::hub::headers::json_error(503, message);
    resp.insert_header(header::RETRY_AFTER, "1")?;
    resp.insert_header("x-request-id", request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// The origin of an LFS object's fill: the `href` of the Hub's action, with its `header`,
/// from an offset. An expired `href` is not signed anew (only a new batch request can): the
/// fill fails, and the client's next batch gives a fresh one.
struct LfsRefetch {
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    href: Url,
    class: HostClass,
    header: Vec<(HeaderName, HeaderValue)>,
    size: u64,
    /// The first answer was opened: later ones are resumes.
    opened: AtomicBool,
}

#[async_trait]
impl Refetch for LfsRefetch {
    async fn open(&self, offset: u64) -> Result<Box<dyn RefetchBody>, RefetchError> {
        if self.class == HostClass::Foreign {
            let host = self.href.origin.host.clone();
            let e = crate::hub::upstream::UpstreamError::ForeignRedirect { host };
            return Err(ResumeError::from(e).into());
        }
        let first = !self.opened.swap(true, Ordering::Relaxed);
        let request = self.upstream.get_with(&self.href, &self.header, offset);
        let resp = counted(&self.metrics, request).await?;
        body_from(resp, offset, self.size, first.then(|| self.metrics.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::grammar::RepoType;

    fn action(oid: &str, ttl: u64) -> DownloadAction {
        DownloadAction {
            oid: oid.into(),
            size: 3,
            href: "https://cdn.test/b".into(),
            header: vec![
                ("X-Cdn-Token".into(), "t".into()),
                ("Host".into(), "x".into()),
            ],
            ttl: Duration::from_secs(ttl),
        }
    }

    fn repo(id: &str) -> Repo {
        Repo {
            kind: RepoType::Model,
            id: id.into(),
        }
    }

    #[test]
    fn actions_are_per_identity_and_repo() {
        let kept = LfsActions::new(Duration::from_secs(60), 10);
        let me = IdentityKey::of(Some(&HeaderValue::from_static("Bearer hf_me")));
        kept.keep(me, &repo("Org/M"), vec![action("a", 60)]);
        let got = kept.get(me, &repo("org/m"), "a").expect("case-folded repo");
        assert_eq!(got.header.len(), 1, "hf-edge's own headers are dropped");
        assert!(kept
            .get(IdentityKey::anonymous(), &repo("org/m"), "a")
            .is_none());
        assert!(kept.get(me, &repo("org/other"), "a").is_none());
        assert!(kept.get(me, &repo("org/m"), "b").is_none());
    }

    #[test]
    fn actions_expire_and_are_bounded() {
        let kept = LfsActions::new(Duration::from_secs(60), 3);
        let me = IdentityKey::anonymous();
        kept.keep(me, &repo("o/m"), vec![action("gone", 0)]);
        assert!(kept.get(me, &repo("o/m"), "gone").is_none());
        for round in 0..50 {
            let oids: Vec<String> = (0..4).map(|i| format!("{round}-{i}")).collect();
            kept.keep(
                me,
                &repo("o/m"),
                oids.iter().map(|o| action(o, 60)).collect(),
            );
            assert_eq!(kept.len(), 3);
            assert!(
                kept.get(me, &repo("o/m"), &oids[0]).is_none(),
                "oldest first"
            );
            assert!(kept.get(me, &repo("o/m"), &oids[3]).is_some());
        }
        // The same object again and again: one entry, and a bounded eviction order.
        for _ in 0..50 {
            kept.keep(me, &repo("o/m"), vec![action("same", 60)]);
        }
        assert!(kept.table.lock().order.len() <= 6);
        assert!(kept.get(me, &repo("o/m"), "same").is_some());
    }
}
