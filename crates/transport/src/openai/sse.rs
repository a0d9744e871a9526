//! The Server-Sent Events of a streamed chat completion.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use prompting_miner::{CompletionReport, TextStream};

use super::schema::{ChatChunk, ChunkChoice, Delta};
use crate::edge::{OpenAiRejection, Rejection};

/// Why the backend stopped generating, as it reported; `stop` when it did not say.
pub(super) fn finish_reason(report: &CompletionReport) -> String {
    report.finish_reason().unwrap_or_else(|| "stop".to_owned())
}

fn chunk(id: &str, model: &str, created: u64, delta: Delta, finish: Option<String>) -> Event {
    let chunk = ChatChunk {
        id: id.to_string(),
        object: "chat.completion.chunk",
        created,
        model: model.to_string(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
        }],
    };
    Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
}

/// The SSE stream of an answer: a role chunk, one chunk per text piece, a final chunk with
/// the backend's `finish_reason` (read from `report` once the text ended, see
/// [`finish_reason`]), then `[DONE]`. A backend failure midway sends an error event and ends
/// the stream without `[DONE]`.
pub(super) fn sse_events(
    text: TextStream,
    report: CompletionReport,
    id: String,
    model: String,
    created: u64,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let first = chunk(
        &id,
        &model,
        created,
        Delta {
            role: Some("assistant"),
            content: None,
        },
        None,
    );
    let (body_id, body_model) = (id.clone(), model.clone());
    let body = text.scan(false, move |failed, piece| {
        if *failed {
            return futures::future::ready(None);
        }
        let event = match piece {
            Ok(content) => chunk(
                &body_id,
                &body_model,
                created,
                Delta {
                    role: None,
                    content: Some(content),
                },
                None,
            ),
            Err(error) => {
                *failed = true;
                let body = OpenAiRejection(Rejection::from(error)).body();
                Event::default().data(serde_json::to_string(&body).unwrap_or_default())
            }
        };
        futures::future::ready(Some((event, *failed)))
    });
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = failed.clone();
    let body = body.map(move |(event, failed_now)| {
        if failed_now {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        event
    });
    let tail = futures::stream::once(async move {
        (!failed.load(std::sync::atomic::Ordering::Relaxed)).then(|| {
            vec![
                chunk(
                    &id,
                    &model,
                    created,
                    Delta::default(),
                    Some(finish_reason(&report)),
                ),
                Event::default().data("[DONE]"),
            ]
        })
    })
    .flat_map(|events| futures::stream::iter(events.unwrap_or_default()));
    futures::stream::once(async move { first })
        .chain(body)
        .chain(tail)
        .map(Ok)
}
