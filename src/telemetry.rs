//! Log set-up: `tracing` to stderr as text or JSON (`logging.format`), filtered by
//! `RUST_LOG` (default `info`).
//!
//! ERROR is for faults of the server. actix-http logs each malformed request and each
//! broken connection of a client at ERROR (`stream error: request parse error: ...`), which
//! would let any client fill the log; [`ClientErrorsAtDebug`] writes those at DEBUG instead,
//! under the same target, so `RUST_LOG=actix_http=debug` (or `debug`) still shows them.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::callsite::{DefaultCallsite, Identifier};
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;
use tracing_core::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt as tfmt, EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber once, in the given format; later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(ClientErrorsAtDebug(
                tfmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ))
            .try_init(),
        LogFormat::Json => registry
            .with(ClientErrorsAtDebug(
                tfmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true),
            ))
            .try_init(),
    };
}

/// Where actix-http logs, at ERROR, what a client causes: its request could not be parsed,
/// its head was too large, or its connection broke. Any other ERROR is left as it is.
const DISPATCHER_CLIENT_ERRORS: [&str; 2] = [
    "stream error: request parse error",
    "stream error: I/O error",
];
const DECODER_CLIENT_ERRORS: [&str; 1] = ["MAX_BUFFER_SIZE unprocessed data reached"];

/// The DEBUG events that stand for them, one per target, as `tracing::debug!` would declare.
static DISPATCHER_DEBUG: DefaultCallsite = DefaultCallsite::new(&DISPATCHER_DEBUG_META);
static DISPATCHER_DEBUG_META: Metadata<'static> = Metadata::new(
    "client error",
    "actix_http::h1::dispatcher",
    Level::DEBUG,
    None,
    None,
    Some("actix_http::h1::dispatcher"),
    FieldSet::new(&["message"], Identifier(&DISPATCHER_DEBUG)),
    Kind::EVENT,
);
static DECODER_DEBUG: DefaultCallsite = DefaultCallsite::new(&DECODER_DEBUG_META);
static DECODER_DEBUG_META: Metadata<'static> = Metadata::new(
    "client error",
    "actix_http::h1::decoder",
    Level::DEBUG,
    None,
    None,
    Some("actix_http::h1::decoder"),
    FieldSet::new(&["message"], Identifier(&DECODER_DEBUG)),
    Kind::EVENT,
);

/// The DEBUG stand-in for `event` when it is a client-caused error of actix-http.
fn demoted(event: &Event<'_>) -> Option<&'static Metadata<'static>> {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR {
        return None;
    }
    let message = Message(event);
    match meta.target() {
        "actix_http::h1::dispatcher" if message.starts_with_any(&DISPATCHER_CLIENT_ERRORS) => {
            Some(&DISPATCHER_DEBUG_META)
        }
        "actix_http::h1::decoder" if message.starts_with_any(&DECODER_CLIENT_ERRORS) => {
            Some(&DECODER_DEBUG_META)
        }
        _ => None,
    }
}

/// Wraps the layer that writes the log: actix-http's client-caused ERROR events reach it as
/// DEBUG events of the same target and message, and only when `RUST_LOG` enables DEBUG
/// there. Every other event, and every span, passes untouched; telling costs a comparison
/// of level for other events, and nothing is allocated.
#[derive(Debug)]
pub struct ClientErrorsAtDebug<L>(pub L);

impl<S, L> Layer<S> for ClientErrorsAtDebug<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(meta) = demoted(event) else {
            return self.0.on_event(event, ctx);
        };
        if !ctx.enabled(meta) {
            return;
        }
        let fields = meta.fields();
        let Some(field) = fields.field("message") else {
            return;
        };
        let message = format_args!("{}", Message(event));
        let values = [(&field, Some(&message as &dyn tracing::Value))];
        let values = fields.value_set(&values);
        self.0.on_event(&Event::new(meta, &values), ctx);
    }

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }
}

/// The `message` field of an event, written on demand.
struct Message<'a>(&'a Event<'a>);

impl Message<'_> {
    /// Whether the message starts with one of `prefixes`, found without allocating.
    fn starts_with_any(&self, prefixes: &[&str]) -> bool {
        prefixes.iter().any(|prefix| {
            let mut check = PrefixCheck {
                prefix: prefix.as_bytes(),
                seen: 0,
                matches: true,
            };
            // The writer stops the formatting (with an error) once the prefix is decided.
            let _ = fmt::write(&mut check, format_args!("{self}"));
            check.matches && check.seen == check.prefix.len()
        })
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut visitor = MessageVisitor {
            out: f,
            result: Ok(()),
        };
        self.0.record(&mut visitor);
        visitor.result
    }
}

struct MessageVisitor<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    result: fmt::Result,
}

impl Visit for MessageVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" && self.result.is_ok() {
            self.result = write!(self.out, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && self.result.is_ok() {
            self.result = self.out.write_str(value);
        }
    }
}

/// A writer that compares what is written with a prefix and stops as soon as it can tell.
struct PrefixCheck<'a> {
    prefix: &'a [u8],
    seen: usize,
    matches: bool,
}

impl fmt::Write for PrefixCheck<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let rest = &self.prefix[self.seen..];
        let n = rest.len().min(s.len());
        if rest[..n] != s.as_bytes()[..n] {
            self.matches = false;
            return Err(fmt::Error);
        }
        self.seen += n;
        if self.seen == self.prefix.len() {
            // Decided: the rest of the message does not matter.
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects (level, target, message) of every event that gets through.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<(Level, String, String)>>>);

    impl<S: Subscriber> Layer<S> for Collect {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let meta = event.metadata();
            self.0.lock().unwrap().push((
                *meta.level(),
                meta.target().to_owned(),
                Message(event).to_string(),
            ));
        }
    }

    fn emit_all() {
        tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}", "request parse error: invalid Header provided");
        tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}", "I/O error: connection reset");
        tracing::error!(target: "actix_http::h1::decoder", "MAX_BUFFER_SIZE unprocessed data reached, closing");
        tracing::error!(target: "actix_http::h1::dispatcher", "stream error: {}", "internal error");
        tracing::error!(target: "actix_http::h1::service", "HTTP/1 service readiness error: x");
        tracing::error!(target: "presence_server::app", "cannot write the snapshot");
    }

    fn run(filter: &str) -> Vec<(Level, String, String)> {
        let seen = Collect::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter))
            .with(ClientErrorsAtDebug(seen.clone()));
        tracing::subscriber::with_default(subscriber, emit_all);
        let out = seen.0.lock().unwrap().clone();
        out
    }

    #[test]
    fn client_caused_errors_of_the_http_layer_are_not_errors() {
        let seen = run("info");
        let errors: Vec<_> = seen.iter().map(|(_, _, m)| m.as_str()).collect();
        assert_eq!(
            errors,
            [
                "stream error: internal error",
                "HTTP/1 service readiness error: x",
                "cannot write the snapshot"
            ]
        );
        assert!(seen.iter().all(|(level, _, _)| *level == Level::ERROR));
    }

    #[test]
    fn they_are_logged_at_debug_when_debug_is_asked_for() {
        let seen = run("info,actix_http=debug");
        let debug: Vec<_> = seen
            .iter()
            .filter(|(level, _, _)| *level == Level::DEBUG)
            .map(|(_, target, m)| (target.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            debug,
            [
                (
                    "actix_http::h1::dispatcher",
                    "stream error: request parse error: invalid Header provided"
                ),
                (
                    "actix_http::h1::dispatcher",
                    "stream error: I/O error: connection reset"
                ),
                (
                    "actix_http::h1::decoder",
                    "MAX_BUFFER_SIZE unprocessed data reached, closing"
                ),
            ]
        );
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn rust_log_can_still_silence_the_http_layer() {
        let seen = run("info,actix_http=off");
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
}
