//! A minimal HTTP/1.0 GET for the service tests (no client crate needed for /healthz and
//! /metrics).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// GET `path` from `addr` once the port listens and returns the whole response. The port is
/// bound by `Service::prepare` but listens only once `run_until` runs, a moment after it is
/// spawned: a refused connection is retried for up to 10 s.
pub fn get(addr: SocketAddr, path: &str) -> String {
    let started = Instant::now();
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(e) => assert!(
                e.kind() == std::io::ErrorKind::ConnectionRefused
                    && started.elapsed() < Duration::from_secs(10),
                "not serving: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}
