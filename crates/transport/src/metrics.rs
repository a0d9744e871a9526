//! Prometheus metrics of the transports: requests by protocol/route/status, latency
//! histograms, and the pipeline's queue gauges read at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prompting_miner::Pipeline;

/// Labels of one answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    route: String,
    status: u16,
    reason: &'static str,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    protocol: &'static str,
    route: String,
}

/// A gauge whose value is read when `/metrics` is scraped (e.g. the metagraph's age).
pub type GaugeSource = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// The transports' metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    queue_depth: Gauge,
    in_flight: Gauge,
    capacity: Gauge,
    queue_capacity: Gauge,
    sources: Vec<(String, String, GaugeSource)>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The short reason label of an HTTP status, for dashboards.
pub fn reason_of(status: u16) -> &'static str {
    match status {
        200 => "ok",
        400 => "bad_request",
        401 => "not_verified",
        403 => "blacklisted",
        404 => "not_found",
        408 => "timeout",
        413 => "too_large",
        500 => "backend_error",
        503 => "overloaded",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with the transport metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("prompting");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by protocol, route, HTTP status and reason",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by protocol and route",
            latency.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting in the priority queue",
            queue_depth.clone(),
        );
        let queue_capacity = Gauge::default();
        registry.register(
            "queue_capacity",
            "Size of the priority queue",
            queue_capacity.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "backend_in_flight",
            "Backend calls running",
            in_flight.clone(),
        );
        let capacity = Gauge::default();
        registry.register(
            "backend_capacity",
            "Backend calls allowed at once",
            capacity.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            in_flight,
            capacity,
            queue_capacity,
            sources: Vec::new(),
        }
    }

    /// Adds a gauge `prompting_{name}` read from `source` at every scrape (omitted while it
    /// returns `None`).
    pub fn add_gauge_source(&mut self, name: &str, help: &str, source: GaugeSource) {
        self.sources
            .push((format!("prompting_{name}"), help.to_string(), source));
    }

    /// Records one answered request.
    pub fn observe(&self, protocol: &'static str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                route: route.to_string(),
                status,
                reason: reason_of(status),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                protocol,
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition, with the pipeline's gauges read now.
    pub fn render(&self, pipeline: &Pipeline) -> String {
        let stats = pipeline.stats();
        self.queue_depth.set(stats.queue_depth as i64);
        self.queue_capacity.set(stats.queue_capacity as i64);
        self.in_flight.set(stats.in_flight as i64);
        self.capacity.set(stats.capacity as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            return "# metrics encoding failed\n".to_string();
        }
        // `encode` ends with "# EOF"; put the extra gauges and the pipeline counters before it.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let mut extra = String::new();
        extra.push_str("# HELP prompting_pipeline_outcomes Requests that reached the pipeline, by outcome.\n# TYPE prompting_pipeline_outcomes counter\n");
        for (outcome, count) in &stats.outcomes {
            extra.push_str(&format!(
                "prompting_pipeline_outcomes_total{{outcome=\"{}\"}} {count}\n",
                outcome.as_str()
            ));
        }
        extra.push_str("# HELP prompting_backend_tokens Tokens of answered requests whose backend reported them, by kind.\n# TYPE prompting_backend_tokens counter\n");
        for (kind, count) in [
            ("prompt", stats.usage.prompt_tokens),
            ("completion", stats.usage.completion_tokens),
        ] {
            extra.push_str(&format!(
                "prompting_backend_tokens_total{{kind=\"{kind}\"}} {count}\n"
            ));
        }
        for (name, help, source) in &self.sources {
            if let Some(value) = source() {
                extra.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
                ));
            }
        }
        out.insert_str(eof, &extra);
        out
    }
}
