#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connections, black-box through a real socket: every request head of a keep-alive
//! connection (not only the first) must arrive within `server.request_head_timeout`, an
//! idle connection closes after `server.keep_alive` even with part of a head sent, one
//! client address holds at most `server.max_connections_per_address` connections, and
//! while one address holds many, another is still answered. Clients connect from distinct
//! loopback addresses (127.0.0.2, 127.0.0.3, ...), which Linux routes to the server like
//! any other.
//!
//! Deadlines here are short and bounds generous: a test asserts that a connection is
//! closed well before the next longer timer could have closed it, never how fast. They are
//! no shorter than a second because actix-http reads the time for its own timers (the
//! first head's, keep-alive) from a clock it updates every 500 ms.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::{self, BASE};
use common::*;

/// How long a raw client waits for the server before calling it a hang.
const PATIENCE: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(60);

/// A connection to `server` from the local address `from`.
fn connect_from(from: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&server.into(), PATIENCE)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A keep-alive lookup of user `id`.
fn lookup_request(id: u64) -> Vec<u8> {
    let body = format!(r#"{{"userIds":[{id}]}}"#);
    format!(
        "POST {USERS} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one answer with a `content-length` body; `None` if the server closed first.
fn read_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(done) = parse_answer(&answer) {
            return Some(done);
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no answer nor close within {PATIENCE:?}: {:?}",
                    String::from_utf8_lossy(&answer)
                )
            }
            Err(_) => return None,
        }
    }
}

/// Status and body of a whole answer, once it is whole.
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())?;
    if body.len() < length {
        return None;
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body[..length].to_owned()))
}

/// Sends a lookup on `stream` and asserts the answer names user `id`.
fn assert_lookup_answered(stream: &mut TcpStream, id: u64) {
    stream.write_all(&lookup_request(id)).unwrap();
    let (status, body) = read_answer(stream).expect("an answer, not a close");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""userId":{id}"#)), "{body}");
}

/// Waits up to `within` for the server to close `stream` (discarding anything it sends);
/// returns how long that took, or `None` if the connection is still open.
fn time_to_close(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Whether the server has closed `stream`, without waiting.
fn is_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match (&*stream).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Deadlines on every request head.

#[tokio::test]
async fn one_byte_of_a_second_head_is_closed_after_the_head_timeout() {
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = SHORT;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    let closed_after = blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        assert_lookup_answered(&mut stream, 1);
        stream.write_all(b"P").unwrap();
        time_to_close(&mut stream, PATIENCE)
    })
    .await;
    let closed_after = closed_after.expect("the connection was still open");
    assert!(closed_after >= SHORT / 2, "closed early: {closed_after:?}");
}

#[tokio::test]
async fn a_second_head_sent_a_byte_at_a_time_is_closed_after_the_head_timeout() {
    // Bytes arrive more often than keep_alive, so only the head deadline can close it.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = SHORT;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    let (sent, closed) = blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        assert_lookup_answered(&mut stream, 1);
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
            "p".repeat(500)
        );
        let start = Instant::now();
        for (i, byte) in head.bytes().enumerate() {
            if stream.write_all(&[byte]).is_err() {
                return (i, Some(start.elapsed()));
            }
            if let Some(after) = time_to_close(&mut stream, Duration::from_millis(20)) {
                return (i + 1, Some(start.elapsed().max(after)));
            }
            if start.elapsed() > PATIENCE {
                return (i + 1, None);
            }
        }
        (head.len(), None)
    })
    .await;
    assert!(
        closed.is_some(),
        "not closed after {sent} bytes of a second head"
    );
}

#[tokio::test]
async fn a_pipelined_partial_head_is_closed_too() {
    // One write: a whole request, then the start of the next one.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = SHORT;
    })
    .await;
    let addr = app.addr;
    let closed = blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        let mut bytes = lookup_request(2);
        bytes.extend_from_slice(b"POST /v1/pres");
        stream.write_all(&bytes).unwrap();
        let (status, _) = read_answer(&mut stream).expect("the first request is answered");
        assert_eq!(status, 200);
        time_to_close(&mut stream, PATIENCE)
    })
    .await;
    assert!(
        closed.is_some(),
        "a buffered partial head held the connection"
    );
}

#[tokio::test]
async fn an_idle_connection_with_a_partial_head_closes_after_keep_alive() {
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = SHORT;
    })
    .await;
    let addr = app.addr;
    let closed = blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        assert_lookup_answered(&mut stream, 3);
        stream.write_all(b"GET /hea").unwrap();
        time_to_close(&mut stream, PATIENCE)
    })
    .await;
    assert!(closed.is_some(), "still open long after keep_alive");
}

#[tokio::test]
async fn a_connection_that_keeps_sending_whole_requests_stays_open() {
    // The deadlines are per head and per idle spell, not per connection.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = SHORT;
        s.server.keep_alive = SHORT;
    })
    .await;
    let addr = app.addr;
    blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        let start = Instant::now();
        let mut id = 10;
        // Several head timeouts' worth of requests, each sent whole.
        while start.elapsed() < SHORT * 3 {
            assert_lookup_answered(&mut stream, id);
            id += 1;
        }
        // A request sent in two parts, well within the head timeout, is answered.
        let request = lookup_request(id);
        let (first, rest) = request.split_at(20);
        stream.write_all(first).unwrap();
        std::thread::sleep(SHORT / 10);
        stream.write_all(rest).unwrap();
        let (status, _) = read_answer(&mut stream).expect("answered");
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_request_with_expect_continue_is_answered_on_a_kept_connection() {
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = SHORT;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    blocking(move || {
        let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
        assert_lookup_answered(&mut stream, 20);
        let body = br#"{"userIds":[21]}"#;
        let head = format!(
            "POST {USERS} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // The body follows the interim answer, as a client waiting for it would send it.
        let mut interim = [0u8; 25];
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body).unwrap();
        let (status, answer) = read_answer(&mut stream).expect("answered");
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains(r#""userId":21"#), "{answer}");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_sends_requests_but_never_reads_is_closed_after_keep_alive() {
    // Pipelined requests pile up answers the client never reads, until the server can
    // neither write nor read: no head is under way, and nothing is idle.
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = SHORT;
    })
    .await;
    let addr = app.addr;
    let outcome = blocking(move || {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .bind(&SocketAddr::new(ip("127.0.0.2"), 0).into())
            .unwrap();
        socket.connect_timeout(&addr.into(), PATIENCE).unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let request = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let start = Instant::now();
        let mut blocked_since: Option<Instant> = None;
        loop {
            match stream.write(request) {
                Ok(_) => blocked_since = None,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    blocked_since.get_or_insert_with(Instant::now);
                }
                // Reset by the server: closed.
                Err(_) => return Ok(blocked_since.map(|t| t.elapsed())),
            }
            if start.elapsed() > PATIENCE * 2 {
                return Err(blocked_since.map(|t| t.elapsed()));
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "still open; writes blocked for {:?}",
        outcome.unwrap_err()
    );
}

// ---------------------------------------------------------------------------------------
// Connections per address.

#[tokio::test]
async fn connections_over_the_per_address_limit_are_closed_at_once_while_others_are_served() {
    let app = spawn_app_with(|s| {
        s.server.max_connections_per_address = 5;
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    blocking(move || {
        let crowd = ip("127.0.0.2");
        // Five connections, each answered (so each was admitted) and then kept open.
        let mut held: Vec<TcpStream> = (0..5)
            .map(|i| {
                let mut stream = connect_from(crowd, addr).unwrap();
                assert_lookup_answered(&mut stream, 30 + i);
                stream
            })
            .collect();

        // A sixth is closed without an answer, long before any timeout.
        let mut extra = connect_from(crowd, addr).unwrap();
        let _ = extra.write_all(&lookup_request(40));
        assert_eq!(read_answer(&mut extra), None, "the sixth was served");

        // Another address is served, and so are the five already open.
        let mut other = connect_from(ip("127.0.0.3"), addr).unwrap();
        assert_lookup_answered(&mut other, 41);
        for (i, stream) in held.iter_mut().enumerate() {
            assert_lookup_answered(stream, 50 + i as u64);
        }

        // Once one of the five closes, its place is free again (the server notices the
        // close on its own schedule, so this is polled).
        drop(held.pop());
        let start = Instant::now();
        loop {
            let mut again = connect_from(crowd, addr).unwrap();
            let _ = again.write_all(&lookup_request(60));
            if let Some((status, _)) = read_answer(&mut again) {
                assert_eq!(status, 200);
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the freed place was never reused"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await;
}

/// Reads from `stream` until what it has read contains `wanted`; panics if the server
/// closes first or is silent for longer than [`PATIENCE`].
fn read_until_found(stream: &mut TcpStream, wanted: &str) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&read).contains(wanted) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "no {wanted:?} before the end: {:?}",
                String::from_utf8_lossy(&read)
            ),
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
    read
}

/// Opens a WebSocket on `stream` and has it watch user `id` (its answer is read).
fn open_websocket(stream: &mut TcpStream, id: u64) {
    let upgrade = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        common::live::WS
    );
    stream.write_all(upgrade.as_bytes()).unwrap();
    let head = read_until_found(stream, "\r\n\r\n");
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    // A masked text frame (a mask of zeros leaves the payload as it is).
    let text = format!(r#"{{"subscribe":[{id}]}}"#);
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    stream.write_all(&frame).unwrap();
    read_until_found(stream, &format!(r#""userId":{id}"#));
}

#[tokio::test]
async fn a_live_stream_holds_its_place_until_its_client_leaves() {
    let app = spawn_app_with(|s| {
        s.server.max_connections_per_address = 2;
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    blocking(move || {
        let from = ip("127.0.0.4");
        // A WebSocket and an event stream: both places taken (each stream's socket has
        // left the HTTP layer by now, with its place).
        let mut ws = connect_from(from, addr).unwrap();
        open_websocket(&mut ws, 70);
        let mut sse = connect_from(from, addr).unwrap();
        let request = format!(
            "GET {}?userIds=71 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            common::live::STREAM
        );
        sse.write_all(request.as_bytes()).unwrap();
        read_until_found(&mut sse, r#""userId":71"#);
        let mut extra = connect_from(from, addr).unwrap();
        let _ = extra.write_all(&lookup_request(72));
        assert_eq!(
            read_answer(&mut extra),
            None,
            "a third connection was served"
        );

        // Once a stream's client leaves, its place is free again; the connections that
        // take the places are kept, so the second one proves both places given back.
        let mut kept = Vec::new();
        for (i, stream) in [ws, sse].into_iter().enumerate() {
            drop(stream);
            let start = Instant::now();
            loop {
                let mut again = connect_from(from, addr).unwrap();
                let _ = again.write_all(&lookup_request(73 + i as u64));
                if let Some((status, _)) = read_answer(&mut again) {
                    assert_eq!(status, 200);
                    kept.push(again);
                    break;
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "the place of stream {i} was never given back"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn thousands_of_held_connections_from_one_address_do_not_lock_another_out() {
    // Each connection sends a whole request, then one byte of a second one, and is held:
    // the attack that used to fill the server's file descriptors. With the shipped limit
    // of 1024 per address the rest are closed at once.
    presence_server::connections::raise_open_files_limit();
    let attempts = descriptors_for_test().min(2_500);
    let app = spawn_app_with(|s| {
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = LONG;
    })
    .await;
    let limit = app.settings.server.max_connections_per_address;
    assert_eq!(limit, 1024, "the shipped default");
    let addr = app.addr;
    let (held, refused) = blocking(move || {
        let crowd = ip("127.0.0.2");
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..attempts {
            let Ok(mut stream) = connect_from(crowd, addr) else {
                refused += 1;
                continue;
            };
            let _ = stream.write_all(&lookup_request(1 + i as u64));
            match read_answer(&mut stream) {
                Some((200, _)) => {
                    stream.write_all(b"P").unwrap();
                    held.push(stream);
                }
                Some((status, body)) => panic!("{status} {body}"),
                None => refused += 1,
            }
        }
        (held, refused)
    })
    .await;
    assert_eq!(held.len(), attempts.min(limit), "refused {refused}");

    // Another address gets its answer, through a fresh connection.
    let addr = app.addr;
    let held = blocking(move || {
        let mut other = connect_from(ip("127.0.0.3"), addr).unwrap();
        assert_lookup_answered(&mut other, 7);
        held
    })
    .await;
    let presence = app.presence_of(7).await;
    assert_eq!(presence["lastOnline"], NEVER_SEEN);
    assert!(
        held.iter().all(|s| !is_closed(s)),
        "the held connections are all still open (the deadlines are long)"
    );
    drop(held);
}

/// How many connections this test can open: the server in this process needs a
/// descriptor for each as well, and some are kept for everything else.
fn descriptors_for_test() -> usize {
    #[cfg(unix)]
    {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        (soft.saturating_sub(256) / 2)
            .try_into()
            .unwrap_or(usize::MAX)
    }
    #[cfg(not(unix))]
    {
        400
    }
}

#[tokio::test]
async fn a_limit_of_zero_turns_the_per_address_limit_off() {
    let app = spawn_app_with(|s| {
        s.server.max_connections_per_address = 0;
        s.server.request_head_timeout = LONG;
        s.server.keep_alive = LONG;
    })
    .await;
    let addr = app.addr;
    blocking(move || {
        let streams: Vec<TcpStream> = (0..50)
            .map(|i| {
                let mut stream = connect_from(ip("127.0.0.2"), addr).unwrap();
                assert_lookup_answered(&mut stream, 100 + i);
                stream
            })
            .collect();
        assert!(streams.iter().all(|s| !is_closed(s)));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The log: a client's malformed requests are not the server's errors.

/// Requests the HTTP layer cannot parse, each on its own connection.
const MALFORMED: [&[u8]; 5] = [
    b"POST /v1/presence/users HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/presence/users HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"\x00\x01\x02 nonsense\r\n\r\n",
];

/// Sends every malformed request `rounds` times; each gets a 400 or a close.
fn send_malformed(addr: &str, rounds: usize) {
    let addr: SocketAddr = addr.parse().unwrap();
    for _ in 0..rounds {
        for request in MALFORMED {
            let mut stream = connect_from(ip("127.0.0.1"), addr).unwrap();
            let _ = stream.write_all(request);
            if let Some((status, _)) = read_answer(&mut stream) {
                assert_eq!(status, 400, "{}", request.escape_ascii());
            }
        }
    }
}

#[tokio::test]
async fn malformed_requests_write_no_error_line() {
    let config = process::config_file(BASE);
    let mut server = process::start(process::command(config.path()));
    let addr = server.addr.clone();
    let sent = addr.clone();
    blocking(move || send_malformed(&sent, 20)).await;
    // Served as ever, and the log is written up to here before the server stops.
    process::lookup(&addr, 5).await;
    server.signal("TERM");
    assert!(server.wait_exit());
    let errors: Vec<_> = server
        .logs
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("stream error"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        server.logs.iter().any(|l| l.contains("open files limit")),
        "the open files limit is logged at start-up: {:#?}",
        server.logs
    );
}

#[tokio::test]
async fn malformed_requests_are_logged_at_debug_when_asked_for() {
    let config = process::config_file(&format!("{BASE}[logging]\nformat = \"json\"\n"));
    let mut cmd = process::command(config.path());
    cmd.env("RUST_LOG", "info,actix_http=debug");
    let mut server = process::start(cmd);
    let addr = server.addr.clone();
    blocking(move || send_malformed(&addr, 1)).await;
    server.wait_for_log("request parse error");
    server.signal("TERM");
    assert!(server.wait_exit());
    let lines: Vec<serde_json::Value> = server
        .logs
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().all(|l| l["level"] != "ERROR"),
        "{:#?}",
        server.logs
    );
    let parse_errors: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stream error: request parse error"))
        })
        .collect();
    assert!(!parse_errors.is_empty(), "{:#?}", server.logs);
    for line in parse_errors {
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert_eq!(line["target"], "actix_http::h1::dispatcher", "{line}");
    }
}
