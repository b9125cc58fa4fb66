//! The fill writers: a fixed set of threads that write, hash and commit every fill's batches.
//!
//! Not a thread per fill (a thousand cold files would make a thousand threads), and not
//! tokio's blocking pool, which hit reads of blobs outside the page cache need: fills only
//! ever occupy these threads, so however many fills run, hits never queue behind them. A
//! fill hands one batch at a time (see `write.rs`), so the threads are shared fairly between
//! fills, and a fill waiting on its upstream holds none of them.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub struct WriterPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl WriterPool {
    /// Starts `threads` writer threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<WriterPool> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("fill-writer-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take a job, not while running it.
                    let job = rx.lock().map(|r| r.recv());
                    match job {
                        Ok(Ok(job)) => job(),
                        _ => return,
                    }
                })?;
        }
        Ok(WriterPool {
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `f` on a writer thread; its result comes back on the returned channel (closed
    /// without a value only if the job panicked).
    pub fn run<T, F>(&self, f: F) -> oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // The threads never exit while the pool (and so this sender) lives.
        let _ = self.jobs.lock().map(|jobs| jobs.send(job));
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pools_threads_only() {
        let pool = WriterPool::start(2).unwrap();
        let names: Vec<_> = (0..8)
            .map(|_| pool.run(|| std::thread::current().name().map(str::to_string)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let name = n.await.unwrap().unwrap();
            assert!(name.starts_with("fill-writer-"), "{name}");
            seen.insert(name);
        }
        assert!(seen.len() <= 2, "{seen:?}");
    }
}
