//! The WebSocket of live presence (CONTRACT section 8): `GET /v1/presence/ws`. Frames are
//! JSON text: `{"subscribe":[ids]}` and `{"unsubscribe":[ids]}` from the client; entries,
//! written as lookups write them, from the server.

use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use serde::Deserialize;
use tokio::time::Instant;

use super::error::ApiError;
use super::extract::{stream_caller, Reader};
use super::json::IdItem;
use super::stream::{
    checked, hold_connection, joined, open, read, refuse_foreign_cookie, ticker, visible, Expiry,
    BATCH_INTERVAL,
};
use super::AppState;
use crate::presence::watch::Entry;
use crate::presence::{Subscription, UserId};

/// `GET /v1/presence/ws`: the WebSocket; see [`run`].
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    _reader: Reader,
) -> Result<HttpResponse, ApiError> {
    refuse_foreign_cookie(&req, &state)?;
    let caller = stream_caller(&req, &state);
    let sub = open(&req, &state, caller.map(|(user, _)| user))?;
    let expiry = Expiry::of(&state, caller);
    let (response, session, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake: {e}")))?;
    let frame_limit = state.settings.server.max_body_bytes;
    let messages = messages
        .max_frame_size(frame_limit)
        .aggregate_continuations()
        .max_continuation_size(frame_limit);
    let held = hold_connection(&req);
    // Owned by the application's WebSocket tasks: shutdown waits for it to end.
    let running = state.ws_tasks.start();
    actix_web::rt::spawn(async move {
        run(&req, &state, sub, expiry, session, messages).await;
        drop(held);
        drop(running);
    });
    Ok(response)
}

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame {
    subscribe: Option<Vec<IdItem>>,
    unsubscribe: Option<Vec<IdItem>>,
}

/// Serves one WebSocket until either side closes it or the node shuts down.
async fn run(
    req: &HttpRequest,
    state: &AppState,
    mut sub: Subscription,
    mut expiry: Option<Expiry>,
    mut session: actix_ws::Session,
    mut messages: actix_ws::AggregatedMessageStream,
) {
    let mut ping = ticker(state.settings.stream.keep_alive);
    let mut next_batch = Instant::now();
    loop {
        let paced = Instant::now() < next_batch;
        tokio::select! {
            message = messages.recv() => {
                let sent = match message {
                    None => break,
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let answer = match on_text(req, state, &mut sub, text.as_bytes()).await {
                            Ok(Some(answer)) => answer,
                            Ok(None) => continue,
                            Err(e) => e.body().into_bytes(),
                        };
                        session.text(into_text(answer)).await
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        let reason = CloseReason {
                            code: CloseCode::Unsupported,
                            description: Some("frames are JSON text".into()),
                        };
                        let _ = session.close(Some(reason)).await;
                        return;
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => session.pong(&bytes).await,
                    Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        let _ = session.close(reason).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let code = match e {
                            actix_ws::ProtocolError::Overflow => CloseCode::Size,
                            _ => CloseCode::Protocol,
                        };
                        let _ = session.close(Some(code.into())).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            batch = sub.next_batch(), if !paced => {
                let Some(batch) = batch else {
                    let _ = session.close(Some(CloseCode::Away.into())).await;
                    return;
                };
                if session.text(into_text(joined(&batch.entries))).await.is_err() {
                    return;
                }
                ping.reset();
                next_batch = Instant::now() + BATCH_INTERVAL;
            }
            () = sub.pending(), if paced => {
                // Something to write, within the batch interval: gather until it ends.
                tokio::time::sleep_until(next_batch).await;
            }
            () = async { if let Some(e) = expiry.as_mut() { e.expired().await } }, if expiry.is_some() => {
                let reason = CloseReason {
                    code: CloseCode::Policy,
                    description: Some("the credential expired".into()),
                };
                let _ = session.close(Some(reason)).await;
                return;
            }
            _ = ping.tick() => {
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = session.close(None).await;
}

/// Starts watching `ids` and answers with the entries of those added, in order. When they
/// cannot be read, they are not watched either: the client was given nothing.
async fn subscribe(
    state: &AppState,
    sub: &mut Subscription,
    ids: &[UserId],
) -> Result<Vec<u8>, ApiError> {
    let new = ids.iter().filter(|&&id| !sub.watches(id)).count();
    if sub.len() + new > state.settings.stream.max_user_ids {
        return Err(ApiError::TooManyUserIds);
    }
    let added = sub.add(ids);
    match read(state, sub, &added).await {
        Ok(entries) => {
            let given: Vec<(UserId, &Entry)> = added.iter().copied().zip(&entries).collect();
            sub.settle(&given, 0);
            Ok(joined(entries.iter().map(|entry| &entry.bytes)))
        }
        Err(e) => {
            sub.abandon(&added);
            Err(e)
        }
    }
}

/// JSON written by this server is UTF-8.
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

/// Applies one text frame; the answer to send, if any.
async fn on_text(
    req: &HttpRequest,
    state: &AppState,
    sub: &mut Subscription,
    text: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let frame: ClientFrame =
        serde_json::from_slice(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let max = state.settings.stream.max_user_ids;
    match frame {
        ClientFrame {
            subscribe: Some(items),
            unsubscribe: None,
        } => {
            state.limits.lookup(req)?;
            let ids = visible(checked(items, max)?);
            subscribe(state, sub, &ids).await.map(Some)
        }
        ClientFrame {
            subscribe: None,
            unsubscribe: Some(items),
        } => {
            let ids = checked(items, max)?;
            sub.remove(&ids);
            Ok(None)
        }
        _ => Err(ApiError::BadRequest(
            "a frame is {\"subscribe\":[ids]} or {\"unsubscribe\":[ids]}".into(),
        )),
    }
}
