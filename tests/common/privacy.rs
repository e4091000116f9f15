//! Privacy for tests (CONTRACT section 11): the service keys, the settings and friendship
//! routes, and lookups, event streams and WebSockets made as a chosen viewer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use presence_server::Settings;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::game::{add_key, game_settings};
use super::live::{Item, Sse, WsStream, WS};
use super::{TestApp, NEVER_SEEN, USERS};

/// The key the platform pushes settings and friendships with: scope `privacy` only.
pub const PRIVACY_KEY: &str = "test-privacy-key-0123456789abcdef0123456789abcdef012345";
/// A key that no deployment of the tests configures.
pub const UNKNOWN_KEY: &str = "test-unknown-key-0123456789abcdef0123456789abcdef012345";

pub const SETTINGS: &str = "/v1/presence/settings";
pub const FRIENDSHIPS: &str = "/v1/friendships";

pub fn settings_path(user: u64) -> String {
    format!("/v1/users/{user}/presence-settings")
}

pub fn friends_path(user: u64) -> String {
    format!("/v1/users/{user}/friends")
}

/// The keys of [`game_settings`] ([`GAME_KEY`]: `game-servers`, [`READ_KEY`]: `read`), the
/// catalog place 1818, and [`PRIVACY_KEY`] with scope `privacy`.
pub fn privacy_settings(settings: &mut Settings) {
    game_settings(settings);
    add_key(settings, "platform", PRIVACY_KEY, &["privacy"]);
}

/// The settings a user who never changed them has.
pub fn default_settings() -> Value {
    json!({"visibility": "everyone", "invisible": false, "invisibleUntil": null})
}

/// Who calls: the viewer a lookup, stream or WebSocket is made as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// No credential at all.
    Anonymous,
    /// A user signed in with `Authorization: Bearer`.
    User(u64),
    /// A user signed in with the `.ROBLOSECURITY` cookie (no CSRF token).
    Cookie(u64),
    /// `Authorization: Bearer <text>` with this text, valid or not.
    Bearer(String),
    /// `x-api-key: <key>`.
    Key(&'static str),
}

impl Who {
    /// The request headers this caller sends to `app`.
    pub fn headers(&self, app: &TestApp) -> Vec<(String, String)> {
        self.headers_by(&|user| app.token(user))
    }

    /// The request headers this caller sends, with credentials made by `mint`.
    pub fn headers_by(&self, mint: &dyn Fn(u64) -> String) -> Vec<(String, String)> {
        match self {
            Who::Anonymous => Vec::new(),
            Who::User(user) => vec![("authorization".into(), format!("Bearer {}", mint(*user)))],
            Who::Cookie(user) => vec![("cookie".into(), format!(".ROBLOSECURITY={}", mint(*user)))],
            Who::Bearer(text) => vec![("authorization".into(), format!("Bearer {text}"))],
            Who::Key(key) => vec![("x-api-key".into(), (*key).to_owned())],
        }
    }

    /// The request builder with this caller's headers.
    pub fn on(&self, app: &TestApp, mut req: RequestBuilder) -> RequestBuilder {
        for (name, value) in self.headers(app) {
            req = req.header(name, value);
        }
        req
    }
}

/// A credential for `user` that expired `ago` before the server clock's now, signed with
/// the server's secret.
pub fn expired_token(app: &TestApp, user: u64, ago: Duration) -> String {
    let exp = app.now_secs() - ago.as_secs().max(1);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user.to_string(), "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(app.settings.auth.jwt_secret.as_bytes()),
    )
    .unwrap()
}

/// The entry of a user never seen, with the type written as `Offline` (string types).
pub fn never_seen(user: u64) -> Value {
    json!({
        "userPresenceType": "Offline",
        "lastLocation": "",
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
        "userId": user,
        "lastOnline": NEVER_SEEN,
    })
}

/// What others see of an invisible user who is not hidden from them: Offline, `""`, no
/// place or game, and `lastOnline` as it was when invisibility began.
pub fn invisible_to_others(user: u64, last_online: &str) -> Value {
    json!({
        "userPresenceType": "Offline",
        "lastLocation": "",
        "placeId": null,
        "rootPlaceId": null,
        "universeId": null,
        "gameId": null,
        "userId": user,
        "lastOnline": last_online,
    })
}

/// Asserts a 200 and returns the body as JSON.
pub async fn ok_json(res: Response, what: &str) -> Value {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, 200, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// The skipped pairs of a friendships answer `{"skipped": [...]}`, checking its shape.
pub fn skipped_of(body: &Value) -> Vec<(u64, u64)> {
    let object = body.as_object().expect("an object");
    assert_eq!(object.len(), 1, "only `skipped`: {body}");
    body["skipped"]
        .as_array()
        .expect("a skipped array")
        .iter()
        .map(|pair| {
            let pair = pair.as_array().expect("a pair is an array");
            assert_eq!(pair.len(), 2, "{body}");
            (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap())
        })
        .collect()
}

fn pairs_json(pairs: &[(u64, u64)]) -> Value {
    Value::Array(pairs.iter().map(|(a, b)| json!([a, b])).collect())
}

impl TestApp {
    /// A request with [`PRIVACY_KEY`].
    pub fn privileged(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("x-api-key", PRIVACY_KEY)
    }

    /// `GET /v1/presence/settings` with `user`'s Bearer credential, raw.
    pub async fn get_settings_raw(&self, user: u64) -> Response {
        self.client
            .get(self.url(SETTINGS))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap()
    }

    /// `user`'s own settings; asserts a 200.
    pub async fn get_settings(&self, user: u64) -> Value {
        ok_json(self.get_settings_raw(user).await, "GET settings").await
    }

    /// `PATCH /v1/presence/settings` with `user`'s Bearer credential and a JSON body, raw.
    pub async fn patch_settings(&self, user: u64, body: &Value) -> Response {
        self.client
            .patch(self.url(SETTINGS))
            .bearer_auth(self.token(user))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `PATCH` of `user`'s own settings; asserts a 200 and returns the answer.
    pub async fn set_settings(&self, user: u64, body: Value) -> Value {
        let res = self.patch_settings(user, &body).await;
        ok_json(res, &format!("PATCH settings of {user} with {body}")).await
    }

    /// `PUT /v1/users/{user}/presence-settings` with [`PRIVACY_KEY`], raw.
    pub async fn put_settings_raw(&self, user: u64, body: &Value) -> Response {
        self.privileged(Method::PUT, &settings_path(user))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `PUT` of `user`'s settings by the platform; asserts a 200 and returns the answer.
    pub async fn put_settings(&self, user: u64, body: Value) -> Value {
        let res = self.put_settings_raw(user, &body).await;
        ok_json(res, &format!("PUT settings of {user} with {body}")).await
    }

    /// `POST /v1/friendships` with [`PRIVACY_KEY`], raw.
    pub async fn post_friendships(&self, body: &Value) -> Response {
        self.privileged(Method::POST, FRIENDSHIPS)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Adds `add` and removes `remove` in one call; asserts a 200 and returns the pairs
    /// listed as skipped.
    pub async fn friendships(&self, add: &[(u64, u64)], remove: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let body = json!({"add": pairs_json(add), "remove": pairs_json(remove)});
        let res = self.post_friendships(&body).await;
        skipped_of(&ok_json(res, &format!("POST friendships {body}")).await)
    }

    /// Makes each pair friends; asserts that none was skipped.
    pub async fn befriend(&self, pairs: &[(u64, u64)]) {
        let skipped = self.friendships(pairs, &[]).await;
        assert_eq!(skipped, Vec::new(), "befriend {pairs:?}");
    }

    /// Ends each pair's friendship.
    pub async fn unfriend(&self, pairs: &[(u64, u64)]) {
        let skipped = self.friendships(&[], pairs).await;
        assert_eq!(skipped, Vec::new(), "unfriend {pairs:?}");
    }

    /// `PUT /v1/users/{user}/friends` with [`PRIVACY_KEY`], raw.
    pub async fn put_friends_raw(&self, user: u64, body: &Value) -> Response {
        self.privileged(Method::PUT, &friends_path(user))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Replaces `user`'s friends with `ids`; asserts a 200 and returns the skipped pairs.
    pub async fn replace_friends(&self, user: u64, ids: &[u64]) -> Vec<(u64, u64)> {
        let body = json!({ "userIds": ids });
        let res = self.put_friends_raw(user, &body).await;
        skipped_of(&ok_json(res, &format!("PUT friends of {user} {body}")).await)
    }

    /// `GET /v1/users/{user}/friends` with [`PRIVACY_KEY`], raw.
    pub async fn get_friends_raw(&self, user: u64) -> Response {
        self.privileged(Method::GET, &friends_path(user))
            .send()
            .await
            .unwrap()
    }

    /// `user`'s friends as the server lists them; asserts a 200 and the answer's shape.
    pub async fn friends_of(&self, user: u64) -> Vec<u64> {
        let body = ok_json(self.get_friends_raw(user).await, "GET friends").await;
        assert_eq!(body.as_object().unwrap().len(), 1, "only `userIds`: {body}");
        body["userIds"]
            .as_array()
            .expect("a userIds array")
            .iter()
            .map(|v| v.as_u64().expect("ids are numbers"))
            .collect()
    }

    /// `POST /v1/presence/users` for `ids` as `who`, raw.
    pub async fn lookup_raw_as(&self, who: &Who, ids: &[u64]) -> Response {
        who.on(self, self.client.post(self.url(USERS)))
            .json(&json!({ "userIds": ids }))
            .send()
            .await
            .unwrap()
    }

    /// The `userPresences` that `who` is shown for `ids`; asserts a 200.
    pub async fn lookup_as(&self, who: &Who, ids: &[u64]) -> Vec<Value> {
        let res = self.lookup_raw_as(who, ids).await;
        let body = ok_json(res, &format!("lookup of {ids:?} as {who:?}")).await;
        body["userPresences"].as_array().unwrap().clone()
    }

    /// The one entry `who` is shown of `user`.
    pub async fn seen_as(&self, who: &Who, user: u64) -> Value {
        self.lookup_as(who, &[user]).await.remove(0)
    }

    /// The whole body text of a lookup of `ids` as `who`; asserts a 200.
    pub async fn lookup_text_as(&self, who: &Who, ids: &[u64]) -> String {
        let res = self.lookup_raw_as(who, ids).await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// An event stream of `ids` opened as `who`, whatever it answers.
    pub async fn sse_raw_as(&self, who: &Who, ids: &[u64]) -> Sse {
        let headers = who.headers(self);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let query = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        Sse::open(self.addr, &format!("userIds={query}"), &headers, None).await
    }

    /// An event stream of `ids` opened as `who`; asserts that it is one.
    pub async fn sse_as(&self, who: &Who, ids: &[u64]) -> Sse {
        let sse = self.sse_raw_as(who, ids).await;
        assert_eq!(sse.status, 200, "stream as {who:?}: {}", sse.body);
        sse
    }

    /// A WebSocket opened as `who`, or the status its upgrade was refused with.
    pub async fn ws_raw_as(&self, who: &Who) -> Result<WsStream, (u16, String)> {
        ws_connect_with(self.addr, &who.headers(self)).await
    }

    /// A WebSocket opened as `who`; asserts the upgrade.
    pub async fn ws_as(&self, who: &Who) -> WsStream {
        self.ws_raw_as(who)
            .await
            .unwrap_or_else(|(status, body)| panic!("WebSocket as {who:?}: {status} {body}"))
    }
}

/// A WebSocket to `{WS}` with extra request headers; `Err` with the status and body of an
/// upgrade that was refused.
pub async fn ws_connect_with(
    addr: SocketAddr,
    headers: &[(String, String)],
) -> Result<WsStream, (u16, String)> {
    let mut request = format!("ws://{addr}{WS}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(other) => panic!("WebSocket to {addr}: {other}"),
    }
}

/// Everything a stream sends within `within`: events and comments, in order.
pub async fn items_within(sse: &mut Sse, within: Duration) -> Vec<Item> {
    let deadline = tokio::time::Instant::now() + within;
    let mut items = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return items;
        }
        match sse.next_item(left).await {
            Some(item) => items.push(item),
            None => return items,
        }
    }
}

/// Every text frame a WebSocket sends within `within` (pings answered on the way).
pub async fn frames_within(ws: &mut WsStream, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return frames;
        }
        match super::live::ws_next(ws, left).await {
            Some(frame) => frames.push(frame),
            None => return frames,
        }
    }
}

/// The entries of a `{"userPresences": [...]}` frame, checking it is one.
pub fn frame_entries(frame: &Value) -> Vec<Value> {
    frame["userPresences"]
        .as_array()
        .unwrap_or_else(|| panic!("a userPresences frame: {frame}"))
        .clone()
}

/// A WebSocket's `{"subscribe": ids}` and the entries of its answer.
pub async fn ws_subscribe(ws: &mut WsStream, ids: &[u64]) -> Vec<Value> {
    super::live::ws_send(ws, &json!({ "subscribe": ids }).to_string()).await;
    frame_entries(&super::live::ws_frame(ws).await)
}

/// A live watcher of either kind, read the same way: an event stream, or a WebSocket
/// subscribed once.
pub enum Watch {
    Sse(Sse),
    Ws(WsStream),
}

impl Watch {
    /// Opens a watcher of `ids` as `who` (a WebSocket when `ws`) and returns it with the
    /// entries of its first event (the subscribe answer on a WebSocket).
    pub async fn open(app: &TestApp, who: &Who, ids: &[u64], ws: bool) -> (Self, Vec<Value>) {
        if ws {
            let mut socket = app.ws_as(who).await;
            let first = ws_subscribe(&mut socket, ids).await;
            (Watch::Ws(socket), first)
        } else {
            let mut sse = app.sse_as(who, ids).await;
            let first = sse.event().await;
            assert_eq!(first.name, "presence");
            (Watch::Sse(sse), first.entries())
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Watch::Sse(_) => "SSE",
            Watch::Ws(_) => "WebSocket",
        }
    }

    /// The entries of the next event or frame, `None` when none comes within `within`.
    /// An error frame fails the test.
    pub async fn next(&mut self, within: Duration) -> Option<Vec<Value>> {
        match self {
            Watch::Sse(sse) => sse.next_event(within).await.map(|e| {
                assert_eq!(e.name, "presence");
                e.entries()
            }),
            Watch::Ws(ws) => super::live::ws_next(ws, within)
                .await
                .map(|frame| frame_entries(&frame)),
        }
    }

    /// The entries of the next event or frame, which must come within 10 s.
    pub async fn expect(&mut self, what: &str) -> Vec<Value> {
        let kind = self.kind();
        self.next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{kind} watcher: no event within 10 s: {what}"))
    }

    /// Asserts that nothing but keep-alive pings comes within `within`.
    pub async fn silent(&mut self, within: Duration, what: &str) {
        let kind = self.kind();
        let sent = self.anything_within(within).await;
        assert!(
            sent.is_empty(),
            "{kind} watcher was sent something: {what}: {sent:?}"
        );
    }

    /// Everything sent within `within` other than the keep-alive comment `: ping` (event
    /// stream) and ping frames (WebSocket): each event, other comment or text frame.
    pub async fn anything_within(&mut self, within: Duration) -> Vec<String> {
        match self {
            Watch::Sse(sse) => items_within(sse, within)
                .await
                .into_iter()
                .filter(|item| *item != Item::Comment("ping".into()))
                .map(|item| format!("{item:?}"))
                .collect(),
            Watch::Ws(ws) => frames_within(ws, within)
                .await
                .into_iter()
                .map(|frame| frame.to_string())
                .collect(),
        }
    }
}

// ---- a reference of section 11's decision, written from the contract ----

/// `visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Everyone,
    Friends,
    Nobody,
}

impl Visibility {
    pub fn name(self) -> &'static str {
        match self {
            Visibility::Everyone => "everyone",
            Visibility::Friends => "friends",
            Visibility::Nobody => "nobody",
        }
    }
}

/// An invisibility: its end (`invisibleUntil`, ms since the epoch) and the `lastOnline`
/// the user had when it began (`None`: never seen then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invisibility {
    pub until: Option<i64>,
    pub frozen: Option<i64>,
}

/// One user's settings in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privacy {
    pub visibility: Visibility,
    pub invisible: Option<Invisibility>,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            visibility: Visibility::Everyone,
            invisible: None,
        }
    }
}

impl Privacy {
    /// The invisibility that holds at `now`: it ends exactly at `invisibleUntil`.
    pub fn invisible_at(&self, now: i64) -> Option<Invisibility> {
        self.invisible
            .filter(|i| i.until.is_none_or(|until| now < until))
    }

    /// The settings after an accepted `PATCH` or `PUT` body at `now`, the user's
    /// `lastOnline` then being `last_online`: a visibility named replaces the old one;
    /// `invisible: true` begins an invisibility (freezing `last_online`) or, while one
    /// lasts, keeps its frozen `lastOnline` and takes the body's end (none: until turned
    /// off); `invisible: false` ends it; one that has ended is gone.
    pub fn apply(&mut self, body: &Value, now: i64, last_online: Option<i64>) {
        if let Some(name) = body["visibility"].as_str() {
            self.visibility = match name {
                "everyone" => Visibility::Everyone,
                "friends" => Visibility::Friends,
                "nobody" => Visibility::Nobody,
                other => panic!("the reference applies accepted bodies only: {other}"),
            };
        }
        let ongoing = self.invisible_at(now);
        self.invisible = match body["invisible"].as_bool() {
            None => ongoing,
            Some(false) => None,
            Some(true) => Some(Invisibility {
                until: body["invisibleUntil"].as_str().map(|text| {
                    chrono::DateTime::parse_from_rfc3339(text)
                        .unwrap()
                        .timestamp_millis()
                }),
                frozen: ongoing.map_or(last_online, |o| o.frozen),
            }),
        };
    }

    /// `GET /v1/presence/settings` at `now`.
    pub fn answer(&self, now: i64) -> Value {
        let invisible = self.invisible_at(now);
        json!({
            "visibility": self.visibility.name(),
            "invisible": invisible.is_some(),
            "invisibleUntil": invisible.and_then(|i| i.until).map(super::game::rfc3339),
        })
    }
}

/// Who looks, in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looker {
    Anonymous,
    User(u64),
    Reader,
}

/// What `looker` is shown of `target` (CONTRACT section 11, "What viewer V is shown of
/// user U", in its order), from the real entry `real` as a `read` key is shown it (string or
/// integer types), the target's settings, whether the looker is a signed-in friend, the
/// instant `now` and `privacy.show_last_online`.
pub fn reference_sight(
    looker: Looker,
    target: u64,
    privacy: &Privacy,
    friend: bool,
    real: &Value,
    now: i64,
    show_last_online: bool,
) -> Value {
    let integer = real["userPresenceType"].is_number();
    let offline = if integer { json!(0) } else { json!("Offline") };
    let invisible = privacy.invisible_at(now);
    // V is U: the real entry, typed Invisible while invisible and present.
    if looker == Looker::User(target) {
        let mut entry = real.clone();
        if invisible.is_some() && real["userPresenceType"] != offline {
            entry["userPresenceType"] = if integer {
                json!(4)
            } else {
                json!("Invisible")
            };
        }
        return entry;
    }
    // V holds a read key: the real entry.
    if looker == Looker::Reader {
        return real.clone();
    }
    let mut never = never_seen(target);
    never["userPresenceType"] = offline.clone();
    // Hidden: exactly the entry of a user never seen.
    let visible = match privacy.visibility {
        Visibility::Everyone => true,
        Visibility::Nobody => false,
        Visibility::Friends => matches!(looker, Looker::User(_)) && friend,
    };
    if !visible {
        return never;
    }
    let last_online = |ms: Option<i64>| match ms {
        Some(ms) if show_last_online => json!(super::game::rfc3339(ms)),
        _ => json!(NEVER_SEEN),
    };
    if let Some(invisibility) = invisible {
        let mut entry = never;
        entry["lastOnline"] = last_online(invisibility.frozen);
        return entry;
    }
    let mut entry = real.clone();
    if !show_last_online {
        entry["lastOnline"] = json!(NEVER_SEEN);
    }
    entry
}
