//! Who may use hf-edge, as whom it talks to the Hub, and which repos it serves at all.
//!
//! - Site keys: a client presents a key where it would put an HF token; hf-edge swaps it for
//!   the key's upstream token (or none). Keys are configured as sha256 hashes only.
//! - Repo rules: allow/deny globs over repo ids, checked before anything goes upstream.
//!
//! Whether the *Hub* lets an identity read a repo is not decided here: the resolver asks the
//! Hub with that identity and remembers its answer for `access.auth_ttl`.

use std::time::Duration;

use http::HeaderValue;
use sha2::Digest;

use crate::hub::grammar::Repo;

/// What to do with restricted content when the Hub cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineRestricted {
    /// Refuse (fail closed).
    Deny,
    /// Serve what this identity was allowed before.
    Allow,
}

/// A configured site key.
#[derive(Debug, Clone)]
pub struct SiteKey {
    pub name: String,
    pub sha256: [u8; 32],
    /// `Authorization` sent upstream for this key; `None` is anonymous.
    pub upstream: Option<HeaderValue>,
}

/// A repo glob: `*` matches within one path segment, `**` across segments. A pattern that
/// starts with `models/`, `datasets/`, `spaces/` or `kernels/` matches that type only;
/// otherwise it matches the repo id of any type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoGlob(String);

impl RepoGlob {
    pub fn parse(s: &str) -> Result<RepoGlob, String> {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'*')
            });
        if ok {
            Ok(RepoGlob(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{s:?} is not a repo pattern like org/* or datasets/org/name"
            ))
        }
    }

    /// Case-insensitive, as the Hub compares repo ids: `ACME/Gated` is `acme/gated`.
    pub fn matches(&self, repo: &Repo) -> bool {
        let repo = repo.folded();
        let typed = format!("{}/{}", repo.kind.api_plural(), repo.id);
        let has_type = ["models/", "datasets/", "spaces/", "kernels/"]
            .iter()
            .any(|p| self.0.starts_with(p));
        let subject = if has_type { &typed } else { &repo.id };
        glob(self.0.as_bytes(), subject.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let seg = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=seg).any(|i| glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Why a request was refused before reaching the Hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("a valid hf-edge site key is required (put it where an HF token goes, e.g. HF_TOKEN)")]
    KeyRequired,
    #[error("access to {0} is not allowed by this hf-edge site's policy")]
    RepoRule(String),
    #[error("this hf-edge site allows listed repos only, and this path names none it can tell")]
    UnknownRepo,
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::KeyRequired => 401,
            Denied::RepoRule(_) | Denied::UnknownRepo => 403,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub require_key: bool,
    pub keys: Vec<SiteKey>,
    pub allow: Vec<RepoGlob>,
    pub deny: Vec<RepoGlob>,
    pub auth_ttl: Duration,
    pub offline_restricted: OfflineRestricted,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_key: false,
            keys: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            auth_ttl: Duration::from_secs(60),
            offline_restricted: OfflineRestricted::Deny,
        }
    }
}

/// sha256 of a key, as stored in the config.
pub fn hash_key(key: &str) -> [u8; 32] {
    sha2::Sha256::digest(key.trim().as_bytes()).into()
}

/// The credentials a request may go upstream with, and whose they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    /// The client's own token: its identity, for everything it does.
    Own(HeaderValue),
    /// The site's: `upstream.token` or a site key's token, shared by many users.
    Site(HeaderValue),
}

impl Credentials {
    /// What a request signs with: the site's credentials sign reads only, so that no user
    /// can write as the site account (the Hub answers such a write as anonymous).
    pub fn for_request(self, reads_only: bool) -> Option<HeaderValue> {
        match self {
            Credentials::Own(v) => Some(v),
            Credentials::Site(v) if reads_only => Some(v),
            Credentials::Site(_) | Credentials::Anonymous => None,
        }
    }
}

impl Policy {
    /// The credentials to use upstream for a client: a site key's upstream token, else the
    /// client's own token, else the site token (`upstream.token`), else none.
    pub fn identify(
        &self,
        client: Option<&HeaderValue>,
        site_token: Option<&HeaderValue>,
    ) -> Result<Credentials, Denied> {
        let bearer = client
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if let Some(token) = bearer.filter(|_| !self.keys.is_empty()) {
            let h = hash_key(token);
            if let Some(key) = self.keys.iter().find(|k| k.sha256 == h) {
                return Ok(key
                    .upstream
                    .clone()
                    .map_or(Credentials::Anonymous, Credentials::Site));
            }
        }
        if self.require_key {
            return Err(Denied::KeyRequired);
        }
        Ok(match (client, site_token) {
            (Some(own), _) => Credentials::Own(own.clone()),
            (None, Some(site)) => Credentials::Site(site.clone()),
            (None, None) => Credentials::Anonymous,
        })
    }

    /// Checks the repos a request could name (every reading of an ambiguous path) against
    /// the rules: refused if any reading is denied, or, with an allow list, if any reading is
    /// not allowed or no repo can be told at all.
    pub fn check_repos(&self, readings: &[Repo]) -> Result<(), Denied> {
        if let Some(r) = readings
            .iter()
            .find(|r| self.deny.iter().any(|g| g.matches(r)))
        {
            return Err(Denied::RepoRule(r.to_string()));
        }
        if self.allow.is_empty() {
            return Ok(());
        }
        if readings.is_empty() {
            return Err(Denied::UnknownRepo);
        }
        match readings
            .iter()
            .find(|r| !self.allow.iter().any(|g| g.matches(r)))
        {
            Some(r) => Err(Denied::RepoRule(r.to_string())),
            None => Ok(()),
        }
    }
}

/// A hash of the credentials a request is made with (never the credentials themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey(pub(crate) [u8; 16]);

const ANONYMOUS: Option<&HeaderValue> = None;

impl IdentityKey {
    pub fn anonymous() -> IdentityKey {
        IdentityKey::of(ANONYMOUS)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl IdentityKey {
    pub fn of(auth: Option<&HeaderValue>) -> IdentityKey {
        let mut h = sha2::Sha256::new();
        match auth {
            Some(v) => {
                h.update(b"auth:");
                h.update(v.as_bytes());
            }
            None => h.update(b"anonymous"),
        }
        IdentityKey(h.finalize()[..16].try_into().expect("16 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::grammar::RepoType;

    fn repo(kind: RepoType, id: &str) -> Repo {
        Repo {
            kind,
            id: id.into(),
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str| RepoGlob::parse(p).unwrap();
        assert!(g("org/*").matches(&repo(RepoType::Model, "org/m")));
        assert!(g("org/*").matches(&repo(RepoType::Dataset, "org/d")));
        assert!(!g("org/*").matches(&repo(RepoType::Model, "other/m")));
        assert!(g("*/private-*").matches(&repo(RepoType::Model, "acme/private-x")));
        assert!(!g("*/private-*").matches(&repo(RepoType::Model, "acme/public-x")));
        assert!(g("datasets/org/*").matches(&repo(RepoType::Dataset, "org/d")));
        assert!(!g("datasets/org/*").matches(&repo(RepoType::Model, "org/d")));
        assert!(g("**").matches(&repo(RepoType::Model, "a/b")));
        assert!(!g("*").matches(&repo(RepoType::Model, "a/b")));
        assert!(g("gpt2").matches(&repo(RepoType::Model, "gpt2")));
        assert!(RepoGlob::parse("a b").is_err());
    }

    #[test]
    fn deny_wins_and_allow_lists_are_exclusive() {
        let p = Policy {
            allow: vec![RepoGlob::parse("org/*").unwrap()],
            deny: vec![RepoGlob::parse("*/private-*").unwrap()],
            ..Policy::default()
        };
        assert!(p.check_repos(&[repo(RepoType::Model, "org/m")]).is_ok());
        assert!(p
            .check_repos(&[repo(RepoType::Model, "org/private-m")])
            .is_err());
        assert!(p.check_repos(&[repo(RepoType::Model, "other/m")]).is_err());
        // With an allow list, a path whose repo cannot be told is refused.
        assert_eq!(p.check_repos(&[]), Err(Denied::UnknownRepo));
        let open = Policy {
            deny: vec![RepoGlob::parse("acme/gated").unwrap()],
            ..Policy::default()
        };
        assert!(open.check_repos(&[]).is_ok());
        // An ambiguous path is denied if any reading is denied, and allowed only if every
        // reading is allowed.
        let both = [
            repo(RepoType::Model, "org/m"),
            repo(RepoType::Model, "org/private-m"),
        ];
        assert!(p.check_repos(&both).is_err());
        let half = [repo(RepoType::Model, "org"), repo(RepoType::Model, "org/m")];
        assert!(p.check_repos(&half).is_err());
    }

    #[test]
    fn repo_rules_hold_against_every_spelling() {
        let p = Policy {
            deny: vec![RepoGlob::parse("acme/gated").unwrap()],
            ..Policy::default()
        };
        for id in ["acme/gated", "ACME/Gated", "Acme/GATED"] {
            assert!(p.check_repos(&[repo(RepoType::Model, id)]).is_err(), "{id}");
        }
        let allow = Policy {
            allow: vec![RepoGlob::parse("Org/*").unwrap()],
            ..Policy::default()
        };
        assert!(allow.check_repos(&[repo(RepoType::Model, "org/M")]).is_ok());
    }

    #[test]
    fn site_keys_map_to_upstream_identities() {
        let site = HeaderValue::from_static("Bearer hf_site");
        let p = Policy {
            require_key: true,
            keys: vec![
                SiteKey {
                    name: "ci".into(),
                    sha256: hash_key("hfe_ci_key"),
                    upstream: Some(HeaderValue::from_static("Bearer hf_ci")),
                },
                SiteKey {
                    name: "guest".into(),
                    sha256: hash_key("hfe_guest"),
                    upstream: None,
                },
            ],
            ..Policy::default()
        };
        let ci = HeaderValue::from_static("Bearer hfe_ci_key");
        let ci_token = HeaderValue::from_static("Bearer hf_ci");
        assert_eq!(
            p.identify(Some(&ci), Some(&site)).unwrap(),
            Credentials::Site(ci_token.clone())
        );
        let guest = HeaderValue::from_static("Bearer hfe_guest");
        assert_eq!(
            p.identify(Some(&guest), Some(&site)).unwrap(),
            Credentials::Anonymous
        );
        let other = HeaderValue::from_static("Bearer hf_someone");
        assert_eq!(p.identify(Some(&other), None), Err(Denied::KeyRequired));
        assert_eq!(p.identify(None, Some(&site)), Err(Denied::KeyRequired));

        let open = Policy {
            require_key: false,
            ..p
        };
        assert_eq!(
            open.identify(Some(&other), Some(&site)).unwrap(),
            Credentials::Own(other.clone())
        );
        assert_eq!(
            open.identify(None, Some(&site)).unwrap(),
            Credentials::Site(site.clone())
        );
    }

    #[test]
    fn shared_credentials_sign_reads_only() {
        let own = HeaderValue::from_static("Bearer hf_own");
        let site = HeaderValue::from_static("Bearer hf_site");
        assert_eq!(Credentials::Own(own.clone()).for_request(false), Some(own));
        assert_eq!(
            Credentials::Site(site.clone()).for_request(true),
            Some(site.clone())
        );
        assert_eq!(Credentials::Site(site).for_request(false), None);
        assert_eq!(Credentials::Anonymous.for_request(true), None);
    }

    #[test]
    fn identities_differ() {
        let a = HeaderValue::from_static("Bearer hf_a");
        let b = HeaderValue::from_static("Bearer hf_b");
        assert_ne!(IdentityKey::of(Some(&a)), IdentityKey::of(Some(&b)));
        assert_ne!(IdentityKey::of(Some(&a)), IdentityKey::of(None));
        assert_eq!(IdentityKey::of(Some(&a)), IdentityKey::of(Some(&a)));
    }
}
