//! `prompt_stream` against a local chat-completions server speaking server-sent events.

mod support;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::StreamExt;
use prompting_miner::{Miner, MinerError, TextStream, TokenUsage};
use prompting_openai_backend::OpenAiBackend;
use serde_json::json;
use support::*;

const KEY: &str = "sk-stream-key-77";

async fn collect(stream: TextStream) -> Vec<Result<String, MinerError>> {
    stream.collect().await
}

/// `backend.prompt_stream` of a one-message prompt with a 10 s deadline: how every test but the
/// deadline and report ones asks.
async fn ask(backend: &OpenAiBackend) -> Result<TextStream, MinerError> {
    backend
        .prompt_stream(&prompt(Duration::from_secs(10)))
        .await
}

/// What [`ask`] yields from a stream that must start.
async fn streamed(backend: &OpenAiBackend) -> Vec<Result<String, MinerError>> {
    collect(ask(backend).await.expect("stream starts")).await
}

/// What `prompt_stream` yields (10 s deadline) when one upstream answers at once with the SSE
/// `chunks`, the backend holding `key` if given.
async fn stream_of(chunks: Vec<String>, key: Option<&str>) -> Vec<Result<String, MinerError>> {
    let upstream =
        MockUpstream::start(move |_, _| reply(sse_reply(chunks.clone(), Duration::ZERO))).await;
    let backend = backend(match key {
        Some(key) => args_with_key(&[&upstream.base_url], key),
        None => args(&[&upstream.base_url]),
    });
    streamed(&backend).await
}

/// An OpenAI-like stream of `pieces` for choice 0, written as raw SSE and cut into chunks at
/// awkward places (inside `data:`, inside JSON, between CR and LF).
fn awkward_sse(pieces: &[&str]) -> Vec<String> {
    let mut text = String::from(": keep-alive\r\n\r\n");
    text.push_str(&format!(
        "data: {}\r\n\r\n",
        json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]})
    ));
    for piece in pieces {
        text.push_str(&format!("data: {}\r\n\r\n", delta(0, piece)));
        // A second choice (n = 2) interleaves and must be ignored.
        text.push_str(&format!("data:{}\n\n", delta(1, "IGNORED")));
    }
    text.push_str(&format!("data: {}\n\n", finish()));
    text.push_str("data: [DONE]\n\n");
    let bytes = text.into_bytes();
    // Cut at every 7th byte, always on a char boundary (the text is ASCII apart from JSON
    // escapes, which serde_json writes as ASCII too).
    bytes
        .chunks(7)
        .map(|chunk| String::from_utf8(chunk.to_vec()).expect("ASCII chunk"))
        .collect()
}

#[tokio::test]
async fn stream_yields_the_deltas_of_the_first_choice() {
    let upstream = MockUpstream::start(|_, _| {
        reply(sse_reply(
            awkward_sse(&["Hel", "lo", ", wor", "ld!"]),
            Duration::from_millis(1),
        ))
    })
    .await;
    let backend = backend(args_with_key(&[&upstream.base_url], KEY));

    let items = streamed(&backend).await;

    assert_eq!(
        items,
        vec![
            Ok("Hel".to_owned()),
            Ok("lo".to_owned()),
            Ok(", wor".to_owned()),
            Ok("ld!".to_owned())
        ]
    );
    let sent = &upstream.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("authorization"), Some("Bearer sk-stream-key-77"));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("accept"), Some("text/event-stream"));
    assert_eq!(sent.body["stream"], json!(true));
    assert_eq!(sent.body["model"], json!("gpt-3.5-turbo"));
    assert_eq!(sent.body["max_tokens"], json!(100));
}

#[tokio::test]
async fn stream_setup_is_retried_on_server_errors() {
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit < 2 {
            api_error(StatusCode::SERVICE_UNAVAILABLE, "warming up")
        } else {
            sse_reply(awkward_sse(&["third ", "time"]), Duration::ZERO)
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    assert_eq!(
        streamed(&backend).await,
        vec![Ok("third ".to_owned()), Ok("time".to_owned())]
    );
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn stream_refused_upstream_fails_before_streaming() {
    let upstream =
        MockUpstream::start(|_, _| reply(api_error(StatusCode::UNAUTHORIZED, "Invalid token")))
            .await;
    let backend = backend(args_with_key(&[&upstream.base_url], KEY));

    let result = ask(&backend).await;

    assert_eq!(
        result.err(),
        Some(MinerError::Backend(
            "upstream returned 401 Unauthorized: Invalid token".into()
        ))
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn stream_past_the_deadline_ends_with_a_timeout() {
    let upstream = MockUpstream::start(|_, _| {
        reply(sse_reply(
            vec![
                format!("data: {}\n\n", delta(0, "Hel")),
                format!("data: {}\n\n", delta(0, "lo")),
            ],
            Duration::from_secs(10),
        ))
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let started = Instant::now();
    let stream = backend
        .prompt_stream(&prompt(Duration::from_millis(500)))
        .await
        .expect("stream starts");
    let items = collect(stream).await;

    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Ok("Hel".to_owned()));
    assert!(matches!(items[1], Err(MinerError::Timeout(_))), "{items:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn stream_stalled_longer_than_the_timeout_is_an_error() {
    let upstream = MockUpstream::start(|_, _| {
        reply(sse_reply(
            vec![
                format!("data: {}\n\n", delta(0, "Hel")),
                format!("data: {}\n\n", delta(0, "lo")),
            ],
            Duration::from_secs(10),
        ))
    })
    .await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        timeout: 0.3,
        ..args(&[&upstream.base_url])
    });

    let items = streamed(&backend).await;

    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        matches!(&items[1], Err(MinerError::Backend(m)) if m.starts_with("the upstream stream stalled")),
        "{items:?}"
    );
}

#[tokio::test]
async fn stream_cut_before_done_is_an_error() {
    let items = stream_of(vec![format!("data: {}\n\n", delta(0, "partial"))], None).await;

    assert_eq!(
        items,
        vec![
            Ok("partial".to_owned()),
            Err(MinerError::Backend(
                "the upstream stream ended before [DONE]".into()
            ))
        ]
    );
}

#[tokio::test]
async fn stream_finished_without_done_or_final_blank_line_is_accepted() {
    let items = stream_of(
        vec![
            format!("data: {}\n\n", delta(0, "all")),
            format!("data: {}", finish()),
        ],
        None,
    )
    .await;

    assert_eq!(items, vec![Ok("all".to_owned())]);
}

#[tokio::test]
async fn stream_error_object_is_reported_without_the_key() {
    let items = stream_of(
        vec![
            format!("data: {}\n\n", delta(0, "so far")),
            format!(
                "data: {}\n\n",
                json!({"error": {"message": format!("engine died (key {KEY})")}})
            ),
            "data: [DONE]\n\n".to_owned(),
        ],
        Some(KEY),
    )
    .await;

    assert_eq!(
        items,
        vec![
            Ok("so far".to_owned()),
            Err(MinerError::Backend(
                "the upstream stream failed: engine died (key <redacted>)".into()
            ))
        ]
    );
}

/// llama-cpp-python's answer to a prompt longer than its context, raw.
fn context_overflow() -> Vec<u8> {
    raw_json(
        "400 Bad Request",
        &json!({"error": {"message": "This model's maximum context length is 256 tokens."}}),
    )
}

/// The error `prompt_stream` (10 s deadline) fails with when one upstream always answers
/// with the SSE `chunks`, and how many calls it took.
async fn start_error(chunks: Vec<String>) -> (MinerError, usize) {
    let upstream =
        MockUpstream::start(move |_, _| reply(sse_reply(chunks.clone(), Duration::ZERO))).await;
    let backend = backend(args(&[&upstream.base_url]));
    let error = ask(&backend)
        .await
        .err()
        .expect("the stream fails before its first chunk");
    (error, upstream.hits())
}

#[tokio::test]
async fn a_malformed_chunk_before_any_text_is_retried_then_an_error() {
    let (error, hits) = start_error(vec![
        "data: {\"choices\": [\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ])
    .await;

    assert!(
        matches!(&error, MinerError::Backend(m)
            if m.starts_with("the upstream sent a malformed stream chunk")
            && m.ends_with("(gave up after 3 attempt(s))")),
        "{error:?}"
    );
    assert_eq!(hits, 3);
}

#[tokio::test]
async fn a_stream_without_any_choice_is_an_error_and_not_retried() {
    let (error, hits) = start_error(vec![
        format!("data: {}\n\n", json!({"id": "x", "choices": []})),
        "data: [DONE]\n\n".to_owned(),
    ])
    .await;

    assert_eq!(
        error,
        MinerError::Backend("the upstream stream has no choices".into())
    );
    assert_eq!(hits, 1);
}

#[tokio::test]
async fn an_error_event_with_a_client_error_code_is_a_bad_request_and_not_retried() {
    let (error, hits) = start_error(vec![format!(
        "data: {}\n\n",
        json!({"error": {"message": "prompt too long", "type": "BadRequestError", "code": 400}})
    )])
    .await;

    assert_eq!(
        error,
        MinerError::BadRequest("the upstream stream failed: prompt too long".into())
    );
    assert_eq!(hits, 1);
}

#[tokio::test]
async fn a_stream_breaking_off_before_its_first_chunk_is_retried() {
    // D5: the upstream opens the stream, then closes it before any text (once).
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit == 0 {
            sse_reply(
                vec![format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                )],
                Duration::ZERO,
            )
        } else {
            sse_reply(awkward_sse(&["second ", "try"]), Duration::ZERO)
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    assert_eq!(
        streamed(&backend).await,
        vec![Ok("second ".to_owned()), Ok("try".to_owned())]
    );
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn an_empty_event_stream_is_asked_again_without_streaming_to_learn_why() {
    // llama.cpp's Python server answers a prompt longer than its context with 200 and an
    // empty event stream when streaming, and with 400 and the reason otherwise.
    let upstream = MockUpstream::start(|_, body| {
        reply(if body["stream"] == json!(true) {
            sse_reply(Vec::new(), Duration::ZERO)
        } else {
            api_error(
                StatusCode::BAD_REQUEST,
                "This model's maximum context length is 256 tokens.",
            )
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let error = ask(&backend).await.err();

    assert_eq!(
        error,
        Some(MinerError::BadRequest(
            "upstream returned 400 Bad Request: This model's maximum context length is 256 tokens."
                .into()
        ))
    );
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["stream"], json!(true));
    assert!(requests[1].body.get("stream").is_none());
    assert!(requests[1].body.get("stream_options").is_none());
}

#[tokio::test]
async fn an_event_stream_broken_before_its_first_byte_is_asked_again_without_streaming() {
    // What llama-cpp-python 0.3.36 really sends for a prompt longer than its context when
    // streaming: 200 and event-stream headers, then the connection closes mid-body.
    let (base_url, requests) = raw_upstream(|body, _| {
        Some(if body["stream"] == json!(true) {
            (BROKEN_SSE_HEAD.to_vec(), true)
        } else {
            (context_overflow(), true)
        })
    })
    .await;
    let backend = backend(args(&[&base_url]));

    let error = ask(&backend).await.err();

    assert_eq!(
        error,
        Some(MinerError::BadRequest(
            "upstream returned 400 Bad Request: This model's maximum context length is 256 tokens."
                .into()
        ))
    );
    let requests = requests.lock().expect("requests").clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["stream"], json!(true));
    assert!(requests[1].get("stream").is_none());
}

#[tokio::test]
async fn the_connection_an_empty_stream_came_on_may_be_dead_for_the_question_why() {
    // llama-cpp-python ends the empty stream properly, then closes the connection: the next
    // request the client sends on it (from its pool) gets no answer.
    let (base_url, requests) = raw_upstream(|body, n| {
        if n > 0 {
            return None;
        }
        Some(if body["stream"] == json!(true) {
            ([BROKEN_SSE_HEAD, b"0\r\n\r\n"].concat(), false)
        } else {
            (context_overflow(), true)
        })
    })
    .await;
    let backend = backend(args(&[&base_url]));

    let error = ask(&backend).await.err();

    assert_eq!(
        error,
        Some(MinerError::BadRequest(
            "upstream returned 400 Bad Request: This model's maximum context length is 256 tokens."
                .into()
        ))
    );
    let requests = requests.lock().expect("requests").clone();
    let streamed: Vec<bool> = requests
        .iter()
        .map(|r| r["stream"] == json!(true))
        .collect();
    assert_eq!(
        streamed,
        [true, false, false],
        "one stream, then asked twice why"
    );
}

#[tokio::test]
async fn an_empty_event_stream_followed_by_an_answer_serves_it_as_one_chunk() {
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit == 0 {
            sse_reply(Vec::new(), Duration::ZERO)
        } else {
            completion("recovered")
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));
    let request = prompt(Duration::from_secs(10));

    let stream = backend
        .prompt_stream(&request)
        .await
        .expect("stream starts");

    assert_eq!(collect(stream).await, vec![Ok("recovered".to_owned())]);
    assert_eq!(request.report.finish_reason().as_deref(), Some("stop"));
}

#[tokio::test]
async fn finish_reason_and_usage_of_the_stream_reach_the_report() {
    let sse = vec![
        format!("data: {}\n\n", delta(0, "cut ")),
        format!("data: {}\n\n", delta(0, "short")),
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        ),
        format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})
        ),
        "data: [DONE]\n\n".to_owned(),
    ];
    let upstream =
        MockUpstream::start(move |_, _| reply(sse_reply(sse.clone(), Duration::ZERO))).await;
    let backend = backend(args(&[&upstream.base_url]));
    let request = prompt(Duration::from_secs(10));

    let stream = backend
        .prompt_stream(&request)
        .await
        .expect("stream starts");
    assert_eq!(
        collect(stream).await,
        vec![Ok("cut ".to_owned()), Ok("short".to_owned())]
    );

    assert_eq!(request.report.finish_reason().as_deref(), Some("length"));
    assert_eq!(
        request.report.usage(),
        Some(TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 2
        })
    );
    assert_eq!(
        upstream.requests()[0].body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn stream_usage_is_not_asked_when_turned_off() {
    let upstream =
        MockUpstream::start(|_, _| reply(sse_reply(awkward_sse(&["x"]), Duration::ZERO))).await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        stream_usage: false,
        ..args(&[&upstream.base_url])
    });

    assert_eq!(streamed(&backend).await, vec![Ok("x".to_owned())]);
    assert!(upstream.requests()[0].body.get("stream_options").is_none());
}

#[tokio::test]
async fn json_answer_to_a_stream_request_is_one_chunk() {
    let upstream = MockUpstream::start(|_, _| reply(completion("not streamed"))).await;
    let backend = backend(args(&[&upstream.base_url]));

    assert_eq!(
        streamed(&backend).await,
        vec![Ok("not streamed".to_owned())]
    );
}
