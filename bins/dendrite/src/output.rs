//! Running a call and printing its outcome.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use prompting_keys::Keypair;
use prompting_synapse::{Prompting, StreamPrompting, Synapse, SynapseBody};
use prompting_transport::dendrite::{AxonTarget, Dendrite, DendriteResponse, StreamItem};
use serde_json::{Value, json};

use crate::cli::Args;

/// Calls the axon with the legacy protocol and prints the outcome; the exit code says
/// whether the axon answered 200.
pub async fn run_legacy(args: &Args, keypair: Keypair) -> anyhow::Result<ExitCode> {
    let dendrite = Dendrite::new(keypair).context("cannot create the dendrite")?;
    let target = AxonTarget::new(args.axon, args.axon_hotkey.clone());
    let (roles, messages) = args.conversation();
    if args.stream {
        let synapse = Synapse::new(StreamPrompting::new(roles, messages));
        let response = stream(&dendrite, &target, synapse, args).await?;
        finish(&response, args)
    } else {
        let synapse = Synapse::new(Prompting::new(roles, messages));
        let response = dendrite.call(&target, synapse, args.timeout()).await;
        if !args.json && response.is_success() {
            println!("{}", response.synapse.body.completion);
        }
        finish(&response, args)
    }
}

/// Streams the answer, printing text as it arrives unless `--json`.
async fn stream(
    dendrite: &Dendrite,
    target: &AxonTarget,
    synapse: Synapse<StreamPrompting>,
    args: &Args,
) -> anyhow::Result<DendriteResponse<StreamPrompting>> {
    let mut items = Box::pin(dendrite.call_stream(target, synapse, args.timeout()));
    let mut stdout = std::io::stdout().lock();
    let mut printed = false;
    while let Some(item) = items.next().await {
        match item {
            StreamItem::Text(text) => {
                if !args.json {
                    stdout
                        .write_all(text.as_bytes())
                        .context("cannot write to stdout")?;
                    stdout.flush().context("cannot write to stdout")?;
                    printed = true;
                }
            }
            StreamItem::Done(response) => {
                if printed {
                    writeln!(stdout).context("cannot write to stdout")?;
                }
                return Ok(*response);
            }
        }
    }
    anyhow::bail!("the stream ended without an outcome")
}

/// Prints the status (stderr) or the JSON (stdout) and picks the exit code.
fn finish<B: SynapseBody>(response: &DendriteResponse<B>, args: &Args) -> anyhow::Result<ExitCode> {
    if args.json {
        let document = response_json(response)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&document).context("cannot print the response")?
        );
    }
    if response.is_success() {
        if !args.json {
            eprintln!(
                "{} {}{}",
                response.status_code,
                response.status_message,
                timing(response)
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "dendrite: {} {}",
            response.status_code, response.status_message
        );
        Ok(ExitCode::FAILURE)
    }
}

fn timing<B>(response: &DendriteResponse<B>) -> String {
    response
        .process_time
        .map(|time| format!(" ({:.3} s)", time.as_secs_f64()))
        .unwrap_or_default()
}

/// The response as one JSON document.
fn response_json<B: SynapseBody>(response: &DendriteResponse<B>) -> anyhow::Result<Value> {
    let synapse: Value =
        serde_json::from_str(&response.synapse.to_json()).context("cannot encode the synapse")?;
    Ok(json!({
        "status_code": response.status_code,
        "status_message": response.status_message,
        "process_time": response.process_time.map(|time| time.as_secs_f64()),
        "axon_signature_verified": response.axon_signature_verified,
        "failure": response.failure.as_ref().map(ToString::to_string),
        "synapse": synapse,
    }))
}
