//! What the admission did, as `PipelineStats` shows it (and `/metrics` renders it): each
//! kind of queue refusal counted under its own reason, the learned service time with the
//! number of slot holds behind it, and how long granted requests waited for their slot.
//! In paused (simulated) time; the backend sleeps as long as each request asks.

mod support;
use support::request;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prompting_miner::{
    Miner, MinerConfig, MinerError, Outcome, Pipeline, PromptRequest, Protocol, QueueRefusal,
};
use tokio::task::JoinHandle;

/// Sleeps the number of milliseconds in the request's first message, then answers.
struct Sleeper;

#[async_trait]
impl Miner for Sleeper {
    fn name(&self) -> &str {
        "sleeper"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let ms: u64 = request.messages[0].parse().expect("milliseconds");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok("answer".into())
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// Panics on the request `"panic"`, answers the others at once.
struct Panicky;

#[async_trait]
impl Miner for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        if request.messages[0] == "panic" {
            panic!("a backend bug");
        }
        Ok("answer".into())
    }
}

/// One worker and room for `max_queue` waiters; callers `low` (1 α) and `high` (100 α).
fn pipeline(max_queue: usize) -> Pipeline {
    pipeline_with(max_queue, Arc::new(Sleeper))
}

/// Like [`pipeline`], with the backend `miner`.
fn pipeline_with(max_queue: usize, miner: Arc<dyn Miner>) -> Pipeline {
    let config = MinerConfig {
        max_concurrent: 1,
        max_queue,
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        // The queue's own refusals, without preemption (tests/preemption.rs).
        priority: prompting_miner::PriorityConfig {
            preempt: false,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    Pipeline::new(
        config,
        support::validators(&[("low", 1.0), ("high", 100.0)]),
        miner,
    )
    .expect("valid config")
}

type Answer = JoinHandle<Result<String, MinerError>>;

/// Sends the request in the background and lets it reach the queue (or a worker).
async fn send(pipeline: &Pipeline, caller: &str, work: Duration, timeout: Duration) -> Answer {
    let pipeline = pipeline.clone();
    let request = request(caller, work, timeout);
    let answer = tokio::spawn(async move { pipeline.prompt(request).await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    answer
}

fn refusals(pipeline: &Pipeline, reason: QueueRefusal) -> u64 {
    pipeline.stats().queue_refusals[&reason]
}

/// The refusals counted, all reasons, in `QueueRefusal::ALL` order.
fn all_refusals(pipeline: &Pipeline) -> Vec<u64> {
    let stats = pipeline.stats();
    assert_eq!(stats.queue_refusals.len(), QueueRefusal::ALL.len());
    QueueRefusal::ALL
        .iter()
        .map(|reason| stats.queue_refusals[reason])
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_arrival_at_a_full_queue_counts_as_queue_full() {
    let p = pipeline(1);
    assert_eq!(all_refusals(&p), [0, 0, 0, 0, 0]);
    let _busy = send(&p, "low", 10 * SECOND, 60 * SECOND).await;
    let _waiting = send(&p, "low", SECOND, 60 * SECOND).await;
    let refused = p.prompt(request("low", SECOND, 60 * SECOND)).await;
    assert!(
        matches!(refused, Err(MinerError::Overloaded(_))),
        "{refused:?}"
    );
    assert_eq!(refusals(&p, QueueRefusal::QueueFull), 1);
    assert_eq!(all_refusals(&p).iter().sum::<u64>(), 1, "one reason only");
    assert_eq!(p.stats().outcomes[&Outcome::Overloaded], 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_pushed_out_by_a_better_arrival_counts_as_shed() {
    let p = pipeline(1);
    // `high`'s first request ranks at the default priority; from then on at its stake.
    p.prompt(request("high", SECOND, 60 * SECOND))
        .await
        .expect("answered");
    let _busy = send(&p, "low", 10 * SECOND, 60 * SECOND).await;
    let pushed_out = send(&p, "low", SECOND, 60 * SECOND).await;
    let _better = send(&p, "high", SECOND, 60 * SECOND).await;
    let result = pushed_out.await.expect("joined");
    assert!(
        matches!(result, Err(MinerError::Overloaded(_))),
        "{result:?}"
    );
    assert_eq!(refusals(&p, QueueRefusal::Shed), 1);
    assert_eq!(all_refusals(&p).iter().sum::<u64>(), 1, "one reason only");
}

#[tokio::test(start_paused = true)]
async fn cannot_finish_is_counted_apart_on_arrival_and_while_waiting() {
    let p = pipeline(4);
    // `low`'s first request ranks at the default priority (0), its later ones at its stake
    // (1), and a waiter is judged by the answers at its priority or higher: one 3 s answer
    // at 1 makes the service time of `low`'s waiters 3 s.
    for work in [Duration::ZERO, 3 * SECOND] {
        p.prompt(request("low", work, 60 * SECOND))
            .await
            .expect("answered");
    }
    let _busy = send(&p, "low", 30 * SECOND, 60 * SECOND).await;
    // 2 s left cannot cover the 3 s answer (nor the wait for the worker).
    let refused = p.prompt(request("low", SECOND, 2 * SECOND)).await;
    assert!(
        matches!(refused, Err(MinerError::Overloaded(_))),
        "{refused:?}"
    );
    assert_eq!(refusals(&p, QueueRefusal::CannotFinishOnArrival), 1);
    assert_eq!(refusals(&p, QueueRefusal::CannotFinishWhileWaiting), 0);
    // 10 s left: it waits, and leaves once only 3 s are left.
    let waiter = send(&p, "low", SECOND, 10 * SECOND).await;
    assert_eq!(p.stats().queue_depth, 1);
    tokio::time::sleep(8 * SECOND).await;
    let result = waiter.await.expect("joined");
    assert!(
        matches!(result, Err(MinerError::Overloaded(_))),
        "{result:?}"
    );
    assert_eq!(refusals(&p, QueueRefusal::CannotFinishWhileWaiting), 1);
    assert_eq!(all_refusals(&p).iter().sum::<u64>(), 2);
    assert_eq!(p.stats().outcomes[&Outcome::Overloaded], 2);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_in_the_queue_counts_as_deadline_passed() {
    // No answer yet, so no service time: the waiter cannot be judged and waits it out.
    let p = pipeline(4);
    let _busy = send(&p, "low", 30 * SECOND, 60 * SECOND).await;
    let waiter = send(&p, "low", SECOND, 5 * SECOND).await;
    tokio::time::sleep(6 * SECOND).await;
    let result = waiter.await.expect("joined");
    assert!(matches!(result, Err(MinerError::Timeout(_))), "{result:?}");
    assert_eq!(refusals(&p, QueueRefusal::DeadlinePassed), 1);
    assert_eq!(all_refusals(&p).iter().sum::<u64>(), 1, "one reason only");
    assert_eq!(p.stats().outcomes[&Outcome::TimedOut], 1);
}

#[tokio::test(start_paused = true)]
async fn the_service_time_shows_how_many_holds_it_is_based_on() {
    let p = pipeline(4);
    let stats = p.stats();
    assert_eq!((stats.service_time, stats.service_time_samples), (None, 0));
    for work in [2, 4, 3] {
        p.prompt(request("low", work * SECOND, 60 * SECOND))
            .await
            .expect("answered");
    }
    let stats = p.stats();
    // The 0.9 quantile of 2, 3 and 4 s.
    assert_eq!(stats.service_time, Some(4 * SECOND));
    assert_eq!(stats.service_time_samples, 3);
}

#[tokio::test(start_paused = true)]
async fn granted_requests_record_how_long_they_waited_for_their_slot() {
    let p = pipeline(4);
    let wait = p.stats().queue_wait;
    assert_eq!((wait.count, wait.sum), (0, 0.0));
    assert!(wait.buckets.iter().all(|(_, n)| *n == 0));
    let first = send(&p, "low", 3 * SECOND, 60 * SECOND).await;
    let second = send(&p, "low", SECOND, 60 * SECOND).await;
    // Refused at once: no wait recorded.
    let _ = p.prompt(request("low", SECOND, Duration::ZERO)).await;
    first.await.expect("joined").expect("answered");
    second.await.expect("joined").expect("answered");
    let wait = p.stats().queue_wait;
    // The first took the free worker at once; the second waited the first's 3 s.
    assert_eq!(wait.count, 2);
    assert!((wait.sum - 3.0).abs() < 1e-6, "{}", wait.sum);
    let at_most = |le: f64| {
        wait.buckets
            .iter()
            .find(|(bound, _)| *bound == le)
            .map(|(_, n)| *n)
    };
    assert_eq!(at_most(0.001), Some(1), "the immediate grant");
    assert_eq!(at_most(2.048), Some(1));
    assert_eq!(at_most(4.096), Some(2), "buckets are cumulative");
    let bounds: Vec<f64> = wait.buckets.iter().map(|(le, _)| *le).collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_backend_gives_its_worker_back_and_counts_as_a_backend_error() {
    let p = pipeline_with(4, Arc::new(Panicky));
    let ask = |text: &str| {
        PromptRequest::new(
            vec!["user".into()],
            vec![text.into()],
            "low",
            Protocol::Legacy,
            60 * SECOND,
        )
    };
    let crashed = {
        let p = p.clone();
        let request = ask("panic");
        tokio::spawn(async move { p.prompt(request).await })
    };
    let joined = crashed.await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    let stats = p.stats();
    assert_eq!((stats.in_flight, stats.queue_depth), (0, 0));
    assert_eq!(stats.outcomes[&Outcome::BackendError], 1);
    assert_eq!(stats.outcomes[&Outcome::Cancelled], 0, "nobody went away");
    assert_eq!(stats.service_time_samples, 0, "a crash is no service time");
    p.prompt(ask("fine")).await.expect("the worker is free");
}
