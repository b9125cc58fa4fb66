//! A real single-node Garage (the S3-compatible object store scripts/setup.sh builds) for the
//! object-store tier's tests: its own temp dir, loopback ports, a bucket and a key, started
//! in about a second. Outside CI a machine without the binary skips those tests, saying so;
//! in CI (`CI=true`) a missing binary fails them.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, ObjectStoreConfig, PATIENCE};

pub const BUCKET: &str = "hf-edge-blobs";
const REGION: &str = "garage";
/// A key pair of Garage's format (`GK` + 24 hex digits; 64 hex digits), imported as is.
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";

/// Where setup.sh installs Garage (`GARAGE_BIN` overrides), else `garage` on PATH.
fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("GARAGE_BIN") {
        return Some(PathBuf::from(bin));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let cache = std::env::var_os("HF_EDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/hf-edge"));
    let installed = cache.join("garage/bin/garage");
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("garage"))
            .find(|p| p.is_file())
    })
}

pub struct Garage {
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
}

impl Garage {
    /// A running Garage with [`BUCKET`] and a key allowed on it; `None` (after saying why)
    /// when the binary is absent outside CI.
    pub fn start() -> Option<Garage> {
        let Some(bin) = binary() else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "garage is not installed (scripts/setup.sh builds it into ~/.cache/hf-edge/garage)"
            );
            eprintln!(
                "SKIPPED: garage is not installed; run scripts/setup.sh to build it (or set GARAGE_BIN)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (s3, rpc) = (free_port(), free_port());
        let rpc_secret: String = (0..32).map(|i| format!("{:02x}", i * 7 % 256)).collect();
        let config = format!(
            "metadata_dir = \"{d}/meta\"\n\
             data_dir = \"{d}/data\"\n\
             db_engine = \"lmdb\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\
             [s3_api]\n\
             s3_region = \"{REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            d = dir.path().display(),
        );
        std::fs::write(dir.path().join("garage.toml"), config).expect("write garage.toml");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("garage.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(dir.path().join("garage.toml"))
            .arg("server")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        let garage = Garage {
            bin,
            child: Some(child),
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        garage.set_up();
        Some(garage)
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the garage command")
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A one-node layout, the key and the bucket.
    fn set_up(&self) {
        let deadline = Instant::now() + PATIENCE;
        // `status` asks the server (`node id` reads a local file, so it works before the
        // server listens).
        loop {
            if self.cli(&["status"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "garage did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let node = self.must(&["node", "id", "-q"]);
        let node = node.trim();
        let node = &node[..node.find('@').unwrap_or(node.len())];
        self.must(&["layout", "assign", "-z", "dc1", "-c", "1G", node]);
        self.must(&["layout", "apply", "--version", "1"]);
        self.must(&["key", "import", "--yes", "-n", "hf-edge", KEY_ID, SECRET]);
        self.must(&["bucket", "create", BUCKET]);
        self.must(&[
            "bucket", "allow", "--read", "--write", BUCKET, "--key", KEY_ID,
        ]);
    }

    /// `cache.object_store` for an edge: this Garage, the bucket, the key (its secret in a
    /// file, the `_file` form a site would mount).
    pub fn config(&self, prefix: &str) -> ObjectStoreConfig {
        let secret_file = self.dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
        ObjectStoreConfig {
            endpoint: self.endpoint.clone(),
            bucket: BUCKET.into(),
            region: REGION.into(),
            access_key_id: KEY_ID.into(),
            secret_access_key_file: secret_file,
            prefix: prefix.into(),
            allow_http: true,
            timeout: "2s".into(),
        }
    }

    /// A client of the bucket, for what the test checks or plants there.
    pub fn client(&self) -> ::object_store::aws::AmazonS3 {
        ::object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(BUCKET)
            .with_region(REGION)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    /// Kills the server (SIGKILL): the object store is down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
