//! Running a warm job: list the revision's files on the Hub, resolve the selected ones, fetch
//! what the store lacks through the store's own fills, record their names (`refs.jsonl`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::jobs::{Job, JobState, RefusedJob};
use super::{Jobs, Throttle, WarmSpec};
use crate::hub::grammar::{Repo, ResolveRequest};
use crate::hub::headers::FileMeta;
use crate::hub::upstream::{Upstream, UpstreamError};
use crate::hub::url::Url;
use crate::metrics::{Metrics, WarmResult};
use crate::proxy::{Live, Mount, Peering, Target, UpstreamRefetch};
use crate::resolver::{ResolveError, Resolver, DOWNLOAD_URL_TTL};
use crate::store::{BlobStore, Fetch, FillFailure, RefEntry, Refetch, Refused};

/// Files resolved at once (metadata requests to the Hub).
const RESOLVE_PARALLEL: usize = 8;
/// Files fetched at once by one job.
const FETCH_PARALLEL: usize = 4;
/// Files a job takes at most.
pub const MAX_FILES: usize = 100_000;
/// The revision listing read at most.
const MAX_LISTING: usize = 64 << 20;
/// While the store has no room for another fill (`cache.max_fills` running, reservations
/// holding `max_size`), a file is asked again this often, this many times.
const BUSY_RETRY: Duration = Duration::from_millis(500);
const BUSY_RETRIES: u32 = 120;

/// Path characters sent as they are; everything else percent-encoded.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// A revision is one path segment (`refs/pr/1` → `refs%2Fpr%2F1`), as clients send it.
const SEGMENT: &AsciiSet = &PATH.add(b'/');

/// Why a job could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] RefusedJob),
    /// `access.repos` refuses the repo: what clients may not read is not fetched for them.
    #[error("{0}: refused by access.repos")]
    Denied(String),
    #[error("no such mount: {0:?} (the configured mounts are / and mounts[].prefix)")]
    NoMount(String),
}

impl SubmitError {
    /// The admin API's answer status.
    pub fn status(&self) -> u16 {
        match self {
            SubmitError::Refused(_) => 429,
            SubmitError::Denied(_) => 403,
            SubmitError::NoMount(_) => 400,
        }
    }
}

/// What warm jobs work with: the proxy's mounts (each job fetches through one: its upstream,
/// site token, repo rules and resolver, as clients of that mount do) and the shared store.
pub struct Warmer {
    /// The live mounts; a job keeps the mount it started with, as a request does.
    pub live: Arc<ArcSwap<Live>>,
    pub store: &'static BlobStore,
    pub metrics: Arc<Metrics>,
    /// `warm.max_rate`.
    pub throttle: Option<Arc<Throttle>>,
    pub max_blob_size: u64,
    pub jobs: Jobs,
}

/// The revision info the Hub lists files with.
#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

impl Warmer {
    /// Starts a job for `spec` on the current runtime.
    pub fn submit(self: &Arc<Self>, spec: WarmSpec, source: &str) -> Result<Arc<Job>, SubmitError> {
        let mount = self.mount(&spec.mount)?;
        if mount.policy.check_repos(&[spec.repo()]).is_err() {
            return Err(SubmitError::Denied(spec.repo));
        }
        let job = self.jobs.create(&spec, source)?;
        log::info!(
            "warm job {}: {}@{} ({source})",
            job.id(),
            spec.repo,
            spec.revision
        );
        let task = tokio::spawn(self.clone().run(job.clone(), spec, mount));
        job.set_task(task.abort_handle());
        Ok(job)
    }

    /// The live mount at `prefix`.
    pub(super) fn mount(&self, prefix: &str) -> Result<Arc<Mount>, SubmitError> {
        let live = self.live.load();
        let found = live.mounts().iter().find(|m| m.prefix == prefix).cloned();
        found.ok_or_else(|| SubmitError::NoMount(prefix.to_string()))
    }

    async fn run(self: Arc<Self>, job: Arc<Job>, spec: WarmSpec, mount: Arc<Mount>) {
        let outcome = self.work(&job, &spec, &mount).await;
        let (state, error) = match outcome {
            Err(e) => (JobState::Failed, Some(e)),
            Ok(()) if job.status().files_failed > 0 => {
                let n = job.status().files_failed;
                (
                    JobState::Failed,
                    Some(format!("{n} file(s) could not be stored")),
                )
            }
            Ok(()) => (JobState::Done, None),
        };
        if job.finish(state, error) {
            let s = job.status();
            log::info!(
                "warm job {}: {}: {} of {} files stored ({} already), {} bytes, {:.1} s{}",
                s.id,
                s.state.label(),
                s.files_done,
                s.files_total,
                s.files_skipped,
                s.bytes_done,
                s.seconds,
                s.error.map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        self.jobs.persist(true);
    }

    async fn work(&self, job: &Arc<Job>, spec: &WarmSpec, mount: &Mount) -> Result<(), String> {
        let parts = self.parts(mount);
        let repo = spec.repo();
        let (commit, paths) = parts.list(&repo, &spec.revision).await?;
        let total_listed = paths.len();
        let paths: Vec<String> = paths.into_iter().filter(|p| spec.selects(p)).collect();
        if paths.is_empty() {
            return Err(match total_listed {
                0 => format!("{}@{} has no files", spec.repo, spec.revision),
                n => format!(
                    "no file of {}@{} matches the include/exclude patterns ({n} files listed)",
                    spec.repo, spec.revision
                ),
            });
        }
        if paths.len() > MAX_FILES {
            return Err(format!(
                "{} files selected, more than a job takes ({MAX_FILES}); narrow it with include/exclude",
                paths.len()
            ));
        }
        job.update(|s| {
            s.commit = Some(commit.clone());
            s.files_total = paths.len() as u64;
        });
        let files = parts.resolve_all(job, &repo, &commit, paths).await;
        job.update(|s| s.state = JobState::Fetching);
        self.jobs.persist(true);
        let mut running = JoinSet::new();
        for (request, meta) in files {
            while running.len() >= FETCH_PARALLEL {
                running.join_next().await;
                self.jobs.persist(false);
            }
            let warmer = parts.clone();
            let (job, revision) = (job.clone(), spec.revision.clone());
            running.spawn(async move { warmer.fetch(&job, request, meta, revision).await });
        }
        while running.join_next().await.is_some() {
            self.jobs.persist(false);
        }
        Ok(())
    }

    /// What a job's tasks need of `mount` and of this warmer.
    pub(super) fn parts(&self, mount: &Mount) -> Parts {
        Parts {
            upstream: mount.upstream.clone(),
            resolver: mount.downloads.resolver.clone(),
            store: self.store,
            metrics: self.metrics.clone(),
            auth: mount.site_auth.clone(),
            throttle: self.throttle.clone(),
            max_blob_size: self.max_blob_size,
            peering: mount.downloads.peering.clone(),
        }
    }
}

/// What a job and its tasks work with: one mount's upstream, resolver and site token, and
/// the shared store (spawned tasks own a copy).
#[derive(Clone)]
pub(super) struct Parts {
    upstream: Arc<Upstream>,
    resolver: Arc<Resolver>,
    store: &'static BlobStore,
    metrics: Arc<Metrics>,
    auth: Option<HeaderValue>,
    throttle: Option<Arc<Throttle>>,
    max_blob_size: u64,
    /// With `cluster`: a blob this node does not own is warmed from its owner, as for clients.
    peering: Option<Peering>,
}

/// How a file ended up stored.
enum Stored {
    /// It was there already.
    Found,
    /// This job's fill, or a client's it joined, brought it.
    Fetched,
}

impl Parts {
    /// The commit `revision` names and its files, from the Hub's revision info.
    pub(super) async fn list(
        &self,
        repo: &Repo,
        revision: &str,
    ) -> Result<(String, Vec<String>), String> {
        if self.upstream.is_offline() {
            return Err("hf-edge is offline: the Hub cannot be asked for the files".into());
        }
        let path = format!(
            "/api/{}/{}/revision/{}",
            repo.kind.api_plural(),
            repo.id,
            utf8_percent_encode(revision, SEGMENT)
        );
        let url = Url::on(&self.upstream.hub, &path);
        let listing = |e: UpstreamError| format!("listing {repo}@{revision} failed: {e}");
        let mut resp = self
            .upstream
            .get_from(&url, self.auth.as_ref(), 0)
            .await
            .map_err(listing)?;
        let status = resp.header.status.as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(listing)? {
            if body.len() + chunk.len() > MAX_LISTING {
                return Err(format!(
                    "the listing of {repo}@{revision} is over {MAX_LISTING} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let said = resp
                .header
                .headers
                .get("x-error-message")
                .and_then(|v| v.to_str().ok())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Err(match status {
                401 | 404 => format!(
                    "{repo}@{revision}: no such repo or revision, or not readable with the site's token (the Hub answered {status}{said})"
                ),
                s => format!("listing {repo}@{revision} failed: the Hub answered {s}{said}"),
            });
        }
        let info: RevisionInfo = serde_json::from_slice(&body)
            .map_err(|e| format!("the Hub's listing of {repo}@{revision} is not readable: {e}"))?;
        let paths = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok((info.sha, paths))
    }

    /// Resolves every file as a client's request at `commit` would be; those that fail are
    /// counted failed here.
    async fn resolve_all(
        &self,
        job: &Arc<Job>,
        repo: &Repo,
        commit: &str,
        paths: Vec<String>,
    ) -> Vec<(ResolveRequest, FileMeta)> {
        let mut out = Vec::with_capacity(paths.len());
        let mut running = JoinSet::new();
        let mut paths = paths.into_iter();
        loop {
            while running.len() < RESOLVE_PARALLEL {
                let Some(path) = paths.next() else { break };
                let request = ResolveRequest {
                    repo: repo.clone(),
                    revision: commit.to_string(),
                    path,
                };
                let warmer = self.clone();
                running.spawn(async move {
                    let meta = warmer.resolve(&request, false).await;
                    (request, meta)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let Ok((request, meta)) = done else { continue };
            match meta {
                Ok(meta) => {
                    job.update(|s| s.bytes_total += meta.size);
                    out.push((request, meta));
                }
                Err(e) => {
                    job.file_failed(&request.path, e);
                    self.metrics.warm_file(WarmResult::Failed);
                }
            }
        }
        out.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        out
    }

    /// The file's metadata, as for a client's `GET` (fresh, with a download URL, when `fresh`).
    async fn resolve(&self, request: &ResolveRequest, fresh: bool) -> Result<FileMeta, String> {
        let raw = raw_path(request);
        let auth = self.auth.as_ref();
        let meta = match fresh {
            true => self.resolver.refresh(request, &raw, auth).await,
            false => self.resolver.resolve(request, &raw, auth).await,
        };
        meta.map_err(|e| describe(&e))
    }

    async fn fetch(&self, job: &Job, request: ResolveRequest, meta: FileMeta, revision: String) {
        let mut counted = 0;
        let mut progress = |n: u64| {
            let delta = n.saturating_sub(counted);
            counted = counted.max(n);
            job.update(|s| s.bytes_done += delta);
        };
        match self.store_file(&request, meta.clone(), &mut progress).await {
            Ok(how) => {
                progress(meta.size);
                job.update(|s| {
                    s.files_done += 1;
                    if matches!(how, Stored::Found) {
                        s.files_skipped += 1;
                    }
                });
                self.metrics.warm_file(match how {
                    Stored::Found => WarmResult::Stored,
                    Stored::Fetched => WarmResult::Fetched,
                });
                self.record(&request, &meta, &revision, matches!(how, Stored::Fetched));
            }
            Err(e) => {
                job.update(|s| s.bytes_done -= counted);
                job.file_failed(&request.path, e);
                self.metrics.warm_file(WarmResult::Failed);
            }
        }
    }

    async fn store_file(
        &self,
        request: &ResolveRequest,
        mut meta: FileMeta,
        progress: &mut impl FnMut(u64),
    ) -> Result<Stored, String> {
        let blob = meta
            .blob
            .ok_or("the Hub gave the file no content address (ETag); it cannot be stored")?;
        if meta.size > self.max_blob_size {
            return Err(format!(
                "{} bytes, more than cache.max_size ({} bytes)",
                meta.size, self.max_blob_size
            ));
        }
        if self.store.contains(&blob) {
            return Ok(Stored::Found);
        }
        if meta.download.is_none() || meta.resolved_at.elapsed() >= DOWNLOAD_URL_TTL {
            meta = self.resolve(request, true).await?;
            if meta.blob != Some(blob) {
                return Err("the file changed on the Hub during the job".into());
            }
        }
        let url = meta
            .download
            .clone()
            .ok_or("the Hub gave no download location for the file")?;
        let raw = raw_path(request);
        let mut busy = 0;
        let mut reader = loop {
            let source = || -> Arc<dyn Refetch> {
                let hub: Arc<dyn Refetch> = Arc::new(UpstreamRefetch::for_file(
                    (&self.upstream, &self.resolver, &self.metrics),
                    (Target::to(url.clone(), &self.upstream), self.auth.clone()),
                    (request, blob, meta.size),
                    &raw,
                ));
                let from_owner = self
                    .peering
                    .as_ref()
                    .and_then(|p| p.source(blob, meta.size, &url, hub.clone(), &self.metrics));
                let origin = from_owner.unwrap_or(hub);
                match &self.throttle {
                    Some(t) => t.wrap(origin, self.store, blob),
                    None => origin,
                }
            };
            match self.store.read_or_fill(blob, meta.size, source).await {
                Fetch::Complete(_) => return Ok(Stored::Found),
                Fetch::Started(r) | Fetch::Joined(r) => break r,
                Fetch::Refused(Refused::Disk(e)) => {
                    return Err(format!("the store cannot take the file: {e}"))
                }
                Fetch::Refused(why) if busy < BUSY_RETRIES => {
                    busy += 1;
                    log::debug!("{}: store busy ({why}), asking again", request.path);
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                Fetch::Refused(why) => return Err(format!("the store stayed busy: {why}")),
            }
        };
        match reader.wait_committed(progress).await {
            Ok(()) => Ok(Stored::Fetched),
            Err(FillFailure::Local(why)) => Err(format!("the store could not keep it: {why}")),
            Err(FillFailure::Upstream(e)) => Err(crate::proxy::answer_for(e.as_ref()).1),
        }
    }

    /// Names the file in `refs.jsonl` (for `cache ls`, purge by repo, and `cache.pin`) under
    /// the revision the job was asked for.
    fn record(&self, request: &ResolveRequest, meta: &FileMeta, revision: &str, filled: bool) {
        let Some(blob) = meta.blob else { return };
        let time = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = RefEntry {
            repo: request.repo.to_string(),
            revision: revision.to_string(),
            commit: meta.commit.clone(),
            path: request.path.clone(),
            blob: blob.to_string(),
            size: meta.size,
            time,
        };
        self.store.record_ref(&entry, filled);
    }
}

/// The path a client would ask for the file with.
fn raw_path(r: &ResolveRequest) -> String {
    format!(
        "/{}/resolve/{}/{}",
        r.repo,
        utf8_percent_encode(&r.revision, SEGMENT),
        utf8_percent_encode(&r.path, PATH)
    )
}

fn describe(e: &ResolveError) -> String {
    match e {
        ResolveError::Hub { status, headers } => {
            let said = headers
                .iter()
                .find(|(k, _)| *k == "x-error-message")
                .and_then(|(_, v)| v.to_str().ok())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            format!("the Hub answered {status}{said}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_are_what_clients_send() {
        let r = ResolveRequest {
            repo: Repo::parse_display("datasets/org/d").unwrap(),
            revision: "refs/pr/1".into(),
            path: "dir/a b#.json".into(),
        };
        assert_eq!(
            raw_path(&r),
            "/datasets/org/d/resolve/refs%2Fpr%2F1/dir/a%20b%23.json"
        );
    }
}
