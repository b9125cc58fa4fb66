//! Writes that survive a crash and a concurrent writer: replacing a file (temp file, fsync,
//! rename, then fsync of its directory, without which the rename itself may be lost), and an
//! advisory lock beside a file that processes sharing a store take before changing it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Files and directories this process creates from now on are its user's only (0600/0700),
/// or its group's too (0640/0750): a store holds what gated repos' users were allowed.
pub fn restrict_new_files(group: bool) {
    let mask = if group { 0o027 } else { 0o077 };
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(mask);
    }
}

/// Applies the same modes to an existing directory (made before, or by another tool).
pub fn restrict_dir(dir: &Path, group: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if group { 0o750 } else { 0o700 };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Makes a rename or a new file in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably: readers see the old file or the new
/// one, and after a crash so does the next boot.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_and_rename(path, bytes, true)?;
    sync_parent(path)
}

/// Replaces `path` with `bytes` atomically, without waiting for the disk: for what may be
/// lost in a crash (kept answers that are only a fallback).
pub fn replace_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_and_rename(path, bytes, false)
}

fn write_and_rename(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nonce: u64 = rand::random();
    let tmp = path.with_file_name(format!(".{name}.{nonce:016x}.tmp"));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// An exclusive advisory lock on `{path}.lock`, held until dropped (the kernel drops it with
/// the process). The lock file is separate because replacing `path` changes its inode.
pub struct Locked {
    _file: File,
}

impl Locked {
    pub fn acquire(path: &Path) -> io::Result<Locked> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(path))?;
        file.lock()?;
        Ok(Locked { _file: file })
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_the_new_content_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("refs.jsonl");
        fs::write(&p, b"old\n").unwrap();
        replace(&p, b"new\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["refs.jsonl"]);
    }

    #[test]
    fn the_lock_is_exclusive_across_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("refs.jsonl");
        let held = Locked::acquire(&p).unwrap();
        let other = File::options()
            .write(true)
            .open(dir.path().join("refs.jsonl.lock"))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
