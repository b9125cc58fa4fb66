//! A red team: generated requests (methods; Hub paths with mutations; `Host`,
//! `X-Forwarded-*`, `Range` and `Authorization` of every identity) against the running binary
//! and the fake Hub, checking after each one that
//! - no identity the Hub refuses gets a restricted repo's content (by path or by bytes),
//! - no write went upstream signed with the site token,
//! - no credentials went to a host other than the Hub's origin (the fake CDN stands on the
//!   Hub's own IP at another port, where a host-only check would send them),
//! - no 5xx that the README does not document (502, 503, 504),
//! - the process is alive.
//!
//! Bounded in count and time; `RED_TEAM_SEED` replays a run, `RED_TEAM_CASES` sizes it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::fake_hub::{FakeHub, Logged};
use crate::fixtures::SITE_TOKEN;
use crate::harness::Edge;
use crate::http::{sha256_hex, try_request, Response};

const RESTRICTED: [&str; 2] = ["fake-org/gated-model", "fake-org/private-model"];
const TIME_LIMIT: Duration = Duration::from_secs(100);

/// Who the request claims to be, and whether the Hub lets it read restricted repos.
const IDENTITIES: [(Option<&str>, bool); 5] = [
    // No token: the site token, an approved account, reads for it.
    (None, true),
    (Some("Bearer hf_approved"), true),
    (Some("Bearer hf_valid"), false),
    (Some("Bearer hf_bogus"), false),
    (Some("Basic aGY6aGY="), false),
];

const PATHS: &[&str] = &[
    "/fake-org/gated-model/resolve/main/model.safetensors",
    "/fake-org/gated-model/resolve/main/config.json",
    "/fake-org/private-model/resolve/main/model.safetensors",
    "/fake-org/private-model/resolve/v1/config.json",
    "/gpt2/resolve/main/config.json",
    "/gpt2/resolve/main/pytorch_model.bin",
    "/fake-org/many-files/resolve/main/README.md",
    "/datasets/fake-org/tiny-ds/resolve/main/data/train.parquet",
    "/api/models/fake-org/gated-model/tree/main",
    "/api/models/fake-org/private-model/tree/main?recursive=true",
    "/api/models/fake-org/private-model/revision/main",
    "/api/models/fake-org/gated-model/paths-info/main",
    "/api/models/gpt2/tree/main",
    "/api/models/fake-org/private-model/commit/main",
    "/api/repos/delete",
    "/api/whoami-v2",
    "/fake-org/private-model.git/info/lfs/objects/batch",
    "/fake-org/gated-model.git/git-receive-pack",
    "/fake-org/gated-model.git/git-upload-pack",
    "/fake-org/private-model/info/refs?service=git-receive-pack",
];

const METHODS: [&str; 6] = ["GET", "GET", "HEAD", "POST", "PUT", "DELETE"];

struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    identity: usize,
}

impl Case {
    /// Whether this request only reads, by the Hub's meaning (not hf-edge's code).
    fn reads(&self) -> bool {
        let path = self.path.split('?').next().unwrap_or("");
        match self.method {
            "GET" | "HEAD" => !self.path.contains("service=git-receive-pack"),
            "POST" => {
                path.contains("/paths-info/")
                    || path.ends_with("/git-upload-pack")
                    || (path.ends_with("/info/lfs/objects/batch")
                        && self.body.starts_with(br#"{"operation":"download""#))
            }
            _ => false,
        }
    }
}

/// Case, percent-encoding and traversal mutations of a Hub path.
fn mutate(rng: &mut StdRng, path: &str) -> String {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), format!("?{q}")),
        None => (path.to_string(), String::new()),
    };
    let p = match rng.gen_range(0..10) {
        0 => p.to_uppercase(),
        1 => p
            .chars()
            .map(|c| {
                if rng.gen_bool(0.3) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
        2 => p.replacen("fake-org", "fake%2Dorg", 1),
        3 => p.replacen("/resolve/", "/resolve/../resolve/", 1),
        4 => p.replacen('/', "//", 1),
        5 => p.replacen("/main/", "/%6dain/", 1),
        6 => format!("{p}%00"),
        7 => p.replacen("gated-model", "gated-model.git", 1),
        _ => p,
    };
    format!("{p}{q}")
}

fn generate(rng: &mut StdRng) -> Case {
    let method = *METHODS.choose(rng).expect("methods");
    let base = *PATHS.choose(rng).expect("paths");
    let path = mutate(rng, base);
    let identity = rng.gen_range(0..IDENTITIES.len());
    let mut headers = Vec::new();
    if let Some(auth) = IDENTITIES[identity].0 {
        headers.push(("Authorization".to_string(), auth.to_string()));
    }
    let ranges = [
        "bytes=0-9",
        "bytes=-5",
        "bytes=10-",
        "bytes=5-2",
        "bytes=0-0,2-3",
        "x",
    ];
    if rng.gen_bool(0.3) {
        headers.push((
            "Range".into(),
            ranges.choose(rng).expect("ranges").to_string(),
        ));
    }
    if rng.gen_bool(0.2) {
        headers.push(("X-Forwarded-Proto".into(), "https".into()));
        headers.push(("X-Forwarded-For".into(), "10.9.8.7".into()));
        headers.push(("X-Forwarded-Host".into(), "evil.test".into()));
    }
    let body = match method {
        "POST" if path.contains("lfs/objects/batch") => {
            let op = if rng.gen_bool(0.5) {
                "download"
            } else {
                "upload"
            };
            format!(r#"{{"operation":"{op}","transfers":["basic"],"objects":[]}}"#).into_bytes()
        }
        "POST" | "PUT" => b"{}".to_vec(),
        _ => Vec::new(),
    };
    Case {
        method,
        path,
        headers,
        body,
        identity,
    }
}

/// Every file of the restricted repos, by sha256.
fn restricted_hashes(hub: &FakeHub) -> HashSet<String> {
    let mut out = HashSet::new();
    for repo in RESTRICTED {
        for rev in ["main", "v1"] {
            let path = format!("/_fake/files?repo={repo}&rev={rev}");
            let r = crate::http::request(hub.addr(), "GET", &path, &[]);
            if let Some(files) = r.json()["files"].as_object() {
                out.extend(
                    files
                        .values()
                        .filter_map(|f| f["sha256"].as_str().map(str::to_string)),
                );
            }
        }
    }
    out
}

fn check(
    case: &Case,
    r: &Response,
    log: &[Logged],
    restricted: &HashSet<String>,
) -> Result<(), String> {
    let (_, approved) = IDENTITIES[case.identity];
    let folded = case.path.to_ascii_lowercase().replace("%2d", "-");
    // A private repo is refused whole; a gated one shows its metadata to anyone, and its
    // files only to approved users.
    let names_restricted = folded.contains("fake-org/private-model")
        || (folded.contains("fake-org/gated-model") && folded.contains("/resolve/"));
    let ok = (200..300).contains(&r.status);
    if !approved && ok && !r.body.is_empty() {
        if names_restricted && !folded.contains("/info/lfs/") {
            return Err(format!("a refused identity got {} bytes", r.body.len()));
        }
        if restricted.contains(&sha256_hex(&r.body)) {
            return Err("a refused identity got a restricted file's bytes".into());
        }
    }
    if r.status >= 500 && ![502, 503, 504].contains(&r.status) {
        return Err(format!("undocumented {}: {}", r.status, r.text()));
    }
    let site = format!("Bearer {SITE_TOKEN}");
    for e in log {
        let auth = e.header("authorization");
        if e.server != "hub" && auth.is_some() {
            return Err(format!("credentials sent to {}: {e:?}", e.server));
        }
        if auth == Some(site.as_str()) && !case.reads() {
            return Err(format!("a write signed with the site token: {e:?}"));
        }
    }
    Ok(())
}

#[test]
fn generated_hostile_requests_break_no_rule() {
    let seed = std::env::var("RED_TEAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let cases: usize = std::env::var("RED_TEAM_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("red team: seed {seed}, {cases} cases (RED_TEAM_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let hub = FakeHub::start_with(&["--cdn-host", "127.0.0.1"]);
    let restricted = restricted_hashes(&hub);
    assert!(restricted.len() >= 4, "ground truth: {restricted:?}");
    let edge = Edge::builder(&hub).token(SITE_TOKEN).start();
    let started = Instant::now();
    let mut done = 0;
    while done < cases && started.elapsed() < TIME_LIMIT {
        let case = generate(&mut rng);
        hub.clear_log();
        let headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = try_request(edge.addr, case.method, &case.path, &headers, &case.body)
            .unwrap_or_else(|e| panic!("seed {seed}: {} {}: {e}", case.method, case.path));
        if let Err(broken) = check(&case, &r, &hub.log(), &restricted) {
            panic!(
                "seed {seed}, case {done}: {} {} as {:?} ({:?}): {broken}",
                case.method, case.path, IDENTITIES[case.identity].0, case.headers
            );
        }
        let alive = try_request(edge.metrics, "GET", "/healthz", &[], b"");
        assert!(
            alive.is_ok_and(|h| h.status == 200),
            "seed {seed}: hf-edge died"
        );
        done += 1;
    }
    assert!(
        done >= cases.min(50),
        "only {done} cases ran in {TIME_LIMIT:?}"
    );
}
