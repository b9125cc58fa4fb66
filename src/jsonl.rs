//! Append-only JSON-lines files (`refs.jsonl`, `meta.jsonl`): read with later lines winning,
//! compacted by an atomic rewrite, appended to while serving. A rewrite and every append hold
//! the file's lock ([`durable::Locked`]), and an appender whose file was replaced reopens it:
//! `hf-edge cache` commands can compact a store a server is appending to, and neither a crash
//! nor the other process loses a line.
//!
//! While serving, lines are written by a thread of the file's own, never on a request's
//! worker thread (a rewrite holds the lock for as long as it takes), through a bounded queue:
//! when the disk cannot keep up, lines are dropped (these files are advisory) and logged. The
//! thread keeps the file bounded: once it holds more than twice the entries it held after its
//! last compaction (and at least [`SLACK`] lines more, or `max_entries` more if fewer), it
//! compacts it to one line per entry, the newest `max_entries` at most.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use parking_lot::Mutex;

use crate::durable::{self, Locked};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Lines waiting for the writer thread at most (a few hundred bytes each).
const QUEUE: usize = 4096;
/// Lines a file may gain past twice its entries before it is compacted (or past its
/// `max_entries`, if fewer): small files are not rewritten every few appends.
const SLACK: usize = 1024;

/// Every well-formed line of `path` (none if it does not exist), a later line replacing an
/// earlier one with the same `key`, in the order of their last lines. A torn last line (a
/// crash mid-append) is skipped.
pub fn read_latest<T: DeserializeOwned, K: Hash + Eq>(
    path: &Path,
    key: impl Fn(&T) -> K,
) -> io::Result<Vec<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines() {
        lines.push(line?);
    }
    Ok(latest(lines.iter().map(String::as_bytes), key))
}

/// The entries of `lines`, the last line of each key only, in the order of those lines.
fn latest<'a, T: DeserializeOwned, K: Hash + Eq>(
    lines: impl Iterator<Item = &'a [u8]>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut slots: Vec<Option<T>> = Vec::new();
    let mut at: HashMap<K, usize> = HashMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_slice::<T>(line) else {
            continue;
        };
        if let Some(old) = at.insert(key(&v), slots.len()) {
            slots[old] = None;
        }
        slots.push(Some(v));
    }
    slots.into_iter().flatten().collect()
}

/// Replaces `path` with `entries`, one per line, atomically and under the file's lock.
pub fn rewrite<T: Serialize>(path: &Path, entries: &[T]) -> io::Result<()> {
    let _lock = Locked::acquire(path)?;
    durable::replace(path, &lines(entries)?)
}

/// Rewrites `path` from what it holds, under its lock: `edit` gets its bytes (empty when it
/// does not exist) and returns the new ones, or `None` to leave it as it is.
pub fn rewrite_with(path: &Path, edit: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) -> io::Result<()> {
    let _lock = Locked::acquire(path)?;
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    match edit(text) {
        Some(new) => durable::replace(path, &new),
        None => Ok(()),
    }
}

fn lines<T: Serialize>(entries: &[T]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// A file's text → its compacted text and how many entries that holds; `None` leaves it.
type Compact = dyn Fn(&[u8]) -> Option<(Vec<u8>, usize)> + Send;

/// How a journal is compacted: what makes two lines one entry, and how many entries it keeps
/// (the newest, in file order).
pub struct Compaction {
    compact: Box<Compact>,
    max_entries: usize,
}

impl Compaction {
    pub fn new<T, K>(key: fn(&T) -> K, max_entries: usize) -> Compaction
    where
        T: DeserializeOwned + Serialize + 'static,
        K: Hash + Eq + 'static,
    {
        Compaction {
            compact: Box::new(move |text| {
                let mut entries = latest(text.split(|b| *b == b'\n'), key);
                let keep = entries.len().min(max_entries);
                entries.drain(..entries.len() - keep);
                Some((lines(&entries).ok()?, keep))
            }),
            max_entries,
        }
    }
}

/// Appends lines on a writer thread, each dedup key at most once per process (while this
/// process remembers it: `remember` keys at most, then it starts over, and a line may be
/// written twice; compaction makes it one again).
pub struct Appender<D> {
    path: PathBuf,
    queue: SyncSender<Job>,
    written: Mutex<HashSet<D>>,
    remember: usize,
    dropped: AtomicU64,
}

enum Job {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written (tests read what was recorded).
    #[cfg(test)]
    Flush(mpsc::SyncSender<()>),
}

impl<D: Hash + Eq> Appender<D> {
    /// Opens `path` for appending (created if missing) and starts its writer thread.
    pub fn open(path: &Path, compaction: Compaction, remember: usize) -> io::Result<Appender<D>> {
        let file = open_append(path)?;
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("jsonl");
        // Its owner compacted it at boot: as many entries as lines.
        let lines = count_lines(path)?;
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            lines,
            entries: lines,
            compaction,
        };
        std::thread::Builder::new()
            .name(format!("{name} writer"))
            .spawn(move || writer.run(jobs))?;
        Ok(Appender {
            path: path.to_path_buf(),
            queue,
            written: Mutex::new(HashSet::new()),
            remember,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `value` unless this process already appended one under `key`; drops it when
    /// the writer is that far behind.
    pub fn append<T: Serialize>(&self, key: D, value: &T) {
        self.queue_line(key, value, false);
    }

    /// Queues `value` even if one was appended under `key` before: what it records may have
    /// been removed from the file since (by `hf-edge cache` commands).
    pub fn append_anew<T: Serialize>(&self, key: D, value: &T) {
        self.queue_line(key, value, true);
    }

    fn queue_line<T: Serialize>(&self, key: D, value: &T, anew: bool) {
        let mut written = self.written.lock();
        if !anew && written.contains(&key) {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(value) else {
            return;
        };
        line.push(b'\n');
        match self.queue.try_send(Job::Line(line)) {
            Ok(()) => {
                if written.len() >= self.remember {
                    written.clear();
                }
                written.insert(key);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!(
                        "{}: {n} line(s) dropped, its writer is behind",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// Waits until every line queued so far is written.
    #[cfg(test)]
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.queue.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Lines in the file (as far as this process knows).
    lines: usize,
    /// Entries after the last compaction.
    entries: usize,
    compaction: Compaction,
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Line(line) => self.append(&line),
                #[cfg(test)]
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn append(&mut self, line: &[u8]) {
        if let Err(err) = self.append_line(line) {
            log::warn!("cannot append to {}: {err}", self.path.display());
            return;
        }
        self.lines += 1;
        let slack = SLACK.min(self.compaction.max_entries);
        if self.lines >= (self.entries * 2).max(self.entries + slack) {
            if let Err(err) = self.compact() {
                log::warn!("cannot compact {}: {err}", self.path.display());
                // Not again at once: after as many lines again.
                self.entries = self.lines;
            }
        }
    }

    /// One write per line on an O_APPEND file, under the lock, to the file now at `path` (a
    /// rewrite by another process replaced the one opened before).
    fn append_line(&mut self, line: &[u8]) -> io::Result<()> {
        let _lock = Locked::acquire(&self.path)?;
        let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        let open = self.file.metadata().map(|m| (m.dev(), m.ino()))?;
        if current.ok() != Some(open) {
            self.file = open_append(&self.path)?;
            self.lines = count_lines(&self.path)?;
            self.entries = self.lines;
        }
        self.file.write_all(line)
    }

    fn compact(&mut self) -> io::Result<()> {
        let mut kept = None;
        rewrite_with(&self.path, |text| {
            let (new, n) = (self.compaction.compact)(&text)?;
            kept = Some(n);
            Some(new)
        })?;
        let kept = kept.ok_or_else(|| io::Error::other("its entries do not serialize"))?;
        self.file = open_append(&self.path)?;
        (self.lines, self.entries) = (kept, kept);
        Ok(())
    }
}

fn count_lines(path: &Path) -> io::Result<usize> {
    match std::fs::read(path) {
        Ok(text) => Ok(text.iter().filter(|b| **b == b'\n').count()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Line {
        k: u32,
        v: u32,
    }

    fn key(l: &Line) -> u32 {
        l.k
    }

    #[test]
    fn later_lines_win_in_the_order_of_their_last_line() {
        let text = b"{\"k\":1,\"v\":1}\n{\"k\":2,\"v\":1}\ntorn\n{\"k\":1,\"v\":2}\n{\"k\":3";
        let got: Vec<Line> = latest(text.split(|b| *b == b'\n'), key);
        assert_eq!(got, [Line { k: 2, v: 1 }, Line { k: 1, v: 2 }]);
    }

    #[test]
    fn a_journal_is_compacted_to_its_newest_entries_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let max = 100;
        let log = Appender::open(&path, Compaction::new(key, max), max).unwrap();
        // 10 000 answers about 1 000 keys, each a new value.
        for i in 0..10_000u32 {
            let line = Line { k: i % 1000, v: i };
            log.append((line.k, line.v), &line);
            if i % 1000 == 999 {
                log.flush();
                let lines = count_lines(&path).unwrap();
                assert!(lines <= 2 * max, "{lines} lines after {i} appends");
            }
        }
        log.flush();
        let kept: Vec<Line> = read_latest(&path, key).unwrap();
        assert!(kept.len() <= 2 * max);
        // The newest answers are the ones kept.
        assert_eq!(kept.last(), Some(&Line { k: 999, v: 9999 }));
        assert!(kept.iter().all(|l| l.v >= 10_000 - 2 * max as u32));
    }

    #[test]
    fn a_key_already_written_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let log = Appender::open(&path, Compaction::new(key, 10), 10).unwrap();
        for _ in 0..5 {
            log.append(1, &Line { k: 1, v: 1 });
        }
        log.flush();
        assert_eq!(count_lines(&path).unwrap(), 1);
    }
}
