//! The command line: config validation and exit codes.

use std::process::Command;

use crate::harness::{hf_edge, key_hash};

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = hf_edge(&["check-config".as_ref(), path.as_os_str()]);
    (out.code, out.stderr + &out.stdout)
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/hf-edge.yaml")).unwrap();
    let (code, out) = check(&shipped);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_configs_exit_2_with_a_one_line_error_naming_the_key() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/hf-edge.yaml")).unwrap();
    let cases = [
        (
            shipped.replace("max_size: \"100GiB\"", "max_size: \"lots\""),
            "cache.max_size",
        ),
        (
            shipped.replace("listen: \"127.0.0.1:9090\"", "listen: \"nine\""),
            "metrics.listen",
        ),
        (
            shipped.replace("  revision_ttl:", "  revison_ttl:"),
            "unknown field `revison_ttl`",
        ),
    ];
    for (yaml, key) in cases {
        let (code, out) = check(&yaml);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(key), "{out:?} should name {key}");
        assert_eq!(out.trim_end().lines().count(), 1, "{out:?}");
    }
}

#[test]
fn check_config_takes_a_partial_file_and_the_environment() {
    let (code, out) = check("cache: {max_size: 10GiB}\n");
    assert_eq!(code, 0, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "cache:\n  dir: ${HF_EDGE_T_DIR}/store\n  max_size: ${HF_EDGE_T_SIZE:-1GiB}\n",
    )
    .unwrap();
    let run = |vars: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hf-edge"))
            .arg("check-config")
            .arg(&path)
            .env_remove("HF_EDGE_T_DIR")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.code(), text)
    };
    let (code, out) = run(&[("HF_EDGE_T_DIR", "/srv")]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("cache.dir: ${HF_EDGE_T_DIR}: environment variable HF_EDGE_T_DIR is not set")
            && out.contains("at line 2"),
        "{out}"
    );
}

#[test]
fn hash_key_prints_the_sha256_a_config_stores() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hf-edge"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hfe_team\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        key_hash("hfe_team")
    );

    let gen = hf_edge(&["hash-key", "--generate"]);
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let text = gen.stdout;
    let key = text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key:")
        .trim();
    let hash = text
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("sha256:")
        .trim();
    assert!(key.starts_with("hfe_") && key.len() > 40, "{text}");
    assert_eq!(key_hash(key), hash);
}
