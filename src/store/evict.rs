//! Deleting evicted blobs without holding up hits: the blobs leave the index (what
//! `cache.max_size` counts) at once, in one lock per batch; their files are unlinked by a
//! thread of its own at the lowest CPU priority, so that a batch of 100k evictions (a lower
//! `cache.max_size` at boot, a big fill making room among small files) takes the CPU only
//! when the hits leave it. Until a file is unlinked it may still be on disk: the queue holds at
//! most every blob of the store once (each leaves the index before it is queued).

use std::path::PathBuf;
use std::sync::mpsc;

pub(super) struct Deleter(mpsc::Sender<Vec<PathBuf>>);

impl Deleter {
    pub(super) fn start() -> std::io::Result<Deleter> {
        let (queue, batches) = mpsc::channel::<Vec<PathBuf>>();
        std::thread::Builder::new()
            .name("store-evict".into())
            .spawn(move || {
                lower_priority();
                for path in batches.into_iter().flatten() {
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            log::warn!("cannot remove evicted blob {}: {e}", path.display())
                        }
                        _ => {}
                    }
                }
            })?;
        Ok(Deleter(queue))
    }

    pub(super) fn delete(&self, paths: Vec<PathBuf>) {
        // The thread ends only with the process.
        let _ = self.0.send(paths);
    }
}

/// Nice 19 for the calling thread only (Linux: a thread id is a `PRIO_PROCESS` target).
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority changes this thread's nice value only.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if rc != 0 {
        log::debug!(
            "cannot lower the eviction thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
