//! Our dendrite against a real bittensor 10.5 `Axon` (pinned venv) serving text-prompting's
//! synapses: success, unicode, the axon's own refusals, client-side timeouts, fan-out and
//! streaming. Fails (does not skip) when the venv is missing.

use crate::dendrite_support;

use std::time::{Duration, Instant};

use dendrite_support::key;
use dendrite_support::python_axon::{PythonAxon, free_port};
use futures::StreamExt;
use prompting_synapse::{Prompting, StreamPrompting, Synapse};
use prompting_transport::dendrite::{AxonTarget, CallFailure, Dendrite, StreamItem};

fn prompting(roles: &[&str], messages: &[&str]) -> Synapse<Prompting> {
    Synapse::new(Prompting::new(
        roles.iter().map(|r| (*r).to_owned()).collect(),
        messages.iter().map(|m| (*m).to_owned()).collect(),
    ))
}

fn streaming(message: &str) -> Synapse<StreamPrompting> {
    Synapse::new(StreamPrompting::new(
        vec!["user".into()],
        vec![message.to_owned()],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_axon_answers_our_dendrite() {
    let blocked = key("coldkey");
    let axon = PythonAxon::start(&blocked.ss58_address());
    let miner = key("miner_hotkey").ss58_address();
    let target = AxonTarget::new(axon.addr, miner.clone());
    let dendrite = Dendrite::builder(key("validator_hotkey"))
        .external_ip("127.0.0.1")
        .build()
        .expect("dendrite");
    let five = Duration::from_secs(5);

    // Success.
    let response = dendrite
        .call(
            &target,
            prompting(
                &["system", "user"],
                &["You are helpful.", "What is the capital of France?"],
            ),
            five,
        )
        .await;
    assert_eq!(
        (response.status_code, response.status_message.as_str()),
        (200, "Success"),
        "{response:?}\n{}",
        axon.stderr_tail()
    );
    assert_eq!(
        response.synapse.body.completion,
        "echo: What is the capital of France?"
    );
    assert_eq!(response.synapse.axon.status_code, Some(200));
    assert_eq!(
        response.synapse.body.messages,
        ["You are helpful.", "What is the capital of France?"]
    );
    assert!(response.process_time.is_some());
    assert_eq!(response.failure, None);
    // 10.5 does not sign its success responses.
    assert_eq!(response.axon_signature_verified, None);

    // Unicode, quotes, newlines, controls and backslashes round trip (and hash as Python).
    let tricky = "é 🙂 \"quoted\" it's\nnewline\ttab \\ back \u{7} bell \u{200b}";
    let response = dendrite
        .call(&target, prompting(&["user"], &[tricky]), five)
        .await;
    assert_eq!(response.status_code, 200, "{response:?}");
    assert_eq!(response.synapse.body.completion, format!("echo: {tricky}"));

    // A request signed for another axon's hotkey: the axon verifies with its own hotkey.
    let wrong_target = AxonTarget::new(axon.addr, key("validator_hotkey").ss58_address());
    let response = dendrite
        .call(&wrong_target, prompting(&["user"], &["hi"]), five)
        .await;
    assert_eq!(response.status_code, 401, "{response:?}");
    assert!(
        response
            .status_message
            .starts_with("Not Verified with error: Signature mismatch with "),
        "{}",
        response.status_message
    );
    // Its (signed) refusal is checked against the hotkey we meant to call.
    assert_eq!(response.axon_signature_verified, Some(false));

    // The blacklisted hotkey: Python's refusal, signed by the axon.
    let outsider = Dendrite::builder(blocked)
        .external_ip("127.0.0.1")
        .build()
        .expect("dendrite");
    let response = outsider
        .call(&target, prompting(&["user"], &["hi"]), five)
        .await;
    assert_eq!(
        (response.status_code, response.status_message.as_str()),
        (403, "Forbidden. Key is blacklisted: hotkey not registered."),
        "{response:?}"
    );
    assert_eq!(response.synapse.axon.status_code, Some(403));
    assert_eq!(response.synapse.body.completion, "");
    assert_eq!(response.axon_signature_verified, Some(true));

    // A client-side timeout: the forward sleeps 3 s, we wait 1 s.
    let started = Instant::now();
    let response = dendrite
        .call(
            &target,
            prompting(&["user"], &["sleep"]),
            Duration::from_secs(1),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(
        (response.status_code, response.status_message.as_str()),
        (408, "Request timeout after 1.0 seconds"),
        "{response:?}"
    );
    assert_eq!(
        response.failure,
        Some(CallFailure::Timeout { seconds: 1.0 })
    );
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(2_500),
        "{waited:?}"
    );
    assert_eq!(response.synapse.axon.status_code, None);
    assert_eq!(response.process_time, None);

    // The next call is not handed the stale answer of the timed-out one.
    let response = dendrite
        .call(&target, prompting(&["user"], &["after the timeout"]), five)
        .await;
    assert_eq!(response.status_code, 200, "{response:?}");
    assert_eq!(response.synapse.body.completion, "echo: after the timeout");

    // Fan-out: order kept, a closed port reported as Python does. The live axon appears
    // once: two calls of one dendrite to one axon in flight at once may reach it out of
    // nonce order, and the axon then refuses the older ("a newer one was last processed"),
    // as it would a Python dendrite's.
    let closed_port = free_port();
    let closed = AxonTarget::new(([127, 0, 0, 1], closed_port).into(), miner.clone());
    let targets = [closed, target.clone()];
    let responses = dendrite
        .query_many(&targets, &prompting(&["user"], &["fan-out"]), five)
        .await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status_code).collect();
    assert_eq!(statuses, [503, 200], "{responses:?}");
    assert_eq!(
        responses[0].status_message,
        format!("Service unavailable at 127.0.0.1:{closed_port}/Prompting")
    );
    assert!(
        responses
            .iter()
            .filter(|r| r.is_success())
            .all(|r| r.synapse.body.completion == "echo: fan-out")
    );

    // Streaming: the text arrives in pieces (multi-byte characters split by the axon), and
    // the completion accumulates.
    let message = "héllo 🙂 wörld";
    let items: Vec<StreamItem> = dendrite
        .call_stream(&target, streaming(message), five)
        .collect()
        .await;
    let (done, texts) = items.split_last().expect("at least the outcome");
    let StreamItem::Done(done) = done else {
        panic!("the last item is the outcome: {items:?}")
    };
    let text: String = texts
        .iter()
        .map(|item| match item {
            StreamItem::Text(text) => text.as_str(),
            StreamItem::Done(_) => panic!("Done before the end: {items:?}"),
        })
        .collect();
    assert_eq!(done.status_code, 200, "{done:?}\n{}", axon.stderr_tail());
    assert_eq!(text, format!("echo: {message}"));
    assert!(texts.len() > 1, "streamed in pieces: {texts:?}");
    assert_eq!(done.synapse.body.completion, format!("echo: {message}"));

    // A stalled stream ends at the deadline, keeping what arrived.
    let items: Vec<StreamItem> = dendrite
        .call_stream(&target, streaming("slow-stream"), Duration::from_secs(1))
        .collect()
        .await;
    let Some(StreamItem::Done(done)) = items.last() else {
        panic!("the last item is the outcome: {items:?}")
    };
    assert_eq!(
        (done.status_code, done.status_message.as_str()),
        (408, "Request timeout after 1.0 seconds")
    );
    assert_eq!(done.synapse.body.completion, "partial");

    // A refused stream: no text, the axon's status.
    let items: Vec<StreamItem> = outsider
        .call_stream(&target, streaming("hi"), five)
        .collect()
        .await;
    assert_eq!(items.len(), 1, "{items:?}");
    let StreamItem::Done(done) = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        (done.status_code, done.status_message.as_str()),
        (403, "Forbidden. Key is blacklisted: hotkey not registered.")
    );
}
