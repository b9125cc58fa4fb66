//! The content check of bodies hf-edge passes on without storing them: a whole body is hashed
//! as it streams and must match its content address before its last piece goes out.

use bytes::Bytes;
use pingora::{Error, ErrorType, Result};

use crate::hub::BlobId;
use crate::store::ContentHasher;

/// The content check of a whole body served uncached: it is hashed as it streams, and its
/// last piece is held back until the hash matches, so a corrupt body reaches the client cut
/// short of its `Content-Length` (an error to every client), never whole.
pub struct BodyCheck {
    expected: BlobId,
    hasher: Option<ContentHasher>,
    held: Option<Bytes>,
}

impl BodyCheck {
    pub fn new(expected: &BlobId, size: u64) -> BodyCheck {
        BodyCheck {
            expected: *expected,
            hasher: Some(ContentHasher::new(expected, size)),
            held: None,
        }
    }

    /// `response_body_filter`: passes on the previous piece and holds this one; at the end,
    /// passes on what is held only if the content matches.
    pub fn filter(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> Result<()> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(());
        };
        let arrived = body.take();
        if let Some(piece) = &arrived {
            hasher.update(piece);
        }
        let held = std::mem::replace(&mut self.held, arrived);
        if !end_of_stream {
            *body = held;
            return Ok(());
        }
        let actual = self.hasher.take().map(ContentHasher::finish);
        if actual != Some(self.expected) {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("upstream body is not {} (got {actual:?})", self.expected),
            );
        }
        *body = match (held, self.held.take()) {
            (Some(a), Some(b)) => Some([a, b].concat().into()),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_uncached_body_never_ends_whole() {
        let data = b"the whole file, in three pieces";
        use sha2::Digest;
        let id = BlobId::from_etag(&hex::encode(sha2::Sha256::digest(data))).unwrap();
        let run = |content: &[u8]| -> (Vec<u8>, bool) {
            let mut check = BodyCheck::new(&id, data.len() as u64);
            let mut out = Vec::new();
            let pieces: Vec<&[u8]> = content.chunks(11).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let mut body = Some(Bytes::copy_from_slice(piece));
                if check.filter(&mut body, i + 1 == pieces.len()).is_err() {
                    return (out, false);
                }
                out.extend(body.unwrap_or_default());
            }
            (out, true)
        };
        assert_eq!(run(data), (data.to_vec(), true));
        let mut bad = data.to_vec();
        bad[3] ^= 1;
        let (sent, ok) = run(&bad);
        assert!(!ok);
        assert!(sent.len() < data.len(), "the last piece is never sent");
    }
}
