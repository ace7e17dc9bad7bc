//! An agent's event as it reaches the engine's loop: delivered by the
//! events consumer, or read from the stream to fill a gap the consumer
//! left (see [`super::ack_frontier`]).

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

pub(super) enum EventMessage {
    /// Acked (with every earlier event) once applied and committed.
    Delivered(Box<jetstream::Message>),
    /// Nothing to ack it with: the consumer's later ack covers it.
    Fetched(jetstream::message::StreamMessage),
}

impl EventMessage {
    pub(super) fn subject(&self) -> &str {
        match self {
            Self::Delivered(m) => m.subject.as_str(),
            Self::Fetched(m) => m.subject.as_str(),
        }
    }

    pub(super) fn payload(&self) -> Bytes {
        match self {
            Self::Delivered(m) => m.payload.clone(),
            Self::Fetched(m) => m.payload.clone(),
        }
    }

    pub(super) fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Self::Delivered(m) => m.headers.as_ref(),
            Self::Fetched(m) => Some(&m.headers),
        }
    }

    /// Its stream sequence; None for a delivered message without JetStream
    /// metadata (never from the events consumer).
    pub(super) fn sequence(&self) -> Option<u64> {
        match self {
            Self::Delivered(m) => m.info().ok().map(|i| i.stream_sequence),
            Self::Fetched(m) => Some(m.sequence),
        }
    }
}
