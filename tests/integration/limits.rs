//! Client connections are bounded: a request header has `limits.header_timeout` to arrive
//! (slowloris), and at most `limits.max_connections` connections are open; each bound is
//! answered with its status and a JSON error, and counted.
//!
//! Tests wait for the server's own events (a `408`, a closed connection, a gauge), never for
//! a time to pass: a silent connection opened alongside times out when the deadline has.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fake_hub::FakeHub;
use crate::fixtures::CONFIG;
use crate::harness::{wait_for, Edge, PATIENCE};

/// A client connection; reads wait at most [`PATIENCE`].
fn connect(edge: &Edge) -> TcpStream {
    let s = TcpStream::connect(edge.addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    s
}

/// Reads until the server closes (or a read waits [`PATIENCE`]): what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    // A connection closed with unread data ends in a reset; what arrived before it counts.
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `Content-Length` body off a kept-alive connection; returns its
/// header.
fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read"), 1, "closed mid-header");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("a Content-Length"))
        })
        .expect("Content-Length");
    let mut body = vec![0; length];
    s.read_exact(&mut body).expect("the body");
    head
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn json_error(response: &str) -> serde_json::Value {
    let body = &response[response.find("\r\n\r\n").expect("a whole answer") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response:?}"))
}

/// A GET of [`CONFIG`] on a kept-alive connection.
fn send_get(s: &mut TcpStream) {
    write!(s, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send a request");
}

/// A connection that sends nothing, opened now: once it is answered `408`, a header deadline
/// that started at this moment has passed.
fn silent_connection_times_out(edge: &Edge) {
    let mut silent = connect(edge);
    let answer = read_to_close(&mut silent);
    assert_eq!(status_of(&answer), 408, "{answer:?}");
}

fn header_timeouts(edge: &Edge) -> u64 {
    edge.metric("hf_edge_client_header_timeouts_total", &[])
}

#[test]
fn a_header_trickled_past_the_deadline_is_answered_408() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).header_timeout("1s").start();
    let mut slow = connect(&edge);
    write!(slow, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n").expect("send a request line");
    // One header line every 200 ms until the server cuts the connection: each read brings
    // data, the deadline holds all the same.
    let started = Instant::now();
    let mut cut = false;
    for i in 0.. {
        if started.elapsed() > PATIENCE {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if write!(slow, "X-Slow-{i}: y\r\n").is_err() {
            cut = true;
            break;
        }
    }
    let answer = read_to_close(&mut slow);
    assert_eq!(status_of(&answer), 408, "{answer:?}");
    assert!(json_error(&answer)["error"]
        .as_str()
        .expect("an error message")
        .contains("limits.header_timeout"));
    assert!(cut, "a header trickled for {PATIENCE:?} was never cut");

    // A connection that never sends a byte is answered alike.
    silent_connection_times_out(&edge);
    assert_eq!(header_timeouts(&edge), 2);
    assert!(hub.log().is_empty(), "nothing went upstream");
}

#[test]
fn an_idle_keep_alive_connection_is_not_a_slow_header() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).header_timeout("1s").start();
    let mut s = connect(&edge);
    for round in 1..=2 {
        send_get(&mut s);
        assert_eq!(status_of(&read_response(&mut s)), 200, "request {round}");
        // Idle for longer than the header deadline (shorter than the keep-alive timeout):
        // until a silent connection opened now has timed out.
        silent_connection_times_out(&edge);
        assert_eq!(header_timeouts(&edge), round, "the silent connections only");
    }
    // Still open, and served.
    send_get(&mut s);
    assert_eq!(
        status_of(&read_response(&mut s)),
        200,
        "after the idle time"
    );
    assert_eq!(header_timeouts(&edge), 2, "the silent connections only");
}

/// Waits (bounded) until hf-edge counts `n` open client connections: it notices a closed one
/// as soon as it reads its end.
fn wait_for_connections(edge: &Edge, n: u64) {
    wait_for(&format!("{n} client connections counted"), || {
        (edge.metric("hf_edge_client_connections", &[]) == n).then_some(())
    });
}

#[test]
fn connections_over_the_cap_are_answered_503_until_one_closes() {
    let hub = FakeHub::start();
    let edge = Edge::builder(&hub).max_connections(2).start();
    wait_for_connections(&edge, 0); // the harness's readiness probe closed
                                    // Two clients hold a connection open (a request answered, kept alive).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&edge);
            send_get(&mut s);
            assert_eq!(status_of(&read_response(&mut s)), 200);
            s
        })
        .collect();
    assert_eq!(edge.metric("hf_edge_client_connections", &[]), 2);
    let mut third = connect(&edge);
    send_get(&mut third);
    let answer = read_to_close(&mut third);
    assert_eq!(status_of(&answer), 503, "{answer:?}");
    assert!(json_error(&answer)["error"]
        .as_str()
        .expect("an error message")
        .contains("limits.max_connections"));
    assert_eq!(
        edge.metric("hf_edge_client_connections_refused_total", &[]),
        1
    );
    // One leaves: the next client is served.
    drop(held.pop());
    wait_for_connections(&edge, 1);
    let r = edge.get(CONFIG, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}
