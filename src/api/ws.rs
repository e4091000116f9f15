//! The WebSocket of live presence (CONTRACT section 8): `GET /v1/presence/ws`. Frames are
//! JSON text: `{"subscribe":[ids]}` and `{"unsubscribe":[ids]}` from the client; entries,
//! written as lookups write them, from the server.
//!
//! The transport (RFC 6455) is this module's own, in [`transport`]. The handshake answers
//! `101` with no body and asks for the connection's socket (see
//! [`StreamMark::hand_over`]): once the head is written, the connection's task reads the
//! client's frames from the socket and writes its own frames to it, and the HTTP layer (its
//! dispatcher and that dispatcher's read and write buffers) is gone. Three things follow:
//!
//! - a frame, or a fragmented message, longer than `server.max_body_bytes` is refused with
//!   1009 as soon as its header is read, so no client can make the server hold more than
//!   that of what it sends; the bytes received are held only until they are decoded (a
//!   read buffer is made as large as the frame being read needs, and let go once empty),
//!   so an idle connection holds none;
//! - one frame is written at a time, and a batch is taken from the subscription only once
//!   the frame before has been written whole. A reader that stops reading therefore leaves
//!   its changes coalesced in the subscription (one pending entry per user), as an event
//!   stream does; a reader that takes nothing for `stream_stall` is cut off;
//! - bytes a client sent before it had the `101` (which it should not) were read by the
//!   HTTP layer: they come through the request's payload, which ends once the socket has
//!   changed hands, and are decoded before anything read from the socket.
//!
//! What a connection does with the hub is in [`run`] (batches) and [`on_text`] (subscribe
//! and unsubscribe); the rest is transport.

use std::net::IpAddr;

use actix_http::body::BoxBody;
use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::time::Instant;

use self::transport::{close_frame, encode, Event, Inbound, Incoming, Opcode, Socket};
use super::error::ApiError;
use super::extract::{stream_caller, Reader};
use super::json::IdItem;
use super::stream::{
    checked, joined, open, read, refuse_foreign_cookie, ticker, visible, Expiry, BATCH_INTERVAL,
};
use super::AppState;
use crate::connections::StreamMark;
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
    // No body: the HTTP layer writes the head alone (a `101` has no length or chunked
    // framing) and nothing after it.
    let response = handshake
        .message_body(BoxBody::new(()))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("WebSocket response: {e}")))?;
    // Every connection of the server carries its mark (see `app::serve`).
    let mark = req.conn_data::<StreamMark>().ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "WebSocket: the connection has no stream mark"
        ))
    })?;
    // Nothing fails from here on: the response is the `101`, after which the socket
    // changes hands.
    let held = mark.hold();
    let handed = mark.hand_over();
    let inbound = Inbound::new(body, state.settings.server.max_body_bytes);
    // Owned by the application's live-stream tasks: shutdown waits for it to end.
    let running = state.live_tasks.start();
    // The session keeps the client's address, not the request: a request holds its head
    // (and the buffer it was read into) for as long as it lives.
    let address = state.limits.client_address(&req);
    drop(req);
    actix_web::rt::spawn(async move {
        // Nothing comes when the connection ends before the head is written.
        if let Ok(handed) = handed.await {
            // The mark no longer has a connection to keep.
            drop(held);
            run(address, &state, sub, expiry, Socket::new(handed, inbound)).await;
        }
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
/// Frames are written one at a time (see [`Socket::send`]): a batch is taken from the
/// subscription only once the frame before is written.
async fn run(
    address: Option<IpAddr>,
    state: &AppState,
    mut sub: Subscription,
    mut expiry: Option<Expiry>,
    mut socket: Socket,
) {
    let mut ping = ticker(state.settings.stream.keep_alive);
    let mut next_batch = Instant::now();
    let close = loop {
        let paced = Instant::now() < next_batch;
        let written = socket.is_written();
        let sent = tokio::select! {
            event = socket.next() => match event {
                Event::Written => Ok(()),
                Event::Incoming(Incoming::Text(text)) => {
                    // Boxed: the store's read is the largest state of this task, and is
                    // held only while a frame is answered.
                    let answer = match Box::pin(on_text(address, state, &mut sub, &text)).await {
                        Ok(Some(answer)) => answer,
                        Ok(None) => continue,
                        Err(e) => e.body().into_bytes(),
                    };
                    socket.send(encode(Opcode::Text, &answer)).await
                }
                Event::Incoming(Incoming::Ping(data)) => {
                    socket.send(encode(Opcode::Pong, &data)).await
                }
                Event::Incoming(Incoming::Pong) => Ok(()),
                Event::Incoming(Incoming::Close(echo)) => break Some(echo),
                Event::Incoming(Incoming::Fault(fault)) => {
                    tracing::debug!(
                        code = fault.code,
                        reason = fault.reason,
                        "WebSocket closed: the client broke the protocol"
                    );
                    break Some(close_frame(fault.code, fault.reason));
                }
                Event::Incoming(Incoming::End) => break None,
            },
            batch = sub.next_batch(), if !paced && written => match batch {
                None => break Some(close_frame(transport::GOING_AWAY, "")),
                Some(batch) => {
                    ping.reset();
                    next_batch = Instant::now() + BATCH_INTERVAL;
                    socket.send(encode(Opcode::Text, &joined(&batch.entries))).await
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
            _ = ping.tick() => socket.send(encode(Opcode::Ping, b"")).await,
        };
        if sent.is_err() {
            break None;
        }
    };
    // The subscription goes before the close is written, which may wait on the peer.
    drop(sub);
    if let Some(frame) = close {
        socket.close(frame).await;
    }
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
/// sends, and the connection's socket, on which both go.
mod transport {
    use std::future::poll_fn;
    use std::io;
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};

    use actix_web::web::{self, Bytes, BytesMut};
    use bytes::{Buf as _, BufMut as _};
    use futures_util::Stream;
    use tokio::io::ReadBuf;

    use crate::connections::Handed;

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

    /// Bytes read from the socket at a time while no frame larger than this is being read:
    /// into the stack, so that a connection waiting for the client holds no read buffer.
    const READ_CHUNK: usize = 2048;

    /// The decoder of the client's frames. Its state lives in it, not in the future of
    /// [`Socket::next`], which can be dropped at any await.
    pub(super) struct Inbound {
        /// What the HTTP layer read before the socket was handed over; `None` once it has
        /// ended, which it does once the socket has changed hands.
        payload: Option<web::Payload>,
        /// Bytes received, not yet decoded: at most one frame within the limit, and what
        /// came with its end. Let go whenever it is empty.
        buf: BytesMut,
        /// Bytes still missing of the frame whose header is in `buf`; 0 while no header is.
        missing: usize,
        limit: usize,
        /// The text message whose fragments are arriving.
        message: Option<BytesMut>,
    }

    impl Inbound {
        pub(super) fn new(payload: web::Payload, limit: usize) -> Self {
            Self {
                payload: Some(payload),
                buf: BytesMut::new(),
                missing: 0,
                limit,
                message: None,
            }
        }

        fn poll_next(&mut self, socket: &mut Handed, cx: &mut Context<'_>) -> Poll<Incoming> {
            loop {
                match self.decode() {
                    Ok(Some(incoming)) => return Poll::Ready(incoming),
                    Ok(None) => {}
                    Err(fault) => return Poll::Ready(Incoming::Fault(fault)),
                }
                // An empty buffer still holds its allocation, which the last message split
                // from it may share: let go of it, so that a connection waiting for the
                // client holds none.
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                if let Some(payload) = self.payload.as_mut() {
                    match Pin::new(payload).poll_next(cx) {
                        Poll::Ready(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
                        // The HTTP layer has read the end it is shown once the socket has
                        // changed hands (an error, as for a payload cut short): what
                        // follows is on the socket.
                        Poll::Ready(Some(Err(_)) | None) => self.payload = None,
                        Poll::Pending => return Poll::Pending,
                    }
                    continue;
                }
                match self.fill(socket, cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Incoming::End),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket read ended");
                        return Poll::Ready(Incoming::End);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }

        /// Reads more of what the client sends: straight into the buffer, made as large as
        /// the frame being read needs, when more than [`READ_CHUNK`] of it is missing; else
        /// a chunk into the stack, then copied. How many bytes were read (0: the end).
        fn fill(&mut self, socket: &mut Handed, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
            if self.missing > READ_CHUNK {
                let len = self.buf.len();
                // Within the limit (the header was checked); zeroed, as nothing unsafe is.
                self.buf.resize(len + self.missing, 0);
                let mut read = ReadBuf::new(&mut self.buf[len..]);
                let polled = socket.poll_read(cx, &mut read);
                let n = read.filled().len();
                self.buf.truncate(len + n);
                return polled.map_ok(|()| n);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(socket.poll_read(cx, &mut read))?;
            self.buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        }

        /// The next message from the bytes received, if they hold one.
        fn decode(&mut self) -> Result<Option<Incoming>, Fault> {
            loop {
                self.missing = 0;
                let so_far = self.message.as_ref().map(BytesMut::len);
                let Some(head) = header(&self.buf, self.limit, so_far)? else {
                    return Ok(None);
                };
                let whole = head.size + head.len;
                if self.buf.len() < whole {
                    self.missing = whole - self.buf.len();
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

    /// The socket can no longer be written to: the connection has ended.
    #[derive(Debug)]
    pub(super) struct Gone;

    /// What happened on the socket.
    #[derive(Debug)]
    pub(super) enum Event {
        /// The client sent this.
        Incoming(Incoming),
        /// The frame being written has been written whole.
        Written,
    }

    /// The connection's socket, handed over after the handshake's head: the client's
    /// frames are read from it, and the server's written to it one at a time.
    pub(super) struct Socket {
        handed: Handed,
        inbound: Inbound,
        /// The frame being written, if any, and how much of it is written.
        out: Option<Bytes>,
        written: usize,
    }

    impl Socket {
        pub(super) fn new(handed: Handed, inbound: Inbound) -> Self {
            Self {
                handed,
                inbound,
                out: None,
                written: 0,
            }
        }

        /// Whether no frame is being written.
        pub(super) fn is_written(&self) -> bool {
            self.out.is_none()
        }

        /// The next message from the client, or the end of the frame being written, which
        /// is written meanwhile. A failed write is the end of the connection.
        pub(super) async fn next(&mut self) -> Event {
            poll_fn(|cx| {
                if self.out.is_some() {
                    match self.poll_written(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Event::Written),
                        Poll::Ready(Err(Gone)) => {
                            return Poll::Ready(Event::Incoming(Incoming::End))
                        }
                        Poll::Pending => {}
                    }
                }
                self.inbound
                    .poll_next(&mut self.handed, cx)
                    .map(Event::Incoming)
            })
            .await
        }

        /// Writes the frame being written, if any, to its end. A write that makes no progress
        /// for the stall deadline fails (see [`Handed::poll_write_vectored`]).
        fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
            while let Some(frame) = self.out.as_ref() {
                let rest = [io::IoSlice::new(&frame[self.written..])];
                match ready!(self.handed.poll_write_vectored(cx, &rest)) {
                    Ok(n) if n > 0 => {
                        self.written += n;
                        if self.written == frame.len() {
                            // Let go of the frame as soon as it is written.
                            self.out = None;
                            self.written = 0;
                        }
                    }
                    Ok(_) | Err(_) => {
                        self.out = None;
                        return Poll::Ready(Err(Gone));
                    }
                }
            }
            Poll::Ready(Ok(()))
        }

        /// Makes `frame` the one being written, once the one before is written whole; the
        /// rest of it is written while [`Self::next`] is awaited.
        pub(super) async fn send(&mut self, frame: Bytes) -> Result<(), Gone> {
            poll_fn(|cx| self.poll_written(cx)).await?;
            self.out = Some(frame);
            self.written = 0;
            Ok(())
        }

        /// Writes `frame` (a close) after what is being written, then ends the connection:
        /// its sending side is shut, and the socket closes when it is dropped.
        pub(super) async fn close(mut self, frame: Bytes) {
            if self.send(frame).await.is_ok() && poll_fn(|cx| self.poll_written(cx)).await.is_ok() {
                let _ = poll_fn(|cx| self.handed.poll_shutdown(cx)).await;
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
