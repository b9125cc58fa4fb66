//! Warming: fetching a repo revision's files into the store before clients ask for them.
//!
//! A warm job lists the revision's files on the Hub, keeps those its include/exclude globs
//! select, resolves each like a client's request (the same resolver, the site's identity) and
//! fetches it through the store's own fill ([`crate::store::BlobStore::read_or_fill`]): one
//! fill per blob whoever asks, so a job and clients asking for the same file at once cost one
//! upstream fetch, verified before the blob is visible and counted in the same metrics. A file
//! already stored is skipped. Jobs come from the admin API (`hf-edge warm`) and from the
//! `warm:` config, re-resolved every `warm.interval`; `warm.max_rate` caps the bytes per
//! second all warm fills read, lifted for a fill as soon as a client reads it too.
//!
//! Jobs are kept in `cache.dir/warm-jobs.json`; a job that was running when hf-edge stopped
//! is reported as `interrupted` after the restart (not resumed: running it again skips what
//! was stored).

pub mod client;
mod jobs;
mod run;
mod schedule;
mod throttle;

use serde::{Deserialize, Serialize};

use crate::hub::grammar::{Repo, RepoType};

pub use jobs::{JobState, JobStatus, Jobs};
pub use run::{SubmitError, Warmer};
pub use schedule::Schedule;
pub use throttle::Throttle;

/// Patterns per include or exclude list at most.
const MAX_PATTERNS: usize = 64;

/// What to warm: a repo revision, and which of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarmSpec {
    /// `org/name`, `datasets/org/name`, ...
    pub repo: String,
    /// A branch, tag, `refs/pr/N` or commit.
    pub revision: String,
    /// Paths matching any (all when empty), minus those matching any of `exclude`.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The mount whose upstream serves the repo: `/`, or a `mounts[].prefix`.
    pub mount: String,
}

/// A warm request as the admin API takes it (and the `warm:` config's entries).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub repo: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The mount whose upstream serves the repo (`/` when unset), as clients reach it:
    /// `HF_ENDPOINT=http://edge:8080/internal` is mount `/internal`.
    #[serde(default)]
    pub mount: Option<String>,
}

impl RawSpec {
    /// Validates; the error names the field.
    pub fn validate(self) -> Result<WarmSpec, (&'static str, String)> {
        let mount = match self.mount.as_deref().map(|m| m.trim_end_matches('/')) {
            None | Some("") => "/".to_string(),
            Some(m) if m.starts_with('/') && m.len() <= 256 => m.to_string(),
            Some(m) => {
                return Err((
                    "mount",
                    format!("{m:?} is not a mount prefix like /internal"),
                ))
            }
        };
        let kind = match self.kind.as_deref() {
            None | Some("model") => RepoType::Model,
            Some("dataset") => RepoType::Dataset,
            Some("space") => RepoType::Space,
            Some(other) => {
                return Err(("type", format!("{other:?} is not model, dataset or space")))
            }
        };
        let parsed = Repo::parse_display(self.repo.trim())
            .filter(|r| r.id.contains('/') || r.kind == RepoType::Model)
            .ok_or_else(|| {
                (
                    "repo",
                    format!("{:?} is not a repo like org/name", self.repo),
                )
            })?;
        let repo = match (parsed.kind, kind) {
            (RepoType::Model, k) => Repo {
                kind: k,
                id: parsed.id,
            },
            (prefixed, RepoType::Model) => Repo {
                kind: prefixed,
                id: parsed.id,
            },
            (prefixed, k) if prefixed == k => parsed,
            _ => return Err(("type", "contradicts the repo's prefix".into())),
        };
        let revision = self.revision.unwrap_or_else(|| "main".into());
        if revision.is_empty() || revision.len() > 256 || revision.contains(['\0', '\\']) {
            return Err(("revision", format!("{revision:?} is not a revision")));
        }
        for (field, list) in [("include", &self.include), ("exclude", &self.exclude)] {
            if list.len() > MAX_PATTERNS {
                return Err((field, format!("more than {MAX_PATTERNS} patterns")));
            }
            if let Some(p) = list.iter().find(|p| p.is_empty() || p.len() > 256) {
                return Err((field, format!("{p:?} is not a path pattern")));
            }
        }
        Ok(WarmSpec {
            repo: repo.to_string(),
            revision,
            include: self.include,
            exclude: self.exclude,
            mount,
        })
    }
}

impl WarmSpec {
    pub fn repo(&self) -> Repo {
        Repo::parse_display(&self.repo).expect("validated")
    }

    /// Whether the job takes the file at `path`: as huggingface_hub's `allow_patterns` and
    /// `ignore_patterns` read them (fnmatch: `*` crosses `/`; a pattern ending in `/` is a
    /// directory and everything under it).
    pub fn selects(&self, path: &str) -> bool {
        let any = |list: &[String]| list.iter().any(|p| path_glob(p, path));
        (self.include.is_empty() || any(&self.include)) && !any(&self.exclude)
    }
}

fn path_glob(pattern: &str, path: &str) -> bool {
    let pattern = match pattern.strip_suffix('/') {
        Some(dir) => format!("{dir}/*"),
        None => pattern.to_string(),
    };
    fnmatch(pattern.as_bytes(), path.as_bytes())
}

/// `*` any run of bytes, `?` one byte, `[...]` a set (`[!...]` its complement).
fn fnmatch(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', rest @ ..] => (0..=s.len()).any(|i| fnmatch(rest, &s[i..])),
        [b'?', rest @ ..] => !s.is_empty() && fnmatch(rest, &s[1..]),
        [b'[', rest @ ..] => match (rest.iter().position(|&c| c == b']'), s.first()) {
            (Some(end), Some(c)) if end > 0 => {
                let (set, negate) = match &rest[..end] {
                    [b'!', set @ ..] => (set, true),
                    set => (set, false),
                };
                set.contains(c) != negate && fnmatch(&rest[end + 1..], &s[1..])
            }
            (Some(_), _) => false,
            (None, Some(b'[')) => fnmatch(rest, &s[1..]),
            (None, _) => false,
        },
        [c, rest @ ..] => s.first() == Some(c) && fnmatch(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(repo: &str) -> RawSpec {
        RawSpec {
            repo: repo.into(),
            kind: None,
            revision: None,
            include: vec![],
            exclude: vec![],
            mount: None,
        }
    }

    #[test]
    fn specs_name_a_repo_and_a_revision() {
        let s = raw("org/m").validate().unwrap();
        assert_eq!((s.repo.as_str(), s.revision.as_str()), ("org/m", "main"));
        let d = RawSpec {
            kind: Some("dataset".into()),
            ..raw("org/d")
        };
        assert_eq!(d.validate().unwrap().repo, "datasets/org/d");
        assert_eq!(
            raw("datasets/org/d").validate().unwrap().repo,
            "datasets/org/d"
        );
        let clash = RawSpec {
            kind: Some("space".into()),
            ..raw("datasets/org/d")
        };
        assert_eq!(clash.validate().unwrap_err().0, "type");
        assert_eq!(raw("").validate().unwrap_err().0, "repo");
        assert_eq!(raw("a/b/c").validate().unwrap_err().0, "repo");
        let mount = |m: &str| RawSpec {
            mount: Some(m.into()),
            ..raw("org/m")
        };
        assert_eq!(mount("/internal/").validate().unwrap().mount, "/internal");
        assert_eq!(mount("/").validate().unwrap().mount, "/");
        assert_eq!(raw("org/m").validate().unwrap().mount, "/");
        assert_eq!(mount("internal").validate().unwrap_err().0, "mount");
    }

    #[test]
    fn globs_read_like_allow_patterns() {
        let spec = |include: &[&str], exclude: &[&str]| WarmSpec {
            repo: "org/m".into(),
            revision: "main".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            mount: "/".into(),
        };
        let all = spec(&[], &[]);
        assert!(all.selects("a/b.bin"));
        let json = spec(&["*.json"], &[]);
        assert!(json.selects("config.json") && json.selects("1_Pooling/config.json"));
        assert!(!json.selects("model.safetensors"));
        let dir = spec(&["onnx/"], &["*.onnx_data"]);
        assert!(dir.selects("onnx/model.onnx") && !dir.selects("onnx/model.onnx_data"));
        assert!(!dir.selects("model.onnx"));
        let set = spec(&["model-0000[12].bin", "f?.txt"], &[]);
        assert!(set.selects("model-00001.bin") && !set.selects("model-00003.bin"));
        assert!(set.selects("f1.txt") && !set.selects("f12.txt"));
        assert!(spec(&["[!a]*"], &[]).selects("b") && !spec(&["[!a]*"], &[]).selects("a"));
    }
}
