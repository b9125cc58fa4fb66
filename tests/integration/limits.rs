//! Client connections are bounded: a request header has `limits.header_timeout` to arrive
//! (slowloris), and at most `limits.max_connections` connections are open; each bound is
//! answered with its status and a JSON error, and counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Edge, FakeHub};

const CONFIG: &str = "/gpt2/resolve/main/config.json";

fn connect(edge: &Edge) -> TcpStream {
    let s = TcpStream::connect(edge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes (or 10 s pass): what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `Content-Length` body off a kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-header");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    let mut body = vec![0; length];
    s.read_exact(&mut body).unwrap();
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

#[test]
fn a_header_trickled_past_the_deadline_is_answered_408() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(&hub, "", "limits:\n  header_timeout: 1s\n");
    let mut slow = connect(&edge);
    write!(slow, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n").unwrap();
    // One header line every 200 ms, for at most 5 s: each read brings data, the deadline
    // holds all the same.
    let started = Instant::now();
    let mut cut = false;
    for i in 0..25 {
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
        .unwrap()
        .contains("limits.header_timeout"));
    assert!(cut || started.elapsed() < Duration::from_secs(5));

    // A connection that never sends a byte is answered alike.
    let mut silent = connect(&edge);
    assert_eq!(status_of(&read_to_close(&mut silent)), 408);
    assert_eq!(edge.metric("hf_edge_client_header_timeouts_total"), 2);
    assert!(hub.log().is_empty(), "nothing went upstream");
}

#[test]
fn an_idle_keep_alive_connection_is_not_a_slow_header() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(&hub, "", "limits:\n  header_timeout: 1s\n");
    let mut s = connect(&edge);
    for _ in 0..2 {
        write!(s, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(status_of(&read_response(&mut s)), 200);
        // Longer than the header deadline, shorter than the keep-alive timeout.
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(edge.metric("hf_edge_client_header_timeouts_total"), 0);
}

#[test]
fn connections_over_the_cap_are_answered_503_until_one_closes() {
    let hub = FakeHub::start();
    let edge = Edge::start_with(&hub, "", "limits:\n  max_connections: 2\n");
    wait_for_connections(&edge, 0); // the harness's readiness probe closed
                                    // Two clients hold a connection open (a request answered, kept alive).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&edge);
            write!(s, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(status_of(&read_response(&mut s)), 200);
            s
        })
        .collect();
    assert_eq!(edge.metric("hf_edge_client_connections"), 2);
    let mut third = connect(&edge);
    write!(third, "GET {CONFIG} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_to_close(&mut third);
    assert_eq!(status_of(&answer), 503, "{answer:?}");
    assert!(json_error(&answer)["error"]
        .as_str()
        .unwrap()
        .contains("limits.max_connections"));
    assert_eq!(edge.metric("hf_edge_client_connections_refused_total"), 1);
    // One leaves: the next client is served.
    drop(held.pop());
    wait_for_connections(&edge, 1);
    assert_eq!(edge.get(CONFIG, &[]).status, 200);
}

/// Waits (bounded) until hf-edge counts `n` open client connections: it notices a closed one
/// as soon as it reads its end.
fn wait_for_connections(edge: &Edge, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metric("hf_edge_client_connections") != n {
        assert!(Instant::now() < deadline, "not {n} connections counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}
