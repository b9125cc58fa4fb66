//! The command line: `serve`, `check-config`, `default-config`, `warm` (a running server's
//! warm jobs, see [`crate::warm`]) and `cache` (operator commands on the blob store, see
//! [`crate::store::admin`]).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use rand::RngCore;
use serde::Serialize;

use crate::config::{parse_size, Config};
use crate::store::admin::{
    self, EvictReport, Listing, PurgeReport, Stats, VerifyProgress, VerifyReport, UNKNOWN_REPO,
};

#[derive(Parser)]
#[command(
    name = "hf-edge",
    version,
    about = "An edge cache for the Hugging Face Hub"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default config unless --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Take the listening sockets from the hf-edge running on the same config (over
        /// `cache.dir/upgrade.sock`; send it SIGQUIT), which then drains: a zero-downtime
        /// upgrade.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and exit (0 = valid, 2 = invalid).
    CheckConfig { file: PathBuf },
    /// Print the embedded default config (a documented starting point).
    DefaultConfig,
    /// Print the sha256 to put in `access.keys[].sha256` for a site key. Reads the key from
    /// standard input (so it stays out of shell history), or makes a new one with --generate.
    HashKey {
        /// Generate a new random key and print it with its hash.
        #[arg(long)]
        generate: bool,
    },
    /// Check a running hf-edge: GET an http:// URL such as http://127.0.0.1:9090/readyz; exit 0
    /// on a 2xx answer within 5 s, 1 otherwise (a health check for images without curl).
    Probe { url: String },
    /// Fetch a repo revision's files into a running server's store, through its admin API
    /// (`metrics.listen`, `ops.admin_token`); exit 0 when every selected file is stored.
    Warm(WarmArgs),
    /// Inspect and manage the blob store (cache.dir); safe while `serve` runs on it.
    Cache {
        #[command(flatten)]
        args: CacheArgs,
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Args)]
struct WarmArgs {
    /// The repo, and optionally a revision (branch, tag or commit; default main).
    #[arg(value_name = "REPO[@REV]", value_parser = repo_rev)]
    target: RepoRev,
    /// model, dataset or space (or prefix the repo: datasets/org/name).
    #[arg(long = "type", value_name = "TYPE", value_parser = ["model", "dataset", "space"])]
    kind: Option<String>,
    /// Only paths matching this glob (repeatable; fnmatch, as huggingface_hub's allow_patterns).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Not paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// The mount whose Hub serves the repo: / (default) or a mounts[].prefix.
    #[arg(long, value_name = "PREFIX")]
    mount: Option<String>,
    /// The running server's config (its ops listener and admin token).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CacheArgs {
    /// Config naming the store (cache.dir); without it, the embedded default.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Objects, bytes and fill of the store, and bytes by repo.
    Stats,
    /// What is cached: repo, revision, path, size, last access.
    Ls {
        /// Only this repo (`org/name`, `datasets/org/name`, ...).
        repo: Option<String>,
    },
    /// Rehash every blob; report and remove the bad ones (exit 1 if there were any).
    Verify,
    /// Remove a repo's blobs, or one revision's, except blobs other repos or revisions name.
    Purge {
        /// The repo, and optionally a revision (as requested, or a commit).
        #[arg(value_name = "REPO[@REV]", value_parser = repo_rev)]
        target: RepoRev,
    },
    /// Remove the least recently accessed blobs until the store holds at most SIZE.
    Evict {
        /// Like 10GiB, 500MB or 1048576.
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        to: u64,
    },
}

#[derive(Clone)]
struct RepoRev {
    repo: String,
    revision: Option<String>,
}

fn repo_rev(s: &str) -> Result<RepoRev, String> {
    let (repo, revision) = match s.split_once('@') {
        Some((repo, rev)) => (repo, Some(rev)),
        None => (s, None),
    };
    if repo.is_empty() || revision == Some("") {
        return Err(format!("{s:?} is not REPO or REPO@REV"));
    }
    Ok(RepoRev {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
    })
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("{s:?} is not a size like 10GiB, 500MB or 1048576"))
}

/// Exit code for a bad config or usage, as documented in the README.
const EXIT_CONFIG: u8 = 2;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, upgrade } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::server::run(cfg, config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hf-edge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe { url } => match crate::probe::status(&url, Duration::from_secs(5)) {
            Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("hf-edge: {url}: HTTP {status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("hf-edge: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Command::Warm(args) => warm(args),
        Command::Cache { args, command } => cache(&args, command),
        Command::HashKey { generate } => hash_key(generate),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    match path {
        Some(path) => Config::load(path).map_err(|e| config_error(&e)),
        None => Ok(Config::embedded_default()),
    }
}

fn config_error(e: &crate::config::ConfigError) -> ExitCode {
    eprintln!("hf-edge: config error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `hf-edge warm`: starts a job, follows it to its end. Exit 0: every selected file is
/// stored; 1: the job failed or was cancelled, or the server could not be asked; 2: bad usage
/// or input (the server's 4xx).
fn warm(args: WarmArgs) -> ExitCode {
    use crate::warm::client::{follow, AdminClient, ProgressLine};
    let cfg = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = match AdminClient::for_config(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hf-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let body = serde_json::json!({
        "repo": args.target.repo,
        "type": args.kind,
        "revision": args.target.revision,
        "include": args.include,
        "exclude": args.exclude,
        "mount": args.mount,
    });
    let created = match client.call("POST", "/admin/warm", Some(&body)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("hf-edge: warm: {e}");
            return ExitCode::from(if e.is_bad_request() { EXIT_CONFIG } else { 1 });
        }
    };
    let Some(id) = created["id"].as_u64() else {
        eprintln!("hf-edge: warm: the server's answer names no job: {created}");
        return ExitCode::FAILURE;
    };
    let terminal = std::io::stdout().is_terminal();
    let mut bar = terminal.then(ProgressLine::new);
    let every = Duration::from_millis(if terminal { 200 } else { 1000 });
    let followed = follow(&client, id, every, |s, _| match &mut bar {
        Some(bar) => bar.draw(s, size),
        None => {
            let line = serde_json::to_string(s).expect("job status serializes");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    });
    if let Some(bar) = bar {
        bar.clear();
    }
    let status = match followed {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hf-edge: warm: job {id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if terminal {
        println!(
            "{}@{} ({}): {}: {} of {} files stored ({} already), {}, {:.1} s",
            status.repo,
            status.revision,
            status.commit.as_deref().unwrap_or("-"),
            status.state.label(),
            status.files_done,
            status.files_total,
            status.files_skipped,
            size(status.bytes_done),
            status.seconds
        );
        for f in &status.failures {
            println!("failed: {}: {}", f.path, f.error);
        }
    }
    if let Some(e) = &status.error {
        eprintln!("hf-edge: warm: job {id}: {e}");
    }
    if status.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cache(args: &CacheArgs, command: CacheCommand) -> ExitCode {
    let cfg = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = cfg.cache.dir.as_path();
    crate::durable::restrict_new_files(cfg.cache.group_access);
    let done = match command {
        CacheCommand::Stats => admin::stats(dir, cfg.cache.max_size, &cfg.cache.pin)
            .map(|r| emit(args.json, &r, render_stats)),
        CacheCommand::Ls { repo } => admin::list(dir, repo.as_deref(), &cfg.cache.pin)
            .map(|r| emit(args.json, &r, render_listing)),
        CacheCommand::Verify => {
            let mut bar = std::io::stderr().is_terminal().then(ProgressBar::new);
            let report = admin::verify(dir, |p| {
                if let Some(bar) = &mut bar {
                    bar.draw(p);
                }
            });
            if let Some(bar) = bar {
                bar.clear();
            }
            report.map(|r| {
                let clean = r.bad.is_empty() && r.unreadable.is_empty();
                emit(args.json, &r, render_verify) && clean
            })
        }
        CacheCommand::Purge { target } => {
            admin::purge(dir, &target.repo, target.revision.as_deref())
                .map(|r| emit(args.json, &r, render_purge))
        }
        CacheCommand::Evict { to } => {
            admin::evict(dir, to, &cfg.cache.pin).map(|r| emit(args.json, &r, render_evict))
        }
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hf-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the report to stdout, as JSON or text; `false` if stdout is gone (a closed pipe
/// ends the command quietly rather than with a panic).
fn emit<T: Serialize>(json: bool, report: &T, render: fn(&T) -> String) -> bool {
    let text = if json {
        serde_json::to_string_pretty(report).expect("reports serialize") + "\n"
    } else {
        render(report)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn render_stats(s: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store    {}", s.dir.display());
    let _ = writeln!(out, "objects  {}", s.objects);
    let _ = writeln!(
        out,
        "bytes    {} of {} ({:.1}%)",
        size(s.bytes),
        size(s.max_size),
        s.fill_percent
    );
    if s.pinned_objects > 0 {
        let _ = writeln!(
            out,
            "pinned   {} blobs, {} of {} (cache.pin)",
            s.pinned_objects,
            size(s.pinned_bytes),
            size(s.max_pinned)
        );
    }
    if s.repos.is_empty() {
        return out;
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .repos
        .iter()
        .map(|r| {
            vec![
                r.repo.clone(),
                r.files.to_string(),
                r.blobs.to_string(),
                size(r.bytes),
                utc(r.last_access),
            ]
        })
        .collect();
    table(
        &mut out,
        &["REPO", "FILES", "BLOBS", "SIZE", "LAST ACCESS"],
        &rows,
        &[1, 2, 3],
    );
    if s.repos.iter().map(|r| r.bytes).sum::<u64>() > s.bytes {
        out.push_str("(a blob shared by several repos counts in each)\n");
    }
    out
}

fn render_listing(l: &Listing) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = l
        .files
        .iter()
        .map(|f| {
            let unnamed = f.repo == UNKNOWN_REPO;
            vec![
                f.repo.clone(),
                if unnamed {
                    "-".into()
                } else {
                    f.revision.clone()
                },
                if unnamed {
                    f.blob.clone()
                } else {
                    f.path.clone()
                },
                size(f.size),
                utc(f.last_access),
                if f.pinned { "pinned" } else { "" }.into(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &mut out,
            &["REPO", "REVISION", "PATH", "SIZE", "LAST ACCESS", "PIN"],
            &rows,
            &[3],
        );
    }
    let n = l.files.len();
    let _ = writeln!(out, "{n} file{}", if n == 1 { "" } else { "s" });
    out
}

fn render_verify(r: &VerifyReport) -> String {
    let mut out = String::new();
    for b in &r.bad {
        let _ = writeln!(
            out,
            "bad: {}: expected {}, content is {} (removed)",
            b.path.display(),
            b.expected,
            b.actual
        );
    }
    for u in &r.unreadable {
        let _ = writeln!(out, "unreadable: {}: {}", u.path.display(), u.error);
    }
    let _ = write!(
        out,
        "checked {} blobs, {}, {} bad",
        r.checked,
        size(r.bytes),
        r.bad.len()
    );
    if !r.unreadable.is_empty() {
        let _ = write!(out, ", {} unreadable", r.unreadable.len());
    }
    let _ = writeln!(out, ", in {:.1} s", r.seconds);
    out
}

fn render_purge(r: &PurgeReport) -> String {
    let what = match &r.revision {
        Some(rev) => format!("{}@{rev}", r.repo),
        None => r.repo.clone(),
    };
    if r.files == 0 {
        return format!("nothing cached for {what}\n");
    }
    format!(
        "purged {what}: {} file{}, removed {} blob{} ({}), kept {} shared with other repos or revisions\n",
        r.files,
        if r.files == 1 { "" } else { "s" },
        r.removed.len(),
        if r.removed.len() == 1 { "" } else { "s" },
        size(r.bytes),
        r.kept_shared
    )
}

fn render_evict(r: &EvictReport) -> String {
    if r.removed.is_empty() && r.bytes_after == r.bytes_before {
        return format!(
            "nothing to evict: {} <= {}\n",
            size(r.bytes_before),
            size(r.target)
        );
    }
    format!(
        "evicted {} blob{}, least recently accessed first: {} -> {} (target {})\n",
        r.removed.len(),
        if r.removed.len() == 1 { "" } else { "s" },
        size(r.bytes_before),
        size(r.bytes_after),
        size(r.target)
    )
}

/// Appends `head` and `rows` as columns padded to their widest cell; the columns numbered in
/// `right` are right-aligned (numbers).
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `87.0 MiB`; under 1 KiB, exact bytes.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix seconds as `2026-11-22 04:10:00Z`.
fn utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || secs.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
}

/// `verify`'s progress on stderr (a terminal): one line, redrawn at most every 100 ms.
struct ProgressBar {
    drawn: Option<Instant>,
}

impl ProgressBar {
    const WIDTH: usize = 30;

    fn new() -> ProgressBar {
        ProgressBar { drawn: None }
    }

    fn draw(&mut self, p: &VerifyProgress) {
        let finished = p.blobs == p.blobs_total;
        if !finished
            && self
                .drawn
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(Instant::now());
        let frac = if p.bytes_total == 0 {
            1.0
        } else {
            (p.bytes as f64 / p.bytes_total as f64).min(1.0)
        };
        let filled = (frac * Self::WIDTH as f64) as usize;
        eprint!(
            "\rverifying [{}{}] {:>3.0}%  {} / {}  {}/{} blobs\x1b[K",
            "#".repeat(filled),
            " ".repeat(Self::WIDTH - filled),
            frac * 100.0,
            size(p.bytes.min(p.bytes_total)),
            size(p.bytes_total),
            p.blobs,
            p.blobs_total
        );
    }

    fn clear(self) {
        if self.drawn.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

fn hash_key(generate: bool) -> ExitCode {
    let key = if generate {
        let mut bytes = [0u8; 24];
        if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut bytes) {
            eprintln!("hf-edge: cannot get random bytes from the OS: {e}");
            return ExitCode::FAILURE;
        }
        format!("hfe_{}", hex::encode(bytes))
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("hf-edge: cannot read the key from stdin: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        line.trim().to_string()
    };
    if key.is_empty() {
        eprintln!("hf-edge: no key on stdin (or use --generate)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let hash = hex::encode(crate::access::hash_key(&key));
    if generate {
        println!("key:    {key}\nsha256: {hash}");
    } else {
        println!("{hash}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_87_mib() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(87 << 20), "87.0 MiB");
        assert_eq!(size(100 << 30), "100.0 GiB");
    }

    #[test]
    fn times_are_utc_iso() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_795_328_999), "2026-11-22 06:29:59Z");
    }

    #[test]
    fn purge_targets_and_sizes_parse() {
        let t = repo_rev("datasets/org/x@refs/pr/1").unwrap();
        assert_eq!(
            (t.repo.as_str(), t.revision.as_deref()),
            ("datasets/org/x", Some("refs/pr/1"))
        );
        assert!(repo_rev("org/x").unwrap().revision.is_none());
        assert!(repo_rev("org/x@").is_err() && repo_rev("@main").is_err());
        assert_eq!(size_arg("10GiB"), Ok(10 << 30));
        assert!(size_arg("lots").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        let rows = vec![
            vec!["org/a".to_string(), "1.0 KiB".to_string()],
            vec!["datasets/org/b".to_string(), "87.0 MiB".to_string()],
        ];
        table(&mut out, &["REPO", "SIZE"], &rows, &[1]);
        assert_eq!(
            out,
            "REPO                SIZE\norg/a            1.0 KiB\ndatasets/org/b  87.0 MiB\n"
        );
    }
}
