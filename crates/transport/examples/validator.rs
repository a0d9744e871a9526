//! A minimal Rust validator: asks every axon of a list the same question with the dendrite
//! (the legacy synapse protocol, as bittensor 10.5 validators speak it) and prints each
//! miner's answer. It needs only the client side of the crate:
//!
//! ```sh
//! cargo run -p prompting-transport --no-default-features -F client --example validator -- \
//!     127.0.0.1:8091=5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe \
//!     "What is the capital of France?"
//! ```
//!
//! Every argument but the last is an axon, `ip:port=hotkey`; the last is the prompt. The
//! validator signs with the hotkey of the wallet the environment selects (`BT_WALLET_PATH`,
//! `BT_WALLET_NAME`, `BT_WALLET_HOTKEY`, with bittensor's defaults).

use std::process::ExitCode;
use std::time::Duration;

use prompting_keys::wallet::Wallet;
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::dendrite::{AxonTarget, Dendrite};

/// How long each miner gets to answer.
const TIMEOUT: Duration = Duration::from_secs(12);

/// `ip:port=hotkey` as an axon to call.
fn parse_axon(text: &str) -> Result<AxonTarget, String> {
    let (addr, hotkey) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ip:port=hotkey"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an ip:port address: {e}"))?;
    Ok(AxonTarget::new(addr, hotkey))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((prompt, axons)) = args.split_last().filter(|(_, axons)| !axons.is_empty()) else {
        eprintln!("usage: validator IP:PORT=HOTKEY... PROMPT");
        return ExitCode::from(2);
    };
    let targets = match axons
        .iter()
        .map(|a| parse_axon(a))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(targets) => targets,
        Err(error) => {
            eprintln!("validator: {error}");
            return ExitCode::from(2);
        }
    };
    let wallet = Wallet::from_env();
    let keypair = match wallet.load_hotkey() {
        Ok(keypair) => keypair,
        Err(error) => {
            eprintln!("validator: cannot load the hotkey of {wallet:?}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let dendrite = match Dendrite::new(keypair) {
        Ok(dendrite) => dendrite,
        Err(error) => {
            eprintln!("validator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let synapse = Synapse::new(Prompting::new(vec!["user".into()], vec![prompt.clone()]));
    let responses = dendrite.query_many(&targets, &synapse, TIMEOUT).await;
    for (target, response) in targets.iter().zip(&responses) {
        println!(
            "{target}: {} {}: {:?}",
            response.status_code, response.status_message, response.synapse.body.completion
        );
    }
    if responses.iter().any(|response| response.is_success()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
