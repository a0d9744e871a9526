//! Running a call and printing its outcome.

use std::io::Write;

use anyhow::Context;
use futures::StreamExt;
use prompting_keys::Keypair;
use prompting_synapse::{Prompting, StreamPrompting, Synapse, SynapseBody};
use prompting_transport::btauth::BtAuthSigner;
use prompting_transport::dendrite::{
    AxonTarget, BtAuthClient, Dendrite, DendriteResponse, StreamItem,
};
use prompting_transport::grpc::GrpcClient;
use prompting_transport::nonce::NonceSource;
use reqwest::Method;
use serde_json::{Value, json};

use prompting_cli::Failure;

use crate::cli::Args;

/// The outcome of a call: `Ok` when the axon answered 200.
pub type Outcome = Result<(), Failure>;

/// A local failure (stdout, client set-up): the environment's.
fn local(error: anyhow::Error) -> Failure {
    Failure::runtime(error)
}

/// Calls the axon with the legacy protocol and prints the outcome.
pub async fn run_legacy(args: &Args, keypair: Keypair) -> Outcome {
    let dendrite = Dendrite::new(keypair)
        .context("cannot create the dendrite")
        .map_err(local)?;
    let target = AxonTarget::new(args.axon, args.axon_hotkey.clone());
    let (roles, messages) = args.conversation();
    if args.stream {
        let synapse = Synapse::new(StreamPrompting::new(roles, messages));
        let response = stream(&dendrite, &target, synapse, args)
            .await
            .map_err(local)?;
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

/// Calls the axon with btauth/1-signed JSON and prints the completion.
pub async fn run_btauth(args: &Args, keypair: Keypair) -> Outcome {
    if args.stream {
        return Err(Failure::usage("--stream needs --protocol legacy or grpc"));
    }
    let client = BtAuthClient::new(keypair)
        .context("cannot create the btauth/1 client")
        .map_err(local)?;
    let target = AxonTarget::new(args.axon, args.axon_hotkey.clone());
    let (roles, messages) = args.conversation();
    let outcome = client
        .prompt(&target, roles, messages, args.timeout())
        .await
        .map_err(|error| (error.status_code(), error.to_string()));
    simple_outcome(outcome, args)
}

/// Calls the axon's gRPC service (btauth/1 in the metadata) and prints the completion.
pub async fn run_grpc(args: &Args, keypair: Keypair) -> Outcome {
    let client = GrpcClient::connect(&args.axon.to_string(), keypair, args.axon_hotkey.clone())
        .await
        .context("cannot connect over gRPC")
        .map_err(local)?;
    let (roles, messages) = args.conversation();
    if !args.stream {
        let outcome = client
            .prompt(roles, messages, args.timeout())
            .await
            .map_err(|error| (grpc_status(&error), error.to_string()));
        return simple_outcome(outcome, args);
    }
    let mut chunks = match client.prompt_stream(roles, messages, args.timeout()).await {
        Ok(chunks) => chunks,
        Err(error) => return simple_outcome(Err((grpc_status(&error), error.to_string())), args),
    };
    let mut stdout = std::io::stdout().lock();
    let mut completion = String::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(text) => {
                if !args.json {
                    write_now(&mut stdout, &text).map_err(local)?;
                }
                completion.push_str(&text);
            }
            Err(error) => {
                return simple_outcome(Err((grpc_status(&error), error.to_string())), args);
            }
        }
    }
    if !args.json {
        writeln!(stdout)
            .context("cannot write to stdout")
            .map_err(local)?;
        drop(stdout);
        eprintln!("200 Success");
        return Ok(());
    }
    drop(stdout);
    simple_outcome(Ok(completion), args)
}

/// The HTTP-like status of a gRPC failure, by the axon's mapping.
fn grpc_status(error: &prompting_transport::grpc::GrpcClientError) -> u16 {
    use tonic::Code;
    match error.code() {
        Some(Code::InvalidArgument) => 400,
        Some(Code::Unauthenticated) => 401,
        Some(Code::PermissionDenied) => 403,
        Some(Code::DeadlineExceeded) => 408,
        Some(Code::ResourceExhausted | Code::Unavailable) => 503,
        _ => 500,
    }
}

/// The OpenAI route the axon serves, also the btauth/1-signed target.
const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// Calls the axon's OpenAI-compatible route, signed with btauth/1, and prints the completion
/// (streamed from its server-sent events with `--stream`).
pub async fn run_openai(args: &Args, keypair: Keypair) -> Outcome {
    let (roles, messages) = args.conversation();
    let messages: Vec<Value> = roles
        .iter()
        .zip(&messages)
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let body = json!({
        "model": "prompting",
        "messages": messages,
        "stream": args.stream,
        "timeout": args.timeout,
    })
    .to_string()
    .into_bytes();
    let signer = BtAuthSigner::new(keypair, NonceSource::new());
    let headers = signer
        .sign(
            &Method::POST,
            CHAT_COMPLETIONS,
            &body,
            Some(&args.axon_hotkey),
        )
        .context("cannot sign the request")
        .map_err(local)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(args.timeout())
        .build()
        .context("cannot create the HTTP client")
        .map_err(local)?;
    let url = format!("http://{}{CHAT_COMPLETIONS}", args.axon);
    let response = http
        .post(&url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|error| Failure::runtime(format!("cannot reach {url}: {error}")))?;
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return simple_outcome(Err((status, message)), args);
    }
    if !args.stream {
        let value: Value = response
            .json()
            .await
            .context("the answer is not JSON")
            .map_err(local)?;
        let completion = value["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| Failure::runtime("the answer has no choices[0].message.content"))?;
        return simple_outcome(Ok(completion.to_owned()), args);
    }
    let completion = openai_events(response, args).await?;
    if args.json {
        return simple_outcome(Ok(completion), args);
    }
    eprintln!("200 Success");
    Ok(())
}

/// Reads OpenAI's server-sent events up to `data: [DONE]`, printing each `delta.content` as it
/// arrives unless `--json`; the whole completion.
async fn openai_events(response: reqwest::Response, args: &Args) -> Result<String, Failure> {
    let mut bytes = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut completion = String::new();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = bytes.next().await {
        let chunk =
            chunk.map_err(|error| Failure::runtime(format!("the stream broke: {error}")))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                if !args.json {
                    writeln!(stdout)
                        .context("cannot write to stdout")
                        .map_err(local)?;
                }
                return Ok(completion);
            }
            let event: Value = serde_json::from_str(data)
                .map_err(|error| Failure::runtime(format!("an event is not JSON: {error}")))?;
            if let Some(message) = event["error"]["message"].as_str() {
                return Err(Failure::runtime(format!("the stream failed: {message}")));
            }
            if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
                if !args.json {
                    write_now(&mut stdout, text).map_err(local)?;
                }
                completion.push_str(text);
            }
        }
    }
    Err(Failure::runtime("the stream ended without data: [DONE]"))
}

/// Writes `text` to stdout at once.
fn write_now(stdout: &mut impl Write, text: &str) -> anyhow::Result<()> {
    stdout
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")
}

/// Prints a completion or a failure of the btauth/1 and gRPC protocols.
fn simple_outcome(outcome: Result<String, (u16, String)>, args: &Args) -> Outcome {
    match outcome {
        Ok(completion) => {
            if args.json {
                let document = json!({"status_code": 200, "completion": completion});
                println!(
                    "{}",
                    serde_json::to_string_pretty(&document)
                        .context("cannot print the response")
                        .map_err(local)?
                );
            } else {
                println!("{completion}");
                eprintln!("200 Success");
            }
            Ok(())
        }
        Err((status, message)) => {
            if args.json {
                println!(
                    "{}",
                    json!({"status_code": status, "status_message": message})
                );
            }
            Err(Failure::runtime(format!("{status} {message}")))
        }
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
                    write_now(&mut stdout, &text)?;
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

/// Prints the status (stderr) or the JSON (stdout); a failure unless the axon answered 200.
fn finish<B: SynapseBody>(response: &DendriteResponse<B>, args: &Args) -> Outcome {
    if args.json {
        let document = response_json(response).map_err(local)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&document)
                .context("cannot print the response")
                .map_err(local)?
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
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "{} {}",
            response.status_code, response.status_message
        )))
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
