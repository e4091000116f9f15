//! `GET /`: a small page for people (CONTRACT section 9), embedded in the binary and
//! loading nothing from other hosts: the deployment's online counts from `/metrics`, and
//! live presence of chosen users from `/v1/presence/stream`.
//!
//! Its script and style are inline; the `Content-Security-Policy` allows exactly those two
//! blocks by their SHA-256 hashes, computed once from the embedded file, and lets the page
//! connect to this server only.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::AppState;

/// The page. `{{STREAM_MAX_USER_IDS}}` is replaced by `stream.max_user_ids`.
const PAGE: &str = include_str!("page.html");
const MAX_IDS_SLOT: &str = "{{STREAM_MAX_USER_IDS}}";

/// `GET /`: the page, never cached without revalidation.
pub async fn index(state: web::Data<AppState>) -> HttpResponse {
    let max_ids = state.settings.stream.max_user_ids.to_string();
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, policy().clone()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(PAGE.replace(MAX_IDS_SLOT, &max_ids))
}

/// The page's `Content-Security-Policy`, computed once.
fn policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        let script = hash_of_block(PAGE, "script");
        let style = hash_of_block(PAGE, "style");
        let policy = format!(
            "default-src 'none'; script-src {script}; style-src {style}; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
    })
}

/// `'sha256-…'` of the text between the page's only `<tag>` and `</tag>`, or `'none'` when
/// it has no such block.
fn hash_of_block(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = page.find(&open).map(|i| i + open.len()) else {
        return "'none'".into();
    };
    let Some(len) = page[start..].find(&close) else {
        return "'none'".into();
    };
    let digest = Sha256::digest(&page.as_bytes()[start..start + len]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_script_and_one_style_and_both_are_allowed() {
        for tag in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "{tag}");
            assert!(hash_of_block(PAGE, tag).starts_with("'sha256-"), "{tag}");
        }
        let policy = policy().to_str().unwrap_or_default();
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }

    #[test]
    fn the_page_loads_nothing_from_other_hosts() {
        for needle in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(!PAGE.contains(needle), "{needle}");
        }
        assert!(PAGE.contains(MAX_IDS_SLOT));
    }

    #[test]
    fn a_hash_is_of_the_exact_block() {
        let digest = Sha256::digest(b"let a = 1;");
        let expected = format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(
            hash_of_block("<p><script>let a = 1;</script></p>", "script"),
            expected
        );
        assert_eq!(hash_of_block("<p></p>", "script"), "'none'");
    }
}
