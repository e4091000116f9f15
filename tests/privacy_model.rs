#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Privacy against a small model (CONTRACT section 11, with sections 1, 2 and 8): a seeded
//! random driver makes heartbeats, disconnects, settings changes through `PATCH` and `PUT`,
//! friendship adds, removes and replacements, and moves the server's mock clock (across
//! `invisibleUntil` ends, sometimes exactly onto one), while watchers with different
//! viewers (anonymous, a key without `read`, a `read` key, signed-in users, friends or not,
//! the users themselves) follow the users over event streams and WebSockets.
//!
//! After every operation a lookup by two viewers must equal the reference decision of
//! tests/common/privacy.rs applied to the model. At every quiet point, every settings and
//! friend list must equal the model's, every viewer's lookup must equal the model's
//! decision, and every watcher must end on what a lookup by its viewer answers: exactly for
//! an entry the viewer is shown masked (hidden or invisible: a change of sight is always
//! sent), and in all but `lastOnline` for a real entry (a heartbeat that changes only
//! `lastOnline` sends nothing, section 8).
//!
//! Each seed also picks a configuration: seed % 3 = 0 the defaults, 1 integer presence
//! types, 2 `privacy.show_last_online = false`.
//!
//! `PRIVACY_MODEL_SEED=<n>` runs one seed; `PRIVACY_MODEL_OPS=<n>` sets the operations per
//! seed. The seed and every operation are printed, so a failing run shows how to replay it.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::game::{rfc3339, GAME_KEY, READ_KEY};
use common::privacy::*;
use common::*;
use presence_server::config::PresenceTypeFormat;
use serde_json::{json, Value};

const SEEDS: [u64; 3] = [0x9000, 0x9001, 0x9002];
const OPS: usize = 200;
/// Operations between quiet points.
const QUIET_EVERY: usize = 25;
const TTL_MS: i64 = 10_000;
/// The users watched and looked up.
const TARGETS: std::ops::RangeInclusive<u64> = 201..=206;
/// The users who sign in, befriend and are befriended: the targets and two more.
const PEOPLE: std::ops::RangeInclusive<u64> = 201..=208;
const MAX_FRIENDS: usize = 4;
const SLOTS: usize = 5;
/// How long a watcher may take, after the changes stop, to show the latest entries.
const SETTLE: Duration = Duration::from_secs(10);
/// Once a watcher shows the latest entries, how long it is read on for anything later.
const AFTERWARDS: Duration = Duration::from_millis(150);

// ---- this test's draws from the seeded generator (tests/common: Rng) ----

impl Rng {
    fn target(&mut self) -> u64 {
        *TARGETS.start() + self.below(TARGETS.count() as u64)
    }
    fn person(&mut self) -> u64 {
        *PEOPLE.start() + self.below(PEOPLE.count() as u64)
    }
    /// Two different people.
    fn pair(&mut self) -> (u64, u64) {
        let a = self.person();
        loop {
            let b = self.person();
            if b != a {
                return (a, b);
            }
        }
    }
    /// Up to `max` pairs, no friendship twice (in either order).
    fn pairs(&mut self, max: u64) -> Vec<(u64, u64)> {
        let n = self.below(max + 1);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for _ in 0..n {
            let p = self.pair();
            if !out.iter().any(|&q| key(q) == key(p)) {
                out.push(p);
            }
        }
        out
    }
    fn visibility(&mut self) -> &'static str {
        self.pick(&["everyone", "friends", "nobody"])
    }
}

fn key((a, b): (u64, u64)) -> (u64, u64) {
    (a.min(b), a.max(b))
}

// ---- the model ----

/// What a heartbeat body shows while the user is present (CONTRACT section 1), without
/// `lastOnline`. The driver sends only these shapes.
fn present_entry(user: u64, body: &Value) -> Value {
    let location = body["location"].as_str().unwrap_or("");
    if location.starts_with("Studio") {
        return json!({
            "userId": user, "userPresenceType": "InStudio", "lastLocation": "Studio",
            "placeId": null, "rootPlaceId": null, "universeId": null, "gameId": null,
        });
    }
    if body["placeId"] == 1818 {
        return json!({
            "userId": user, "userPresenceType": "InGame", "lastLocation": "Classic: Crossroads",
            "placeId": 1818, "rootPlaceId": 1818, "universeId": 13058,
            "gameId": body.get("gameId").cloned().unwrap_or(Value::Null),
        });
    }
    json!({
        "userId": user, "userPresenceType": "Online",
        "lastLocation": if location.is_empty() { "Website" } else { location },
        "placeId": null, "rootPlaceId": null, "universeId": null, "gameId": null,
    })
}

/// A user's real presence.
#[derive(Debug, Clone, Default)]
struct Real {
    /// The entry while present, without `lastOnline`.
    present: Option<Value>,
    /// The location kept once Offline.
    location: String,
    /// Present while the clock is before this.
    deadline: Option<i64>,
    /// `lastOnline` in ms; `None` while never seen.
    last_online: Option<i64>,
}

/// The configuration a seed runs with.
#[derive(Debug, Clone, Copy)]
struct Variant {
    integer: bool,
    show_last_online: bool,
}

struct Model {
    now: i64,
    variant: Variant,
    real: HashMap<u64, Real>,
    privacy: HashMap<u64, Privacy>,
    friends: BTreeSet<(u64, u64)>,
}

impl Model {
    fn heartbeat(&mut self, user: u64, body: &Value) {
        let now = self.now;
        let r = self.real.entry(user).or_default();
        let entry = present_entry(user, body);
        r.location = entry["lastLocation"].as_str().unwrap().to_owned();
        r.present = Some(entry);
        r.deadline = Some(now + TTL_MS);
        r.last_online = Some(now);
    }

    fn disconnect(&mut self, user: u64) {
        let now = self.now;
        let r = self.real.entry(user).or_default();
        r.deadline = None;
        r.last_online = Some(now);
    }

    /// The type as the server writes it in this variant.
    fn typed(&self, mut entry: Value) -> Value {
        if self.variant.integer {
            let code = match entry["userPresenceType"].as_str().unwrap() {
                "Offline" => 0,
                "Online" => 1,
                "InGame" => 2,
                "InStudio" => 3,
                other => panic!("no such type {other}"),
            };
            entry["userPresenceType"] = json!(code);
        }
        entry
    }

    /// The real entry, as a `read` key is shown it.
    fn real_entry(&self, user: u64) -> Value {
        let Some(r) = self.real.get(&user) else {
            return self.typed(never_seen(user));
        };
        let mut entry = match (&r.present, r.deadline) {
            (Some(present), Some(d)) if self.now < d => present.clone(),
            _ => json!({
                "userId": user, "userPresenceType": "Offline", "lastLocation": r.location,
                "placeId": null, "rootPlaceId": null, "universeId": null, "gameId": null,
            }),
        };
        entry["lastOnline"] = json!(r.last_online.map_or(NEVER_SEEN.to_owned(), rfc3339));
        self.typed(entry)
    }

    fn privacy_of(&self, user: u64) -> Privacy {
        self.privacy.get(&user).copied().unwrap_or_default()
    }

    fn are_friends(&self, a: u64, b: u64) -> bool {
        self.friends.contains(&key((a, b)))
    }

    fn friends_of(&self, user: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .friends
            .iter()
            .filter_map(|&(a, b)| match (a == user, b == user) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn degree(&self, user: u64) -> usize {
        self.friends
            .iter()
            .filter(|&&(a, b)| a == user || b == user)
            .count()
    }

    /// What `looker` is shown of `user` now.
    fn sight(&self, looker: Looker, user: u64) -> Value {
        let friend = matches!(looker, Looker::User(v) if self.are_friends(v, user));
        reference_sight(
            looker,
            user,
            &self.privacy_of(user),
            friend,
            &self.real_entry(user),
            self.now,
            self.variant.show_last_online,
        )
    }

    /// Whether `looker` is shown `user` masked (hidden, or invisible to others): the
    /// entry a watcher must hold exactly.
    fn masked(&self, looker: Looker, user: u64) -> bool {
        match looker {
            Looker::Reader => false,
            Looker::User(v) if v == user => false,
            _ => {
                let p = self.privacy_of(user);
                let hidden = match p.visibility {
                    Visibility::Everyone => false,
                    Visibility::Nobody => true,
                    Visibility::Friends => {
                        !matches!(looker, Looker::User(v) if self.are_friends(v, user))
                    }
                };
                hidden || p.invisible_at(self.now).is_some()
            }
        }
    }

    /// `POST /v1/friendships`: removes first, then each add unless either side is full;
    /// the skipped pairs as written.
    fn friendships(&mut self, add: &[(u64, u64)], remove: &[(u64, u64)]) -> Vec<(u64, u64)> {
        for &p in remove {
            self.friends.remove(&key(p));
        }
        let mut skipped = Vec::new();
        for &(a, b) in add {
            if self.are_friends(a, b) {
                continue;
            }
            if self.degree(a) >= MAX_FRIENDS || self.degree(b) >= MAX_FRIENDS {
                skipped.push((a, b));
            } else {
                self.friends.insert(key((a, b)));
            }
        }
        skipped
    }

    /// `PUT /v1/users/{user}/friends`: the friends skipped because they are full.
    fn replace(&mut self, user: u64, list: &[u64]) -> Vec<u64> {
        for f in self.friends_of(user) {
            if !list.contains(&f) {
                self.friends.remove(&key((user, f)));
            }
        }
        let mut skipped = Vec::new();
        for &f in list {
            if self.are_friends(user, f) {
                continue;
            }
            if self.degree(f) >= MAX_FRIENDS || self.degree(user) >= MAX_FRIENDS {
                skipped.push(f);
            } else {
                self.friends.insert(key((user, f)));
            }
        }
        skipped
    }

    /// The `invisibleUntil` ends still ahead.
    fn pending_ends(&self) -> Vec<i64> {
        self.privacy
            .values()
            .filter_map(|p| p.invisible_at(self.now).and_then(|i| i.until))
            .collect()
    }

    fn is_deadline(&self, at: i64) -> bool {
        self.real.values().any(|r| r.deadline == Some(at))
    }
}

// ---- watchers ----

struct Watcher {
    name: String,
    who: Who,
    looker: Looker,
    watch: Watch,
    ids: Vec<u64>,
    /// The latest entry received of each watched user.
    known: HashMap<u64, Value>,
}

/// An entry without its `lastOnline`.
fn fields(entry: &Value) -> Value {
    let mut entry = entry.clone();
    entry.as_object_mut().unwrap().remove("lastOnline");
    entry
}

impl Watcher {
    /// Reads until every watched user's latest entry agrees with `expected` (exactly where
    /// `exact` says so, else but for `lastOnline`) and nothing more comes for
    /// [`AFTERWARDS`]; fails when it does not within [`SETTLE`].
    async fn settle(
        &mut self,
        expected: &HashMap<u64, Value>,
        exact: &HashMap<u64, bool>,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let wrong: Vec<String> = self
                .ids
                .iter()
                .filter(|u| {
                    let got = self.known.get(u);
                    let want = &expected[u];
                    match got {
                        None => true,
                        Some(got) if exact[u] => got != want,
                        Some(got) => fields(got) != fields(want),
                    }
                })
                .map(|u| {
                    format!(
                        "user {u}: has {}, lookup {} (exact: {})",
                        self.known.get(u).map_or("nothing".into(), Value::to_string),
                        expected[u],
                        exact[u]
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
                    "{} ({:?}, watching {:?}) did not end on the latest entries within {SETTLE:?}:\n  {}",
                    self.name,
                    self.who,
                    self.ids,
                    wrong.join("\n  ")
                ));
            }
            let wait = if matching { left.min(AFTERWARDS) } else { left };
            let Some(entries) = self.watch.next(wait).await else {
                if matching {
                    return Ok(());
                }
                continue;
            };
            for e in entries {
                let u = e["userId"].as_u64().unwrap();
                if !self.ids.contains(&u) {
                    return Err(format!("{} was sent user {u}, not watched: {e}", self.name));
                }
                self.known.insert(u, e);
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
    next_name: usize,
    step: usize,
    /// The mock clock's first instant, for the log.
    start: i64,
}

/// The viewers the driver draws from: (how it calls, what the reference calls it).
fn draw_viewer(rng: &mut Rng) -> (Who, Looker) {
    match rng.below(8) {
        0 => (Who::Anonymous, Looker::Anonymous),
        1 => (Who::Bearer("not-a-credential".into()), Looker::Anonymous),
        2 => (Who::Key(GAME_KEY), Looker::Anonymous),
        3 => (Who::Key(READ_KEY), Looker::Reader),
        4 => {
            let p = rng.person();
            (Who::Cookie(p), Looker::User(p))
        }
        _ => {
            let p = rng.person();
            (Who::User(p), Looker::User(p))
        }
    }
}

/// The viewers every quiet point looks up as, beside the watchers' own.
fn fixed_viewers() -> Vec<(Who, Looker)> {
    let mut out = vec![
        (Who::Anonymous, Looker::Anonymous),
        (Who::Key(READ_KEY), Looker::Reader),
    ];
    out.extend(PEOPLE.map(|p| (Who::User(p), Looker::User(p))));
    out
}

impl Run {
    fn log(&self, what: &str) {
        eprintln!(
            "[{:>3}] t+{}ms ({}) {what}",
            self.step,
            self.model.now - self.start,
            rfc3339(self.model.now)
        );
    }

    async fn heartbeat(&mut self) {
        let user = self.rng.target();
        let body = match self.rng.below(6) {
            0 => json!({"location": "Home"}),
            1 => json!({"location": "Website"}),
            2 => json!({"location": self.rng.pick(&["Mobile", "Xbox"])}),
            3 => json!({"placeId": 1818}),
            4 => json!({"placeId": 1818, "gameId": GAME}),
            _ => json!({"location": "Studio"}),
        };
        self.log(&format!("heartbeat {user} {body}"));
        self.app.heartbeat(user, body.clone()).await;
        self.model.heartbeat(user, &body);
    }

    async fn disconnect(&mut self) {
        let user = self.rng.target();
        self.log(&format!("disconnect {user}"));
        self.app.heartbeat(user, json!({"disconnect": true})).await;
        self.model.disconnect(user);
    }

    /// Moves the clock on by `ms`, and on by 1 ms more while a heartbeat deadline falls
    /// exactly on the new time (the model leaves that instant to the server).
    fn advance(&mut self, ms: i64) {
        let mut ms = ms;
        while self.model.is_deadline(self.model.now + ms) {
            ms += 1;
        }
        self.app.advance(Duration::from_millis(ms as u64));
        self.model.now += ms;
        self.log(&format!("advance {ms}ms"));
    }

    /// Onto an `invisibleUntil` end (or a millisecond either side of one).
    fn advance_to_an_end(&mut self) {
        let ends = self.model.pending_ends();
        if ends.is_empty() {
            let ms = 1 + self.rng.below(3_000) as i64;
            return self.advance(ms);
        }
        let end = self.rng.pick(&ends);
        let target = end + self.rng.pick(&[-1, 0, 0, 1]);
        let ms = target - self.model.now;
        if ms <= 0 || self.model.is_deadline(target) {
            let ms = 1 + self.rng.below(500) as i64;
            return self.advance(ms);
        }
        self.app.advance(Duration::from_millis(ms as u64));
        self.model.now += ms;
        self.log(&format!(
            "advance {ms}ms onto the end {end} {:+}",
            target - end
        ));
    }

    /// A settings body the contract accepts.
    fn settings_body(&mut self) -> Value {
        let mut body = json!({});
        if self.rng.chance(50) {
            body["visibility"] = json!(self.rng.visibility());
        }
        if self.rng.chance(60) {
            let on = self.rng.chance(65);
            body["invisible"] = json!(on);
            if on && self.rng.chance(50) {
                let until = self.model.now + 1 + self.rng.below(6_000) as i64;
                body["invisibleUntil"] = json!(rfc3339(until));
            }
        }
        body
    }

    /// A settings body the contract refuses (400 code 0).
    fn refused_settings_body(&mut self) -> Value {
        let later = rfc3339(self.model.now + 5_000);
        let past = rfc3339(self.model.now - 1 - self.rng.below(5_000) as i64);
        match self.rng.below(4) {
            0 => json!({"visibility": "friend"}),
            1 => json!({"visibility": self.rng.visibility(), "invisibleUntil": later}),
            2 => json!({"invisible": false, "invisibleUntil": later}),
            _ => json!({"invisible": true, "invisibleUntil": past}),
        }
    }

    async fn change_settings(&mut self, by_platform: bool) -> Result<(), String> {
        let user = self.rng.target();
        let refused = self.rng.chance(15);
        let body = if refused {
            self.refused_settings_body()
        } else {
            self.settings_body()
        };
        let how = if by_platform { "PUT" } else { "PATCH" };
        let note = if refused { " (to be refused)" } else { "" };
        self.log(&format!("{how} settings of {user} {body}{note}"));
        let res = if by_platform {
            self.app.put_settings_raw(user, &body).await
        } else {
            self.app.patch_settings(user, &body).await
        };
        if refused {
            let got = error_of(res).await;
            if got != (400, 0, "BadRequest".to_owned()) {
                return Err(format!("{how} {body} answered {got:?}, not 400 code 0"));
            }
            return Ok(());
        }
        let answer = ok_json(res, &format!("{how} {body}")).await;
        let now = self.model.now;
        let last_online = self.model.real.get(&user).and_then(|r| r.last_online);
        let mut privacy = self.model.privacy_of(user);
        privacy.apply(&body, now, last_online);
        self.model.privacy.insert(user, privacy);
        let want = privacy.answer(now);
        if answer != want {
            return Err(format!("{how} {body} answered {answer}, the model {want}"));
        }
        Ok(())
    }

    async fn change_friendships(&mut self) -> Result<(), String> {
        if self.rng.chance(10) {
            // A self pair among good ones: nothing applied.
            let a = self.rng.person();
            let mut add = self.rng.pairs(2);
            add.push((a, a));
            let body = json!({"add": add.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()});
            self.log(&format!("POST friendships {body} (refused)"));
            let (status, code, _) = error_of(self.app.post_friendships(&body).await).await;
            if (status, code) != (400, 1) {
                return Err(format!("a self pair answered {status} code {code}"));
            }
            return Ok(());
        }
        let add = self.rng.pairs(3);
        let remove = self.rng.pairs(2);
        self.log(&format!("POST friendships add {add:?} remove {remove:?}"));
        let skipped = self.app.friendships(&add, &remove).await;
        let want = self.model.friendships(&add, &remove);
        let norm =
            |v: &[(u64, u64)]| -> BTreeSet<(u64, u64)> { v.iter().map(|&p| key(p)).collect() };
        if norm(&skipped) != norm(&want) || skipped.len() != want.len() {
            return Err(format!("skipped {skipped:?}, the model {want:?}"));
        }
        Ok(())
    }

    async fn replace_friends(&mut self) -> Result<(), String> {
        let user = self.rng.person();
        let n = self.rng.below(MAX_FRIENDS as u64 + 1) as usize;
        let mut list: Vec<u64> = Vec::new();
        while list.len() < n {
            let f = self.rng.person();
            if f != user && !list.contains(&f) {
                list.push(f);
            }
        }
        self.log(&format!("PUT friends of {user} {list:?}"));
        let skipped = self.app.replace_friends(user, &list).await;
        let want = self.model.replace(user, &list);
        let got: BTreeSet<u64> = skipped
            .iter()
            .map(|&(a, b)| {
                if a == user {
                    b
                } else {
                    assert_eq!(b, user, "a skipped pair names the user: {skipped:?}");
                    a
                }
            })
            .collect();
        if got != want.iter().copied().collect::<BTreeSet<_>>() || skipped.len() != want.len() {
            return Err(format!("PUT skipped {skipped:?}, the model {want:?}"));
        }
        Ok(())
    }

    async fn open(&mut self, slot: usize) -> Result<(), String> {
        let (who, looker) = draw_viewer(&mut self.rng);
        let ws = self.rng.chance(50);
        let mut ids: Vec<u64> = TARGETS.collect();
        // Now and then a few of them, in another order.
        if self.rng.chance(30) {
            ids.retain(|_| self.rng.chance(60));
            if ids.is_empty() {
                ids.push(self.rng.target());
            }
            ids.reverse();
        }
        self.next_name += 1;
        let name = format!("{}#{}", if ws { "ws" } else { "sse" }, self.next_name);
        self.log(&format!("open {name} as {who:?} watching {ids:?}"));
        let (watch, first) = Watch::open(&self.app, &who, &ids, ws).await;
        let want: Vec<Value> = ids.iter().map(|&u| self.model.sight(looker, u)).collect();
        if first != want {
            return Err(format!(
                "{name} as {who:?}: first entries {first:?}, the model {want:?}"
            ));
        }
        let known = ids.iter().copied().zip(first).collect();
        self.slots[slot] = Some(Watcher {
            name,
            who,
            looker,
            watch,
            ids,
            known,
        });
        Ok(())
    }

    async fn op(&mut self) -> Result<(), String> {
        match self.rng.below(100) {
            0..=24 => self.heartbeat().await,
            25..=29 => self.disconnect().await,
            30..=39 => {
                let ms = 1 + self.rng.below(4_000) as i64;
                self.advance(ms);
            }
            40..=45 => self.advance_to_an_end(),
            46..=57 => self.change_settings(false).await?,
            58..=64 => self.change_settings(true).await?,
            65..=76 => self.change_friendships().await?,
            77..=81 => self.replace_friends().await?,
            82..=93 => {
                let free: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_none()).collect();
                if free.is_empty() {
                    let slot = self.rng.below(SLOTS as u64) as usize;
                    let w = self.slots[slot].take().unwrap();
                    self.log(&format!("close {}", w.name));
                    self.open(slot).await?;
                } else {
                    let slot = self.rng.pick(&free);
                    self.open(slot).await?;
                }
            }
            _ => {
                let open: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_some()).collect();
                if !open.is_empty() {
                    let slot = self.rng.pick(&open);
                    let w = self.slots[slot].take().unwrap();
                    self.log(&format!("close {}", w.name));
                }
            }
        }
        Ok(())
    }

    /// A lookup of every target by `who` equals the model's decision; returns it.
    async fn check_lookup(&self, who: &Who, looker: Looker) -> Result<Vec<Value>, String> {
        let ids: Vec<u64> = TARGETS.collect();
        let got = self.app.lookup_as(who, &ids).await;
        for (u, entry) in ids.iter().zip(&got) {
            let want = self.model.sight(looker, *u);
            if *entry != want {
                return Err(format!(
                    "lookup of {u} as {who:?} is {entry}; the model says {want} (settings {:?}, friends {:?})",
                    self.model.privacy_of(*u),
                    self.model.friends_of(*u)
                ));
            }
        }
        Ok(got)
    }

    /// After each operation: anonymous and one drawn viewer.
    async fn check_some(&mut self) -> Result<(), String> {
        self.check_lookup(&Who::Anonymous, Looker::Anonymous)
            .await?;
        let (who, looker) = draw_viewer(&mut self.rng);
        self.check_lookup(&who, looker).await?;
        Ok(())
    }

    /// No more changes for now: settings, friends and lookups agree with the model, and
    /// every watcher ends on its viewer's lookup.
    async fn quiet_point(&mut self) -> Result<(), String> {
        self.log("quiet point");
        for u in TARGETS {
            let got = self.app.get_settings(u).await;
            let want = self.model.privacy_of(u).answer(self.model.now);
            if got != want {
                return Err(format!("settings of {u}: {got}, the model {want}"));
            }
        }
        for p in PEOPLE {
            let got = self.app.friends_of(p).await;
            let want = self.model.friends_of(p);
            if got != want {
                return Err(format!("friends of {p}: {got:?}, the model {want:?}"));
            }
        }
        for (who, looker) in fixed_viewers() {
            self.check_lookup(&who, looker).await?;
        }
        // Every watcher is checked, so that a failure shows all the watchers it touches.
        let mut failures = Vec::new();
        for slot in 0..SLOTS {
            let Some(w) = &self.slots[slot] else {
                continue;
            };
            let (who, looker) = (w.who.clone(), w.looker);
            let seen = self.check_lookup(&who, looker).await?;
            let expected: HashMap<u64, Value> = TARGETS.zip(seen).collect();
            let exact: HashMap<u64, bool> =
                TARGETS.map(|u| (u, self.model.masked(looker, u))).collect();
            let settled = self.slots[slot]
                .as_mut()
                .unwrap()
                .settle(&expected, &exact)
                .await;
            if let Err(failure) = settled {
                failures.push(failure);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

async fn run_seed(seed: u64, ops: usize) -> Result<(), String> {
    let variant = Variant {
        integer: seed % 3 == 1,
        show_last_online: seed % 3 != 2,
    };
    eprintln!("==== privacy model, seed {seed:#x}, {ops} operations, {variant:?} ====");
    let app = spawn_app_with_clock(|s| {
        privacy_settings(s);
        s.presence.heartbeat_ttl = Duration::from_millis(TTL_MS as u64);
        s.presence.sweep_interval = Duration::from_millis(100);
        s.privacy.max_friends = MAX_FRIENDS;
        s.privacy.show_last_online = variant.show_last_online;
        if variant.integer {
            s.api.presence_type = PresenceTypeFormat::Integer;
        }
    })
    .await;
    app.until_ready(Duration::from_secs(10)).await;
    let now = app.now_ms();
    let mut run = Run {
        app,
        rng: Rng(seed),
        model: Model {
            now,
            variant,
            real: HashMap::new(),
            privacy: HashMap::new(),
            friends: BTreeSet::new(),
        },
        slots: (0..SLOTS).map(|_| None).collect(),
        next_name: 0,
        step: 0,
        start: now,
    };
    for step in 0..ops {
        run.step = step;
        run.op().await?;
        run.check_some().await?;
        if (step + 1) % QUIET_EVERY == 0 {
            run.quiet_point().await?;
        }
    }
    run.quiet_point().await?;
    run.app.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_viewer_is_shown_the_reference_decision_under_random_operations() {
    run_seeds("PRIVACY_MODEL", &SEEDS, OPS, run_seed).await;
}
