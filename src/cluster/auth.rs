//! Peer request authentication: an HMAC-SHA256, keyed by `cluster.secret`, over what the
//! request asks (method, path, the blob's size and origin) and when it was made. The secret
//! itself never travels; a signature is good for [`MAX_SKEW`] either side of its time, and
//! for that request only, so a client cannot pose as a peer nor reuse a peer's signature for
//! another blob or origin.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The header carrying `{unix seconds}.{hex signature}`.
pub const AUTH_HEADER: &str = "x-hf-edge-peer-auth";
/// How far a peer's clock may be from ours (and how long a captured request stays good).
pub const MAX_SKEW: u64 = 60;

/// What a peer request asks for, as signed.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub size: u64,
    pub origin: &'a str,
}

/// Why a peer request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerAuthError {
    #[error("no {AUTH_HEADER} header: peer endpoints are for hf-edge cluster nodes")]
    Missing,
    #[error("malformed {AUTH_HEADER} header")]
    Malformed,
    #[error("{AUTH_HEADER} is {0} s from this node's clock (at most {MAX_SKEW} s allowed)")]
    Skewed(u64),
    #[error("{AUTH_HEADER} does not match: not signed with this cluster's secret")]
    BadSignature,
}

/// Signs and checks peer requests with the cluster's secret.
pub struct PeerAuth {
    secret: Secret,
}

impl PeerAuth {
    pub fn new(secret: Secret) -> PeerAuth {
        PeerAuth { secret }
    }

    /// The header value for `req`, made now.
    pub fn sign(&self, req: &Signed) -> String {
        self.sign_at(req, now())
    }

    fn sign_at(&self, req: &Signed, time: u64) -> String {
        let mac = self.mac(req, time).finalize().into_bytes();
        format!("{time}.{}", hex::encode(mac))
    }

    /// Checks `header` (the [`AUTH_HEADER`] value, if any) against `req`, in constant time.
    pub fn verify(&self, header: Option<&[u8]>, req: &Signed) -> Result<(), PeerAuthError> {
        self.verify_at(header, req, now())
    }

    fn verify_at(
        &self,
        header: Option<&[u8]>,
        req: &Signed,
        now: u64,
    ) -> Result<(), PeerAuthError> {
        let header = header.ok_or(PeerAuthError::Missing)?;
        let text = std::str::from_utf8(header).map_err(|_| PeerAuthError::Malformed)?;
        let (time, sig) = text.split_once('.').ok_or(PeerAuthError::Malformed)?;
        let time: u64 = time.parse().map_err(|_| PeerAuthError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| PeerAuthError::Malformed)?;
        let skew = now.abs_diff(time);
        if skew > MAX_SKEW {
            return Err(PeerAuthError::Skewed(skew));
        }
        self.mac(req, time)
            .verify_slice(&sig)
            .map_err(|_| PeerAuthError::BadSignature)
    }

    fn mac(&self, req: &Signed, time: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        // Newline-separated: no field holds a newline (header values cannot).
        let message = format!(
            "{}\n{}\n{}\n{}\n{time}",
            req.method, req.path, req.size, req.origin
        );
        mac.update(message.as_bytes());
        mac
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: Signed = Signed {
        method: "GET",
        path: "/.hf-edge/peer/blobs/sha256/ab",
        size: 10,
        origin: "https://cdn-lfs.hf.co/x?Signature=y",
    };

    #[test]
    fn only_a_fresh_signature_of_the_same_request_with_the_same_secret_passes() {
        let auth = PeerAuth::new(Secret::new("0123456789abcdef-cluster"));
        let t = 1_800_000_000;
        let good = auth.sign_at(&REQ, t);
        assert_eq!(auth.verify_at(Some(good.as_bytes()), &REQ, t + 5), Ok(()));
        assert_eq!(auth.verify_at(None, &REQ, t), Err(PeerAuthError::Missing));
        assert_eq!(
            auth.verify_at(Some(b"nonsense"), &REQ, t),
            Err(PeerAuthError::Malformed)
        );
        assert_eq!(
            auth.verify_at(Some(good.as_bytes()), &REQ, t + MAX_SKEW + 1),
            Err(PeerAuthError::Skewed(MAX_SKEW + 1))
        );
        let other_origin = Signed {
            origin: "https://evil.example/x",
            ..REQ
        };
        assert_eq!(
            auth.verify_at(Some(good.as_bytes()), &other_origin, t),
            Err(PeerAuthError::BadSignature)
        );
        let bigger = Signed { size: 11, ..REQ };
        assert_eq!(
            auth.verify_at(Some(good.as_bytes()), &bigger, t),
            Err(PeerAuthError::BadSignature)
        );
        let stranger = PeerAuth::new(Secret::new("another-cluster-secret"));
        let forged = stranger.sign_at(&REQ, t);
        assert_eq!(
            auth.verify_at(Some(forged.as_bytes()), &REQ, t),
            Err(PeerAuthError::BadSignature)
        );
    }
}
