//! The test harness: the real server, built by the same `Application::build` as `main`, on
//! a free loopback port, plus a few helpers that read as the contract does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod game;
pub mod live;
pub mod privacy;
pub mod process;
pub mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use presence_server::app::Shutdown;
use presence_server::auth::Authenticator;
use presence_server::presence::{Clock, MockClock, UserId};
use presence_server::{Application, Settings};
use serde_json::Value;

pub const SECRET: &str = "integration-test-secret";
/// `lastOnline` of a user never seen.
pub const NEVER_SEEN: &str = "0001-01-01T00:00:00.000Z";
pub const JSON_UTF8: &str = "application/json; charset=utf-8";
pub const DENIED: &str = "Authorization has been denied for this request.";
/// A game-server instance id for `gameId`.
pub const GAME: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

/// The catalog place most tests use.
pub fn crossroads() -> presence_server::config::PlaceSettings {
    presence_server::config::PlaceSettings {
        id: 1818,
        universe_id: 13058,
        root_place_id: 1818,
        name: "Classic: Crossroads".into(),
    }
}
pub const REGISTER: &str = "/v1/presence/register-app-presence";
pub const USERS: &str = "/v1/presence/users";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub settings: Settings,
    /// Mints credentials by the server's clock.
    pub auth: Authenticator,
    /// The clock the server runs on.
    pub clock: Clock,
    /// The handle that moves the server's clock, for apps from [`spawn_app_with_clock`].
    pub mock: Option<MockClock>,
    shutdown: Shutdown,
}

/// Settings for tests: a free port, one worker, a known secret, no snapshot file, no
/// rate limits, and the backend `PRESENCE_TEST_BACKEND` chooses (with a key prefix of its
/// own on Redis: see [`redis`]).
/// The entry writer the application gives live streams, for a presence built by hand.
pub fn encoder(settings: &Settings) -> presence_server::presence::watch::Encoder {
    presence_server::api::json::entry_encoder(settings.api.presence_type)
}

pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.server.workers = 1;
    settings.auth.jwt_secret = SECRET.into();
    settings.persistence.enabled = false;
    // Rate limits are tested on their own; elsewhere they would only add noise.
    settings.rate_limit.register_per_second = 0;
    settings.rate_limit.lookup_per_second = 0;
    redis::apply(&mut settings);
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The real server on the system clock.
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_on(change, Clock::system(), None)
}

/// The real server on a mock clock that stands still until [`TestApp::advance`] moves it
/// (monotonic and wall time together). It starts at the current wall time rounded down to
/// a whole second. The sweeper still wakes every `sweep_interval` of real time and then
/// reads this clock.
pub async fn spawn_app_with_clock(change: impl FnOnce(&mut Settings)) -> TestApp {
    let (clock, mock) = Clock::mock();
    spawn_on(change, clock, Some(mock))
}

fn spawn_on(change: impl FnOnce(&mut Settings), clock: Clock, mock: Option<MockClock>) -> TestApp {
    let mut settings = test_settings();
    change(&mut settings);
    settings.validate().expect("test settings must be valid");
    let app =
        Application::build_with_clock(settings.clone(), clock.clone()).expect("the server builds");
    let addr = app.local_addr();
    let shutdown = app.shutdown();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        client: reqwest::Client::new(),
        auth: Authenticator::with_clock(&settings.auth.jwt_secret, clock.clone()),
        clock,
        mock,
        settings,
        shutdown,
    }
}

impl TestApp {
    /// Moves the server's mock clock on by `by`.
    pub fn advance(&self, by: Duration) {
        self.mock
            .as_ref()
            .expect("advance needs an app from spawn_app_with_clock")
            .increment(by);
    }

    /// The server clock's wall time, in whole seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.now().wall.0 / 1000).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A valid credential for `user`, signed with the server's secret.
    pub fn token(&self, user: u64) -> String {
        self.auth
            .mint(UserId::new(user).unwrap(), Duration::from_secs(3600))
            .unwrap()
    }

    /// `POST path` with a JSON body and no credential.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A Bearer heartbeat of `user` with a JSON body; asserts the contract's `200 {}`.
    pub async fn heartbeat(&self, user: u64, body: Value) {
        let res = self
            .client
            .post(self.url(REGISTER))
            .bearer_auth(self.token(user))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "heartbeat of {user} with {body}");
        assert_eq!(res.text().await.unwrap(), "{}");
    }

    /// The `userPresences` array for `ids`, asserting a 200.
    pub async fn lookup(&self, ids: &[u64]) -> Vec<Value> {
        let res = self
            .post_json(USERS, &serde_json::json!({ "userIds": ids }))
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["userPresences"].as_array().unwrap().clone()
    }

    /// The presence of one user.
    pub async fn presence_of(&self, id: u64) -> Value {
        self.lookup(&[id]).await.remove(0)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Waits (bounded) until the sweeper, which wakes every `sweep_interval` of real time,
    /// has flipped `expired` users Offline in all.
    pub async fn swept(&self, expired: u64) {
        let line = format!("presence_expired_total {expired}\n");
        eventually(Duration::from_secs(10), || async {
            self.metrics().await.contains(&line).then_some(())
        })
        .await;
    }

    /// Waits (bounded by `within`) until `/ready` answers 200.
    pub async fn until_ready(&self, within: Duration) {
        eventually(within, || async {
            let res = self.client.get(self.url("/ready")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&self) {
        self.shutdown.clone().begin().await;
    }
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The body of an error response, checked against the contract's shape.
pub async fn error_of(res: reqwest::Response) -> (u16, i64, String) {
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.contains("json"),
        "error content type {content_type:?}"
    );
    let body: Value = res.json().await.unwrap();
    let errors = body["errors"].as_array().expect("an errors array");
    assert_eq!(errors.len(), 1, "{body}");
    (
        status,
        errors[0]["code"].as_i64().unwrap(),
        errors[0]["message"].as_str().unwrap().to_owned(),
    )
}

/// Runs a seeded model-based test once per seed: the one seed named by environment variable
/// `{prefix}_SEED` (decimal or `0x` hex), else `defaults`, each with `{prefix}_OPS`
/// operations (else `ops`). Fails naming every seed that failed and how to replay it.
pub async fn run_seeds<F, Fut>(prefix: &str, defaults: &[u64], ops: usize, mut run_seed: F)
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let seed_var = format!("{prefix}_SEED");
    let seeds: Vec<u64> = match std::env::var(&seed_var) {
        Ok(text) => {
            let text = text.trim();
            let seed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            vec![seed.unwrap_or_else(|_| panic!("{seed_var} is a number"))]
        }
        Err(_) => defaults.to_vec(),
    };
    let ops = std::env::var(format!("{prefix}_OPS")).map_or(ops, |n| n.parse().unwrap());
    let mut failures = Vec::new();
    for seed in seeds {
        if let Err(failure) = run_seed(seed, ops).await {
            eprintln!("seed {seed:#x} FAILED: {failure}");
            failures.push(format!("seed {seed:#x}: {failure}"));
        }
    }
    assert!(
        failures.is_empty(),
        "replay one with {seed_var}=<seed>; the operation log is above\n{}",
        failures.join("\n")
    );
}

/// The seeded generator of the model-based tests (splitmix64): the same seed, the same
/// operations. Each test adds its own draws in an `impl Rng` of its own.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}
