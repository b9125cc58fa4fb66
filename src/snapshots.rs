//! The last good answer to the read-only API calls `snapshot_download` makes (repo revision
//! info and tree listings), kept on disk so a client with an empty cache can still download
//! an already-cached revision while the Hub is down. Normally the API passes straight
//! through and these are never served; they are written as answers pass by.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::access::IdentityKey;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub content_type: String,
    /// The `Link` header with paths only: the base URL is added per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub body: String,
}

pub struct ApiSnapshots {
    dir: PathBuf,
}

impl ApiSnapshots {
    pub fn open(cache_dir: &std::path::Path) -> io::Result<ApiSnapshots> {
        let dir = cache_dir.join("api");
        std::fs::create_dir_all(&dir)?;
        Ok(ApiSnapshots { dir })
    }

    fn file(&self, who: IdentityKey, path_and_query: &str) -> PathBuf {
        let mut h = sha2::Sha256::new();
        // v2: links kept as paths (earlier files held a client's host, and are never read).
        h.update(b"v2\n");
        h.update(who.hex());
        h.update(b"\n");
        h.update(path_and_query.as_bytes());
        self.dir.join(format!("{}.json", hex::encode(h.finalize())))
    }

    /// Keeps `snap` as the answer to `path_and_query` for `who` (replaced atomically).
    pub fn save(&self, who: IdentityKey, path_and_query: &str, snap: &Snapshot) {
        let path = self.file(who, path_and_query);
        let res = serde_json::to_vec(snap)
            .map_err(io::Error::other)
            .and_then(|bytes| crate::durable::replace_atomic(&path, &bytes));
        if let Err(e) = res {
            log::warn!("cannot keep an API snapshot in {}: {e}", path.display());
        }
    }

    pub fn load(&self, who: IdentityKey, path_and_query: &str) -> Option<Snapshot> {
        let bytes = std::fs::read(self.file(who, path_and_query)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
