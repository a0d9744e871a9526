//! Sends signed `Prompting` requests (legacy synapse, or btauth/1 with `--protocol btauth`)
//! to one axon, from many hotkeys, closed-loop
//! (`--concurrency`) or at a fixed rate (`--rate`), bounded in count and time, and reports
//! throughput, latency percentiles and status counts as text and JSON. Loopback only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use parking_lot::Mutex;
use prompting_benches::{Percentiles, hotkeys};
use prompting_synapse::{Prompting, Synapse};
use prompting_transport::dendrite::{AxonTarget, BtAuthClient, Dendrite};

#[derive(Parser, Clone)]
struct Args {
    /// The axon, ip:port (must be a loopback address).
    #[arg(long)]
    target: SocketAddr,
    /// The axon's hotkey (SS58).
    #[arg(long)]
    axon_hotkey: String,
    /// Client hotkeys to spread requests over.
    #[arg(long, default_value_t = 16)]
    hotkeys: usize,
    /// Index of the first client key in the shared key list (key 0 is the echo-server's).
    #[arg(long, default_value_t = 1)]
    key_offset: usize,
    /// Requests in flight at once (closed loop). Ignored with --rate.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests per second (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: seconds each worker waits after an answer before its next request (a
    /// validator's time between questions; workers that start together then ask in rounds
    /// with the server idle between them). 0: none.
    #[arg(long, default_value_t = 0.0)]
    think: f64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 12.0)]
    timeout: f64,
    /// Wire protocol: `legacy` (bittensor 6.x–10.x synapse) or `btauth` (bittensor 11).
    #[arg(long, value_enum, default_value_t = Wire::Legacy)]
    protocol: Wire,
    /// Pad the user message to this many bytes (longer prompts for model backends).
    #[arg(long, default_value_t = 0)]
    message_bytes: usize,
    /// Start each user message with a context of this many bytes, the same for every
    /// request of a hotkey and different between hotkeys (a validator asking about the same
    /// text again, as validators ask a follow-up and an answer of one context): what a
    /// miner's prefix reuse serves. 0: none.
    #[arg(long, default_value_t = 0)]
    shared_context_bytes: usize,
    /// Continue a conversation per hotkey: each request sends the hotkey's earlier
    /// questions and the miner's answers (roles `user`, `assistant`) before its question,
    /// up to this many earlier turns, then a new conversation starts (a validator's
    /// follow-up about an answer: what a miner's prefix reuse of answers serves). 0: none.
    #[arg(long, default_value_t = 0)]
    conversation_turns: usize,
    /// Label printed with the results.
    #[arg(long, default_value = "run")]
    label: String,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Wire {
    Legacy,
    Btauth,
}

/// One signing client per hotkey, speaking the chosen protocol.
enum Client {
    Legacy(Dendrite),
    Btauth(Box<BtAuthClient>),
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Bytes of the successful completions.
    completion_bytes: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

#[derive(serde::Serialize)]
struct Report {
    label: String,
    mode: String,
    requests: u64,
    elapsed_s: f64,
    throughput_rps: f64,
    success_rate: f64,
    /// Mean completion length of the successful answers, bytes.
    mean_completion_bytes: f64,
    latency_ok: Option<Percentiles>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        bail!("--target must be a loopback address, got {}", args.target);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run(args))
}

/// What a request asks: its number, the bytes of its message, and the bytes of the context
/// its hotkey's messages share.
#[derive(Clone, Copy)]
struct Ask {
    n: u64,
    message_bytes: usize,
    context_bytes: usize,
}

impl Ask {
    /// The user message of request `n` sent by hotkey `key`: the hotkey's context, if any,
    /// then the question.
    fn message(&self, key: usize) -> String {
        let question = question(self.n, self.message_bytes);
        if self.context_bytes == 0 {
            return question;
        }
        format!("{}\n{question}", context(key, self.context_bytes))
    }
}

/// Each hotkey's conversation so far (its questions and the answers), when requests continue
/// one (`--conversation-turns`).
struct Conversations {
    turns: usize,
    so_far: Mutex<HashMap<usize, Vec<(String, String)>>>,
}

impl Conversations {
    /// The roles and messages of hotkey `key`'s next request, asking `question` after its
    /// conversation so far (a new one after a request that sent `turns` earlier turns).
    fn request(&self, key: usize, question: String) -> (Vec<String>, Vec<String>) {
        let mut roles = vec!["system".to_string()];
        let mut messages = vec!["You are helpful.".to_string()];
        let mut so_far = self.so_far.lock();
        let turns = so_far.entry(key).or_default();
        if turns.len() > self.turns {
            turns.clear();
        }
        for (q, a) in turns.iter() {
            roles.extend(["user".to_string(), "assistant".to_string()]);
            messages.extend([q.clone(), a.clone()]);
        }
        roles.push("user".to_string());
        messages.push(question);
        (roles, messages)
    }

    /// Records hotkey `key`'s turn: `question` answered with `answer`.
    fn answered(&self, key: usize, question: String, answer: String) {
        if self.turns > 0 {
            self.so_far
                .lock()
                .entry(key)
                .or_default()
                .push((question, answer));
        }
    }
}

/// A context of `bytes` bytes that starts with hotkey `key`'s number.
fn context(key: usize, bytes: usize) -> String {
    let mut c = format!("Context of validator {key}:");
    const WORDS: [&str; 8] = [
        " The",
        " river",
        " crossed",
        " seven",
        " valleys",
        " before",
        " reaching",
        " sea.",
    ];
    let mut i = 0;
    while c.len() < bytes {
        c.push_str(WORDS[i % WORDS.len()]);
        i += 1;
    }
    c
}

/// The user message of request `n`, padded with words to `bytes` bytes.
fn question(n: u64, bytes: usize) -> String {
    let mut q = format!("Question number {n}?");
    const FILLER: [&str; 8] = [
        " Please", " answer", " with", " care", " and", " some", " detail", ".",
    ];
    let mut i = 0;
    while q.len() < bytes {
        q.push_str(FILLER[i % FILLER.len()]);
        i += 1;
    }
    q
}

async fn one_call(
    client: &Client,
    key: usize,
    target: &AxonTarget,
    timeout: Duration,
    ask: Ask,
    tally: &Mutex<Tally>,
    conversations: &Conversations,
) {
    let question = ask.message(key);
    let (roles, messages) = conversations.request(key, question.clone());
    let started = Instant::now();
    let (status, error, completion) = match client {
        Client::Legacy(dendrite) => {
            let synapse = Synapse::new(Prompting::new(roles, messages));
            let response = dendrite.call(target, synapse, timeout).await;
            // A refusal the axon answered (no call failure) is tallied by its message.
            let error = match response.failure {
                Some(failure) => Some(failure.to_string()),
                None if response.status_code != 200 => Some(format!(
                    "{} {}",
                    response.status_code, response.status_message
                )),
                None => None,
            };
            (
                response.status_code,
                error,
                response.synapse.body.completion,
            )
        }
        Client::Btauth(client) => match client.prompt(target, roles, messages, timeout).await {
            Ok(completion) => (200, None, completion),
            Err(error) => (error.status_code(), Some(error.to_string()), String::new()),
        },
    };
    let elapsed = started.elapsed();
    let bytes = completion.len() as u64;
    if status == 200 {
        conversations.answered(key, question, completion);
    }
    let mut tally = tally.lock();
    *tally.statuses.entry(status).or_default() += 1;
    if status == 200 {
        tally.latencies.push(elapsed);
        tally.completion_bytes += bytes;
    } else if let Some(error) = error {
        *tally.errors.entry(error).or_default() += 1;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.think.is_finite() && args.think >= 0.0) {
        bail!(
            "--think must be a number of seconds, 0 or more (got {})",
            args.think
        );
    }
    let keys = hotkeys(args.key_offset + args.hotkeys.max(1));
    let dendrites: Vec<Arc<Client>> = keys[args.key_offset..]
        .iter()
        .map(|k| match args.protocol {
            Wire::Legacy => Dendrite::new(k.clone()).map(|d| Arc::new(Client::Legacy(d))),
            Wire::Btauth => {
                BtAuthClient::new(k.clone()).map(|c| Arc::new(Client::Btauth(Box::new(c))))
            }
        })
        .collect::<Result<_, _>>()
        .context("client")?;
    let target = Arc::new(AxonTarget::new(args.target, args.axon_hotkey.clone()));
    let timeout = Duration::from_secs_f64(args.timeout);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let conversations = Arc::new(Conversations {
        turns: args.conversation_turns,
        so_far: Mutex::new(HashMap::new()),
    });
    let stop_at = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next = {
        let issued = issued.clone();
        let limit = args.requests;
        move || {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (n < limit && Instant::now() < stop_at).then_some(n)
        }
    };
    let mode;
    if let Some(rate) = args.rate {
        mode = format!("open loop at {rate} req/s");
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        // tokio's timer has 1 ms resolution: at thousands of requests per second its ticks
        // release requests in bursts, which shows up as the server's tail latency. A pacing
        // thread with the OS's high-resolution sleep releases them evenly.
        let (release, mut released) = tokio::sync::mpsc::unbounded_channel();
        let pacer = std::thread::spawn(move || {
            let start = Instant::now();
            let mut due = start;
            while let Some(n) = next() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if release.send(n).is_err() {
                    break;
                }
                due += interval;
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(n) = released.recv().await {
            let key = n as usize % dendrites.len();
            let dendrite = dendrites[key].clone();
            let (target, tally, talks) = (target.clone(), tally.clone(), conversations.clone());
            let ask = Ask {
                n,
                message_bytes: args.message_bytes,
                context_bytes: args.shared_context_bytes,
            };
            tasks.spawn(async move {
                one_call(&dendrite, key, &target, timeout, ask, &tally, &talks).await
            });
        }
        if pacer.join().is_err() {
            bail!("the pacing thread panicked");
        }
        while tasks.join_next().await.is_some() {}
    } else {
        mode = if args.think > 0.0 {
            format!(
                "closed loop, {} in flight, {} s between an answer and the next request",
                args.concurrency, args.think
            )
        } else {
            format!("closed loop, {} in flight", args.concurrency)
        };
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency.max(1) {
            let (dendrites, target, tally, next, talks) = (
                dendrites.clone(),
                target.clone(),
                tally.clone(),
                next.clone(),
                conversations.clone(),
            );
            let (message_bytes, context_bytes) = (args.message_bytes, args.shared_context_bytes);
            let think = Duration::from_secs_f64(args.think.max(0.0));
            workers.spawn(async move {
                let mut first = true;
                while let Some(n) = next() {
                    if !first && !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                    first = false;
                    let key = n as usize % dendrites.len();
                    let ask = Ask {
                        n,
                        message_bytes,
                        context_bytes,
                    };
                    one_call(&dendrites[key], key, &target, timeout, ask, &tally, &talks).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = Arc::try_unwrap(tally)
        .map(Mutex::into_inner)
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.lock()));
    let requests: u64 = tally.statuses.values().sum();
    let ok = tally.statuses.get(&200).copied().unwrap_or(0);
    let report = Report {
        label: args.label.clone(),
        mode,
        requests,
        elapsed_s: elapsed,
        throughput_rps: ok as f64 / elapsed,
        success_rate: if requests == 0 {
            0.0
        } else {
            ok as f64 / requests as f64
        },
        mean_completion_bytes: if ok == 0 {
            0.0
        } else {
            tally.completion_bytes as f64 / ok as f64
        },
        latency_ok: Percentiles::of(&mut tally.latencies),
        statuses: tally.statuses,
        errors: tally.errors,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn print_report(report: &Report) {
    println!("== {} ({})", report.label, report.mode);
    println!(
        "requests {}  elapsed {:.2}s  ok/s {:.1}  success {:.2}%",
        report.requests,
        report.elapsed_s,
        report.throughput_rps,
        report.success_rate * 100.0
    );
    if let Some(p) = &report.latency_ok {
        println!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
        );
    }
    println!(
        "statuses {:?}  mean completion {:.0} bytes",
        report.statuses, report.mean_completion_bytes
    );
    if !report.errors.is_empty() {
        println!("errors {:?}", report.errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_sends_its_earlier_turns_then_starts_anew() {
        let talks = Conversations {
            turns: 2,
            so_far: Mutex::new(HashMap::new()),
        };
        let ask = |key, q: &str| talks.request(key, q.to_string());
        assert_eq!(ask(3, "q1").1, ["You are helpful.", "q1"]);
        talks.answered(3, "q1".into(), "a1".into());
        talks.answered(3, "q2".into(), "a2".into());
        let (roles, messages) = ask(3, "q3");
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "user"]
        );
        assert_eq!(messages, ["You are helpful.", "q1", "a1", "q2", "a2", "q3"]);
        // Another hotkey has its own; after two earlier turns a new conversation starts.
        assert_eq!(ask(4, "x").1, ["You are helpful.", "x"]);
        talks.answered(3, "q3".into(), "a3".into());
        assert_eq!(ask(3, "q4").1, ["You are helpful.", "q4"]);
        // Without turns nothing is kept.
        let none = Conversations {
            turns: 0,
            so_far: Mutex::new(HashMap::new()),
        };
        none.answered(1, "q".into(), "a".into());
        assert_eq!(none.request(1, "r".into()).0, ["system", "user"]);
    }
}
