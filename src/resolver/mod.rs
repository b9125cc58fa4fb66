//! Resolves `(repo, revision, path)` for an identity to [`FileMeta`]: the commit, the blob id,
//! the size and where to download from.
//!
//! Two caches save Hub round trips: branch/tag → commit for `cache.revision_ttl`, and
//! (commit, path) → metadata forever (a commit never changes). Both are keyed by a hash of the
//! credentials the answer was obtained with, so an answer the Hub gave one identity is never
//! reused for another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;

mod journal;

use crate::access::IdentityKey;
use crate::hub::grammar::{Repo, ResolveRequest};
use crate::hub::headers::{FileMeta, ERROR_PASSTHROUGH};
use crate::hub::status::{self, Verdict};
use crate::hub::upstream::{HostClass, Upstream, UpstreamError};
use crate::hub::url::Url;
use crate::hub::{normalize_etag, BlobId};
use crate::metrics::{Metrics, RevisionLookup, UpstreamCause, UpstreamKind};

/// Redirect hops followed for one metadata request.
const MAX_HOPS: usize = 5;
/// Entries kept per cache before it is cleared (bounds memory; a refill costs one HEAD each).
const MAX_ENTRIES: usize = 200_000;
/// A signed download URL is reused this long; the Hub signs them for about an hour.
pub const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(10 * 60);

/// Why a file could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The Hub answered with an error: passed to the client as the Hub sent it.
    #[error("upstream answered {status}")]
    Hub {
        status: u16,
        headers: Vec<(&'static str, HeaderValue)>,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("hf-edge is offline and has no earlier answer for this file")]
    Offline,
}

/// Where what the Hub said a revision lacks is kept: by the revision as asked (a branch may
/// gain the file; a commit never does).
fn missing_key(who: IdentityKey, req: &ResolveRequest) -> FileKey {
    (
        who,
        req.repo.folded(),
        crate::hub::grammar::canonical_revision(&req.revision),
        req.path.clone(),
    )
}

/// A refusal that is about one file or revision the repo lacks (`EntryNotFound`,
/// `RevisionNotFound`: the repo itself was readable), not about the repo or the identity: what
/// was known of the repo stands. transformers asks for optional files (`added_tokens.json`)
/// that most repos lack, between files it needs again during an outage.
fn names_missing_entry(headers: &[(&'static str, HeaderValue)]) -> bool {
    headers.iter().any(|(name, value)| {
        *name == "x-error-code"
            && matches!(value.as_bytes(), b"EntryNotFound" | b"RevisionNotFound")
    })
}

impl ResolveError {
    /// The Hub could not give an answer (as opposed to answering no): the case for serving
    /// what was known before.
    fn hub_unavailable(&self) -> bool {
        match self {
            ResolveError::Upstream(_) | ResolveError::Offline => true,
            ResolveError::Hub { status, .. } => status::unavailable(*status),
        }
    }

    /// Worth retrying at once: connection failures and transient 5xx, not timeouts.
    fn retryable(&self) -> bool {
        match self {
            ResolveError::Upstream(UpstreamError::Unreachable { .. }) => true,
            ResolveError::Hub { status, .. } => status::retry_at_once(*status),
            _ => false,
        }
    }

    /// What to count in `hf_edge_upstream_errors_total` (a Hub status is counted as it
    /// arrives).
    pub fn cause(&self) -> Option<UpstreamCause> {
        match self {
            ResolveError::Upstream(u) if u.status() == 504 => Some(UpstreamCause::Timeout),
            ResolveError::Upstream(_) => Some(UpstreamCause::Connect),
            ResolveError::Hub { .. } | ResolveError::Offline => None,
        }
    }
}

type RevKey = (IdentityKey, Repo, String);
type RepoKey = (IdentityKey, Repo);
type FileKey = (IdentityKey, Repo, String, String);

pub struct Resolver {
    upstream: std::sync::Arc<Upstream>,
    metrics: std::sync::Arc<Metrics>,
    revision_ttl: Duration,
    /// After the Hub failed to answer, requests that have an earlier answer get it without
    /// the Hub being asked again for this long: a Hub in trouble is not asked (and waited for)
    /// once per client request. Requests with nothing to fall back on still ask, once.
    hold_down: Duration,
    /// How long the Hub's yes to a credentialed identity for a repo is trusted.
    auth_ttl: Duration,
    /// Serve what an identity was allowed before when the Hub cannot be asked.
    offline_allow: bool,
    /// Branch/tag → commit, with when the Hub said so (`None`: known from before a restart).
    revisions: Mutex<HashMap<RevKey, (String, Option<Instant>)>>,
    files: Mutex<HashMap<FileKey, FileMeta>>,
    /// Files the Hub said a revision lacks (`EntryNotFound`, `RevisionNotFound`), keyed by
    /// the revision as asked, with the Hub's error headers: the last answer known, given
    /// again while the Hub cannot be asked, as a found file's is. Clients ask for optional
    /// files (transformers' `added_tokens.json`) and retry a 502 for a minute.
    missing: Mutex<HashMap<FileKey, Vec<(&'static str, HeaderValue)>>>,
    approvals: Mutex<HashMap<RepoKey, Instant>>,
    /// One approval recheck at a time per (identity, repo): clients fetching many files of a
    /// repo whose approval expired cost the Hub one metadata request, not one per file.
    rechecks: Mutex<HashMap<RepoKey, Arc<tokio::sync::Mutex<()>>>>,
    /// When the Hub last failed to answer (unreachable, timeout, 5xx, 429); cleared by an answer.
    hub_failed_at: Mutex<Option<Instant>>,
    journal: Option<journal::Journal>,
}

/// The resolver's knobs, from `cache.*` and `access.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    pub revision_ttl: Duration,
    pub hold_down: Duration,
    pub auth_ttl: Duration,
    pub offline_restricted: crate::access::OfflineRestricted,
    /// Answers `meta.jsonl` keeps at most (the newest).
    pub meta_max_entries: usize,
}

impl Resolver {
    /// A resolver; with `dir`, its answers persist in `dir/meta.jsonl` and are reloaded.
    /// Whether an identity's own earlier answers may be served while the Hub cannot be asked
    /// (always for anonymous, which is public content).
    pub fn may_serve_stale(&self, auth: Option<&HeaderValue>) -> bool {
        auth.is_none() || self.offline_allow
    }

    pub fn new(
        upstream: std::sync::Arc<Upstream>,
        metrics: std::sync::Arc<Metrics>,
        cfg: ResolverConfig,
        dir: Option<&std::path::Path>,
    ) -> std::io::Result<Resolver> {
        let (journal, entries) = match dir {
            Some(d) => {
                let (j, e) = journal::Journal::open(d, cfg.meta_max_entries)?;
                (Some(j), e)
            }
            None => (None, Vec::new()),
        };
        let mut revisions = HashMap::new();
        let mut files = HashMap::new();
        for e in &entries {
            let Some((who, repo, meta)) = e.decode() else {
                continue;
            };
            if !crate::hub::grammar::is_commit(&e.revision) {
                revisions.insert(
                    (who, repo.folded(), e.revision.clone()),
                    (meta.commit.clone(), None),
                );
            }
            files.insert(
                (who, repo.folded(), meta.commit.clone(), e.path.clone()),
                meta,
            );
        }
        if let Some(j) = &journal {
            log::info!(
                "{}: {} file answers reloaded",
                j.path().display(),
                files.len()
            );
        }
        Ok(Resolver {
            upstream,
            metrics,
            revision_ttl: cfg.revision_ttl,
            hold_down: cfg.hold_down,
            auth_ttl: cfg.auth_ttl,
            offline_allow: cfg.offline_restricted == crate::access::OfflineRestricted::Allow,
            revisions: Mutex::new(revisions),
            files: Mutex::new(files),
            missing: Mutex::new(HashMap::new()),
            approvals: Mutex::new(HashMap::new()),
            rechecks: Mutex::new(HashMap::new()),
            hub_failed_at: Mutex::new(None),
            journal,
        })
    }

    /// Metadata from the caches when they can answer, else from the Hub.
    ///
    /// A cached answer is reused only while the Hub's yes to that identity (anonymous
    /// included) for that repo is younger than `access.auth_ttl`: a repo that turns private,
    /// gated or disabled stops being served within that time, commit-pinned files included.
    /// Past it the Hub is asked again, once per identity and repo; if it cannot be asked,
    /// public answers are served as they were, and restricted ones fail closed.
    pub async fn resolve(
        &self,
        req: &ResolveRequest,
        raw_path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<FileMeta, ResolveError> {
        let who = IdentityKey::of(auth);
        let repo = req.repo.folded();
        let cached = self.cached(who, req, true);
        if let Some(meta) = cached.as_ref().filter(|_| self.approved(who, &repo)) {
            return Ok(meta.clone());
        }
        if self.hub_held_down() {
            if let Some(answer) = self.last_answer(who, req, auth.is_some()) {
                return answer;
            }
        }
        // With a cached answer, only the approval is in question: one recheck at a time per
        // (identity, repo), and whoever waited finds it answered.
        let _recheck = match cached {
            Some(_) => {
                let gate = self.recheck_gate(who, &repo);
                let guard = gate.lock_owned().await;
                if self.approved(who, &repo) {
                    if let Some(meta) = self.cached(who, req, false) {
                        return Ok(meta);
                    }
                }
                Some(guard)
            }
            None => None,
        };
        let answer = if self.upstream.is_offline() {
            Err(ResolveError::Offline)
        } else {
            self.refresh(req, raw_path, auth).await
        };
        match answer {
            Err(e) if e.hub_unavailable() => match self.last_answer(who, req, auth.is_some()) {
                Some(answer) => {
                    log::warn!(
                        "{} {}: answering what was known before: {e}",
                        req.repo,
                        req.path
                    );
                    answer
                }
                None => Err(e),
            },
            other => other,
        }
    }

    fn recheck_gate(&self, who: IdentityKey, repo: &Repo) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.rechecks.lock();
        if gates.len() >= MAX_ENTRIES {
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry((who, repo.clone())).or_default().clone()
    }

    /// Whether the Hub failed to answer within the last `upstream.failure_hold_down`.
    fn hub_held_down(&self) -> bool {
        let mut failed = self.hub_failed_at.lock();
        match *failed {
            Some(at) if at.elapsed() < self.hold_down => true,
            Some(_) => {
                *failed = None;
                false
            }
            None => false,
        }
    }

    /// What the Hub last answered this request, when it cannot be asked: the file
    /// ([`Resolver::stale`]), or that the revision lacks it.
    fn last_answer(
        &self,
        who: IdentityKey,
        req: &ResolveRequest,
        credentialed: bool,
    ) -> Option<Result<FileMeta, ResolveError>> {
        if let Some(meta) = self.stale(who, req, credentialed) {
            return Some(Ok(meta));
        }
        let missing = self.missing.lock();
        let known = |who: IdentityKey| missing.get(&missing_key(who, req)).cloned();
        let headers = match credentialed {
            true if self.offline_allow => known(who),
            _ => None,
        }
        .or_else(|| known(IdentityKey::anonymous()))?;
        Some(Err(ResolveError::Hub {
            status: 404,
            headers,
        }))
    }

    /// The last answer known for this request, whatever its age, marked stale (counted in
    /// `stale_served`); a commit-pinned file is never stale, only unconfirmed. Credentialed
    /// identities get it only if it is public (anonymous saw it too) or
    /// `access.offline_restricted` allows it: restricted content fails closed.
    fn stale(
        &self,
        who: IdentityKey,
        req: &ResolveRequest,
        credentialed: bool,
    ) -> Option<FileMeta> {
        let repo = req.repo.folded();
        let last_known = |who: IdentityKey| -> Option<FileMeta> {
            let commit = if req.is_commit_pinned() {
                req.revision.to_ascii_lowercase()
            } else {
                let revs = self.revisions.lock();
                revs.get(&(who, repo.clone(), req.revision.clone()))?
                    .0
                    .clone()
            };
            self.files
                .lock()
                .get(&(who, repo.clone(), commit, req.path.clone()))
                .cloned()
        };
        let found = match credentialed {
            true if self.offline_allow => last_known(who),
            true => None,
            false => None,
        }
        .or_else(|| last_known(IdentityKey::anonymous()))?;
        let stale = !req.is_commit_pinned();
        if stale {
            self.metrics.revision_lookup(RevisionLookup::StaleServed);
        }
        Some(FileMeta { stale, ..found })
    }

    fn approved(&self, who: IdentityKey, repo: &Repo) -> bool {
        self.approvals
            .lock()
            .get(&(who, repo.clone()))
            .is_some_and(|at| at.elapsed() < self.auth_ttl)
    }

    /// The Hub said no to `who` for `repo`: whatever it allowed before is void, and what was
    /// known through that identity is forgotten (a repo made private is not served stale).
    fn forget(&self, who: IdentityKey, repo: &Repo) {
        self.approvals.lock().remove(&(who, repo.clone()));
        self.revisions
            .lock()
            .retain(|(w, r, _), _| !(*w == who && r == repo));
        self.files
            .lock()
            .retain(|(w, r, _, _), _| !(*w == who && r == repo));
        self.missing
            .lock()
            .retain(|(w, r, _, _), _| !(*w == who && r == repo));
    }

    /// Asks the Hub (one metadata `HEAD`, following its redirects), then caches the answer.
    pub async fn refresh(
        &self,
        req: &ResolveRequest,
        raw_path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<FileMeta, ResolveError> {
        let who = IdentityKey::of(auth);
        let meta = match self.fetch(&req.repo, raw_path, auth).await {
            Ok(m) => {
                *self.hub_failed_at.lock() = None;
                m
            }
            Err(e) => {
                if e.hub_unavailable() {
                    *self.hub_failed_at.lock() = Some(Instant::now());
                }
                if let ResolveError::Hub { status, headers } = &e {
                    if *status == 404 && names_missing_entry(headers) {
                        let mut missing = self.missing.lock();
                        if missing.len() >= MAX_ENTRIES {
                            missing.clear();
                        }
                        missing.insert(missing_key(who, req), headers.clone());
                    } else if status::classify(*status) == Verdict::Refused {
                        self.forget(who, &req.repo.folded());
                    }
                }
                return Err(e);
            }
        };
        self.missing.lock().remove(&missing_key(who, req));
        let now = Instant::now();
        {
            let mut approvals = self.approvals.lock();
            if approvals.len() >= MAX_ENTRIES {
                approvals.clear();
            }
            approvals.insert((who, req.repo.folded()), now);
        }
        if !req.is_commit_pinned() {
            let mut revs = self.revisions.lock();
            if revs.len() >= MAX_ENTRIES {
                revs.clear();
            }
            revs.insert(
                (who, req.repo.folded(), req.revision.clone()),
                (meta.commit.clone(), Some(now)),
            );
        }
        let mut files = self.files.lock();
        if files.len() >= MAX_ENTRIES {
            files.clear();
        }
        files.insert(
            (
                who,
                req.repo.folded(),
                meta.commit.clone(),
                req.path.clone(),
            ),
            meta.clone(),
        );
        if let Some(j) = &self.journal {
            j.record(journal::Entry::new(
                who,
                &req.repo,
                &req.revision,
                &req.path,
                &meta,
            ));
        }
        Ok(meta)
    }

    /// The cached answer, if its revision is fresh; `count` records how a branch or tag was
    /// answered (once per request).
    fn cached(&self, who: IdentityKey, req: &ResolveRequest, count: bool) -> Option<FileMeta> {
        let commit = if req.is_commit_pinned() {
            req.revision.to_ascii_lowercase()
        } else {
            let revs = self.revisions.lock();
            let fresh = revs
                .get(&(who, req.repo.folded(), req.revision.clone()))
                .filter(|(_, at)| at.is_some_and(|at| at.elapsed() < self.revision_ttl));
            let lookup = match fresh {
                Some(_) => RevisionLookup::Fresh,
                None => RevisionLookup::Refreshed,
            };
            if count {
                self.metrics.revision_lookup(lookup);
            }
            fresh?.0.clone()
        };
        self.files
            .lock()
            .get(&(who, req.repo.folded(), commit, req.path.clone()))
            .cloned()
    }

    /// [`Resolver::fetch_once`], retried with backoff and jitter when the Hub could not be
    /// reached or failed transiently (a metadata HEAD is idempotent); asked once while the
    /// Hub is known to be failing (clients retry on their own schedule).
    async fn fetch(
        &self,
        repo: &Repo,
        raw_path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<FileMeta, ResolveError> {
        let retries = if self.hub_held_down() { 0 } else { RETRIES };
        let mut attempt = 0;
        loop {
            match self.fetch_once(repo, raw_path, auth).await {
                Err(e) if e.retryable() && attempt < retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// The metadata `HEAD`: follows the Hub's relative 307 to `/api/resolve-cache/...` and
    /// stops at an absolute redirect to a CDN (whose signed URL becomes the download URL).
    async fn fetch_once(
        &self,
        repo: &Repo,
        raw_path: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<FileMeta, ResolveError> {
        let mut url = Url::on(&self.upstream.hub, raw_path);
        let mut seen = Seen::default();
        for _ in 0..MAX_HOPS {
            let class = self.upstream.classify(&url);
            let send_auth = if class == HostClass::Hub { auth } else { None };
            let started = Instant::now();
            let resp = self.upstream.head(&url, send_auth).await?;
            self.metrics.upstream_response(
                UpstreamKind::Metadata,
                resp.status.as_u16(),
                started.elapsed(),
            );
            seen.observe(&resp);
            let status = resp.status.as_u16();
            let verdict = status::classify(status);
            if verdict == Verdict::Redirect {
                let next = location(&resp, &url)?;
                if self.upstream.classify(&next) == HostClass::Foreign {
                    return Err(UpstreamError::ForeignRedirect {
                        host: next.origin.host,
                    }
                    .into());
                }
                if next.origin.same_origin(&self.upstream.hub) {
                    seen.moved_to = seen.moved_to.or_else(|| moved_to(repo, next.path()));
                }
                if seen.linked.is_some() {
                    // An LFS redirect carries everything; the CDN is only asked for bytes.
                    return seen.into_meta(next);
                }
                url = next;
            } else if verdict == Verdict::Answer {
                return seen.into_meta(url);
            } else {
                return Err(hub_error(&resp));
            }
        }
        Err(UpstreamError::TooManyRedirects(MAX_HOPS).into())
    }
}

/// Extra attempts for a metadata request that failed transiently.
const RETRIES: u32 = 2;

/// 100 ms, 200 ms, ... plus up to 50% jitter, so clients retrying together spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(attempt - 1);
    base + base.mul_f64(rand::random::<f64>() / 2.0)
}

/// Metadata headers collected along a redirect chain.
#[derive(Default)]
struct Seen {
    commit: Option<String>,
    linked: Option<(String, u64)>,
    etag: Option<String>,
    length: Option<u64>,
    content_type: Option<String>,
    moved_to: Option<Repo>,
}

impl Seen {
    fn observe(&mut self, resp: &ResponseHeader) {
        let get = |k: &str| resp.headers.get(k).and_then(|v| v.to_str().ok());
        if self.commit.is_none() {
            self.commit = get("x-repo-commit").map(str::to_string);
        }
        if self.linked.is_none() {
            if let (Some(e), Some(s)) = (get("x-linked-etag"), get("x-linked-size")) {
                if let Ok(size) = s.trim().parse() {
                    self.linked = Some((normalize_etag(e).to_string(), size));
                }
            }
        }
        if resp.status.is_success() {
            self.etag = get("etag").map(|e| normalize_etag(e).to_string());
            self.length = get("content-length").and_then(|s| s.trim().parse().ok());
            self.content_type = get("content-type").map(str::to_string);
        }
    }

    fn into_meta(self, download: Url) -> Result<FileMeta, ResolveError> {
        let invalid = |m: &str| ResolveError::Upstream(UpstreamError::Invalid(m.to_string()));
        let commit = self
            .commit
            .filter(|c| crate::hub::grammar::is_commit(c))
            .ok_or_else(|| invalid("the Hub's answer has no valid X-Repo-Commit"))?
            .to_ascii_lowercase();
        let lfs = self.linked.is_some();
        let (etag, size) = match self.linked {
            Some(linked) => linked,
            None => (
                self.etag
                    .ok_or_else(|| invalid("the Hub's answer has no ETag"))?,
                self.length
                    .ok_or_else(|| invalid("the Hub's answer has no Content-Length"))?,
            ),
        };
        Ok(FileMeta {
            commit,
            blob: BlobId::from_etag(&etag),
            etag,
            size,
            lfs,
            content_type: self.content_type,
            download: Some(download),
            resolved_at: Instant::now(),
            stale: false,
            moved_to: self.moved_to,
        })
    }
}

/// The repo a Hub redirect names, when it is not `asked` (compared as the Hub does,
/// case-folded): a renamed or transferred repo.
fn moved_to(asked: &Repo, path: &str) -> Option<Repo> {
    let named = match crate::hub::grammar::parse(path) {
        Ok(crate::hub::grammar::Route::Resolve(r)) => vec![r.repo],
        _ => crate::hub::grammar::candidate_repos(path),
    };
    let asked = asked.folded();
    match named.iter().any(|r| r.folded() == asked) {
        true => None,
        false => named.into_iter().next(),
    }
}

fn location(resp: &ResponseHeader, base: &Url) -> Result<Url, ResolveError> {
    let loc = resp
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| UpstreamError::Invalid("redirect without a Location".into()))?;
    Ok(base.join(loc).map_err(UpstreamError::Invalid)?)
}

fn hub_error(resp: &ResponseHeader) -> ResolveError {
    let headers = ERROR_PASSTHROUGH
        .iter()
        .filter_map(|name| resp.headers.get(*name).map(|v| (*name, v.clone())))
        .collect();
    ResolveError::Hub {
        status: resp.status.as_u16(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_missing_file_is_no_refusal_of_the_repo() {
        let code = |c: &'static str| vec![("x-error-code", HeaderValue::from_static(c))];
        assert!(names_missing_entry(&code("EntryNotFound")));
        assert!(names_missing_entry(&code("RevisionNotFound")));
        assert!(!names_missing_entry(&code("RepoNotFound")));
        assert!(!names_missing_entry(&code("GatedRepo")));
        assert!(!names_missing_entry(&[]));
    }

    #[test]
    fn lfs_redirect_carries_the_metadata() {
        let mut s = Seen::default();
        let sha = "a".repeat(64);
        s.observe(&resp(
            302,
            &[
                ("x-repo-commit", COMMIT),
                ("x-linked-etag", &format!("\"{sha}\"")),
                ("x-linked-size", "1234"),
                ("etag", "\"pointer\""),
            ],
        ));
        let m = s
            .into_meta(Url::parse("https://cdn.hf.co/x?sig").unwrap())
            .unwrap();
        assert!(m.lfs);
        assert_eq!(m.size, 1234);
        assert_eq!(m.etag, sha);
        assert_eq!(m.blob.unwrap().algo(), "sha256");
    }

    #[test]
    fn regular_file_takes_size_and_etag_from_the_final_answer() {
        let oid = "b".repeat(40);
        let mut s = Seen::default();
        s.observe(&resp(
            307,
            &[("x-repo-commit", COMMIT), ("content-length", "0")],
        ));
        s.observe(&resp(
            200,
            &[("etag", &format!("W/\"{oid}\"")), ("content-length", "571")],
        ));
        let m = s
            .into_meta(Url::parse("http://hub/api/resolve-cache/x").unwrap())
            .unwrap();
        assert!(!m.lfs);
        assert_eq!((m.size, m.etag.as_str()), (571, oid.as_str()));
        assert_eq!(m.blob.unwrap().algo(), "oid");
    }

    #[test]
    fn missing_commit_is_an_upstream_error_not_a_404() {
        let mut s = Seen::default();
        s.observe(&resp(200, &[("etag", "\"x\""), ("content-length", "1")]));
        let e = s
            .into_meta(Url::parse("http://hub/x").unwrap())
            .unwrap_err();
        assert!(
            matches!(e, ResolveError::Upstream(ref u) if u.status() == 502),
            "{e}"
        );
    }

    #[test]
    fn a_redirect_to_another_repo_is_noticed() {
        use crate::hub::grammar::RepoType;
        let asked = Repo {
            kind: RepoType::Model,
            id: "Old/m".into(),
        };
        let moved = moved_to(&asked, "/new/m/resolve/main/x.bin").unwrap();
        assert_eq!(moved.to_string(), "new/m");
        assert_eq!(moved_to(&asked, "/old/M/resolve/main/x.bin"), None);
        let cache = format!("/api/resolve-cache/models/old/m/{COMMIT}/x.json");
        assert_eq!(moved_to(&asked, &cache), None);
        let elsewhere = format!("/api/resolve-cache/models/acme/gated/{COMMIT}/x.json");
        assert_eq!(
            moved_to(&asked, &elsewhere).unwrap().to_string(),
            "acme/gated"
        );
    }
}
