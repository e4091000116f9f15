//! Compatibility check: the published roboat client (crates.io `roboat`) against a running
//! presence server.
//!
//! Usage: `roboat-presence-check BASE_URL TOKEN USER_ID`, with a server that runs with
//! `api.presence_type = "integer"` (what roboat parses) and TOKEN a credential it accepts
//! for USER_ID, a user that nothing else heartbeats while this runs. The place used below
//! (`PLACE_ID`) must not be in the server's place catalog.
//!
//! roboat calls the fixed addresses `https://presence.roblox.com/v1/presence/...`. This
//! program serves TLS for that name on a local port, with a certificate authority it makes
//! for the run, and passes every connection on to BASE_URL; roboat is handed a reqwest client
//! that resolves the name to that port and trusts only that authority. Nothing of roboat is
//! changed: its heartbeat (cookie `.ROBLOSECURITY`, the X-CSRF-Token retry) and its lookup
//! go over the wire as they would to the live API. Heartbeats that roboat cannot send (a
//! place, Studio, a disconnect) are sent with Bearer over plain HTTP.
//!
//! Every parsed value is compared exactly; the program ends with the line
//! `roboat: N passed, M failed` and exits 1 on a mismatch.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use roboat::presence::PresenceType;
use roboat::{ClientBuilder, RoboatError};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The host roboat's presence calls go to.
const HOST: &str = "presence.roblox.com";
const PLACE_ID: u64 = 4_815_162_342;
const UNIVERSE_ID: u64 = 108;
const GAME_ID: &str = "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11";
/// A user no client of the checks ever heartbeats.
const NEVER_SEEN: u64 = 987_654_321_987;
const SENTINEL: &str = "0001-01-01T00:00:00.000Z";
/// `lastOnline` against this machine's clock (milliseconds, loopback).
const SLACK_MS: i64 = 5_000;

#[derive(Default)]
struct Checks {
    passed: u32,
    failures: Vec<String>,
}

impl Checks {
    fn eq<T: PartialEq + Debug>(&mut self, name: &str, actual: T, expected: T) {
        if actual == expected {
            self.passed += 1;
        } else {
            self.failures
                .push(format!("{name}: expected {expected:?}, got {actual:?}"));
        }
    }

    fn truth(&mut self, name: &str, ok: bool, detail: impl Debug) {
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(format!("{name}: {detail:?}"));
        }
    }

    /// A `lastOnline` that is this moment, give or take the slack.
    fn now_ish(&mut self, name: &str, last_online: &Option<String>) {
        let parsed = last_online
            .as_deref()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok());
        let ok = parsed.is_some_and(|at| {
            (at.with_timezone(&Utc) - Utc::now())
                .num_milliseconds()
                .abs()
                < SLACK_MS
        });
        self.truth(name, ok, last_online);
    }
}

/// A TLS front for `HOST` on a local port that passes each connection on to `upstream`;
/// returns its address and the authority whose certificate a client must trust.
async fn tls_front(upstream: SocketAddr) -> Result<(SocketAddr, CertificateDer<'static>), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot make the TLS front: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).map_err(|e| fail(&e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "roboat check authority");
    let ca = ca_params.self_signed(&ca_key).map_err(|e| fail(&e))?;
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_owned()])
        .and_then(|params| params.signed_by(&key, &ca, &ca_key))
        .map_err(|e| fail(&e))?;
    // rustls is built with one provider (ring, as reqwest uses it), the process default.
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| fail(&e))?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail(&e))?;
    let addr = listener.local_addr().map_err(|e| fail(&e))?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    Ok((addr, ca.der().clone()))
}

/// A heartbeat with `body`, Bearer, over plain HTTP: its status.
async fn bearer_heartbeat(base: &str, token: &str, body: serde_json::Value) -> u16 {
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/presence/register-app-presence"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    answer.map_or(0, |a| a.status().as_u16())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(base), Some(token), Some(user)) = (
        args.next(),
        args.next(),
        args.next().and_then(|id| id.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: roboat-presence-check BASE_URL TOKEN USER_ID");
        return ExitCode::from(2);
    };
    let base = base.trim_end_matches('/').to_owned();
    match run(&base, &token, user).await {
        Ok(checks) => {
            for failure in &checks.failures {
                println!("FAIL {failure}");
            }
            println!(
                "roboat: {} passed, {} failed",
                checks.passed,
                checks.failures.len()
            );
            if checks.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("roboat: could not run: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(base: &str, token: &str, user: u64) -> Result<Checks, String> {
    let upstream: SocketAddr = base
        .strip_prefix("http://")
        .ok_or("BASE_URL must be http://HOST:PORT")?
        .parse()
        .map_err(|e| format!("BASE_URL must be http://IP:PORT: {e}"))?;
    let (front, authority) = tls_front(upstream).await?;
    let http = || {
        reqwest::Client::builder()
            .resolve(HOST, front)
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_der(&authority).expect("a certificate just made"),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    };
    let client = ClientBuilder::new()
        .roblosecurity(token.to_owned())
        .reqwest_client(http()?)
        .build();
    let forged = ClientBuilder::new()
        .roblosecurity("not-a-credential".to_owned())
        .reqwest_client(http()?)
        .build();
    let mut checks = Checks::default();

    // A credential the server does not accept: 401, which roboat reports as such.
    let refused = forged.register_presence().await;
    checks.truth(
        "a forged cookie is refused",
        matches!(refused, Err(RoboatError::InvalidRoblosecurity)),
        &refused,
    );

    // roboat's own heartbeat: cookie, no CSRF token, the 403 with x-csrf-token, the retry.
    let registered = client.register_presence().await;
    checks.truth(
        "register_presence (cookie and CSRF retry)",
        registered.is_ok(),
        &registered,
    );
    let presences = client
        .fetch_users_presence(vec![user, NEVER_SEEN])
        .await
        .map_err(|e| format!("fetch_users_presence: {e:?}"))?
        .user_presences;
    checks.eq("entries for two ids", presences.len(), 2);
    if let [me, never] = &presences[..] {
        checks.eq("user id", me.user_id, user);
        checks.eq(
            "roboat's heartbeat: type",
            &me.user_presence_type,
            &PresenceType::Online,
        );
        checks.eq(
            "roboat's heartbeat: location",
            me.last_location.as_deref(),
            Some("Home"),
        );
        checks.eq("roboat's heartbeat: place", me.place_id, None);
        checks.eq("roboat's heartbeat: root place", me.root_place_id, None);
        checks.eq("roboat's heartbeat: universe", me.universe_id, None);
        checks.eq("roboat's heartbeat: game", me.game_id.as_deref(), None);
        checks.now_ish("roboat's heartbeat: lastOnline", &me.last_online);
        checks.eq("never seen: id", never.user_id, NEVER_SEEN);
        checks.eq(
            "never seen: type",
            &never.user_presence_type,
            &PresenceType::Offline,
        );
        checks.eq(
            "never seen: location",
            never.last_location.as_deref(),
            Some(""),
        );
        checks.eq("never seen: place", never.place_id, None);
        checks.eq("never seen: game", never.game_id.as_deref(), None);
        checks.eq(
            "never seen: lastOnline",
            never.last_online.as_deref(),
            Some(SENTINEL),
        );
    }

    // In game, with the extensions: every place field as roboat reads it.
    let status = bearer_heartbeat(
        base,
        token,
        serde_json::json!({"placeId": PLACE_ID, "gameId": GAME_ID, "universeId": UNIVERSE_ID}),
    )
    .await;
    checks.eq("in-game heartbeat", status, 200);
    let me = one(&client, user).await?;
    checks.eq("in game: type", &me.kind, &PresenceType::InGame);
    checks.eq("in game: location", me.location.as_deref(), Some("Playing"));
    checks.eq("in game: place", me.place, Some(PLACE_ID));
    checks.eq("in game: root place", me.root_place, Some(PLACE_ID));
    checks.eq("in game: universe", me.universe, Some(UNIVERSE_ID));
    checks.eq("in game: game", me.game.as_deref(), Some(GAME_ID));

    // In Studio at a place the catalog does not know.
    let status = bearer_heartbeat(
        base,
        token,
        serde_json::json!({"location": "Studio", "placeId": PLACE_ID}),
    )
    .await;
    checks.eq("studio heartbeat", status, 200);
    let me = one(&client, user).await?;
    checks.eq("studio: type", &me.kind, &PresenceType::InStudio);
    checks.eq("studio: location", me.location.as_deref(), Some("Studio"));
    checks.eq("studio: place", me.place, Some(PLACE_ID));
    checks.eq("studio: root place", me.root_place, Some(PLACE_ID));
    checks.eq("studio: universe", me.universe, None);
    checks.eq("studio: game", me.game.as_deref(), None);

    // Leaving: Offline at once, the location kept, the place fields gone.
    let status = bearer_heartbeat(base, token, serde_json::json!({"disconnect": true})).await;
    checks.eq("disconnect", status, 200);
    let me = one(&client, user).await?;
    checks.eq("disconnected: type", &me.kind, &PresenceType::Offline);
    checks.eq(
        "disconnected: location",
        me.location.as_deref(),
        Some("Studio"),
    );
    checks.eq("disconnected: place", me.place, None);
    checks.eq("disconnected: game", me.game.as_deref(), None);
    checks.now_ish("disconnected: lastOnline", &me.last_online);

    // One entry per distinct id, in order of first appearance.
    let ids: Vec<u64> = client
        .fetch_users_presence(vec![NEVER_SEEN, user, NEVER_SEEN, user])
        .await
        .map_err(|e| format!("fetch_users_presence: {e:?}"))?
        .user_presences
        .iter()
        .map(|p| p.user_id)
        .collect();
    checks.eq(
        "duplicates answered once, in order",
        ids,
        vec![NEVER_SEEN, user],
    );

    // The errors, as roboat reads them from the body.
    let too_many = client.fetch_users_presence((1..=51).collect()).await;
    checks.truth(
        "51 ids: 400 code 2",
        matches!(&too_many, Err(RoboatError::UnknownRobloxErrorCode { code: 2, message })
            if message == "Too many User Ids being sent in the request."),
        &too_many,
    );
    let zero = client.fetch_users_presence(vec![0]).await;
    checks.truth(
        "id 0: 400 code 1",
        matches!(&zero, Err(RoboatError::UnknownRobloxErrorCode { code: 1, message })
            if message == "Invalid user id."),
        &zero,
    );
    Ok(checks)
}

/// The entry roboat parsed for one user, field by field (roboat's own type is in a private
/// module: its fields can be read, its name cannot be written).
#[derive(Debug)]
struct Entry {
    kind: PresenceType,
    location: Option<String>,
    place: Option<u64>,
    root_place: Option<u64>,
    universe: Option<u64>,
    game: Option<String>,
    last_online: Option<String>,
}

async fn one(client: &roboat::Client, user: u64) -> Result<Entry, String> {
    let mut presences = client
        .fetch_users_presence(vec![user])
        .await
        .map_err(|e| format!("fetch_users_presence: {e:?}"))?
        .user_presences;
    if presences.len() != 1 || presences[0].user_id != user {
        return Err(format!("one entry for {user} expected: {presences:?}"));
    }
    let p = presences.remove(0);
    Ok(Entry {
        kind: p.user_presence_type,
        location: p.last_location,
        place: p.place_id,
        root_place: p.root_place_id,
        universe: p.universe_id,
        game: p.game_id,
        last_online: p.last_online,
    })
}
