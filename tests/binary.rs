//! The real binary: configuration from files and the environment, start-up errors, the
//! `token` and `service-key` subcommands, and graceful shutdown on signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::process::*;
use presence_server::auth::{sha256_hex, Authenticator, Scope, ServiceKeys};
use presence_server::presence::UserId;
use presence_server::Settings;

#[test]
fn an_unknown_key_stops_start_up_naming_it() {
    let f = config_file(&format!("{BASE}max_bodybytes = 5\n"));
    let (ok, stderr) = run_to_end(command(f.path()));
    assert!(!ok);
    assert!(stderr.contains("max_bodybytes"), "{stderr}");
}

#[test]
fn a_bad_value_stops_start_up_naming_the_key() {
    let f = config_file("[presence]\nsweep_interval = \"often\"\n");
    let (ok, stderr) = run_to_end(command(f.path()));
    assert!(!ok);
    assert!(stderr.contains("presence.sweep_interval"), "{stderr}");
}

#[test]
fn settings_out_of_range_stop_start_up_naming_the_key_without_a_panic() {
    for (text, key) in [
        ("[api]\nmax_user_ids = 100000\n", "api.max_user_ids"),
        (
            "[presence]\nheartbeat_ttl = \"1000000000000d\"\n",
            "presence.heartbeat_ttl",
        ),
        (
            "[api]\nmax_location_length = 0\n",
            "api.max_location_length",
        ),
    ] {
        let f = config_file(&format!("{BASE}{text}"));
        let (ok, stderr) = run_to_end(command(f.path()));
        assert!(!ok, "{text}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    }
    // The value that used to panic inside the HTTP layer.
    let f = config_file("[persistence]\nenabled = false\n[server]\nworkers = 100000\n");
    let (ok, stderr) = run_to_end(command(f.path()));
    assert!(!ok);
    assert!(stderr.contains("server.workers"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_config_file_stops_start_up_naming_it() {
    let (ok, stderr) = run_to_end(command(std::path::Path::new("/no/such/presence.toml")));
    assert!(!ok);
    assert!(stderr.contains("/no/such/presence.toml"), "{stderr}");
}

#[test]
fn a_bad_environment_override_stops_start_up_naming_the_key() {
    let f = config_file(BASE);
    let mut cmd = command(f.path());
    cmd.env("PRESENCE__SERVER__WORKERS", "many");
    let (ok, stderr) = run_to_end(cmd);
    assert!(!ok);
    assert!(stderr.contains("server.workers"), "{stderr}");

    let mut cmd = command(f.path());
    cmd.env("PRESENCE__SERVER__BOGUS", "1");
    let (ok, stderr) = run_to_end(cmd);
    assert!(!ok);
    assert!(stderr.contains("bogus"), "{stderr}");
}

#[test]
fn the_token_subcommand_mints_a_credential_signed_with_the_configured_secret() {
    let f = config_file("[auth]\njwt_secret = \"file-secret\"\n");
    let out = command(f.path())
        .args(["token", "--user-id", "42", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let jwt = String::from_utf8(out.stdout).unwrap();
    let jwt = jwt.trim();
    assert_eq!(
        Authenticator::new("file-secret").verify(jwt),
        Ok(UserId::new(42).unwrap())
    );
    assert!(Authenticator::new("other").verify(jwt).is_err());

    // The environment overrides the file's secret for minting too.
    let out = command(f.path())
        .env("PRESENCE__AUTH__JWT_SECRET", "12345")
        .args(["token", "--user-id", "7"])
        .output()
        .unwrap();
    let jwt = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        Authenticator::new("12345").verify(jwt.trim()),
        Ok(UserId::new(7).unwrap())
    );

    let out = command(f.path())
        .args(["token", "--user-id", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `service-key` with `args`, reading no configuration (the file named does not exist):
/// (success, stdout, stderr).
fn service_key(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["--config", "/no/such/presence.toml", "service-key"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The key and the configuration block that `service-key` printed.
fn key_and_block(stdout: &str) -> (String, String) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("only this once"), "{stdout}");
    let key = lines[1].to_owned();
    let start = stdout.find("[[auth.service_keys]]").expect(stdout);
    (key, stdout[start..].to_owned())
}

#[test]
fn the_service_key_subcommand_prints_a_new_key_once_and_only_its_digest_to_configure() {
    let (ok, stdout, stderr) = service_key(&[
        "--name",
        "game-servers-eu",
        "--scope",
        "game-servers",
        "--scope",
        "read",
    ]);
    assert!(ok, "{stderr}");
    let (key, block) = key_and_block(&stdout);
    // 32 bytes, URL-safe base64 without padding.
    assert!(key.len() >= 43, "{key}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key}"
    );
    assert_eq!(stdout.matches(key.as_str()).count(), 1, "{stdout}");
    let digest = sha256_hex(&key);
    assert_eq!(
        block,
        format!(
            "[[auth.service_keys]]\nname = \"game-servers-eu\"\nsha256 = \"{digest}\"\n\
             scopes = [\"game-servers\", \"read\"]\n"
        )
    );

    // The block is a valid configuration, and the printed key is the one it accepts.
    use figment::providers::{Format as _, Toml};
    let settings: Settings = figment::Figment::from(Toml::string(&block))
        .extract()
        .unwrap();
    settings.validate().unwrap();
    let keys = ServiceKeys::new(&settings.auth.service_keys).unwrap();
    let found = keys.verify(key.as_bytes()).unwrap();
    assert_eq!(&**found.name(), "game-servers-eu");
    assert!(found.allows(Scope::GameServers) && found.allows(Scope::Read));
    assert!(!found.allows(Scope::Privacy));
    assert!(keys.verify(format!("{key}=").as_bytes()).is_none());

    // Every run draws a new key.
    let (ok, again, _) = service_key(&["--name", "game-servers-eu", "--scope", "game-servers"]);
    assert!(ok);
    let (other, _) = key_and_block(&again);
    assert_ne!(key, other);
}

#[test]
fn the_service_key_subcommand_refuses_what_the_configuration_would() {
    let (ok, stdout, stderr) = service_key(&["--name", "eu", "--scope", "admin"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("\"admin\""), "{stderr}");
    for args in [
        &["--name", "eu"][..],
        &["--name", "", "--scope", "read"],
        &["--name", &"n".repeat(65), "--scope", "read"],
        &["--scope", "read"],
    ] {
        let (ok, stdout, _) = service_key(args);
        assert!(!ok, "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

#[tokio::test]
async fn environment_overrides_apply_and_sigterm_stops_the_server_gracefully() {
    let f = config_file(BASE);
    let mut cmd = command(f.path());
    cmd.env("PRESENCE__API__PRESENCE_TYPE", "integer");
    let mut server = start(cmd);
    assert!(
        server
            .logs
            .iter()
            .any(|l| l.contains(&f.path().display().to_string())),
        "the start-up line names the config file: {:?}",
        server.logs
    );
    assert_eq!(lookup(&server.addr, 9).await["userPresenceType"], 0);
    server.signal("TERM");
    assert!(server.wait_exit(), "exit status 0 after SIGTERM");
}

#[tokio::test]
async fn ctrl_c_stops_the_server_gracefully() {
    let f = config_file(BASE);
    let mut server = start(command(f.path()));
    assert_eq!(lookup(&server.addr, 9).await["userPresenceType"], "Offline");
    server.signal("INT");
    assert!(server.wait_exit(), "exit status 0 after SIGINT");
}

#[test]
fn the_development_secret_is_warned_about_and_a_real_one_is_not() {
    let f = config_file(BASE);
    let mut server = start(command(f.path()));
    assert!(
        server
            .logs
            .iter()
            .any(|l| l.contains("WARN") && l.contains("jwt_secret")),
        "{:?}",
        server.logs
    );
    server.signal("TERM");
    assert!(server.wait_exit());

    let f = config_file(&format!("{BASE}[auth]\njwt_secret = \"a-real-secret\"\n"));
    let mut server = start(command(f.path()));
    server.signal("TERM");
    assert!(server.wait_exit());
    assert!(
        !server.logs.iter().any(|l| l.contains("jwt_secret")),
        "{:?}",
        server.logs
    );
}

#[test]
fn a_request_in_flight_at_sigterm_is_answered_before_the_server_exits() {
    use std::io::Read;
    use std::net::TcpStream;

    let f = config_file(BASE);
    let mut server = start(command(f.path()));
    let body = br#"{"userIds":[77]}"#;
    let mut conn = TcpStream::connect(&server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A first, whole request proves that a worker owns the connection.
    write!(
        conn,
        "POST /v1/presence/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(body).unwrap();
    let mut first = [0u8; 512];
    let n = conn.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));

    write!(
        conn,
        "POST /v1/presence/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..5]).unwrap();
    // Wait until the worker has read the head of this request, which makes it in flight
    // (an idle keep-alive connection is closed at shutdown): the in-flight gauge then
    // counts it beside the scrape that reads the gauge.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !get(&server.addr, "/metrics").contains("\nhttp_requests_in_flight 2\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never showed as in flight"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    server.signal("TERM");
    // Shutdown has begun once the server says so.
    server.wait_for_log("shutting down");
    conn.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""userId":77"#), "{answer}");
    assert!(server.wait_exit(), "exit status 0 after SIGTERM");
}

#[test]
fn a_second_signal_during_the_drain_ends_the_process_at_once() {
    // A drain far longer than the test: only the second signal can end it in time.
    let f = config_file(&format!("{BASE}drain_delay = \"10m\"\n"));
    for (first, second) in [("TERM", "TERM"), ("INT", "TERM"), ("TERM", "INT")] {
        let mut server = start(command(f.path()));
        server.signal(first);
        server.wait_for_log("shutting down");
        server.signal(second);
        assert!(!server.wait_exit(), "a forced stop exits non-zero");
        assert!(
            server.logs.iter().any(|l| l.contains("second signal")),
            "{:?}",
            server.logs
        );
    }
}

/// The body of `GET path`, over a connection of its own.
fn get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}
