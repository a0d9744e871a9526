//! `dendrite`: sends one prompt to a miner's axon and prints the completion.
//!
//! ```text
//! dendrite --axon 127.0.0.1:8091 --axon.hotkey 5EHg... "What is the capital of France?"
//! dendrite --axon [::1]:8091 --axon.hotkey 5EHg... --system "Be brief." --stream "Hi"
//! ```
//!
//! Exit codes: 0 when the axon answered 200, 1 for any other status (one line on stderr),
//! 2 for unusable arguments or wallet.

mod cli;
mod output;

use std::process::ExitCode;

use clap::Parser;
use cli::{Args, Protocol};

fn main() -> ExitCode {
    let args = Args::parse();
    let keypair = match args.wallet().load_hotkey() {
        Ok(keypair) => keypair,
        Err(error) => {
            eprintln!("dendrite: cannot load the hotkey: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dendrite: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.protocol {
        Protocol::Legacy => runtime.block_on(output::run_legacy(&args, keypair)),
        Protocol::Btauth => runtime.block_on(output::run_btauth(&args, keypair)),
        Protocol::Grpc => runtime.block_on(output::run_grpc(&args, keypair)),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dendrite: {error:#}");
            ExitCode::from(2)
        }
    }
}
