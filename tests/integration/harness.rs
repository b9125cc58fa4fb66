//! Test fixtures: the fake Hub (tests/fakehub/fakehub.py) and the real `hf-edge` binary, each on
//! ephemeral loopback ports with a temp dir of its own, and a raw HTTP/1.1 client that sends
//! paths exactly as written (no normalisation of `..`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The python that runs the fake Hub: the project's venv (which has the model package)
/// when present.
fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

pub struct FakeHub {
    child: Child,
    pub hub: String,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        FakeHub::start_with(&[])
    }

    /// Starts the fake Hub with extra command-line options (see fakehub.py --help).
    pub fn start_with(args: &[&str]) -> FakeHub {
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/fakehub/fakehub.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the fake hub's address line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("fake hub printed {line:?}: {e}"));
        FakeHub {
            child,
            hub: v["hub"].as_str().expect("hub url").to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.hub
            .trim_start_matches("http://")
            .parse()
            .expect("hub address")
    }

    /// The requests hub and CDN saw since the last clear.
    pub fn log(&self) -> Vec<Value> {
        let r = request(self.addr(), "GET", "/_fake/log", &[]);
        serde_json::from_slice::<Value>(&r.body)
            .expect("log JSON")
            .as_array()
            .expect("log array")
            .clone()
    }

    pub fn clear_log(&self) {
        request(self.addr(), "POST", "/_fake/log/clear", &[]);
    }

    /// Installs a fault (see fakehub.py `Fault`).
    pub fn fault(&self, spec: Value) {
        let body = spec.to_string();
        let r = request_with_body(self.addr(), "POST", "/_fake/faults", &[], body.as_bytes());
        assert_eq!(r.status, 200, "fault rejected: {}", r.text());
    }

    pub fn clear_faults(&self) {
        request(self.addr(), "POST", "/_fake/faults/clear", &[]);
    }

    /// Body-carrying GETs the CDN or `/api/resolve-cache` served (upstream body requests).
    pub fn body_fetches(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| {
                e["method"] == "GET"
                    && (e["server"] == "cdn"
                        || e["path"]
                            .as_str()
                            .is_some_and(|p| p.starts_with("/api/resolve-cache/")))
            })
            .count()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a server that binds it itself. Taken from below the kernel's
/// ephemeral range (32768 and up by default), from a per-process counter: a port released by
/// a port-0 bind could be handed straight to another socket, these cannot.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 400) as u16 * 25,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..2_000 {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

pub struct Edge {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
    config: PathBuf,
}

impl Edge {
    /// Starts hf-edge in front of `hub`; `upstream_extra` is appended to `upstream:`.
    pub fn start(hub: &FakeHub, upstream_extra: &str) -> Edge {
        Edge::start_at(&hub.hub, upstream_extra)
    }

    /// Starts hf-edge with `endpoint` as its upstream.
    pub fn start_at(endpoint: &str, upstream_extra: &str) -> Edge {
        Edge::start_in(
            tempfile::tempdir().expect("temp dir"),
            endpoint,
            upstream_extra,
        )
    }

    /// Starts hf-edge in front of `hub` with `top_extra` appended at the config's top level.
    pub fn start_with(hub: &FakeHub, upstream_extra: &str, top_extra: &str) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        Edge::start_full(dir, &hub.hub, upstream_extra, top_extra)
    }

    /// Starts hf-edge in `dir` (its cache is `dir/cache`, which may be prepared beforehand).
    pub fn start_in(dir: tempfile::TempDir, endpoint: &str, upstream_extra: &str) -> Edge {
        Edge::start_full(dir, endpoint, upstream_extra, "")
    }

    fn start_full(
        dir: tempfile::TempDir,
        endpoint: &str,
        upstream_extra: &str,
        top_extra: &str,
    ) -> Edge {
        let (port, mport) = (free_port(), free_port());
        let config = dir.path().join("hf-edge.yaml");
        let yaml = format!(
            "listen: \"127.0.0.1:{port}\"\nthreads: 2\nshutdown_grace: 0s\nupstream:\n  endpoint: \"{}\"\n  cdn_hosts: [\"127.0.0.2\"]\n  connect_timeout: 2s\n  read_timeout: 3s\n  metadata_timeout: 3s\n{upstream_extra}cache:\n  dir: \"{}\"\n  max_size: 10GiB\n  revision_ttl: 60s\nmetrics:\n  listen: \"127.0.0.1:{mport}\"\n",
            endpoint,
            dir.path().join("cache").display()
        );
        std::fs::write(&config, yaml + top_extra).expect("write config");
        let child = spawn_edge(&config, dir.path());
        let mut edge = Edge {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            metrics: ([127, 0, 0, 1], mport).into(),
            dir,
            config,
        };
        edge.wait_ready();
        edge
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("hf-edge exited at startup ({status}):\n{log}");
            }
            if TcpStream::connect(self.addr).is_ok()
                && try_request(self.metrics, "GET", "/healthz", &[], b"")
                    .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "hf-edge did not become ready; see {}",
            self.log_path().display()
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hf-edge.log")
    }

    /// Stops the process (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process (SIGKILL) and starts it again on the same config and cache.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_edge(&self.config, self.dir.path());
        self.wait_ready();
    }

    /// A counter or gauge without labels from a `/metrics` scrape.
    pub fn metric(&self, name: &str) -> u64 {
        let text = request(self.metrics, "GET", "/metrics", &[]).text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in scrape"))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers)
    }

    pub fn head(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "HEAD", path, headers)
    }
}

fn spawn_edge(config: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hf-edge.log"))
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_hf-edge"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("HF_TOKEN")
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("start hf-edge")
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended before `Content-Length` (the connection was cut).
    pub truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The normalised `X-Linked-Etag` (an LFS file's sha256).
    pub fn linked_etag(&self) -> String {
        self.header("x-linked-etag")
            .expect("X-Linked-Etag")
            .trim_matches('"')
            .to_string()
    }

    /// Asserts a complete body whose sha256 is its `X-Linked-Etag`.
    pub fn assert_whole_lfs_file(&self) {
        assert!(!self.truncated, "the body was cut");
        assert_eq!(
            sha256_hex(&self.body),
            self.linked_etag(),
            "body does not match its etag"
        );
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request_with_body(addr, method, path, headers, b"")
}

pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// One request on its own connection (`Connection: close`), read to the end.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    // A cut connection may end in a reset; what arrived before it is the response.
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response header"))?;
    let head_text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header not UTF-8"))?;
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let (body, truncated) = if head || status == 204 || status == 304 {
        (Vec::new(), false)
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        (rest[..rest.len().min(len)].to_vec(), rest.len() < len)
    } else {
        (rest.to_vec(), false)
    };
    Ok(Response {
        status,
        headers,
        body,
        truncated,
    })
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, true);
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else {
            return (out, true);
        };
        b = &b[eol + 2..];
        if size == 0 {
            return (out, false);
        }
        if b.len() < size + 2 {
            out.extend_from_slice(&b[..b.len().min(size)]);
            return (out, true);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
