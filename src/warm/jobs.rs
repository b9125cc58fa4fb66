//! The warm jobs: their status as the admin API shows it, kept in `cache.dir/warm-jobs.json`
//! (the newest [`MAX_KEPT`]) so that a restart can report the jobs it cut short.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::WarmSpec;

/// Jobs kept (finished ones beyond go, oldest first).
pub const MAX_KEPT: usize = 100;
/// Jobs running at once at most; more are refused until one ends.
pub const MAX_RUNNING: usize = 4;
/// Failed files a job's status names (the count goes on).
pub const MAX_FAILURES_LISTED: usize = 50;
/// Progress is written to disk at most this often (state changes at once).
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Listing the revision's files and resolving each.
    Listing,
    Fetching,
    /// Every selected file is in the store.
    Done,
    /// Something failed: the job's `error`, or files in `failures`.
    Failed,
    Cancelled,
    /// hf-edge stopped while the job ran.
    Interrupted,
}

impl JobState {
    /// As the admin API spells it.
    pub fn label(self) -> &'static str {
        match self {
            JobState::Listing => "listing",
            JobState::Fetching => "fetching",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Listing | JobState::Fetching)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileFailure {
    pub path: String,
    pub error: String,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub repo: String,
    pub revision: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The mount whose upstream the job fetches from.
    #[serde(default = "root_mount")]
    pub mount: String,
    /// `api` (POST /admin/warm) or `config` (the `warm:` list).
    pub source: String,
    pub state: JobState,
    /// Why the job failed as a whole (repo or revision not found, no file matches, ...).
    pub error: Option<String>,
    /// The commit the revision named when the job listed it.
    pub commit: Option<String>,
    pub files_total: u64,
    /// Files in the store now: fetched, or found there already (`files_skipped`).
    pub files_done: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    pub bytes_total: u64,
    /// Bytes of `files_done`, and of fills in progress so far.
    pub bytes_done: u64,
    /// Unix seconds.
    pub created: u64,
    pub finished: Option<u64>,
    /// Seconds from creation to the end (or to now).
    pub seconds: f64,
    pub failures: Vec<FileFailure>,
}

impl JobStatus {
    /// Whether every selected file is in the store.
    pub fn succeeded(&self) -> bool {
        self.state == JobState::Done
    }
}

/// One job: its status and, while it runs, how to stop it.
pub struct Job {
    status: Mutex<JobStatus>,
    started: Instant,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Job {
    pub fn id(&self) -> u64 {
        self.status.lock().id
    }

    pub fn status(&self) -> JobStatus {
        let mut s = self.status.lock().clone();
        if !s.state.is_final() {
            s.seconds = self.started.elapsed().as_secs_f64();
        }
        s
    }

    pub fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        change(&mut self.status.lock());
    }

    /// Records a failed file (named while fewer than [`MAX_FAILURES_LISTED`] are).
    pub fn file_failed(&self, path: &str, error: String) {
        let mut s = self.status.lock();
        s.files_failed += 1;
        if s.failures.len() < MAX_FAILURES_LISTED {
            s.failures.push(FileFailure {
                path: path.to_string(),
                error,
            });
        }
    }

    /// Ends the job in `state` unless it has ended already; whether it did now.
    pub fn finish(&self, state: JobState, error: Option<String>) -> bool {
        let mut s = self.status.lock();
        if s.state.is_final() {
            return false;
        }
        s.state = state;
        s.error = error;
        s.finished = Some(unix_now());
        s.seconds = self.started.elapsed().as_secs_f64();
        true
    }

    pub fn set_task(&self, task: tokio::task::AbortHandle) {
        *self.task.lock() = Some(task);
    }
}

/// Why a job could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RefusedJob {
    #[error("{MAX_RUNNING} warm jobs are running; wait for one to end or cancel one")]
    TooMany,
}

/// The jobs, newest last.
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<Job>>>,
    next_id: AtomicU64,
    path: PathBuf,
    persisted: Mutex<Option<Instant>>,
    /// Lists made to be written, and the newest written.
    generation: AtomicU64,
    written: Arc<Mutex<u64>>,
}

impl Jobs {
    /// Loads the jobs kept in `dir`; those that were running are now interrupted.
    pub fn open(dir: &Path) -> std::io::Result<Jobs> {
        let path = dir.join("warm-jobs.json");
        let kept: Vec<JobStatus> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("{}: unreadable, starting afresh: {e}", path.display());
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let next_id = kept.iter().map(|j| j.id).max().unwrap_or(0) + 1;
        let jobs = kept
            .into_iter()
            .map(|mut s| {
                if !s.state.is_final() {
                    log::warn!(
                        "warm job {} ({}@{}) was interrupted",
                        s.id,
                        s.repo,
                        s.revision
                    );
                    s.state = JobState::Interrupted;
                    s.error = Some(
                        "hf-edge stopped during the job; run it again (stored files are skipped)"
                            .into(),
                    );
                }
                Arc::new(Job {
                    status: Mutex::new(s),
                    started: Instant::now(),
                    task: Mutex::new(None),
                })
            })
            .collect();
        let jobs = Jobs {
            jobs: Mutex::new(jobs),
            next_id: AtomicU64::new(next_id),
            path,
            persisted: Mutex::new(None),
            generation: AtomicU64::new(0),
            written: Arc::new(Mutex::new(0)),
        };
        jobs.persist(true);
        Ok(jobs)
    }

    /// A new job for `spec`, unless [`MAX_RUNNING`] are running.
    pub fn create(&self, spec: &WarmSpec, source: &str) -> Result<Arc<Job>, RefusedJob> {
        let mut jobs = self.jobs.lock();
        let running = jobs.iter().filter(|j| !j.status.lock().state.is_final());
        if running.count() >= MAX_RUNNING {
            return Err(RefusedJob::TooMany);
        }
        let job = Arc::new(Job {
            status: Mutex::new(JobStatus {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                repo: spec.repo.clone(),
                revision: spec.revision.clone(),
                include: spec.include.clone(),
                exclude: spec.exclude.clone(),
                mount: spec.mount.clone(),
                source: source.into(),
                state: JobState::Listing,
                error: None,
                commit: None,
                files_total: 0,
                files_done: 0,
                files_skipped: 0,
                files_failed: 0,
                bytes_total: 0,
                bytes_done: 0,
                created: unix_now(),
                finished: None,
                seconds: 0.0,
                failures: Vec::new(),
            }),
            started: Instant::now(),
            task: Mutex::new(None),
        });
        jobs.push_back(job.clone());
        // Only finished jobs are dropped: at most MAX_RUNNING run, so this ends.
        while jobs.len() > MAX_KEPT {
            let Some(i) = jobs.iter().position(|j| j.status.lock().state.is_final()) else {
                break;
            };
            jobs.remove(i);
        }
        drop(jobs);
        self.persist(true);
        Ok(job)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs.lock().iter().find(|j| j.id() == id).cloned()
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.jobs.lock().iter().map(|j| j.status()).collect()
    }

    /// Cancels a running job; `None` if there is no such job, `Some(false)` if it had ended.
    pub fn cancel(&self, id: u64) -> Option<bool> {
        let job = self.get(id)?;
        let cancelled = job.finish(JobState::Cancelled, Some("cancelled".into()));
        if cancelled {
            if let Some(task) = job.task.lock().take() {
                task.abort();
            }
            self.persist(true);
        }
        Some(cancelled)
    }

    /// Writes the jobs to disk: at once with `now`, else at most every [`PERSIST_EVERY`].
    pub fn persist(&self, now: bool) {
        {
            let mut last = self.persisted.lock();
            if !now && last.is_some_and(|t| t.elapsed() < PERSIST_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let bytes = serde_json::to_vec(&self.list()).expect("job status serializes");
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (path, written) = (self.path.clone(), self.written.clone());
        let write = move || {
            // Writes may run out of order on the blocking pool: an older list never replaces
            // a newer one.
            let mut last = written.lock();
            if *last > generation {
                return;
            }
            *last = generation;
            if let Err(e) = crate::durable::replace_atomic(&path, &bytes) {
                log::warn!("cannot write {}: {e}", path.display());
            }
        };
        // Off the async worker threads when there are some: they never wait on a disk.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }
}

fn root_mount() -> String {
    "/".into()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WarmSpec {
        WarmSpec {
            repo: "org/m".into(),
            revision: "main".into(),
            include: vec![],
            exclude: vec![],
            mount: "/".into(),
        }
    }

    #[test]
    fn running_jobs_are_interrupted_by_a_restart_and_kept_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(dir.path()).unwrap();
        let a = jobs.create(&spec(), "api").unwrap();
        let b = jobs.create(&spec(), "api").unwrap();
        assert!(b.finish(JobState::Done, None));
        assert!(!b.finish(JobState::Failed, None), "a job ends once");
        jobs.persist(true);
        drop(jobs);
        let reopened = Jobs::open(dir.path()).unwrap();
        let states: Vec<_> = reopened.list().iter().map(|s| (s.id, s.state)).collect();
        assert_eq!(
            states,
            [(a.id(), JobState::Interrupted), (b.id(), JobState::Done)]
        );
        for s in [JobState::Interrupted, JobState::Fetching] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.label(), "one spelling");
        }
        let c = reopened.create(&spec(), "api").unwrap();
        assert_eq!(c.id(), b.id() + 1, "ids are not reused");
        for _ in 1..MAX_RUNNING {
            reopened.create(&spec(), "api").unwrap();
        }
        assert!(reopened.create(&spec(), "api").is_err());
        assert_eq!(reopened.cancel(c.id()), Some(true));
        assert_eq!(reopened.cancel(c.id()), Some(false));
        assert_eq!(reopened.cancel(9999), None);
        for _ in 0..MAX_KEPT + 5 {
            let j = reopened.create(&spec(), "api").unwrap();
            j.finish(JobState::Done, None);
        }
        assert_eq!(reopened.list().len(), MAX_KEPT);
    }
}
