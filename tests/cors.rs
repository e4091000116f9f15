#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What browsers see (CONTRACT section 9), through the real server: CORS for the origins of
//! `api.cors_origins`, and the page at `/`.
mod common;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::json;

const PAGE_ORIGIN: &str = "http://localhost:3000";
const OTHER_ORIGIN: &str = "https://elsewhere.example";

/// Every CORS response header name.
const CORS_HEADERS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
];

async fn listed() -> TestApp {
    spawn_app_with(|s| s.api.cors_origins = vec![PAGE_ORIGIN.into()]).await
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The `Vary` header's names, lower-cased, over all its lines.
fn vary(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

fn assert_no_cors(headers: &HeaderMap, what: &str) {
    for name in CORS_HEADERS {
        assert!(headers.get(name).is_none(), "{what}: unexpected {name}");
    }
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "content-type,x-csrf-token",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_is_204_with_every_header() {
    let app = listed().await;
    for (path, method) in [
        (USERS, "POST"),
        (REGISTER, "POST"),
        ("/metrics", "GET"),
        ("/health", "GET"),
        ("/", "GET"),
        ("/v1/presence/stream", "GET"),
    ] {
        let res = preflight(&app, path, PAGE_ORIGIN, method).await;
        let h = res.headers();
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(header(h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
        assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
        let methods = header(h, "access-control-allow-methods").unwrap();
        assert!(
            methods.split(',').any(|m| m.trim() == method),
            "{path}: {methods}"
        );
        let allowed = header(h, "access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        for name in ["content-type", "authorization", "x-csrf-token"] {
            assert!(
                allowed.split(',').any(|a| a.trim() == name),
                "{path}: {allowed}"
            );
        }
        assert!(header(h, "access-control-max-age").is_some(), "{path}");
        assert!(vary(h).contains(&"origin".into()), "{path}");
        assert!(res.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn any_origin_is_allowed_without_credentials_with_star() {
    let app = spawn_app_with(|s| s.api.cors_origins = vec!["*".into()]).await;
    let res = preflight(&app, USERS, OTHER_ORIGIN, "POST").await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        header(res.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert!(header(res.headers(), "access-control-allow-credentials").is_none());
    assert_eq!(
        header(res.headers(), "access-control-allow-methods").map(|m| m.contains("POST")),
        Some(true)
    );

    let res = app
        .client
        .post(app.url(USERS))
        .header("origin", OTHER_ORIGIN)
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert!(header(res.headers(), "access-control-allow-credentials").is_none());
    assert_eq!(
        header(res.headers(), "access-control-expose-headers"),
        Some("x-csrf-token")
    );
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_header_and_its_preflight_fails() {
    let app = listed().await;
    let res = preflight(&app, USERS, OTHER_ORIGIN, "POST").await;
    // What the server answers without CORS: OPTIONS is not a method of the route.
    assert_eq!(res.status(), 405);
    assert_eq!(header(res.headers(), "allow"), Some("POST"));
    assert_no_cors(res.headers(), "preflight");
    // The answer depends on Origin all the same: a cache must keep it apart.
    assert!(vary(res.headers()).contains(&"origin".into()));

    let res = app
        .client
        .post(app.url(USERS))
        .header("origin", OTHER_ORIGIN)
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_no_cors(res.headers(), "lookup");

    // A listed origin differs from one only by its port or its scheme.
    for near in ["http://localhost:3001", "https://localhost:3000"] {
        let res = preflight(&app, USERS, near, "POST").await;
        assert_eq!(res.status(), 405, "{near}");
        assert_no_cors(res.headers(), near);
    }
}

#[tokio::test]
async fn answers_to_a_listed_origin_carry_the_origin_and_expose_the_csrf_token() {
    let app = listed().await;
    let res = app
        .client
        .post(app.url(USERS))
        .header("origin", PAGE_ORIGIN)
        .json(&json!({"userIds": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(h, "access-control-expose-headers"),
        Some("x-csrf-token")
    );
    assert!(vary(h).contains(&"origin".into()));
    // Preflight-only headers stay on preflights.
    assert!(header(h, "access-control-allow-methods").is_none());
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["userPresences"].as_array().unwrap().len(), 2);

    // A cookie heartbeat without its CSRF token: 403, and the page can read the token.
    let jwt = app.token(42);
    let res = app
        .client
        .post(app.url(REGISTER))
        .header("origin", PAGE_ORIGIN)
        .header("cookie", format!(".ROBLOSECURITY={jwt}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let h = res.headers().clone();
    assert_eq!(header(&h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&h, "access-control-expose-headers"),
        Some("x-csrf-token")
    );
    assert!(vary(&h).contains(&"origin".into()));
    let token = header(&h, "x-csrf-token")
        .expect("the 403's token")
        .to_owned();
    assert_eq!(
        error_of(res).await,
        (403, 0, "Token Validation Failed".into())
    );

    // Repeated with the token, as a page does.
    let res = app
        .client
        .post(app.url(REGISTER))
        .header("origin", PAGE_ORIGIN)
        .header("cookie", format!(".ROBLOSECURITY={jwt}"))
        .header("x-csrf-token", token)
        .json(&json!({"location": "Website"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "access-control-allow-origin"),
        Some(PAGE_ORIGIN)
    );
}

#[tokio::test]
async fn a_live_stream_to_a_listed_origin_carries_the_headers() {
    let app = listed().await;
    let res = app
        .client
        .get(app.url("/v1/presence/stream?userIds=1"))
        .header("origin", PAGE_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert!(header(h, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(header(h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    assert!(vary(h).contains(&"origin".into()));
}

#[tokio::test]
async fn errors_to_a_listed_origin_carry_the_headers_too() {
    let app = spawn_app_with(|s| {
        s.api.cors_origins = vec![PAGE_ORIGIN.into()];
        s.rate_limit.lookup_per_second = 1;
        s.rate_limit.lookup_burst = 1;
    })
    .await;
    let send = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = app
            .client
            .request(method, app.url(path))
            .header("origin", PAGE_ORIGIN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let mut answers = vec![
        (
            400,
            send(Method::POST, USERS, Some(json!({"userIds": [0]})))
                .await
                .unwrap(),
        ),
        (
            429,
            send(Method::POST, USERS, Some(json!({"userIds": [1]})))
                .await
                .unwrap(),
        ),
        (
            401,
            send(Method::POST, REGISTER, Some(json!({}))).await.unwrap(),
        ),
        (
            404,
            send(Method::GET, "/v1/presence/nope", None).await.unwrap(),
        ),
        (405, send(Method::DELETE, USERS, None).await.unwrap()),
    ];
    // A preflight on a path that is no route: answered as without CORS (404), readable.
    answers.push((
        404,
        preflight(&app, "/v1/presence/nope", PAGE_ORIGIN, "GET").await,
    ));
    for (status, res) in answers {
        let h = res.headers().clone();
        assert_eq!(res.status(), status);
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some(PAGE_ORIGIN),
            "{status}"
        );
        assert_eq!(
            header(&h, "access-control-expose-headers"),
            Some("x-csrf-token"),
            "{status}"
        );
        assert!(vary(&h).contains(&"origin".into()), "{status}");
        assert_eq!(error_of(res).await.0, status);
    }
}

#[tokio::test]
async fn without_cors_origins_no_cors_header_is_ever_sent() {
    let app = spawn_app().await;
    let res = preflight(&app, USERS, PAGE_ORIGIN, "POST").await;
    assert_eq!(res.status(), 405);
    assert_no_cors(res.headers(), "preflight");
    let res = app
        .client
        .post(app.url(USERS))
        .header("origin", PAGE_ORIGIN)
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_no_cors(res.headers(), "lookup");
    assert!(res.headers().get("vary").is_none());
}

#[tokio::test]
async fn where_cors_is_on_every_answer_varies_on_origin() {
    let app = listed().await;
    let res = app.post_json(USERS, &json!({"userIds": [1]})).await;
    assert_eq!(res.status(), 200);
    assert_no_cors(res.headers(), "lookup");
    assert!(vary(res.headers()).contains(&"origin".into()));
    // Errors too: a 404, a refused heartbeat, an unlisted origin's lookup.
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(vary(res.headers()).contains(&"origin".into()));
    let res = app.post_json(REGISTER, &json!({})).await;
    assert_eq!(res.status(), 401);
    assert!(vary(res.headers()).contains(&"origin".into()));
    let res = app
        .client
        .post(app.url(USERS))
        .header("origin", OTHER_ORIGIN)
        .json(&json!({"userIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_no_cors(res.headers(), "unlisted lookup");
    assert!(vary(res.headers()).contains(&"origin".into()));
}

#[tokio::test]
async fn the_page_is_html_under_a_strict_policy_and_names_its_parts() {
    let app = spawn_app_with(|s| s.stream.max_user_ids = 7).await;
    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(header(h, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(h, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(h, "cache-control"), Some("no-cache"));
    let policy = header(h, "content-security-policy").unwrap();
    for part in [
        "default-src 'none'",
        "connect-src 'self'",
        "script-src 'sha256-",
        "style-src 'sha256-",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let page = res.text().await.unwrap();
    for id in [
        "id=\"count-Online\"",
        "id=\"count-InGame\"",
        "id=\"count-InStudio\"",
        "id=\"count-total\"",
        "id=\"ids\"",
        "id=\"watch\"",
        "/v1/presence/stream?userIds=",
        "content=\"7\"",
    ] {
        assert!(page.contains(id), "{id}");
    }

    // Another method on it: 405 allowing GET, like every route.
    let res = app.client.post(app.url("/")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET");
    assert_eq!(error_of(res).await.0, 405);
}
