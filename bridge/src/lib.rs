//! Rookery's webhook bridge: delivers broker events to HTTP endpoints (SPEC §9).
//!
//! # Design
//!
//! - **Two copies of each outbox.** The broker builds each event once for the endpoints
//!   that take it, stores it in each one's durable outbox in its database ([`Event::encode`]),
//!   then hands it to [`Bridge::enqueue`]. Most events carry JSON the broker rendered
//!   ([`Body::Json`]); a `message.publish` carries the message itself ([`Body::Message`],
//!   one `Arc<MessageEvent>` shared by all its endpoints, stored in a compact binary form),
//!   and is rendered to JSON only when a request sends it, with the endpoint's
//!   `payload_encoding` ([`Event::render`]): a message dropped unsent is never rendered.
//!   The bridge keeps the same events in a bounded in-memory queue per endpoint (accounting
//!   [`Event::size`] bytes each) and tells the broker, through [`OutboxStore`], when one
//!   leaves: [`OutboxStore::remove`] after a 2xx (or an overflow drop), [`OutboxStore::bury`]
//!   when it reached max age and becomes a dead letter. At startup the broker passes what
//!   it found in the durable outboxes to [`Bridge::start`], so nothing stored is lost across
//!   a restart or a crash.
//! - **At-least-once.** An event is removed only after a 2xx, so a crash between the
//!   answer and the removal, or a 2xx lost on the way back, sends it again. Receivers
//!   deduplicate by `X-Rookery-Delivery`, which is the event id ([`delivery_id_string`])
//!   and the same on every retry.
//! - **Publishers never wait.** [`Bridge::enqueue`] is a short mutex push and a notify.
//!   A slow or dead endpoint only grows its own outbox, up to `outbox_max_events` /
//!   `outbox_max_bytes`; then the overflow policy (`drop_new`, the default, or
//!   `drop_oldest`) drops events, and counts and logs it. With `drop_new` a full outbox is
//!   visible without its lock ([`Bridge::refuses`]), so the broker builds nothing for an
//!   event that would be refused.
//! - **One worker per endpoint.** A tokio task takes events oldest first, sends up to
//!   `batch_max` per POST (a JSON array when batching), keeps up to `concurrency` requests
//!   in flight with one pooled `reqwest` client, and retries failures (non-2xx, timeouts,
//!   connection errors) with exponential backoff and jitter. The backoff belongs to the
//!   endpoint: once a request fails, a single request at a time probes the endpoint after
//!   each delay, and full concurrency returns with the first 2xx.
//! - **Order is best effort.** With `concurrency = 1` and no failures delivery is FIFO;
//!   concurrent requests can complete out of order, and a retried event goes back to the
//!   front of the queue but may have been overtaken.
//!
//! # Requests
//!
//! Each request is a `POST` to the endpoint's URL with `Content-Type: application/json`,
//! the configured headers, and:
//!
//! - `X-Rookery-Event`: the event kind (`message.publish`, ...); for a batch, the kind its
//!   events share, or `batch`.
//! - `X-Rookery-Delivery`: the delivery id (16 lowercase hex digits); for a batch, the ids
//!   comma-separated in body order.
//! - `X-Rookery-Signature: sha256=<lowercase hex HMAC-SHA256 of the exact body bytes>`,
//!   keyed with the endpoint's secret, sent only when a secret is configured (a signature
//!   keyed with the empty string would prove nothing; its absence says so).
//! - `X-Rookery-Batch: <count>` when `batch_max > 1`; the body is then always a JSON array
//!   of event objects, even of one. Otherwise the body is the event object itself.
//!
//! Only a 2xx is success: redirects are not followed, and timeouts, connection errors and
//! any other status are retried.
//!
//! The broker decides which endpoints want an event ([`WebhookConfig::accepts`]). The
//! signature covers the rendered bytes, which are what is sent; a message's payload is
//! written as [`WebhookConfig::payload_text`] says (text), or base64.

mod backoff;
mod bridge;
mod config;
mod event;
mod outbox;
mod request;
mod stats;
mod store;
mod topic_filter;
mod worker;

pub use bridge::Bridge;
pub use config::{Overflow, PayloadEncoding, WebhookConfig};
pub use event::{delivery_id_string, Body, Event, EventKind, MessageEvent, MessageGroup};
pub use outbox::Enqueued;
pub use request::signature;
pub use stats::{EndpointStats, LatencyHistogram, LATENCY_BUCKETS_MS};
pub use store::OutboxStore;
pub use topic_filter::{matches as topic_matches, validate_filter as validate_topic_filter};
