//! One JSON line per request: what was asked, what happened, how long it took. Never
//! credentials: neither tokens nor signed upstream URLs appear (only the client's path).

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::Path;

use parking_lot::Mutex;
use serde::Serialize;

/// The `log` target of access lines (printed bare, one JSON document per line).
pub const TARGET: &str = "hf_edge::access";

/// Where access lines go (`log.access`).
pub enum AccessLog {
    Off,
    /// Through the `log` crate, target `hf_edge::access` (stderr with the default logger).
    Log,
    File(Mutex<LineWriter<File>>),
}

#[derive(Serialize)]
pub struct AccessEntry<'a> {
    pub time: String,
    pub request_id: &'a str,
    /// The Hub's own request id, when its answer was passed through with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    pub client: String,
    pub method: &'a str,
    /// The mount's prefix (`/` for the top-level upstream); `path` is the path under it.
    pub mount: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    pub status: u16,
    pub bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AccessLog {
    /// `off`, `stderr`, or a file path (appended to).
    pub fn open(spec: &str) -> std::io::Result<AccessLog> {
        Ok(match spec {
            "off" => AccessLog::Off,
            "stderr" => AccessLog::Log,
            path => AccessLog::File(Mutex::new(LineWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))?,
            ))),
        })
    }

    /// Whether lines are written at all (callers skip building entries otherwise).
    pub fn enabled(&self) -> bool {
        !matches!(self, AccessLog::Off)
    }

    pub fn write(&self, entry: &AccessEntry<'_>) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        match self {
            AccessLog::Off => {}
            AccessLog::Log => log::info!(target: TARGET, "{line}"),
            AccessLog::File(f) => {
                let _ = writeln!(f.lock(), "{line}");
            }
        }
    }
}
