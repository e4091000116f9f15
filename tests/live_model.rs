#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live presence against a small model (CONTRACT sections 1, 2 and 8): a seeded random
//! driver makes heartbeats, disconnects and expiries, and opens, closes, resumes and
//! re-subscribes event streams and WebSockets whose readers read only now and then. At
//! every quiet point each open watcher must end on exactly what a lookup answers for each
//! user it watches, and every lookup must agree with the model.
//!
//! `LIVE_MODEL_SEED=<n>` runs one seed; `LIVE_MODEL_OPS=<n>` sets the operations per seed.
//! The seed and every operation are printed, so a failing run shows how to replay it.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::live::*;
use common::*;
use serde_json::{json, Value};

const SEEDS: [u64; 3] = [0x5EED_0001, 0x5EED_0002, 0x5EED_0003];
const OPS: usize = 240;
/// Operations between quiet points.
const QUIET_EVERY: usize = 20;
const TTL_MS: u64 = 10_000;
const USERS: std::ops::RangeInclusive<u64> = 101..=112;
const SLOTS: usize = 6;
/// How long a watcher may take, after the changes stop, to show the latest entries.
const SETTLE: Duration = Duration::from_secs(10);
/// Once a watcher shows the latest entries, how long it is read on for anything later.
const AFTERWARDS: Duration = Duration::from_millis(150);
const LONG: &str =
    "a location long enough that a few hundred changes fill a small receive buffer quickly";
const LOCATIONS: [&str; 5] = ["Home", "Website", "Mobile", "Xbox", LONG];

// ---- this test's draws from the seeded generator (tests/common: Rng) ----

impl Rng {
    fn user(&mut self) -> u64 {
        *USERS.start() + self.below(USERS.count() as u64)
    }
    /// 1 to `max` distinct users, in random order.
    fn users(&mut self, max: u64) -> Vec<u64> {
        let n = 1 + self.below(max);
        let mut out = Vec::new();
        while out.len() < n as usize {
            let u = self.user();
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }
}

// ---- the model ----

/// What a heartbeat body shows while the user is present (CONTRACT section 1), as the
/// fields a watcher's entry and a lookup's entry must agree on.
fn shown(user: u64, body: &Value) -> Value {
    let location = body["location"].as_str().unwrap_or("");
    let place = body["placeId"].as_i64().unwrap_or(0);
    let catalog = place == 1818;
    let place_fields = |on: bool| -> (Value, Value, Value) {
        if !on || place <= 0 {
            return (Value::Null, Value::Null, Value::Null);
        }
        let universe = if catalog { json!(13058) } else { Value::Null };
        (json!(place), json!(place), universe)
    };
    let (kind, last, places, game) = if location.to_ascii_lowercase().starts_with("studio") {
        let last = if catalog {
            "Studio - Classic: Crossroads".to_owned()
        } else {
            "Studio".to_owned()
        };
        ("InStudio", last, place_fields(true), Value::Null)
    } else if place > 0 {
        let last = if catalog {
            "Classic: Crossroads".to_owned()
        } else if location.is_empty() {
            "Playing".to_owned()
        } else {
            location.to_owned()
        };
        let game = body.get("gameId").cloned().unwrap_or(Value::Null);
        ("InGame", last, place_fields(true), game)
    } else {
        let last = if location.is_empty() {
            "Website"
        } else {
            location
        };
        ("Online", last.to_owned(), place_fields(false), Value::Null)
    };
    json!({
        "userId": user,
        "userPresenceType": kind,
        "lastLocation": last,
        "placeId": places.0,
        "rootPlaceId": places.1,
        "universeId": places.2,
        "gameId": game,
    })
}

fn offline(user: u64, last_location: &str) -> Value {
    json!({
        "userId": user,
        "userPresenceType": "Offline",
        "lastLocation": last_location,
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
    })
}

/// The fields compared: everything but `lastOnline`.
fn fields(entry: &Value) -> Value {
    json!({
        "userId": entry["userId"],
        "userPresenceType": entry["userPresenceType"],
        "lastLocation": entry["lastLocation"],
        "placeId": entry["placeId"],
        "rootPlaceId": entry["rootPlaceId"],
        "universeId": entry["universeId"],
        "gameId": entry["gameId"],
    })
}

#[derive(Debug, Clone, Default)]
struct Expected {
    /// The last heartbeat body that made the user present.
    body: Option<Value>,
    /// Its entry while present.
    present: Option<Value>,
    /// The location kept once Offline.
    location: String,
    /// Present while the clock is before this (ms on the test's clock).
    deadline: Option<u64>,
    /// Whether `lastOnline` is anything but the never-seen sentinel.
    seen: bool,
}

#[derive(Default)]
struct Model {
    users: HashMap<u64, Expected>,
    now: u64,
}

impl Model {
    fn heartbeat(&mut self, user: u64, body: &Value) {
        let now = self.now;
        let e = self.users.entry(user).or_default();
        let entry = shown(user, body);
        e.location = entry["lastLocation"].as_str().unwrap().to_owned();
        e.present = Some(entry);
        e.body = Some(body.clone());
        e.deadline = Some(now + TTL_MS);
        e.seen = true;
    }
    fn disconnect(&mut self, user: u64) {
        let e = self.users.entry(user).or_default();
        e.deadline = None;
        e.seen = true;
    }
    fn entry(&self, user: u64) -> (Value, bool) {
        match self.users.get(&user) {
            None => (offline(user, ""), false),
            Some(e) => match (&e.present, e.deadline) {
                (Some(present), Some(d)) if self.now < d => (present.clone(), e.seen),
                _ => (offline(user, &e.location), e.seen),
            },
        }
    }
    fn present(&self) -> Vec<u64> {
        USERS
            .filter(|u| {
                self.users
                    .get(u)
                    .and_then(|e| e.deadline)
                    .is_some_and(|d| self.now < d)
            })
            .collect()
    }
}

// ---- watchers ----

enum Conn {
    Sse(Sse),
    Ws(WsStream),
}

/// An event id a watcher was sent, and the number of quiet points passed when it came.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    tag: u64,
}

struct Watcher {
    name: String,
    conn: Conn,
    /// The stream's list, in request order (SSE), or the subscribed set (WebSocket).
    ids: Vec<u64>,
    /// The latest entry received of each watched user.
    known: HashMap<u64, Value>,
    events: Vec<Seen>,
    /// The last quiet point at which every entry it holds was checked to be the latest.
    synced: Option<u64>,
}

/// A closed event stream, kept to be resumed.
struct Closed {
    name: String,
    ids: Vec<u64>,
    known: HashMap<u64, Value>,
    events: Vec<Seen>,
    synced: Option<u64>,
}

impl Watcher {
    fn watched(&self) -> BTreeSet<u64> {
        self.ids.iter().copied().collect()
    }

    /// Reads until every watched user's latest received entry is `expected`'s and nothing
    /// more comes for [`AFTERWARDS`]; fails when it does not show them after [`SETTLE`].
    async fn settle(&mut self, expected: &HashMap<u64, Value>, tag: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let wrong: Vec<String> = self
                .watched()
                .into_iter()
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
                    "{} (watching {:?}) did not end on the latest entries within {SETTLE:?}:\n  {}",
                    self.name,
                    self.ids,
                    wrong.join("\n  ")
                ));
            }
            // Once it shows the latest, whatever still comes must leave it there.
            let wait = if matching { left.min(AFTERWARDS) } else { left };
            let entries = match &mut self.conn {
                Conn::Sse(sse) => match sse.next_event(wait).await {
                    None if matching => return Ok(()),
                    None => continue,
                    Some(event) => {
                        self.events.push(Seen {
                            id: event.id.clone(),
                            tag,
                        });
                        let entries = event.entries();
                        for e in &entries {
                            let u = e["userId"].as_u64().unwrap();
                            if !self.ids.contains(&u) {
                                return Err(format!(
                                    "{} (watching {:?}) was sent user {u}: {}",
                                    self.name, self.ids, event.data
                                ));
                            }
                        }
                        entries
                    }
                },
                Conn::Ws(ws) => match ws_next(ws, wait).await {
                    None if matching => return Ok(()),
                    None => continue,
                    Some(frame) => {
                        if frame.get("errors").is_some() {
                            return Err(format!("{} got an error frame {frame}", self.name));
                        }
                        frame["userPresences"].as_array().unwrap().clone()
                    }
                },
            };
            for e in entries {
                let u = e["userId"].as_u64().unwrap();
                // A WebSocket may still be sent a user it has just unsubscribed.
                if self.ids.contains(&u) {
                    self.known.insert(u, e);
                }
            }
        }
    }
}

// ---- the driver ----

struct Run {
    app: TestApp,
    rng: Rng,
    model: Model,
    slots: Vec<Option<Watcher>>,
    closed: Vec<Closed>,
    quiet_points: u64,
    next_name: usize,
    step: usize,
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

impl Run {
    fn log(&self, what: &str) {
        eprintln!("[{:>3}] t+{}ms {what}", self.step, self.model.now);
    }

    fn name(&mut self, kind: &str) -> String {
        self.next_name += 1;
        format!("{kind}#{}", self.next_name)
    }

    fn random_body(&mut self, user: u64) -> Value {
        let previous = self.model.users.get(&user).and_then(|e| e.body.clone());
        match self.rng.below(9) {
            0 | 1 => previous.unwrap_or_else(|| json!({"location": "Home"})),
            2 => json!({"placeId": 1818}),
            3 => json!({"placeId": 1818, "gameId": GAME}),
            4 => json!({"placeId": 555, "location": "Somewhere"}),
            5 => json!({"location": "Studio"}),
            6 => json!({"location": "Studio", "placeId": 1818}),
            _ => json!({ "location": self.rng.pick(&LOCATIONS) }),
        }
    }

    async fn heartbeat(&mut self, user: u64, body: Value) {
        self.log(&format!("heartbeat {user} {body}"));
        self.app.heartbeat(user, body.clone()).await;
        self.model.heartbeat(user, &body);
    }

    async fn disconnect(&mut self, user: u64) {
        self.log(&format!("disconnect {user}"));
        self.app.heartbeat(user, json!({"disconnect": true})).await;
        self.model.disconnect(user);
    }

    /// Moves the clock on by `ms`, and on by 1 ms more while a deadline falls exactly on
    /// the new time (the model leaves that instant to the server).
    fn advance(&mut self, ms: u64) {
        let mut ms = ms;
        while self
            .model
            .users
            .values()
            .any(|e| e.deadline == Some(self.model.now + ms))
        {
            ms += 1;
        }
        self.app.advance(Duration::from_millis(ms));
        self.model.now += ms;
        let present = self.model.present();
        self.log(&format!("advance {ms}ms (present now: {present:?})"));
    }

    fn free_slot(&mut self) -> Option<usize> {
        let free: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_none()).collect();
        (!free.is_empty()).then(|| self.rng.pick(&free))
    }

    fn open_slot(&mut self, ws: Option<bool>) -> Option<usize> {
        let open: Vec<usize> = (0..SLOTS)
            .filter(|&i| match (&self.slots[i], ws) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(w), Some(want)) => matches!(w.conn, Conn::Ws(_)) == want,
            })
            .collect();
        (!open.is_empty()).then(|| self.rng.pick(&open))
    }

    async fn open_sse(&mut self, slot: usize, ids: Vec<u64>, resume: Option<(String, Closed)>) {
        let name = self.name("sse");
        let rcvbuf = self.rng.chance(40).then_some(4096);
        let (last_id, known, events, synced) = match resume {
            None => (None, HashMap::new(), Vec::new(), None),
            Some((id, closed)) => (Some(id), closed.known, closed.events, closed.synced),
        };
        // What the client knew of the users it still watches carries over.
        let known: HashMap<u64, Value> =
            known.into_iter().filter(|(u, _)| ids.contains(u)).collect();
        self.log(&format!(
            "open {name} ids {ids:?} last-event-id {last_id:?} rcvbuf {rcvbuf:?} (knows {:?})",
            known.keys().collect::<BTreeSet<_>>()
        ));
        let headers: Vec<(&str, &str)> = match &last_id {
            Some(id) => vec![("Last-Event-ID", id.as_str())],
            None => Vec::new(),
        };
        let sse = Sse::open(
            self.app.addr,
            &format!("userIds={}", list(&ids)),
            &headers,
            rcvbuf,
        )
        .await;
        assert_eq!(sse.status, 200, "{name}: {}", sse.body);
        self.slots[slot] = Some(Watcher {
            name,
            conn: Conn::Sse(sse),
            ids,
            known,
            events,
            synced,
        });
    }

    async fn resume_sse(&mut self, slot: usize) {
        if self.closed.is_empty() {
            let ids = self.rng.users(5);
            return self.open_sse(slot, ids, None).await;
        }
        let index = self.rng.below(self.closed.len() as u64) as usize;
        let closed = self.closed.swap_remove(index);
        // Ids another watcher was sent before this one's entries were last checked: resuming
        // from one of them must bring this one up to date too.
        let foreign: Vec<String> = match closed.synced {
            None => Vec::new(),
            Some(synced) => self
                .slots
                .iter()
                .flatten()
                .map(|w| (&w.name, &w.events))
                .chain(self.closed.iter().map(|c| (&c.name, &c.events)))
                .filter(|(name, _)| **name != closed.name)
                .flat_map(|(_, events)| events.iter())
                .filter(|seen| seen.tag < synced)
                .map(|seen| seen.id.clone())
                .collect(),
        };
        let junk = [
            "junk",
            "0000000000000001-5",
            "",
            "ffffffffffffffff-99999999",
        ];
        let (id, own) = match self.rng.below(5) {
            0 | 1 => match closed.events.last() {
                Some(seen) => (seen.id.clone(), true),
                None => (self.rng.pick(&junk).to_owned(), false),
            },
            2 if !closed.events.is_empty() => {
                let seen = self.rng.pick(&closed.events);
                (seen.id, true)
            }
            3 if !foreign.is_empty() => (self.rng.pick(&foreign), false),
            _ => (self.rng.pick(&junk).to_owned(), true),
        };
        // A foreign id resumes the same list; an own one the same, a grown or another list.
        let ids = match (own, self.rng.below(3)) {
            (false, _) | (true, 0) => closed.ids.clone(),
            (true, 1) => {
                let mut ids = closed.ids.clone();
                for u in self.rng.users(3) {
                    if !ids.contains(&u) {
                        ids.push(u);
                    }
                }
                ids
            }
            _ => self.rng.users(6),
        };
        self.log(&format!("resume {} as a new stream", closed.name));
        self.open_sse(slot, ids, Some((id, closed))).await;
    }

    async fn open_ws(&mut self, slot: usize) {
        let name = self.name("ws");
        let ws = ws_connect(self.app.addr).await;
        self.log(&format!("open {name}"));
        self.slots[slot] = Some(Watcher {
            name,
            conn: Conn::Ws(ws),
            ids: Vec::new(),
            known: HashMap::new(),
            events: Vec::new(),
            synced: None,
        });
        self.ws_subscribe(slot).await;
    }

    async fn ws_subscribe(&mut self, slot: usize) {
        let mut ids = self.rng.users(4);
        let w = self.slots[slot].as_mut().unwrap();
        // Now and then one it already watches.
        if !w.ids.is_empty() && self.rng.chance(50) {
            ids.push(w.ids[0]);
        }
        for &u in &ids {
            if !w.ids.contains(&u) {
                w.ids.push(u);
            }
        }
        let Conn::Ws(ws) = &mut w.conn else {
            unreachable!()
        };
        ws_send(ws, &json!({ "subscribe": ids }).to_string()).await;
        let name = w.name.clone();
        self.log(&format!("{name} subscribe {ids:?}"));
    }

    async fn ws_unsubscribe(&mut self, slot: usize) {
        let ids = self.rng.users(3);
        let w = self.slots[slot].as_mut().unwrap();
        w.ids.retain(|u| !ids.contains(u));
        w.known.retain(|u, _| !ids.contains(u));
        let Conn::Ws(ws) = &mut w.conn else {
            unreachable!()
        };
        ws_send(ws, &json!({ "unsubscribe": ids }).to_string()).await;
        let name = w.name.clone();
        self.log(&format!("{name} unsubscribe {ids:?}"));
    }

    fn close(&mut self, slot: usize) {
        let w = self.slots[slot].take().unwrap();
        self.log(&format!("close {}", w.name));
        if let Conn::Sse(sse) = w.conn {
            drop(sse);
            self.closed.push(Closed {
                name: w.name,
                ids: w.ids,
                known: w.known,
                events: w.events,
                synced: w.synced,
            });
        }
    }

    async fn op(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=27 => {
                let user = self.rng.user();
                let body = self.random_body(user);
                self.heartbeat(user, body).await;
            }
            28..=33 => {
                let user = self.rng.user();
                self.disconnect(user).await;
            }
            34..=41 => {
                let ms = 1 + self.rng.below(4_000);
                self.advance(ms);
            }
            42..=49 => {
                // Past someone's deadline, then (usually) a renewal before any sweep, with a
                // watcher opened in between now and then.
                let present = self.model.present();
                if present.is_empty() {
                    let ms = 1 + self.rng.below(4_000);
                    return self.advance(ms);
                }
                let user = self.rng.pick(&present);
                let deadline = self.model.users[&user].deadline.unwrap();
                let ms = deadline - self.model.now + self.rng.below(50);
                self.advance(ms);
                if self.rng.chance(40) {
                    if let Some(slot) = self.free_slot() {
                        let mut ids = self.rng.users(3);
                        if !ids.contains(&user) {
                            ids.push(user);
                        }
                        self.open_sse(slot, ids, None).await;
                    }
                }
                if self.rng.chance(75) {
                    let body = self.model.users[&user].body.clone().unwrap();
                    self.heartbeat(user, body).await;
                }
            }
            50..=53 => {
                // A burst, while no watcher reads.
                let users = self.rng.users(4);
                self.log(&format!("burst of 150 heartbeats over {users:?}"));
                for i in 0..150 {
                    let user = users[i % users.len()];
                    let body = json!({ "location": format!("{LONG} {i}") });
                    self.app.heartbeat(user, body.clone()).await;
                    self.model.heartbeat(user, &body);
                }
            }
            54..=63 => match self.free_slot() {
                Some(slot) => {
                    let ids = self.rng.users(6);
                    self.open_sse(slot, ids, None).await;
                }
                None => {
                    let slot = self.open_slot(None).unwrap();
                    self.close(slot);
                }
            },
            64..=71 => {
                if let Some(slot) = self.open_slot(None) {
                    self.close(slot);
                }
            }
            72..=81 => {
                if let Some(slot) = self.free_slot() {
                    self.resume_sse(slot).await;
                }
            }
            82..=85 => {
                if let Some(slot) = self.free_slot() {
                    self.open_ws(slot).await;
                }
            }
            86..=94 => match self.open_slot(Some(true)) {
                Some(slot) => self.ws_subscribe(slot).await,
                None => {
                    if let Some(slot) = self.free_slot() {
                        self.open_ws(slot).await;
                    }
                }
            },
            _ => {
                if let Some(slot) = self.open_slot(Some(true)) {
                    self.ws_unsubscribe(slot).await;
                }
            }
        }
    }

    /// Every lookup agrees with the model.
    async fn check_lookups(&self) -> Result<HashMap<u64, Value>, String> {
        let ids: Vec<u64> = USERS.collect();
        let entries = self.app.lookup(&ids).await;
        let mut out = HashMap::new();
        for (u, entry) in ids.into_iter().zip(entries) {
            let (want, seen) = self.model.entry(u);
            let never = entry["lastOnline"] == NEVER_SEEN;
            if fields(&entry) != want || never == seen {
                return Err(format!(
                    "lookup of {u} is {entry}; the model says {want} (seen before: {seen})"
                ));
            }
            out.insert(u, entry);
        }
        Ok(out)
    }

    /// No more changes for now: every watcher must end on the lookups' entries.
    async fn quiet_point(&mut self) -> Result<(), String> {
        self.log("quiet point");
        let expected = self.check_lookups().await?;
        let tag = self.quiet_points;
        for w in self.slots.iter_mut().flatten() {
            w.settle(&expected, tag).await?;
        }
        self.quiet_points += 1;
        for w in self.slots.iter_mut().flatten() {
            w.synced = Some(self.quiet_points);
        }
        Ok(())
    }
}

async fn run_seed(seed: u64, ops: usize) -> Result<(), String> {
    eprintln!("==== live model, seed {seed:#x}, {ops} operations ====");
    let app = spawn_app_with_clock(|s| {
        s.places = vec![crossroads()];
        s.presence.heartbeat_ttl = Duration::from_millis(TTL_MS);
        s.presence.sweep_interval = Duration::from_millis(100);
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    let mut run = Run {
        app,
        rng: Rng(seed),
        model: Model::default(),
        slots: (0..SLOTS).map(|_| None).collect(),
        closed: Vec::new(),
        quiet_points: 0,
        next_name: 0,
        step: 0,
    };
    for step in 0..ops {
        run.step = step;
        run.op().await;
        run.check_lookups().await?;
        if (step + 1) % QUIET_EVERY == 0 {
            run.quiet_point().await?;
        }
    }
    run.quiet_point().await?;
    run.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_watcher_ends_on_the_latest_entries_under_random_operations() {
    run_seeds("LIVE_MODEL", &SEEDS, OPS, run_seed).await;
}
