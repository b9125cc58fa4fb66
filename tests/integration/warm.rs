//! Warm jobs (`hf-edge warm`, `/admin/warm`, `/admin/jobs`), repos kept warm (`warm:`), the
//! warming bandwidth cap and pinned blobs (`cache.pin`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{GPT2, HELD_AFTER, LFS, LFS_SIZE, TINY_DS};
use crate::harness::{
    hf_edge, poll_until, wait_for, CliOutput, Edge, SmallDisk, WarmConfig, WarmRepoConfig,
};
use crate::http::{sha256_hex, Download};

const ADMIN: &str = "warm-admin-token";

fn edge(hub: &FakeHub) -> Edge {
    Edge::builder(hub).admin_token(ADMIN).start()
}

/// The last JSON line `hf-edge warm` printed: the job's final status.
fn last_status(out: &CliOutput) -> Value {
    let line = out
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("hf-edge warm printed nothing; stderr: {}", out.stderr));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

/// Starts a job through the admin API; its id.
fn start_job(edge: &Edge, body: &str) -> u64 {
    let r = edge.admin("POST", "/admin/warm", body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_u64().expect("a job id")
}

fn job(edge: &Edge, id: u64) -> Value {
    let r = edge.admin("GET", &format!("/admin/jobs/{id}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_job_ended(edge: &Edge, id: u64) -> Value {
    let done = |j: &Value| !matches!(j["state"].as_str(), Some("listing" | "fetching"));
    let j = poll_until(|| job(edge, id), done);
    assert!(done(&j), "job {id} did not end: {j}");
    j
}

/// Files in the store's temp dir (fills in flight or left behind).
fn temp_files(edge: &Edge) -> usize {
    std::fs::read_dir(edge.cache_dir().join("tmp")).map_or(0, |d| d.count())
}

/// Whether the fake's CDN has been asked for the dataset's LFS file.
fn lfs_asked(hub: &FakeHub) -> bool {
    hub.cdn_gets().iter().any(|g| g.body_bytes > 0)
}

#[test]
fn warm_stores_every_selected_file_once_and_a_second_run_skips_them() {
    let hub = FakeHub::start();
    let edge = edge(&hub);
    let out = edge.warm_command(&[GPT2, "--exclude", "*.md"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let first = last_status(&out);
    assert_eq!(first["state"], "done", "{first}");
    let total = first["files_total"].as_u64().unwrap();
    assert!(total >= 6, "{first}");
    assert_eq!(first["files_done"], total);
    assert_eq!(first["files_skipped"], 0);
    assert_eq!(
        hub.body_fetches() as u64,
        total,
        "one upstream body per file"
    );
    let warmed = |result| edge.metric("hf_edge_warm_files_total", &[("result", result)]);
    assert_eq!((warmed("fetched"), warmed("stored")), (total, 0));
    let listed = edge.cache_command(&["ls", GPT2, "--json"]).json();
    let paths: Vec<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"pytorch_model.bin") && !paths.contains(&"README.md"),
        "{paths:?}"
    );

    hub.clear_log();
    let again = edge.warm_command(&[GPT2, "--exclude", "*.md"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let second = last_status(&again);
    assert_eq!(
        (
            second["files_skipped"].as_u64(),
            second["files_done"].as_u64()
        ),
        (Some(total), Some(total))
    );
    assert_eq!(hub.body_fetches(), 0, "a second warm fetches nothing");
    assert_eq!((warmed("fetched"), warmed("stored")), (total, total));
    let weights = edge.get("/gpt2/resolve/main/pytorch_model.bin", &[]);
    assert_eq!(weights.cache(), Some("hit"));
    assert_eq!(hub.body_fetches(), 0);
}

#[test]
fn a_warm_job_and_eight_clients_cost_one_upstream_fetch_per_blob() {
    let hub = FakeHub::start();
    let edge = edge(&hub);
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn());
    let id = start_job(&edge, &format!(r#"{{"repo": "{TINY_DS}"}}"#));
    wait_for("the warm job's CDN request", || {
        lfs_asked(&hub).then_some(())
    });
    let mut clients: Vec<Download> = (0..8)
        .map(|_| Download::start(edge.addr, LFS, &[]))
        .collect();
    // Every client is reading the job's fill before the CDN may go on.
    for c in &mut clients {
        assert_eq!(c.read_header().cache(), Some("coalesced"));
    }
    hub.release();
    let want = hub.expected(TINY_DS, "main", "data/train.parquet").sha256;
    for c in clients {
        let r = c.finish();
        assert_eq!(r.status, 200);
        assert_eq!(r.cache(), Some("coalesced"));
        assert_eq!(sha256_hex(&r.body), want);
    }
    let j = wait_job_ended(&edge, id);
    assert_eq!(j["state"], "done", "{j}");
    let mut fetched: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|e| e.is_body_fetch())
        .map(|e| e.path)
        .collect();
    let n = fetched.len();
    fetched.sort();
    fetched.dedup();
    assert_eq!(fetched.len(), n, "one upstream fetch per blob: {fetched:?}");
    assert_eq!(n as u64, j["files_total"].as_u64().unwrap());
}

#[test]
fn a_cancelled_job_stops_and_leaves_nothing_partial() {
    let hub = FakeHub::start();
    let edge = edge(&hub);
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn());
    let id = start_job(
        &edge,
        &format!(r#"{{"repo": "{TINY_DS}", "include": ["*.parquet"]}}"#),
    );
    wait_for("the warm job's CDN request", || {
        lfs_asked(&hub).then_some(())
    });
    let r = edge.admin("DELETE", &format!("/admin/jobs/{id}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "cancelled");
    assert_eq!(job(&edge, id)["state"], "cancelled");
    assert_eq!(
        edge.admin("DELETE", &format!("/admin/jobs/{id}"), "")
            .status,
        409
    );
    // Without a reader, the fill is cancelled by the orphan policy: its temp file goes.
    wait_for("the orphaned fill's cancellation", || {
        (edge.metric("hf_edge_store_orphaned_fills_cancelled_total", &[]) == 1).then_some(())
    });
    assert_eq!(temp_files(&edge), 0);
    let listed = edge.cache_command(&["ls", "--json"]).json();
    assert_eq!(listed["files"].as_array().unwrap().len(), 0, "{listed}");
    assert_eq!(edge.admin("GET", "/admin/jobs/999", "").status, 404);
}

#[test]
fn a_restart_during_a_job_reports_it_interrupted() {
    let hub = FakeHub::start();
    let mut edge = edge(&hub);
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn());
    let id = start_job(&edge, &format!(r#"{{"repo": "{TINY_DS}"}}"#));
    wait_for("the warm job's CDN request", || {
        lfs_asked(&hub).then_some(())
    });
    edge.restart();
    let j = job(&edge, id);
    assert_eq!(j["state"], "interrupted", "{j}");
    assert!(j["error"].as_str().unwrap().contains("run it again"), "{j}");
    assert_eq!(temp_files(&edge), 0, "nothing partial after the restart");
    hub.clear_faults();
    let out = edge.warm_command(&[TINY_DS]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        last_status(&out)["id"].as_u64().unwrap() > id,
        "ids are not reused"
    );
}

#[test]
fn a_push_to_main_is_warmed_within_one_interval() {
    let hub = FakeHub::start();
    let interval = Duration::from_secs(2);
    let edge = Edge::builder(&hub)
        .admin_token(ADMIN)
        .configure(|c| {
            c.warm = Some(WarmConfig {
                interval: Some("2s".into()),
                max_rate: None,
                repos: vec![WarmRepoConfig {
                    repo: GPT2.into(),
                    revision: Some("main".into()),
                    include: vec!["*.txt".into()],
                }],
            })
        })
        .start();
    let jobs = || {
        edge.admin("GET", "/admin/jobs", "").json()["jobs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let first = poll_until(jobs, |j| j.iter().any(|j| j["state"] == "done"));
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["source"], "config");
    let pushed = hub.push(GPT2, &[("notes/new.txt", "pushed by a test\n")]);
    let at = Instant::now();
    let seen = poll_until(jobs, |j| j.len() == 2);
    let waited = at.elapsed();
    assert_eq!(seen.len(), 2, "no job for the push: {seen:?}");
    assert!(
        waited <= interval + Duration::from_secs(1),
        "took {waited:?}"
    );
    let j = wait_job_ended(&edge, seen[1]["id"].as_u64().unwrap());
    assert_eq!(
        (j["state"].as_str(), j["commit"].as_str()),
        (Some("done"), Some(pushed.as_str()))
    );
    let r = edge.get("/gpt2/resolve/main/notes/new.txt", &[]);
    assert_eq!((r.status, r.cache()), (200, Some("hit")));
}

#[test]
fn pinned_blobs_survive_eviction_pressure_that_removes_unpinned_ones() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub)
        .admin_token(ADMIN)
        .max_size("150KiB")
        .configure(|c| c.cache.pin = vec!["gpt2@main".into()])
        .start();
    let pinned = "/gpt2/resolve/main/pytorch_model.bin"; // 64 KiB, fetched first (least recent)
    let older = "/gpt2/resolve/v1.0/pytorch_model.bin"; // 48 KiB
    assert_eq!(edge.get(pinned, &[]).status, 200);
    assert_eq!(edge.get(older, &[]).status, 200);
    assert_eq!(
        edge.get(
            "/spaces/fake-org/tiny-space/resolve/main/assets/demo.bin",
            &[]
        )
        .status,
        200
    );
    // 48 + 40 + 64 KiB of unpinned blobs no longer fit in 150 KiB.
    assert_eq!(
        edge.get("/gpt2/resolve/refs%2Fpr%2F1/pytorch_model.bin", &[])
            .status,
        200
    );
    wait_for("an eviction", || {
        (edge.metric("hf_edge_store_evictions_total", &[]) >= 1).then_some(())
    });
    assert_eq!(edge.metric("hf_edge_store_pinned_bytes", &[]), 64 * 1024);
    assert_eq!(
        edge.get(pinned, &[]).cache(),
        Some("hit"),
        "the pinned blob stays"
    );
    assert_eq!(
        edge.get(older, &[]).cache(),
        Some("miss"),
        "the unpinned one went"
    );
    // At boot the pins come back from refs.jsonl.
    edge.restart();
    wait_for("the pins reloaded", || {
        (edge.metric("hf_edge_store_pinned_bytes", &[]) == 64 * 1024).then_some(())
    });
    assert_eq!(edge.get(pinned, &[]).cache(), Some("hit"));
    let stats = edge.cache_command(&["stats", "--json"]).json();
    assert_eq!(stats["pinned_bytes"], 64 * 1024, "{stats}");
    let ls = edge.cache_command(&["ls", GPT2, "--json"]).json();
    let pinned_rows: Vec<&Value> = ls["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pinned"] == true)
        .collect();
    assert_eq!(pinned_rows.len(), 1, "{ls}");
    assert_eq!(pinned_rows[0]["revision"], "main");
}

#[test]
fn the_rate_cap_holds() {
    let hub = FakeHub::start();
    let rate = 2_000_000.0;
    let edge = Edge::builder(&hub)
        .admin_token(ADMIN)
        .configure(|c| {
            c.warm = Some(WarmConfig {
                max_rate: Some("2MB".into()),
                ..WarmConfig::default()
            })
        })
        .start();
    let out = edge.warm_command(&[TINY_DS, "--include", "*.parquet"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // The job's own time, from its creation to its end (the command's start-up and polling
    // are not warming).
    let seconds = last_status(&out)["seconds"].as_f64().unwrap();
    let measured = LFS_SIZE as f64 / seconds;
    println!("warm of {LFS_SIZE} bytes at a 2 MB/s cap: {seconds:.2} s, {measured:.0} B/s");
    assert!(
        (rate * 0.8..=rate * 1.2).contains(&measured),
        "{measured:.0} B/s is not within 20 % of {rate} B/s"
    );
}

#[test]
fn bad_input_is_a_clear_error_on_the_command_and_in_the_job() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .admin_token(ADMIN)
        .deny_repos(&["fake-org/private-*"])
        .start();
    let denied = edge.warm_command(&["fake-org/private-model"]);
    assert_eq!(denied.code, 2);
    assert!(
        denied.stderr.contains("refused by access.repos"),
        "{}",
        denied.stderr
    );
    let missing = edge.warm_command(&["fake-org/no-such-repo"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no such repo or revision"),
        "{}",
        missing.stderr
    );
    assert_eq!(last_status(&missing)["state"], "failed");
    let bad_rev = edge.warm_command(&["gpt2@no-such-branch"]);
    assert_eq!(bad_rev.code, 1);
    assert!(
        bad_rev.stderr.contains("no such repo or revision"),
        "{}",
        bad_rev.stderr
    );
    let nothing = edge.warm_command(&[GPT2, "--include", "*.nothing"]);
    assert_eq!(nothing.code, 1);
    assert!(
        nothing.stderr.contains("no file of gpt2@main matches"),
        "{}",
        nothing.stderr
    );
    let mount = edge.warm_command(&[GPT2, "--mount", "/mirror"]);
    assert_eq!(mount.code, 2);
    assert!(mount.stderr.contains("no such mount"), "{}", mount.stderr);
    let r = edge.admin("POST", "/admin/warm", "{\"repo\": 1}");
    assert_eq!(r.status, 400);
    assert!(r.json_error().contains("not a warm request"));

    // An upstream that cuts the body, then fails every resume: the file fails, and nothing
    // partial is kept.
    hub.fault(Fault::drop_after(HELD_AFTER).on_cdn().once());
    hub.fault(Fault::status(500).on_cdn());
    let cut = edge.warm_command(&[TINY_DS, "--include", "*.parquet"]);
    assert_eq!(cut.code, 1, "{}\n{}", cut.stdout, cut.stderr);
    let status = last_status(&cut);
    assert_eq!(
        (status["state"].as_str(), status["files_failed"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert!(
        status["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cut"),
        "{status}"
    );
    assert_eq!(temp_files(&edge), 0);
    assert!(!edge
        .cache_command(&["ls", "--json"])
        .stdout
        .contains("train.parquet"));
}

#[test]
fn the_command_needs_the_admin_token_and_a_running_server() {
    let hub = FakeHub::start();
    let (_dir, no_token) = Edge::builder(&hub).write_config();
    let out = hf_edge(&["warm", GPT2, "--config", no_token.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("ops.admin_token"), "{}", out.stderr);
    let (_dir, not_running) = Edge::builder(&hub).admin_token(ADMIN).write_config();
    let out = hf_edge(&["warm", GPT2, "--config", not_running.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach hf-edge's admin API"),
        "{}",
        out.stderr
    );
    let bad_type = hf_edge(&[
        "warm",
        GPT2,
        "--type",
        "kernel",
        "--config",
        not_running.to_str().unwrap(),
    ]);
    assert_eq!(bad_type.code, 2, "{}", bad_type.stderr);
}

#[test]
fn a_full_disk_fails_the_file_and_keeps_nothing() {
    let hub = FakeHub::start();
    let builder = Edge::builder(&hub).admin_token(ADMIN);
    let disk = SmallDisk::mount(&builder.dir().join("cache"), "1m");
    let mut edge = builder.start();
    let out = edge.warm_command(&[TINY_DS, "--include", "*.parquet"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let status = last_status(&out);
    let error = status["failures"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("the store cannot take the file"), "{status}");
    assert_eq!(temp_files(&edge), 0);
    edge.stop();
    drop(disk);
}

#[test]
fn a_warm_through_a_mount_fetches_from_that_mounts_hub() {
    let public = FakeHub::start();
    let internal = FakeHub::start();
    let edge = Edge::builder(&public)
        .admin_token(ADMIN)
        .mount("/internal", &internal, None)
        .start();
    internal.push(GPT2, &[("only-internal.txt", "internal side")]);
    public.clear_log();
    internal.clear_log();
    let out = edge.warm_command(&[GPT2, "--mount", "/internal", "--include", "only-*"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let status = last_status(&out);
    assert_eq!(
        (status["mount"].as_str(), status["files_total"].as_u64()),
        (Some("/internal"), Some(1))
    );
    assert_eq!(internal.body_fetches(), 1);
    assert_eq!(public.log().len(), 0, "the public Hub is not asked");
    let r = edge.get("/internal/gpt2/resolve/main/only-internal.txt", &[]);
    assert_eq!((r.status, r.cache()), (200, Some("hit")));
    assert_eq!(r.text(), "internal side");
}

#[test]
fn the_rate_cap_is_lifted_for_a_file_a_client_reads_too() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub)
        .admin_token(ADMIN)
        .configure(|c| {
            c.warm = Some(WarmConfig {
                max_rate: Some("200KB".into()),
                ..WarmConfig::default()
            })
        })
        .start();
    let id = start_job(
        &edge,
        &format!(r#"{{"repo": "{TINY_DS}", "include": ["*.parquet"]}}"#),
    );
    wait_for("the warm job's CDN request", || {
        lfs_asked(&hub).then_some(())
    });
    // At the cap the file takes 15 s; a client joining the fill gets it at the link's pace.
    let asked = Instant::now();
    let r = edge.get(LFS, &[]);
    let took = asked.elapsed();
    assert_eq!((r.status, r.cache()), (200, Some("coalesced")));
    assert_eq!(r.body.len(), LFS_SIZE);
    assert!(took < Duration::from_secs(5), "the client waited {took:?}");
    assert_eq!(wait_job_ended(&edge, id)["state"], "done");
    assert_eq!(hub.body_fetches(), 1);
}
