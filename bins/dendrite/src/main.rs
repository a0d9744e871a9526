//! `dendrite`: sends one prompt to a miner's axon and prints the completion.
//!
//! ```text
//! dendrite --axon 127.0.0.1:8091 --axon.hotkey 5EHg... "What is the capital of France?"
//! dendrite --axon [::1]:8091 --axon.hotkey 5EHg... --system "Be brief." --stream "Hi"
//! dendrite --protocol openai --axon 127.0.0.1:8091 --axon.hotkey 5EHg... "Hi"
//! ```
//!
//! Exit codes: 0 when the axon answered 200; 1 for any other answer, an unreachable axon or
//! an unusable wallet (one line on stderr, `dendrite: error: ...`); 2 for invalid arguments
//! (including an `--axon.hotkey` that is no SS58 address).

mod cli;
mod output;

use std::process::ExitCode;

use cli::{Args, Protocol};
use prompting_cli::Failure;

fn main() -> ExitCode {
    let args: Args = prompting_cli::parse_or_exit("dendrite", std::env::args_os());
    prompting_cli::finish("dendrite", run(&args))
}

fn run(args: &Args) -> Result<(), Failure> {
    let keypair = args
        .wallet()
        .load_hotkey()
        .map_err(|error| Failure::runtime(format!("cannot load the hotkey: {error}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::runtime(format!("cannot start the async runtime: {error}")))?;
    match args.protocol {
        Protocol::Legacy => runtime.block_on(output::run_legacy(args, keypair)),
        Protocol::Btauth => runtime.block_on(output::run_btauth(args, keypair)),
        Protocol::Grpc => runtime.block_on(output::run_grpc(args, keypair)),
        Protocol::Openai => runtime.block_on(output::run_openai(args, keypair)),
    }
}
