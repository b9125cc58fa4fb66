//! Where things live under `cache.dir`:
//!
//! ```text
//! blobs/sha256/ab/ab12…   complete, verified LFS blobs (named by sha256)
//! blobs/oid/cd/cd34…      complete, verified regular files (named by git oid)
//! tmp/{hex}.{nonce}.part  fills in progress; never served once their writer is gone
//! ```
//! A blob appears under `blobs/` only by `rename` after its hash was checked and it was
//! fsynced, so a reader never sees a half-written blob there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::hub::BlobId;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// A complete blob found on disk at boot.
#[derive(Debug)]
pub struct FoundBlob {
    pub id: BlobId,
    pub size: u64,
    pub last_access: SystemTime,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob(&self, id: &BlobId) -> PathBuf {
        let hex = id.hex();
        self.root
            .join("blobs")
            .join(id.algo())
            .join(&hex[..2])
            .join(hex)
    }

    /// A temp name unique to this write: random, so processes sharing the directory (a
    /// graceful upgrade, containers on one volume, each with its own PID 1) never collide.
    pub fn temp(&self, id: &BlobId) -> PathBuf {
        let nonce: u64 = rand::random();
        self.tmp_dir()
            .join(format!("{}.{nonce:016x}.part", id.hex()))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the directories and removes temp files left by dead processes.
    pub fn prepare(&self) -> io::Result<usize> {
        fs::create_dir_all(self.root.join("blobs/sha256"))?;
        fs::create_dir_all(self.root.join("blobs/oid"))?;
        fs::create_dir_all(self.tmp_dir())?;
        let mut removed = 0;
        for entry in fs::read_dir(self.tmp_dir())? {
            let path = entry?.path();
            if !writer_alive(&path) {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every complete blob, with its size and last access time (for the LRU order).
    pub fn scan(&self) -> io::Result<Vec<FoundBlob>> {
        let mut found = Vec::new();
        for algo in ["sha256", "oid"] {
            let dir = self.root.join("blobs").join(algo);
            for shard in fs::read_dir(&dir)? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for entry in fs::read_dir(shard.path())? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(id) = name
                        .to_str()
                        .and_then(|n| BlobId::parse_key(&format!("{algo}/{n}")))
                    else {
                        log::warn!("ignoring unexpected file {}", entry.path().display());
                        continue;
                    };
                    let md = match entry.metadata() {
                        Ok(md) => md,
                        // Removed since listed (`hf-edge cache` beside a server): not there.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    found.push(FoundBlob {
                        id,
                        size: md.len(),
                        last_access: md.accessed().or_else(|_| md.modified())?,
                    });
                }
            }
        }
        Ok(found)
    }
}

/// A temp file belongs to a live writer while that writer holds its lock (an advisory
/// `flock`, released by the kernel when the writer's process dies).
fn writer_alive(path: &Path) -> bool {
    match fs::File::open(path) {
        Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_removes_temp_files_no_writer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.prepare().unwrap();
        let id = BlobId::from_etag(&"a".repeat(64)).unwrap();
        let live = layout.temp(&id);
        let dead = layout.temp(&id);
        assert_ne!(live, dead, "each write gets a name of its own");
        let held = fs::File::create(&live).unwrap();
        held.try_lock().unwrap();
        fs::write(&dead, b"left by a killed writer").unwrap();
        assert_eq!(layout.prepare().unwrap(), 1);
        assert!(live.exists() && !dead.exists());
        drop(held);
        assert_eq!(layout.prepare().unwrap(), 1);
        assert!(!live.exists());
    }
}
