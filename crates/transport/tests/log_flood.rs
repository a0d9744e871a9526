//! Issue 12, D7: what outsiders can make the axon log is rate-limited and counted in
//! `/metrics` instead. A flood that forces the legacy nonce table to forget live endpoints
//! (N early evictions) writes at most one warning per `--axon.log_interval`, while the metric
//! counts all N.
//!
//! Its own test binary, not a module of `tests/it`: it installs the process-wide log
//! subscriber (`tracing_subscriber::fmt().init()`, once per process) that captures every line,
//! which in the shared binary would either fail for the second installer or capture the other
//! tests' lines. It shares `tests/it/common` by `#[path]`.

#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{AxonSetup, axon_args, miner_key, stranger_key, with_nonce};
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::dendrite::{AxonTarget, Dendrite};

/// Every log line written, in order.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_containing(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// The value of the counter sample `name{label}` in a `/metrics` page.
fn sample(page: &str, name_and_labels: &str) -> Option<u64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test]
async fn a_nonce_table_flood_logs_one_line_per_interval_and_counts_every_eviction() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .init();

    const CAPACITY: u64 = 100;
    const FLOOD: u64 = 250;
    let mut setup = AxonSetup::new(&[]);
    // Unregistered keys allowed: otherwise they are refused before the nonce table.
    setup.config.blacklist.allow_non_registered = true;
    setup.args = axon_args(&[
        "--axon.nonce_capacity",
        "100",
        "--axon.log_interval",
        "3600",
    ]);
    let axon = setup.start().await;
    let target = AxonTarget::new(axon.addr, miner_key().ss58_address());
    let client = reqwest::Client::new();
    let stranger = stranger_key();

    for i in 0..FLOOD {
        let attacker = Dendrite::builder(stranger.clone())
            .uuid(format!("flood-{i}"))
            .build()
            .expect("dendrite");
        let mut synapse = Synapse::new(Prompting::new(vec!["user".into()], vec!["x".into()]));
        let request = attacker.prepare(&target, &mut synapse, Duration::from_secs(300));
        let request = with_nonce(&request, &stranger, u64::MAX - 1_000 + i);
        let mut builder = client.post(&request.url);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.body("{bad json").send().await.expect("send");
        assert_eq!(response.status(), 400, "flood request {i}");
    }

    let evictions = FLOOD - CAPACITY;
    let page = client
        .get(format!("http://{}/metrics", axon.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics page");
    assert_eq!(
        sample(
            &page,
            "prompting_nonce_table_early_evictions_total{class=\"unregistered\"}"
        ),
        Some(evictions),
        "{page}"
    );
    let lines = captured.lines_containing("nonce table full");
    assert!(
        !lines.is_empty() && lines.len() <= 1,
        "{} early evictions wrote {} warnings: {:?}",
        evictions,
        lines.len(),
        lines.iter().take(3).collect::<Vec<_>>()
    );
}
