//! Spans with ids chosen ahead of time and timestamps from stored records.
//!
//! A run's root span and its attempt spans outlive the scheduler process that
//! started them (see the crate docs), so their ids are picked (root) or
//! derived (attempts) up front, children point at them while they are still
//! open, and [`emit`] exports each one once it has ended, from what etcd
//! recorded. The SDK draws span ids from its id generator only, so
//! [`RecordedIds`] hands it the chosen ids for the duration of one [`emit`]
//! call on this thread and random ones otherwise.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use sha2::{Digest, Sha256};

thread_local! {
    static CHOSEN: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

/// The tracer provider's id generator: random ids, except the ones [`emit`]
/// chose for the span it is building on this thread.
#[derive(Debug, Default)]
pub struct RecordedIds {
    random: RandomIdGenerator,
}

impl IdGenerator for RecordedIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN
            .with(|c| c.get().0)
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN
            .with(|c| c.get().1)
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// A fresh random trace id (hex), valid whether or not anything is exported.
pub fn new_trace_id() -> String {
    RandomIdGenerator::default().new_trace_id().to_string()
}

/// A fresh random span id (hex).
pub fn new_span_id() -> String {
    RandomIdGenerator::default().new_span_id().to_string()
}

/// The span id of attempt `attempt` of `task` in run `run` traced as
/// `trace_id`: derived rather than stored, so any scheduler process gives
/// the same parent to the agent and emits the span under the same id.
pub fn attempt_span_id(trace_id: &str, run: &str, task: &str, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{trace_id}/{run}/{task}/{attempt}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // The all-zero id is invalid; 2^-64 odds, but never emit an invalid span.
    if bytes == [0; 8] {
        bytes[7] = 1;
    }
    SpanId::from_bytes(bytes).to_string()
}

/// One span to export, as recorded (ids in hex, times in Unix milliseconds).
#[derive(Clone, Debug, Default)]
pub struct RecordedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Parent span in the same trace; empty for a root.
    pub parent_span_id: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub attributes: Vec<KeyValue>,
    /// Points in time inside the span: (name, Unix ms).
    pub events: Vec<(&'static str, u64)>,
    /// Set when the span's work failed: the status description.
    pub error: Option<String>,
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Exports `span` through the global tracer provider: a no-op when nothing is
/// exported. Returns false (and exports nothing) when its ids are invalid.
pub fn emit(span: RecordedSpan) -> bool {
    let (Ok(trace), Ok(id)) = (
        TraceId::from_hex(&span.trace_id),
        SpanId::from_hex(&span.span_id),
    ) else {
        return false;
    };
    if trace == TraceId::INVALID || id == SpanId::INVALID {
        return false;
    }
    let parent =
        match SpanId::from_hex(&span.parent_span_id) {
            Ok(p) if p != SpanId::INVALID => Context::new().with_remote_span_context(
                SpanContext::new(trace, p, TraceFlags::SAMPLED, true, TraceState::NONE),
            ),
            _ => Context::new(),
        };
    let tracer = opentelemetry::global::tracer("drover");
    let builder = SpanBuilder::from_name(span.name)
        .with_start_time(time(span.start_ms))
        .with_attributes(span.attributes)
        .with_events(
            span.events
                .into_iter()
                .map(|(name, at)| opentelemetry::trace::Event::new(name, time(at), vec![], 0))
                .collect(),
        );
    CHOSEN.with(|c| c.set((Some(trace), Some(id))));
    let mut otel = tracer.build_with_context(builder, &parent);
    CHOSEN.with(|c| c.set((None, None)));
    if let Some(message) = span.error {
        otel.set_status(Status::error(message));
    }
    otel.end_with_timestamp(time(span.end_ms.max(span.start_ms)));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_span_ids_are_stable_and_distinct() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let a = attempt_span_id(t, "r", "train", 1);
        assert_eq!(a, attempt_span_id(t, "r", "train", 1));
        assert_eq!(a.len(), 16);
        assert_ne!(a, attempt_span_id(t, "r", "train", 2));
        assert_ne!(a, attempt_span_id(t, "r", "eval", 1));
        assert!(SpanId::from_hex(&a).is_ok_and(|s| s != SpanId::INVALID));
    }

    #[test]
    fn random_ids_are_valid_hex() {
        let t = new_trace_id();
        let s = new_span_id();
        assert_eq!((t.len(), s.len()), (32, 16));
        assert!(TraceId::from_hex(&t).is_ok_and(|t| t != TraceId::INVALID));
        assert!(SpanId::from_hex(&s).is_ok_and(|s| s != SpanId::INVALID));
    }

    #[test]
    fn chosen_ids_win_only_while_set() {
        let g = RecordedIds::default();
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        CHOSEN.with(|c| c.set((Some(trace), Some(span))));
        assert_eq!((g.new_trace_id(), g.new_span_id()), (trace, span));
        CHOSEN.with(|c| c.set((None, None)));
        assert_ne!(g.new_span_id(), span);
    }

    #[test]
    fn invalid_ids_are_not_emitted() {
        assert!(!emit(RecordedSpan {
            trace_id: "nope".into(),
            span_id: "00f067aa0ba902b7".into(),
            ..Default::default()
        }));
    }
}
