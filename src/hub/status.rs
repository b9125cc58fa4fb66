//! What an upstream status means to hf-edge: one table for the resolver, the proxy and the
//! refetch, so "the Hub is unavailable" or "a signed URL expired" is decided in one place.

/// How hf-edge takes an upstream answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: an answer.
    Answer,
    /// 3xx: follow it (within the redirect policy).
    Redirect,
    /// 4xx other than 429: the Hub said no; its answer goes to the client as sent.
    Refused,
    /// 429, 5xx, and anything no Hub sends: no answer now; what was known before may be
    /// served.
    Unavailable,
}

pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Answer,
        300..=399 => Verdict::Redirect,
        429 => Verdict::Unavailable,
        400..=499 => Verdict::Refused,
        _ => Verdict::Unavailable,
    }
}

/// The Hub could not give an answer (as opposed to answering no).
pub fn unavailable(status: u16) -> bool {
    classify(status) == Verdict::Unavailable
}

/// A transient failure worth asking again at once. Not 504 (a timeout: the client would wait
/// several of them) nor 429 (the Hub asked for time).
pub fn retry_at_once(status: u16) -> bool {
    matches!(status, 500 | 502 | 503)
}

/// A CDN's refusal of a signed URL: it expired (cached metadata outlives it), so the Hub is
/// asked to sign a new one.
pub fn signature_refused(status: u16) -> bool {
    matches!(status, 401 | 403 | 410)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_class_has_one_meaning() {
        // (status, verdict, retried at once, an expired signature from a CDN)
        let table = [
            (200, Verdict::Answer, false, false),
            (206, Verdict::Answer, false, false),
            (302, Verdict::Redirect, false, false),
            (307, Verdict::Redirect, false, false),
            (400, Verdict::Refused, false, false),
            (401, Verdict::Refused, false, true),
            (403, Verdict::Refused, false, true),
            (404, Verdict::Refused, false, false),
            (410, Verdict::Refused, false, true),
            (416, Verdict::Refused, false, false),
            (429, Verdict::Unavailable, false, false),
            (500, Verdict::Unavailable, true, false),
            (501, Verdict::Unavailable, false, false),
            (502, Verdict::Unavailable, true, false),
            (503, Verdict::Unavailable, true, false),
            (504, Verdict::Unavailable, false, false),
            (101, Verdict::Unavailable, false, false),
        ];
        for (status, verdict, retried, expired) in table {
            assert_eq!(classify(status), verdict, "{status}");
            assert_eq!(
                unavailable(status),
                verdict == Verdict::Unavailable,
                "{status}"
            );
            assert_eq!(retry_at_once(status), retried, "{status}");
            assert_eq!(signature_refused(status), expired, "{status}");
        }
    }
}
