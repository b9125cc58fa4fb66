//! `hf-edge warm`'s side: the admin API of a running server (`metrics.listen`, bearer
//! `ops.admin_token`, both from its config file), over plain HTTP/1.1 on a connection per
//! call, and how a job's progress is shown: a progress bar on a terminal, JSON lines
//! otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::jobs::JobStatus;
use crate::config::Config;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An admin answer read at most (a job list is bounded well below).
const MAX_ANSWER: u64 = 16 << 20;

/// Why a call to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach hf-edge's admin API at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("hf-edge's admin API at {addr} answered {status}: {message}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("hf-edge's admin API at {addr} sent an unreadable answer: {0}", addr = .1)]
    Garbled(String, SocketAddr),
}

impl CallError {
    /// A 4xx: the request was wrong (bad repo, pattern, token), not the server.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, CallError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
    }
}

pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl AdminClient {
    /// The client for the server `cfg` configures: its ops listener (an unspecified address
    /// is reached on loopback) and its admin token.
    pub fn for_config(cfg: &Config) -> Result<AdminClient, String> {
        let token = cfg.ops.admin_token.as_ref().ok_or(
            "ops.admin_token (or ops.admin_token_file) is not set in the config: warm asks the server through its admin API",
        )?;
        let mut addr = cfg.metrics.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        Ok(AdminClient {
            addr,
            token: token.expose().to_string(),
        })
    }

    /// Sends one request; a 2xx answer's JSON body, else the error it carries.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let io = |source| CallError::Io {
            addr: self.addr,
            source,
        };
        let mut conn = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(io)?;
        conn.set_read_timeout(Some(READ_TIMEOUT)).map_err(io)?;
        conn.set_write_timeout(Some(READ_TIMEOUT)).map_err(io)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        conn.write_all(head.as_bytes())
            .and_then(|()| conn.write_all(body.as_bytes()))
            .map_err(io)?;
        let mut raw = Vec::new();
        conn.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
        let garbled = |why: &str| CallError::Garbled(why.to_string(), self.addr);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| garbled("no end of header"))?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| garbled("header not UTF-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| garbled("no status"))?;
        let body = &raw[split + 4..];
        let json: Value = serde_json::from_slice(body).map_err(|e| garbled(&e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let message = json["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        Err(CallError::Refused {
            addr: self.addr,
            status,
            message,
        })
    }
}

/// A job's progress on stderr (a terminal): one line, redrawn.
pub struct ProgressLine {
    drawn: bool,
}

impl ProgressLine {
    pub fn new() -> ProgressLine {
        ProgressLine { drawn: false }
    }

    pub fn draw(&mut self, s: &JobStatus, size: fn(u64) -> String) {
        self.drawn = true;
        eprint!("\r{}\x1b[K", progress_line(s, size));
    }

    pub fn clear(self) {
        if self.drawn {
            eprint!("\r\x1b[K");
        }
    }
}

impl Default for ProgressLine {
    fn default() -> Self {
        ProgressLine::new()
    }
}

/// One line of progress: files, bytes, rate and ETA, with a bar of bytes done.
fn progress_line(s: &JobStatus, size: fn(u64) -> String) -> String {
    const WIDTH: usize = 30;
    let frac = if s.bytes_total == 0 {
        0.0
    } else {
        (s.bytes_done as f64 / s.bytes_total as f64).min(1.0)
    };
    let filled = (frac * WIDTH as f64) as usize;
    let rate = if s.seconds > 0.0 {
        s.bytes_done as f64 / s.seconds
    } else {
        0.0
    };
    let eta = match s.bytes_total.saturating_sub(s.bytes_done) {
        0 => "-".to_string(),
        _ if rate < 1.0 => "?".to_string(),
        left => format!("{:.0}s", left as f64 / rate),
    };
    format!(
        "warming {} [{}{}] {}/{} files  {} / {}  {}/s  ETA {eta}",
        s.repo,
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        s.files_done,
        s.files_total,
        size(s.bytes_done),
        size(s.bytes_total),
        size(rate as u64),
    )
}

/// Polls job `id` until it ends, calling `show` with each new status (at most every
/// `every`, and always with the last); returns the last.
pub fn follow(
    client: &AdminClient,
    id: u64,
    every: Duration,
    mut show: impl FnMut(&JobStatus, bool),
) -> Result<JobStatus, CallError> {
    let mut shown: Option<Instant> = None;
    loop {
        let v = client.call("GET", &format!("/admin/jobs/{id}"), None)?;
        let s: JobStatus = serde_json::from_value(v)
            .map_err(|e| CallError::Garbled(e.to_string(), client.addr))?;
        let last = s.state.is_final();
        if last || shown.is_none_or(|t| t.elapsed() >= every) {
            show(&s, last);
            shown = Some(Instant::now());
        }
        if last {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm::JobState;

    #[test]
    fn the_progress_line_shows_files_bytes_rate_and_eta() {
        let s: JobStatus = serde_json::from_value(serde_json::json!({
            "id": 1, "repo": "org/m", "revision": "main", "include": [], "exclude": [],
            "mount": "/", "source": "api", "state": "fetching", "error": null, "commit": null,
            "files_total": 4, "files_done": 1, "files_skipped": 0, "files_failed": 0,
            "bytes_total": 3000, "bytes_done": 1000, "created": 0, "finished": null,
            "seconds": 2.0, "failures": []
        }))
        .unwrap();
        assert_eq!(s.state, JobState::Fetching);
        let line = progress_line(&s, |n| format!("{n} B"));
        assert_eq!(
            line,
            format!(
                "warming org/m [{}{}] 1/4 files  1000 B / 3000 B  500 B/s  ETA 4s",
                "#".repeat(10),
                " ".repeat(20)
            )
        );
        let starting = JobStatus {
            seconds: 0.0,
            bytes_done: 0,
            ..s
        };
        assert!(progress_line(&starting, |n| n.to_string()).ends_with("ETA ?"));
    }
}
