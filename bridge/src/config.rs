//! One `[[webhooks]]` entry: where to deliver, what to deliver, and how hard to try.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::event::EventKind;
use crate::topic_filter;

/// How a message payload is put into the JSON body (the broker renders bodies with
/// [`WebhookConfig::encode_payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// UTF-8 text where the payload is valid UTF-8, base64 otherwise.
    #[default]
    Auto,
    /// Always base64.
    Base64,
    /// UTF-8 text; a payload that is not valid UTF-8 falls back to base64 (and the body's
    /// encoding field says so), because JSON cannot carry arbitrary bytes as text.
    Utf8,
}

/// What to do when an endpoint's outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest queued (not in-flight) events to make room for the new one. Every
    /// event is then still built, stored and removed again, so a dead endpoint costs the
    /// publishers about what a healthy one does.
    DropOldest,
    /// Refuse the new event: the default, as for `[mqtt] overflow_policy`. The endpoint
    /// gets the oldest undelivered events, without a gap, once it recovers, and while the
    /// outbox is full a new event costs the publisher a flag check and a counter
    /// (nothing is built or stored for it).
    #[default]
    DropNew,
}

/// One webhook endpoint (SPEC §1 `[[webhooks]]`, §9). Its `Debug` form hides the secret and
/// the header values (they often hold credentials), so logging a configuration is safe.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Stable identity of the endpoint's outbox; defaults to the URL. Set it to keep the
    /// outbox (and dead letters) when the URL changes.
    #[serde(default)]
    pub name: Option<String>,
    /// Extra request headers. They cannot replace `Content-Type` or the `X-Rookery-*` ones.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HMAC-SHA256 key for `X-Rookery-Signature`; empty = requests are not signed.
    #[serde(default)]
    pub secret: String,
    /// Event kinds to deliver; empty = every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// MQTT topic filters; empty = every topic. They apply to message events only.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Group ids; empty = every group. They apply to events that carry a gid.
    #[serde(default)]
    pub gids: Vec<u64>,
    #[serde(default)]
    pub payload_encoding: PayloadEncoding,
    /// Per-request timeout, connecting and reading the answer included.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once while the endpoint is healthy.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Events per request; 1 = no batching (the body is one object, not an array).
    #[serde(default = "defaults::batch_max")]
    pub batch_max: usize,
    /// A partial batch is sent once its oldest event has waited this long.
    #[serde(default = "defaults::batch_age_ms")]
    pub batch_age_ms: u64,
    /// An event this old without a 2xx becomes a dead letter.
    #[serde(default = "defaults::max_age_secs")]
    pub max_age_secs: u64,
    #[serde(default = "defaults::backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Bound on undelivered events held in memory (queued and in flight).
    #[serde(default = "defaults::outbox_max_events")]
    pub outbox_max_events: usize,
    /// Bound on their body bytes ([`crate::Event::size`]: a message event, not rendered
    /// yet, counts as its rendering with the payload in base64).
    #[serde(default = "defaults::outbox_max_bytes")]
    pub outbox_max_bytes: usize,
    #[serde(default)]
    pub overflow: Overflow,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        let header_names: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("headers", &header_names)
            .field("secret", &secret)
            .field("events", &self.events)
            .field("topics", &self.topics)
            .field("gids", &self.gids)
            .field("payload_encoding", &self.payload_encoding)
            .field("timeout_ms", &self.timeout_ms)
            .field("concurrency", &self.concurrency)
            .field("batch_max", &self.batch_max)
            .field("batch_age_ms", &self.batch_age_ms)
            .field("max_age_secs", &self.max_age_secs)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("outbox_max_events", &self.outbox_max_events)
            .field("outbox_max_bytes", &self.outbox_max_bytes)
            .field("overflow", &self.overflow)
            .finish()
    }
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        5000
    }
    pub fn concurrency() -> usize {
        4
    }
    pub fn batch_max() -> usize {
        1
    }
    pub fn batch_age_ms() -> u64 {
        20
    }
    pub fn max_age_secs() -> u64 {
        86_400
    }
    pub fn backoff_initial_ms() -> u64 {
        200
    }
    pub fn backoff_max_ms() -> u64 {
        30_000
    }
    pub fn outbox_max_events() -> usize {
        100_000
    }
    pub fn outbox_max_bytes() -> usize {
        64 * 1024 * 1024
    }
}

/// 256 ids of 16 hex digits and commas make a 4.3 KB `X-Rookery-Delivery`, inside the 8 KB
/// that common HTTP servers accept for a header.
const MAX_BATCH: usize = 256;

/// Headers the bridge sets itself; configured headers may not replace them.
fn is_reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "content-type" || name == "content-length" || name.starts_with("x-rookery-")
}

impl WebhookConfig {
    /// An endpoint for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            name: None,
            headers: BTreeMap::new(),
            secret: String::new(),
            events: Vec::new(),
            topics: Vec::new(),
            gids: Vec::new(),
            payload_encoding: PayloadEncoding::default(),
            timeout_ms: defaults::timeout_ms(),
            concurrency: defaults::concurrency(),
            batch_max: defaults::batch_max(),
            batch_age_ms: defaults::batch_age_ms(),
            max_age_secs: defaults::max_age_secs(),
            backoff_initial_ms: defaults::backoff_initial_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
            outbox_max_events: defaults::outbox_max_events(),
            outbox_max_bytes: defaults::outbox_max_bytes(),
            overflow: Overflow::default(),
        }
    }

    /// The endpoint's display name: `name`, or the URL.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }

    /// Checks everything a worker relies on; the message names the endpoint and the field.
    pub fn validate(&self) -> Result<(), String> {
        let at = format!("webhook {}", self.display_name());
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("{at}: url {:?} is not a valid URL: {e}", self.url))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "{at}: url scheme must be http or https, not {:?}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{at}: url {:?} has no host", self.url));
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(format!("{at}: name must not be empty when set"));
        }
        for event in &self.events {
            if EventKind::parse(event).is_none() {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "{at}: unknown event {event:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        for filter in &self.topics {
            topic_filter::validate_filter(filter).map_err(|e| format!("{at}: {e}"))?;
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("{at}: header name {name:?} is not a valid HTTP header name")
            })?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                format!("{at}: header {name:?} has a value that is not valid in HTTP")
            })?;
            if is_reserved_header(name) {
                return Err(format!(
                    "{at}: header {name:?} is set by the bridge and cannot be configured"
                ));
            }
        }
        let positive: [(&str, u64); 7] = [
            ("timeout_ms", self.timeout_ms),
            ("concurrency", self.concurrency as u64),
            ("batch_max", self.batch_max as u64),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("outbox_max_events", self.outbox_max_events as u64),
            ("outbox_max_bytes", self.outbox_max_bytes as u64),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{at}: {field} must be at least 1"));
            }
        }
        if self.batch_max > MAX_BATCH {
            return Err(format!(
                "{at}: batch_max must be at most {MAX_BATCH} (X-Rookery-Delivery lists every id \
                 of a batch, and HTTP servers refuse much longer headers)"
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(format!(
                "{at}: backoff_max_ms ({}) must not be less than backoff_initial_ms ({})",
                self.backoff_max_ms, self.backoff_initial_ms
            ));
        }
        Ok(())
    }

    /// A stable 64-bit key for this endpoint's outbox: the first 8 bytes (big-endian) of the
    /// SHA-256 of `name`, or of the URL when no name is set. The broker prefixes storage keys
    /// with it, so it must never change for the same name.
    pub fn endpoint_key(&self) -> u64 {
        let digest = Sha256::digest(self.display_name().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// Whether this endpoint wants an event. `topic` is the message topic (message kinds
    /// only); `gid` is the group the event is about, if any. The topic filter applies only to
    /// message kinds and the gid filter only to events that carry a gid, so e.g. a
    /// `client.connected` passes a `gids = [7]` endpoint.
    pub fn accepts(&self, kind: EventKind, topic: Option<&str>, gid: Option<u64>) -> bool {
        if !self.events.is_empty() && !self.events.iter().any(|e| e == kind.as_str()) {
            return false;
        }
        if kind.is_message() && !self.topics.is_empty() {
            let Some(topic) = topic else { return false };
            if !self.topics.iter().any(|f| topic_filter::matches(f, topic)) {
                return false;
            }
        }
        if let Some(gid) = gid {
            if !self.gids.is_empty() && !self.gids.contains(&gid) {
                return false;
            }
        }
        true
    }

    /// A payload as JSON text plus the name of the encoding used (`"utf8"` or `"base64"`),
    /// for the body's payload and encoding fields.
    pub fn encode_payload(&self, payload: &[u8]) -> (String, &'static str) {
        match self.payload_text(payload) {
            Some(text) => (text.to_owned(), "utf8"),
            None => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                "base64",
            ),
        }
    }

    /// The payload as text where this endpoint's encoding sends it as text (`"utf8"`);
    /// `None`: it goes base64. [`WebhookConfig::encode_payload`] without the copy.
    pub fn payload_text<'a>(&self, payload: &'a [u8]) -> Option<&'a str> {
        match self.payload_encoding {
            PayloadEncoding::Base64 => None,
            PayloadEncoding::Auto | PayloadEncoding::Utf8 => std::str::from_utf8(payload).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig::new("http://127.0.0.1:9000/hook")
    }

    #[test]
    fn defaults_apply_when_deserialized() {
        let parsed: WebhookConfig =
            serde_json::from_value(serde_json::json!({"url": "http://h/x"})).unwrap();
        assert_eq!(parsed.timeout_ms, 5000);
        assert_eq!(parsed.concurrency, 4);
        assert_eq!(parsed.batch_max, 1);
        assert_eq!(parsed.batch_age_ms, 20);
        assert_eq!(parsed.max_age_secs, 86_400);
        assert_eq!(parsed.backoff_initial_ms, 200);
        assert_eq!(parsed.backoff_max_ms, 30_000);
        assert_eq!(parsed.outbox_max_events, 100_000);
        assert_eq!(parsed.outbox_max_bytes, 64 << 20);
        assert_eq!(parsed.overflow, Overflow::DropNew);
        assert_eq!(parsed.payload_encoding, PayloadEncoding::Auto);
        assert!(parsed.secret.is_empty());
        assert!(parsed.validate().is_ok());

        let full: WebhookConfig = serde_json::from_value(serde_json::json!({
            "url": "https://h/x", "name": "audit", "secret": "s", "events": ["group.members"],
            "topics": ["groups/#"], "gids": [7], "payload_encoding": "base64",
            "overflow": "drop_oldest", "batch_max": 50, "headers": {"Authorization": "Bearer t"}
        }))
        .unwrap();
        assert_eq!(full.payload_encoding, PayloadEncoding::Base64);
        assert_eq!(full.overflow, Overflow::DropOldest);
        assert_eq!(full.display_name(), "audit");
        assert!(full.validate().is_ok());

        let utf8: WebhookConfig = serde_json::from_value(
            serde_json::json!({"url": "http://h/x", "payload_encoding": "utf8"}),
        )
        .unwrap();
        assert_eq!(utf8.payload_encoding, PayloadEncoding::Utf8);
    }

    #[test]
    fn unknown_fields_and_values_are_refused() {
        let unknown = serde_json::from_value::<WebhookConfig>(
            serde_json::json!({"url": "http://h/x", "retries": 3}),
        );
        assert!(unknown.is_err());
        let bad_overflow = serde_json::from_value::<WebhookConfig>(
            serde_json::json!({"url": "http://h/x", "overflow": "block"}),
        );
        assert!(bad_overflow.is_err());
    }

    /// A change that makes a valid configuration invalid.
    type Breakage = fn(&mut WebhookConfig);

    #[test]
    fn validate_explains_bad_settings() {
        let cases: Vec<(Breakage, &str)> = vec![
            (|c| c.events = vec!["message.sent".into()], "unknown event"),
            (|c| c.url = "ftp://h/x".into(), "scheme"),
            (|c| c.url = "not a url".into(), "not a valid URL"),
            (|c| c.batch_max = 0, "batch_max"),
            (|c| c.batch_max = 257, "at most 256"),
            (|c| c.concurrency = 0, "concurrency"),
            (|c| c.timeout_ms = 0, "timeout_ms"),
            (|c| c.outbox_max_events = 0, "outbox_max_events"),
            (|c| c.topics = vec!["a/#/b".into()], "'#'"),
            (|c| c.topics = vec!["a+".into()], "'+'"),
            (|c| c.backoff_max_ms = 10, "backoff_max_ms"),
            (|c| c.name = Some(" ".into()), "name"),
            (
                |c| {
                    c.headers.insert("X-Rookery-Event".into(), "x".into());
                },
                "set by the bridge",
            ),
            (
                |c| {
                    c.headers.insert("bad header".into(), "x".into());
                },
                "header name",
            ),
            (
                |c| {
                    c.headers.insert("X-Ok".into(), "line\nbreak".into());
                },
                "not valid in HTTP",
            ),
        ];
        for (change, expected) in cases {
            let mut c = config();
            change(&mut c);
            let error = c.validate().expect_err(expected);
            assert!(
                error.contains(expected),
                "{error:?} should mention {expected:?}"
            );
            assert!(
                error.contains("webhook"),
                "{error:?} should name the endpoint"
            );
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let mut c = config();
        c.secret = "s3cret".into();
        c.headers
            .insert("Authorization".into(), "Bearer hunter2".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("Authorization") && shown.contains("127.0.0.1:9000"));
    }

    #[test]
    fn endpoint_key_is_stable_and_follows_the_name() {
        let by_url = config();
        let mut named = config();
        named.name = Some("audit".into());
        let mut moved = named.clone();
        moved.url = "http://elsewhere/hook".into();
        assert_eq!(by_url.endpoint_key(), config().endpoint_key());
        assert_ne!(by_url.endpoint_key(), named.endpoint_key());
        assert_eq!(named.endpoint_key(), moved.endpoint_key());
        // Pinned: stored outboxes are keyed by it, so it must not change between releases.
        let digest = Sha256::digest(b"audit");
        let expected = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(named.endpoint_key(), expected);
    }

    #[test]
    fn accepts_filters_by_kind_topic_and_gid() {
        let everything = config();
        for kind in EventKind::ALL {
            assert!(everything.accepts(kind, None, None));
            assert!(everything.accepts(kind, Some("a/b"), Some(3)));
        }

        let mut c = config();
        c.events = vec!["message.publish".into(), "group.members".into()];
        c.topics = vec!["groups/#".into(), "alerts/+".into()];
        c.gids = vec![7];
        assert!(c.accepts(EventKind::MessagePublish, Some("groups/7"), Some(7)));
        assert!(c.accepts(EventKind::MessagePublish, Some("alerts/fire"), None));
        assert!(!c.accepts(EventKind::MessagePublish, Some("alerts/fire/x"), None));
        assert!(!c.accepts(EventKind::MessagePublish, Some("other"), None));
        assert!(!c.accepts(EventKind::MessagePublish, None, None));
        assert!(!c.accepts(EventKind::MessagePublish, Some("groups/8"), Some(8)));
        // The topic filter does not apply to non-message kinds.
        assert!(c.accepts(EventKind::GroupMembers, None, Some(7)));
        assert!(c.accepts(EventKind::GroupMembers, Some("unrelated"), Some(7)));
        assert!(!c.accepts(EventKind::GroupMembers, None, Some(8)));
        assert!(!c.accepts(EventKind::UserCreated, None, None));

        let mut topics_only = config();
        topics_only.topics = vec!["groups/#".into()];
        assert!(topics_only.accepts(EventKind::ClientConnected, None, None));
        assert!(topics_only.accepts(EventKind::MessageDropped, Some("groups"), None));
        assert!(!topics_only.accepts(EventKind::MessageDropped, Some("$SYS/x"), None));

        let mut gids_only = config();
        gids_only.gids = vec![1, 2];
        assert!(gids_only.accepts(EventKind::ClientConnected, None, None));
        assert!(gids_only.accepts(EventKind::GroupDeleted, None, Some(2)));
        assert!(!gids_only.accepts(EventKind::GroupDeleted, None, Some(3)));
    }

    #[test]
    fn payload_encoding() {
        let mut c = config();
        assert_eq!(c.encode_payload(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(
            c.encode_payload(&[0xff, 0x00]),
            ("/wA=".to_string(), "base64")
        );
        assert_eq!(c.encode_payload(b""), (String::new(), "utf8"));
        c.payload_encoding = PayloadEncoding::Base64;
        assert_eq!(
            c.encode_payload(b"hello"),
            ("aGVsbG8=".to_string(), "base64")
        );
        c.payload_encoding = PayloadEncoding::Utf8;
        assert_eq!(
            c.encode_payload("héllo".as_bytes()),
            ("héllo".to_string(), "utf8")
        );
        assert_eq!(c.encode_payload(&[0xc3]), ("ww==".to_string(), "base64"));
    }
}
