//! Prometheus metrics of the axon: requests by protocol/route/status and their latency,
//! recorded once per request by [`ObserveLayer`] around each protocol route, and the
//! pipeline's queue gauges read at scrape time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prompting_miner::{BackendMetric, MetricKind, Pipeline, PipelineStats};
use tower::{Layer, Service};

use super::rejection::http_status_of_grpc;

/// Labels of one answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    route: &'static str,
    status: u16,
    reason: &'static str,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    protocol: &'static str,
    route: &'static str,
}

/// The request counters and latency histograms: a cheap handle on the registry's families,
/// what [`ObserveLayer`] records into.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        RequestMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }

    /// Records one answered request.
    fn observe(&self, protocol: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                route,
                status,
                reason: reason_of(status),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { protocol, route })
            .observe(elapsed.as_secs_f64());
    }
}

/// A gauge whose value is read when `/metrics` is scraped (e.g. the metagraph's age).
pub type GaugeSource = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// The transports' metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    queue_depth: Gauge,
    in_flight: Gauge,
    capacity: Gauge,
    queue_capacity: Gauge,
    sources: Vec<(String, String, GaugeSource)>,
    counters: parking_lot::Mutex<Vec<CounterFamily>>,
}

/// Counters read when `/metrics` is scraped: one value per label value.
pub type CounterSource = Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// A counter family read from a [`CounterSource`].
struct CounterFamily {
    name: String,
    help: String,
    label: &'static str,
    source: CounterSource,
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
        let requests = RequestMetrics::new();
        registry.register(
            "requests",
            "Requests answered, by protocol, route, HTTP status and reason",
            requests.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by protocol and route",
            requests.latency.clone(),
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
            queue_depth,
            in_flight,
            capacity,
            queue_capacity,
            sources: Vec::new(),
            counters: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Adds a counter family `prompting_{name}_total{{label="…"}}` read from `source` at
    /// every scrape (for tables and loops that count in atomics of their own).
    pub fn add_counter_source(
        &self,
        name: &str,
        help: &str,
        label: &'static str,
        source: CounterSource,
    ) {
        self.counters.lock().push(CounterFamily {
            name: format!("prompting_{name}"),
            help: help.to_string(),
            label,
            source,
        });
    }

    /// Adds a gauge `prompting_{name}` read from `source` at every scrape (omitted while it
    /// returns `None`).
    pub fn add_gauge_source(&mut self, name: &str, help: &str, source: GaugeSource) {
        self.sources
            .push((format!("prompting_{name}"), help.to_string(), source));
    }

    /// A layer recording every response of the service it wraps as `protocol`/`route`.
    pub fn layer(&self, protocol: &'static str, route: &'static str) -> ObserveLayer {
        ObserveLayer::new(self.requests.clone(), protocol, Route::Fixed(route))
    }

    /// A layer recording every response of the service it wraps as `protocol`, with the
    /// route `route_of(path)` (which must map unknown paths to a fixed label).
    pub fn layer_by_path(
        &self,
        protocol: &'static str,
        route_of: fn(&str) -> &'static str,
    ) -> ObserveLayer {
        ObserveLayer::new(self.requests.clone(), protocol, Route::ByPath(route_of))
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
        extra.push_str("# HELP prompting_pipeline_blacklist_refusals Requests the blacklist refused, by kind.\n# TYPE prompting_pipeline_blacklist_refusals counter\n");
        for (kind, count) in &stats.refusals {
            extra.push_str(&format!(
                "prompting_pipeline_blacklist_refusals_total{{kind=\"{}\"}} {count}\n",
                kind.as_str()
            ));
        }
        render_admission(&mut extra, &stats);
        for family in self.counters.lock().iter() {
            let name = &family.name;
            extra.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} counter\n",
                family.help
            ));
            for (value, count) in (family.source)() {
                extra.push_str(&format!(
                    "{name}_total{{{}=\"{value}\"}} {count}\n",
                    family.label
                ));
            }
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
        render_backend(&mut extra, &pipeline.miner().metrics());
        out.insert_str(eof, &extra);
        out
    }
}

/// Appends the backend's own families ([`prompting_miner::Miner::metrics`]): a `# HELP` and
/// `# TYPE` line each, then its samples (a counter's with `_total`), label values escaped.
/// A family with an invalid name, or named like one rendered before it, is skipped.
fn render_backend(out: &mut String, families: &[BackendMetric]) {
    let mut seen = std::collections::HashSet::new();
    for family in families {
        if !family.is_valid() || !seen.insert(family.name) {
            tracing::debug!(
                name = family.name,
                "backend metric skipped: invalid or repeated name"
            );
            continue;
        }
        let name = family.name;
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} {}\n",
            escape_help(family.help),
            family.kind.as_str()
        ));
        let suffix = match family.kind {
            MetricKind::Counter => "_total",
            MetricKind::Gauge => "",
        };
        for sample in &family.samples {
            out.push_str(name);
            out.push_str(suffix);
            if !sample.labels.is_empty() {
                let labels: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                    .collect();
                out.push_str(&format!("{{{}}}", labels.join(",")));
            }
            out.push_str(&format!(" {}\n", number(sample.value)));
        }
    }
}

/// A help text with backslashes, double quotes and line breaks escaped (OpenMetrics, the
/// format `/metrics` is served in, allows no bare `"` there).
fn escape_help(help: &str) -> String {
    escape_label_value(help)
}

/// A label value with backslashes, double quotes and line breaks escaped.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the exposition format writes it (`+Inf`, `-Inf`, `NaN`).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// Appends the priority queue's admission figures: the overall service time (a waiter is
/// judged by that of its priority and higher), its refusals by reason and how long granted requests waited for a worker.
fn render_admission(out: &mut String, stats: &PipelineStats) {
    if let Some(service_time) = stats.service_time {
        out.push_str(&format!(
            "# HELP prompting_queue_service_time_seconds Expected worker-hold time of a request, the quantile of all recent holds (--miner.admission.*; a waiter is judged by the holds of its priority and higher only); absent before the first answer.\n\
             # TYPE prompting_queue_service_time_seconds gauge\n\
             prompting_queue_service_time_seconds {}\n",
            service_time.as_secs_f64()
        ));
    }
    if let Some(first_chunk_time) = stats.first_chunk_time {
        out.push_str(&format!(
            "# HELP prompting_queue_first_chunk_seconds Expected time from a worker's grant to a streamed answer's first chunk, the same quantile of all recent ones (with --miner.answer_margin_ms a waiter needs this and the margin left); absent before the first streamed answer.\n\
             # TYPE prompting_queue_first_chunk_seconds gauge\n\
             prompting_queue_first_chunk_seconds {}\n",
            first_chunk_time.as_secs_f64()
        ));
    }
    out.push_str(&format!(
        "# HELP prompting_queue_service_time_samples Worker holds the service time is taken from.\n\
         # TYPE prompting_queue_service_time_samples gauge\n\
         prompting_queue_service_time_samples {}\n",
        stats.service_time_samples
    ));
    out.push_str("# HELP prompting_queue_refusals Requests the priority queue gave no worker, by reason (deadline_passed answers 408, the others 503).\n# TYPE prompting_queue_refusals counter\n");
    for (reason, count) in &stats.queue_refusals {
        out.push_str(&format!(
            "prompting_queue_refusals_total{{reason=\"{}\"}} {count}\n",
            reason.as_str()
        ));
    }
    out.push_str(&format!(
        "# HELP prompting_queue_preemptions Running requests whose worker slot a higher-priority waiter took (--miner.priority.preempt); each is answered 503 (outcome preempted).\n\
         # TYPE prompting_queue_preemptions counter\n\
         prompting_queue_preemptions_total {}\n",
        stats.preemptions
    ));
    out.push_str(&format!(
        "# HELP prompting_queue_preemptions_called_off Preemptions called off before their victim acted on them: the waiter they were for left the queue first (a slot freed naturally and went to it, or it gave up); the victim ran on.\n\
         # TYPE prompting_queue_preemptions_called_off counter\n\
         prompting_queue_preemptions_called_off_total {}\n",
        stats.preemptions_called_off
    ));
    out.push_str(&format!(
        "# HELP prompting_pipeline_truncated_answers Answers sent with the text generated so far because their deadline was near (--miner.answer_margin_ms); also counted as served.\n\
         # TYPE prompting_pipeline_truncated_answers counter\n\
         prompting_pipeline_truncated_answers_total {}\n",
        stats.truncated
    ));
    let wait = &stats.queue_wait;
    out.push_str("# HELP prompting_queue_wait_seconds Time the requests granted a worker waited for it in the priority queue.\n# TYPE prompting_queue_wait_seconds histogram\n");
    for (le, count) in &wait.buckets {
        out.push_str(&format!(
            "prompting_queue_wait_seconds_bucket{{le=\"{le}\"}} {count}\n"
        ));
    }
    out.push_str(&format!(
        "prompting_queue_wait_seconds_bucket{{le=\"+Inf\"}} {}\n\
         prompting_queue_wait_seconds_sum {}\n\
         prompting_queue_wait_seconds_count {}\n",
        wait.count, wait.sum, wait.count
    ));
}

/// How an [`ObserveLayer`] names the route of a request.
#[derive(Clone, Copy)]
enum Route {
    Fixed(&'static str),
    ByPath(fn(&str) -> &'static str),
}

struct Labels {
    metrics: RequestMetrics,
    protocol: &'static str,
    route: Route,
}

/// Records each request once, when its response (headers) is ready: a count by protocol,
/// route, HTTP status and reason, and the time it took. A gRPC answer counts with the HTTP
/// status of its `grpc-status` (see [`http_status_of_grpc`]); a streamed body's later
/// failure does not change the count.
#[derive(Clone)]
pub struct ObserveLayer {
    labels: Arc<Labels>,
}

impl ObserveLayer {
    fn new(metrics: RequestMetrics, protocol: &'static str, route: Route) -> ObserveLayer {
        ObserveLayer {
            labels: Arc::new(Labels {
                metrics,
                protocol,
                route,
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            labels: Arc::clone(&self.labels),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    labels: Arc<Labels>,
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let route = match self.labels.route {
            Route::Fixed(route) => route,
            Route::ByPath(route_of) => route_of(request.uri().path()),
        };
        ObserveFuture {
            inner: self.inner.call(request),
            labels: Arc::clone(&self.labels),
            route,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        labels: Arc<Labels>,
        route: &'static str,
        start: Instant,
    }
}

impl<F, R, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let status = match response.headers().get("grpc-status") {
                Some(code) => {
                    let code = code.to_str().ok().and_then(|code| code.parse::<i32>().ok());
                    http_status_of_grpc(code.map_or(tonic::Code::Unknown, tonic::Code::from))
                }
                None => response.status().as_u16(),
            };
            this.labels.metrics.observe(
                this.labels.protocol,
                this.route,
                status,
                this.start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    fn count(metrics: &Metrics, protocol: &'static str, route: &'static str, status: u16) -> u64 {
        metrics
            .requests
            .requests
            .get_or_create(&RequestLabels {
                protocol,
                route,
                status,
                reason: reason_of(status),
            })
            .get()
    }

    async fn answer(layer: &ObserveLayer, path: &str, grpc_status: Option<&'static str>) {
        let service = layer.layer(tower::service_fn(move |_: http::Request<()>| async move {
            let mut response = http::Response::new(());
            if let Some(code) = grpc_status {
                response
                    .headers_mut()
                    .insert("grpc-status", code.parse().expect("value"));
            }
            Ok::<_, Infallible>(response)
        }));
        let request = http::Request::get(path).body(()).expect("request");
        service.oneshot(request).await.expect("infallible");
    }

    /// Answers once per permit added to its gate.
    struct Gated(Arc<tokio::sync::Semaphore>);

    #[async_trait::async_trait]
    impl prompting_miner::Miner for Gated {
        fn name(&self) -> &str {
            "gated"
        }

        async fn prompt(
            &self,
            _: &prompting_miner::PromptRequest,
        ) -> Result<String, prompting_miner::MinerError> {
            let permit = self
                .0
                .acquire()
                .await
                .map_err(|_| prompting_miner::MinerError::Backend("gate closed".into()))?;
            permit.forget();
            Ok("answer".into())
        }
    }

    /// The value of the sample named exactly `name` (with its labels).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn admission_figures_are_rendered() {
        use prompting_miner::{
            Metagraph, MinerConfig, MinerError, NeuronInfo, PromptRequest, Protocol,
            SharedMetagraph,
        };
        let validator = NeuronInfo {
            hotkey: "validator".into(),
            stake: 1000.0,
            validator_permit: true,
            ..NeuronInfo::default()
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let config = MinerConfig {
            max_concurrent: 1,
            max_queue: 0,
            ..MinerConfig::default()
        };
        let pipeline = Pipeline::new(
            config,
            Arc::new(SharedMetagraph::new(Metagraph::new(
                1,
                100,
                vec![validator],
            ))),
            Arc::new(Gated(Arc::clone(&gate))),
        )
        .expect("valid config");
        let ask = |caller: &str| {
            PromptRequest::new(
                vec!["user".into()],
                vec!["hi".into()],
                caller,
                Protocol::Legacy,
                Duration::from_secs(12),
            )
        };
        let metrics = Metrics::new();
        let text = metrics.render(&pipeline);
        assert_eq!(
            sample(&text, "prompting_queue_service_time_seconds"),
            None,
            "no estimate before the first answer"
        );
        assert_eq!(
            sample(&text, "prompting_queue_service_time_samples"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_first_chunk_seconds"),
            None,
            "no estimate before the first streamed answer"
        );
        for reason in prompting_miner::QueueRefusal::ALL {
            let name = format!(
                "prompting_queue_refusals_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(sample(&text, &name), Some(0.0), "{name}");
        }
        assert_eq!(
            sample(&text, "prompting_queue_wait_seconds_count"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_preemptions_total"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_preemptions_called_off_total"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "prompting_pipeline_truncated_answers_total"),
            Some(0.0)
        );

        let busy = {
            let pipeline = pipeline.clone();
            let request = ask("validator");
            tokio::spawn(async move { pipeline.prompt(request).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipeline.stats().in_flight, 1);
        let refused = pipeline.prompt(ask("validator")).await;
        assert!(
            matches!(refused, Err(MinerError::Overloaded(_))),
            "{refused:?}"
        );
        let stranger = pipeline.prompt(ask("stranger")).await;
        assert!(
            matches!(stranger, Err(MinerError::Blacklisted(_))),
            "{stranger:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        gate.add_permits(1);
        busy.await.expect("joined").expect("answered");

        let text = metrics.render(&pipeline);
        assert_eq!(
            sample(&text, "prompting_queue_service_time_seconds"),
            Some(1.5)
        );
        assert_eq!(
            sample(&text, "prompting_queue_service_time_samples"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "prompting_queue_refusals_total{reason=\"queue_full\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_refusals_total{reason=\"shed\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "prompting_pipeline_blacklist_refusals_total{kind=\"not_registered\"}"
            ),
            Some(1.0)
        );
        // The one granted request took the free worker at once.
        assert_eq!(
            sample(&text, "prompting_queue_wait_seconds_count"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "prompting_queue_wait_seconds_sum"), Some(0.0));
        assert_eq!(
            sample(&text, "prompting_queue_wait_seconds_bucket{le=\"0.001\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_wait_seconds_bucket{le=\"+Inf\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "prompting_queue_first_chunk_seconds"),
            None,
            "an answer that was not streamed has no first chunk"
        );
        let streamed = {
            let pipeline = pipeline.clone();
            let request = ask("validator");
            tokio::spawn(async move { pipeline.prompt_stream(request).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        gate.add_permits(1);
        let mut stream = streamed.await.expect("joined").expect("streaming");
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            chunk.expect("a chunk");
        }
        drop(stream);
        let text = metrics.render(&pipeline);
        assert_eq!(
            sample(&text, "prompting_queue_first_chunk_seconds"),
            Some(0.5)
        );
        for (name, kind) in [
            ("prompting_queue_service_time_seconds", "gauge"),
            ("prompting_queue_first_chunk_seconds", "gauge"),
            ("prompting_queue_service_time_samples", "gauge"),
            ("prompting_queue_refusals", "counter"),
            ("prompting_queue_wait_seconds", "histogram"),
            ("prompting_pipeline_blacklist_refusals", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// A backend that reports metrics of its own, awkward ones included.
    struct Reporting;

    #[async_trait::async_trait]
    impl prompting_miner::Miner for Reporting {
        fn name(&self) -> &str {
            "reporting"
        }

        fn metrics(&self) -> Vec<BackendMetric> {
            vec![
                BackendMetric::counter("prompting_test_passes", "Passes run.", 12.0),
                BackendMetric::gauge(
                    "prompting_test_running",
                    "Running \"now\".\nSecond line, back\\slash.",
                    3.0,
                ),
                BackendMetric::labelled(
                    "prompting_test_rows",
                    "Rows, by kind.",
                    MetricKind::Counter,
                    "kind",
                    [
                        ("decode".to_string(), 7.0),
                        ("say \"hi\"\\\nnow".to_string(), 0.5),
                    ],
                ),
                BackendMetric::gauge("prompting_test_odd", "Not finite.", f64::NAN),
                BackendMetric::gauge("bad-name", "Skipped.", 1.0),
                BackendMetric::gauge("prompting_test_passes", "A repeat, skipped.", 1.0),
            ]
        }

        async fn prompt(
            &self,
            _: &prompting_miner::PromptRequest,
        ) -> Result<String, prompting_miner::MinerError> {
            Ok("answer".into())
        }
    }

    /// Checks the exposition's shape: every sample's family was introduced by one `# HELP`
    /// and one `# TYPE` line (the sample named as the family, with `_total` for a counter,
    /// `_bucket`/`_sum`/`_count` for a histogram), each family once, `# EOF` last.
    fn assert_well_formed(text: &str) {
        let mut families: std::collections::HashMap<String, String> = Default::default();
        let mut helped = std::collections::HashSet::new();
        let mut current: Option<(String, String)> = None;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name");
                assert!(helped.insert(name.to_string()), "HELP twice: {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                let (name, kind) = (words.next().expect("name"), words.next().expect("type"));
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                let old = families.insert(name.to_string(), kind.to_string());
                assert!(old.is_none(), "family twice: {name}");
                current = Some((name.to_string(), kind.to_string()));
            } else if line.starts_with('#') {
                panic!("unexpected comment: {line}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect("a value");
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "value of {line}"
                );
                let metric = series.split('{').next().expect("name");
                let (family, kind) = current.as_ref().expect("a family first");
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|s| metric == format!("{family}{s}")),
                    "{line} under {family} {kind}"
                );
                let labels = &series[metric.len()..];
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line}"
                );
            }
        }
    }

    #[tokio::test]
    async fn backend_metrics_are_rendered_escaped_and_well_formed() {
        let pipeline = Pipeline::new(
            prompting_miner::MinerConfig::default(),
            Arc::new(prompting_miner::DevMetagraph::new()),
            Arc::new(Reporting),
        )
        .expect("valid config");
        let text = Metrics::new().render(&pipeline);
        assert_well_formed(&text);
        assert!(
            text.contains(
                "# HELP prompting_test_passes Passes run.\n\
                 # TYPE prompting_test_passes counter\n\
                 prompting_test_passes_total 12\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP prompting_test_running Running \\\"now\\\".\\nSecond line, back\\\\slash.\n\
                 # TYPE prompting_test_running gauge\n\
                 prompting_test_running 3\n"
            ),
            "{text}"
        );
        assert_eq!(
            sample(&text, "prompting_test_rows_total{kind=\"decode\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "prompting_test_rows_total{kind=\"say \\\"hi\\\"\\\\\\nnow\"}"
            ),
            Some(0.5),
            "{text}"
        );
        assert!(text.contains("prompting_test_odd NaN\n"), "{text}");
        assert!(!text.contains("bad-name"), "{text}");
        assert!(!text.contains("A repeat"), "{text}");
    }

    #[tokio::test]
    async fn without_backend_metrics_the_exposition_is_well_formed_too() {
        let pipeline = Pipeline::new(
            prompting_miner::MinerConfig::default(),
            Arc::new(prompting_miner::DevMetagraph::new()),
            Arc::new(Gated(Arc::new(tokio::sync::Semaphore::new(0)))),
        )
        .expect("valid config");
        let text = Metrics::new().render(&pipeline);
        assert_well_formed(&text);
        assert!(!text.contains("prompting_test_"), "{text}");
    }

    #[tokio::test]
    async fn each_response_is_counted_once_with_its_status() {
        let metrics = Metrics::new();
        let legacy = metrics.layer("legacy", "Prompting");
        answer(&legacy, "/Prompting", None).await;
        answer(&legacy, "/Prompting", None).await;
        assert_eq!(count(&metrics, "legacy", "Prompting", 200), 2);

        let grpc = metrics.layer_by_path("grpc", |path| {
            if path == "/p.S/Prompt" {
                "Prompt"
            } else {
                "unknown"
            }
        });
        // PERMISSION_DENIED in a trailers-only answer, and a path naming no method.
        answer(&grpc, "/p.S/Prompt", Some("7")).await;
        answer(&grpc, "/p.S/Anything", Some("0")).await;
        assert_eq!(count(&metrics, "grpc", "Prompt", 403), 1);
        assert_eq!(count(&metrics, "grpc", "unknown", 200), 1);
        assert_eq!(count(&metrics, "grpc", "Prompt", 200), 0);
    }
}
