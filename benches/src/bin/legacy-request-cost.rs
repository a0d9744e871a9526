//! The instructions one legacy request costs the axon, for callgrind (counts are stable under
//! load, unlike times): the before/after measure of the transport's hot path.
//!
//! Builds the same in-process axon as the `hot_paths` bench's `axon_request_in_process`
//! (echo miner, router called with `oneshot`, no log subscriber), then for each of `--requests`
//! requests signs it with the dendrite and, unless `--sign-only`, sends it through the router
//! inside [`send_one`] (never inlined, so callgrind can count it alone):
//!
//! ```sh
//! cargo build --release -p prompting-benches --bin legacy-request-cost
//! # only what the axon spends: instructions inside send_one, over 200 requests
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/axon.cg \
//!     --toggle-collect='legacy_request_cost::send_one*' \
//!     target/release/legacy-request-cost --requests 200 2>&1 | grep Collected
//! # cross-check: whole program with and without sending
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/legacy-request-cost --requests 200 2>&1 | grep Collected
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/legacy-request-cost --requests 200 --sign-only 2>&1 | grep Collected
//! ```
//!
//! The first count / 200 is the axon's instructions per request (parse, verify, hash, pipeline,
//! echo, signed answer); `callgrind_annotate --inclusive=yes /tmp/axon.cg` says where they go.
//! The difference of the other two / 200 is the same plus the request's drop, from outside.

use std::sync::Arc;

use anyhow::{Context, bail};
use axum::body::Body;
use clap::Parser;
use prompting_benches::{EchoMiner, hotkeys, legacy_prompt_request, metagraph_of};
use prompting_miner::{MinerConfig, Pipeline};
use prompting_transport::axon::{self, AxonArgs, AxonState};
use prompting_transport::dendrite::{AxonTarget, Dendrite};
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    /// Requests to sign (and send).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Only sign the requests: the baseline to subtract.
    #[arg(long)]
    sign_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    // The pipeline and the axon state may spawn their background tasks: inside the runtime.
    let _entered = runtime.enter();
    let keys = hotkeys(2);
    let (miner_key, client_key) = (keys[0].clone(), keys[1].clone());
    let config = MinerConfig {
        // The rate limit would refuse a benchmark's many calls from one hotkey.
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    let axon_args = AxonArgs {
        ip: [127, 0, 0, 1].into(),
        ..AxonArgs::default()
    };
    let dendrite = Dendrite::new(client_key).context("dendrite")?;
    let target = AxonTarget::new(([127, 0, 0, 1], 8091).into(), miner_key.ss58_address());
    let pipeline = Pipeline::new(config, metagraph_of(&keys, |_| 1000.0), Arc::new(EchoMiner))
        .context("pipeline")?;
    let state = Arc::new(
        AxonState::new(Arc::new(miner_key.clone()), pipeline, &axon_args).context("axon args")?,
    );
    let router = axon::router(state);
    for _ in 0..args.requests {
        let request = legacy_prompt_request(&dendrite, &target)?;
        if args.sign_only {
            drop(request);
            continue;
        }
        let status = send_one(&runtime, &router, request)?;
        if status != 200 {
            bail!("the axon answered {status}");
        }
    }
    Ok(())
}

/// One request through the axon's router, answer read and dropped: what callgrind counts.
#[inline(never)]
fn send_one(
    runtime: &tokio::runtime::Runtime,
    router: &axum::Router,
    request: http::Request<Body>,
) -> anyhow::Result<http::StatusCode> {
    runtime.block_on(async {
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .context("answer body")?;
        Ok(status)
    })
}
