//! The versioned event envelope every Sagashop event travels in.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{DecodeError, Event};
use crate::topics::Topic;

/// A typed event payload: its versioned type name and the topic of the service that emits it.
pub trait EventPayload: Serialize + DeserializeOwned {
    /// Versioned type name such as `payment.charged.v1`: `<SUBJECT>.v<VERSION>`.
    const TYPE: &'static str;
    /// The event's name across its versions, e.g. `payment.charged`.
    const SUBJECT: &'static str;
    /// The version this type is, from 1.
    const VERSION: u32;
    /// The topic owned by the emitting service.
    const TOPIC: Topic;
    /// For an event that undoes an earlier step of the saga, what it undoes (e.g. `release
    /// reservation`): its span is named `compensate: <this>` (`crate::traces`).
    const COMPENSATES: Option<&'static str> = None;
}

/// An event as it is stored in the outbox and sent to Kafka (JSON body, keyed by `order_id`).
/// Readers ignore fields they do not know, here and in payloads, so a later release may add
/// optional ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique event id (UUID v7); consumers deduplicate on it.
    pub id: Uuid,
    /// Versioned type name, e.g. `inventory.reserved.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The emitting service, e.g. `inventory`.
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// The saga id: the order id. It is also the Kafka message key.
    pub order_id: Uuid,
    /// The id of the event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// Wraps `payload` in a new envelope.
    pub fn new<P: EventPayload>(
        source: &str,
        order_id: Uuid,
        causation_id: Option<Uuid>,
        payload: &P,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: P::TYPE.to_owned(),
            source: source.to_owned(),
            occurred_at: Utc::now(),
            order_id,
            causation_id,
            payload: serde_json::to_value(payload).expect("event payloads serialize to JSON"),
        }
    }

    /// Decodes the payload into the current version of its event (see [`Event::decode`]).
    pub fn event(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, &self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OrderConfirmed;

    #[test]
    fn round_trips_through_json() {
        let order_id = Uuid::now_v7();
        let envelope = Envelope::new("order", order_id, None, &OrderConfirmed { order_id });
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let back: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, envelope);
        assert_eq!(
            back.event().unwrap(),
            Event::OrderConfirmed(OrderConfirmed { order_id })
        );
        assert_eq!(back.event_type, "order.confirmed.v1");
    }

    #[test]
    fn fields_added_by_a_later_release_are_ignored() {
        let order_id = Uuid::now_v7();
        let envelope = Envelope::new("order", order_id, None, &OrderConfirmed { order_id });
        let mut json = serde_json::to_value(&envelope).unwrap();
        json["trace_parent"] = serde_json::json!("00-abc-def-01");
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }

    #[test]
    fn payload_that_does_not_match_its_schema_is_an_error() {
        let mut envelope = Envelope::new(
            "order",
            Uuid::now_v7(),
            None,
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
        );
        envelope.payload = serde_json::json!({"order_id": "not-a-uuid"});
        assert!(matches!(
            envelope.event(),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
