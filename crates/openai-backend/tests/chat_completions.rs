//! `prompt` against a local chat-completions server: the exact request sent, retries,
//! failover, deadlines and the errors the caller sees.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures::FutureExt;
use prompting_miner::{Miner, MinerError, SamplingOverrides, TokenUsage};
use serde_json::json;
use support::*;

const KEY: &str = "sk-test-4f9c2e7a1b";

#[tokio::test]
async fn success_sends_the_python_request_and_returns_the_first_choice() {
    let upstream = MockUpstream::start(|_, _| reply(completion("Hello!"))).await;
    let backend = backend(args_with_key(&[&upstream.base_url], KEY));

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(answer, Ok("Hello!".to_owned()));
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("authorization"), Some("Bearer sk-test-4f9c2e7a1b"));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("accept"), Some("application/json"));
    assert_eq!(
        sent.body,
        json!({
            "model": "gpt-3.5-turbo",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."}
            ],
            "temperature": 0.4,
            "max_tokens": 100,
            "top_p": 1.0,
            "n": 1,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.1
        })
    );
    assert_eq!(backend.name(), "gpt-3.5-turbo");
}

#[tokio::test]
async fn caller_overrides_and_configured_values_reach_the_body() {
    let upstream = MockUpstream::start(|_, _| reply(completion("ok"))).await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        model_name: "llama-3-8b".into(),
        n: 2,
        presence_penalty: -0.5,
        frequency_penalty: 0.0,
        ..args(&[&upstream.base_url])
    });
    let mut request = prompt(Duration::from_secs(10));
    request.roles.push("assistant".into()); // no message for it: dropped
    request.sampling = SamplingOverrides {
        max_tokens: Some(12),
        temperature: Some(0.0),
        top_p: Some(0.5),
    };

    assert_eq!(backend.prompt(&request).await, Ok("ok".to_owned()));

    let sent = &upstream.requests()[0];
    assert_eq!(
        sent.body,
        json!({
            "model": "llama-3-8b",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."}
            ],
            "temperature": 0.0,
            "max_tokens": 12,
            "top_p": 0.5,
            "n": 2,
            "presence_penalty": -0.5,
            "frequency_penalty": 0.0
        })
    );
    // No key configured: no authorization header at all.
    assert!(sent.headers.get("authorization").is_none());
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_retry_after_delay() {
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit == 0 {
            let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "Rate limit reached");
            response
                .headers_mut()
                .insert("retry-after", "1".parse().expect("header value"));
            response
        } else {
            completion("after the wait")
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let started = Instant::now();
    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(answer, Ok("after the wait".to_owned()));
    assert_eq!(upstream.hits(), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(waited < Duration::from_secs(8), "retried after {waited:?}");
}

#[tokio::test]
async fn server_errors_are_retried_until_the_retries_run_out() {
    let upstream = MockUpstream::start(|_, _| {
        reply(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "model crashed",
        ))
    })
    .await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        max_retries: 2,
        ..args(&[&upstream.base_url])
    });

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(
        answer,
        Err(MinerError::Backend(
            "upstream returned 500 Internal Server Error: model crashed (gave up after 3 attempt(s))"
                .into()
        ))
    );
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn zero_retries_means_one_attempt() {
    let upstream =
        MockUpstream::start(|_, _| reply(api_error(StatusCode::BAD_GATEWAY, "no worker"))).await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        max_retries: 0,
        ..args(&[&upstream.base_url])
    });

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert!(
        matches!(answer, Err(MinerError::Backend(m)) if m.contains("502 Bad Gateway: no worker"))
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn slow_answer_past_the_deadline_times_out() {
    let upstream = MockUpstream::start(|_, _| {
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            completion("too late")
        }
        .boxed()
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let started = Instant::now();
    let answer = backend.prompt(&prompt(Duration::from_millis(400))).await;

    match answer {
        Err(MinerError::Timeout(budget)) => assert!((0.3..=0.41).contains(&budget), "{budget}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(upstream.hits(), 1);
}

/// An answer of 429 asking to wait `seconds`.
fn rate_limited(seconds: &'static str) -> axum::response::Response {
    let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "slow down");
    response
        .headers_mut()
        .insert("retry-after", seconds.parse().expect("header value"));
    response
}

#[tokio::test]
async fn retry_after_past_the_deadline_is_probed_then_given_up() {
    let upstream = MockUpstream::start(|_, _| reply(rate_limited("30"))).await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        probe_interval: 0.5,
        ..args(&[&upstream.base_url])
    });

    let started = Instant::now();
    let answer = backend.prompt(&prompt(Duration::from_secs(3))).await;

    assert_eq!(
        answer,
        Err(MinerError::Overloaded(
            "upstream returned 429 Too Many Requests: slow down (gave up after 3 attempt(s))"
                .into()
        ))
    );
    // The two retries were probes, one probe interval apart, not a 30 s wait.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn one_rate_limit_does_not_black_out_a_single_upstream() {
    // D6: one `429 Retry-After: 100`, then the upstream is fine again.
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit == 0 {
            rate_limited("100")
        } else {
            completion("back")
        })
    })
    .await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        max_retries: 0,
        probe_interval: 0.2,
        ..args(&[&upstream.base_url])
    });

    let limited = backend.prompt(&prompt(Duration::from_secs(5))).await;
    assert!(
        matches!(&limited, Err(MinerError::Overloaded(m)) if m.contains("429")),
        "{limited:?}"
    );
    // The next request probes the upstream (after the probe interval) and is served; the
    // probe's success ends the cool-down, so the one after goes at once.
    assert_eq!(
        backend.prompt(&prompt(Duration::from_secs(5))).await,
        Ok("back".to_owned())
    );
    let started = Instant::now();
    assert_eq!(
        backend.prompt(&prompt(Duration::from_secs(5))).await,
        Ok("back".to_owned())
    );
    assert!(started.elapsed() < Duration::from_millis(150));
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn while_rate_limited_one_request_at_a_time_reaches_the_upstream() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, max) = (Arc::clone(&in_flight), Arc::clone(&most));
    let upstream = MockUpstream::start(move |_, _| {
        let (now, max) = (Arc::clone(&now), Arc::clone(&max));
        async move {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            rate_limited("100")
        }
        .boxed()
    })
    .await;
    let backend = Arc::new(backend(prompting_openai_backend::OpenAiArgs {
        max_retries: 0,
        probe_interval: 0.0,
        ..args(&[&upstream.base_url])
    }));
    // The first 429 starts the cool-down.
    assert!(
        backend
            .prompt(&prompt(Duration::from_secs(5)))
            .await
            .is_err()
    );

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move { backend.prompt(&prompt(Duration::from_secs(5))).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.expect("joined");
        assert!(
            matches!(&answer, Err(MinerError::Overloaded(m)) if m.contains("429")),
            "{answer:?}"
        );
    }
    // Each request probed once, one after the other.
    assert_eq!(upstream.hits(), 6);
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_validation_failure_reported_as_a_server_error_is_not_retried() {
    // What llama-cpp-python answers for an unknown role (a 500, where FastAPI would say 422).
    let upstream = MockUpstream::start(|_, _| {
        reply(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "7 validation errors:\n  {'type': 'literal_error', 'loc': ('body', 'messages', 0, 'ChatCompletionRequestSystemMessage', 'role'), 'msg': \"Input should be 'system'\", 'input': 'wizard'}",
        ))
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert!(
        matches!(&answer, Err(MinerError::BadRequest(m))
            if m.starts_with("upstream returned 500 Internal Server Error: 7 validation errors:")),
        "{answer:?}"
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn finish_reason_and_usage_of_the_answer_reach_the_report() {
    let upstream = MockUpstream::start(|_, _| {
        reply(json_reply(
            StatusCode::OK,
            json!({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "trunc"},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 35, "completion_tokens": 2, "total_tokens": 37}
            }),
        ))
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));
    let request = prompt(Duration::from_secs(10));

    assert_eq!(backend.prompt(&request).await, Ok("trunc".to_owned()));

    assert_eq!(request.report.finish_reason().as_deref(), Some("length"));
    assert_eq!(
        request.report.usage(),
        Some(TokenUsage {
            prompt_tokens: 35,
            completion_tokens: 2
        })
    );
    // Usage is asked of streams only (OpenAI refuses `stream_options` otherwise).
    assert!(upstream.requests()[0].body.get("stream_options").is_none());
}

#[tokio::test]
async fn malformed_json_is_a_backend_error_and_not_retried() {
    let upstream = MockUpstream::start(|_, _| {
        reply(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"choices\": [",
            )
                .into_response(),
        )
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert!(
        matches!(&answer, Err(MinerError::Backend(m))
            if m.starts_with("the upstream answer is not a valid chat completion")),
        "{answer:?}"
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn empty_choices_is_a_backend_error() {
    let upstream = MockUpstream::start(|_, _| {
        reply(json_reply(
            StatusCode::OK,
            json!({"id": "x", "object": "chat.completion", "choices": []}),
        ))
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(
        answer,
        Err(MinerError::Backend(
            "the upstream answer has no choices".into()
        ))
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_the_key_never_reaches_the_caller() {
    // A careless upstream that echoes the whole key back.
    let upstream = MockUpstream::start(|_, _| {
        reply(api_error(
            StatusCode::UNAUTHORIZED,
            &format!("Incorrect API key provided: {KEY}."),
        ))
    })
    .await;
    let backend = backend(args_with_key(&[&upstream.base_url], KEY));

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(
        answer,
        Err(MinerError::Backend(
            "upstream returned 401 Unauthorized: Incorrect API key provided: <redacted>.".into()
        ))
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn forbidden_and_bad_request_are_not_retried() {
    let upstream = MockUpstream::start(|hit, _| {
        reply(if hit == 0 {
            api_error(StatusCode::FORBIDDEN, "Project does not have access")
        } else {
            api_error(StatusCode::BAD_REQUEST, "maximum context length exceeded")
        })
    })
    .await;
    let backend = backend(args(&[&upstream.base_url]));

    let forbidden = backend.prompt(&prompt(Duration::from_secs(10))).await;
    let bad_request = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(
        forbidden,
        Err(MinerError::Backend(
            "upstream returned 403 Forbidden: Project does not have access".into()
        ))
    );
    assert_eq!(
        bad_request,
        Err(MinerError::BadRequest(
            "upstream returned 400 Bad Request: maximum context length exceeded".into()
        ))
    );
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn connection_refused_fails_over_to_the_next_upstream() {
    let dead = dead_base_url().await;
    let live = MockUpstream::start(|_, _| reply(completion("from the live one"))).await;
    let backend = backend(args(&[&dead, &live.base_url]));

    // The first request starts at the dead upstream.
    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(answer, Ok("from the live one".to_owned()));
    assert_eq!(live.hits(), 1);
}

#[tokio::test]
async fn all_upstreams_unreachable_is_a_backend_error() {
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        max_retries: 3,
        ..args(&[&dead_base_url().await, &dead_base_url().await])
    });

    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert!(
        matches!(&answer, Err(MinerError::Backend(m))
            if m.starts_with("could not connect to the upstream")
            && m.ends_with("(gave up after 4 attempt(s))")
            && !m.contains("127.0.0.1")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn server_errors_fail_over_and_requests_go_round_robin() {
    let broken =
        MockUpstream::start(|_, _| reply(api_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded")))
            .await;
    let healthy = MockUpstream::start(|hit, _| reply(completion(&format!("answer {hit}")))).await;
    let backend = backend(args(&[&broken.base_url, &healthy.base_url]));

    // Starts at the broken one, fails over to the healthy one.
    let first = backend.prompt(&prompt(Duration::from_secs(10))).await;
    // Starts at the healthy one.
    let second = backend.prompt(&prompt(Duration::from_secs(10))).await;
    // Starts at the broken one again.
    let third = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(first, Ok("answer 0".to_owned()));
    assert_eq!(second, Ok("answer 1".to_owned()));
    assert_eq!(third, Ok("answer 2".to_owned()));
    assert_eq!(broken.hits(), 2);
    assert_eq!(healthy.hits(), 3);
    // Both upstreams were sent the same request.
    assert_eq!(broken.requests()[0].body, healthy.requests()[0].body);
}

#[tokio::test]
async fn a_rate_limited_upstream_is_skipped_while_it_cools_down() {
    let limited = MockUpstream::start(|_, _| {
        let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "quota");
        response
            .headers_mut()
            .insert("retry-after", "60".parse().expect("header value"));
        reply(response)
    })
    .await;
    let healthy = MockUpstream::start(|_, _| reply(completion("fine"))).await;
    let backend = backend(args(&[&limited.base_url, &healthy.base_url]));

    for _ in 0..4 {
        let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;
        assert_eq!(answer, Ok("fine".to_owned()));
    }
    assert_eq!(limited.hits(), 1);
    assert_eq!(healthy.hits(), 4);
}

#[tokio::test]
async fn a_call_slower_than_the_timeout_fails_over() {
    let slow = MockUpstream::start(|_, _| {
        async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            completion("too late")
        }
        .boxed()
    })
    .await;
    let fast = MockUpstream::start(|_, _| reply(completion("quick"))).await;
    let backend = backend(prompting_openai_backend::OpenAiArgs {
        timeout: 0.3,
        ..args(&[&slow.base_url, &fast.base_url])
    });

    let started = Instant::now();
    let answer = backend.prompt(&prompt(Duration::from_secs(10))).await;

    assert_eq!(answer, Ok("quick".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((slow.hits(), fast.hits()), (1, 1));
}

#[tokio::test]
async fn debug_of_the_settings_and_the_backend_never_shows_the_key() {
    let settings = args_with_key(&["http://127.0.0.1:9/v1"], KEY);
    let backend = backend(settings.clone());
    for text in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{backend:?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
