//! W3C trace context on Kafka records: every event omnirouter writes carries a `traceparent`
//! header, so a trace that starts at a webhook (or at the CRM that sent a reply) continues
//! through the router and the delivery, and on into the CRM that reads the event.
//!
//! Spans are made with the OpenTelemetry API's global tracer: the daemon installs a provider
//! (exporting over OTLP when configured); without one they are not recorded, but the context
//! still travels. Within [`in_trace`], the [`crate::Producer`] stamps the current traceparent
//! on every record for an event topic that has none of its own.

pub use opentelemetry::trace::SpanKind as Kind;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
pub use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::future::Future;

/// The record (and HTTP) header that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    /// The traceparent records published by this task carry.
    static CURRENT: String;
}

/// Reads a `traceparent` value (`00-<trace id>-<parent id>-<flags>`); `None` if malformed or
/// all zeros, as the W3C spec says to ignore it then.
pub fn parse(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if ![version, trace, span, flags].iter().all(|s| lower_hex(s)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// The `traceparent` value of a span context (`None` for an invalid one).
pub fn format(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` of the span in `cx`.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    format(cx.span().span_context())
}

/// The `traceparent` among record headers, if any.
pub fn header_of(headers: &[(String, Vec<u8>)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Starts a span named `name`, a child of `parent` (a `traceparent` value) or the root of a new
/// trace, with `attributes`; returns the context holding it (the span ends when the last clone
/// of the context is dropped, or with `cx.span().end()`).
pub fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: Option<&str>,
    attributes: Vec<KeyValue>,
) -> Context {
    let tracer = opentelemetry::global::tracer("omnirouter");
    let parent_cx = parent.and_then(parse).map_or_else(Context::new, |sc| {
        Context::new().with_remote_span_context(sc)
    });
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent_cx);
    parent_cx.with_span(span)
}

/// Runs `f` with `traceparent` as the trace context of everything it publishes.
pub async fn in_trace<F: Future>(traceparent: Option<String>, f: F) -> F::Output {
    match traceparent {
        Some(tp) => CURRENT.scope(tp, f).await,
        None => f.await,
    }
}

/// The traceparent of the running [`in_trace`], if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the W3C Trace Context recommendation.
    const EXAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_w3c_example_reads_and_prints_back() {
        let cx = parse(EXAMPLE).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format(&cx).as_deref(), Some(EXAMPLE));
    }

    #[test]
    fn malformed_or_zero_values_are_ignored() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_child_span_keeps_the_trace_and_the_scope_hands_it_to_publishers() {
        // No provider installed: the span is not recorded, but the trace still travels.
        let cx = start("test", SpanKind::Internal, Some(EXAMPLE), Vec::new());
        let tp = traceparent_of(&cx).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert_eq!(current(), None);
        let seen = in_trace(Some(tp.clone()), async { current() }).await;
        assert_eq!(seen.as_deref(), Some(tp.as_str()));
        let headers = vec![("TraceParent".to_owned(), EXAMPLE.as_bytes().to_vec())];
        assert_eq!(header_of(&headers), Some(EXAMPLE));
    }
}
