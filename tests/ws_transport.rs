#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The WebSocket's transport, black-box: frames written byte by byte by a raw client, so
//! that a test can send what no well-behaved library would (oversize headers, unmasked or
//! fragmented frames, bad UTF-8) and can stop reading when it likes. What is checked: the
//! close code each fault gets (RFC 6455 section 7.4.1), that nothing of an oversize frame is
//! held, and that a reader that stops reading costs the server about what a stalled event
//! stream costs.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::live::{Sse, WS};
use common::process;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame.
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn json(&self) -> Value {
        assert_eq!(self.opcode, TEXT, "{self:?}");
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// The bytes of a client frame: masked (as clients must) unless `masked` is false.
fn frame_bytes(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// `GET {WS}` asking for an upgrade, with RFC 6455's own example key.
fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET {WS} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A WebSocket client over a plain socket, which writes and reads frames as bytes.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `GET {WS}`; a receive buffer of `rcvbuf` bytes when given.
    async fn open(addr: SocketAddr, rcvbuf: Option<u32>) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(addr).await.unwrap();
        let (head, ws) = Self::upgrade(stream, &[upgrade_request(addr).as_bytes()]).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The accept value of RFC 6455's own example key.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        ws
    }

    /// Writes `writes` one after the other (an upgrade request, perhaps frames with it or
    /// after it), then reads the answer's head and returns it; whatever came after the
    /// head is kept for the frames.
    async fn upgrade(mut stream: TcpStream, writes: &[&[u8]]) -> (String, Self) {
        for bytes in writes {
            stream.write_all(bytes).await.unwrap();
        }
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        (head, Self { stream, buf })
    }

    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&frame_bytes(fin, opcode, payload, true))
            .await
            .unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.send(true, TEXT, text.as_bytes()).await;
    }

    /// A frame parsed from the front of the buffer, if a whole one is there.
    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(b[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < at + len {
            return None;
        }
        let frame = Frame {
            fin: b[0] & 0x80 != 0,
            opcode: b[0] & 0x0F,
            payload: b[at..at + len].to_vec(),
        };
        self.buf.drain(..at + len);
        Some(frame)
    }

    /// The next frame within `within`; `None` on a timeout or when the connection ends.
    async fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// The next frame that is not a ping, within 10 s.
    async fn next(&mut self) -> Frame {
        loop {
            let frame = self
                .frame(Duration::from_secs(10))
                .await
                .expect("a frame within 10 s");
            if frame.opcode != PING {
                return frame;
            }
        }
    }

    /// The close code the server sends next (skipping pings and text), within `within`.
    async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.frame(left).await?;
            if frame.opcode == CLOSE {
                return frame.close_code();
            }
        }
    }

    /// Whether the server closes the connection (end of file or reset) within `within`,
    /// whatever it writes before.
    async fn ended_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

async fn spawn_live(change: impl FnOnce(&mut presence_server::Settings)) -> TestApp {
    let app = spawn_app_with(change).await;
    app.until_ready(Duration::from_secs(10)).await;
    app
}

/// Sends `bytes` and expects a close with `code` at once, then the end of the connection.
async fn expect_close(app: &TestApp, bytes: &[u8], code: u16) {
    let mut ws = RawWs::open(app.addr, None).await;
    ws.stream.write_all(bytes).await.unwrap();
    assert_eq!(
        ws.close_code(Duration::from_secs(5)).await,
        Some(code),
        "after {:02x?}",
        &bytes[..bytes.len().min(16)]
    );
    assert!(
        ws.ended_within(Duration::from_secs(5)).await,
        "the server closes the connection"
    );
}

/// A header declaring `len` bytes of text, masked, with no payload yet.
fn header_declaring(len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | TEXT, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

#[tokio::test]
async fn an_oversize_frame_is_refused_at_its_header_and_a_huge_one_at_once() {
    let app = spawn_live(|s| s.server.max_body_bytes = 16 * 1024).await;
    // 2^62 bytes declared, nothing sent: refused before any payload arrives.
    expect_close(&app, &header_declaring(1 << 62), 1009).await;
    // Just over the limit, announced with a 16-bit length.
    let mut over = vec![0x80 | TEXT, 0x80 | 126];
    over.extend_from_slice(&(16 * 1024 + 1u16).to_be_bytes());
    expect_close(&app, &over, 1009).await;
    // A 64-bit length with its top bit set is no length at all.
    expect_close(&app, &header_declaring(u64::MAX), 1002).await;
    // At the limit is served: a frame of that size is read (and answered as bad JSON).
    let mut ws = RawWs::open(app.addr, None).await;
    ws.send_text(&" ".repeat(16 * 1024)).await;
    assert_eq!(ws.next().await.json()["errors"][0]["code"], 0);
}

#[tokio::test]
async fn a_fragmented_message_is_bounded_in_total() {
    let app = spawn_live(|s| s.server.max_body_bytes = 16 * 1024).await;
    let piece = vec![b' '; 6 * 1024];
    let mut bytes = frame_bytes(false, TEXT, &piece, true);
    bytes.extend(frame_bytes(false, CONTINUATION, &piece, true));
    bytes.extend(frame_bytes(true, CONTINUATION, &piece, true));
    expect_close(&app, &bytes, 1009).await;

    // Within the limit, fragments make one message, with a ping between them.
    let mut ws = RawWs::open(app.addr, None).await;
    ws.send(false, TEXT, br#"{"subscr"#).await;
    ws.send(true, PING, b"between").await;
    ws.send(true, CONTINUATION, br#"ibe":[7]}"#).await;
    let pong = ws.next().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"between"[..])
    );
    let answer = ws.next().await.json();
    assert_eq!(answer["userPresences"], json!(app.lookup(&[7]).await));
}

#[tokio::test]
async fn a_large_message_trickled_in_small_writes_is_answered() {
    let app = spawn_live(|s| s.server.max_body_bytes = 64 * 1024).await;
    let mut ws = RawWs::open(app.addr, None).await;
    // About 40 KB of text, in three fragments with a ping between, each written a few
    // hundred bytes at a time: frames far larger than one read, and headers and payloads
    // cut anywhere.
    let text = format!(r#"{{"subscribe":[9]{}}}"#, " ".repeat(40_000));
    let cut = [0, 15_000, 31_000, text.len()];
    let mut bytes = Vec::new();
    for (i, part) in cut.windows(2).enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        let fin = i == cut.len() - 2;
        bytes.extend(frame_bytes(
            fin,
            opcode,
            &text.as_bytes()[part[0]..part[1]],
            true,
        ));
        if i == 0 {
            bytes.extend(frame_bytes(true, PING, b"midway", true));
        }
    }
    for piece in bytes.chunks(333) {
        ws.stream.write_all(piece).await.unwrap();
        ws.stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pong = ws.next().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"midway"[..])
    );
    let answer = ws.next().await.json();
    assert_eq!(answer["userPresences"], json!(app.lookup(&[9]).await));
    // The connection goes on: a small frame after the large one is answered too.
    ws.send_text(r#"{"subscribe":[10]}"#).await;
    assert_eq!(ws.next().await.json()["userPresences"][0]["userId"], 10);
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_answered() {
    // A client should wait for the `101` before it sends a frame; one that does not is
    // still served, in order, whether the frames came with the request or right after.
    let app = spawn_live(|_| {}).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let mut bytes = upgrade_request(app.addr).into_bytes();
    bytes.extend(frame_bytes(true, PING, b"early", true));
    bytes.extend(frame_bytes(true, TEXT, br#"{"subscribe":[11]}"#, true));
    let after = frame_bytes(true, TEXT, br#"{"subscribe":[12]}"#, true);
    let (head, mut ws) = RawWs::upgrade(stream, &[&bytes, &after]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let pong = ws.next().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"early"[..])
    );
    assert_eq!(ws.next().await.json()["userPresences"][0]["userId"], 11);
    assert_eq!(ws.next().await.json()["userPresences"][0]["userId"], 12);
}

#[tokio::test]
async fn protocol_faults_get_their_close_codes() {
    let app = spawn_live(|_| {}).await;
    // Not UTF-8 (also across fragments).
    expect_close(
        &app,
        &frame_bytes(true, TEXT, b"{\"a\":\"\xff\"}", true),
        1007,
    )
    .await;
    let mut split = frame_bytes(false, TEXT, b"\xe2\x82", true);
    split.extend(frame_bytes(true, CONTINUATION, b"\xac", true));
    let mut ws = RawWs::open(app.addr, None).await;
    ws.stream.write_all(&split).await.unwrap();
    // A euro sign cut in two is still UTF-8 once whole (and then not JSON).
    assert_eq!(ws.next().await.json()["errors"][0]["code"], 0);
    // Unmasked.
    expect_close(&app, &frame_bytes(true, TEXT, b"{}", false), 1002).await;
    // Binary, whole or as the start of a message.
    expect_close(&app, &frame_bytes(true, BINARY, b"\x01\x02", true), 1003).await;
    expect_close(&app, &frame_bytes(false, BINARY, b"\x01", true), 1003).await;
    // Reserved bits, an unknown opcode, a fragmented or long control frame.
    expect_close(&app, &[0x80 | 0x40 | TEXT, 0x80, 1, 2, 3, 4], 1002).await;
    expect_close(&app, &frame_bytes(true, 0x3, b"", true), 1002).await;
    expect_close(&app, &frame_bytes(false, PING, b"", true), 1002).await;
    expect_close(&app, &frame_bytes(true, PING, &[0; 126], true), 1002).await;
    // A continuation with nothing to continue, a new message inside one.
    expect_close(&app, &frame_bytes(true, CONTINUATION, b"{}", true), 1002).await;
    let mut nested = frame_bytes(false, TEXT, b"{", true);
    nested.extend(frame_bytes(true, TEXT, b"}", true));
    expect_close(&app, &nested, 1002).await;
    // A close frame of one byte, or with a code no endpoint may send.
    expect_close(&app, &frame_bytes(true, CLOSE, b"\x03", true), 1002).await;
    expect_close(
        &app,
        &frame_bytes(true, CLOSE, &1005u16.to_be_bytes(), true),
        1002,
    )
    .await;
}

#[tokio::test]
async fn a_ping_is_answered_and_a_close_is_echoed() {
    let app = spawn_live(|_| {}).await;
    let mut ws = RawWs::open(app.addr, None).await;
    ws.send(true, PING, b"hello").await;
    let pong = ws.next().await;
    assert_eq!(
        pong,
        Frame {
            fin: true,
            opcode: PONG,
            payload: b"hello".to_vec()
        }
    );
    // A pong nobody asked for is ignored.
    ws.send(true, PONG, b"").await;
    ws.send_text(r#"{"subscribe":[8]}"#).await;
    assert_eq!(ws.next().await.json()["userPresences"][0]["userId"], 8);

    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    ws.send(true, CLOSE, &payload).await;
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(1000));
    assert!(ws.ended_within(Duration::from_secs(5)).await);

    // An empty close is answered too.
    let mut ws = RawWs::open(app.addr, None).await;
    ws.send(true, CLOSE, b"").await;
    let close = ws.next().await;
    assert_eq!(close.opcode, CLOSE);
    assert!(ws.ended_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn the_server_pings_and_closes_with_1001_at_shutdown() {
    let app = spawn_live(|s| s.stream.keep_alive = Duration::from_secs(1)).await;
    let mut ws = RawWs::open(app.addr, None).await;
    let ping = ws.frame(Duration::from_secs(5)).await.expect("a ping");
    assert_eq!(ping.opcode, PING);
    let (code, ()) = tokio::join!(ws.close_code(Duration::from_secs(5)), app.stop());
    assert_eq!(code, Some(1001));
}

/// The ids 31..=40 as a subscribe frame.
fn watched() -> Vec<u64> {
    (31..=40).collect()
}

/// Thousands of changes to `users`, in turn.
async fn change_many(app: &TestApp, users: &[u64], changes: usize) {
    let tokens: Vec<String> = users.iter().map(|&u| app.token(u)).collect();
    common::live::change_many(&app.client, app.addr, &tokens, changes).await;
}

#[tokio::test]
async fn a_websocket_that_stops_reading_gets_the_latest_entries_coalesced() {
    let app = spawn_live(|_| {}).await;
    let users = watched();
    let mut ws = RawWs::open(app.addr, Some(4096)).await;
    ws.send_text(&json!({ "subscribe": users }).to_string())
        .await;
    ws.next().await;

    // Thousands of changes while the reader reads nothing, then a subscribe whose answer it
    // does not read yet either: starting to watch user 41 must not drop what is pending for
    // the users already watched.
    let changes = 3000;
    change_many(&app, &users, changes).await;
    ws.send_text(r#"{"subscribe":[41]}"#).await;

    let expected = app.lookup(&users).await;
    let mut latest = std::collections::HashMap::new();
    let mut received = 0;
    let mut answered = false;
    while !answered
        || users
            .iter()
            .zip(&expected)
            .any(|(u, e)| latest.get(u) != Some(e))
    {
        let frame = ws.next().await.json();
        for entry in frame["userPresences"].as_array().unwrap() {
            let id = entry["userId"].as_u64().unwrap();
            if id == 41 {
                answered = true;
                continue;
            }
            received += 1;
            latest.insert(id, entry.clone());
        }
    }
    assert!(
        received < changes / 3,
        "{received} entries for {changes} changes: changes were not coalesced"
    );
}

#[tokio::test]
async fn a_websocket_that_takes_nothing_is_closed_after_four_keep_alives() {
    let app = spawn_live(|s| s.stream.keep_alive = Duration::from_secs(1)).await;
    let users = watched();
    let mut ws = RawWs::open(app.addr, Some(4096)).await;
    ws.send_text(&json!({ "subscribe": users }).to_string())
        .await;
    ws.next().await;
    change_many(&app, &users, 3000).await;
    // Reading nothing for well over 4 s: the server gives up on the connection.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let open = app.metrics().await;
    assert!(
        open.contains("presence_streams_open 0\n"),
        "the stalled WebSocket is closed: {}",
        open.lines()
            .filter(|l| l.starts_with("presence_streams"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(ws.ended_within(Duration::from_secs(10)).await);
}

// ---- The binary, for its memory and its log ----

fn start_binary(extra: &str, log: &str) -> process::Running {
    let config = process::config_file(&format!("{}{extra}", process::BASE));
    let mut cmd = process::command(config.path());
    cmd.env("RUST_LOG", log);
    let running = process::start(cmd);
    // The config file may go once the server has read it.
    drop(config);
    running
}

#[tokio::test]
async fn sending_on_after_an_oversize_header_does_not_grow_the_server() {
    let server = start_binary("max_body_bytes = 16384\n", "info");
    let addr: SocketAddr = server.addr.parse().unwrap();
    let pid = server.child.id();
    // Warm up: one ordinary WebSocket, so the first one's allocations are not counted.
    let mut ws = RawWs::open(addr, None).await;
    ws.send_text(r#"{"subscribe":[1]}"#).await;
    ws.next().await;
    let before = process::rss_kib(pid);

    let mut ws = RawWs::open(addr, None).await;
    ws.stream
        .write_all(&header_declaring(1 << 62))
        .await
        .unwrap();
    // Then 64 MB of payload, for as long as the server takes it.
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut sent = 0usize;
    let writing = async {
        for _ in 0..64 {
            if ws.stream.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), writing).await;
    let after = process::rss_kib(pid);
    println!(
        "sent {} MiB after the header; server RSS {before} KiB -> {after} KiB",
        sent >> 20
    );
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(1009));
    assert!(ws.ended_within(Duration::from_secs(5)).await);
    assert!(
        after < before + 8 * 1024,
        "the server grew from {before} KiB to {after} KiB on {sent} bytes it should have refused"
    );
}

#[tokio::test]
async fn client_faults_are_not_logged_as_errors() {
    let mut server = start_binary("", "debug");
    let addr: SocketAddr = server.addr.parse().unwrap();
    let faults: Vec<Vec<u8>> = vec![
        header_declaring(1 << 62),
        frame_bytes(true, TEXT, b"\xff", true),
        frame_bytes(true, TEXT, b"{}", false),
        frame_bytes(true, BINARY, b"\x01", true),
        frame_bytes(false, PING, b"", true),
        frame_bytes(false, CLOSE, b"", true),
        [0xF1, 0x80, 1, 2, 3, 4].to_vec(),
        frame_bytes(true, CONTINUATION, b"{}", true),
    ];
    for bytes in &faults {
        let mut ws = RawWs::open(addr, None).await;
        ws.stream.write_all(bytes).await.unwrap();
        assert!(ws.close_code(Duration::from_secs(5)).await.is_some());
        assert!(ws.ended_within(Duration::from_secs(5)).await);
    }
    // One that drops mid-frame.
    let mut ws = RawWs::open(addr, None).await;
    ws.stream.write_all(&[0x81, 0xFE, 0x10]).await.unwrap();
    drop(ws);
    // The log shows the faults at DEBUG; a lookup marks where they end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    process::lookup(&server.addr, 1).await;
    server.signal("TERM");
    server.wait_exit();
    let errors: Vec<&String> = server.logs.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "client faults logged as errors: {errors:#?}"
    );
}

/// Server memory for `n` readers that stop reading while thousands of changes happen:
/// WebSockets against event streams. Run with
/// `cargo test --test ws_transport -- --ignored --nocapture stalled_readers`.
#[tokio::test]
#[ignore = "a measurement; prints figures"]
async fn stalled_readers_memory() {
    let n = 50;
    let changes = 3000;
    let users = watched();
    for kind in ["sse", "ws"] {
        let server = start_binary(
            &format!(
                "[auth]\njwt_secret = \"{SECRET}\"\n\
                 [rate_limit]\nregister_per_second = 0\nlookup_per_second = 0\n"
            ),
            "info",
        );
        let addr: SocketAddr = server.addr.parse().unwrap();
        let pid = server.child.id();
        // Warm up the allocator and the routes with one reader of each kind.
        {
            let mut ws = RawWs::open(addr, None).await;
            ws.send_text(r#"{"subscribe":[1]}"#).await;
            ws.next().await;
            let _sse = Sse::open(addr, "userIds=1", &[], None).await;
        }
        let list = users
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let before = process::rss_kib(pid);
        let mut held_ws = Vec::new();
        let mut held_sse = Vec::new();
        for _ in 0..n {
            if kind == "ws" {
                let mut ws = RawWs::open(addr, Some(4096)).await;
                ws.send_text(&json!({ "subscribe": users }).to_string())
                    .await;
                ws.next().await;
                held_ws.push(ws);
            } else {
                let mut sse = Sse::open(addr, &format!("userIds={list}"), &[], Some(4096)).await;
                sse.event().await;
                held_sse.push(sse);
            }
        }
        let opened = process::rss_kib(pid);
        let client = reqwest::Client::new();
        let auth = presence_server::auth::Authenticator::new(SECRET);
        let tokens: Vec<String> = users
            .iter()
            .map(|&u| {
                auth.mint(
                    presence_server::presence::UserId::new(u).unwrap(),
                    Duration::from_secs(3600),
                )
                .unwrap()
            })
            .collect();
        let started = std::time::Instant::now();
        common::live::change_many(&client, addr, &tokens, changes).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = process::rss_kib(pid);
        println!(
            "{kind}: {n} stalled readers, {changes} changes in {:?}: RSS {before} KiB before, \
             {opened} KiB open (+{} KiB), {after} KiB after the changes (+{} KiB, {} KiB per reader)",
            started.elapsed(),
            opened - before,
            after.saturating_sub(before),
            after.saturating_sub(before) / n
        );
        drop(held_ws);
        drop(held_sse);
    }
}
