//! Messages on the events stream: an agent's single `AttemptEvent` on
//! `<prefix>.events.<agent>` (its span in the `traceparent` header), or its
//! `AttemptEventBatch` on `<prefix>.events.<agent>.batch` (spans in the body).

use bytes::Bytes;
use prost::Message as _;

use crate::naming;
use crate::pb::{AttemptEvent, AttemptEventBatch};

/// The events of one message, each with its traceparent from the body
/// (empty for a single event: read its headers).
pub fn decode(
    prefix: &str,
    subject: &str,
    payload: Bytes,
) -> Result<Vec<(AttemptEvent, String)>, prost::DecodeError> {
    if !naming::is_events_batch(prefix, subject) {
        return Ok(vec![(AttemptEvent::decode(payload)?, String::new())]);
    }
    let batch = AttemptEventBatch::decode(payload)?;
    let mut traceparents = batch.traceparents.into_iter();
    Ok(batch
        .events
        .into_iter()
        .map(|ev| (ev, traceparents.next().unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::AttemptRef;

    fn event(task: &str) -> AttemptEvent {
        AttemptEvent {
            attempt: Some(AttemptRef {
                run_id: "r".into(),
                task: task.into(),
                attempt: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn single_events_and_batches_decode_by_subject() -> Result<(), prost::DecodeError> {
        let one = Bytes::from(event("a").encode_to_vec());
        let got = decode("p", &naming::events_subject("p", "ag"), one)?;
        assert_eq!(got, vec![(event("a"), String::new())]);

        let batch = AttemptEventBatch {
            events: vec![event("a"), event("b")],
            traceparents: vec!["00-t-s-01".into()],
        };
        let subject = naming::events_batch_subject("p", "ag");
        let got = decode("p", &subject, Bytes::from(batch.encode_to_vec()))?;
        assert_eq!(
            got,
            vec![
                (event("a"), "00-t-s-01".into()),
                (event("b"), String::new())
            ]
        );
        // A batch read as a single event (or the reverse) is not silently
        // taken for something else.
        assert!(decode("p", &subject, Bytes::from_static(b"\xff\xff")).is_err());
        Ok(())
    }
}
