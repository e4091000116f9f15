//! Live presence (CONTRACT section 8): `GET /v1/presence/stream` (Server-Sent Events) and
//! `GET /v1/presence/ws` (WebSocket). Both watch users through the node's
//! [`Hub`](crate::presence::Hub) and write entries with the lookup's own serializer.
//!
//! What a watcher may see is decided in one place, [`visible`]: today everyone sees every
//! user, as with lookups.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::Stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::cors::foreign_cookie_origin;
use super::error::ApiError;
use super::extract::{stream_caller, Reader};
use super::json::{is_user_ids_key, IdItem, LookupRequest};
use super::AppState;
use crate::connections::{StreamGuard, StreamMark};
use crate::presence::privacy::Viewer;
use crate::presence::time::WallMillis;
use crate::presence::watch::{Batch, Entry, EventId};
use crate::presence::Clock;
use crate::presence::{Subscription, UserId};

/// The users of `ids` that the caller may watch. Everyone may watch everyone today; a
/// privacy rule belongs here, and only here.
pub(super) fn visible(ids: Vec<UserId>) -> Vec<UserId> {
    ids
}

/// The ids of a stream's query string: `userIds=1,2,3`, `userIds=1&userIds=2` (and the
/// `userIds[]` / `userIds[0]` spellings the lookup's forms accept). An empty value names
/// nobody; an empty item between commas is not an id.
fn query_ids(query: &str) -> Result<Vec<IdItem>, ApiError> {
    let pairs: Vec<(String, String)> = serde_html_form::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let mut ids = Vec::new();
    for (_, value) in pairs.iter().filter(|(key, _)| is_user_ids_key(key)) {
        if value.is_empty() {
            continue;
        }
        ids.extend(value.split(',').map(|item| IdItem::from_text(item.trim())));
    }
    Ok(ids)
}

/// Validates ids as a lookup does, against `stream.max_user_ids`.
pub(super) fn checked(items: Vec<IdItem>, max: usize) -> Result<Vec<UserId>, ApiError> {
    LookupRequest { user_ids: items }.into_user_ids(max)
}

/// Holds the connection as a live stream (no idle deadline) for as long as it lives.
pub(super) fn hold_connection(req: &HttpRequest) -> Option<StreamGuard> {
    req.conn_data::<StreamMark>().map(StreamMark::hold)
}

/// The current entries of `ids`, in order, read after `sub` started watching them (see
/// `Subscription::add`).
pub(super) async fn read(
    state: &AppState,
    sub: &Subscription,
    ids: &[UserId],
) -> Result<Vec<Entry>, ApiError> {
    let mut entries = Vec::with_capacity(ids.len());
    state
        .presence
        .visit_seen(sub.viewer(), ids, |seen| {
            // On Redis, an Offline user is then checked for being forgotten by retention.
            state.presence.watching(seen.view);
            entries.push(sub.first(seen));
        })
        .await?;
    Ok(entries)
}

/// `{"userPresences":[...]}` of entries already written.
pub(super) fn joined<'a, I>(entries: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a Bytes>,
    I::IntoIter: Clone,
{
    let entries = entries.into_iter();
    let size = entries.clone().map(|e| e.len() + 1).sum::<usize>() + 24;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"userPresences\":[");
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(entry);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One Server-Sent Event named `presence`.
fn event(id: EventId, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: presence\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A stream or WebSocket that carries a cookie credential from a page of a foreign origin
/// is refused (CONTRACT section 9): such a page must not ride a visitor's cookie.
pub(super) fn refuse_foreign_cookie(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if foreign_cookie_origin(req, &state.settings) {
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

/// A new subscription within the limits on streams (in all, per client address, per
/// signed-in user), or 503 with `Retry-After`. `caller` is the signed-in user, if any.
pub(super) fn open(
    req: &HttpRequest,
    state: &AppState,
    caller: Option<UserId>,
    viewer: Viewer,
) -> Result<Subscription, ApiError> {
    let address = state.limits.client_address(req);
    state
        .presence
        .hub()
        .subscribe_within(address, caller, viewer)
        .map_err(ApiError::StreamsFull)
}

/// Ends a stream when its credential does, where lookups require one or where the stream
/// sees as that credential's user: the client then reconnects with a fresh credential. Checked against the application's clock.
pub(super) struct Expiry {
    until: WallMillis,
    clock: Clock,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Expiry {
    /// For the caller's credential, when `api.require_auth_for_lookup` is on, or when the
    /// stream's viewer is the signed-in user of that credential: what it is shown of
    /// friends-only users (CONTRACT section 11) must not outlive the credential.
    pub(super) fn of(
        state: &AppState,
        caller: Option<(UserId, WallMillis)>,
        viewer: Viewer,
    ) -> Option<Self> {
        let signed_in = matches!(viewer, Viewer::User(_));
        if !state.settings.api.require_auth_for_lookup && !signed_in {
            return None;
        }
        let (_, until) = caller?;
        let clock = state.clock.clone();
        let timer = Box::pin(tokio::time::sleep(Self::left(&clock, until)));
        Some(Self {
            until,
            clock,
            timer,
        })
    }

    fn left(clock: &Clock, until: WallMillis) -> Duration {
        let ms = until.0.saturating_sub(clock.wall().0).max(0) as u64;
        // At least a second between checks: a clock set back must not make this spin.
        Duration::from_millis(ms).max(EXPIRY_RECHECK)
    }

    /// Whether the credential has expired; if not, the task is woken when it may have.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.clock.wall() >= self.until {
            return true;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.clock.wall() >= self.until {
                return true;
            }
            let next = Instant::now() + Self::left(&self.clock, self.until);
            self.timer.as_mut().reset(next);
        }
        false
    }

    /// Once the credential has expired.
    pub(super) async fn expired(&mut self) {
        std::future::poll_fn(|cx| {
            if self.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Least time between two checks of a credential's expiry.
const EXPIRY_RECHECK: Duration = Duration::from_secs(1);

pub(super) fn ticker(every: Duration) -> Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// `GET /v1/presence/stream?userIds=...`: the watched users' entries, then their changes.
pub async fn sse(
    req: HttpRequest,
    state: web::Data<AppState>,
    Reader(viewer): Reader,
) -> Result<HttpResponse, ApiError> {
    refuse_foreign_cookie(&req, &state)?;
    let max = state.settings.stream.max_user_ids;
    let ids = visible(checked(query_ids(req.query_string())?, max)?);
    let caller = stream_caller(&req, &state);
    let sub = open(&req, &state, caller.map(|(user, _)| user), viewer)?;
    let first = first_event(&req, &state, sub, &ids).await?;
    let (first, sub) = first;
    let body = EventStream {
        first,
        sub,
        ping: ticker(state.settings.stream.keep_alive),
        held: hold_connection(&req),
        expiry: Expiry::of(&state, caller, viewer),
        next_batch: Instant::now(),
        pacing: None,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Starts watching `ids` and writes the first event: every entry, or, for a client that
/// resumes (`Last-Event-ID` of a stream whose record is still held), only the entries that
/// differ from what it holds, and no event at all when none does.
async fn first_event(
    req: &HttpRequest,
    state: &AppState,
    mut sub: Subscription,
    ids: &[UserId],
) -> Result<(Option<Bytes>, Subscription), ApiError> {
    sub.add(ids);
    let entries = read(state, &sub, ids).await?;
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|last| sub.resume(last));
    let held = |user: UserId, entry: &Entry| resume.as_ref().is_some_and(|r| r.holds(user, entry));
    let (kept, sent): (Vec<_>, Vec<_>) = ids
        .iter()
        .copied()
        .zip(&entries)
        .partition(|&(user, entry)| held(user, entry));
    sub.settle(&kept, 0);
    if sent.is_empty() {
        return Ok((None, sub));
    }
    let id = sub.event();
    sub.settle(&sent, id.number);
    let data = joined(sent.iter().map(|(_, entry)| &entry.bytes));
    Ok((Some(event(id, &data)), sub))
}

/// After a stream or WebSocket is written a batch of changes, the next batch waits this
/// long, gathering (and coalescing) what changes meanwhile: a change to a quiet stream goes
/// out at once, while a busy one is written at most this often, several entries a write
/// rather than one (a write, not the entries in it, is what costs: CPU time goes to the
/// system calls).
pub(super) const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// The body of an event stream. It is polled only when the connection can take more, so
/// a reader that falls behind leaves its changes coalesced in the subscription.
struct EventStream {
    first: Option<Bytes>,
    sub: Subscription,
    ping: Interval,
    held: Option<StreamGuard>,
    /// When the stream ends with its credential.
    expiry: Option<Expiry>,
    /// No batch before this (see [`BATCH_INTERVAL`]).
    next_batch: Instant,
    /// The wait for `next_batch`, made the first time one is needed.
    pacing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl EventStream {
    /// Whether a batch may be written now; if not, the task is woken when it may. The
    /// timer is armed only once something waits to be written: most writes are followed
    /// by a quiet spell, which then costs nothing.
    fn may_write(&mut self, cx: &mut Context<'_>) -> bool {
        if Instant::now() >= self.next_batch {
            return true;
        }
        if self.sub.poll_pending(cx).is_pending() {
            return false;
        }
        let due = self.next_batch;
        let pacing = self
            .pacing
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if pacing.deadline() != due {
            pacing.as_mut().reset(due);
        }
        pacing.as_mut().poll(cx).is_ready()
    }
}

const PING: &[u8] = b": ping\n\n";

impl Stream for EventStream {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.held.as_ref().is_some_and(|held| held.poll_gone(cx)) {
            return Poll::Ready(None);
        }
        if this.expiry.as_mut().is_some_and(|e| e.poll_expired(cx)) {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if !this.may_write(cx) {
            // Written to within the batch interval: a ping is not due either.
            return Poll::Pending;
        }
        match this.sub.poll_batch(cx) {
            Poll::Ready(Some(Batch {
                entries,
                id: Some(id),
            })) => {
                this.ping.reset();
                this.next_batch = Instant::now() + BATCH_INTERVAL;
                return Poll::Ready(Some(Ok(event(id, &joined(&entries)))));
            }
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Bytes::from_static(PING))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(query: &str) -> Vec<IdItem> {
        query_ids(query).unwrap()
    }

    fn valid(n: u64) -> IdItem {
        IdItem::Valid(UserId::new(n).unwrap())
    }

    #[test]
    fn ids_come_as_a_comma_list_or_repeated_keys() {
        assert_eq!(ids("userIds=1,2,3"), vec![valid(1), valid(2), valid(3)]);
        assert_eq!(ids("userIds=1&userIds=2"), vec![valid(1), valid(2)]);
        assert_eq!(ids("userIds=1%2C2"), vec![valid(1), valid(2)]);
        assert_eq!(ids("userIds[]=5&other=x"), vec![valid(5)]);
        assert_eq!(ids(""), vec![]);
        assert_eq!(ids("userIds="), vec![]);
        assert_eq!(
            ids("userIds=1,,2"),
            vec![valid(1), IdItem::Invalid, valid(2)]
        );
        assert_eq!(ids("userIds=0"), vec![IdItem::Invalid]);
        assert_eq!(ids("userIds=abc"), vec![IdItem::Invalid]);
    }

    #[test]
    fn an_event_has_an_id_a_name_and_one_data_line() {
        let id = EventId {
            token: 1,
            number: 7,
        };
        assert_eq!(
            &event(id, b"{\"userPresences\":[]}")[..],
            b"id: 0000000000000001-7\nevent: presence\ndata: {\"userPresences\":[]}\n\n"
        );
    }
}
