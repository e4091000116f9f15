//! What happens to a TCP connection before and around the HTTP layer: the per-address
//! connection limit, and deadlines on every request head and every idle spell.
//!
//! actix-http's HTTP/1 dispatcher enforces `client_request_timeout` on the first request
//! head of a connection only (its head timer is armed once, when the connection starts,
//! and cleared by the first decoded request), and its keep-alive timer is cleared as soon
//! as any byte is read. A connection that sends one whole request and then one byte of a
//! second therefore has no timer at all and stays open for good. [`Connection`] wraps the
//! socket and watches the bytes going by, so that those deadlines hold for every request:
//!
//! - after a response was written the connection is idle: it is closed `keep_alive` after
//!   the write unless a byte arrives;
//! - the first byte after that starts a request head, which must end (an empty line) within
//!   `request_head_timeout`; meanwhile no more than `keep_alive` may pass between bytes;
//! - once the head has ended the request belongs to the application (the body has its own
//!   timeout there) until its response is written;
//! - a write that cannot proceed (the peer reads nothing) for `keep_alive` ends the
//!   connection, in any phase.
//!
//! A response that turns the connection into a long-lived stream (Server-Sent Events, a
//! WebSocket) says so through the connection's [`StreamMark`]: from then on neither reads
//! nor quiet spells have a deadline, and only a peer that takes nothing of what is written
//! for [`Deadlines::stream_stall`] is cut off.
//!
//! The first request of a connection is left to the dispatcher's own head timer, which
//! answers a slow head with `408`. Past a deadline the wrapper fails the next read or write,
//! and the dispatcher drops the connection.
//!
//! Live streams go further: an event stream's or a WebSocket's handler asks for the socket
//! itself ([`StreamMark::hand_over`]). The dispatcher writes the response head as usual;
//! the wrapper passes the head through, then gives the socket to the handler's task as a
//! [`Handed`] and shows the dispatcher an ended connection. The dispatcher, and the buffers
//! it holds for a connection (8 KiB to read, 8 KiB or more to write), are then gone, and the
//! stream costs little more than its socket while idle. The socket changes hands in the
//! very write that completes the head, before that write returns: whatever the client sends
//! once it has the head can only be read by the new owner.

use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::config::{ServerSettings, StreamSettings};

/// A live stream whose reader takes nothing for this many `stream.keep_alive` periods is
/// cut off (its client resumes with `Last-Event-ID`).
pub const STALLED_READER_KEEP_ALIVES: u32 = 4;

/// The deadlines a [`Connection`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From the first byte of a request head to its end.
    pub head: Duration,
    /// Longest silence while idle or inside a head; `None` when keep-alive is off (the
    /// dispatcher then closes after each response).
    pub idle: Option<Duration>,
    /// On a live stream: longest time a write may make no progress.
    pub stream_stall: Duration,
}

impl Deadlines {
    pub fn from_settings(server: &ServerSettings, stream: &StreamSettings) -> Self {
        Self {
            head: server.request_head_timeout,
            idle: (!server.keep_alive.is_zero()).then_some(server.keep_alive),
            stream_stall: stream.keep_alive * STALLED_READER_KEEP_ALIVES,
        }
    }
}

/// Set while a connection carries a live stream; handlers find it in the request's
/// connection data (`HttpRequest::conn_data`). It also tells the stream when the peer has
/// gone: a stream with nothing to write would otherwise not learn of it until its next
/// keep-alive comment.
#[derive(Debug, Clone, Default)]
pub struct StreamMark(Arc<MarkState>);

#[derive(Debug, Default)]
struct MarkState {
    streaming: AtomicBool,
    /// The socket was found drained and closed (end of file) while streaming.
    gone: AtomicBool,
    /// The stream waiting to hear of it.
    waker: AtomicWaker,
    /// Where the socket goes once the response head is written, when the handler asked
    /// for it.
    handover: Mutex<Option<oneshot::Sender<Handed>>>,
    /// A handler asked for the socket ([`StreamMark::hand_over`]): the connection is the
    /// stream's from then on, and a request the HTTP layer still holds (pipelined behind
    /// the stream's) could get no answer.
    handed: AtomicBool,
}

impl StreamMark {
    /// Marks the connection as streaming until the guard is dropped.
    pub fn hold(&self) -> StreamGuard {
        self.0.streaming.store(true, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    fn is_set(&self) -> bool {
        self.0.streaming.load(Ordering::Relaxed)
    }

    /// Whether a handler asked for the connection's socket ([`Self::hand_over`]): a
    /// request the HTTP layer decodes from it after that was sent behind the stream's, and
    /// its answer could only be dropped, so it must not be carried out. (The dispatcher
    /// starts such a request as soon as the stream's response is made, before it has
    /// written the head, so the hand-over itself comes too late to tell.)
    pub fn handed_over(&self) -> bool {
        self.0.handed.load(Ordering::Acquire)
    }

    /// Asks for the socket once the head of the response to this request is written: the
    /// connection then ends for the HTTP layer (the rest of what it writes is dropped, and
    /// it reads an end of file), and the socket comes through the receiver, for the
    /// response's body to be written to it (and, after a `101 Switching Protocols`, the
    /// new protocol spoken on it) by whoever holds it. The receiver gets nothing when the
    /// connection ends before the head is written.
    pub fn hand_over(&self) -> oneshot::Receiver<Handed> {
        let (give, take) = oneshot::channel();
        self.0.handed.store(true, Ordering::Release);
        *self.0.handover.lock() = Some(give);
        take
    }

    fn peer_gone(&self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

/// Keeps a connection marked as streaming; the mark goes with it.
#[derive(Debug)]
pub struct StreamGuard(StreamMark);

impl StreamGuard {
    /// Whether the peer has closed the connection; if not, the task is woken when it does.
    pub fn poll_gone(&self, cx: &mut Context<'_>) -> bool {
        let state = &(self.0).0;
        if state.gone.load(Ordering::Acquire) {
            return true;
        }
        state.waker.register(cx.waker());
        state.gone.load(Ordering::Acquire)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        (self.0).0.streaming.store(false, Ordering::Relaxed);
    }
}

/// The kernel's send buffer on a live stream: what a reader that stops reading leaves
/// queued below the HTTP layer's own buffer (Linux doubles the value asked for).
const STREAM_SEND_BUFFER: usize = 32 * 1024;

/// Where a connection stands in its stream of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first response, or between the end of a head and its response: the
    /// dispatcher or the application keeps time.
    Busy,
    /// A response was written and nothing has been read since.
    Idle,
    /// Some bytes of a request head have been read, not yet its end.
    Head,
}

/// The interim answer to `Expect: 100-continue`, which the dispatcher writes before a
/// request's body is read: it is not the response to that request.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A TCP stream that enforces [`Deadlines`] on each request after the first, and holds the
/// connection's place in the per-address count for as long as it lives.
pub struct Connection {
    /// `None` once handed over (see [`StreamMark::hand_over`]).
    stream: Option<TcpStream>,
    deadlines: Deadlines,
    phase: Phase,
    head_end: HeadEnd,
    /// When the current head must have ended (meaningful in [`Phase::Head`]).
    head_due: Instant,
    /// When the connection is closed unless something happens first.
    due: Option<Instant>,
    /// Made the first time a deadline is waited for, then moved rather than remade.
    timer: Option<Pin<Box<Sleep>>>,
    mark: StreamMark,
    /// Whether the send buffer was made small for a stream.
    stream_buffer_set: bool,
    /// Where the response head being written ends, when the socket is to be handed over.
    head_written: HeadWritten,
    _slot: Option<AddressSlot>,
}

impl Connection {
    pub fn new(stream: TcpStream, deadlines: Deadlines, slot: Option<AddressSlot>) -> Self {
        let now = Instant::now();
        Self {
            stream: Some(stream),
            deadlines,
            phase: Phase::Busy,
            head_end: HeadEnd::default(),
            head_due: now,
            due: None,
            timer: None,
            mark: StreamMark::default(),
            stream_buffer_set: false,
            head_written: HeadWritten::default(),
            _slot: slot,
        }
    }

    /// The mark a handler sets when this connection becomes a live stream.
    pub fn mark(&self) -> StreamMark {
        self.mark.clone()
    }

    /// Accounts for bytes just read; returns whether the current deadline has passed.
    fn on_read(&mut self, bytes: &[u8]) -> bool {
        if self.mark.is_set() {
            self.due = None;
            return false;
        }
        if self.phase == Phase::Busy {
            return false;
        }
        let now = Instant::now();
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.head_end = HeadEnd::default();
            self.head_due = now + self.deadlines.head;
        }
        if self.head_end.feed(bytes) {
            self.phase = Phase::Busy;
            self.due = None;
            return false;
        }
        let due = match self.deadlines.idle {
            Some(idle) => self.head_due.min(now + idle),
            None => self.head_due,
        };
        self.due = Some(due);
        now >= due
    }

    /// Accounts for bytes just written.
    fn on_write(&mut self, written: &[u8]) {
        if self.mark.is_set() {
            self.phase = Phase::Busy;
            self.due = None;
            return;
        }
        match self.phase {
            // A head under way keeps its deadline, whatever is being answered meanwhile.
            Phase::Head => {}
            Phase::Busy if written == CONTINUE => self.due = None,
            Phase::Busy | Phase::Idle => {
                self.phase = Phase::Idle;
                self.due = self.deadlines.idle.map(|idle| Instant::now() + idle);
            }
        }
    }

    /// Whether the socket is to be handed over once the response head is written.
    fn handing_over(&self) -> bool {
        self.mark.is_set() && self.mark.0.handover.lock().is_some()
    }

    /// Gives the socket to the stream that asked for it.
    fn hand_over(&mut self) {
        let give = self.mark.0.handover.lock().take();
        let chunked = self.head_written.chunked();
        self.head_written = HeadWritten::default();
        self.due = None;
        self.timer = None;
        if let (Some(give), Some(stream)) = (give, self.stream.take()) {
            // The stream gathers its own batches and writes each whole: a write held back
            // for the acknowledgement of the one before (Nagle's algorithm, which the
            // peer's delayed acknowledgements make last up to 40 ms) would only add delay.
            let _ = stream.set_nodelay(true);
            // Refused only when the stream is gone: the socket then closes.
            let _ = give.send(Handed {
                stream,
                chunked,
                stall: self.deadlines.stream_stall,
                timer: None,
                _slot: self._slot.take(),
            });
        }
    }

    /// Whether the current deadline has passed; if not, the task is woken when it does.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.due else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        // Deadlines mostly move later (each request pushes the idle one on). Re-arming the
        // timer costs a trip through the runtime's timer wheel, so a timer set earlier is
        // left to fire and only then moved to the current deadline: about one re-arm per
        // idle period rather than one per request.
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if timer.deadline() >= due {
                return true;
            }
            timer.as_mut().reset(due);
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head or keep-alive deadline passed",
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            // Handed over: the HTTP layer sees the connection end.
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() && buf.remaining() > 0 && this.mark.is_set() {
                    this.mark.peer_gone();
                }
                if !read.is_empty() && this.on_read(read) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.poll_due(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let handing = this.handing_over();
        let Some(stream) = this.stream.as_mut() else {
            // Handed over: what the HTTP layer still writes (the end of the empty body it was
            // given) is not for the client.
            return Poll::Ready(Ok(data.len()));
        };
        if !this.stream_buffer_set && this.mark.is_set() {
            this.stream_buffer_set = true;
            let _ = socket2::SockRef::from(&*stream).set_send_buffer_size(STREAM_SEND_BUFFER);
        }
        // Before a handover, only the response head goes out.
        let upto = match handing {
            true => this.head_written.end_in(data).unwrap_or(data.len()),
            false => data.len(),
        };
        match Pin::new(stream).poll_write(cx, &data[..upto]) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.on_write(&data[..n]);
                }
                if handing && this.head_written.feed(&data[..n]) {
                    this.hand_over();
                    // The dispatcher is to poll again, read the end of the connection and
                    // finish: nothing else would wake it now that the socket is gone.
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(data.len()));
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // A peer that stops reading cannot hold the connection either: a write that
                // makes no progress for `idle` (or `head` with keep-alive off) ends it,
                // whatever the phase.
                if this.due.is_none() {
                    let stall = if this.mark.is_set() {
                        this.deadlines.stream_stall
                    } else {
                        this.deadlines.idle.unwrap_or(this.deadlines.head)
                    };
                    this.due = Some(Instant::now() + stall);
                }
                if this.poll_due(cx) {
                    Poll::Ready(Err(timed_out()))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A stream waiting for this socket learns that it will not come.
        if self.mark.is_set() {
            self.mark.0.handover.lock().take();
        }
    }
}

/// Finds the end of a response head as it is written (`\r\n\r\n`: the dispatcher writes
/// no other line ends), and keeps the head meanwhile to tell its body's framing.
#[derive(Debug, Default)]
struct HeadWritten {
    /// How much of `\r\n\r\n` the bytes written so far end with.
    matched: usize,
    head: Vec<u8>,
}

impl HeadWritten {
    const END: &'static [u8] = b"\r\n\r\n";

    fn step(matched: usize, byte: u8) -> usize {
        if byte == Self::END[matched] {
            matched + 1
        } else if byte == b'\r' {
            1
        } else {
            0
        }
    }

    /// Where in `data` (to be written next) the head ends, if it does.
    fn end_in(&self, data: &[u8]) -> Option<usize> {
        let mut matched = self.matched;
        for (i, &byte) in data.iter().enumerate() {
            matched = Self::step(matched, byte);
            if matched == Self::END.len() {
                return Some(i + 1);
            }
        }
        None
    }

    /// Feeds bytes written (never past the head's end); whether the head has ended.
    fn feed(&mut self, written: &[u8]) -> bool {
        self.head.extend_from_slice(written);
        for &byte in written {
            self.matched = Self::step(self.matched, byte);
        }
        self.matched == Self::END.len()
    }

    /// Whether the head written says the body is chunked.
    fn chunked(&self) -> bool {
        let head = self.head.to_ascii_lowercase();
        memchr::memmem::find(&head, b"\r\ntransfer-encoding: chunked\r\n").is_some()
    }
}

/// The socket of a live stream, handed over once its response head is written (see
/// [`StreamMark::hand_over`]): an event stream writes its body to it, a WebSocket reads
/// and writes its frames on it. It keeps the connection's place in the per-address count
/// (given back when it is dropped), and cuts off a reader that takes nothing of what is
/// written for [`Deadlines::stream_stall`], as [`Connection`] does.
pub struct Handed {
    stream: TcpStream,
    /// Whether the head announced a chunked body (HTTP/1.1); else the body, if any, ends
    /// with the connection. A `101 Switching Protocols` head announces neither a length
    /// nor a chunked body (the HTTP layer writes nothing after it): `false`.
    pub chunked: bool,
    stall: Duration,
    /// Runs while a write makes no progress.
    timer: Option<Pin<Box<Sleep>>>,
    _slot: Option<AddressSlot>,
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed")
            .field("peer", &self.stream.peer_addr().ok())
            .field("chunked", &self.chunked)
            .finish()
    }
}

/// At most this many reads of what a peer sends on a stream (and is dropped) per poll.
const READS_PER_POLL: usize = 16;

impl Handed {
    /// Writes from `bufs`: how many bytes went out. Fails once a write has made no progress
    /// for the stall deadline.
    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.timer = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    /// Reads what the peer sends into `buf`; nothing read while `buf` has room means the
    /// peer will send no more.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    /// Whether the peer has closed the connection (or it failed); what the peer sends is
    /// read and dropped. If not, the task is woken when it may have.
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 64];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
        }
        // A peer that keeps sending gets its turn again later.
        cx.waker().wake_by_ref();
        false
    }

    /// Closes the sending side (the end of a body that ends with the connection).
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Finds the end of a request head (an empty line: `\n\r\n` or `\n\n`) across reads.
/// Empty lines before any other byte are not an end: HTTP allows them before a request line.
///
/// Only line feeds are looked at (found with `memchr`), each against the one or two bytes
/// before it, which may come from the previous read: a head of a few hundred bytes costs a
/// handful of checks rather than a branch per byte.
#[derive(Debug, Default, Clone, Copy)]
struct HeadEnd {
    /// The last two bytes fed since the head started, the latest last.
    last: [u8; 2],
    /// Whether any byte other than CR and LF has been seen.
    started: bool,
}

impl HeadEnd {
    /// Feeds bytes; returns true once the head has ended (the rest of `bytes` is not looked at).
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut bytes = bytes;
        if !self.started {
            let Some(first) = bytes.iter().position(|&b| b != b'\r' && b != b'\n') else {
                return false;
            };
            self.started = true;
            bytes = &bytes[first..];
        }
        for i in memchr::memchr_iter(b'\n', bytes) {
            let before = |back: usize| match i.checked_sub(back) {
                Some(j) => bytes[j],
                None => self.last[2 + i - back],
            };
            let previous = before(1);
            if previous == b'\n' || (previous == b'\r' && before(2) == b'\n') {
                return true;
            }
        }
        self.last = match *bytes {
            [] => self.last,
            [only] => [self.last[1], only],
            [.., a, b] => [a, b],
        };
        false
    }
}

/// Counts open connections per peer address and refuses those over the limit.
#[derive(Debug)]
pub struct AddressLimiter {
    limit: usize,
    open: DashMap<IpAddr, usize, foldhash::fast::RandomState>,
}

/// A connection's place in its address's count, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    limiter: Arc<AddressLimiter>,
    ip: IpAddr,
}

/// A connection refused because its address already holds the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

impl AddressLimiter {
    /// `limit` connections per address at most; 0 = no limit.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    /// Takes a place for a connection from `ip`; `Ok(None)` when there is no limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<AddressSlot>, OverLimit> {
        if self.limit == 0 {
            return Ok(None);
        }
        // IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        let mut count = self.open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return Err(OverLimit);
        }
        *count += 1;
        Ok(Some(AddressSlot {
            limiter: Arc::clone(self),
            ip,
        }))
    }

    /// Open connections from `ip` (for tests and diagnostics).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.get(&ip.to_canonical()).map_or(0, |n| *n)
    }

    /// Addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut entry) = self.limiter.open.entry(self.ip) {
            let count = entry.get_mut();
            *count = count.saturating_sub(1);
            if *count == 0 {
                entry.remove();
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so that the connection limits
/// (not the operating system's default of often 1024) decide how many clients fit, and
/// logs the outcome.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE);
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(soft) => {
                let (was, hard) = before.unwrap_or((soft, soft));
                tracing::info!(
                    soft = soft,
                    hard = hard,
                    was = was,
                    "open files limit (RLIMIT_NOFILE)"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot raise the open files limit (RLIMIT_NOFILE); it bounds how many \
                 connections the server holds"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Option<usize> {
        let mut head = HeadEnd::default();
        chunks.iter().position(|c| head.feed(c))
    }

    #[test]
    fn a_head_ends_at_its_empty_line_even_split_across_reads() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\n", b"\r", b"\n"]), Some(2));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\n"]), Some(1));
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\r\n"]), None);
    }

    /// The end of a head found one byte at a time, as the definition reads.
    fn model_end(bytes: &[u8]) -> Option<usize> {
        let (mut state, mut started) = (0u8, false);
        for (i, &b) in bytes.iter().enumerate() {
            match (state, b) {
                (1 | 2, b'\n') if started => return Some(i),
                (_, b'\n') => state = 1,
                (1, b'\r') => state = 2,
                (_, b'\r') => state = 0,
                _ => (state, started) = (0, true),
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn the_end_is_found_however_the_bytes_are_split(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b':']), 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let bounds: Vec<usize> = cuts.into_iter().chain([bytes.len()]).collect();
            let mut head = HeadEnd::default();
            let mut from = 0;
            let mut found = None;
            for &to in &bounds {
                if found.is_none() && head.feed(&bytes[from..to]) {
                    found = Some(to);
                }
                from = to;
            }
            // Found exactly in the read that holds the model's end byte.
            let expected = model_end(&bytes).and_then(|end| bounds.iter().copied().find(|&b| b > end));
            proptest::prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn empty_lines_alone_are_not_a_head() {
        assert_eq!(ends(&[b"\r\n\r\n\r\n", b"\n\n"]), None);
        assert_eq!(
            ends(&[b"\r\n\r\n", b"G", b"ET / HTTP/1.1\r\n\r\n"]),
            Some(2)
        );
    }

    #[test]
    fn the_limiter_counts_per_address_and_forgets_closed_connections() {
        let limiter = AddressLimiter::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let second = limiter.admit(a).unwrap();
        assert_eq!(limiter.admit(a).unwrap_err(), OverLimit);
        // The same address seen through a dual-stack listener.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(limiter.admit(mapped).unwrap_err(), OverLimit);
        assert!(limiter.admit(b).unwrap().is_some());
        assert_eq!(limiter.open_from(a), 2);
        drop(first);
        assert_eq!(limiter.open_from(a), 1);
        let third = limiter.admit(a).unwrap();
        drop((second, third));
        assert_eq!(limiter.open_from(a), 0);
        assert_eq!(
            limiter.addresses(),
            0,
            "no entry is kept for a quiet address"
        );
    }

    #[test]
    fn a_limit_of_zero_admits_everyone_without_counting() {
        let limiter = AddressLimiter::new(0);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert!(limiter.admit(a).unwrap().is_none());
        }
        assert_eq!(limiter.addresses(), 0);
    }
}
