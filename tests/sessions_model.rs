#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sessions against a small model (CONTRACT sections 1, 2, 8 and 10): a seeded random driver
//! makes game-server reports, joins, leaves and deletes, heartbeats and disconnects, moves
//! the clock (now and then exactly onto a deadline) and lets the sweeper run. After every
//! operation the lookup of every user must equal the model's entry, all eight fields; at
//! quiet points one event stream watching every user must end on those entries.
//!
//! The model is the reference for the ranking rule: the entry shown is the live game
//! session joined last, else the live app session, else Offline keeping the `lastLocation`
//! shown last. A session is live while `now < deadline`; an app session's deadline is its
//! heartbeat + `heartbeat_ttl`; a game session's is its server's, the last report +
//! `game_server_ttl` (a join does not move it). `lastOnline` is the last heartbeat,
//! disconnect, report or join listing the user, or leave or DELETE ending one of its
//! sessions; an expiry leaves it.
//!
//! `SESSIONS_MODEL_SEED=<n>` runs one seed; `SESSIONS_MODEL_OPS=<n>` sets the operations
//! per seed. The seed, its settings and every operation are printed, so a failing run
//! shows how to replay it.
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::game::*;
use common::live::*;
use common::*;
use serde_json::{json, Value};

const SEEDS: [u64; 3] = [0x5E55_0000, 0x5E55_0001, 0x5E55_0003];
const OPS: usize = 300;
/// Operations between quiet points.
const QUIET_EVERY: usize = 25;
const APP_TTL: u64 = 3_000;
const GAME_TTL: u64 = 2_000;
const USERS: std::ops::RangeInclusive<u64> = 301..=305;
/// Game servers: one more than the largest `max_game_sessions` a seed runs with, so that
/// joins go past the bound.
const SERVER_COUNT: usize = 4;
const PLACES: [i64; 2] = [1818, UNKNOWN_PLACE];
/// How long the watcher may take, after the changes stop, to show the latest entries.
const SETTLE: Duration = Duration::from_secs(10);
/// Once the watcher shows the latest entries, how long it is read on for anything later.
const AFTERWARDS: Duration = Duration::from_millis(150);

/// The settings a seed runs with: `presence.max_game_sessions` and
/// `presence.client_reported_games`.
fn settings_of(seed: u64) -> (usize, bool) {
    (2 + (seed & 1) as usize, (seed >> 1) & 1 == 0)
}

// ---- this test's draws from the seeded generator (tests/common: Rng) ----

impl Rng {
    fn user(&mut self) -> u64 {
        *USERS.start() + self.below(USERS.count() as u64)
    }
    /// A random subset of `from`, at most `max` of them, in random order.
    fn subset(&mut self, from: &[u64], max: usize) -> Vec<u64> {
        let n = self.below(max.min(from.len()) as u64 + 1) as usize;
        let mut pool = from.to_vec();
        let mut out = Vec::new();
        while out.len() < n {
            let i = self.below(pool.len() as u64) as usize;
            out.push(pool.swap_remove(i));
        }
        out
    }
}

// ---- the model ----

/// The entry of an app session (CONTRACT section 1), all but `lastOnline`.
fn app_entry(user: u64, body: &Value, client_reported: bool) -> Value {
    let location = body["location"].as_str().unwrap_or("");
    let place = body["placeId"].as_i64().unwrap_or(0);
    let catalog = place == 1818;
    let universe = match body.get("universeId") {
        Some(u) => u.clone(),
        None if catalog => json!(13058),
        None => Value::Null,
    };
    let places = json!({"placeId": place, "rootPlaceId": place, "universeId": universe});
    let none = json!({"placeId": null, "rootPlaceId": null, "universeId": null});
    let (kind, last, places, game) = if location.to_ascii_lowercase().starts_with("studio") {
        let last = if catalog {
            "Studio - Classic: Crossroads"
        } else {
            "Studio"
        };
        let places = if place > 0 { places } else { none };
        ("InStudio", last.to_owned(), places, Value::Null)
    } else if place > 0 && client_reported {
        let last = if catalog {
            "Classic: Crossroads"
        } else if location.is_empty() {
            "Playing"
        } else {
            location
        };
        let game = body.get("gameId").cloned().unwrap_or(Value::Null);
        ("InGame", last.to_owned(), places, game)
    } else {
        let last = if location.is_empty() {
            "Website"
        } else {
            location
        };
        ("Online", last.to_owned(), none, Value::Null)
    };
    json!({
        "userId": user,
        "userPresenceType": kind,
        "lastLocation": last,
        "placeId": places["placeId"],
        "rootPlaceId": places["rootPlaceId"],
        "universeId": places["universeId"],
        "gameId": game,
    })
}

#[derive(Debug, Clone)]
struct AppSession {
    deadline: u64,
    entry: Value,
}

#[derive(Debug, Clone)]
struct GameSession {
    server: usize,
    /// The server's life it belongs to: a server reported again after it stopped being
    /// live is a new one.
    life: u64,
    /// Join order: larger is later.
    joined: u64,
}

#[derive(Debug, Clone, Default)]
struct User {
    app: Option<AppSession>,
    games: Vec<GameSession>,
    /// ms on the test's clock; `None`: never seen.
    last_online: Option<u64>,
    /// The `lastLocation` of the entry shown last.
    last_location: String,
}

#[derive(Debug, Clone)]
struct Server {
    life: u64,
    deadline: u64,
    place: i64,
    universe: Option<i64>,
}

struct Model {
    now: u64,
    users: BTreeMap<u64, User>,
    servers: Vec<Option<Server>>,
    next_life: u64,
    next_join: u64,
    /// When the last join happened: a user's joins are kept a millisecond apart.
    last_join_at: Option<u64>,
    max_sessions: usize,
    client_reported: bool,
    /// Sessions ended by a join beyond the bound.
    evictions: usize,
}

impl Model {
    fn new(max_sessions: usize, client_reported: bool) -> Self {
        Self {
            now: 0,
            users: USERS.map(|u| (u, User::default())).collect(),
            servers: vec![None; SERVER_COUNT],
            next_life: 0,
            next_join: 0,
            last_join_at: None,
            max_sessions,
            client_reported,
            evictions: 0,
        }
    }

    fn server_live(&self, s: usize, at: u64) -> Option<&Server> {
        self.servers[s]
            .as_ref()
            .filter(|server| at < server.deadline)
    }

    fn game_live(&self, g: &GameSession, at: u64) -> bool {
        self.server_live(g.server, at)
            .is_some_and(|server| server.life == g.life)
    }

    fn in_server(&self, user: u64, s: usize) -> bool {
        self.users[&user]
            .games
            .iter()
            .any(|g| g.server == s && self.game_live(g, self.now))
    }

    fn members(&self, s: usize) -> Vec<u64> {
        USERS.filter(|&u| self.in_server(u, s)).collect()
    }

    /// The entry shown at `at`, if any session is live.
    fn shown_at(&self, user: u64, at: u64) -> Option<Value> {
        let u = &self.users[&user];
        let game = u
            .games
            .iter()
            .filter(|g| self.game_live(g, at))
            .max_by_key(|g| g.joined);
        if let Some(g) = game {
            let server = self.servers[g.server].as_ref().unwrap();
            return Some(in_game(
                user,
                SERVERS[g.server],
                server.place,
                server.universe,
            ));
        }
        u.app
            .as_ref()
            .filter(|a| at < a.deadline)
            .map(|a| a.entry.clone())
    }

    /// Records what every user shows at `at` as its last location.
    fn note(&mut self, at: u64) {
        for user in USERS {
            if let Some(entry) = self.shown_at(user, at) {
                self.users.get_mut(&user).unwrap().last_location =
                    entry["lastLocation"].as_str().unwrap().to_owned();
            }
        }
    }

    /// Moves time on to `to`, noting what was shown just before each deadline passed.
    fn advance_to(&mut self, to: u64) {
        let deadlines: BTreeSet<u64> = self
            .servers
            .iter()
            .flatten()
            .map(|s| s.deadline)
            .chain(
                self.users
                    .values()
                    .filter_map(|u| Some(u.app.as_ref()?.deadline)),
            )
            .filter(|&d| self.now < d && d <= to)
            .collect();
        for d in deadlines {
            self.note(d - 1);
        }
        self.now = to;
        self.note(to);
    }

    /// The entry a lookup must answer now, all eight fields.
    fn entry(&self, user: u64, wall0: i64) -> Value {
        let u = &self.users[&user];
        let mut entry = self
            .shown_at(user, self.now)
            .unwrap_or_else(|| offline(user, &u.last_location));
        entry["lastOnline"] = match u.last_online {
            None => json!(NEVER_SEEN),
            Some(ms) => json!(rfc3339(wall0 + ms as i64)),
        };
        entry
    }

    fn touch(&mut self, user: u64) {
        let now = self.now;
        self.users.get_mut(&user).unwrap().last_online = Some(now);
    }

    /// Ends `user`'s live session in `s`, if any; true if there was one.
    fn leave(&mut self, user: u64, s: usize) -> bool {
        if !self.in_server(user, s) {
            return false;
        }
        let now = self.now;
        let live: Vec<bool> = self.users[&user]
            .games
            .iter()
            .map(|g| g.server == s && self.game_live(g, now))
            .collect();
        let mut i = 0;
        self.users.get_mut(&user).unwrap().games.retain(|_| {
            i += 1;
            !live[i - 1]
        });
        self.touch(user);
        true
    }

    /// A new session of `user` in live server `s`, ending its oldest one when it has as
    /// many as the bound.
    fn join(&mut self, user: u64, s: usize) {
        let now = self.now;
        let life = self.servers[s].as_ref().unwrap().life;
        let mut games: Vec<GameSession> = self.users[&user]
            .games
            .iter()
            .filter(|g| self.game_live(g, now))
            .cloned()
            .collect();
        if games.len() >= self.max_sessions {
            let oldest = games.iter().map(|g| g.joined).min().unwrap();
            games.retain(|g| g.joined != oldest);
            self.evictions += 1;
        }
        games.push(GameSession {
            server: s,
            life,
            joined: self.next_join,
        });
        self.next_join += 1;
        self.last_join_at = Some(now);
        self.users.get_mut(&user).unwrap().games = games;
        self.touch(user);
    }

    fn report(&mut self, s: usize, place: i64, universe: Option<i64>, players: &[u64]) {
        let now = self.now;
        match self.servers[s]
            .as_mut()
            .filter(|server| now < server.deadline)
        {
            Some(server) => {
                server.deadline = now + GAME_TTL;
                server.place = place;
                server.universe = universe;
            }
            None => {
                self.servers[s] = Some(Server {
                    life: self.next_life,
                    deadline: now + GAME_TTL,
                    place,
                    universe,
                });
                self.next_life += 1;
            }
        }
        for user in USERS {
            if players.contains(&user) {
                if !self.in_server(user, s) {
                    self.join(user, s);
                }
                self.touch(user);
            } else {
                self.leave(user, s);
            }
        }
        self.note(now);
    }

    fn players(&mut self, s: usize, joined: &[u64], left: &[u64]) {
        for &user in joined {
            self.join(user, s);
        }
        for &user in left {
            self.leave(user, s);
        }
        self.note(self.now);
    }

    fn delete(&mut self, s: usize) {
        for user in self.members(s) {
            self.leave(user, s);
        }
        self.servers[s] = None;
        self.note(self.now);
    }

    fn heartbeat(&mut self, user: u64, body: &Value) {
        let entry = app_entry(user, body, self.client_reported);
        let deadline = self.now + APP_TTL;
        self.users.get_mut(&user).unwrap().app = Some(AppSession { deadline, entry });
        self.touch(user);
        self.note(self.now);
    }

    fn disconnect(&mut self, user: u64) {
        self.users.get_mut(&user).unwrap().app = None;
        self.touch(user);
        self.note(self.now);
    }

    /// Entries shown now by type, and live servers.
    fn counts(&self) -> (f64, f64, f64, f64) {
        let mut counts = (0.0, 0.0, 0.0, 0.0);
        for user in USERS {
            match self.shown_at(user, self.now) {
                Some(e) if e["userPresenceType"] == "InGame" => counts.0 += 1.0,
                Some(e) if e["userPresenceType"] == "Online" => counts.1 += 1.0,
                Some(_) => counts.2 += 1.0,
                None => {}
            }
        }
        counts.3 = (0..SERVER_COUNT)
            .filter(|&s| self.server_live(s, self.now).is_some())
            .count() as f64;
        counts
    }

    fn describe(&self, user: u64) -> String {
        let u = &self.users[&user];
        let games: Vec<String> = u
            .games
            .iter()
            .map(|g| {
                format!(
                    "{}#{} joined {}{}",
                    g.server,
                    g.life,
                    g.joined,
                    if self.game_live(g, self.now) {
                        ""
                    } else {
                        " (ended)"
                    }
                )
            })
            .collect();
        format!(
            "app {:?}, games [{}], lastOnline {:?}, last location {:?}",
            u.app
                .as_ref()
                .map(|a| (a.deadline, a.entry["lastLocation"].clone())),
            games.join(", "),
            u.last_online,
            u.last_location
        )
    }
}

// ---- the driver ----

struct Run {
    app: TestApp,
    rng: Rng,
    model: Model,
    /// The server clock's wall time at the model's 0.
    wall0: i64,
    sse: Sse,
    /// The latest entry the watcher was sent of each user.
    known: HashMap<u64, Value>,
    step: usize,
    /// How often each kind of operation and outcome came up, printed at the end.
    stats: BTreeMap<&'static str, usize>,
}

impl Run {
    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn log(&self, what: &str) {
        eprintln!("[{:>3}] t+{}ms {what}", self.step, self.model.now);
    }

    fn advance(&mut self, ms: u64) {
        self.app.advance(Duration::from_millis(ms));
        let to = self.model.now + ms;
        self.model.advance_to(to);
        self.log(&format!("advance {ms}ms"));
    }

    /// A millisecond on when a join happened at this instant, so that each user's joins
    /// are ordered by time.
    fn apart(&mut self) {
        if self.model.last_join_at == Some(self.model.now) {
            self.advance(1);
        }
    }

    /// Players as the body lists them: now and then as numeric strings, or repeated.
    fn player_list(&mut self, players: &[u64]) -> Value {
        let mut out: Vec<Value> = players
            .iter()
            .map(|&u| {
                if self.rng.chance(15) {
                    json!(u.to_string())
                } else {
                    json!(u)
                }
            })
            .collect();
        if !players.is_empty() && self.rng.chance(10) {
            out.push(json!(self.rng.pick(players)));
        }
        Value::Array(out)
    }

    async fn report(&mut self) {
        self.apart();
        let s = self.rng.below(SERVER_COUNT as u64) as usize;
        let live = self.model.server_live(s, self.model.now).cloned();
        // Mostly the same place as before, now and then another.
        let (place, universe) = match live {
            Some(server) if self.rng.chance(75) => (server.place, server.universe),
            _ => {
                let universe = self.rng.chance(20).then(|| self.rng.pick(&[13058, 77]));
                (self.rng.pick(&PLACES), universe)
            }
        };
        let everyone: Vec<u64> = USERS.collect();
        let players = if self.rng.chance(40) {
            // The same players again, give or take one.
            let mut p = self.model.members(s);
            if self.rng.chance(50) {
                let u = self.rng.user();
                if let Some(i) = p.iter().position(|&x| x == u) {
                    p.remove(i);
                } else {
                    p.push(u);
                }
            }
            p
        } else {
            self.rng.subset(&everyone, everyone.len())
        };
        let mut body = json!({"placeId": place, "players": self.player_list(&players)});
        if let Some(u) = universe {
            body["universeId"] = json!(u);
        }
        self.log(&format!("PUT {s} {body}"));
        self.count("PUT");
        self.app.report_body(SERVERS[s], &body).await;
        self.model.report(s, place, universe, &players);
    }

    async fn players(&mut self) -> Result<(), String> {
        self.apart();
        // Mostly a live server; now and then any (404 when it is not live).
        let live: Vec<usize> = (0..SERVER_COUNT)
            .filter(|&s| self.model.server_live(s, self.model.now).is_some())
            .collect();
        let s = if !live.is_empty() && self.rng.chance(80) {
            self.rng.pick(&live)
        } else {
            self.rng.below(SERVER_COUNT as u64) as usize
        };
        let everyone: Vec<u64> = USERS.collect();
        let live = self.model.server_live(s, self.model.now).is_some();
        let members = self.model.members(s);
        let outside: Vec<u64> = everyone
            .iter()
            .copied()
            .filter(|u| !members.contains(u))
            .collect();
        let joined = if live {
            self.rng.subset(&outside, 2)
        } else {
            self.rng.subset(&everyone, 2)
        };
        let rest: Vec<u64> = everyone
            .iter()
            .copied()
            .filter(|u| !joined.contains(u))
            .collect();
        // Mostly members leave, now and then anyone.
        let mut left = if self.rng.chance(70) {
            self.rng.subset(&members, 2)
        } else {
            self.rng.subset(&rest, 2)
        };
        left.retain(|u| !joined.contains(u));
        let both = live && !joined.is_empty() && self.rng.chance(8);
        if both {
            left.push(joined[0]);
        }
        let mut body = json!({});
        if !joined.is_empty() || self.rng.chance(50) {
            body["joined"] = self.player_list(&joined);
        }
        if !left.is_empty() || self.rng.chance(50) {
            body["left"] = self.player_list(&left);
        }
        self.log(&format!("POST players {s} {body} (live: {live})"));
        let res = self.app.post_players(SERVERS[s], &body).await;
        if !live {
            self.count("POST players: 404");
            let got = error_of(res).await;
            if got != (404, 0, "Unknown game server.".to_owned()) {
                return Err(format!("POST players {s} {body}: {got:?}, expected 404 code 0 `Unknown game server.` (the server is not live)"));
            }
            return Ok(());
        }
        if both {
            self.count("POST players: 400");
            let got = error_of(res).await;
            if (got.0, got.1) != (400, 0) {
                return Err(format!(
                    "POST players {s} {body}: {got:?}, expected 400 code 0 (an id in both lists)"
                ));
            }
            return Ok(());
        }
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        if (status, text.as_str()) != (200, "{}") {
            return Err(format!(
                "POST players {s} {body}: {status} {text}, expected 200 {{}}"
            ));
        }
        self.count("POST players: 200");
        self.model.players(s, &joined, &left);
        Ok(())
    }

    async fn delete(&mut self) {
        let s = self.rng.below(SERVER_COUNT as u64) as usize;
        self.log(&format!(
            "DELETE {s} (live: {})",
            self.model.server_live(s, self.model.now).is_some()
        ));
        self.count("DELETE");
        self.app.stop_server(SERVERS[s]).await;
        self.model.delete(s);
    }

    fn random_body(&mut self) -> Value {
        match self.rng.below(8) {
            0 => json!({}),
            1 => json!({"location": "Home"}),
            2 => json!({"placeId": 1818}),
            3 => json!({"placeId": 1818, "gameId": GAME}),
            4 => json!({"placeId": 555, "location": "Somewhere", "universeId": 9}),
            5 => json!({"location": "Studio"}),
            6 => json!({"location": "Studio", "placeId": 1818}),
            _ => json!({"location": "Mobile"}),
        }
    }

    async fn heartbeat(&mut self) {
        let user = self.rng.user();
        let body = self.random_body();
        self.log(&format!("heartbeat {user} {body}"));
        self.count("heartbeat");
        self.app.heartbeat(user, body.clone()).await;
        self.model.heartbeat(user, &body);
    }

    async fn disconnect(&mut self) {
        let user = self.rng.user();
        self.log(&format!("disconnect {user}"));
        self.count("disconnect");
        self.app.heartbeat(user, json!({"disconnect": true})).await;
        self.model.disconnect(user);
    }

    /// Onto a deadline still ahead, exactly or a millisecond either side.
    fn onto_deadline(&mut self) {
        let now = self.model.now;
        let deadlines: Vec<u64> = self
            .model
            .servers
            .iter()
            .flatten()
            .map(|s| s.deadline)
            .chain(
                self.model
                    .users
                    .values()
                    .filter_map(|u| Some(u.app.as_ref()?.deadline)),
            )
            .filter(|&d| d > now + 1)
            .collect();
        if deadlines.is_empty() {
            let ms = 1 + self.rng.below(1500);
            return self.advance(ms);
        }
        let d = self.rng.pick(&deadlines);
        let to = match self.rng.below(4) {
            0 => d - 1,
            1 => d + 1,
            _ => d,
        };
        self.log(&format!("onto the deadline {d}"));
        self.count(if to == d {
            "onto a deadline exactly"
        } else {
            "a millisecond off a deadline"
        });
        self.advance(to - now);
    }

    /// Lets the sweeper run: /metrics then counts what the model shows.
    async fn sweep(&mut self) -> Result<(), String> {
        self.log("sweep");
        self.count("sweep");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let want = self.model.counts();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.app.metrics().await;
            let got = (
                gauge(&text, r#"presence_users{type="InGame"}"#),
                gauge(&text, r#"presence_users{type="Online"}"#),
                gauge(&text, r#"presence_users{type="InStudio"}"#),
                gauge(&text, "presence_game_servers"),
            );
            if got == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "/metrics (InGame, Online, InStudio, game servers) = {got:?}; the model says {want:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn op(&mut self) -> Result<(), String> {
        match self.rng.below(100) {
            0..=24 => self.report().await,
            25..=42 => self.players().await?,
            43..=48 => self.delete().await,
            49..=66 => self.heartbeat().await,
            67..=72 => self.disconnect().await,
            73..=85 => {
                let ms = 1 + self.rng.below(800);
                self.advance(ms);
            }
            86..=95 => self.onto_deadline(),
            _ => self.sweep().await?,
        }
        Ok(())
    }

    /// Every lookup agrees with the model, all eight fields.
    async fn check_lookups(&self) -> Result<HashMap<u64, Value>, String> {
        let ids: Vec<u64> = USERS.collect();
        let entries = self.app.lookup(&ids).await;
        let mut out = HashMap::new();
        for (u, entry) in ids.into_iter().zip(entries) {
            let want = self.model.entry(u, self.wall0);
            if entry != want {
                return Err(format!(
                    "lookup of {u} is\n    {entry}\n  the model says\n    {want}\n  model state of {u}: {}",
                    self.model.describe(u)
                ));
            }
            out.insert(u, entry);
        }
        Ok(out)
    }

    /// No more changes for now: the watcher must end on the lookups' entries.
    async fn quiet_point(&mut self) -> Result<(), String> {
        self.log("quiet point");
        self.count("quiet point");
        let expected = self.check_lookups().await?;
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let wrong: Vec<String> = USERS
                .filter(|u| self.known.get(u).map(fields) != Some(fields(&expected[u])))
                .map(|u| {
                    format!(
                        "user {u}: has {}, lookup {}",
                        self.known
                            .get(&u)
                            .map_or("nothing".into(), |e| fields(e).to_string()),
                        fields(&expected[&u])
                    )
                })
                .collect();
            let matching = wrong.is_empty();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                if matching {
                    return Ok(());
                }
                return Err(format!(
                    "the watcher did not end on the latest entries within {SETTLE:?}:\n  {}",
                    wrong.join("\n  ")
                ));
            }
            let wait = if matching { left.min(AFTERWARDS) } else { left };
            match self.sse.next_event(wait).await {
                None if matching => return Ok(()),
                None => {}
                Some(event) => {
                    for e in event.entries() {
                        self.known.insert(e["userId"].as_u64().unwrap(), e);
                    }
                }
            }
        }
    }
}

async fn run_seed(seed: u64, ops: usize) -> Result<(), String> {
    let (max_sessions, client_reported) = settings_of(seed);
    eprintln!(
        "==== sessions model, seed {seed:#x}, {ops} operations, max_game_sessions \
         {max_sessions}, client_reported_games {client_reported} ===="
    );
    let app = spawn_app_with_clock(|s| {
        game_settings(s);
        s.presence.heartbeat_ttl = Duration::from_millis(APP_TTL);
        s.presence.game_server_ttl = Duration::from_millis(GAME_TTL);
        s.presence.max_game_sessions = max_sessions;
        s.presence.client_reported_games = client_reported;
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    let ids: Vec<String> = USERS.map(|u| u.to_string()).collect();
    let mut sse = Sse::open(app.addr, &format!("userIds={}", ids.join(",")), &[], None).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    let known = sse
        .event()
        .await
        .entries()
        .into_iter()
        .map(|e| (e["userId"].as_u64().unwrap(), e))
        .collect();
    let wall0 = app.now_ms();
    let mut run = Run {
        app,
        rng: Rng(seed),
        model: Model::new(max_sessions, client_reported),
        wall0,
        sse,
        known,
        step: 0,
        stats: BTreeMap::new(),
    };
    for step in 0..ops {
        run.step = step;
        run.op().await?;
        run.check_lookups().await?;
        if (step + 1) % QUIET_EVERY == 0 {
            run.quiet_point().await?;
        }
    }
    run.quiet_point().await?;
    run.sweep().await?;
    run.app.stop().await;
    let joins = run.model.next_join;
    let evictions = run.model.evictions;
    eprintln!(
        "seed {seed:#x} passed: {:?}, joins {joins}, joins past the bound {evictions}",
        run.stats
    );
    Ok(())
}

#[tokio::test]
async fn lookups_and_a_watcher_follow_the_session_model_under_random_operations() {
    run_seeds("SESSIONS_MODEL", &SEEDS, OPS, run_seed).await;
}
