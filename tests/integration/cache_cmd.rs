//! `hf-edge cache ...`: the real binary on stores written by hand in a temp dir, and on the
//! store a running `hf-edge serve` writes.

use std::fs::{File, FileTimes, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::fake_hub::{ExpectedFile, FakeHub};
use crate::fixtures::{CONFIG, GPT2, GPT2_WEIGHTS, LFS, TINY_DS};
use crate::harness::{hf_edge, poll_until, CliOutput, Edge};
use crate::http::{git_oid_hex, sha256_hex};

/// A store (`{dir}/cache`) and a config naming it (`{dir}/hf-edge.yaml`, max_size 1 MiB).
struct Store {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Store {
    fn new() -> Store {
        let (dir, config) = Edge::builder_at("https://huggingface.co")
            .max_size("1MiB")
            .write_config();
        let cache = dir.path().join("cache");
        for sub in ["blobs/sha256", "blobs/oid", "tmp"] {
            std::fs::create_dir_all(cache.join(sub)).unwrap();
        }
        Store { dir, config }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Writes an LFS blob (sha256) or a regular file (git oid), last accessed `age` seconds
    /// ago; returns its key (`sha256/<hex>`, `oid/<hex>`).
    fn blob(&self, data: &[u8], lfs: bool, age: u64) -> String {
        let key = if lfs {
            format!("sha256/{}", sha256_hex(data))
        } else {
            format!("oid/{}", git_oid_hex(data))
        };
        let path = self.path(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let accessed = SystemTime::now() - Duration::from_secs(age);
        File::open(&path)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(accessed))
            .unwrap();
        key
    }

    fn name(&self, repo: &str, revision: &str, path: &str, key: &str) {
        let line = serde_json::json!({
            "repo": repo, "revision": revision, "commit": format!("{revision:0>40}"),
            "path": path, "blob": key, "size": 0, "time": 0,
        });
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cache().join("refs.jsonl"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    fn path(&self, key: &str) -> PathBuf {
        blob_path(&self.cache(), key)
    }

    fn run(&self, args: &[&str]) -> CliOutput {
        run_with(&self.config, args)
    }
}

/// Where the store keeps the blob `key` (`sha256/<hex>`, `oid/<hex>`).
fn blob_path(cache: &Path, key: &str) -> PathBuf {
    let (algo, hex) = key.split_once('/').unwrap();
    cache.join("blobs").join(algo).join(&hex[..2]).join(hex)
}

fn run_with(config: &Path, args: &[&str]) -> CliOutput {
    let mut all = vec!["cache"];
    all.extend(args);
    all.extend(["--config", config.to_str().unwrap()]);
    hf_edge(&all)
}

#[test]
fn stats_and_ls_print_aligned_tables_and_json() {
    let s = Store::new();
    let weights = s.blob(&[7; 300 << 10], true, 60);
    let config = s.blob(b"{\"a\": 1}", false, 30);
    let orphan = s.blob(&[9; 2048], true, 10);
    s.name("org/a", "main", "model.bin", &weights);
    s.name("org/a", "main", "config.json", &config);
    s.name("datasets/org/b", "v1", "data/model.bin", &weights);

    let out = s.run(&["stats"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("objects  3"), "{}", out.stdout);
    assert!(
        out.stdout.contains("302.0 KiB of 1.0 MiB (29.5%)"),
        "{}",
        out.stdout
    );
    let table: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("REPO"))
        .collect();
    assert_eq!(table.len(), 5, "{}", out.stdout); // header, 3 repos, the shared note
    let column = table[0].find("LAST ACCESS").unwrap();
    for row in &table[1..4] {
        assert!(row[column..].starts_with("20"), "misaligned: {row:?}");
    }
    assert!(table[1].starts_with("org/a ") && table[1].contains("300.0 KiB"));
    assert!(table[3].starts_with("(unknown)") && table[3].contains("2.0 KiB"));

    let st = s.run(&["stats", "--json"]).json();
    assert_eq!(st["objects"], 3);
    assert_eq!(st["bytes"], (300 << 10) + 8 + 2048);
    assert_eq!(st["max_size"], 1 << 20);
    assert_eq!(st["repos"][1]["repo"], "datasets/org/b");
    assert_eq!(st["repos"][1]["bytes"], 300 << 10);

    let out = s.run(&["ls", "org/a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("REPO   REVISION  PATH"),
        "{}",
        out.stdout
    );
    assert!(lines[1].contains("config.json") && lines[1].contains("8 B"));
    assert!(lines[2].contains("model.bin") && lines[2].contains("300.0 KiB"));
    assert_eq!(lines[3], "2 files");

    let ls = s.run(&["ls", "--json"]).json();
    let files = ls["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    assert_eq!(files[0]["repo"], "datasets/org/b");
    assert_eq!(files[0]["blob"], weights.as_str());
    assert_eq!(files[3]["repo"], "(unknown)");
    assert_eq!(files[3]["blob"], orphan.as_str());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(files[3]["last_access"].as_u64().unwrap() >= now - 11);
}

#[test]
fn verify_removes_a_corrupted_blob_and_exits_1() {
    let s = Store::new();
    let good = s.blob(&[1; 4096], true, 10);
    let bad = s.blob(b"print('hello')\n", false, 10);
    s.name("org/a", "main", "weights.bin", &good);
    s.name("org/a", "main", "run.py", &bad);
    let mut content = std::fs::read(s.path(&bad)).unwrap();
    content[0] ^= 1;
    std::fs::write(s.path(&bad), content).unwrap();

    let out = s.run(&["verify"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let path = s.path(&bad).display().to_string();
    assert!(
        out.stdout
            .contains(&format!("bad: {path}: expected {bad}, content is oid/")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("checked 2 blobs, 4.0 KiB, 1 bad, in "));
    assert!(
        out.stderr.is_empty(),
        "no progress bar off a terminal: {:?}",
        out.stderr
    );
    assert!(!s.path(&bad).exists() && s.path(&good).exists());
    let refs = std::fs::read_to_string(s.cache().join("refs.jsonl")).unwrap();
    assert!(!refs.contains(&bad) && refs.contains(&good), "{refs}");

    let out = s.run(&["verify", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (r["checked"].as_u64(), r["bad"].as_array().map(Vec::len)),
        (Some(1), Some(0))
    );
}

#[test]
fn purge_a_revision_then_a_repo_keeps_blobs_named_elsewhere() {
    let s = Store::new();
    let shared = s.blob(b"shared by two repos", true, 10);
    let both_revs = s.blob(b"in main and v1", true, 10);
    let v1_only = s.blob(b"only in v1", false, 10);
    s.name("org/a", "main", "shared.bin", &shared);
    s.name("org/b", "main", "shared.bin", &shared);
    s.name("org/a", "main", "f.bin", &both_revs);
    s.name("org/a", "v1", "f.bin", &both_revs);
    s.name("org/a", "v1", "g.txt", &v1_only);

    let out = s.run(&["purge", "org/a@v1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "purged org/a@v1: 2 files, removed 1 blob (10 B), kept 1 shared with other repos or revisions\n"
    );
    assert!(!s.path(&v1_only).exists() && s.path(&both_revs).exists());

    let r = s.run(&["purge", "org/a", "--json"]).json();
    assert_eq!(r["files"], 2);
    assert_eq!(r["removed"][0]["blob"], both_revs.as_str());
    assert_eq!(r["kept_shared"], 1);
    assert!(!s.path(&both_revs).exists() && s.path(&shared).exists());

    let ls = s.run(&["ls", "--json"]).json();
    let repos: Vec<&str> = ls["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["repo"].as_str().unwrap())
        .collect();
    assert_eq!(repos, ["org/b"]);
    assert_eq!(
        s.run(&["purge", "org/a"]).stdout,
        "nothing cached for org/a\n"
    );
}

#[test]
fn evict_removes_the_least_recently_accessed_first() {
    let s = Store::new();
    let oldest = s.blob(&[1; 1000], true, 3000);
    let middle = s.blob(&[2; 1000], false, 2000);
    let newest = s.blob(&[3; 1000], true, 1000);
    s.name("org/a", "main", "newest.bin", &newest);

    let out = s.run(&["evict", "--to", "1.5KiB"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "evicted 2 blobs, least recently accessed first: 2.9 KiB -> 1000 B (target 1.5 KiB)\n"
    );
    assert!(!s.path(&oldest).exists() && !s.path(&middle).exists() && s.path(&newest).exists());

    let r = s.run(&["evict", "--to", "0", "--json"]).json();
    assert_eq!(
        (r["bytes_before"].as_u64(), r["bytes_after"].as_u64()),
        (Some(1000), Some(0))
    );
    assert_eq!(r["removed"][0]["blob"], newest.as_str());
}

#[test]
fn bad_usage_or_config_exits_2_and_a_missing_store_1() {
    let s = Store::new();
    for args in [
        &["evict", "--to", "lots"][..],
        &["purge", "@main"],
        &["purge", "org/a@"],
    ] {
        let out = s.run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    let out = run_with(&s.dir.path().join("missing.yaml"), &["stats"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("missing.yaml"), "{}", out.stderr);

    std::fs::remove_dir_all(s.cache()).unwrap();
    let out = s.run(&["ls"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&s.cache().display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        !s.cache().exists(),
        "a read-only command must not create the store"
    );
}

// === beside a running serve ===

/// The store key of a file as the fake Hub holds it.
fn key_of(f: &ExpectedFile) -> String {
    if f.lfs {
        format!("sha256/{}", f.sha256)
    } else {
        format!("oid/{}", f.oid)
    }
}

/// A cached name: (repo, revision, path, blob key, size).
type Named = (String, String, String, String, u64);

/// `hf-edge cache ls --json` on the edge's store, sorted.
fn listed(edge: &Edge) -> Vec<Named> {
    let out = edge.cache_command(&["ls", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = |f: &Value, k: &str| f[k].as_str().unwrap_or_default().to_string();
    let mut files: Vec<Named> = out.json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            let size = f["size"].as_u64().expect("size");
            let names = (text(f, "repo"), text(f, "revision"), text(f, "path"));
            (names.0, names.1, names.2, text(f, "blob"), size)
        })
        .collect();
    files.sort();
    files
}

/// What `listed` shows for `path` of `repo` on main, from the fake's ground truth.
fn named(hub: &FakeHub, repo: &str, path: &str) -> Named {
    let f = hub.expected(repo, "main", path);
    let names = (repo.to_string(), "main".to_string(), path.to_string());
    (names.0, names.1, names.2, key_of(&f), f.size)
}

#[test]
fn cache_commands_see_and_change_the_store_a_running_serve_wrote() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    let mut want = Vec::new();
    for (url, repo, path) in [
        (LFS, TINY_DS, "data/train.parquet"),
        (CONFIG, GPT2, "config.json"),
        (GPT2_WEIGHTS, GPT2, "pytorch_model.bin"),
    ] {
        let r = edge.get(url, &[]);
        assert_eq!((r.status, r.cache()), (200, Some("miss")), "{url}");
        want.push(named(&hub, repo, path));
    }
    want.sort();
    // Served files are named in the store as they are served.
    let files = poll_until(|| listed(&edge), |l| l == &want);
    assert_eq!(files, want);

    let stats = edge.cache_command(&["stats", "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let st = stats.json();
    assert_eq!(st["objects"], 3);
    assert_eq!(st["bytes"], want.iter().map(|w| w.4).sum::<u64>());
    let gpt2_bytes: u64 = want.iter().filter(|w| w.0 == GPT2).map(|w| w.4).sum();
    let repos: Vec<(String, u64)> = st["repos"]
        .as_array()
        .expect("repos")
        .iter()
        .map(|r| {
            (
                r["repo"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        repos,
        [
            (TINY_DS.to_string(), 3 << 20),
            (GPT2.to_string(), gpt2_bytes)
        ],
        "most bytes first"
    );

    let verify = edge.cache_command(&["verify", "--json"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    let report = verify.json();
    assert_eq!(report["checked"], 3);
    assert_eq!(report["bad"].as_array().map(Vec::len), Some(0));

    // Purge gpt2 while serve runs: its two blobs go, the dataset's stays.
    let purge = edge.cache_command(&["purge", GPT2, "--json"]);
    assert_eq!(purge.code, 0, "{}", purge.stderr);
    let report = purge.json();
    assert_eq!(report["files"], 2);
    let mut removed: Vec<&str> = report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|b| b["blob"].as_str().unwrap())
        .collect();
    removed.sort();
    let mut gpt2_keys: Vec<&str> = want
        .iter()
        .filter(|w| w.0 == GPT2)
        .map(|w| w.3.as_str())
        .collect();
    gpt2_keys.sort();
    assert_eq!(removed, gpt2_keys);
    let cache = edge.cache_dir();
    for key in &gpt2_keys {
        assert!(!blob_path(&cache, key).exists(), "{key} purged");
    }
    assert_eq!(listed(&edge), [named(&hub, TINY_DS, "data/train.parquet")]);

    // The next requests fetch the purged files again and serve the right bytes.
    hub.clear_log();
    let config = edge.get(CONFIG, &[]);
    assert_eq!((config.status, config.cache()), (200, Some("miss")));
    assert_eq!(
        git_oid_hex(&config.body),
        hub.expected(GPT2, "main", "config.json").oid
    );
    let weights = edge.get(GPT2_WEIGHTS, &[]);
    assert_eq!((weights.status, weights.cache()), (200, Some("miss")));
    weights.assert_whole_lfs_file();
    assert_eq!(
        sha256_hex(&weights.body),
        hub.expected(GPT2, "main", "pytorch_model.bin").sha256
    );
    assert_eq!(
        hub.body_fetches(),
        2,
        "each purged blob is fetched once again"
    );
    let kept = edge.get(LFS, &[]);
    assert_eq!((kept.status, kept.cache()), (200, Some("hit")));
    assert_eq!(hub.body_fetches(), 2);
    for key in &gpt2_keys {
        assert!(blob_path(&cache, key).is_file(), "{key} stored again");
    }
    let verify = edge.cache_command(&["verify", "--json"]);
    assert_eq!(
        (verify.code, &verify.json()["checked"]),
        (0, &Value::from(3))
    );
}

#[test]
fn files_served_after_a_purge_are_named_under_their_repo() {
    let hub = FakeHub::start();
    let edge = Edge::start(&hub);
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    let config = named(&hub, GPT2, "config.json");
    let files = poll_until(|| listed(&edge), |l| l == std::slice::from_ref(&config));
    assert_eq!(files, std::slice::from_ref(&config));
    let purge = edge.cache_command(&["purge", GPT2]);
    assert_eq!(purge.code, 0, "{}", purge.stderr);

    // Served again (the purged name) and for the first time (a new name), while the same
    // serve runs: `ls`, `stats` and `purge` must find both under gpt2.
    assert_eq!(edge.get(CONFIG, &[]).cache(), Some("miss"));
    assert_eq!(edge.get(GPT2_WEIGHTS, &[]).cache(), Some("miss"));
    let mut want = vec![config, named(&hub, GPT2, "pytorch_model.bin")];
    want.sort();
    let files = poll_until(|| listed(&edge), |l| l == &want);
    assert_eq!(files, want);
}
