//! Live reload (SIGHUP, `POST /admin/reload`): rules, mounts and the access log change for
//! the next request; what is in flight finishes as it started; a bad config changes nothing.

use crate::fake_hub::{FakeHub, Fault};
use crate::fixtures::{CONFIG, HELD_AFTER, LFS, SITE_TOKEN, TINY_DS};
use crate::harness::{wait_for, Edge};
use crate::http::{request, Download};

const ADMIN: &str = "reload-admin";

fn admin_reload(edge: &Edge) -> crate::http::Response {
    let bearer = format!("Bearer {ADMIN}");
    request(
        edge.metrics,
        "POST",
        "/admin/reload",
        &[("Authorization", &bearer)],
    )
}

fn wait_reloads(edge: &Edge, result: &str, n: u64) {
    wait_for(&format!("{n} reload(s) with result {result}"), || {
        (edge.reloads(result) >= n).then_some(())
    });
}

#[test]
fn a_new_rule_holds_for_the_next_request_while_a_download_in_flight_completes() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub)
        .read_timeout("60s")
        .admin_token(ADMIN)
        .start();
    hub.fault(Fault::held_after(HELD_AFTER).on_cdn().once());
    let mut in_flight = Download::start(edge.addr, LFS, &[]);
    assert_eq!(in_flight.read_header().cache(), Some("miss"));

    edge.rewrite_config(|c| c.access.repos.deny = vec![TINY_DS.into()]);
    edge.signal(libc::SIGHUP);
    wait_reloads(&edge, "ok", 1);
    let refused = edge.get(LFS, &[]);
    assert_eq!(refused.status, 403, "{}", refused.text());

    hub.release();
    let whole = in_flight.finish();
    assert_eq!((whole.status, whole.truncated), (200, false));
    whole.assert_whole_lfs_file();

    // Undone by the admin endpoint: the blob the old rule let in is served from the store.
    edge.rewrite_config(|c| c.access.repos.deny.clear());
    let r = admin_reload(&edge);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(edge.get(LFS, &[]).cache(), Some("hit"));
    assert_eq!(hub.body_fetches(), 1);
    assert_eq!(edge.reloads("ok"), 2);
    assert_eq!(edge.reloads("error"), 0);
}

#[test]
fn a_reload_adds_a_mount_and_swaps_a_token() {
    let public = FakeHub::start();
    let internal = FakeHub::start();
    let mut edge = Edge::builder(&public).admin_token(ADMIN).start();
    let before = edge.get(&format!("/internal{CONFIG}"), &[]);
    assert_ne!(before.status, 200, "no such repo on the public Hub");

    edge.rewrite_config(|c| {
        c.add_mount("/internal", &internal, Some(SITE_TOKEN));
        c.upstream.token = Some("hf_valid".into());
    });
    assert_eq!(admin_reload(&edge).status, 200);
    internal.clear_log();
    public.clear_log();
    let r = edge.get(&format!("/internal{CONFIG}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(internal
        .log()
        .iter()
        .filter(|e| e.server == "hub")
        .all(|e| e.header("authorization") == Some("Bearer hf_edge_site")));
    assert_eq!(edge.get("/api/whoami-v2", &[]).json()["name"], "valid-user");
}

#[test]
fn an_invalid_or_unreloadable_config_is_refused_and_the_old_one_serves() {
    let hub = FakeHub::start();
    let mut edge = Edge::builder(&hub).admin_token(ADMIN).start();
    let unauthorized = request(edge.metrics, "POST", "/admin/reload", &[]);
    assert_eq!(unauthorized.status, 401);

    edge.write_raw_config("listen: [not a config\n");
    let r = admin_reload(&edge);
    assert_eq!(r.status, 400);
    assert!(r.json_error().contains("hf-edge.yaml"), "{}", r.text());
    let line = edge.wait_for_log("config reload refused");
    assert!(line.contains("the running config stays"), "{line}");
    assert_eq!(edge.reloads("error"), 1);
    assert_eq!(edge.get(CONFIG, &[]).status, 200, "the old config serves");

    // A setting bound at startup: refused by name, by SIGHUP as by the endpoint.
    edge.rewrite_config(|c| c.cache.max_size = "1GiB".into());
    edge.signal(libc::SIGHUP);
    wait_reloads(&edge, "error", 2);
    edge.wait_for_log("cache: cannot change while running");
    assert_eq!(edge.reloads("ok"), 0);
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    let refusals = edge
        .log_text()
        .lines()
        .filter(|l| l.contains("config reload refused"))
        .count();
    assert_eq!(refusals, 2, "one log line per refused reload");
}

#[test]
fn the_access_log_is_reopened_after_logrotate_renames_it() {
    let hub = FakeHub::start();
    let builder = Edge::builder(&hub);
    let log = builder.dir().join("access.log");
    let rotated = builder.dir().join("access.log.1");
    let log_spec = log.display().to_string();
    let edge = builder.configure(|c| c.log.access = log_spec).start();
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
    wait_for("the first access line", || {
        (lines(&log).len() == 1).then_some(())
    });

    std::fs::rename(&log, &rotated).unwrap();
    edge.signal(libc::SIGHUP);
    wait_reloads(&edge, "ok", 1);
    assert_eq!(edge.get("/api/models/gpt2/revision/main", &[]).status, 200);
    let new = wait_for("an access line in the new file", || {
        let l = lines(&log);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("/api/models/gpt2/revision/main"), "{new:?}");
    assert_eq!(
        lines(&rotated).len(),
        1,
        "the rotated file got nothing more"
    );
}
