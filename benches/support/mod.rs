//! What the HTTP benches share: environment knobs, one keep-alive HTTP/1.1 exchange over a
//! raw socket, and the JSON results file.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::PathBuf;

use memchr::memmem;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response head longer than this is an error.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The number in environment variable `name`, or `default` when it is unset.
pub fn env_number(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .unwrap_or_else(|| panic!("{name} must be a number, not {text:?}")),
        Err(_) => default,
    }
}

pub fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Writes `request` and reads one whole response into `buf`; returns its status.
pub async fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> io::Result<u16> {
    conn.write_all(request).await?;
    buf.clear();
    let mut searched = 0;
    let head_len = loop {
        if let Some(at) = memmem::find(&buf[searched..], b"\r\n\r\n") {
            break searched + at + 4;
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("response head too long"));
        }
        read_more(conn, buf).await?;
    };
    let (status, content_length) = parse_head(&buf[..head_len])?;
    let total = head_len + content_length;
    while buf.len() < total {
        read_more(conn, buf).await?;
    }
    if buf.len() > total {
        return Err(invalid("bytes after the response"));
    }
    Ok(status)
}

pub async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(8 * 1024);
    if conn.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The status and `content-length` of a response head.
pub fn parse_head(head: &[u8]) -> io::Result<(u16, usize)> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let content_length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or_else(|| invalid("no content-length"))?;
    Ok((status, content_length))
}

/// `$CARGO_TARGET_DIR/<name>`, else `target/<name>` in the package.
pub fn json_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join(name)
}

pub fn write_json(path: &PathBuf, json: &serde_json::Value) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(json).map_err(io::Error::other)?;
    std::fs::write(path, text + "\n")
}
