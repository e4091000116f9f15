//! The body extractor: the one place that knows JSON, `text/json` and form bodies, the
//! content-type rules and the size limit.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest};
use futures_util::StreamExt;

use super::error::ApiError;
use super::AppState;

/// How a body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Form,
}

impl Encoding {
    /// `Ok(None)` when there is no content type at all.
    fn of(req: &HttpRequest) -> Result<Option<Self>, ApiError> {
        let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
            return Ok(None);
        };
        let value = value.to_str().map_err(|_| ApiError::UnsupportedMediaType)?;
        let essence = value.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json")
            || essence.eq_ignore_ascii_case("text/json")
        {
            Ok(Some(Self::Json))
        } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Ok(Some(Self::Form))
        } else {
            Err(ApiError::UnsupportedMediaType)
        }
    }
}

/// A request body that a type knows how to decode from each encoding.
/// A request body that a type knows how to decode from each encoding; it may borrow from
/// the body's bytes.
pub trait FromBody<'a>: Sized + Default {
    fn from_json(bytes: &'a [u8]) -> Result<Self, ApiError>;
    fn from_form(bytes: &'a [u8]) -> Result<Self, ApiError>;
}

/// A whole request body, read within `server.max_body_bytes`, with its encoding.
#[derive(Debug)]
pub struct Body {
    encoding: Option<Encoding>,
    bytes: Bytes,
}

impl Body {
    /// Decodes the body; an empty body is `T::default()`, as `{}` would be (CONTRACT
    /// section 1). A body of blanks only is not empty: as JSON it holds no value (400), and
    /// without a content type it is a body no one said how to read (415).
    pub fn decode<'a, T: FromBody<'a>>(&'a self) -> Result<T, ApiError> {
        if self.bytes.is_empty() {
            return Ok(T::default());
        }
        match self.encoding {
            Some(Encoding::Json) => {
                // Both bodies are JSON objects; serde would also read a struct from an array.
                let first = self.bytes.iter().find(|b| !b.is_ascii_whitespace());
                if first != Some(&b'{') {
                    return Err(ApiError::BadRequest("the body is not a JSON object".into()));
                }
                T::from_json(&self.bytes)
            }
            Some(Encoding::Form) => {
                check_form_utf8(&self.bytes)?;
                T::from_form(&self.bytes)
            }
            // A body with no content type: nothing says how to read it.
            None => Err(ApiError::UnsupportedMediaType),
        }
    }
}

/// Form decoding replaces bytes that are not UTF-8 with U+FFFD; a body with such bytes,
/// raw or percent-encoded, is refused instead of stored altered.
fn check_form_utf8(bytes: &[u8]) -> Result<(), ApiError> {
    let bad = bytes.split(|&b| b == b'&' || b == b'=').any(|part| {
        percent_encoding::percent_decode(part)
            .decode_utf8()
            .is_err()
    });
    if bad {
        return Err(ApiError::BadRequest("the form is not UTF-8".into()));
    }
    Ok(())
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, timeout) = req.app_data::<actix_web::web::Data<AppState>>().map_or(
            (usize::MAX, std::time::Duration::from_secs(3600)),
            |state| {
                let server = &state.settings.server;
                (server.max_body_bytes, server.request_body_timeout)
            },
        );
        let encoding = Encoding::of(req);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            let encoding = encoding?;
            // Refuse a declared oversize body before reading any of it.
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            let read = async {
                let mut bytes = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
                while let Some(chunk) = payload.next().await {
                    let chunk =
                        chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
                    if bytes.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge { limit });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(bytes.freeze())
            };
            // A client that trickles its body is cut off rather than holding a connection.
            // Most bodies arrive with their head, and only a body still on its way needs a
            // timer (a timer costs a trip through the runtime's timer wheel). The HTTP layer
            // calls the handler as soon as it has decoded the head, and decodes the body
            // that came with it right after: so the read is tried once more before a timer
            // is set, after letting the HTTP layer run (the task wakes itself, so the second
            // try happens even if no more of the body ever comes).
            let mut read = std::pin::pin!(read);
            let mut tried = false;
            let first = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                Poll::Ready(done) => Poll::Ready(Some(done)),
                Poll::Pending if !tried => {
                    tried = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            let bytes = match first {
                Some(done) => done?,
                None => tokio::time::timeout(timeout, read)
                    .await
                    .map_err(|_| ApiError::BodyTimeout(timeout))??,
            };
            Ok(Body { encoding, bytes })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn encoding_of(content_type: &str) -> Result<Option<Encoding>, ApiError> {
        let req = TestRequest::default()
            .insert_header((header::CONTENT_TYPE, content_type))
            .to_http_request();
        Encoding::of(&req)
    }

    #[test]
    fn json_text_json_and_forms_are_recognised_with_parameters_and_any_case() {
        assert_eq!(
            encoding_of("application/json").unwrap(),
            Some(Encoding::Json)
        );
        assert_eq!(
            encoding_of("Application/JSON; charset=utf-8").unwrap(),
            Some(Encoding::Json)
        );
        assert_eq!(encoding_of("text/json").unwrap(), Some(Encoding::Json));
        assert_eq!(
            encoding_of("application/x-www-form-urlencoded; charset=UTF-8").unwrap(),
            Some(Encoding::Form)
        );
        assert!(matches!(
            encoding_of("text/plain"),
            Err(ApiError::UnsupportedMediaType)
        ));
        assert!(matches!(
            encoding_of("multipart/form-data; boundary=x"),
            Err(ApiError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn forms_must_be_utf8_raw_and_percent_decoded() {
        assert!(check_form_utf8(b"location=%C3%A9t%C3%A9&a=b+c").is_ok());
        assert!(check_form_utf8(b"location=%FF%FE").is_err());
        assert!(check_form_utf8(b"location=\xff").is_err());
        assert!(check_form_utf8(b"%ff=1").is_err());
    }

    #[test]
    fn no_content_type_is_no_encoding() {
        let req = TestRequest::default().to_http_request();
        assert_eq!(Encoding::of(&req).unwrap(), None);
    }
}
