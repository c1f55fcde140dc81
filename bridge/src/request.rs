//! What one POST carries: the body (one event, or a JSON array of a batch) and its headers.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::event::{delivery_id_string, Event};

pub(crate) const EVENT_HEADER: &str = "x-rookery-event";
pub(crate) const DELIVERY_HEADER: &str = "x-rookery-delivery";
pub(crate) const SIGNATURE_HEADER: &str = "x-rookery-signature";
pub(crate) const BATCH_HEADER: &str = "x-rookery-batch";

/// The headers every request of an endpoint carries: `Content-Type` and the configured ones.
/// Configured headers were checked by `validate`; one that still does not parse is skipped
/// rather than failing every delivery.
pub(crate) fn base_headers(config: &WebhookConfig) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// `sha256=<lowercase hex HMAC-SHA256 of body keyed with secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) struct Prepared {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Builds the request for `events` (non-empty).
///
/// Each event is rendered with the endpoint's configuration ([`Event::render`]): a JSON
/// body as the broker stored it, a message with the endpoint's `payload_encoding`.
///
/// - `batch_max == 1`: the body is the event's object.
/// - `batch_max > 1`: the body is always a JSON array (even of one event, so a receiver
///   configured for batches parses one shape), with `X-Rookery-Batch: <count>`;
///   `X-Rookery-Event` is the shared kind or `batch`, and `X-Rookery-Delivery` lists the
///   delivery ids, comma-separated, in body order.
///
/// `X-Rookery-Signature` is sent only when the endpoint has a secret: a signature keyed with
/// the empty string would prove nothing, and its absence tells the receiver so.
pub(crate) fn prepare(config: &WebhookConfig, base: &HeaderMap, events: &[Event]) -> Prepared {
    let mut headers = base.clone();
    let body = if config.batch_max > 1 {
        let len = events.iter().map(|e| e.size() + 1).sum::<usize>() + 1;
        let mut array = Vec::with_capacity(len);
        array.push(b'[');
        for (index, event) in events.iter().enumerate() {
            if index > 0 {
                array.push(b',');
            }
            event.render_into(config, &mut array);
        }
        array.push(b']');
        headers.insert(BATCH_HEADER, HeaderValue::from(events.len()));
        Bytes::from(array)
    } else {
        events.first().map(|e| e.render(config)).unwrap_or_default()
    };

    let shared_kind = events
        .first()
        .map(|first| first.kind)
        .filter(|kind| events.iter().all(|e| e.kind == *kind));
    let event_header = match shared_kind {
        Some(kind) => kind.as_str(),
        None => "batch",
    };
    headers.insert(EVENT_HEADER, HeaderValue::from_static(event_header));

    let delivery: Vec<String> = events.iter().map(|e| delivery_id_string(e.id)).collect();
    if let Ok(value) = HeaderValue::from_str(&delivery.join(",")) {
        headers.insert(DELIVERY_HEADER, value);
    }

    if !config.secret.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&signature(&config.secret, &body)) {
            headers.insert(SIGNATURE_HEADER, value);
        }
    }
    Prepared { headers, body }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(id: u64, kind: EventKind) -> Event {
        Event {
            id,
            kind,
            created_ms: 0,
            body: Bytes::from(format!("{{\"n\":{id}}}")).into(),
        }
    }

    fn header<'a>(prepared: &'a Prepared, name: &str) -> Option<&'a str> {
        prepared.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn single_event_request() {
        let mut config = WebhookConfig::new("http://h/x");
        config.secret = "s3cret".into();
        config
            .headers
            .insert("Authorization".into(), "Bearer t".into());
        let prepared = prepare(
            &config,
            &base_headers(&config),
            &[event(26, EventKind::GroupMembers)],
        );
        assert_eq!(&prepared.body[..], b"{\"n\":26}");
        assert_eq!(header(&prepared, "content-type"), Some("application/json"));
        assert_eq!(header(&prepared, "authorization"), Some("Bearer t"));
        assert_eq!(header(&prepared, EVENT_HEADER), Some("group.members"));
        assert_eq!(header(&prepared, DELIVERY_HEADER), Some("000000000000001a"));
        assert_eq!(header(&prepared, BATCH_HEADER), None);
        // The signature covers exactly the bytes sent.
        let expected = signature("s3cret", b"{\"n\":26}");
        assert_eq!(header(&prepared, SIGNATURE_HEADER), Some(expected.as_str()));
    }

    #[test]
    fn signature_matches_a_known_hmac_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn no_signature_without_a_secret() {
        let config = WebhookConfig::new("http://h/x");
        let prepared = prepare(
            &config,
            &base_headers(&config),
            &[event(1, EventKind::UserCreated)],
        );
        assert_eq!(header(&prepared, SIGNATURE_HEADER), None);
    }

    #[test]
    fn batch_request() {
        let mut config = WebhookConfig::new("http://h/x");
        config.batch_max = 10;
        let base = base_headers(&config);
        let same = prepare(
            &config,
            &base,
            &[
                event(1, EventKind::MessagePublish),
                event(2, EventKind::MessagePublish),
            ],
        );
        assert_eq!(&same.body[..], b"[{\"n\":1},{\"n\":2}]");
        assert_eq!(header(&same, EVENT_HEADER), Some("message.publish"));
        assert_eq!(
            header(&same, DELIVERY_HEADER),
            Some("0000000000000001,0000000000000002")
        );
        assert_eq!(header(&same, BATCH_HEADER), Some("2"));

        let mixed = prepare(
            &config,
            &base,
            &[
                event(1, EventKind::MessagePublish),
                event(2, EventKind::UserDeleted),
            ],
        );
        assert_eq!(header(&mixed, EVENT_HEADER), Some("batch"));

        let one = prepare(&config, &base, &[event(3, EventKind::UserDeleted)]);
        assert_eq!(&one.body[..], b"[{\"n\":3}]");
        assert_eq!(header(&one, BATCH_HEADER), Some("1"));
    }

    #[test]
    fn message_events_are_rendered_per_endpoint_and_signed_as_sent() {
        use crate::config::PayloadEncoding;
        use crate::event::{Body, MessageEvent};
        use std::sync::Arc;
        let message = Arc::new(MessageEvent {
            topic: Bytes::from_static(b"t/1"),
            qos: 0,
            retain: false,
            client_id: Some("c".into()),
            username: None,
            group: None,
            payload: Bytes::from_static(b"hi"),
        });
        let events: Vec<Event> = (1..=2)
            .map(|id| Event {
                id,
                kind: EventKind::MessagePublish,
                created_ms: 5,
                body: Body::Message(Arc::clone(&message)),
            })
            .collect();
        let mut config = WebhookConfig::new("http://h/x");
        config.secret = "k".into();
        let single = prepare(&config, &base_headers(&config), &events[..1]);
        assert_eq!(single.body, events[0].render(&config));
        let value: serde_json::Value = serde_json::from_slice(&single.body).unwrap();
        assert_eq!(
            (value["payload"].as_str(), value["encoding"].as_str()),
            (Some("hi"), Some("utf8"))
        );
        let expected = signature("k", &single.body);
        assert_eq!(header(&single, SIGNATURE_HEADER), Some(expected.as_str()));

        config.payload_encoding = PayloadEncoding::Base64;
        config.batch_max = 5;
        let batch = prepare(&config, &base_headers(&config), &events);
        let value: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        let array = value.as_array().expect("an array");
        assert_eq!(array.len(), 2);
        assert_eq!(array[1]["delivery"], "0000000000000002");
        assert_eq!(
            (array[0]["payload"].as_str(), array[0]["encoding"].as_str()),
            (Some("aGk="), Some("base64"))
        );
        let expected = signature("k", &batch.body);
        assert_eq!(header(&batch, SIGNATURE_HEADER), Some(expected.as_str()));
    }
}
