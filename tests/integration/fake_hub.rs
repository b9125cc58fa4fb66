//! The fake Hub and CDN (tests/fakehub/fakehub.py) as a test sees it: started on ephemeral
//! loopback ports, driven through its `/_fake/*` control endpoints, with typed faults and a
//! typed request log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{request, request_with_body};

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
    /// The Hub's origin, `http://127.0.0.1:PORT` (the CDN is on 127.0.0.2).
    pub url: String,
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
            url: v["hub"].as_str().expect("hub url").to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("hub address")
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = request_with_body(self.addr(), method, path, &[], body.as_bytes());
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()
    }

    /// The requests hub and CDN saw since the last clear, in order.
    pub fn log(&self) -> Vec<Logged> {
        let r = request(self.addr(), "GET", "/_fake/log", &[]);
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("the fake's log ({e}): {}", r.text()))
    }

    pub fn clear_log(&self) {
        self.control("POST", "/_fake/log/clear", None);
    }

    /// Installs a fault; faults apply in the order installed.
    pub fn fault(&self, fault: Fault) {
        let spec = serde_json::to_value(&fault).expect("fault JSON");
        self.control("POST", "/_fake/faults", Some(spec));
    }

    pub fn clear_faults(&self) {
        self.control("POST", "/_fake/faults/clear", None);
    }

    /// Lets the bodies held by [`Fault::held_after`] faults go on.
    pub fn release(&self) {
        self.control("POST", "/_fake/release", None);
    }

    /// From now on the CDN refuses every signed URL issued so far, as expired.
    pub fn expire_signed_urls(&self) {
        self.control("POST", "/_fake/cdn/expire", None);
    }

    /// Pushes a commit to `repo`'s main with `files` (path, text) added or replaced; returns
    /// the new commit.
    pub fn push(&self, repo: &str, files: &[(&str, &str)]) -> String {
        let files: BTreeMap<_, _> = files.iter().copied().collect();
        let r = self.control(
            "POST",
            "/_fake/push",
            Some(json!({"repo": repo, "files": files})),
        );
        r["commit"].as_str().expect("commit").to_string()
    }

    /// What the fake Hub holds for `path` in `repo` at `rev` (ground truth for bodies).
    pub fn expected(&self, repo: &str, rev: &str, path: &str) -> ExpectedFile {
        let r = request(
            self.addr(),
            "GET",
            &format!("/_fake/files?repo={repo}&rev={rev}"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let files = &r.json()["files"];
        serde_json::from_value(files[path].clone())
            .unwrap_or_else(|e| panic!("{repo}@{rev} has no {path} ({e})"))
    }

    /// Body-carrying GETs the CDN or `/api/resolve-cache` served (upstream body requests).
    pub fn body_fetches(&self) -> usize {
        self.log().iter().filter(|e| e.is_body_fetch()).count()
    }

    /// The GETs the CDN saw, in order.
    pub fn cdn_gets(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|e| e.server == "cdn" && e.method == "GET")
            .collect()
    }

    /// The status of each response the CDN gave, in order.
    pub fn cdn_statuses(&self) -> Vec<u16> {
        self.log()
            .iter()
            .filter(|e| e.server == "cdn")
            .map(|e| e.status)
            .collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request in the fake's log.
#[derive(Debug, Clone, Deserialize)]
pub struct Logged {
    /// `hub` or `cdn`.
    pub server: String,
    pub method: String,
    /// The raw path, still percent-encoded, without the query.
    pub path: String,
    /// Lowercase names.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The status answered (0 for a connection closed without an answer).
    #[serde(default)]
    pub status: u16,
    /// Body bytes sent so far (updated while the body is sent).
    #[serde(default)]
    pub body_bytes: u64,
    /// The fake is done sending the body: all of it, cut by a fault, or the client went away.
    #[serde(default)]
    pub body_ended: bool,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A GET that carries a file body: the CDN, or `/api/resolve-cache` on the Hub.
    pub fn is_body_fetch(&self) -> bool {
        self.method == "GET"
            && (self.server == "cdn" || self.path.starts_with("/api/resolve-cache/"))
    }
}

/// A file as the fake Hub holds it (`/_fake/files`).
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedFile {
    pub sha256: String,
    pub size: u64,
    pub lfs: bool,
    /// The git blob id.
    pub oid: String,
}

/// A misbehaviour of the fake, for the requests it matches (see fakehub.py `Fault`).
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    times: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expire_urls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<u64>,
}

impl Fault {
    fn mode(mode: &'static str) -> Fault {
        Fault {
            mode,
            server: None,
            method: None,
            path: None,
            times: None,
            delay: None,
            body_delay: None,
            bytes: None,
            status: None,
            headers: BTreeMap::new(),
            expire_urls: false,
            hold: None,
        }
    }

    /// Close the connection without answering.
    pub fn down() -> Fault {
        Fault::mode("down")
    }

    /// Wait `delay` before answering.
    pub fn slow(delay: Duration) -> Fault {
        Fault {
            delay: Some(delay.as_secs_f64()),
            ..Fault::mode("slow")
        }
    }

    /// Answer at once, but wait `per_chunk` before each 1 MiB body chunk.
    pub fn slow_body(per_chunk: Duration) -> Fault {
        Fault::mode("slow").body_delay(per_chunk)
    }

    /// Send the header and the first `bytes` of the body, then hold the rest until
    /// [`FakeHub::release`] (at most 60 s): a download stays in flight for as long as a test
    /// needs, however slow the machine.
    pub fn held_after(bytes: u64) -> Fault {
        Fault {
            hold: Some(bytes),
            ..Fault::mode("slow")
        }
    }

    /// Send the header and `bytes` body bytes, then close the connection.
    pub fn drop_after(bytes: u64) -> Fault {
        Fault {
            bytes: Some(bytes),
            ..Fault::mode("drop_after")
        }
    }

    /// Answer `status` with a JSON error.
    pub fn status(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::mode("status")
        }
    }

    /// Ignore `Range`: send the whole body, as an origin without range support.
    pub fn no_ranges() -> Fault {
        Fault::mode("no_ranges")
    }

    pub fn on_hub(self) -> Fault {
        Fault {
            server: Some("hub"),
            ..self
        }
    }

    pub fn on_cdn(self) -> Fault {
        Fault {
            server: Some("cdn"),
            ..self
        }
    }

    pub fn method(self, method: &'static str) -> Fault {
        Fault {
            method: Some(method),
            ..self
        }
    }

    /// Only requests whose path matches this regex.
    pub fn on_path(self, regex: &str) -> Fault {
        Fault {
            path: Some(regex.to_string()),
            ..self
        }
    }

    /// For the next `n` matching requests only (else for every one).
    pub fn times(self, n: u32) -> Fault {
        Fault {
            times: Some(n),
            ..self
        }
    }

    pub fn once(self) -> Fault {
        self.times(1)
    }

    /// Wait `per_chunk` before each 1 MiB body chunk.
    pub fn body_delay(self, per_chunk: Duration) -> Fault {
        Fault {
            body_delay: Some(per_chunk.as_secs_f64()),
            ..self
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Fault {
        self.headers.insert(name.to_string(), value.to_string());
        self
    }

    /// Once this fault's response is sent (before its connection closes), the CDN refuses
    /// every signed URL issued so far.
    pub fn then_expire_signed_urls(self) -> Fault {
        Fault {
            expire_urls: true,
            ..self
        }
    }
}
