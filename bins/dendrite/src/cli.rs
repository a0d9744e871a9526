//! Command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use prompting_keys::Wallet;
use prompting_keys::wallet::{
    DEFAULT_HOTKEY_NAME, DEFAULT_WALLET_NAME, DEFAULT_WALLET_PATH, ENV_WALLET_HOTKEY,
    ENV_WALLET_NAME, ENV_WALLET_PATH,
};

/// Send a prompt to a miner's axon (text-prompting's `Prompting`/`StreamPrompting`
/// synapse) and print the completion.
#[derive(Debug, Parser)]
#[command(name = "dendrite", version)]
pub struct Args {
    /// The prompt: the last message of the conversation.
    pub prompt: String,

    /// The role of the prompt's message.
    #[arg(long, default_value = "user")]
    pub role: String,

    /// A system message sent before the prompt.
    #[arg(long)]
    pub system: Option<String>,

    /// The axon's address, `ip:port` (`[ipv6]:port`).
    #[arg(long = "axon")]
    pub axon: SocketAddr,

    /// The SS58 address of the axon's hotkey (the request is signed for it).
    #[arg(long = "axon.hotkey", value_name = "SS58", value_parser = parse_ss58)]
    pub axon_hotkey: String,

    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 12.0, value_parser = parse_timeout)]
    pub timeout: f64,

    /// Stream the answer and print the text as it arrives (`StreamPrompting`, gRPC's
    /// `PromptStream`, or OpenAI's server-sent events).
    #[arg(long)]
    pub stream: bool,

    /// Print the whole response (status, timing, filled synapse) as JSON.
    #[arg(long)]
    pub json: bool,

    /// The wire protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Legacy)]
    pub protocol: Protocol,

    /// The wallet (coldkey) name.
    #[arg(long = "wallet.name", env = ENV_WALLET_NAME, default_value = DEFAULT_WALLET_NAME)]
    pub wallet_name: String,

    /// The hotkey name.
    #[arg(long = "wallet.hotkey", env = ENV_WALLET_HOTKEY, default_value = DEFAULT_HOTKEY_NAME)]
    pub wallet_hotkey: String,

    /// The wallets folder.
    #[arg(long = "wallet.path", env = ENV_WALLET_PATH, default_value = DEFAULT_WALLET_PATH)]
    pub wallet_path: String,
}

/// The wire protocols the dendrite speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// bittensor 6.x–10.x signed synapse requests (`POST /Prompting`).
    Legacy,
    /// bittensor 11 btauth/1-signed JSON (`POST /Prompting`); no streaming.
    Btauth,
    /// gRPC (`prompting.v1.Miner`) authenticated with btauth/1, on the axon's port.
    Grpc,
    /// OpenAI's chat completions (`POST /v1/chat/completions`) signed with btauth/1.
    Openai,
}

impl Args {
    /// The wallet the flags select.
    pub fn wallet(&self) -> Wallet {
        Wallet::new(&self.wallet_path, &self.wallet_name, &self.wallet_hotkey)
    }

    /// The conversation: the system message if any, then the prompt.
    pub fn conversation(&self) -> (Vec<String>, Vec<String>) {
        let mut roles = Vec::new();
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            roles.push("system".to_owned());
            messages.push(system.clone());
        }
        roles.push(self.role.clone());
        messages.push(self.prompt.clone());
        (roles, messages)
    }

    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

/// An SS58 address, checked (base58, checksum, length) before anything is sent.
fn parse_ss58(text: &str) -> Result<String, String> {
    let text = text.trim();
    prompting_keys::ss58::decode(text)
        .map(|_| text.to_string())
        .map_err(|error| format!("{text:?} is not an SS58 address ({error})"))
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 {
        Ok(seconds)
    } else {
        Err(format!(
            "{text} must be more than 0 and at most 86400 seconds"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid SS58 address.
    const AXON: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec![
            "dendrite",
            "--axon",
            "127.0.0.1:8091",
            "--axon.hotkey",
            AXON,
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("valid flags")
    }

    #[test]
    fn system_turn_comes_first() {
        let args = parse(&["--system", "Be brief.", "--role", "assistant", "Hi"]);
        let (roles, messages) = args.conversation();
        assert_eq!(roles, ["system", "assistant"]);
        assert_eq!(messages, ["Be brief.", "Hi"]);
        let args = parse(&["Hi"]);
        assert_eq!(
            args.conversation(),
            (vec!["user".into()], vec!["Hi".into()])
        );
    }

    #[test]
    fn defaults_and_validation() {
        let args = parse(&["Hi"]);
        assert_eq!(args.timeout(), Duration::from_secs(12));
        assert_eq!(args.protocol, Protocol::Legacy);
        assert!(!args.stream && !args.json);
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("nan").is_err());
        assert_eq!(parse_timeout("0.5"), Ok(0.5));
        assert!(
            Args::try_parse_from(["dendrite", "--axon", "nowhere", "--axon.hotkey", AXON, "x"])
                .is_err()
        );
    }

    #[test]
    fn the_axon_hotkey_must_be_ss58() {
        for bad in [
            "<ss58>",
            "5Axon",
            "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAf",
        ] {
            let err = Args::try_parse_from([
                "dendrite",
                "--axon",
                "127.0.0.1:1",
                "--axon.hotkey",
                bad,
                "x",
            ])
            .expect_err(bad);
            assert!(err.to_string().contains("is not an SS58 address"), "{err}");
        }
    }

    #[test]
    fn ipv6_axons_parse() {
        let args = Args::try_parse_from([
            "dendrite",
            "--axon",
            "[::1]:8091",
            "--axon.hotkey",
            AXON,
            "x",
        ])
        .expect("valid");
        assert_eq!(args.axon.port(), 8091);
        assert!(args.axon.is_ipv6());
    }
}
