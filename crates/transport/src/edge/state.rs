//! What every protocol route shares: the axon's identity, the pipeline, the btauth/1
//! verifier (one replay store for every btauth/1 route), the clock, the limits, the metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prompting_keys::Keypair;
use prompting_miner::Pipeline;

use super::metrics::Metrics;
use crate::btauth::BtAuthVerifier;
use crate::caller_class::ClassifyCaller;
use crate::clock::{Clock, SystemClock};
use crate::config::{AxonArgs, AxonConfigError};
use crate::nonce::NonceSource;

/// Per-request limits.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest body, bytes.
    pub max_body_bytes: usize,
    /// Time to receive the body.
    pub read_timeout: Duration,
    /// Cap on a request's own `timeout`, seconds.
    pub max_request_timeout: f64,
}

/// State shared by the axon's routes.
pub struct AxonState {
    pub(crate) keypair: Arc<Keypair>,
    pub(crate) hotkey: String,
    pub(crate) pipeline: Pipeline,
    pub(crate) btauth: Arc<BtAuthVerifier>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: RequestLimits,
    pub(crate) metrics: Metrics,
    pub(crate) uuid: String,
    pub(crate) external_ip: String,
    pub(crate) external_port: u16,
    /// The operator's settings the state was made from (protocols read their own).
    pub(crate) args: AxonArgs,
    /// Nonces of the axon's signed answers, from [`AxonState::with_clock`]'s clock.
    axon_nonces: NonceSource,
}

impl AxonState {
    /// State for an axon signing as `keypair`, serving `pipeline` with `args`' limits.
    /// Fails when the btauth/1 settings make no sense.
    pub fn new(
        keypair: Arc<Keypair>,
        pipeline: Pipeline,
        args: &AxonArgs,
    ) -> Result<Self, AxonConfigError> {
        let external_ip = args.external_ip.unwrap_or(args.ip);
        let external_ip = if external_ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            external_ip
        };
        let hotkey = keypair.ss58_address();
        let btauth = BtAuthVerifier::new(args.btauth.config(hotkey.clone())).map_err(|e| {
            AxonConfigError {
                flag: "btauth",
                reason: e.to_string(),
            }
        })?;
        let classify: Arc<dyn ClassifyCaller> = Arc::new(pipeline.clone());
        Ok(AxonState {
            hotkey,
            btauth: Arc::new(btauth.with_classifier(classify)),
            keypair,
            pipeline,
            clock: Arc::new(SystemClock),
            limits: RequestLimits {
                max_body_bytes: args.max_body_bytes,
                read_timeout: Duration::from_secs_f64(args.read_timeout),
                max_request_timeout: args.max_request_timeout,
            },
            metrics: Metrics::new(),
            uuid: uuid::Uuid::new_v4().to_string(),
            external_ip: external_ip.to_string(),
            external_port: args.external_port.unwrap_or(args.port),
            args: args.clone(),
            axon_nonces: NonceSource::new(),
        })
    }

    /// Replaces the btauth/1 verifier (tests with a manual clock). Its replay store learns
    /// who is registered from this axon's pipeline.
    pub fn with_btauth(mut self, verifier: BtAuthVerifier) -> Self {
        let classify: Arc<dyn ClassifyCaller> = Arc::new(self.pipeline.clone());
        self.btauth = Arc::new(verifier.with_classifier(classify));
        self
    }

    /// Replaces the clock of the legacy protocol and of the axon's nonces (tests replaying
    /// recorded requests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.axon_nonces = NonceSource::with_clock(Arc::clone(&clock));
        self.clock = clock;
        self
    }

    /// The metrics registry, to add gauges before serving.
    pub fn metrics_mut(&mut self) -> &mut Metrics {
        &mut self.metrics
    }

    /// The axon's hotkey, SS58.
    pub fn hotkey(&self) -> &str {
        &self.hotkey
    }

    /// The pipeline requests go to.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// A fresh axon nonce: now in ns, strictly increasing.
    pub(crate) fn next_axon_nonce(&self) -> u64 {
        self.axon_nonces.next()
    }
}
