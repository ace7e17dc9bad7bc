//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata and NATS
//! headers, and between stored ids and contexts.
//!
//! The propagator is used directly rather than through a global one, so the
//! context travels even when this process exports nothing: an agent without
//! an exporter still hands the scheduler's context to its tasks.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The OpenTelemetry context of the current `tracing` span (empty when no
/// exporter is installed).
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// A context whose parent is the span `span_id` of trace `trace_id` (hex, as
/// stored), or None when either is not a valid id. Marked sampled: Drover
/// decides at submit whether a run is traced, not per process.
pub fn remote(trace_id: &str, span_id: &str) -> Option<Context> {
    let sc = span_context(trace_id, span_id)?;
    Some(Context::new().with_remote_span_context(sc))
}

/// The sampled remote span context for stored hex ids, if they are valid.
pub fn span_context(trace_id: &str, span_id: &str) -> Option<SpanContext> {
    let trace = TraceId::from_hex(trace_id).ok()?;
    let span = SpanId::from_hex(span_id).ok()?;
    let sc = SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE);
    sc.is_valid().then_some(sc)
}

/// The context's span, if it has a valid one.
pub fn span_of(cx: &Context) -> Option<SpanContext> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The `traceparent` value for a span (`00-<trace>-<span>-<flags>`).
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// A context whose parent is the span a `traceparent` value names.
pub fn from_traceparent(value: &str) -> Option<Context> {
    parse_traceparent(value).map(|sc| Context::new().with_remote_span_context(sc))
}

/// Parses a `traceparent` value; None when it is not a valid one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
    span_of(&propagator().extract(&carrier))
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataRef<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes `cx` into outgoing gRPC metadata (nothing when it has no span).
pub fn inject_grpc(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    propagator().inject_context(cx, &mut Metadata(metadata));
}

/// The caller's context from incoming gRPC metadata (empty when absent).
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    propagator().extract(&MetadataRef(metadata))
}

/// A client interceptor that sends the current span's context with every call.
pub fn grpc_interceptor(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    inject_grpc(&current(), req.metadata_mut());
    Ok(req)
}

struct Headers<'a>(&'a mut async_nats::HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes `cx` into NATS headers (nothing when it has no span).
pub fn inject_nats(cx: &Context, headers: &mut async_nats::HeaderMap) {
    propagator().inject_context(cx, &mut Headers(headers));
}

/// The sender's context from NATS headers (empty when absent).
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(h) => propagator().extract(&HeadersRef(h)),
        None => Context::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparent_round_trips() {
        let sc = span_context(TRACE, SPAN).expect("valid ids");
        let tp = traceparent(&sc);
        assert_eq!(tp, format!("00-{TRACE}-{SPAN}-01"));
        let back = parse_traceparent(&tp).expect("parses");
        assert_eq!(back.trace_id(), sc.trace_id());
        assert_eq!(back.span_id(), sc.span_id());
        assert!(back.is_sampled());
    }

    #[test]
    fn invalid_ids_give_no_context() {
        assert!(remote("", SPAN).is_none());
        assert!(remote(TRACE, "zz").is_none());
        assert!(remote(&"0".repeat(32), SPAN).is_none());
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn grpc_metadata_carries_the_context() {
        let cx = remote(TRACE, SPAN).expect("valid ids");
        let mut md = tonic::metadata::MetadataMap::new();
        inject_grpc(&cx, &mut md);
        assert_eq!(
            md.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(format!("00-{TRACE}-{SPAN}-01").as_str())
        );
        let back = span_of(&extract_grpc(&md)).expect("extracted");
        assert_eq!(back.trace_id().to_string(), TRACE);
        assert_eq!(back.span_id().to_string(), SPAN);
        assert!(span_of(&extract_grpc(&tonic::metadata::MetadataMap::new())).is_none());
    }

    #[test]
    fn nats_headers_carry_the_context() {
        let cx = remote(TRACE, SPAN).expect("valid ids");
        let mut h = async_nats::HeaderMap::new();
        inject_nats(&cx, &mut h);
        let back = span_of(&extract_nats(Some(&h))).expect("extracted");
        assert_eq!(back.trace_id().to_string(), TRACE);
        assert_eq!(back.span_id().to_string(), SPAN);
        assert!(span_of(&extract_nats(None)).is_none());
    }

    #[test]
    fn an_empty_context_injects_nothing() {
        let mut h = async_nats::HeaderMap::new();
        inject_nats(&Context::new(), &mut h);
        assert!(h.is_empty());
    }
}
