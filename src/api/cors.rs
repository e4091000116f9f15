//! Browsers (CONTRACT section 9): CORS for the origins of `api.cors_origins`, and the check
//! that keeps a foreign page from riding a visitor's cookie on a live stream.
//!
//! [`Cors`] is applied around every route. Its rules:
//!
//! - `api.cors_origins = []`: nothing at all is added.
//! - A request without `Origin` (every non-browser client, the API's hot path) costs one
//!   header lookup.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin on a path that is a route is answered `204` here, with the route's
//!   method. On a path that is no route it is answered as without CORS (404 in the
//!   contract's shape), with the CORS headers of any answer, so that the page can read it.
//! - Every other answer to an allowed origin, errors included, carries
//!   `Access-Control-Allow-Origin`, `Access-Control-Expose-Headers: x-csrf-token`,
//!   `Access-Control-Allow-Credentials: true` (listed origins only, never with `*`) and
//!   `Vary: Origin` (added to any `Vary` already there).
//! - Any other origin gets none of these headers: its preflight gets the server's usual
//!   answer (405 with `Allow` on a route), which the browser then refuses.

use std::future::Future;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse};

use super::extract::{CSRF_HEADER, SESSION_COOKIE};
use super::routes::method_of;
use crate::config::Settings;

/// The request headers a page may send: the body's type, a Bearer credential, a CSRF token.
const ALLOW_HEADERS: HeaderValue =
    HeaderValue::from_static("content-type, authorization, x-csrf-token, x-api-key");
/// The response header a page may read beside the safelisted ones: the CSRF token of a 403.
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static(CSRF_HEADER);
/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const ORIGIN: HeaderValue = HeaderValue::from_static("origin");
const ANY: HeaderValue = HeaderValue::from_static("*");

/// The allowed origins of `api.cors_origins`, prepared once at start-up.
#[derive(Debug, Clone)]
pub struct Cors {
    allowed: Allowed,
}

#[derive(Debug, Clone)]
enum Allowed {
    /// `[]`: no CORS at all.
    Nobody,
    /// `["*"]`: any origin, without credentials.
    Anyone,
    /// Exact origins, with credentials.
    Listed(Vec<HeaderValue>),
}

/// How one request's origin is answered.
enum Grant {
    /// `*`, no credentials.
    Any,
    /// The origin itself, with credentials.
    Exact(HeaderValue),
}

impl Cors {
    pub fn new(cors_origins: &[String]) -> Self {
        let allowed = if cors_origins.is_empty() {
            Allowed::Nobody
        } else if cors_origins.iter().any(|o| o == "*") {
            Allowed::Anyone
        } else {
            // Validated at start-up (`Settings::validate`): ASCII, so always a header value.
            Allowed::Listed(
                cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        };
        Self { allowed }
    }

    /// Whether any origin is allowed at all (else the middleware need not be mounted).
    pub fn is_on(&self) -> bool {
        !matches!(self.allowed, Allowed::Nobody)
    }

    /// What `origin` is granted, if it is allowed.
    fn grant(&self, origin: &HeaderValue) -> Option<Grant> {
        match &self.allowed {
            Allowed::Nobody => None,
            Allowed::Anyone => Some(Grant::Any),
            Allowed::Listed(origins) => origins
                .iter()
                .any(|o| o == origin)
                .then(|| Grant::Exact(origin.clone())),
        }
    }

    /// The middleware: see the module's documentation. What the request's origin is granted
    /// is decided here, before the future, so that the future holds no reference to `self`
    /// and a request without `Origin` costs one header lookup and nothing shared.
    pub fn handle<B: MessageBody + 'static>(
        &self,
        req: ServiceRequest,
        next: Next<B>,
    ) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>> + 'static
    {
        let grant = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|origin| self.grant(origin));
        answer(grant, req, next)
    }
}

/// The answer to `req`, given what its origin is granted.
async fn answer<B: MessageBody + 'static>(
    grant: Option<Grant>,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(grant) = grant else {
        // No CORS headers, but the answer still depends on `Origin`: a cache must not give
        // it to an allowed origin (nor the other way round).
        let mut res = next.call(req).await?.map_into_left_body();
        vary_on_origin(res.headers_mut());
        return Ok(res);
    };
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if let Some(method) = method_of(req.path()) {
            let mut res = HttpResponse::NoContent().finish();
            let headers = res.headers_mut();
            answer_headers(headers, &grant);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(method),
            );
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
            return Ok(req.into_response(res).map_into_right_body());
        }
    }
    // Handlers' and extractors' errors arrive here as answers, and get the headers.
    let mut res = next.call(req).await?.map_into_left_body();
    let headers = res.headers_mut();
    answer_headers(headers, &grant);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    Ok(res)
}

/// The headers of every answer to an allowed origin, preflights included.
fn answer_headers(headers: &mut HeaderMap, grant: &Grant) {
    match grant {
        Grant::Any => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
        }
        Grant::Exact(origin) => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
    }
    vary_on_origin(headers);
}

/// Adds `Origin` to `Vary`, keeping what is there.
fn vary_on_origin(headers: &mut HeaderMap) {
    let already = headers.get_all(header::VARY).any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|name| name.trim().eq_ignore_ascii_case("origin") || name.trim() == "*")
        })
    });
    if !already {
        headers.append(header::VARY, ORIGIN);
    }
}

/// True when `req` carries a cookie credential (`.ROBLOSECURITY`) and an `Origin` that is
/// neither this server's own (`http://` or `https://` and the request's host) nor one listed
/// exactly in `api.cors_origins`. `["*"]` does not count: it allows any origin *without*
/// credentials, so a cookie from an unlisted origin stays foreign. A request without
/// `Origin` (not from a browser page, or a same-origin `GET`) is not foreign.
///
/// Live streams and WebSockets refuse such a request with [`super::ApiError::Forbidden`]
/// (CONTRACT section 9): a foreign page must not ride a visitor's cookie.
pub fn foreign_cookie_origin(req: &HttpRequest, settings: &Settings) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    if req
        .cookie(SESSION_COOKIE)
        .is_none_or(|cookie| cookie.value().is_empty())
    {
        return false;
    }
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    if settings.api.cors_origins.iter().any(|o| o == origin) {
        return false;
    }
    // The `Host` the client sent (the authority of an absolute request line otherwise),
    // never `X-Forwarded-Host` or `Forwarded`, which the page's own request may carry.
    let Some(own_host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
    else {
        return true;
    };
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|host| host.eq_ignore_ascii_case(own_host));
    !own
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn settings(origins: &[&str]) -> Settings {
        let mut settings = Settings::default();
        settings.api.cors_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        settings
    }

    fn request(origin: Option<&str>, cookie: Option<&str>) -> HttpRequest {
        let mut req = TestRequest::get()
            .uri("/v1/presence/stream?userIds=1")
            .insert_header((header::HOST, "presence.example.com:8080"));
        if let Some(origin) = origin {
            req = req.insert_header((header::ORIGIN, origin));
        }
        if let Some(cookie) = cookie {
            req = req.insert_header((header::COOKIE, format!("{SESSION_COOKIE}={cookie}")));
        }
        req.to_http_request()
    }

    #[test]
    fn a_cookie_from_an_unlisted_origin_is_foreign() {
        let s = settings(&["https://www.example.com"]);
        assert!(foreign_cookie_origin(
            &request(Some("https://evil.example"), Some("jwt")),
            &s
        ));
        assert!(foreign_cookie_origin(
            &request(Some("null"), Some("jwt")),
            &s
        ));
        // Same host, another port: another origin.
        assert!(foreign_cookie_origin(
            &request(Some("http://presence.example.com:9999"), Some("jwt")),
            &s
        ));
        assert!(foreign_cookie_origin(
            &request(Some("https://evil.example"), Some("jwt")),
            &settings(&[])
        ));
    }

    #[test]
    fn the_servers_own_and_listed_origins_are_not_foreign() {
        let s = settings(&["https://www.example.com"]);
        for origin in [
            "http://presence.example.com:8080",
            "https://presence.example.com:8080",
            "https://www.example.com",
        ] {
            assert!(
                !foreign_cookie_origin(&request(Some(origin), Some("jwt")), &s),
                "{origin}"
            );
        }
    }

    #[test]
    fn without_a_cookie_or_an_origin_nothing_is_foreign() {
        let s = settings(&[]);
        assert!(!foreign_cookie_origin(
            &request(Some("https://evil.example"), None),
            &s
        ));
        assert!(!foreign_cookie_origin(
            &request(Some("https://evil.example"), Some("")),
            &s
        ));
        assert!(!foreign_cookie_origin(&request(None, Some("jwt")), &s));
    }

    #[test]
    fn any_origin_is_allowed_without_credentials_so_a_cookie_stays_foreign() {
        let s = settings(&["*"]);
        assert!(foreign_cookie_origin(
            &request(Some("https://evil.example"), Some("jwt")),
            &s
        ));
        assert!(!foreign_cookie_origin(
            &request(Some("http://presence.example.com:8080"), Some("jwt")),
            &s
        ));
    }

    #[test]
    fn forwarded_host_headers_do_not_make_a_foreign_page_own() {
        let s = settings(&[]);
        for (name, value) in [
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
        ] {
            let req = TestRequest::default()
                .insert_header((header::HOST, "presence.example"))
                .insert_header((header::ORIGIN, "https://evil.example"))
                .insert_header((name, value))
                .cookie(actix_web::cookie::Cookie::new(SESSION_COOKIE, "jwt"))
                .to_http_request();
            assert!(foreign_cookie_origin(&req, &s), "{name}");
        }
    }

    #[test]
    fn vary_keeps_what_is_there() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        vary_on_origin(&mut headers);
        let all: Vec<_> = headers.get_all(header::VARY).collect();
        assert_eq!(all, ["accept-encoding", "origin"]);
        vary_on_origin(&mut headers);
        assert_eq!(headers.get_all(header::VARY).count(), 2);
    }

    #[test]
    fn origins_are_prepared_once() {
        assert!(!Cors::new(&[]).is_on());
        let listed = Cors::new(&["http://localhost:3000".to_owned()]);
        assert!(listed.is_on());
        assert!(matches!(
            listed.grant(&HeaderValue::from_static("http://localhost:3000")),
            Some(Grant::Exact(_))
        ));
        assert!(listed
            .grant(&HeaderValue::from_static("http://localhost:3001"))
            .is_none());
        assert!(matches!(
            Cors::new(&["*".to_owned()]).grant(&HeaderValue::from_static("http://x.example")),
            Some(Grant::Any)
        ));
    }
}
