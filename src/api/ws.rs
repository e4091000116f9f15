//! The WebSocket of live presence (CONTRACT section 8): `GET /v1/presence/ws`. Frames are
//! JSON text: `{"subscribe":[ids]}` and `{"unsubscribe":[ids]}` from the client; entries,
//! written as lookups write them, from the server.
//!
//! The transport (RFC 6455) is this module's own, in [`transport`]: the handshake answers
//! `101` with a body that yields one encoded frame at a time from a single slot, and the
//! request's bytes are decoded here, a frame header at a time. Two things follow:
//!
//! - a frame, or a fragmented message, longer than `server.max_body_bytes` is refused with
//!   1009 as soon as its header is read, so no client can make the server hold more than
//!   that of what it sends;
//! - a frame is made only once the HTTP layer has taken the previous one, and the HTTP layer
//!   takes one only when its write buffer has room. A reader that stops reading therefore
//!   leaves its changes coalesced in the subscription (one pending entry per user), as an
//!   event stream does, and subscribe answers, pongs and closes wait in the same single
//!   slot.
//!
//! What a connection does with the hub is in [`run`] (batches) and [`on_text`] (subscribe
//! and unsubscribe); the rest is transport.

use std::net::IpAddr;

use actix_http::body::{BodyStream, BoxBody};
use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::time::Instant;

use self::transport::{close_frame, encode, outbox, Inbound, Incoming, Opcode, Outbox};
use super::error::ApiError;
use super::extract::{stream_caller, Reader};
use super::json::IdItem;
use super::stream::{
    checked, hold_connection, joined, open, read, refuse_foreign_cookie, ticker, visible, Expiry,
    BATCH_INTERVAL,
};
use super::AppState;
use crate::connections::StreamGuard;
use crate::presence::watch::Entry;
use crate::presence::{Subscription, UserId};

/// `GET /v1/presence/ws`: the WebSocket; see [`run`].
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    Reader(viewer): Reader,
) -> Result<HttpResponse, ApiError> {
    refuse_foreign_cookie(&req, &state)?;
    let caller = stream_caller(&req, &state);
    let sub = open(&req, &state, caller.map(|(user, _)| user), viewer)?;
    let expiry = Expiry::of(&state, caller, viewer);
    let mut handshake = actix_http::ws::handshake(req.head())
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake: {e}")))?;
    let (outbox, frames) = outbox();
    let response = handshake
        .message_body(BoxBody::new(BodyStream::new(frames)))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("WebSocket response: {e}")))?;
    let inbound = Inbound::new(body, state.settings.server.max_body_bytes);
    let held = hold_connection(&req);
    // Owned by the application's WebSocket tasks: shutdown waits for it to end.
    let running = state.live_tasks.start();
    // The session keeps the client's address, not the request: a request holds its head
    // (and the buffer it was read into) for as long as it lives.
    let address = state.limits.client_address(&req);
    drop(req);
    actix_web::rt::spawn(async move {
        run(address, &state, sub, expiry, inbound, outbox, held).await;
        drop(running);
    });
    Ok(response.into())
}

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame {
    subscribe: Option<Vec<IdItem>>,
    unsubscribe: Option<Vec<IdItem>>,
}

/// Serves one WebSocket until either side closes it, the peer goes, or the node shuts down.
/// Every frame goes out through `outbox`, which takes one only once the HTTP layer has
/// taken the one before: a batch is taken from the subscription only then.
async fn run(
    address: Option<IpAddr>,
    state: &AppState,
    mut sub: Subscription,
    mut expiry: Option<Expiry>,
    mut inbound: Inbound,
    outbox: Outbox,
    held: Option<StreamGuard>,
) {
    let mut ping = ticker(state.settings.stream.keep_alive);
    let mut next_batch = Instant::now();
    let close = loop {
        let paced = Instant::now() < next_batch;
        let sent = tokio::select! {
            incoming = inbound.next() => match incoming {
                Incoming::Text(text) => {
                    let answer = match on_text(address, state, &mut sub, &text).await {
                        Ok(Some(answer)) => answer,
                        Ok(None) => continue,
                        Err(e) => e.body().into_bytes(),
                    };
                    outbox.send(encode(Opcode::Text, &answer)).await
                }
                Incoming::Ping(data) => outbox.send(encode(Opcode::Pong, &data)).await,
                Incoming::Pong => Ok(()),
                Incoming::Close(echo) => break Some(echo),
                Incoming::Fault(fault) => {
                    tracing::debug!(
                        code = fault.code,
                        reason = fault.reason,
                        "WebSocket closed: the client broke the protocol"
                    );
                    break Some(close_frame(fault.code, fault.reason));
                }
                Incoming::End => break None,
            },
            batch = async {
                outbox.room().await?;
                Ok(sub.next_batch().await)
            }, if !paced => match batch {
                Err(transport::Gone) => break None,
                Ok(None) => break Some(close_frame(transport::GOING_AWAY, "")),
                Ok(Some(batch)) => {
                    ping.reset();
                    next_batch = Instant::now() + BATCH_INTERVAL;
                    outbox.send(encode(Opcode::Text, &joined(&batch.entries))).await
                }
            },
            () = sub.pending(), if paced => {
                // Something to write, within the batch interval: gather until it ends.
                tokio::time::sleep_until(next_batch).await;
                Ok(())
            }
            () = credential_expired(expiry.as_mut()) => {
                break Some(close_frame(POLICY_VIOLATION, "the credential expired"));
            }
            _ = ping.tick() => outbox.send(encode(Opcode::Ping, b"")).await,
            () = transport::peer_gone(held.as_ref()) => break None,
        };
        if sent.is_err() {
            break None;
        }
    };
    if let Some(frame) = close {
        let _ = outbox.send(frame).await;
    }
    drop(held);
}

/// Close code 1008: the connection's credential is no longer valid.
const POLICY_VIOLATION: u16 = 1008;

/// Once the stream's credential has expired; never without one.
async fn credential_expired(expiry: Option<&mut Expiry>) {
    match expiry {
        Some(expiry) => expiry.expired().await,
        None => std::future::pending().await,
    }
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

/// Applies one text frame from a client at `address`; the answer to send, if any.
async fn on_text(
    address: Option<IpAddr>,
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
            state.limits.lookup_from(address)?;
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

/// RFC 6455 framing: the decoder of what a client sends, the encoder of what the server
/// sends, and the single slot between the connection's task and the HTTP layer.
mod transport {
    use std::convert::Infallible;
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use actix_web::web::{self, Bytes, BytesMut};
    use bytes::{Buf as _, BufMut as _};
    use futures_util::Stream;
    use parking_lot::Mutex;

    use crate::api::stream::next_piece;
    use crate::connections::StreamGuard;

    /// Close codes (RFC 6455 section 7.4.1).
    pub(super) const GOING_AWAY: u16 = 1001;
    const PROTOCOL_ERROR: u16 = 1002;
    const UNSUPPORTED_DATA: u16 = 1003;
    const INVALID_PAYLOAD: u16 = 1007;
    const MESSAGE_TOO_BIG: u16 = 1009;

    /// Longest payload of a control frame (RFC 6455 section 5.5).
    const MAX_CONTROL: usize = 125;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Opcode {
        Continuation = 0x0,
        Text = 0x1,
        Binary = 0x2,
        Close = 0x8,
        Ping = 0x9,
        Pong = 0xA,
    }

    impl Opcode {
        fn from_bits(bits: u8) -> Option<Self> {
            Some(match bits {
                0x0 => Self::Continuation,
                0x1 => Self::Text,
                0x2 => Self::Binary,
                0x8 => Self::Close,
                0x9 => Self::Ping,
                0xA => Self::Pong,
                _ => return None,
            })
        }

        fn is_control(self) -> bool {
            (self as u8) & 0x8 != 0
        }
    }

    /// One whole, unmasked server frame.
    pub(super) fn encode(opcode: Opcode, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(payload.len() + 10);
        out.put_u8(0x80 | opcode as u8);
        match payload.len() {
            n if n <= MAX_CONTROL => out.put_u8(n as u8),
            n => match u16::try_from(n) {
                Ok(n) => {
                    out.put_u8(126);
                    out.put_u16(n);
                }
                Err(_) => {
                    out.put_u8(127);
                    out.put_u64(n as u64);
                }
            },
        }
        out.extend_from_slice(payload);
        out.freeze()
    }

    /// A close frame with `code` and `reason` (which is short).
    pub(super) fn close_frame(code: u16, reason: &str) -> Bytes {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        encode(Opcode::Close, &payload)
    }

    /// What broke the protocol, and the close code it gets.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Fault {
        pub(super) code: u16,
        pub(super) reason: &'static str,
    }

    const fn fault(code: u16, reason: &'static str) -> Fault {
        Fault { code, reason }
    }

    /// What the client sent next.
    #[derive(Debug)]
    pub(super) enum Incoming {
        /// A whole text message, UTF-8.
        Text(BytesMut),
        Ping(Bytes),
        Pong,
        /// A close, with the close frame that answers it.
        Close(Bytes),
        Fault(Fault),
        /// The peer went, or its bytes ended.
        End,
    }

    /// A frame header, read and checked.
    #[derive(Debug)]
    struct Header {
        fin: bool,
        opcode: Opcode,
        /// Bytes of the header, masking key included.
        size: usize,
        len: usize,
        mask: [u8; 4],
    }

    /// Reads the header at the front of `buf`, if all of it is there. Every check that a
    /// header alone allows is made as soon as the bytes it needs are in, the length first
    /// of all: a frame that would take the message in progress (`message` bytes so far, if
    /// any) over `limit` is refused before any of its payload is waited for.
    fn header(buf: &[u8], limit: usize, message: Option<usize>) -> Result<Option<Header>, Fault> {
        let [first, second, ..] = *buf else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(fault(PROTOCOL_ERROR, "reserved bits set"));
        }
        let fin = first & 0x80 != 0;
        let Some(opcode) = Opcode::from_bits(first & 0x0F) else {
            return Err(fault(PROTOCOL_ERROR, "unknown opcode"));
        };
        if second & 0x80 == 0 {
            return Err(fault(PROTOCOL_ERROR, "client frames must be masked"));
        }
        let short = second & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(fault(PROTOCOL_ERROR, "fragmented control frame"));
            }
            if usize::from(short) > MAX_CONTROL {
                return Err(fault(PROTOCOL_ERROR, "control frame over 125 bytes"));
            }
        }
        match (opcode, message) {
            (Opcode::Continuation, None) => {
                return Err(fault(PROTOCOL_ERROR, "continuation of no message"))
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(fault(PROTOCOL_ERROR, "new message inside a fragmented one"))
            }
            (Opcode::Binary, None) => return Err(fault(UNSUPPORTED_DATA, "frames are JSON text")),
            _ => {}
        }
        let (len, at) = match short {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10).map(<[u8; 8]>::try_from) {
                Some(Ok(bytes)) => (u64::from_be_bytes(bytes), 10),
                _ => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(fault(PROTOCOL_ERROR, "payload length with its top bit set"));
        }
        let so_far = message.unwrap_or(0) as u64;
        if so_far.saturating_add(len) > limit as u64 {
            return Err(fault(MESSAGE_TOO_BIG, "message too big"));
        }
        // Within `limit`, so it fits.
        let len = usize::try_from(len).map_err(|_| fault(MESSAGE_TOO_BIG, "message too big"))?;
        let Some(&[a, b, c, d]) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            size: at + 4,
            len,
            mask: [a, b, c, d],
        }))
    }

    /// The payload of a close frame, checked (RFC 6455 sections 5.5.1 and 7.4), and the
    /// close that answers it: the same code, or none when it had none.
    fn answer_close(payload: &[u8]) -> Result<Bytes, Fault> {
        let Some((code, reason)) = payload.split_first_chunk::<2>() else {
            if payload.is_empty() {
                return Ok(encode(Opcode::Close, b""));
            }
            return Err(fault(PROTOCOL_ERROR, "close frame of one byte"));
        };
        let code = u16::from_be_bytes(*code);
        let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if !valid {
            return Err(fault(PROTOCOL_ERROR, "close code not to be sent"));
        }
        if std::str::from_utf8(reason).is_err() {
            return Err(fault(INVALID_PAYLOAD, "close reason not UTF-8"));
        }
        Ok(close_frame(code, ""))
    }

    /// The decoder of the client's frames, over the request's payload. Its state lives in
    /// it, not in the future of [`Inbound::next`], which can be dropped at any await.
    pub(super) struct Inbound {
        payload: web::Payload,
        /// Bytes received, not yet decoded: at most one frame within the limit.
        buf: BytesMut,
        limit: usize,
        /// The text message whose fragments are arriving.
        message: Option<BytesMut>,
    }

    impl Inbound {
        pub(super) fn new(payload: web::Payload, limit: usize) -> Self {
            Self {
                payload,
                buf: BytesMut::new(),
                limit,
                message: None,
            }
        }

        pub(super) async fn next(&mut self) -> Incoming {
            poll_fn(|cx| self.poll_next(cx)).await
        }

        fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
            loop {
                match self.decode() {
                    Ok(Some(incoming)) => return Poll::Ready(incoming),
                    Ok(None) => {}
                    Err(fault) => return Poll::Ready(Incoming::Fault(fault)),
                }
                match Pin::new(&mut self.payload).poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, "WebSocket read ended");
                        return Poll::Ready(Incoming::End);
                    }
                    Poll::Ready(None) => return Poll::Ready(Incoming::End),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }

        /// The next message from the bytes received, if they hold one.
        fn decode(&mut self) -> Result<Option<Incoming>, Fault> {
            loop {
                let so_far = self.message.as_ref().map(BytesMut::len);
                let Some(head) = header(&self.buf, self.limit, so_far)? else {
                    return Ok(None);
                };
                let whole = head.size + head.len;
                if self.buf.len() < whole {
                    self.buf.reserve(whole - self.buf.len());
                    return Ok(None);
                }
                self.buf.advance(head.size);
                let mut data = self.buf.split_to(head.len);
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte ^= head.mask[i % 4];
                }
                let text = match head.opcode {
                    Opcode::Ping => return Ok(Some(Incoming::Ping(data.freeze()))),
                    Opcode::Pong => return Ok(Some(Incoming::Pong)),
                    Opcode::Close => return answer_close(&data).map(|c| Some(Incoming::Close(c))),
                    // Refused by `header`.
                    Opcode::Binary => return Err(fault(UNSUPPORTED_DATA, "frames are JSON text")),
                    Opcode::Text if head.fin => data,
                    Opcode::Text => {
                        self.message = Some(data);
                        continue;
                    }
                    Opcode::Continuation => {
                        let Some(message) = self.message.as_mut() else {
                            return Err(fault(PROTOCOL_ERROR, "continuation of no message"));
                        };
                        message.extend_from_slice(&data);
                        if !head.fin {
                            continue;
                        }
                        self.message.take().unwrap_or_default()
                    }
                };
                if std::str::from_utf8(&text).is_err() {
                    return Err(fault(INVALID_PAYLOAD, "text is not UTF-8"));
                }
                return Ok(Some(Incoming::Text(text)));
            }
        }
    }

    /// Resolves once the peer has closed the connection; never without a stream mark.
    pub(super) async fn peer_gone(held: Option<&StreamGuard>) {
        poll_fn(|cx| match held {
            Some(held) if held.poll_gone(cx) => Poll::Ready(()),
            _ => Poll::Pending,
        })
        .await;
    }

    /// The HTTP layer no longer takes frames: the connection has ended.
    #[derive(Debug)]
    pub(super) struct Gone;

    /// The single slot between the connection's task ([`Outbox`]) and the response body
    /// ([`Frames`]).
    #[derive(Default)]
    struct Slot {
        frame: Option<Bytes>,
        /// The task has finished: once the slot is empty, the body ends.
        done: bool,
        /// The body was dropped with the connection.
        gone: bool,
        /// The body, waiting for a frame.
        body: Option<Waker>,
        /// The task, waiting for the slot to empty.
        task: Option<Waker>,
    }

    /// Where the connection's task puts frames, one at a time.
    pub(super) struct Outbox(Arc<Mutex<Slot>>);

    /// The response body: the frames of the slot, each taken when the HTTP layer has room.
    pub(super) struct Frames(Arc<Mutex<Slot>>);

    pub(super) fn outbox() -> (Outbox, Frames) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        (Outbox(slot.clone()), Frames(slot))
    }

    impl Outbox {
        /// Resolves once the slot is empty: the HTTP layer has taken the last frame.
        pub(super) async fn room(&self) -> Result<(), Gone> {
            poll_fn(|cx| {
                let mut slot = self.0.lock();
                if slot.gone {
                    return Poll::Ready(Err(Gone));
                }
                if slot.frame.is_none() {
                    return Poll::Ready(Ok(()));
                }
                slot.task = Some(cx.waker().clone());
                Poll::Pending
            })
            .await
        }

        /// Puts `frame` in the slot once it is empty.
        pub(super) async fn send(&self, frame: Bytes) -> Result<(), Gone> {
            self.room().await?;
            let mut slot = self.0.lock();
            slot.frame = Some(frame);
            if let Some(body) = slot.body.take() {
                body.wake();
            }
            Ok(())
        }
    }

    impl Drop for Outbox {
        fn drop(&mut self) {
            let mut slot = self.0.lock();
            slot.done = true;
            if let Some(body) = slot.body.take() {
                body.wake();
            }
        }
    }

    impl Stream for Frames {
        type Item = Result<Bytes, Infallible>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let mut slot = self.0.lock();
            // A frame larger than a piece goes out a piece at a time (see
            // `stream::PIECE`); the slot is free once its last piece is taken.
            if let Some(piece) = next_piece(&mut slot.frame) {
                if slot.frame.is_some() {
                    return Poll::Ready(Some(Ok(piece)));
                }
                if let Some(task) = slot.task.take() {
                    task.wake();
                }
                return Poll::Ready(Some(Ok(piece)));
            }
            if slot.done {
                return Poll::Ready(None);
            }
            slot.body = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Drop for Frames {
        fn drop(&mut self) {
            let mut slot = self.0.lock();
            slot.gone = true;
            slot.frame = None;
            if let Some(task) = slot.task.take() {
                task.wake();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const LIMIT: usize = 100;

        fn masked(first: u8, len: u8) -> Vec<u8> {
            vec![first, 0x80 | len, 0, 0, 0, 0]
        }

        #[test]
        fn a_length_over_the_limit_is_refused_before_the_masking_key() {
            let mut huge = vec![0x81, 0xFF];
            huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
            assert_eq!(
                header(&huge, LIMIT, None).unwrap_err().code,
                MESSAGE_TOO_BIG
            );
            let mut top = vec![0x81, 0xFF];
            top.extend_from_slice(&u64::MAX.to_be_bytes());
            assert_eq!(header(&top, LIMIT, None).unwrap_err().code, PROTOCOL_ERROR);
            // 60 more bytes on 50 of a message: over 100.
            assert_eq!(
                header(&masked(0x80, 60), LIMIT, Some(50)).unwrap_err().code,
                MESSAGE_TOO_BIG
            );
            assert!(header(&masked(0x80, 50), LIMIT, Some(50))
                .unwrap()
                .is_some());
            // Not enough of the header yet.
            assert!(header(&[0x81, 0xFE, 0], LIMIT, None).unwrap().is_none());
            assert!(header(&[0x81, 0x85, 0, 0], LIMIT, None).unwrap().is_none());
        }

        #[test]
        fn server_frames_use_the_shortest_length() {
            assert_eq!(&encode(Opcode::Text, b"hi")[..], b"\x81\x02hi");
            let long = encode(Opcode::Text, &[b'x'; 300]);
            assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
            let longer = encode(Opcode::Text, &vec![b'x'; 70_000]);
            assert_eq!(&longer[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
            assert_eq!(&close_frame(1001, "")[..], &[0x88, 2, 0x03, 0xE9]);
        }

        #[test]
        fn close_payloads_are_checked() {
            assert_eq!(&answer_close(b"").unwrap()[..], &[0x88, 0]);
            assert_eq!(
                &answer_close(b"\x03\xe8bye").unwrap()[..],
                &[0x88, 2, 3, 0xE8]
            );
            assert_eq!(answer_close(b"\x03").unwrap_err().code, PROTOCOL_ERROR);
            assert_eq!(answer_close(b"\x03\xed").unwrap_err().code, PROTOCOL_ERROR);
            assert_eq!(
                answer_close(b"\x03\xe8\xff").unwrap_err().code,
                INVALID_PAYLOAD
            );
        }
    }
}
