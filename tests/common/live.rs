//! Clients of the live endpoints for tests: a Server-Sent Events reader over a plain TCP
//! socket (so that a test controls when, and how much, it reads) and a WebSocket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub const STREAM: &str = "/v1/presence/stream";
pub const WS: &str = "/v1/presence/ws";

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub name: String,
    pub data: Value,
}

impl Event {
    /// The entries of its `userPresences`.
    pub fn entries(&self) -> Vec<Value> {
        self.data["userPresences"].as_array().unwrap().clone()
    }
}

/// What a stream sent: an event, or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Event),
    Comment(String),
}

/// An open event stream.
pub struct Sse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    /// Decoded body not yet parsed into items.
    text: String,
    chunked: bool,
    /// The body of an answer that is not a stream.
    pub body: String,
}

impl Sse {
    /// `GET {STREAM}?{query}` with extra headers; a socket receive buffer of `rcvbuf`
    /// bytes when given (to make the server's writes stall sooner).
    pub async fn open(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<usize>,
    ) -> Self {
        Self::open_then(addr, query, headers, rcvbuf, "").await
    }

    /// [`Self::open`], with `then` written right behind the request, in the same write (a
    /// client pipelining another request behind the stream's).
    pub async fn open_then(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<usize>,
        then: &str,
    ) -> Self {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4().unwrap()
        } else {
            tokio::net::TcpSocket::new_v6().unwrap()
        };
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size as u32).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let mut request = format!(
            "GET {STREAM}?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(then);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let mut sse = Self {
            status,
            headers,
            reader,
            text: String::new(),
            chunked,
            body: String::new(),
        };
        if status != 200 {
            let length: usize = sse.header("content-length").unwrap_or("0").parse().unwrap();
            let mut body = vec![0; length];
            sse.reader.read_exact(&mut body).await.unwrap();
            sse.body = String::from_utf8(body).unwrap();
        }
        sse
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error body of an answer that is not a stream, as JSON.
    pub fn error(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// Reads one more piece of the body; false at its end.
    async fn fill(&mut self) -> bool {
        if !self.chunked {
            let mut buf = [0; 4096];
            let n = self.reader.read(&mut buf).await.unwrap_or(0);
            self.text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            return n > 0;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let size = usize::from_str_radix(line.trim(), 16).unwrap();
        if size == 0 {
            return false;
        }
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).await.is_err() {
            return false;
        }
        chunk.truncate(size);
        self.text.push_str(&String::from_utf8(chunk).unwrap());
        true
    }

    /// The next event or comment, or `None` when the stream ends or nothing comes within
    /// `within`.
    pub async fn next_item(&mut self, within: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return None,
            }
        }
    }

    /// The next event, skipping comments; `None` when none comes within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) => {}
            }
        }
    }

    /// The next event, which must come within 10 s.
    pub async fn event(&mut self) -> Event {
        self.next_event(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// Whether the stream ended (the server closed it) within `within`.
    pub async fn ended_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.text.clear();
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn parse_block(block: &str) -> Item {
    let mut id = String::new();
    let mut name = String::new();
    let mut data = String::new();
    let mut comment = None;
    for line in block.lines() {
        if let Some(text) = line.strip_prefix(':') {
            comment = Some(text.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        } else if !line.is_empty() {
            panic!("unexpected line in an event stream: {line:?}");
        }
    }
    match comment {
        Some(text) if data.is_empty() => Item::Comment(text),
        _ => Item::Event(Event {
            id,
            name,
            data: serde_json::from_str(&data).unwrap(),
        }),
    }
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket to `{WS}`.
pub async fn ws_connect(addr: SocketAddr) -> WsStream {
    let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}{WS}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// Sends a text frame.
pub async fn ws_send(ws: &mut WsStream, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next text frame as JSON (pings answered on the way); `None` when nothing comes
/// within `within`. Panics on a close or binary frame.
pub async fn ws_next(ws: &mut WsStream, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(message)) => message.unwrap(),
            Ok(None) => panic!("the WebSocket ended"),
            Err(_) => return None,
        };
        match message {
            Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next text frame, which must come within 10 s.
pub async fn ws_frame(ws: &mut WsStream) -> Value {
    ws_next(ws, Duration::from_secs(10))
        .await
        .expect("a frame within 10 s")
}

/// `changes` heartbeats through the server at `addr`, round-robin over `tokens`, each moving
/// its user to a new location (`step <i> ...`): a change every time.
pub async fn change_many(
    client: &reqwest::Client,
    addr: SocketAddr,
    tokens: &[String],
    changes: usize,
) {
    for i in 0..changes {
        let res = client
            .post(format!("http://{addr}{}", super::REGISTER))
            .bearer_auth(&tokens[i % tokens.len()])
            .json(
                &serde_json::json!({"location": format!("step {i} with a longish location text")}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}
