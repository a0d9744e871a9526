//! Writes the identities a load test against a real miner binary needs: the miner's wallet
//! (key 0 of [`prompting_benches::hotkeys`], the key `loadgen --axon-hotkey` then names) and
//! a metagraph file (`--metagraph.file`) registering key 0 as the miner, keys 1..=`--validators`
//! as validators with `--validator-stake` and the following keys up to `--clients` with
//! `--client-stake` (the first of them `--client-stakes` instead, one each, when given),
//! all with a validator permit. Prints the miner's hotkey. With
//! `--validator-wallet`, key 1 (the first validator) is written too, as wallet `validator`,
//! hotkey `default`, beside the miner's: what the `dendrite` CLI signs with to ask as that
//! validator (`--wallet.name validator`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use prompting_benches::hotkeys;
use prompting_keys::Wallet;

#[derive(Parser)]
struct Args {
    /// Wallets folder to write the miner's hotkey into (wallet `default`, hotkey `default`).
    #[arg(long)]
    wallet_path: PathBuf,
    /// The metagraph file to write (.toml).
    #[arg(long)]
    metagraph: PathBuf,
    /// Client keys registered after the miner (the first `--validators` are the validators).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How many of the first client keys (from key 1) have `--validator-stake`.
    #[arg(long, default_value_t = 1)]
    validators: usize,
    /// Stake of the validator keys, τ.
    #[arg(long, default_value_t = 10_000.0)]
    validator_stake: f64,
    /// Stake of the other client keys, τ.
    #[arg(long, default_value_t = 1.0)]
    client_stake: f64,
    /// Stakes of the first client keys after the validators, one each in key order
    /// (comma-separated, τ): clients of several stakes, e.g. validators of a real subnet.
    #[arg(long, value_delimiter = ',')]
    client_stakes: Vec<f64>,
    /// Also write key 1 (the first validator) into the wallets folder, as wallet
    /// `validator`, hotkey `default`.
    #[arg(long)]
    validator_wallet: bool,
}

/// Writes `key` as `wallet`'s hotkey unless it holds that key already.
fn write_hotkey(wallet: &Wallet, key: &prompting_keys::Keypair, whose: &str) -> anyhow::Result<()> {
    match wallet.load_hotkey() {
        Ok(existing) if existing.ss58_address() == key.ss58_address() => Ok(()),
        _ => {
            let _ = std::fs::remove_file(wallet.hotkey_path());
            wallet
                .write_hotkey(key)
                .with_context(|| format!("write the {whose}'s hotkey"))
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = hotkeys(args.clients + 1);
    let miner = &keys[0];
    write_hotkey(
        &Wallet::new(&args.wallet_path, "default", "default"),
        miner,
        "miner",
    )?;
    if args.validator_wallet {
        let validator = keys
            .get(1)
            .filter(|_| args.validators >= 1)
            .context("--validator-wallet needs --clients and --validators of at least 1")?;
        write_hotkey(
            &Wallet::new(&args.wallet_path, "validator", "default"),
            validator,
            "validator",
        )?;
    }
    let mut toml = String::from("netuid = 1\nblock = 1\n");
    for (uid, key) in keys.iter().enumerate() {
        let stake = match uid {
            0 => 0.0,
            v if v <= args.validators => args.validator_stake,
            v => args
                .client_stakes
                .get(v - args.validators - 1)
                .copied()
                .unwrap_or(args.client_stake),
        };
        toml.push_str(&format!(
            "\n[[neurons]]\nuid = {uid}\nhotkey = \"{}\"\nstake = {stake:.1}\nvalidator_permit = {}\n",
            key.ss58_address(),
            uid != 0,
        ));
    }
    std::fs::write(&args.metagraph, toml)
        .with_context(|| format!("write {}", args.metagraph.display()))?;
    println!("{}", miner.ss58_address());
    Ok(())
}
