//! Response negotiation, request metrics and request logs, applied around every route;
//! the refusal of unknown service keys, applied around the API's routes.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpRequest;

use super::error::{ApiError, JSON_UTF8};
use super::extract::{ServiceCaller, API_KEY_HEADER};
use super::routes::{reads_credentials, route_name};
use super::AppState;
use crate::connections::StreamMark;

const TEXT_JSON_UTF8: HeaderValue = HeaderValue::from_static("text/json; charset=utf-8");

/// Answers `text/json` to clients that ask for it and not for `application/json`, counts
/// and times each request (and counts it in flight meanwhile), and logs it at debug level.
///
/// With `refuse_keys`, refuses unknown service keys too, as [`refuse_unknown_keys`] does:
/// the server does so when nothing stands between the two (no CORS), which spares every
/// request a layer of middleware.
pub async fn negotiate_and_log<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
    refuse_keys: bool,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    // The processor's time-stamp counter where it has a steady one (no system call).
    let started = quanta::Instant::now();
    let _in_flight = req
        .app_data::<actix_web::web::Data<AppState>>()
        .map(|state| state.metrics.in_flight());
    let text_json = wants_text_json(req.request());
    let refused = if behind_a_stream(&req) {
        Some(ApiError::BadRequest("a request sent behind a live stream".into()).into())
    } else if refuse_keys {
        refusal(&req)
    } else {
        None
    };
    let mut res = match refused {
        Some(refused) => req.error_response(refused).map_into_right_body(),
        None => next.call(req).await?.map_into_left_body(),
    };
    if text_json && res.headers().get(header::CONTENT_TYPE) == Some(&JSON_UTF8) {
        res.headers_mut()
            .insert(header::CONTENT_TYPE, TEXT_JSON_UTF8);
    }
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    if let Some(state) = res.request().app_data::<actix_web::web::Data<AppState>>() {
        let route = route_name(res.request().path());
        state.metrics.request(route, status, elapsed.as_secs_f64());
    }
    tracing::debug!(
        method = %res.request().method(),
        path = res.request().path(),
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    Ok(res)
}

/// Whether `req` came on a connection whose socket a live stream asked for (see
/// [`StreamMark::hand_over`]): the client sent it behind the stream's request, no answer
/// can reach it, so it is refused rather than carried out.
fn behind_a_stream(req: &ServiceRequest) -> bool {
    req.conn_data::<StreamMark>()
        .is_some_and(StreamMark::handed_over)
}

/// CONTRACT section 11: a request to an API route that sends `x-api-key` with a key that
/// matches no configured key (or an empty, repeated or unprintable one) is answered 401 here,
/// before routing to its handler, whatever the route would have read. A known key passes,
/// whatever its scopes: each route decides what the key's scopes allow (a service route
/// answers 403 without its scope, a lookup or stream views as anonymous without `read`, a
/// route that acts for the caller's own credential does not read the key at all).
///
/// The operators' routes and the page ([`reads_credentials`] is false for them) read no
/// credential of any kind and answer every caller alike: a health probe or a scraper that
/// passes a stray header on is not turned away. A path that is no route stays 404.
///
/// Requests without the header (every user's call) cost one header lookup.
pub async fn refuse_unknown_keys<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    if let Some(refused) = refusal(&req) {
        return Ok(req.error_response(refused).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Why `req` is refused for its `x-api-key` (see [`refuse_unknown_keys`]), if it is.
fn refusal(req: &ServiceRequest) -> Option<actix_web::Error> {
    if !req.headers().contains_key(API_KEY_HEADER) || !reads_credentials(req.path()) {
        return None;
    }
    let state = req.app_data::<actix_web::web::Data<AppState>>()?;
    ServiceCaller::identify(req.request(), &state.service_keys)
        .err()
        .map(actix_web::Error::from)
}

/// True when `Accept` names `text/json` and not `application/json` (ignoring `q=0` entries).
fn wants_text_json(req: &HttpRequest) -> bool {
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut text_json = false;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        if essence.eq_ignore_ascii_case("application/json") {
            return false;
        }
        text_json |= essence.eq_ignore_ascii_case("text/json");
    }
    text_json
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn wants(accept: &str) -> bool {
        wants_text_json(
            &TestRequest::default()
                .insert_header((header::ACCEPT, accept))
                .to_http_request(),
        )
    }

    #[test]
    fn text_json_only_when_asked_for_and_application_json_is_not() {
        assert!(wants("text/json"));
        assert!(wants("text/json; q=0.9, */*; q=0.1"));
        assert!(!wants("application/json, text/json"));
        assert!(!wants("text/json;q=0"));
        assert!(!wants("*/*"));
        assert!(!wants_text_json(&TestRequest::default().to_http_request()));
    }
}
