//! Kept warm (`warm.repos`): every `warm.interval`, each entry's revision is resolved on the
//! Hub, and a job starts when it names a commit no job of that entry has stored yet (at boot,
//! when a job failed, or when a branch moved).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::jobs::{Job, JobState};
use super::{WarmSpec, Warmer};

pub struct Schedule {
    pub warmer: Arc<Warmer>,
    pub interval: Duration,
    pub repos: Vec<WarmSpec>,
}

/// What an entry's last job did.
#[derive(Default)]
struct Entry {
    job: Option<Arc<Job>>,
    /// The commit its last successful job stored.
    stored: Option<String>,
}

impl Schedule {
    async fn round(&self, entries: &mut [Entry]) {
        for (spec, entry) in self.repos.iter().zip(entries.iter_mut()) {
            if let Some(job) = &entry.job {
                let s = job.status();
                if !s.state.is_final() {
                    continue;
                }
                if s.state == JobState::Done {
                    entry.stored = s.commit;
                }
            }
            let listed = match self.warmer.mount(&spec.mount) {
                Ok(mount) => {
                    let parts = self.warmer.parts(&mount);
                    parts.list(&spec.repo(), &spec.revision).await
                }
                Err(e) => Err(e.to_string()),
            };
            let commit = match listed {
                Ok((commit, _)) => commit,
                Err(e) => {
                    log::warn!("warm: {}@{}: {e}", spec.repo, spec.revision);
                    continue;
                }
            };
            if entry.stored.as_deref() == Some(commit.as_str()) {
                continue;
            }
            match self.warmer.submit(spec.clone(), "config") {
                Ok(job) => entry.job = Some(job),
                Err(e) => log::warn!("warm: {}@{}: {e}", spec.repo, spec.revision),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Schedule {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.repos.is_empty() {
            return;
        }
        let mut entries: Vec<Entry> = self.repos.iter().map(|_| Entry::default()).collect();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round(&mut entries).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
