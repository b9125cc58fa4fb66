//! The Hub's protocol: URL grammar, response headers, and the upstream client that asks the
//! Hub for file metadata.

pub mod egress;
pub mod grammar;
pub mod headers;
pub mod intent;
pub mod lfs;
pub mod status;
pub mod upstream;
pub mod url;

use std::fmt;

/// A blob's content address, taken from the Hub's ETags: sha256 for LFS files (`X-Linked-Etag`),
/// the git blob oid (sha1 of `blob {len}\0{data}`) for regular files. One file shared by many
/// repos or revisions has one `BlobId`, so it is stored once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobId {
    Sha256([u8; 32]),
    GitOid([u8; 20]),
}

impl BlobId {
    /// Parses an ETag as clients normalise it (`W/` prefix and quotes dropped).
    pub fn from_etag(etag: &str) -> Option<BlobId> {
        let hex_part = normalize_etag(etag);
        match hex_part.len() {
            64 => hex::decode(hex_part)
                .ok()
                .map(|v| BlobId::Sha256(v.try_into().expect("32 bytes"))),
            40 => hex::decode(hex_part)
                .ok()
                .map(|v| BlobId::GitOid(v.try_into().expect("20 bytes"))),
            _ => None,
        }
    }

    /// `sha256` or `oid`: the folder the blob lives in.
    pub fn algo(&self) -> &'static str {
        match self {
            BlobId::Sha256(_) => "sha256",
            BlobId::GitOid(_) => "oid",
        }
    }

    pub fn hex(&self) -> String {
        let mut buf = [0u8; 64];
        self.hex_into(&mut buf).to_string()
    }

    /// The hex digits, written into `buf` (no allocation: cache keys and ETags are built from
    /// them on every hit).
    fn hex_into<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        let bytes: &[u8] = match self {
            BlobId::Sha256(b) => b,
            BlobId::GitOid(b) => b,
        };
        let out = &mut buf[..bytes.len() * 2];
        hex::encode_to_slice(bytes, out).expect("the buffer fits 32 bytes");
        std::str::from_utf8(out).expect("hex digits are ASCII")
    }

    /// Parses the `algo/hex` form produced by `Display` (used as the cache key).
    pub fn parse_key(s: &str) -> Option<BlobId> {
        let (algo, hex_part) = s.split_once('/')?;
        let id = BlobId::from_etag(hex_part)?;
        (id.algo() == algo && hex_part.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        f.write_str(self.algo())?;
        f.write_str("/")?;
        f.write_str(self.hex_into(&mut buf))
    }
}

/// `W/"abc"` → `abc`, the way `huggingface_hub` normalises ETags.
pub fn normalize_etag(etag: &str) -> &str {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_from_etags() {
        let sha = "a".repeat(64);
        let oid = "b".repeat(40);
        let s = BlobId::from_etag(&format!("\"{sha}\"")).unwrap();
        assert_eq!(s.to_string(), format!("sha256/{sha}"));
        let o = BlobId::from_etag(&format!("W/\"{oid}\"")).unwrap();
        assert_eq!(o.to_string(), format!("oid/{oid}"));
        assert_eq!(BlobId::parse_key(&o.to_string()), Some(o));
        assert_eq!(BlobId::from_etag("\"abc\""), None);
        assert_eq!(BlobId::from_etag(&"z".repeat(40)), None);
        assert_eq!(BlobId::parse_key(&format!("sha256/{oid}")), None);
    }
}
