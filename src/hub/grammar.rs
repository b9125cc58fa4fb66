//! The Hub's URL grammar: a raw request path → a typed [`Route`]. Pure, no I/O.
//!
//! The raw path is split on `/` *before* percent-decoding, because a revision such as
//! `refs%2Fpr%2F1` is one segment whose decoded form contains slashes, while a `/` in a
//! filename separates real folders. The raw path is what goes upstream, unchanged.

use std::fmt;

use percent_encoding::percent_decode_str;

/// The kind of repository, from the path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoType {
    Model,
    Dataset,
    Space,
    Kernel,
}

impl RepoType {
    /// The path prefix used by `/resolve` URLs (`""` for models).
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
            RepoType::Space => "spaces/",
            RepoType::Kernel => "kernels/",
        }
    }

    /// The plural used by `/api/{type}s/...`.
    pub fn api_plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
            RepoType::Kernel => "kernels",
        }
    }
}

/// A repository: its type and its id (`gpt2` or `org/name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    pub kind: RepoType,
    pub id: String,
}

impl Repo {
    /// Parses the `Display` form (`org/name`, `datasets/org/name`, ...).
    pub fn parse_display(s: &str) -> Option<Repo> {
        let (kind, id) = [
            ("datasets/", RepoType::Dataset),
            ("spaces/", RepoType::Space),
            ("kernels/", RepoType::Kernel),
        ]
        .iter()
        .find_map(|(p, k)| s.strip_prefix(p).map(|id| (*k, id)))
        .unwrap_or((RepoType::Model, s));
        let valid =
            !id.is_empty() && id.split('/').count() <= 2 && id.split('/').all(valid_repo_part);
        valid.then(|| Repo {
            kind,
            id: id.to_string(),
        })
    }
}

impl Repo {
    fn of(kind: RepoType, parts: &[String]) -> Repo {
        Repo {
            kind,
            id: parts.join("/"),
        }
    }

    /// The id as the Hub compares it: case-insensitively.
    pub fn folded(&self) -> Repo {
        Repo {
            kind: self.kind,
            id: self.id.to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.url_prefix(), self.id)
    }
}

/// A file download: `/{prefix}{repo}/resolve/{revision}/{path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    pub repo: Repo,
    /// Decoded revision: a branch, a tag, `refs/pr/N` or a 40-hex commit.
    pub revision: String,
    /// Decoded file path inside the repo, `/`-separated.
    pub path: String,
}

impl ResolveRequest {
    /// A 40-hex revision is a commit and never moves.
    pub fn is_commit_pinned(&self) -> bool {
        is_commit(&self.revision)
    }

    /// The file's base name, for `Content-Disposition`.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// API routes whose JSON bodies hf-edge rewrites (to drop `xetHash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/api/{type}s/{repo}/tree/...`
    Tree,
    /// `/api/{type}s/{repo}/paths-info/...`
    PathsInfo,
    /// `/api/{type}s/{repo}/revision/{rev}`
    Revision,
    /// `/api/{type}s/{repo}`: repo info at the default branch (`model_info`, which
    /// transformers asks first to pin a commit).
    Info,
    Other,
}

/// A git-lfs object as hf-edge's rewritten batch answers name it:
/// `/{prefix}{repo}.git/info/lfs/objects/{oid}`, scoped to the repo it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsObjectRequest {
    pub repo: Repo,
    /// The LFS oid: the sha256 of the content, 64 lower-case hex digits.
    pub oid: String,
}

/// What a request is, as far as hf-edge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A file download, answered by hf-edge (metadata + cached blob).
    Resolve(ResolveRequest),
    /// `/api/...`: passed through, uncached.
    Api(ApiKind),
    /// `GET /{repo}.git/info/lfs/objects/{oid}`: an LFS object, answered by hf-edge from
    /// what the Hub's batch answer to the same client named.
    LfsObject(LfsObjectRequest),
    /// Git LFS batch and other `.git/` endpoints: passed through.
    Lfs,
    /// Anything else the Hub serves: passed through.
    Other,
}

impl Route {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Resolve(_) => "resolve",
            Route::Api(_) => "api",
            Route::LfsObject(_) => "lfs_object",
            Route::Lfs => "lfs",
            Route::Other => "other",
        }
    }
}

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("request path contains a NUL, backslash or control character")]
    ForbiddenCharacter,
    #[error("request path has an invalid percent-encoding or is not UTF-8")]
    BadEncoding,
    #[error("request path contains a '.' or '..' segment")]
    Traversal,
    #[error("invalid repository id {0:?}")]
    BadRepoId(String),
    #[error(
        "resolve URL needs a revision and a file path: /{{repo}}/resolve/{{revision}}/{{path}}"
    )]
    MissingFile,
    #[error("invalid revision {0:?}")]
    BadRevision(String),
    #[error("invalid file path: {0}")]
    BadFilePath(&'static str),
}

/// Longest repo name the Hub allows.
const MAX_REPO_NAME: usize = 96;

/// Classifies a raw request path (no query string).
pub fn parse(raw_path: &str) -> Result<Route, PathError> {
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    check_raw(raw_path)?;
    let segs: Vec<&str> = raw_path[1..].split('/').collect();
    // Traversal is refused on every route, not just resolve: a `..` forwarded upstream could
    // reach a different resource than the one the path grammar saw.
    for s in &segs {
        let d = decode(s)?;
        let dots = d.split('/').any(|p| p == "." || p == "..");
        if dots || d.contains('\\') || d.contains('\0') {
            return Err(PathError::Traversal);
        }
    }
    if segs[0] == "api" {
        return Ok(Route::Api(api_kind(&segs)));
    }
    if let Some((repo, ["objects", oid])) = lfs_split(&segs) {
        if is_sha256(oid) {
            let oid = oid.to_string();
            return Ok(Route::LfsObject(LfsObjectRequest { repo, oid }));
        }
    }
    if segs.iter().any(|s| s.ends_with(".git")) {
        return Ok(Route::Lfs);
    }
    match resolve_split(&segs) {
        Some((kind, repo_segs, rest)) => parse_resolve(kind, repo_segs, rest).map(Route::Resolve),
        None => Ok(Route::Other),
    }
}

/// Finds `{prefix}{repo}/resolve/...`: the repo id has one or two segments. Prefers two, so
/// `org/resolve/resolve/main/x` is repo `org/resolve`.
fn resolve_split<'a>(segs: &'a [&'a str]) -> Option<(RepoType, &'a [&'a str], &'a [&'a str])> {
    let (kind, rest) = match segs[0] {
        "datasets" => (RepoType::Dataset, &segs[1..]),
        "spaces" => (RepoType::Space, &segs[1..]),
        "kernels" => (RepoType::Kernel, &segs[1..]),
        _ => (RepoType::Model, segs),
    };
    for n in [2, 1] {
        if rest.len() > n && rest[n] == "resolve" {
            return Some((kind, &rest[..n], &rest[n + 1..]));
        }
    }
    None
}

/// Splits `{prefix}{repo}.git/info/lfs/{rest}` (git-lfs's endpoint for a remote) into the
/// repo and `rest`.
fn lfs_split<'a>(segs: &'a [&'a str]) -> Option<(Repo, &'a [&'a str])> {
    let (kind, rest) = match segs[0] {
        "datasets" => (RepoType::Dataset, &segs[1..]),
        "spaces" => (RepoType::Space, &segs[1..]),
        "kernels" => (RepoType::Kernel, &segs[1..]),
        _ => (RepoType::Model, segs),
    };
    let n = rest.iter().take(2).position(|s| s.ends_with(".git"))? + 1;
    let mut parts: Vec<&str> = rest[..n].to_vec();
    parts[n - 1] = parts[n - 1].strip_suffix(".git")?;
    if !parts.iter().all(|p| valid_repo_part(p)) || rest.get(n..n + 2)? != ["info", "lfs"] {
        return None;
    }
    let repo = Repo {
        kind,
        id: parts.join("/"),
    };
    Some((repo, &rest[n + 2..]))
}

/// The repo of a git-lfs batch request path (`/{prefix}{repo}.git/info/lfs/objects/batch`).
pub fn lfs_batch_repo(raw_path: &str) -> Option<Repo> {
    let segs: Vec<&str> = raw_path.strip_prefix('/')?.split('/').collect();
    match lfs_split(&segs)? {
        (repo, ["objects", "batch"]) => Some(repo),
        _ => None,
    }
}

/// True for an LFS oid: 64 lower-case hex digits (git-lfs writes them so).
pub fn is_sha256(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_resolve(
    kind: RepoType,
    repo_segs: &[&str],
    rest: &[&str],
) -> Result<ResolveRequest, PathError> {
    let mut id_parts = Vec::with_capacity(2);
    for s in repo_segs {
        let d = decode(s)?;
        if !valid_repo_part(&d) {
            return Err(PathError::BadRepoId(repo_segs.join("/")));
        }
        id_parts.push(d);
    }
    let [rev, file @ ..] = rest else {
        return Err(PathError::MissingFile);
    };
    if file.is_empty() || file.iter().all(|s| s.is_empty()) {
        return Err(PathError::MissingFile);
    }
    let revision = decode(rev)?;
    if revision.is_empty()
        || revision.len() > 256
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(PathError::BadRevision(revision));
    }
    let mut path_parts = Vec::with_capacity(file.len());
    for s in file {
        if s.is_empty() {
            return Err(PathError::BadFilePath("empty segment"));
        }
        let d = decode(s)?;
        // An encoded slash inside one segment would name a different file upstream than the
        // one we key on.
        if d.contains('/') {
            return Err(PathError::BadFilePath("encoded '/' inside a segment"));
        }
        path_parts.push(d);
    }
    Ok(ResolveRequest {
        repo: Repo {
            kind,
            id: id_parts.join("/"),
        },
        revision,
        path: path_parts.join("/"),
    })
}

fn api_kind(segs: &[&str]) -> ApiKind {
    // /api/{type}s/{ns}/{name}/{tree|paths-info}/... or /api/{type}s/{name}/{...}/...
    let [_, plural, rest @ ..] = segs else {
        return ApiKind::Other;
    };
    if !matches!(*plural, "models" | "datasets" | "spaces" | "kernels") {
        return ApiKind::Other;
    }
    for n in [2, 1] {
        match rest.get(n) {
            Some(&"tree") => return ApiKind::Tree,
            Some(&"paths-info") => return ApiKind::PathsInfo,
            Some(&"revision") => return ApiKind::Revision,
            _ => {}
        }
    }
    let names_a_repo = rest
        .iter()
        .all(|s| valid_repo_part(s) && !is_api_subresource(s));
    if (1..=2).contains(&rest.len()) && names_a_repo {
        return ApiKind::Info;
    }
    ApiKind::Other
}

/// A segment that names a sub-resource of `/api/{type}s/{repo}/...`, never a repo id part.
pub fn is_api_subresource(seg: &str) -> bool {
    API_SUBRESOURCES.contains(&seg)
}

fn check_raw(raw: &str) -> Result<(), PathError> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err(PathError::ForbiddenCharacter);
    }
    Ok(())
}

fn decode(seg: &str) -> Result<String, PathError> {
    // `%` must introduce two hex digits; percent_decode_str would pass a bare `%` through.
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(PathError::BadEncoding);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let d = percent_decode_str(seg)
        .decode_utf8()
        .map_err(|_| PathError::BadEncoding)?;
    if d.chars().any(|c| c.is_control()) {
        return Err(PathError::ForbiddenCharacter);
    }
    Ok(d.into_owned())
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REPO_NAME
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Sub-resources of `/api/{type}s/{repo}/...`: a segment after the first that names one of
/// these ends a one-segment repo id.
const API_SUBRESOURCES: &[&str] = &[
    "revision",
    "tree",
    "paths-info",
    "refs",
    "commits",
    "commit",
    "compare",
    "preupload",
    "xet-read-token",
    "xet-write-token",
    "treesize",
    "discussions",
    "settings",
    "branch",
    "tag",
    "super-squash",
    "resolve",
    "parquet",
    "croissant",
    "lfs-files",
    "notebook",
    "jwt",
];

/// Sub-resources of `/{repo}/...` (web and git paths).
const PATH_SUBRESOURCES: &[&str] = &[
    "resolve",
    "raw",
    "blob",
    "tree",
    "commit",
    "commits",
    "discussions",
    "info",
    "git-upload-pack",
    "git-receive-pack",
    "HEAD",
    "objects",
];

/// Every repo a path could be naming, for access rules on routes hf-edge passes through. A
/// one- or two-segment id is decided by the known sub-resource that follows it; where none
/// decides it (an unknown segment follows), both readings are returned, so that a rule
/// cannot be sidestepped by the reading the Hub picks. Repo ids are compared case-folded.
pub fn candidate_repos(raw_path: &str) -> Vec<Repo> {
    let segs: Vec<String> = raw_path
        .trim_start_matches('/')
        .split('/')
        .map(|s| decode(s).unwrap_or_else(|_| s.to_string()))
        .collect();
    let kind_of = |plural: &str| match plural {
        "models" => Some(RepoType::Model),
        "datasets" => Some(RepoType::Dataset),
        "spaces" => Some(RepoType::Space),
        "kernels" => Some(RepoType::Kernel),
        _ => None,
    };
    if segs.first().map(String::as_str) == Some("api") {
        let rest = &segs[1..];
        if rest.first().map(String::as_str) == Some("resolve-cache") {
            // /api/resolve-cache/{type}s/{id...}/{commit}/{path}
            let kind = rest.get(1).and_then(|p| kind_of(p));
            let at = rest.iter().skip(2).position(|s| is_commit(s));
            return match (kind, at) {
                (Some(kind), Some(at)) if (1..=2).contains(&at) => {
                    vec![Repo::of(kind, &rest[2..2 + at])]
                }
                _ => Vec::new(),
            };
        }
        return match rest.first().and_then(|p| kind_of(p)) {
            Some(kind) => readings(kind, &rest[1..], API_SUBRESOURCES, false),
            None => Vec::new(),
        };
    }
    let (kind, rest) = match segs.first().and_then(|p| kind_of(p)) {
        Some(k) if k != RepoType::Model => (k, &segs[1..]),
        _ => (RepoType::Model, &segs[..]),
    };
    readings(kind, rest, PATH_SUBRESOURCES, true)
}

/// The repo ids `ids` can start with: one segment when a known sub-resource follows it, two
/// when one follows them (or the second ends in `.git`), and both when nothing known decides.
fn readings(kind: RepoType, ids: &[String], subresources: &[&str], git: bool) -> Vec<Repo> {
    let known = |i: usize| {
        ids.get(i)
            .is_some_and(|s| subresources.contains(&s.as_str()))
    };
    let strip = |s: &str| -> String {
        match s.strip_suffix(".git") {
            Some(stripped) if git => stripped.to_string(),
            _ => s.to_string(),
        }
    };
    let (a, b) = match ids {
        [a, ..] if a.is_empty() => return Vec::new(),
        [a] => return vec![Repo { kind, id: strip(a) }],
        [a, ..] if git && a.ends_with(".git") => return vec![Repo { kind, id: strip(a) }],
        [a, b, ..] => (a, b),
        [] => return Vec::new(),
    };
    let one = Repo {
        kind,
        id: a.clone(),
    };
    let two = Repo {
        kind,
        id: format!("{a}/{}", strip(b)),
    };
    let two_certain = git && b.ends_with(".git");
    let mut out = Vec::new();
    if !two_certain && (known(1) || (ids.len() > 2 && !known(2))) {
        out.push(one);
    }
    if b.is_empty() {
        return out;
    }
    if two_certain || !known(1) || ids.len() == 2 || known(2) {
        out.push(two);
    }
    out
}

/// Paths that name no repo and are safe to pass whatever the repo rules: who the caller is,
/// and the Hub's home page.
pub fn names_no_repo(raw_path: &str) -> bool {
    matches!(raw_path, "/" | "/api/whoami-v2" | "/api/whoami")
}

/// True for a full 40-hex git commit id.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A revision as the Hub reads it: a commit in any case is that commit, written in lower case
/// (branch and tag names are case-sensitive). What hf-edge records is keyed by this, so a
/// client cannot make one commit many entries by changing its case.
pub fn canonical_revision(rev: &str) -> String {
    if is_commit(rev) {
        rev.to_ascii_lowercase()
    } else {
        rev.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    fn resolve(kind: RepoType, id: &str, rev: &str, path: &str) -> Route {
        Route::Resolve(ResolveRequest {
            repo: Repo {
                kind,
                id: id.into(),
            },
            revision: rev.into(),
            path: path.into(),
        })
    }

    #[test]
    fn real_looking_urls() {
        use RepoType::*;
        let commit_url = format!("/gpt2/resolve/{C}/config.json");
        let oid = "ab".repeat(32);
        let lfs_object = |kind, id: &str| {
            Route::LfsObject(LfsObjectRequest {
                repo: Repo {
                    kind,
                    id: id.into(),
                },
                oid: oid.clone(),
            })
        };
        let lfs_object_url = format!("/org/m.git/info/lfs/objects/{oid}");
        let dataset_lfs_object_url = format!("/datasets/org/d.git/info/lfs/objects/{oid}");
        let one_part_lfs_object_url = format!("/gpt2.git/info/lfs/objects/{oid}");
        let upper_case_oid_url = format!("/org/m.git/info/lfs/objects/{}", oid.to_uppercase());
        let table: Vec<(&str, Route)> = vec![
            ("/gpt2/resolve/main/config.json", resolve(Model, "gpt2", "main", "config.json")),
            (
                "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors",
                resolve(Model, "sentence-transformers/all-MiniLM-L6-v2", "main", "model.safetensors"),
            ),
            (
                "/sentence-transformers/all-MiniLM-L6-v2/resolve/v1.0/1_Pooling/config.json",
                resolve(Model, "sentence-transformers/all-MiniLM-L6-v2", "v1.0", "1_Pooling/config.json"),
            ),
            (&commit_url, resolve(Model, "gpt2", C, "config.json")),
            (
                "/org/m/resolve/refs%2Fpr%2F1/onnx/model.onnx",
                resolve(Model, "org/m", "refs/pr/1", "onnx/model.onnx"),
            ),
            (
                "/datasets/HuggingFaceFW/fineweb/resolve/main/data/CC-MAIN-2024-10/000_00000.parquet",
                resolve(Dataset, "HuggingFaceFW/fineweb", "main", "data/CC-MAIN-2024-10/000_00000.parquet"),
            ),
            ("/datasets/squad/resolve/main/README.md", resolve(Dataset, "squad", "main", "README.md")),
            ("/spaces/org/app/resolve/main/app.py", resolve(Space, "org/app", "main", "app.py")),
            ("/kernels/kernels-community/activation/resolve/main/build.toml",
                resolve(Kernel, "kernels-community/activation", "main", "build.toml")),
            (
                "/gpt2/resolve/main/onnx/d%C3%A9%20j%C3%A0%2Bv1.json",
                resolve(Model, "gpt2", "main", "onnx/dé jà+v1.json"),
            ),
            ("/org/resolve/resolve/main/x", resolve(Model, "org/resolve", "main", "x")),
            ("/api/models/gpt2", Route::Api(ApiKind::Info)),
            ("/api/datasets/org/d", Route::Api(ApiKind::Info)),
            ("/api/models/org/refs", Route::Api(ApiKind::Other)),
            ("/api/models", Route::Api(ApiKind::Other)),
            ("/api/models/org/m/tree/main", Route::Api(ApiKind::Tree)),
            ("/api/datasets/squad/tree/main/data%2Ftrain", Route::Api(ApiKind::Tree)),
            ("/api/models/org/m/paths-info/main", Route::Api(ApiKind::PathsInfo)),
            ("/api/models/org/m/revision/main", Route::Api(ApiKind::Revision)),
            ("/api/whoami-v2", Route::Api(ApiKind::Other)),
            ("/org/m.git/info/lfs/objects/batch", Route::Lfs),
            ("/datasets/org/d.git/info/lfs/objects/batch", Route::Lfs),
            (&lfs_object_url, lfs_object(Model, "org/m")),
            (&dataset_lfs_object_url, lfs_object(Dataset, "org/d")),
            (&one_part_lfs_object_url, lfs_object(Model, "gpt2")),
            // Not an oid: passed through as any other `.git/` path.
            ("/org/m.git/info/lfs/objects/ABC", Route::Lfs),
            (&upper_case_oid_url, Route::Lfs),
            ("/", Route::Other),
            ("/org/m/blob/main/README.md", Route::Other),
        ];
        for (url, want) in table {
            assert_eq!(parse(url), Ok(want), "{url}");
        }
    }

    #[test]
    fn refused_paths() {
        let table: &[(&str, PathError)] = &[
            ("gpt2/resolve/main/x", PathError::NotAbsolute),
            ("/gpt2/resolve/main/../../etc/passwd", PathError::Traversal),
            ("/gpt2/resolve/main/%2e%2e/x", PathError::Traversal),
            ("/gpt2/resolve/main/%2E%2E/x", PathError::Traversal),
            ("/gpt2/resolve/main/a/./b", PathError::Traversal),
            ("/api/models/../../admin", PathError::Traversal),
            ("/gpt2/resolve/main/a%5C..%5Cb", PathError::Traversal),
            ("/gpt2/resolve/main/a\\b", PathError::ForbiddenCharacter),
            ("/gpt2/resolve/main/a%00b", PathError::ForbiddenCharacter),
            ("/gpt2/resolve/main/a%zzb", PathError::BadEncoding),
            ("/gpt2/resolve/main/a%", PathError::BadEncoding),
            ("/gpt2/resolve/main/%ff", PathError::BadEncoding),
            (
                "/gpt2/resolve/main/a%2Fb",
                PathError::BadFilePath("encoded '/' inside a segment"),
            ),
            (
                "/gpt2/resolve/main/a//b",
                PathError::BadFilePath("empty segment"),
            ),
            ("/gpt2/resolve/main", PathError::MissingFile),
            ("/gpt2/resolve/main/", PathError::MissingFile),
            ("/gpt2/resolve/%2e%2e%2Fx/y", PathError::Traversal),
            ("/gpt2/resolve/main/..%2F..%2Fetc", PathError::Traversal),
            ("/gpt2/resolve/refs%2F..%2Fx/y", PathError::Traversal),
            (
                "/gpt2/resolve/a%2F%2Fb/y",
                PathError::BadRevision("a//b".into()),
            ),
            (
                "/bad%20name/resolve/main/x",
                PathError::BadRepoId("bad%20name".into()),
            ),
        ];
        for (url, want) in table {
            assert_eq!(parse(url).as_ref(), Err(want), "{url}");
        }
    }

    #[test]
    fn repos_named_by_passthrough_paths() {
        use RepoType::*;
        let r = |kind, id: &str| Repo {
            kind,
            id: id.into(),
        };
        let table: Vec<(&str, Vec<Repo>)> =
            vec![
            ("/api/models/gpt2/revision/main", vec![r(Model, "gpt2")]),
            ("/api/models/org/m/tree/main", vec![r(Model, "org/m")]),
            ("/api/models/Org/M/tree/main", vec![r(Model, "Org/M")]),
            ("/api/datasets/org/d", vec![r(Dataset, "org/d")]),
            // Nothing known decides: both readings.
            ("/api/models/org/tree", vec![r(Model, "org"), r(Model, "org/tree")]),
            ("/api/models/org/m/new-thing/x", vec![r(Model, "org"), r(Model, "org/m")]),
            ("/api/repos/create", vec![]),
            ("/api/models", vec![]),
            ("/org/m/info/refs", vec![r(Model, "org/m")]),
            ("/gpt2.git/info/refs", vec![r(Model, "gpt2")]),
            ("/org/m/git-upload-pack", vec![r(Model, "org/m")]),
            (
                "/api/resolve-cache/models/org/m/1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b/x.json",
                vec![r(Model, "org/m")],
            ),
            ("/org/m.git/info/lfs/objects/batch", vec![r(Model, "org/m")]),
            ("/datasets/org/d/raw/main/x", vec![r(Dataset, "org/d")]),
            ("/api/whoami-v2", vec![]),
        ];
        for (path, want) in table {
            assert_eq!(candidate_repos(path), want, "{path}");
        }
    }

    #[test]
    fn lfs_batch_paths() {
        let repo = |p: &str| lfs_batch_repo(p).map(|r| r.to_string());
        assert_eq!(
            repo("/org/m.git/info/lfs/objects/batch").as_deref(),
            Some("org/m")
        );
        assert_eq!(
            repo("/gpt2.git/info/lfs/objects/batch").as_deref(),
            Some("gpt2")
        );
        assert_eq!(
            repo("/datasets/org/d.git/info/lfs/objects/batch").as_deref(),
            Some("datasets/org/d")
        );
        assert_eq!(repo("/org/m.git/info/lfs/locks"), None);
        assert_eq!(repo("/org/m/info/lfs/objects/batch"), None);
        assert_eq!(repo("/a/b/c.git/info/lfs/objects/batch"), None);
        assert_eq!(repo("/org/bad%20name.git/info/lfs/objects/batch"), None);
    }

    #[test]
    fn commit_detection() {
        assert!(is_commit(C));
        assert!(!is_commit("main"));
        assert!(!is_commit(&C[..39]));
        assert!(!is_commit(&format!("{}g", &C[..39])));
    }
}

#[cfg(test)]
mod properties {
    //! Properties of the grammar over generated input (bounded; runs with `cargo test`).

    use super::*;
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    /// What `urllib.parse.quote(s)` leaves alone (`safe="/"`), as huggingface_hub encodes
    /// file paths; revisions use `safe=""`.
    const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    const QUOTE_ALL: &AsciiSet = &QUOTE.add(b'/');

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}".prop_filter("not dots", |s| s != "." && s != "..")
    }

    fn file_segment() -> impl Strategy<Value = String> {
        // Any printable text, unicode included, that is not a dot segment.
        "[^/\\\\\\p{Cc}]{1,16}".prop_filter("not dots", |s| s != "." && s != "..")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_and_never_yields_a_traversal(raw in "(/|%2[eEfF]|%5[cC]|\\.|\\.\\.|[a-z]|resolve|%00|%|\\\\){0,24}") {
            if let Ok(Route::Resolve(r)) = parse(&raw) {
                for part in r.path.split('/').chain(r.revision.split('/')) {
                    prop_assert!(!part.is_empty() && part != "." && part != "..");
                    prop_assert!(!part.contains('\\') && !part.contains('\0'));
                }
            }
        }

        #[test]
        fn client_encoded_urls_round_trip(
            org in name(), repo in name(), rev in "[a-zA-Z0-9._/-]{1,30}",
            files in prop::collection::vec(file_segment(), 1..4),
        ) {
            prop_assume!(rev.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
            prop_assume!(org != "resolve" && repo != "resolve" && org != "api");
            let path = files.join("/");
            let url = format!(
                "/{org}/{repo}/resolve/{}/{}",
                utf8_percent_encode(&rev, QUOTE_ALL),
                utf8_percent_encode(&path, QUOTE)
            );
            let want = ResolveRequest {
                repo: Repo { kind: RepoType::Model, id: format!("{org}/{repo}") },
                revision: rev.clone(),
                path: path.clone(),
            };
            prop_assert_eq!(parse(&url), Ok(Route::Resolve(want)));
        }
    }
}
