//! Running the real binary: config files, start-up, signals and log lines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_presence-server");

pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// A config that binds a free port and keeps the server small.
pub const BASE: &str = "[persistence]\nenabled = false\n[server]\nbind = \"127.0.0.1:0\"\nworkers = 1\nshutdown_timeout = \"2s\"\n";

/// The binary on `config`, on the backend `PRESENCE_TEST_BACKEND` chooses (passed as
/// `PRESENCE__` overrides, with a key prefix of its own on Redis).
pub fn command(config: &std::path::Path) -> Command {
    command_of(Command::new(BIN), config)
}

/// The binary started through `launcher` (for example `faketime -f -5m`, to which the
/// binary's path is added as the next argument), on `config`.
pub fn command_of(mut launcher: Command, config: &std::path::Path) -> Command {
    if launcher.get_program() != BIN {
        launcher.arg(BIN);
    }
    let mut cmd = launcher;
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    // Whatever the outer environment sets must not leak into these tests.
    for (key, _) in std::env::vars() {
        if key.starts_with("PRESENCE__") {
            cmd.env_remove(key);
        }
    }
    super::redis::apply_env(&mut cmd);
    cmd
}

/// Runs the binary to completion; returns (success, stderr).
pub fn run_to_end(mut cmd: Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A started server: the child, its address, and the log lines read so far.
pub struct Running {
    pub child: Child,
    pub addr: String,
    pub logs: Vec<String>,
    rest: mpsc::Receiver<String>,
}

/// Starts the binary and waits until it logs its address. Panics if it exits first.
pub fn start(cmd: Command) -> Running {
    try_start(cmd).unwrap_or_else(|stderr| panic!("start-up failed: {stderr}"))
}

/// Starts the binary and waits until it logs its address (`Ok`), or until it exits
/// non-zero first, refusing to start (`Err` with what it printed). A process that does
/// neither within 30s is killed and the test fails: start-up must never hang.
pub fn try_start(mut cmd: Command) -> Result<Running, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut logs = Vec::new();
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stderr closed: the process has ended.
                let status = child.wait().unwrap();
                assert!(!status.success(), "exited 0 without listening: {logs:?}");
                return Err(logs.join("\n"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("neither listening nor refused within 30s: {logs:?}");
            }
        };
        // Text logs say `address=IP:PORT`; JSON logs have an "address" field.
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .map(str::to_owned)
            .or_else(|| {
                serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["address"].as_str().map(str::to_owned))
            });
        logs.push(line);
        if let Some(addr) = addr {
            return Ok(Running {
                child,
                addr,
                logs,
                rest: rx,
            });
        }
    }
}

impl Running {
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits (within 15s) until the server logs a line containing `text`.
    pub fn wait_for_log(&mut self, text: &str) {
        loop {
            let line = self
                .rest
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("no log line with {text:?}: {:?}", self.logs));
            let found = line.contains(text);
            self.logs.push(line);
            if found {
                return;
            }
        }
    }

    /// Waits for the process to exit (within 15s) and returns whether it exited 0.
    pub fn wait_exit(&mut self) -> bool {
        for _ in 0..1500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.logs.extend(self.rest.try_iter());
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        panic!("the server did not exit within 15s");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn lookup(addr: &str, id: u64) -> Value {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/presence/users"))
        .json(&json!({"userIds": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["userPresences"][0].clone()
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}
